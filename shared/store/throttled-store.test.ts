import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { bytes } from './conformance.js';
import { LocalStore } from './local-store.js';
import { RateLimiter, ThrottledStore } from './throttled-store.js';

/** A clock that only moves when the limiter sleeps, so the schedule is exact. */
function fakeTime() {
  const t = { now: 0, sleeps: [] as number[] };
  const limiter = (rate: number) =>
    new RateLimiter(
      rate,
      () => t.now,
      async (ms) => {
        t.sleeps.push(ms);
        t.now += ms;
      },
    );
  return { t, limiter };
}

let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

describe('RateLimiter', () => {
  it('books each transfer for size/rate and makes the next one wait for it', async () => {
    const { t, limiter } = fakeTime();
    const l = limiter(1000); // bytes per second
    await l.take(500); // starts at once, books 0..500 ms
    await l.take(1000); // waits 500 ms, books 500..1500
    t.now += 2000; // idle: the link is free again
    await l.take(100);
    expect(t.sleeps).toEqual([500]);
  });

  it('spreads transfers that start together', async () => {
    const { t, limiter } = fakeTime();
    const l = limiter(2000);
    await Promise.all([1000, 1000, 1000].map((n) => l.take(n)));
    // Each books half a second after the one before: the third starts a second after the first.
    expect(t.now).toBe(1000);
    expect(t.sleeps).toHaveLength(2);
  });
});

describe('ThrottledStore', () => {
  it('books puts by body size and gets by the bytes returned, and passes the data through unchanged', async () => {
    dir = await mkdtemp(join(tmpdir(), 'cairn-throttle-'));
    const { t, limiter } = fakeTime();
    const store = new ThrottledStore(new LocalStore(dir), limiter(1000), limiter(4000));
    await store.put('a', () => [bytes(300, 1), bytes(700, 2)]);
    await store.put('b', () => bytes(2000, 3));
    expect(t.sleeps).toEqual([1000]); // b waited for a's second
    t.sleeps = [];
    expect((await store.get('b')).equals(bytes(2000, 3))).toBe(true);
    expect((await store.get('b', { offset: 0, length: 1000 })).equals(bytes(2000, 3).subarray(0, 1000))).toBe(true);
    // The whole get booked 500 ms after it arrived; the ranged get waited for that.
    expect(t.sleeps).toEqual([500]);
    expect(store.requests.PUT).toBe(2);
    expect(store.requests.GET).toBe(2);
  });
});
