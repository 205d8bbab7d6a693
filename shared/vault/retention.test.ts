/**
 * Immutable vaults over months of simulated time: a store that enforces Object Lock against a manual
 * clock stands in for the bucket (the real S3 server enforces against the real clock, which a test
 * cannot move; test/s3-vault.test.ts covers the real thing for what happens within a day).
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { CairnError, isCairnError } from '../errors.js';
import { ManualClock } from '../clock.js';
import { LocalStore } from '../store/local-store.js';
import type { Body, ByteRange, ObjectInfo, ObjectStore, PutOptions } from '../store/object-store.js';
import { BlockMap, blockMapKey } from './block-map.js';
import { ChunkDecoder, ChunkEncoder } from './chunk-codec.js';
import { ChunkHasher } from './crypto.js';
import { collectGarbage } from './gc.js';
import { manifestKey, type Manifest } from './manifest.js';
import { packKey } from './pack.js';
import { PackWriter } from './pack-writer.js';
import { checkDeletable, protectBackup, retentionDate } from './retention.js';
import { Vault } from './vault.js';

const DAY = 86_400_000;
const CHUNK = 4096;
const PACK = 32 * 1024;

/** A folder with Object Lock semantics on a manual clock: dates only move forward, deletes wait for them. */
class LockingStore implements ObjectStore {
  readonly retained = new Map<string, number>();
  readonly written = new Map<string, number>();
  extensions: string[] = [];
  constructor(
    private readonly inner: LocalStore,
    private readonly clock: ManualClock,
  ) {}
  get location(): string {
    return this.inner.location;
  }
  get requests() {
    return this.inner.requests;
  }
  async supportsRetention(): Promise<boolean> {
    return true;
  }
  async put(key: string, body: Body, options: PutOptions = {}): Promise<void> {
    this.refuseIfLocked(key, 'overwrite');
    await this.inner.put(key, body, options);
    this.written.set(key, this.clock.ms);
    if (options.retainUntil) this.retained.set(key, options.retainUntil.getTime());
  }
  get(key: string, range?: ByteRange): Promise<Buffer> {
    return this.inner.get(key, range);
  }
  async stat(key: string): Promise<ObjectInfo | undefined> {
    const info = await this.inner.stat(key);
    return info && { ...info, modified: new Date(this.written.get(key) ?? 0) };
  }
  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    for await (const o of this.inner.list(prefix)) yield { ...o, modified: new Date(this.written.get(o.key) ?? 0) };
  }
  async delete(key: string): Promise<void> {
    this.refuseIfLocked(key, 'delete');
    await this.inner.delete(key);
    this.retained.delete(key);
  }
  async extendRetention(key: string, until: Date): Promise<void> {
    if (until.getTime() < (this.retained.get(key) ?? 0)) throw new Error(`retention of ${key} shortened`);
    this.retained.set(key, until.getTime());
    this.extensions.push(key);
  }
  private refuseIfLocked(key: string, what: string): void {
    if ((this.retained.get(key) ?? 0) > this.clock.ms) throw new CairnError('IMMUTABLE', `${what} ${key}: locked`);
  }
}

let dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
  dirs = [];
});

async function immutableVault(days: number): Promise<{ vault: Vault; store: LockingStore; clock: ManualClock }> {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-retention-'));
  dirs.push(dir);
  // 2026-01-03 12:00 UTC: mid-generation for 10-day windows counted from the epoch.
  const clock = new ManualClock(Date.UTC(2026, 0, 3, 12));
  const store = new LockingStore(new LocalStore(dir), clock);
  const vault = await Vault.init(store, 'pass', { chunkSize: CHUNK, packSize: PACK, immutableDays: days }, { clock });
  return { vault, store, clock };
}

