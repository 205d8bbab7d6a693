/**
 * The conformance suite every ObjectStore backend must pass: one test per contract in
 * object-store.ts. A backend's test file calls runObjectStoreConformance with a factory that makes a
 * fresh, empty store and a cleanup for it.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { isCairnError, type CairnError, type ErrorCode } from '../errors.js';
import type { ObjectInfo, ObjectStore } from './object-store.js';

export interface StoreUnderTest {
  store: ObjectStore;
  cleanup: () => Promise<void>;
}

const MiB = 1024 * 1024;

export function runObjectStoreConformance(name: string, makeStore: () => Promise<StoreUnderTest>): void {
  describe(`ObjectStore conformance: ${name}`, () => {
    let store: ObjectStore;
    let cleanup: (() => Promise<void>) | undefined;

    beforeEach(async () => {
      ({ store, cleanup } = await makeStore());
    });
    afterEach(async () => {
      await cleanup?.();
      cleanup = undefined;
    });

    describe('put and get', () => {
      it('returns the bytes of a single-Buffer body', async () => {
        const data = bytes(1000, 1);
        await store.put('objects/one', () => data);
        expect(await store.get('objects/one')).toEqual(data);
      });

      it('stores a Buffer[] body as the concatenation of its parts', async () => {
        const parts = [bytes(10, 2), Buffer.alloc(0), bytes(70_000, 3), bytes(1, 4)];
        await store.put('objects/parts', () => parts);
        expect(await store.get('objects/parts')).toEqual(Buffer.concat(parts));
      });

      it('stores a body of more parts than one system call takes', async () => {
        const parts = Array.from({ length: 3000 }, (_, i) => bytes(17, i + 1));
        await store.put('objects/many-parts', () => parts);
        expect(await store.get('objects/many-parts')).toEqual(Buffer.concat(parts));
      });

      it('stores empty objects', async () => {
        await store.put('objects/empty', () => Buffer.alloc(0));
        await store.put('objects/no-parts', () => []);
        expect((await store.get('objects/empty')).length).toBe(0);
        expect((await store.get('objects/no-parts')).length).toBe(0);
        expect((await store.stat('objects/no-parts'))?.size).toBe(0);
      });

      it('stores a 5 MiB object', async () => {
        const data = bytes(5 * MiB, 5);
        await store.put('objects/large', () => data);
        expect((await store.stat('objects/large'))?.size).toBe(data.length);
        expect((await store.get('objects/large')).equals(data)).toBe(true);
      });

      it('replaces an existing object when ifAbsent is not set', async () => {
        await store.put('objects/x', () => Buffer.from('old content, longer'));
        await store.put('objects/x', () => Buffer.from('new'));
        expect((await store.get('objects/x')).toString()).toBe('new');
        expect((await store.stat('objects/x'))?.size).toBe(3);
      });

      it('fails with NOT_FOUND for a missing key, whole or ranged, naming the key', async () => {
        const err = await rejection(store.get('objects/missing'), 'NOT_FOUND');
        expect(err.message).toContain('objects/missing');
        await rejection(store.get('objects/missing', { offset: 0, length: 1 }), 'NOT_FOUND');
        await rejection(store.get('nowhere/at/all'), 'NOT_FOUND');
      });

      it('accepts keys with dots, dashes and underscores in any segment', async () => {
        const keys = ['.config', 'a..b/c.d-e_f', 'v1.2.3-rc_1/-lead/_x', 'trailing.'];
        for (const key of keys) await store.put(key, () => Buffer.from(key));
        for (const key of keys) expect((await store.get(key)).toString()).toBe(key);
        expect((await collect(store.list(''))).map((o) => o.key).sort()).toEqual([...keys].sort());
      });

      it('rejects keys outside the key rules with a CairnError', async () => {
        for (const key of ['', '/abs', 'a//b', '../escape', 'a/../b', 'a/./b', 'trailing/', 'sp ace', 'back\\slash']) {
          const err = await store.put(key, () => Buffer.from('x')).then(() => undefined, (e: unknown) => e);
          expect(isCairnError(err), `put "${key}" should fail`).toBe(true);
          expect(isCairnError(await store.get(key).catch((e: unknown) => e)), `get "${key}"`).toBe(true);
        }
      });
    });

    describe('put with ifAbsent', () => {
      it('writes a new key', async () => {
        await store.put('once/a', () => Buffer.from('first'), { ifAbsent: true });
        expect((await store.get('once/a')).toString()).toBe('first');
      });

      it('refuses an existing key with ALREADY_EXISTS and keeps the old content', async () => {
        await store.put('once/a', () => Buffer.from('first'));
        const err = await rejection(store.put('once/a', () => Buffer.from('second!'), { ifAbsent: true }), 'ALREADY_EXISTS');
        expect(err.message).toContain('once/a');
        expect((await store.get('once/a')).toString()).toBe('first');
        expect((await collect(store.list('once/'))).map((o) => [o.key, o.size])).toEqual([['once/a', 5]]);
      });

      it('lets exactly one of many concurrent writers of one key win', async () => {
        const bodies = Array.from({ length: 8 }, (_, i) => bytes(256 * 1024, 100 + i));
        const results = await Promise.allSettled(bodies.map((b) => store.put('race/x', () => b, { ifAbsent: true })));
        const winners = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
        expect(winners).toHaveLength(1);
        for (const r of results) {
          if (r.status === 'rejected') expect(isCairnError(r.reason, 'ALREADY_EXISTS'), String(r.reason)).toBe(true);
        }
        expect((await store.get('race/x')).equals(bodies[winners[0]])).toBe(true);
      });
    });

    describe('ranged get', () => {
      const data = bytes(10_000, 7);
      beforeEach(async () => {
        await store.put('ranged/obj', () => data);
      });

      it('returns exactly the bytes of the range', async () => {
        expect(await store.get('ranged/obj', { offset: 1234, length: 4321 })).toEqual(data.subarray(1234, 5555));
        expect(await store.get('ranged/obj', { offset: 0, length: 10 })).toEqual(data.subarray(0, 10));
        expect(await store.get('ranged/obj', { offset: 9999, length: 1 })).toEqual(data.subarray(9999));
        expect(await store.get('ranged/obj', { offset: 0, length: 10_000 })).toEqual(data);
      });

      it('clips a range past the end to the end', async () => {
        expect(await store.get('ranged/obj', { offset: 9000, length: 5000 })).toEqual(data.subarray(9000));
        expect((await store.get('ranged/obj', { offset: 10_000, length: 10 })).length).toBe(0);
        expect((await store.get('ranged/obj', { offset: 50_000, length: 10 })).length).toBe(0);
      });

      it('returns no bytes for a zero-length range', async () => {
        expect((await store.get('ranged/obj', { offset: 500, length: 0 })).length).toBe(0);
      });

      it('reads into a caller buffer (shared memory too) when one is given', async () => {
        const into = Buffer.from(new SharedArrayBuffer(8192));
        const got = await store.get('ranged/obj', { offset: 100, length: 5000 }, into);
        expect(Buffer.compare(got, data.subarray(100, 5100))).toBe(0);
        expect(got.buffer).toBe(into.buffer);
        // Too small a buffer is not an error: the store allocates instead.
        const small = Buffer.alloc(10);
        expect(Buffer.compare(await store.get('ranged/obj', { offset: 0, length: 100 }, small), data.subarray(0, 100))).toBe(0);
      });
    });

    describe('atomic put', () => {
      it('shows a concurrent reader no object or the whole object, never a part', async () => {
        const before = bytes(4 * MiB, 11);
        const after = bytes(4 * MiB, 12);
        const seen = { missing: 0, before: 0, after: 0 };
        const read = async (): Promise<void> => {
          const got = await store.get('atomic/x').catch((e: unknown) => {
            if (isCairnError(e, 'NOT_FOUND')) return undefined;
            throw e;
          });
          if (got === undefined) seen.missing++;
          else if (got.equals(before)) seen.before++;
          else if (got.equals(after)) seen.after++;
          else throw new Error(`a reader saw a partial object of ${got.length} bytes`);
        };
        const readUntil = async (done: Promise<void>): Promise<void> => {
          let finished = false;
          void done.then(() => (finished = true), () => (finished = true));
          while (!finished) await read();
        };
        const create = store.put('atomic/x', () => before);
        await Promise.all([create, readUntil(create)]);
        const replace = store.put('atomic/x', () => after);
        await Promise.all([replace, readUntil(replace)]);
        await read();
        expect(seen.after).toBeGreaterThan(0);
        expect(seen.missing + seen.before + seen.after).toBeGreaterThan(1);
      });
    });

    describe('stat', () => {
      it('reports key, size and modification time of an object', async () => {
        const started = Date.now();
        await store.put('stat/obj', () => bytes(4096, 8));
        const info = await store.stat('stat/obj');
        expect(info?.key).toBe('stat/obj');
        expect(info?.size).toBe(4096);
        expect(info?.modified).toBeInstanceOf(Date);
        // A remote store's clock may differ from ours; an hour tells a real time from a wrong field.
        expect(Math.abs((info?.modified.getTime() ?? 0) - started)).toBeLessThan(3600_000);
      });

      it('resolves to undefined for a missing key', async () => {
        expect(await store.stat('stat/missing')).toBeUndefined();
        expect(await store.stat('no/such/folder')).toBeUndefined();
      });
    });

    describe('list', () => {
      const objects: Record<string, number> = {
        'packs/00/0011': 11,
        'packs/00/00ff': 0,
        'packs/ab/abcd': 300,
        'packs/ab/cd/deep': 5,
        'backups/2024-01-01': 42,
        'backups/2024-01-02': 43,
        config: 7,
      };
      beforeEach(async () => {
        for (const [key, size] of Object.entries(objects)) await store.put(key, () => bytes(size, size + 1));
      });

      it('yields every key under the prefix exactly once, with its size', async () => {
        const listed = await collect(store.list('packs/'));
        expect(listed.map((o) => o.key).sort()).toEqual(['packs/00/0011', 'packs/00/00ff', 'packs/ab/abcd', 'packs/ab/cd/deep']);
        for (const o of listed) {
          expect(o.size, o.key).toBe(objects[o.key]);
          expect(o.modified).toBeInstanceOf(Date);
        }
      });

      it('treats the prefix as a plain string prefix of keys', async () => {
        expect(keysOf(await collect(store.list('packs/a')))).toEqual(['packs/ab/abcd', 'packs/ab/cd/deep']);
        expect(keysOf(await collect(store.list('backups/2024-01-0')))).toEqual(['backups/2024-01-01', 'backups/2024-01-02']);
        expect(keysOf(await collect(store.list('conf')))).toEqual(['config']);
        expect(keysOf(await collect(store.list('packs/ab/abcd')))).toEqual(['packs/ab/abcd']);
      });

      it('lists everything for an empty prefix', async () => {
        expect(keysOf(await collect(store.list('')))).toEqual(Object.keys(objects).sort());
      });

      it('yields nothing for a prefix without matches', async () => {
        expect(await collect(store.list('index/'))).toEqual([]);
        expect(await collect(store.list('packs/zz'))).toEqual([]);
        expect(await collect(store.list('no/such/folder/'))).toEqual([]);
      });

      it('no longer yields a deleted key', async () => {
        await store.delete('packs/00/0011');
        expect(keysOf(await collect(store.list('packs/00/')))).toEqual(['packs/00/00ff']);
      });
    });

    describe('delete', () => {
      it('removes an object', async () => {
        await store.put('del/x', () => Buffer.from('x'));
        await store.delete('del/x');
        expect(await store.stat('del/x')).toBeUndefined();
        await rejection(store.get('del/x'), 'NOT_FOUND');
      });

      it('succeeds for a missing key, and when repeated', async () => {
        await store.delete('del/never');
        await store.put('del/y', () => Buffer.from('y'));
        await store.delete('del/y');
        await store.delete('del/y');
        expect(await collect(store.list('del/'))).toEqual([]);
      });

      it('lets the key be written again, also with ifAbsent', async () => {
        await store.put('del/z', () => Buffer.from('1'));
        await store.delete('del/z');
        await store.put('del/z', () => Buffer.from('2'), { ifAbsent: true });
        expect((await store.get('del/z')).toString()).toBe('2');
      });
    });
  });
}

/** Deterministic pseudo-random bytes (xorshift32), so a misplaced offset cannot go unnoticed. */
export function bytes(length: number, seed: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  let x = seed | 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

export async function collect(objects: AsyncIterable<ObjectInfo>): Promise<ObjectInfo[]> {
  const out: ObjectInfo[] = [];
  for await (const o of objects) out.push(o);
  return out;
}

/** Awaits a promise that must reject with a CairnError of the given code, and returns that error. */
export async function rejection(promise: Promise<unknown>, code: ErrorCode): Promise<CairnError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(isCairnError(err, code), `expected a CairnError ${code}, got ${String(err)}`).toBe(true);
  return err as CairnError;
}

function keysOf(objects: ObjectInfo[]): string[] {
  return objects.map((o) => o.key).sort();
}
