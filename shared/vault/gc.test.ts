import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { ManualClock, type Clock } from '../clock.js';
import { LocalStore } from '../store/local-store.js';
import type { Body, ByteRange, ObjectInfo, ObjectStore, PutOptions } from '../store/object-store.js';
import { BlockMap, blockMapKey } from './block-map.js';
import { ChunkDecoder, ChunkEncoder } from './chunk-codec.js';
import type { ChunkIndex } from './chunk-index.js';
import { ChunkHasher } from './crypto.js';
import { collectGarbage } from './gc.js';
import { GC_PLAN_KEY, readGcPlan } from './gc-plan.js';
import { Lease, LEASE_TTL_MS } from './lease.js';
import { manifestKey, type Manifest } from './manifest.js';
import { packKey } from './pack.js';
import { PackWriter } from './pack-writer.js';
import { Vault } from './vault.js';
import { verifyVault } from './verify.js';
import { WorkerPool } from './worker-pool.js';

// Needs `npm run build` first: verify decodes chunks in the compiled worker (dist/shared/vault/chunk-worker.js).

const HOUR = 3600_000;
const CHUNK = 4096;
/** About seven random 4 KiB chunks per pack, so each backup below spans several packs. */
const PACK = 32 * 1024;

/** A LocalStore whose list yields keys in the order they were first written (ties broken by name). */
class WriteOrderStore implements ObjectStore {
  private readonly order = new Map<string, number>();
  private seq = 0;
  constructor(private readonly inner: LocalStore) {}
  get location(): string {
    return this.inner.location;
  }
  get requests() {
    return this.inner.requests;
  }
  async put(key: string, body: Body, options?: PutOptions): Promise<void> {
    await this.inner.put(key, body, options);
    if (!this.order.has(key)) this.order.set(key, ++this.seq);
  }
  get(key: string, range?: ByteRange): Promise<Buffer> {
    return this.inner.get(key, range);
  }
  stat(key: string): Promise<ObjectInfo | undefined> {
    return this.inner.stat(key);
  }
  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const all: ObjectInfo[] = [];
    for await (const o of this.inner.list(prefix)) all.push(o);
    const rank = (k: string) => this.order.get(k) ?? Number.MAX_SAFE_INTEGER;
    yield* all.sort((a, b) => rank(a.key) - rank(b.key) || (a.key < b.key ? -1 : 1));
  }
  delete(key: string): Promise<void> {
    return this.inner.delete(key);
  }
}

interface Stored {
  manifest: Manifest;
  data: Buffer;
  /** Packs this backup wrote. */
  packs: string[];
}

/**
 * Stores `data` as a one-disk backup the way the backup engine does (packs, index, block map,
 * manifest), on the main thread. `index` stands for the view of a backup that loaded it earlier.
 */
async function storeBackup(vault: Vault, data: Buffer, name: string, index?: ChunkIndex): Promise<Stored> {
  const before = await vault.listPacks();
  const view = index ?? (await vault.loadIndex()).index;
  const writer = new PackWriter(vault, view);
  const hasher = new ChunkHasher(vault.key.chunkId);
  const encoder = new ChunkEncoder(vault.key.encryption, 1);
  const map = new BlockMap(vault.config.chunkSize, data.length);
  for (let p = 0; p < map.count; p++) {
    const chunk = data.subarray(p * CHUNK, p * CHUNK + map.lengthAt(p));
    if (chunk.every((b) => b === 0)) continue;
    const id = hasher.id(chunk);
    map.set(p, id);
    if (view.has(id)) continue;
    const enc = encoder.encode(id, chunk);
    await writer.waitForCapacity();
    writer.add(id, enc.blob, enc.codec, chunk.length);
  }
  await writer.flush();
  const id = vault.newBackupId();
  const blockMap = blockMapKey(id, 0);
  await vault.writeBlockMap(blockMap, map);
  const now = vault.clock.now().toISOString();
  const manifest: Manifest = {
    version: 1,
    id,
    name,
    kind: 'full',
    resource: 'test',
    parent: null,
    startedAt: now,
    finishedAt: now,
    host: 'test',
    consistency: 'crash_consistent',
    disks: [
      { index: 0, source: 'test', size: data.length, chunkSize: CHUNK, blockMap, usedBytes: 0, newChunks: 0, newBytes: 0, changeDetection: 'full' },
    ],
    bytesRead: data.length,
    bytesStored: writer.bytesWritten,
  };
  await vault.writeManifest(manifest);
  const packs = [...(await vault.listPacks()).keys()].filter((p) => !before.has(p));
  return { manifest, data, packs };
}

