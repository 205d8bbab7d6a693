import { CairnError } from '../../shared/errors.js';

/** The CairnError `promise` rejects with; fails the test if it resolves or rejects with anything else. */
export async function failure(promise: Promise<unknown>): Promise<CairnError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof CairnError) return err;
    throw err;
  }
  throw new Error('expected a CairnError, but the call succeeded');
}