/** Stores `data` as a one-disk backup the way the backup engine does, protection included. */
async function storeBackup(vault: Vault, data: Buffer, name: string): Promise<Manifest> {
  const { index, plan, packs } = await vault.loadIndex();
  await vault.recoverUnindexedPacks(index, plan, packs);
  const writer = new PackWriter(vault, index);
  const hasher = new ChunkHasher(vault.key.chunkId);
  const encoder = new ChunkEncoder(vault.key.encryption, 1);
  const map = new BlockMap(vault.config.chunkSize, data.length);
  for (let p = 0; p < map.count; p++) {
    const chunk = data.subarray(p * CHUNK, p * CHUNK + map.lengthAt(p));
    const id = hasher.id(chunk);
    map.set(p, id);
    if (index.has(id)) continue;
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
    version: 1, id, name, kind: 'full', resource: 'test', parent: null, startedAt: now, finishedAt: now, host: 'test', consistency: 'crash_consistent',
    disks: [{ index: 0, source: 'test', size: data.length, chunkSize: CHUNK, blockMap, usedBytes: 0, newChunks: 0, newBytes: 0, changeDetection: 'full' }],
    bytesRead: data.length, bytesStored: writer.bytesWritten,
  };
  await protectBackup(vault, index, [map]);
  await vault.writeManifest(manifest);
  return manifest;
}

async function readBackup(vault: Vault, m: Manifest): Promise<Buffer> {
  const { index } = await vault.loadIndex({ includeCondemned: true });
  const map = await vault.readBlockMap(m.disks[0].blockMap);
  const decoder = new ChunkDecoder(vault.key.encryption, vault.key.chunkId);
  const out = Buffer.alloc(map.diskSize);
  for (let p = 0; p < map.count; p++) {
    const loc = index.get(map.id(p))!;
    const blob = await vault.store.get(packKey(loc.packId), { offset: loc.offset, length: loc.length });
    decoder.decode(map.id(p), blob, loc.codec, loc.rawLength, loc.packId).copy(out, p * CHUNK);
  }
  return out;
}

async function usedPacks(vault: Vault, m: Manifest): Promise<Set<string>> {
  const { index } = await vault.loadIndex({ includeCondemned: true });
  const map = await vault.readBlockMap(m.disks[0].blockMap);
  const out = new Set<string>();
  for (let p = 0; p < map.count; p++) out.add(index.get(map.id(p))!.packId);
  return out;
}

describe('retention dates', () => {
  it('are the end of the generation plus the days, so always at least the days ahead', () => {
    const im = { days: 30, generationDays: 10 };
    const gen = 10 * DAY;
    for (const t of [0, 1, gen - 1, gen, gen + 1, Date.UTC(2026, 0, 3, 12), Date.UTC(2031, 6, 9, 23, 59)]) {
      const d = retentionDate(im, new Date(t)).getTime();
      expect(d - t).toBeGreaterThanOrEqual(30 * DAY);
      expect(d - t).toBeLessThanOrEqual(40 * DAY);
      expect((d - 30 * DAY) % gen).toBe(0);
    }
    // Everything within one window shares its date.
    expect(retentionDate(im, new Date(gen)).getTime()).toBe(retentionDate(im, new Date(2 * gen - 1)).getTime());
  });
});