/** Deletes a backup the way `cairn backups delete` does: the manifest, then its block maps. */
async function deleteBackup(vault: Vault, m: Manifest): Promise<void> {
  await vault.store.delete(manifestKey(m.id));
  for (const d of m.disks) await vault.store.delete(d.blockMap);
}

/** Reads a backup's disk back chunk by chunk, checking every chunk against its id. */
async function readBackup(vault: Vault, m: Manifest): Promise<Buffer> {
  const { index } = await vault.loadIndex({ includeCondemned: true });
  const map = await vault.readBlockMap(m.disks[0].blockMap);
  const decoder = new ChunkDecoder(vault.key.encryption, vault.key.chunkId);
  const out = Buffer.alloc(map.diskSize);
  for (let p = 0; p < map.count; p++) {
    if (map.isZero(p)) continue;
    const loc = index.get(map.id(p));
    if (!loc) throw new Error(`chunk at position ${p} is in no index`);
    const blob = await vault.store.get(packKey(loc.packId), { offset: loc.offset, length: loc.length });
    decoder.decode(map.id(p), blob, loc.codec, loc.rawLength, loc.packId).copy(out, p * CHUNK);
  }
  return out;
}

async function packsPresent(vault: Vault, packs: string[]): Promise<string[]> {
  const all = await vault.listPacks();
  return packs.filter((p) => all.has(p));
}

async function expectHealthy(vault: Vault, backups: Stored[]): Promise<void> {
  const pool = new WorkerPool(vault.key, vault.config.compression.level, 2);
  try {
    const r = await verifyVault(vault, { readData: true, pool });
    expect(r.problems).toEqual([]);
    expect(r.ok).toBe(true);
    expect(r.backups).toBe(backups.length);
  } finally {
    await pool.close();
  }
  for (const b of backups) expect((await readBackup(vault, b.manifest)).equals(b.data)).toBe(true);
}

