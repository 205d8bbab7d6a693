import { execFile } from 'node:child_process';
import { statfsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';

import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { CairnError, isCairnError } from '../errors.js';
import { bytes, collect, rejection, runObjectStoreConformance } from './conformance.js';
import { FaultInjectingStore } from './fault-store.js';
import { alignedBuffer, directWrites, isDirectWritable } from '../fs/aligned-memory.js';
import { LocalStore } from './local-store.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;

async function freshDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'cairn-store-'));
}

runObjectStoreConformance('LocalStore', async () => {
  const dir = await freshDir();
  return { store: new LocalStore(dir), cleanup: () => rm(dir, { recursive: true, force: true }) };
});

runObjectStoreConformance('FaultInjectingStore without faults', async () => {
  const dir = await freshDir();
  return { store: new FaultInjectingStore(new LocalStore(dir)), cleanup: () => rm(dir, { recursive: true, force: true }) };
});

/** Paths (relative to dir) of every temp file left below dir. */
async function tempFilesUnder(dir: string): Promise<string[]> {
  const all = await readdir(dir, { recursive: true });
  return all.filter((path) => basename(path).startsWith('.tmp-'));
}

/** Mounts a tmpfs with the given options on dir; false when this process may not mount. */
async function mountTmpfs(dir: string, options: string): Promise<boolean> {
  try {
    await run('mount', ['-t', 'tmpfs', '-o', options, 'tmpfs', dir]);
    return true;
  } catch {
    return false;
  }
}

