import { open, rename, rm } from 'node:fs/promises';
import { fromSystemError } from '../errors.js';

/**
 * Writes a small secret file (a credential, a token hash) so that it appears whole or not at all
 * and is readable by its owner only: a temp file created with mode 0600 (never wider, even for a
 * moment), fsynced, then renamed over `path`. On failure the temp file is removed and the error
 * says `what` was being written, where.
 */
export async function writePrivateFile(path: string, text: string, what: string): Promise<void> {
  const temp = `${path}.tmp-${process.pid}`;
  try {
    await rm(temp, { force: true });
    const file = await open(temp, 'wx', 0o600);
    try {
      await file.writeFile(text);
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temp, path);
  } catch (err) {
    await rm(temp, { force: true });
    throw fromSystemError(err, what, path);
  }
}
