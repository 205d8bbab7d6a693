import { randomBytes } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import { afterAll, afterEach, beforeEach, expect, it } from 'vitest';
import {
  allocatedBytes,
  changedChunks,
  describeForTargets,
  expectCliError,
  KiB,
  makeImage,
  MiB,
  newKeys,
  Sandbox,
  scanChunks,
  sha256File,
  sum,
  vaultTargets,
  writeAt,
  type VaultTarget,
} from './helpers.js';
import type { RequestCounts } from '../shared/store/object-store.js';

/**
 * Backups and restores through the real CLI: every restore point must come back bit for bit, the
 * JSON output must report exactly what the image held and what changed, and restored files must be
 * sparse where the image was all zeros. Every scenario runs twice: with the vault in a local folder
 * and in a bucket on the test run's S3 server (see VaultTarget in helpers.ts).
 */

interface DiskJson {
  index: number;
  source: string;
  size: number;
  usedBytes: number;
  newChunks: number;
  newBytes: number;
  changeDetection: string;
  chunkSize?: number;
  blockMap?: string;
}

interface BackupJson {
  id: string;
  name: string;
  kind: string;
  parent: string | null;
  vault: string;
  bytesRead: number;
  bytesStored: number;
  durationMs: number;
  changedChunks: number;
  disks: DiskJson[];
  requests: RequestCounts;
}

interface SummaryJson {
  id: string;
  name: string;
  kind: string;
  parent: string | null;
  bytesRead: number;
  bytesStored: number;
  size: number;
  usedBytes: number;
  disks: Required<DiskJson>[];
}

const ID = /^\d{8}T\d{6}Z-[0-9a-f]{8}$/;
const DEFAULT_NAME = /^manualbk_[a-z0-9]{4,}$/;
const CHUNK = 64 * KiB;

/** What the image looked like when a backup was taken. */
interface Snapshot {
  sha: string;
  size: number;
  usedBytes: number;
  digests: string[];
}

async function snapshot(path: string, chunkSize = CHUNK): Promise<Snapshot> {
  const { usedBytes, digests } = await scanChunks(path, chunkSize);
  return { sha: await sha256File(path), size: (await stat(path)).size, usedBytes, digests };
}

/** Distinct non-zero chunk contents of a scan: what a backup without reusable data must upload. */
function distinctChunks(s: Snapshot): number {
  return new Set(s.digests.filter((d) => d !== 'zero')).size;
}

/** Chunks at positions that changed and whose new content the vault did not hold before. */
function newContent(before: Snapshot[], after: Snapshot): number {
  const known = new Set(before.flatMap((s) => s.digests));
  return new Set(after.digests.filter((d) => d !== 'zero' && !known.has(d))).size;
}

let sb: Sandbox;
let target: VaultTarget;

/** Runs each test of the enclosing describe in a fresh sandbox whose CLI can reach vaults on `t`. */
function useTarget(t: VaultTarget): void {
  beforeEach(async () => {
    target = t;
    sb = await Sandbox.create(`backup-${t.kind}`, { env: t.env });
  });
  afterEach(async () => {
    await sb.cleanup();
  });
}
afterAll(async () => {
  for (const t of vaultTargets) await t.close();
});

async function backup(vault: string, sources: string[], extra: string[] = []): Promise<BackupJson> {
  const before = await target.packs(vault);
  const b = await sb.cairnJson<BackupJson>(['backup', ...sources, '--vault', vault, '--json', ...extra]);
  const added = newKeys(before, await target.packs(vault)).length;
  // The requests a backup makes, counted alike by both stores: one PUT per new pack (no multipart
  // upload: packs stay below the S3 store's 48 MiB threshold, so no POST either), plus the lease, a
  // block map per disk and the manifest, and the index object when packs were added; the one DELETE
  // is the lease's.
  expect(b.requests, `requests of a backup that added ${added} packs`).toMatchObject({
    PUT: added + (added > 0 ? 1 : 0) + b.disks.length + 2,
    POST: 0,
    DELETE: 1,
  });
  return b;
}

async function restore(vault: string, name: string, to: string, extra: string[] = []): Promise<void> {
  const r = await sb.cairn(['restore', name, '--vault', vault, '--to', to, ...extra]);
  expect(r.code, `restore ${name}: ${r.stderr}`).toBe(0);
  expect(r.stderr).toBe('');
}

