import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { afterAll, afterEach, beforeEach, expect, it } from 'vitest';
import type { GcResult } from '../shared/vault/gc.js';
import {
  describeForTargets,
  expectCliError,
  exitCode,
  flipObjectByte,
  makeImage,
  MiB,
  newKeys,
  Sandbox,
  sha256File,
  sum,
  vaultTargets,
  writeAt,
  type BackupJson,
  type VaultTarget,
} from './helpers.js';
import type { RequestCounts } from '../shared/store/object-store.js';

/**
 * Garbage collection and verification through the real CLI: gc frees exactly the packs only deleted
 * backups needed and nothing the remaining ones need; verify --read-data finds one flipped byte and
 * names exactly the backups that need the damaged chunk; restore refuses damaged data. Every scenario
 * runs twice: with the vault in a local folder and in a bucket on the test run's S3 server (see
 * VaultTarget in helpers.ts); the tests see and damage the vault's objects only through the target.
 */

/** `vault gc --json` prints the GcResult of shared/vault/gc.ts, and the requests it made. */
type GcJson = GcResult & { requests: RequestCounts };

interface VerifyJson {
  ok: boolean;
  readData: boolean;
  backups: number;
  packs: number;
  chunksChecked: number;
  problems: { kind: string; object: string; message: string }[];
  affected: { id: string; name: string; missingChunks: number; corruptChunks: number }[];
}

let sb: Sandbox;
let target: VaultTarget;

/** Runs each test of the enclosing describe in a fresh sandbox whose CLI can reach vaults on `t`. */
function useTarget(t: VaultTarget): void {
  beforeEach(async () => {
    target = t;
    sb = await Sandbox.create(`gc-${t.kind}`, { env: t.env });
  });
  afterEach(async () => {
    await sb.cleanup();
  });
}
afterAll(async () => {
  for (const t of vaultTargets) await t.close();
});

/** Backs up and returns the parsed JSON with the pack objects the backup added. */
async function backupTracked(vault: string, image: string, name: string): Promise<BackupJson & { packs: string[]; sha: string }> {
  const sha = await sha256File(image);
  const before = await target.packs(vault);
  const b = await sb.cairnJson<BackupJson>(['backup', image, '--vault', vault, '--name', name, '--json']);
  const packs = newKeys(before, await target.packs(vault));
  // One PUT per pack it added (no multipart upload, so no POST), plus the lease, the index object,
  // the block map and the manifest (every backup here adds packs); counted alike by both stores.
  expect(b.requests, `requests of backup ${name}`).toMatchObject({ PUT: packs.length + 4, POST: 0, DELETE: 1 });
  return { ...b, packs, sha };
}

async function expectRestores(vault: string, name: string, sha: string): Promise<void> {
  const to = sb.path(`restored-${name}.img`);
  const r = await sb.cairn(['restore', name, '--vault', vault, '--to', to]);
  expect(r.code, `restore ${name}: ${r.stderr}`).toBe(0);
  expect(await sha256File(to), `restore of ${name}`).toBe(sha);
  await rm(to);
}