describe('LocalStore', () => {
  let dir: string;
  let store: LocalStore;

  beforeEach(async () => {
    dir = await freshDir();
    store = new LocalStore(dir);
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('keeps each object as a plain file at its key path', async () => {
    await store.put('packs/ab/abcdef', () => [Buffer.from('hello '), Buffer.from('world')]);
    expect((await readFile(join(dir, 'packs', 'ab', 'abcdef'))).toString()).toBe('hello world');
    expect(await tempFilesUnder(dir)).toEqual([]);
  });

  it('writes a large first part in aligned memory with O_DIRECT where the file system allows it, byte for byte', async () => {
    const buffer = alignedBuffer(3 * MiB);
    expect(isDirectWritable(buffer)).toBe(true);
    expect(isDirectWritable(buffer.subarray(100))).toBe(false);
    expect(isDirectWritable(Buffer.alloc(3 * MiB))).toBe(false);
    for (let i = 0; i < buffer.length; i += 4096) buffer.writeUInt32LE(i * 2654435761 >>> 0, i);
    // A pack: data that ends off a block boundary, then its sealed header and trailer.
    const parts = [buffer.subarray(0, 2 * MiB + 1234), Buffer.from('header'), Buffer.alloc(0), Buffer.from('trailer')];
    const before = directWrites.bytes;
    await store.put('packs/ab/direct', () => parts);
    expect(await readFile(join(dir, 'packs', 'ab', 'direct'))).toEqual(Buffer.concat(parts));
    expect(await store.get('packs/ab/direct', { offset: 2 * MiB - 10, length: 1300 })).toEqual(Buffer.concat(parts).subarray(2 * MiB - 10, 2 * MiB + 1290));
    expect(await tempFilesUnder(dir)).toEqual([]);
    // tmpfs (0x01021994) may refuse O_DIRECT: then the same bytes are written the usual way.
    const tmpfs = statfsSync(dir).type === 0x01021994;
    if (!tmpfs) expect(directWrites.bytes - before).toBe(2 * MiB);
    // Small objects and ordinary buffers are written as usual.
    const again = directWrites.bytes;
    await store.put('packs/ab/small', () => [buffer.subarray(0, 4096 * 10)]);
    await store.put('packs/ab/plain', () => [Buffer.alloc(2 * MiB, 7)]);
    expect(directWrites.bytes).toBe(again);
    expect(await readFile(join(dir, 'packs', 'ab', 'plain'))).toEqual(Buffer.alloc(2 * MiB, 7));
  });

  it('writes the same bytes on tmpfs, which may refuse O_DIRECT', async () => {
    // Linux mounts a tmpfs at /dev/shm.
    expect(statfsSync('/dev/shm').type).toBe(0x01021994);
    const shm = await mkdtemp('/dev/shm/cairn-store-');
    try {
      const buffer = alignedBuffer(2 * MiB);
      buffer.fill(9, 0, MiB);
      const parts = [buffer.subarray(0, MiB + 17), Buffer.from('tail')];
      await new LocalStore(shm).put('packs/cd/x', () => parts);
      expect(await readFile(join(shm, 'packs', 'cd', 'x'))).toEqual(Buffer.concat(parts));
    } finally {
      await rm(shm, { recursive: true, force: true });
    }
  });

  it('leaves no temp file and no object when the body factory throws', async () => {
    const err = await store
      .put('packs/x', () => {
        throw new Error('source vanished');
      })
      .then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(CairnError);
    expect((err as CairnError).message).toContain('source vanished');
    expect(await tempFilesUnder(dir)).toEqual([]);
    expect(await store.stat('packs/x')).toBeUndefined();
  });

  it('leaves no temp file when ifAbsent refuses', async () => {
    await store.put('config', () => Buffer.from('a'));
    await rejection(store.put('config', () => Buffer.from('b'), { ifAbsent: true }), 'ALREADY_EXISTS');
    expect(await tempFilesUnder(dir)).toEqual([]);
  });

  it('names the key and the location in errors', async () => {
    const err = await rejection(store.get('packs/00/missing'), 'NOT_FOUND');
    expect(err.message).toContain('packs/00/missing');
    expect(err.message).toContain(dir);
  });

  it('rejects keys that would collide with its temp files', async () => {
    await expect(store.put('packs/.tmp-1234', () => Buffer.from('x'))).rejects.toThrow(/invalid object key/);
  });

  it('refuses with a clear error a key below an object, and an object where keys are below', async () => {
    await store.put('packs', () => Buffer.from('a file where a folder must be'));
    const below = await store.put('packs/ab', () => Buffer.from('x')).then(() => undefined, (e: unknown) => e);
    expect(below).toBeInstanceOf(CairnError);
    expect((below as CairnError).message).toMatch(/packs\/ab: .* cannot hold both a key and keys below it/);
    expect((below as CairnError).message).toContain(dir);
    expect(await store.stat('packs/ab')).toBeUndefined();
    await rejection(store.get('packs/ab'), 'NOT_FOUND');
    expect(await collect(store.list('packs/'))).toEqual([]);

    await store.put('index/aa/bb', () => Buffer.from('x'));
    const above = await store.put('index/aa', () => Buffer.from('y')).then(() => undefined, (e: unknown) => e);
    expect((above as CairnError).message).toMatch(/index\/aa: .* cannot hold both/);
    expect(await store.stat('index/aa')).toBeUndefined();
    await rejection(store.get('index/aa'), 'NOT_FOUND');
    expect(await tempFilesUnder(dir)).toEqual([]);
  });

  it('behaves as an empty store when its folder does not exist yet', async () => {
    const missing = new LocalStore(join(dir, 'not', 'yet'));
    expect(await collect(missing.list(''))).toEqual([]);
    expect(await missing.stat('config')).toBeUndefined();
    await rejection(missing.get('config'), 'NOT_FOUND');
    await missing.delete('config');
    await missing.put('config', () => Buffer.from('created'));
    expect((await readFile(join(dir, 'not', 'yet', 'config'))).toString()).toBe('created');
  });

  it('does not list temp files or names that cannot be keys', async () => {
    await store.put('packs/00/real', () => Buffer.from('x'));
    await writeFile(join(dir, 'packs', '00', '.tmp-inflight'), 'partial');
    await mkdir(join(dir, 'lost+found'));
    await writeFile(join(dir, 'lost+found', 'junk'), 'junk');
    expect((await collect(store.list(''))).map((o) => o.key)).toEqual(['packs/00/real']);
    expect(await collect(store.list('packs/00/.tmp'))).toEqual([]);
  });

  it('removes only temp files older than the given age', async () => {
    await store.put('packs/00/real', () => Buffer.from('x'));
    const stale = join(dir, 'packs', '00', '.tmp-stale');
    const fresh = join(dir, 'packs', '.tmp-fresh');
    await writeFile(stale, 'left by a crash');
    await writeFile(fresh, 'in flight');
    const twoHoursAgo = new Date(Date.now() - 2 * 3600_000);
    await utimes(stale, twoHoursAgo, twoHoursAgo);

    expect(await store.removeStaleTempFiles(3600_000)).toBe(1);
    expect((await tempFilesUnder(dir)).map((p) => basename(p))).toEqual(['.tmp-fresh']);
    expect(await store.stat('packs/00/real')).toBeDefined();
    expect(await store.removeStaleTempFiles(60_000, new Date(Date.now() + 3600_000))).toBe(1);
    expect(await tempFilesUnder(dir)).toEqual([]);
  });

  it('fails with PERMISSION_DENIED on a read-only location', async () => {
    // Root ignores mode bits, so as root a read-only tmpfs stands in for a folder we may not write.
    let restore: () => Promise<unknown>;
    if (process.getuid?.() !== 0) {
      await chmod(dir, 0o555);
      restore = () => chmod(dir, 0o755);
    } else if (await mountTmpfs(dir, 'ro,size=1m')) {
      restore = () => run('umount', [dir]);
    } else {
      throw new Error('cannot make a read-only folder as root without mount: run as another user or with CAP_SYS_ADMIN');
    }
    try {
      const err = await rejection(store.put('packs/x', () => Buffer.from('x')), 'PERMISSION_DENIED');
      expect(err.message).toContain('packs/x');
      expect(err.message).toContain(dir);
      await rejection(store.get('packs/x'), 'NOT_FOUND');
    } finally {
      await restore();
    }
  });

  it('fails with NO_SPACE on a full file system and leaves no temp file', async () => {
    // A real full disk when this process may mount a small tmpfs; else the same contract via fault injection.
    const mounted = await mountTmpfs(dir, 'size=1m');
    try {
      const target = mounted ? store : new FaultInjectingStore(store).fail('put', /^packs\//);
      const err = await rejection(target.put('packs/big', () => bytes(2 * MiB, 1)), 'NO_SPACE');
      expect(err.message).toContain('packs/big');
      expect(err.message).toContain(dir);
      expect(await tempFilesUnder(dir)).toEqual([]);
      expect(await target.stat('packs/big')).toBeUndefined();
      await target.put('index/small', () => bytes(1000, 2));
      expect((await target.get('index/small')).equals(bytes(1000, 2))).toBe(true);
    } finally {
      if (mounted) await run('umount', [dir]);
    }
  });

  it('writes a 16 MiB body of many parts intact', async () => {
    const parts = Array.from({ length: 64 }, (_, i) => bytes(256 * 1024, i + 1));
    await store.put('packs/16m', () => parts);
    const got = await store.get('packs/16m');
    expect(got.equals(Buffer.concat(parts))).toBe(true);
    expect((await store.get('packs/16m', { offset: 5 * MiB + 3, length: 10 })).equals(got.subarray(5 * MiB + 3, 5 * MiB + 13))).toBe(true);
  });

  it('rejects an invalid range', async () => {
    await store.put('config', () => Buffer.from('abc'));
    await rejection(store.get('config', { offset: -1, length: 2 }), 'INTERNAL');
    await rejection(store.get('config', { offset: 0, length: 1.5 }), 'INTERNAL');
  });
});

describe('FaultInjectingStore', () => {
  let dir: string;
  let inner: LocalStore;

  beforeEach(async () => {
    dir = await freshDir();
    inner = new LocalStore(dir);
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('fails only the nth put, with NO_SPACE by default, and writes nothing for it', async () => {
    const store = new FaultInjectingStore(inner).fail('put', 2);
    await store.put('a', () => Buffer.from('1'));
    await rejection(store.put('b', () => Buffer.from('2')), 'NO_SPACE');
    await store.put('c', () => Buffer.from('3'));
    expect(store.calls.put).toBe(3);
    expect((await collect(inner.list(''))).map((o) => o.key).sort()).toEqual(['a', 'c']);
  });

  it('fails every call whose key matches, with the given error', async () => {
    const outage = new CairnError('STORE_UNAVAILABLE', 'injected', { retryable: true });
    const store = new FaultInjectingStore(inner).fail('put', /^packs\//g, outage).fail('get', /secret/);
    for (let i = 0; i < 3; i++) await expect(store.put(`packs/${i}`, () => Buffer.from('x'))).rejects.toBe(outage);
    await store.put('index/1', () => Buffer.from('x'));
    await store.put('secret', () => Buffer.from('x'));
    const err = await store.get('secret').catch((e: unknown) => e);
    expect(isCairnError(err, 'STORE_UNAVAILABLE') && err.retryable).toBe(true);
    expect((await store.get('index/1')).toString()).toBe('x');
  });

  it('counts calls per method', async () => {
    const store = new FaultInjectingStore(inner).fail('list', 1);
    await store.put('k', () => Buffer.from('x'));
    await store.get('k');
    await store.stat('k');
    await store.stat('other');
    await rejection(collect(store.list('')), 'STORE_UNAVAILABLE');
    expect(await collect(store.list(''))).toHaveLength(1);
    await store.delete('k');
    expect(store.calls).toEqual({ put: 1, get: 1, stat: 2, list: 2, delete: 1 });
  });
});