/** Checks the fields every backup JSON has, and the single disk's numbers against the image. */
function checkBackupJson(b: BackupJson, image: string, snap: Snapshot, vault: string): void {
  expect(b.id).toMatch(ID);
  expect(typeof b.bytesRead).toBe('number');
  expect(typeof b.bytesStored).toBe('number');
  expect(typeof b.durationMs).toBe('number');
  expect(b.durationMs).toBeGreaterThanOrEqual(0);
  expect(b.vault).toBe(target.display(vault));
  expect(b.bytesRead).toBe(snap.size);
  expect(b.disks).toHaveLength(1);
  expect(b.disks[0]).toMatchObject({ index: 0, source: image, size: snap.size, usedBytes: snap.usedBytes });
  // What a backup uploads for a disk is part of what it stored, never more.
  expect(b.disks[0].newBytes).toBeLessThanOrEqual(b.bytesStored);
}

describeForTargets('backup and restore of one disk', (t) => {
  useTarget(t);

  it('restores a full backup and four incrementals bit-identically, with exact JSON and sparse files', async () => {
    const vault = await target.init(sb, 'vault');
    const image = sb.path('disk.img');
    const tail = 12345;
    // random | text | zeros written | hole | random | random tail (size not a multiple of 64 KiB)
    const size = await makeImage(image, [
      { kind: 'random', length: 6 * MiB },
      { kind: 'text', length: 6 * MiB },
      { kind: 'zero', length: 4 * MiB },
      { kind: 'hole', length: 16 * MiB },
      { kind: 'random', length: 8 * MiB },
      { kind: 'random', length: tail },
    ]);
    expect(size).toBe(40 * MiB + tail);
    const snaps: Snapshot[] = [];
    const backups: BackupJson[] = [];

    // 1. full
    snaps.push(await snapshot(image));
    const full = await backup(vault, [image]);
    checkBackupJson(full, image, snaps[0], vault);
    expect(full.name).toMatch(DEFAULT_NAME);
    expect(full.kind).toBe('full');
    expect(full.parent).toBeNull();
    expect(full.disks[0].changeDetection).toBe('full');
    expect(full.disks[0].usedBytes).toBe(20 * MiB + tail); // 6 random + 6 text + 8 random + tail
    expect(full.changedChunks).toBe(snaps[0].digests.filter((d) => d !== 'zero').length);
    expect(full.disks[0].newChunks).toBe(distinctChunks(snaps[0]));
    // 14 MiB of random data cannot shrink: the full stores at least that, and the text compresses.
    expect(full.disks[0].newBytes).toBeGreaterThanOrEqual(14 * MiB + tail);
    expect(full.bytesStored).toBeGreaterThanOrEqual(full.disks[0].newBytes);
    expect(full.bytesStored).toBeLessThan(16 * MiB);
    backups.push(full);

    // 2. scattered writes, about 1% of the image, some crossing a chunk boundary
    const writes: [number, number][] = [
      [100 * KiB, 64 * KiB], // random region, crosses a boundary
      [7 * MiB + 5, 64 * KiB], // text
      [13 * MiB, 4 * KiB], // written zeros
      [20 * MiB + 3 * 4096, 64 * KiB], // hole
      [33 * MiB, 64 * KiB], // random, aligned
      [38 * MiB + 1000, 100], // random, tiny
    ];
    for (const [at, n] of writes) await writeAt(image, at, randomBytes(n));
    // and the same 64 KiB at two aligned places: one new chunk serves both positions
    const twice = randomBytes(CHUNK);
    await writeAt(image, 2 * MiB, twice);
    await writeAt(image, 35 * MiB, twice);
    snaps.push(await snapshot(image));
    const scattered = await backup(vault, [image]);
    checkBackupJson(scattered, image, snaps[1], vault);
    expect(scattered.changedChunks).toBe(changedChunks(snaps[0].digests, snaps[1].digests));
    expect(scattered.changedChunks).toBe(11);
    expect(scattered.disks[0].newChunks).toBe(newContent(snaps.slice(0, 1), snaps[1]));
    expect(scattered.disks[0].newChunks).toBe(10);

    // 3. a changed tail: the last partial chunk and the one before it
    await writeAt(image, size - tail - 20000, randomBytes(tail + 20000));
    snaps.push(await snapshot(image));
    const tailChange = await backup(vault, [image]);
    checkBackupJson(tailChange, image, snaps[2], vault);
    expect(tailChange.changedChunks).toBe(2);
    expect(tailChange.disks[0].newChunks).toBe(2);

    // 4. a random region zeroed out: 64 chunks change, nothing new is stored
    await writeAt(image, 32 * MiB, Buffer.alloc(4 * MiB));
    snaps.push(await snapshot(image));
    const zeroed = await backup(vault, [image]);
    checkBackupJson(zeroed, image, snaps[3], vault);
    expect(zeroed.changedChunks).toBe(64);
    expect(zeroed.disks[0].newChunks).toBe(0);
    expect(zeroed.disks[0].newBytes).toBe(0);
    expect(zeroed.disks[0].usedBytes).toBe(snaps[2].usedBytes - 4 * MiB);

    // 5. part of the hole filled with random data
    await writeAt(image, 24 * MiB, randomBytes(4 * MiB));
    snaps.push(await snapshot(image));
    const filled = await backup(vault, [image]);
    checkBackupJson(filled, image, snaps[4], vault);
    expect(filled.changedChunks).toBe(64);
    expect(filled.disks[0].newChunks).toBe(64);
    expect(filled.disks[0].newBytes).toBeGreaterThanOrEqual(4 * MiB);

    backups.push(scattered, tailChange, zeroed, filled);
    for (const [i, b] of backups.entries()) {
      if (i === 0) continue;
      expect(b.kind).toBe('incremental');
      expect(b.parent).toBe(backups[i - 1].id);
      expect(b.disks[0].changeDetection).toBe('compare');
      expect(b.name).toMatch(DEFAULT_NAME);
    }
    expect(new Set(backups.map((b) => b.name)).size).toBe(5);
    expect(new Set(backups.map((b) => b.id)).size).toBe(5);
    // ~1% changed: the incremental stores a small fraction of the full
    expect(scattered.bytesStored).toBeLessThan(full.bytesStored / 10);
    expect(zeroed.bytesStored).toBeLessThan(64 * KiB);

    // Every restore point, restored after all backups exist, is the image as it was.
    for (const [i, b] of backups.entries()) {
      const to = sb.path(`restore-${i}.img`);
      await restore(vault, b.name, to);
      expect((await stat(to)).size).toBe(size);
      expect(await sha256File(to), `restore of backup ${i} (${b.kind})`).toBe(snaps[i].sha);
      if (i === 0) {
        // The restore target is a local file for both vault targets, so this holds for S3 vaults too.
        // 4 MiB of written zeros and the 16 MiB hole stay holes: only the used bytes are allocated.
        const allocated = await allocatedBytes(to);
        expect(allocated).toBeLessThanOrEqual(snaps[0].usedBytes + 256 * KiB);
        expect(allocated).toBeLessThan(size - 19 * MiB);
      }
    }
    // No partial files are left beside the targets.
    expect((await readdir(sb.dir)).filter((n) => n.includes('cairn-partial'))).toEqual([]);

    // backups list and show return what was made (bytesStored: see the test below).
    const list = await sb.cairnJson<SummaryJson[]>(['backups', 'list', '--vault', vault, '--json']);
    expect(list.map((m) => m.id)).toEqual(backups.map((b) => b.id));
    const files = await target.objects(vault);
    for (const [i, made] of backups.entries()) {
      expect(list[i]).toMatchObject({
        id: made.id,
        name: made.name,
        kind: made.kind,
        parent: made.parent,
        bytesRead: size,
        size,
        usedBytes: snaps[i].usedBytes,
      });
      expect(list[i].disks).toHaveLength(1);
      expect(list[i].disks[0]).toEqual({ ...made.disks[0], chunkSize: CHUNK, blockMap: `blockmaps/${made.id}/0` });
      // The manifest and block map it names are in the vault.
      expect(files.has(`backups/${made.id}`), `manifest of ${made.name}`).toBe(true);
      expect(files.has(list[i].disks[0].blockMap), `block map of ${made.name}`).toBe(true);
    }
    const byName = await sb.cairnJson<SummaryJson>(['backups', 'show', filled.name, '--vault', vault, '--json']);
    const byId = await sb.cairnJson<SummaryJson>(['backups', 'show', full.id, '--vault', vault, '--json']);
    expect(byName).toEqual(list[4]);
    expect(byId).toEqual(list[0]);
  });

  it('names backups with --name and refuses a duplicate name without changing the vault', async () => {
    const vault = await target.init(sb, 'vault');
    const image = sb.path('disk.img');
    await makeImage(image, [
      { kind: 'random', length: 8 * MiB },
      { kind: 'hole', length: 8 * MiB + 1 },
    ]);
    const first = await backup(vault, [image], ['--name', 'nightly-2024.01_a']);
    expect(first.name).toBe('nightly-2024.01_a');
    expect(first.kind).toBe('full');

    await writeAt(image, 0, randomBytes(4096));
    const before = await target.objects(vault);
    const dup = await sb.cairn(['backup', image, '--vault', vault, '--name', 'nightly-2024.01_a']);
    expectCliError(dup, 'ALREADY_EXISTS', `'nightly-2024.01_a' exists already`);
    expect(dup.code).toBe(4);
    expect(await target.objects(vault)).toEqual(before);

    const bad = await sb.cairn(['backup', image, '--vault', vault, '--name', 'no spaces/allowed']);
    expectCliError(bad, 'USAGE', '--name');
    expect(await target.objects(vault)).toEqual(before);

    const list = await sb.cairnJson<SummaryJson[]>(['backups', 'list', '--vault', vault, '--json']);
    expect(list.map((m) => m.name)).toEqual(['nightly-2024.01_a']);

    // The failed attempt left the chain intact: the next, differently named backup is an incremental.
    const second = await backup(vault, [image], ['--name', 'nightly-2024.01_b']);
    expect(second).toMatchObject({ name: 'nightly-2024.01_b', kind: 'incremental', parent: first.id, changedChunks: 1 });
  });

  it('records in the manifest the bytesStored that backup --json reported', async () => {
    const vault = await target.init(sb, 'vault');
    const image = sb.path('disk.img');
    await makeImage(image, [
      { kind: 'random', length: 4 * MiB },
      { kind: 'hole', length: 12 * MiB + 1 },
    ]);
    const made = await backup(vault, [image]);
    const [listed] = await sb.cairnJson<SummaryJson[]>(['backups', 'list', '--vault', vault, '--json']);
    expect(listed.id).toBe(made.id);
    expect(listed.bytesStored, 'bytesStored: backup --json vs backups list --json').toBe(made.bytesStored);

    // A second backup of the unchanged image stores no data: no pack and no index object is written,
    // only the lease, the block map and the manifest (backup() checks the request counts), and
    // bytesStored is exactly the size of the block map and the manifest.
    const packs = await target.packs(vault);
    const again = await backup(vault, [image]);
    expect(again).toMatchObject({ kind: 'incremental', parent: made.id, changedChunks: 0 });
    expect(again.disks[0]).toMatchObject({ newChunks: 0, newBytes: 0 });
    expect(again.requests.PUT).toBe(3);
    expect(await target.packs(vault)).toEqual(packs);
    const objects = await target.objects(vault);
    const metadata = [`backups/${again.id}`, `blockmaps/${again.id}/0`].map((k) => objects.get(k));
    expect(metadata.every((n) => n !== undefined && n > 0), `manifest and block map of ${again.id}`).toBe(true);
    expect(again.bytesStored).toBe(sum(metadata as number[]));
    const [, listedAgain] = await sb.cairnJson<SummaryJson[]>(['backups', 'list', '--vault', vault, '--json']);
    expect(listedAgain.bytesStored).toBe(again.bytesStored);
  });
});