describeForTargets('vault gc', (t) => {
  useTarget(t);

  it('frees exactly the packs of deleted backups, keeps the rest restorable, and empties the vault when all are deleted', async () => {
    const vault = await target.init(sb, 'vault');
    const image = sb.path('disk.img');
    // 8 MiB stable random data, a 6 MiB region rewritten by every incremental, text, a hole.
    await makeImage(image, [
      { kind: 'random', length: 8 * MiB },
      { kind: 'random', length: 6 * MiB },
      { kind: 'text', length: 4 * MiB },
      { kind: 'hole', length: 6 * MiB },
      { kind: 'random', length: 3000 },
    ]);
    const made = [await backupTracked(vault, image, 'b0-full')];
    for (let i = 1; i <= 4; i++) {
      await writeAt(image, 8 * MiB, randomBytes(6 * MiB));
      made.push(await backupTracked(vault, image, `b${i}`));
    }
    expect(made.map((b) => b.kind)).toEqual(['full', 'incremental', 'incremental', 'incremental', 'incremental']);
    for (const b of made) expect(b.packs.length, `packs of ${b.name}`).toBeGreaterThan(0);

    const packsBefore = await target.packs(vault);
    // Delete the middle three: their rewritten region is needed by no other backup.
    for (const b of made.slice(1, 4)) {
      const r = await sb.cairnJson<{ deleted: { id: string; name: string } }>(['backups', 'delete', b.name, '--vault', vault, '--json']);
      expect(r.deleted).toEqual({ id: b.id, name: b.name });
    }
    const afterDelete = await target.objects(vault);
    for (const b of made.slice(1, 4)) {
      expect(afterDelete.has(`backups/${b.id}`)).toBe(false);
      expect([...afterDelete.keys()].some((k) => k.startsWith(`blockmaps/${b.id}/`))).toBe(false);
    }
    const list = await sb.cairnJson<BackupJson[]>(['backups', 'list', '--vault', vault, '--json']);
    expect(list.map((b) => b.name)).toEqual(['b0-full', 'b4']);
    // Deleting frees nothing by itself.
    expect(await target.packs(vault)).toEqual(packsBefore);

    const gc = await sb.cairnJson<GcJson>(['vault', 'gc', '--vault', vault, '--grace', '0', '--json']);
    const packsAfter = await target.packs(vault);
    const dead = made.slice(1, 4).flatMap((b) => b.packs);
    const kept = [...made[0].packs, ...made[4].packs].sort();
    expect([...packsAfter.keys()].sort()).toEqual(kept);
    expect(gc).toMatchObject({ backups: 2, packsBefore: packsBefore.size, packsDeleted: dead.length, packsRepacked: 0, deferred: null });
    expect(gc.packsAfter).toBe(kept.length);
    expect(gc.bytesFreed).toBe(sum(dead.map((k) => packsBefore.get(k)!)));
    expect(sum(packsAfter.values())).toBe(sum(packsBefore.values()) - gc.bytesFreed);
    // Three rewrites of 6 MiB of random data were freed.
    expect(gc.bytesFreed).toBeGreaterThanOrEqual(18 * MiB);
    // gc leaves no plan, lease or temp file (on S3: unfinished multipart upload) behind.
    const files = [...(await target.objects(vault)).keys()];
    expect(files.filter((k) => k.startsWith('gc/') || k.startsWith('leases/') || k.includes('.tmp-'))).toEqual([]);
    expect(await target.incomplete(vault)).toEqual([]);
    // gc counts its requests for both stores: at least one DELETE per freed pack and per index object
    // it merged away, and no multipart upload (nothing was repacked).
    expect(gc.indexObjectsAfter).toBeLessThanOrEqual(gc.indexObjectsBefore);
    expect(gc.requests.DELETE).toBeGreaterThanOrEqual(dead.length + gc.indexObjectsBefore - gc.indexObjectsAfter);
    expect(gc.requests.POST).toBe(0);

    await expectRestores(vault, 'b0-full', made[0].sha);
    await expectRestores(vault, 'b4', made[4].sha);
    const verify = await sb.cairn(['vault', 'verify', '--vault', vault, '--read-data']);
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
    expect(verify.stdout).toContain('vault is healthy');

    // A second gc finds nothing more to free.
    const again = await sb.cairnJson<GcJson>(['vault', 'gc', '--vault', vault, '--grace', '0', '--json']);
    expect(again).toMatchObject({ packsDeleted: 0, packsRepacked: 0, bytesFreed: 0 });
    expect(await target.packs(vault)).toEqual(packsAfter);

    // Delete everything: gc leaves no packs and no block maps.
    for (const name of ['b0-full', 'b4']) expect((await sb.cairn(['backups', 'delete', name, '--vault', vault])).code).toBe(0);
    const gcAll = await sb.cairnJson<GcJson>(['vault', 'gc', '--vault', vault, '--grace', '0', '--json']);
    expect(gcAll).toMatchObject({ backups: 0, packsDeleted: kept.length, packsAfter: 0 });
    expect(await target.packs(vault)).toEqual(new Map());
    const left = [...(await target.objects(vault)).keys()];
    expect(left.filter((k) => !k.startsWith('index/') && !k.startsWith('keys/') && k !== 'config')).toEqual([]);
    expect(await sb.cairnJson(['backups', 'list', '--vault', vault, '--json'])).toEqual([]);

    // The emptied vault takes a new backup from scratch and restores it.
    const fresh = await backupTracked(vault, image, 'fresh');
    expect(fresh.kind).toBe('full');
    expect(fresh.packs.length).toBeGreaterThan(0);
    await expectRestores(vault, 'fresh', fresh.sha);
  });
});