describe('immutable vaults', () => {
  it('protect every backup for the days, extend reused packs once per generation, and free data once dates pass', async () => {
    const { vault, store, clock } = await immutableVault(30);
    expect(vault.config.immutability).toEqual({ days: 30, generationDays: 10 });
    expect(store.retained.get('config')).toBe(retentionDate(vault.config.immutability!, clock.now()).getTime());

    const data = randomBytes(20 * CHUNK);
    const a = await storeBackup(vault, data, 'a');
    const packsOfA = await usedPacks(vault, a);
    // New packs carry the date already; only the config and key file were re-protected (first record).
    expect(store.extensions.filter((k) => k.startsWith('packs/'))).toEqual([]);
    for (const p of packsOfA) expect(store.retained.get(packKey(p))).toBeGreaterThanOrEqual(clock.ms + 30 * DAY);

    // Two days on, same generation (t0 is 3.5 days before the window ends): reusing a's data needs no request.
    clock.advance(2 * DAY);
    store.extensions = [];
    const b = await storeBackup(vault, data, 'b');
    expect(store.extensions).toEqual([]);

    // 25 days on: a's packs would lapse before a backup made now is 30 days old, so they get this window's date, once.
    clock.advance(23 * DAY);
    store.extensions = [];
    const c = await storeBackup(vault, data, 'c');
    expect(store.extensions.filter((k) => k.startsWith('packs/')).sort()).toEqual([...packsOfA].map(packKey).sort());
    expect(store.extensions).toContain('config');
    for (const p of packsOfA) expect(store.retained.get(packKey(p))).toBeGreaterThanOrEqual(clock.ms + 30 * DAY);
    clock.advance(DAY);
    store.extensions = [];
    await storeBackup(vault, data, 'd');
    expect(store.extensions).toEqual([]);

    // Deleting a before its date is refused; once it passed, allowed.
    expect(() => checkDeletable(vault, a)).toThrowError(/immutable until/);
    clock.ms = retentionDate(vault.config.immutability!, new Date(a.finishedAt)).getTime() + 1;
    checkDeletable(vault, a);
    await vault.store.delete(manifestKey(a.id));
    await vault.store.delete(a.disks[0].blockMap);
    expect((await readBackup(vault, c)).equals(data)).toBe(true);
    void b;
  });

  it('gc leaves packs under retention, deletes them after, and no later backup reuses a deleted pack', async () => {
    const { vault, store, clock } = await immutableVault(3);
    const old = randomBytes(16 * CHUNK);
    const a = await storeBackup(vault, old, 'a');
    const packsOfA = await usedPacks(vault, a);
    const b = await storeBackup(vault, randomBytes(16 * CHUNK), 'b');
    // A later index object naming a's packs (as gc's consolidated index or a recovered pack's index
    // would be): it is locked until a later date than the packs.
    clock.advance(4 * DAY);
    await vault.writeIndex(await Promise.all([...packsOfA].map(async (packId) => ({ packId, entries: await vault.readPackHeader(packId) }))));

    clock.ms = retentionDate(vault.config.immutability!, new Date(a.finishedAt)).getTime() - 1;
    expect(() => checkDeletable(vault, a)).toThrow(CairnError);
    // Straight through the store, as a ransomware tool would try, the manifest cannot go either.
    await expect(vault.store.delete(manifestKey(a.id))).rejects.toSatisfy((e) => isCairnError(e, 'IMMUTABLE'));

    clock.advance(2);
    checkDeletable(vault, a);
    await vault.store.delete(manifestKey(a.id));
    await vault.store.delete(a.disks[0].blockMap);
    const gc = await collectGarbage(vault, { graceMs: 0 });
    expect(gc.packsDeleted).toBe(packsOfA.size);
    for (const p of packsOfA) expect(await store.stat(packKey(p))).toBeUndefined();
    // The later index object outlives the packs it names ...
    const locked = [...store.retained].filter(([k, until]) => k.startsWith('index/') && until > clock.ms);
    expect(locked.length).toBeGreaterThan(0);
    // ... and a new backup of a's data uploads it again instead of pointing at the deleted packs.
    const again = await storeBackup(vault, old, 'again');
    const packsOfAgain = await usedPacks(vault, again);
    for (const p of packsOfA) expect(packsOfAgain.has(p)).toBe(false);
    expect((await readBackup(vault, again)).equals(old)).toBe(true);
    expect((await readBackup(vault, b)).length).toBe(16 * CHUNK);
  });

  it('gc keeps dead packs that Object Lock still holds, and deletes them once their date passes', async () => {
    const { vault, store, clock } = await immutableVault(3);
    const a = await storeBackup(vault, randomBytes(16 * CHUNK), 'a');
    const packsOfA = await usedPacks(vault, a);
    // Some packs got a later date (a backup that reused them and was deleted since).
    const later = new Date(clock.ms + 20 * DAY);
    for (const p of packsOfA) await store.extendRetention(packKey(p), later);
    await vault.store.put(`retention/x-${'0'.repeat(8)}`, () => Buffer.from(JSON.stringify({ until: later.toISOString(), packs: [...packsOfA] })));

    clock.ms = retentionDate(vault.config.immutability!, new Date(a.finishedAt)).getTime() + 1;
    await vault.store.delete(manifestKey(a.id));
    let gc = await collectGarbage(vault, { graceMs: 0 });
    expect(gc.packsRetained).toBe(packsOfA.size);
    expect(gc.packsDeleted).toBe(0);
    clock.ms = later.getTime() + 1;
    gc = await collectGarbage(vault, { graceMs: 0 });
    expect(gc.packsRetained).toBe(0);
    expect(gc.packsDeleted).toBe(packsOfA.size);
    // The record that said so has lapsed and is gone too.
    expect(await store.stat(`retention/x-${'0'.repeat(8)}`)).toBeUndefined();
  });
});