describe('gc', () => {
  let dir: string | undefined;
  afterEach(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
    dir = undefined;
  });

  async function newVault(clock: Clock): Promise<Vault> {
    dir = await mkdtemp(join(tmpdir(), 'cairn-gc-'));
    return Vault.init(new LocalStore(dir), 'gc test', { chunkSize: CHUNK, packSize: PACK }, { clock });
  }

  it('keeps unreferenced packs younger than the grace period and deletes older ones', async () => {
    const clock = new ManualClock(Date.now());
    const vault = await newVault(clock);
    const old = await storeBackup(vault, randomBytes(128 * 1024), 'old');
    const young = await storeBackup(vault, randomBytes(128 * 1024), 'young');
    const kept = await storeBackup(vault, Buffer.concat([randomBytes(64 * 1024), Buffer.alloc(64 * 1024), randomBytes(1000)]), 'kept');
    expect(old.packs.length).toBeGreaterThan(2);
    expect(young.packs.length).toBeGreaterThan(2);
    await deleteBackup(vault, old.manifest);
    await deleteBackup(vault, young.manifest);
    // The packs of 'old' were written three hours ago; those of 'young' just now.
    const threeHoursAgo = new Date(Date.now() - 3 * HOUR);
    for (const p of old.packs) await utimes(join(dir!, packKey(p)), threeHoursAgo, threeHoursAgo);

    const first = await collectGarbage(vault, { graceMs: HOUR });
    expect(first.deferred).toBeNull();
    expect(first.packsDeleted).toBe(old.packs.length);
    expect(first.packsTooYoung).toBe(young.packs.length);
    expect(await packsPresent(vault, old.packs)).toEqual([]);
    expect(await packsPresent(vault, young.packs)).toEqual(young.packs);
    expect(await vault.store.stat(GC_PLAN_KEY)).toBeUndefined();
    await expectHealthy(vault, [kept]);

    clock.advance(2 * HOUR);
    const second = await collectGarbage(vault, { graceMs: HOUR });
    expect(second.deferred).toBeNull();
    expect(second.packsDeleted).toBe(young.packs.length);
    expect(second.packsTooYoung).toBe(0);
    expect(await packsPresent(vault, young.packs)).toEqual([]);
    expect(second.packsAfter).toBe(kept.packs.length);
    expect(second.indexObjectsAfter).toBe(1);
    await expectHealthy(vault, [kept]);

    // Nothing left to do: a third run deletes nothing and writes no plan.
    const third = await collectGarbage(vault, { graceMs: HOUR });
    expect(third).toMatchObject({ packsDeleted: 0, packsRepacked: 0, deferred: null });
    expect(await vault.store.stat(GC_PLAN_KEY)).toBeUndefined();
  });

  it('deletes block maps without a manifest only once they are older than the grace period', async () => {
    const clock = new ManualClock(Date.now());
    const vault = await newVault(clock);
    const kept = await storeBackup(vault, randomBytes(20_000), 'kept');
    const orphan = await storeBackup(vault, randomBytes(20_000), 'orphan');
    // An interrupted backup, or a delete that stopped after the manifest: only the block map is left.
    await vault.store.delete(manifestKey(orphan.manifest.id));
    const young = await collectGarbage(vault, { graceMs: HOUR });
    expect(young.blockMapsDeleted).toBe(0);
    expect(await vault.store.stat(orphan.manifest.disks[0].blockMap)).toBeDefined();
    clock.advance(2 * HOUR);
    const old = await collectGarbage(vault, { graceMs: HOUR });
    expect(old.blockMapsDeleted).toBe(1);
    expect(await vault.store.stat(orphan.manifest.disks[0].blockMap)).toBeUndefined();
    expect(await vault.store.stat(kept.manifest.disks[0].blockMap)).toBeDefined();
    await expectHealthy(vault, [kept]);
  });

  it('never condemns packs newer than the oldest live lease, whatever the grace period', async () => {
    const clock = new ManualClock(Date.now() - HOUR);
    const vault = await newVault(clock);
    const running = await Lease.acquire(vault, 'backup'); // a backup that started an hour ago
    clock.ms = Date.now();
    const kept = await storeBackup(vault, randomBytes(64 * 1024), 'kept');
    const unreferenced = await storeBackup(vault, randomBytes(64 * 1024), 'unreferenced');
    await deleteBackup(vault, unreferenced.manifest);

    const r = await collectGarbage(vault, { graceMs: 0 });
    expect(r).toMatchObject({ packsDeleted: 0, packsTooYoung: unreferenced.packs.length, deferred: null });
    expect(await vault.store.stat(GC_PLAN_KEY)).toBeUndefined();
    expect(await packsPresent(vault, unreferenced.packs)).toEqual(unreferenced.packs);

    await running.release();
    clock.advance(60_000);
    const after = await collectGarbage(vault, { graceMs: 0 });
    expect(after.packsDeleted).toBe(unreferenced.packs.length);
    await expectHealthy(vault, [kept]);
  });

  it('defers deletion while a lease older than the plan lives, and completes after it is released', async () => {
    const clock = new ManualClock(Date.now());
    const vault = await newVault(clock);
    const gone = await storeBackup(vault, randomBytes(128 * 1024), 'gone');
    const kept = await storeBackup(vault, randomBytes(128 * 1024), 'kept');
    await deleteBackup(vault, gone.manifest);
    clock.advance(HOUR);
    const running = await Lease.acquire(vault, 'backup');
    clock.advance(60_000);

    const first = await collectGarbage(vault, { graceMs: 0 });
    expect(first.deferred).toEqual({ leases: 1 });
    expect(first.packsDeleted).toBe(0);
    expect(await packsPresent(vault, gone.packs)).toEqual(gone.packs);
    const plan = await readGcPlan(vault);
    expect(plan?.condemnedPacks.sort()).toEqual([...gone.packs].sort());
    // While the plan stands, a new backup does not see condemned packs; restore and verify still do.
    const { index: forNewBackups } = await vault.loadIndex();
    expect(gone.packs.some((p) => forNewBackups.hasPack(p))).toBe(false);
    await expectHealthy(vault, [kept]);

    // A second run while the lease still lives defers again and keeps the original plan time.
    clock.advance(60_000);
    expect((await collectGarbage(vault, { graceMs: 0 })).deferred).toEqual({ leases: 1 });
    expect((await readGcPlan(vault))?.createdAt).toBe(plan?.createdAt);

    await running.release();
    const second = await collectGarbage(vault, { graceMs: 0 });
    expect(second.deferred).toBeNull();
    expect(second.packsDeleted).toBe(gone.packs.length);
    expect(await packsPresent(vault, gone.packs)).toEqual([]);
    expect(await vault.store.stat(GC_PLAN_KEY)).toBeUndefined();
    await expectHealthy(vault, [kept]);
  });

  it('spares condemned packs that a backup which started before the plan came to need', async () => {
    const clock = new ManualClock(Date.now());
    const vault = await newVault(clock);
    const firstHalf = randomBytes(96 * 1024);
    const gone = await storeBackup(vault, Buffer.concat([firstHalf, randomBytes(96 * 1024)]), 'gone');
    await deleteBackup(vault, gone.manifest);
    clock.advance(HOUR);
    // A backup starts: it takes its lease and loads the index while gone's chunks are still there.
    const running = await Lease.acquire(vault, 'backup');
    const { index: seenAtStart } = await vault.loadIndex();
    clock.advance(60_000);
    expect((await collectGarbage(vault, { graceMs: 0 })).deferred).toEqual({ leases: 1 });
    // It finishes, reusing chunks of condemned packs without uploading them again, then ends.
    const late = await storeBackup(vault, Buffer.concat([firstHalf, Buffer.alloc(CHUNK)]), 'late', seenAtStart);
    expect(late.packs).toEqual([]);
    await running.release();

    const r = await collectGarbage(vault, { graceMs: 0 });
    expect(r.deferred).toBeNull();
    expect(r.packsDeleted).toBeGreaterThan(0);
    expect(r.packsDeleted).toBeLessThan(gone.packs.length);
    expect(await vault.store.stat(GC_PLAN_KEY)).toBeUndefined();
    await expectHealthy(vault, [late]);
  });

  it('does not wait for an expired lease (its process died) and removes it', async () => {
    const clock = new ManualClock(Date.now());
    const vault = await newVault(clock);
    const gone = await storeBackup(vault, randomBytes(64 * 1024), 'gone');
    await deleteBackup(vault, gone.manifest);
    const dead = {
      id: '00000000deadbeef',
      purpose: 'backup',
      host: 'elsewhere',
      pid: 1,
      createdAt: new Date(clock.ms - 2 * LEASE_TTL_MS).toISOString(),
      expiresAt: new Date(clock.ms - LEASE_TTL_MS).toISOString(),
    };
    await vault.store.put(`leases/${dead.id}`, () => Buffer.from(JSON.stringify(dead)));
    clock.advance(60_000);
    const r = await collectGarbage(vault, { graceMs: 0 });
    expect(r).toMatchObject({ deferred: null, packsDeleted: gone.packs.length });
    expect(await vault.store.stat(`leases/${dead.id}`)).toBeUndefined();
    await expectHealthy(vault, []);
  });

  it('finishes a repack planned by a deferred run: the repacked pack goes, its copy stays', async () => {
    // Index objects are listed oldest first, so the chunk index locates the live chunks in the old,
    // condemned pack before their new copies. gc must still see the copies as the live ones.
    dir = await mkdtemp(join(tmpdir(), 'cairn-gc-'));
    const clock = new ManualClock(Date.now());
    const vault = await Vault.init(new WriteOrderStore(new LocalStore(dir)), 'gc test', { chunkSize: CHUNK, packSize: PACK }, { clock });
    const a = randomBytes(4 * CHUNK);
    const b = randomBytes(2 * CHUNK);
    const both = await storeBackup(vault, Buffer.concat([a, b]), 'both');
    expect(both.packs).toHaveLength(1);
    const kept = await storeBackup(vault, b, 'kept');
    await deleteBackup(vault, both.manifest);
    clock.advance(HOUR);
    const running = await Lease.acquire(vault, 'backup');
    clock.advance(60_000);
    const first = await collectGarbage(vault, { graceMs: 0 });
    expect(first).toMatchObject({ packsRepacked: 1, packsDeleted: 0, deferred: { leases: 1 } });
    await running.release();
    clock.advance(HOUR);

    const second = await collectGarbage(vault, { graceMs: 0 });
    expect(second.deferred).toBeNull();
    expect(await packsPresent(vault, both.packs), 'the repacked pack is deleted').toEqual([]);
    expect(second.packsAfter).toBe(1);
    await expectHealthy(vault, [kept]);
  });

  it('repacks a pack with mostly dead bytes, keeping its live chunks readable', async () => {
    const clock = new ManualClock(Date.now());
    const vault = await newVault(clock);
    // One pack holds chunks of both backups; deleting 'gone' leaves it mostly dead.
    const a = randomBytes(3 * CHUNK);
    const b = randomBytes(2 * CHUNK);
    const both = await storeBackup(vault, Buffer.concat([a, b]), 'both');
    expect(both.packs).toHaveLength(1);
    const kept = await storeBackup(vault, Buffer.concat([b.subarray(0, CHUNK), Buffer.alloc(CHUNK)]), 'kept');
    expect(kept.packs).toEqual([]);
    await deleteBackup(vault, both.manifest);
    clock.advance(HOUR);
    const r = await collectGarbage(vault, { graceMs: 0 });
    expect(r).toMatchObject({ deferred: null, packsRepacked: 1, packsDeleted: 1 });
    expect(r.bytesRepacked).toBeGreaterThan(CHUNK);
    expect(r.bytesRepacked).toBeLessThan(2 * CHUNK);
    expect(await packsPresent(vault, both.packs)).toEqual([]);
    await expectHealthy(vault, [kept]);
  });
});