describeForTargets('vault verify', (t) => {
  useTarget(t);

  it('finds a flipped byte, names exactly the backups that need it, and restore refuses the damaged data', async () => {
    const vault = await target.init(sb, 'vault');
    const image = sb.path('disk.img');
    // Random data only (no text that another image could share): the full fits in one pack.
    await makeImage(image, [
      { kind: 'random', length: 12 * MiB + 777 },
      { kind: 'zero', length: 2 * MiB },
      { kind: 'hole', length: 10 * MiB },
    ]);
    const oldest = await backupTracked(vault, image, 'oldest');
    expect(oldest.packs.length).toBeGreaterThan(0);
    const packsOfOldest = await target.packs(vault);
    const [damaged, size] = [...packsOfOldest].sort((a, b) => b[1] - a[1])[0];
    // middle fills part of the hole: it still needs every chunk of oldest.
    await writeAt(image, 16 * MiB, randomBytes(4 * MiB));
    const middle = await backupTracked(vault, image, 'middle');
    // newest rewrites all of oldest's data: it needs no chunk of oldest's packs.
    await writeAt(image, 0, randomBytes(12 * MiB + 777));
    const newest = await backupTracked(vault, image, 'newest');
    const other = sb.path('other.img');
    await makeImage(other, [
      { kind: 'random', length: 6 * MiB },
      { kind: 'hole', length: 10 * MiB },
    ]);
    const unrelated = await backupTracked(vault, other, 'other');
    expect([oldest, middle, newest, unrelated].map((b) => b.kind)).toEqual(['full', 'incremental', 'incremental', 'full']);

    const healthy = await sb.cairnJson<VerifyJson>(['vault', 'verify', '--vault', vault, '--read-data', '--json']);
    expect(healthy).toMatchObject({ ok: true, backups: 4, problems: [], affected: [] });

    // Read, flip, write back: in a folder the file is rewritten in place, on S3 the object replaced.
    await flipObjectByte(target, vault, damaged, Math.floor(size / 2));
    expect((await target.packs(vault)).get(damaged)).toBe(size);

    // --read-data finds it and names oldest and middle, not newest or other.
    const text = await sb.cairn(['vault', 'verify', '--vault', vault, '--read-data']);
    expectCliError(text, 'VERIFY_FAILED', 'affected: oldest, middle');
    expect(text.code).toBe(exitCode('VERIFY_FAILED'));
    expect(text.stdout).toMatch(new RegExp(`^affected backup: oldest \\(${oldest.id}\\): 0 missing, 1 corrupt chunks$`, 'm'));
    expect(text.stdout).toMatch(new RegExp(`^affected backup: middle \\(${middle.id}\\): 0 missing, 1 corrupt chunks$`, 'm'));
    expect(text.stdout).not.toContain('affected backup: newest');
    expect(text.stdout).not.toContain('affected backup: other');
    expect(text.stdout).toContain('problem: corrupt-chunk');

    const json = await sb.cairn(['vault', 'verify', '--vault', vault, '--read-data', '--json']);
    expect(json.code).toBe(exitCode('VERIFY_FAILED'));
    const report = JSON.parse(json.stdout) as VerifyJson;
    expect(report.ok).toBe(false);
    expect(report.problems).toHaveLength(1);
    expect(report.problems[0]).toMatchObject({ kind: 'corrupt-chunk', object: damaged });
    expect(report.affected).toEqual([
      { id: oldest.id, name: 'oldest', missingChunks: 0, corruptChunks: 1 },
      { id: middle.id, name: 'middle', missingChunks: 0, corruptChunks: 1 },
    ]);

    // Structure only does not read chunk data: the vault's structure is intact.
    const structure = await sb.cairn(['vault', 'verify', '--vault', vault]);
    expect(structure.code, structure.stdout + structure.stderr).toBe(0);
    expect(structure.stdout).toContain('vault is healthy');

    // Restores of affected backups fail cleanly and leave nothing at --to; the others still work.
    for (const name of ['oldest', 'middle']) {
      const to = sb.path('out', `${name}.img`);
      await rm(sb.path('out'), { recursive: true, force: true });
      await mkdir(sb.path('out'));
      const r = await sb.cairn(['restore', name, '--vault', vault, '--to', to]);
      expectCliError(r, 'VAULT_CORRUPT', damaged.split('/').pop()!);
      expect(await readdir(sb.path('out')), `files left by the failed restore of ${name}`).toEqual([]);
    }
    await expectRestores(vault, 'newest', newest.sha);
    await expectRestores(vault, 'other', unrelated.sha);

    // A missing pack is a structural problem: plain verify fails and names only the backup that needs it.
    for (const k of unrelated.packs) await target.remove(vault, k);
    const missing = await sb.cairn(['vault', 'verify', '--vault', vault, '--json']);
    expect(missing.code).toBe(exitCode('VERIFY_FAILED'));
    const missingReport = JSON.parse(missing.stdout) as VerifyJson;
    expect(missingReport.problems.map((p) => p.kind)).toEqual(unrelated.packs.map(() => 'missing-pack'));
    expect(missingReport.affected.map((a) => a.name)).toEqual(['other']);
    expect(missingReport.affected[0].missingChunks).toBe(6 * 16); // 6 MiB of 64 KiB chunks
    // With --read-data both kinds of damage are reported.
    const both = await sb.cairn(['vault', 'verify', '--vault', vault, '--read-data']);
    expectCliError(both, 'VERIFY_FAILED', 'affected: oldest, middle, other');
  });
});