describeForTargets('multi-disk backups', (t) => {
  useTarget(t);

  it('restores each disk with --disk, and all disks into a folder without it', async () => {
    const vault = await target.init(sb, 'vault');
    const a = sb.path('a.img');
    const b = sb.path('b.img');
    const sizeA = await makeImage(a, [
      { kind: 'random', length: 6 * MiB },
      { kind: 'hole', length: 6 * MiB },
      { kind: 'text', length: 4 * MiB + 4097 },
    ]);
    const sizeB = await makeImage(b, [
      { kind: 'text', length: 3 * MiB },
      { kind: 'random', length: 9 * MiB },
      { kind: 'zero', length: 5 * MiB },
      { kind: 'random', length: 999 },
    ]);
    const [snapA, snapB] = [await snapshot(a), await snapshot(b)];
    const full = await backup(vault, [a, b]);
    expect(full.kind).toBe('full');
    expect(full.bytesRead).toBe(sizeA + sizeB);
    expect(full.disks).toHaveLength(2);
    expect(full.disks[0]).toMatchObject({ index: 0, source: a, size: sizeA, usedBytes: snapA.usedBytes });
    expect(full.disks[1]).toMatchObject({ index: 1, source: b, size: sizeB, usedBytes: snapB.usedBytes });
    // Each disk's new data is counted for that disk: disk 1 holds 9 MiB of random data.
    expect(full.disks[0].newBytes).toBeGreaterThanOrEqual(6 * MiB);
    expect(full.disks[1].newBytes).toBeGreaterThanOrEqual(9 * MiB);
    expect(full.disks[0].newBytes + full.disks[1].newBytes).toBeLessThanOrEqual(full.bytesStored);

    await restore(vault, full.name, sb.path('one-a.img'), ['--disk', '0']);
    await restore(vault, full.name, sb.path('one-b.img'), ['--disk', '1']);
    expect(await sha256File(sb.path('one-a.img'))).toBe(snapA.sha);
    expect(await sha256File(sb.path('one-b.img'))).toBe(snapB.sha);
    await restore(vault, full.name, sb.path('all'));
    expect((await readdir(sb.path('all'))).sort()).toEqual(['disk-0.img', 'disk-1.img']);
    expect(await sha256File(sb.path('all', 'disk-0.img'))).toBe(snapA.sha);
    expect(await sha256File(sb.path('all', 'disk-1.img'))).toBe(snapB.sha);

    const noDisk = await sb.cairn(['restore', full.name, '--vault', vault, '--to', sb.path('x.img'), '--disk', '2']);
    expectCliError(noDisk, 'USAGE', `has no disk '2'`);

    // Change only disk 1: the next backup of the same pair is an incremental that reads both.
    await writeAt(b, 4 * MiB, randomBytes(128 * KiB));
    const snapB2 = await snapshot(b);
    const incr = await backup(vault, [a, b]);
    expect(incr).toMatchObject({ kind: 'incremental', parent: full.id, bytesRead: sizeA + sizeB, changedChunks: 2 });
    expect(incr.disks[0]).toMatchObject({ newChunks: 0, newBytes: 0, changeDetection: 'compare' });
    expect(incr.disks[1]).toMatchObject({ newChunks: 2, changeDetection: 'compare' });
    await restore(vault, incr.id, sb.path('incr'));
    expect(await sha256File(sb.path('incr', 'disk-0.img'))).toBe(snapA.sha);
    expect(await sha256File(sb.path('incr', 'disk-1.img'))).toBe(snapB2.sha);
  });
});

