import { randomBytes } from 'node:crypto';

/**
 * Time and randomness come through these seams so that schedules, retention, leases and names can
 * be tested without waiting or guessing.
 */
export interface Clock {
  now(): Date;
}

export const systemClock: Clock = { now: () => new Date() };

export interface IdSource {
  /** Cryptographically random bytes. */
  bytes(n: number): Buffer;
}

export const randomIdSource: IdSource = { bytes: (n) => randomBytes(n) };

/** Lower-case hex id of n random bytes. */
export function hexId(ids: IdSource, n = 16): string {
  return ids.bytes(n).toString('hex');
}

const base36 = '0123456789abcdefghijklmnopqrstuvwxyz';

/** A short random suffix of base-36 characters, e.g. for backup names (`manualbk_k3x9qz`). */
export function shortSuffix(ids: IdSource, length = 6): string {
  const raw = ids.bytes(length);
  let out = '';
  for (const b of raw) out += base36[b % 36];
  return out;
}

/** A clock that moves only when told: for tests of schedules, leases, retention and gc. */
export class ManualClock implements Clock {
  constructor(public ms: number) {}
  now(): Date {
    return new Date(this.ms);
  }
  advance(ms: number): void {
    this.ms += ms;
  }
}