describeForTargets('a vault with 16 KiB chunks', (t) => {
  useTarget(t);

  it('backs up and restores at 16 KiB granularity', async () => {
    const chunk = 16 * KiB;
    const vault = await target.location(sb, 'vault16');
    const init = await sb.cairnJson<{ location: string; chunkSize: number }>(['vault', 'init', vault, '--chunk-size', '16K', '--json']);
    expect(init.chunkSize).toBe(chunk);
    expect(init.location).toBe(target.display(vault));
    const image = sb.path('disk.img');
    const size = await makeImage(image, [
      { kind: 'random', length: 5 * MiB },
      { kind: 'text', length: 3 * MiB },
      { kind: 'hole', length: 4 * MiB },
      { kind: 'zero', length: 2 * MiB },
      { kind: 'random', length: 2 * MiB + 5000 },
    ]);
    const s1 = await snapshot(image, chunk);
    const full = await backup(vault, [image]);
    checkBackupJson(full, image, s1, vault);
    expect(full.changedChunks).toBe(s1.digests.filter((d) => d !== 'zero').length);
    expect(full.disks[0].newChunks).toBe(distinctChunks(s1));

    // 4 KiB writes: each changes exactly one 16 KiB chunk (one straddles two).
    for (const at of [0, 100 * 1024, 6 * MiB, 9 * MiB, 13 * MiB + 4096, 16 * MiB]) await writeAt(image, at, randomBytes(4096));
    await writeAt(image, 3 * MiB - 2048, randomBytes(4096));
    const s2 = await snapshot(image, chunk);
    const incr = await backup(vault, [image]);
    checkBackupJson(incr, image, s2, vault);
    expect(incr.kind).toBe('incremental');
    expect(incr.changedChunks).toBe(8);
    expect(incr.changedChunks).toBe(changedChunks(s1.digests, s2.digests));
    expect(incr.disks[0].newChunks).toBe(8);

    const shown = await sb.cairnJson<SummaryJson>(['backups', 'show', incr.name, '--vault', vault, '--json']);
    expect(shown.disks[0].chunkSize).toBe(chunk);
    for (const [b, s] of [[full, s1], [incr, s2]] as const) {
      const to = sb.path(`${b.name}.img`);
      await restore(vault, b.name, to);
      expect((await stat(to)).size).toBe(size);
      expect(await sha256File(to)).toBe(s.sha);
    }
  });
});
