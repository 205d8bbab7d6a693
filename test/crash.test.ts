import { spawn, type ChildProcess } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import { cpSync, readdirSync, statSync } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalStore } from '../shared/store/local-store.js';
import { collectGarbage } from '../shared/vault/gc.js';
import { LEASE_TTL_MS } from '../shared/vault/lease.js';
import { Vault } from '../shared/vault/vault.js';
import { cliPath, expectOk, MiB, PASSPHRASE, Sandbox, sha256File, type CliResult, type BackupJson } from './helpers.js';

/**
 * SIGKILL during `cairn backup` and `cairn vault gc`, at points found by watching the vault folder
 * with a fast poll loop: the lease appears, the first pack of the new backup appears, an index object
 * for new packs appears, the block map appears (before the manifest); for gc: its lease, its first
 * repacked pack, gc/plan, the first deleted pack. After each kill the vault must verify, every committed
 * backup must restore bit for bit, and a rerun must finish the job (and, for backups, reuse what the
 * killed run had uploaded).
 *
 * A point can be missed when the process gets past it between two polls (or finishes first); the
 * test then asserts on the state the vault did reach, which it reads back after the kill.
 *
 * The vault uses 1 MiB packs so that a 64 MiB image with 32 MiB of new random data spans ~32 packs and
 * four index-object rounds (one every 8 packs); with the default 16 MiB there would be two packs.
 */

const IMAGE_MIB = 64;

interface SummaryJson {
  id: string;
  name: string;
  kind: string;
}

interface GcJson {
  packsDeleted: number;
  packsRepacked: number;
  packsAfter: number;
  bytesFreed: number;
  deferred: { leases: number } | null;
}

/** Deterministic bytes: an AES-CTR keystream named by `seed`. */
function keystream(seed: string, length: number): Buffer {
  const key = createHash('sha256').update(seed).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length));
}

/**
 * The base image, per MiB block i: random (i%4==0), compressible text (1), zeros (2), half random
 * and half zeros (3). The changed image rewrites every even block (50%) with new random data, so
 * every pack of the first backup ends up holding both live and dead chunks.
 */
function baseImage(): Buffer {
  const img = Buffer.alloc(IMAGE_MIB * MiB);
  for (let i = 0; i < IMAGE_MIB; i++) {
    const at = i * MiB;
    if (i % 4 === 0) keystream(`base-${i}`, MiB).copy(img, at);
    else if (i % 4 === 1) img.fill(`block ${i}: a compressible line of a log file\n`, at, at + MiB);
    else if (i % 4 === 3) keystream(`base-${i}`, MiB / 2).copy(img, at);
  }
  return img;
}

function changedImage(base: Buffer): Buffer {
  const img = Buffer.from(base);
  for (let i = 0; i < IMAGE_MIB; i += 2) keystream(`changed-${i}`, MiB).copy(img, i * MiB);
  return img;
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

async function writeImage(path: string, data: Buffer): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.writeFile(data);
  } finally {
    await fh.close();
  }
}

// ---- watching a vault folder -----------------------------------------------------------------

const isTemp = (name: string) => name.startsWith('.tmp-');

/** Entries of a folder (no temp files); empty when it does not exist. Fast enough to poll every ms. */
function entries(dir: string): string[] {
  try {
    return readdirSync(dir).filter((n) => !isTemp(n));
  } catch {
    return [];
  }
}

/** Pack ids in a vault folder. */
function packIds(vault: string): Set<string> {
  const out = new Set<string>();
  for (const prefix of entries(join(vault, 'packs'))) for (const id of entries(join(vault, 'packs', prefix))) out.add(id);
  return out;
}

/** Block map keys `<backup id>/<disk>` in a vault folder. */
function blockMapKeys(vault: string): Set<string> {
  const out = new Set<string>();
  for (const b of entries(join(vault, 'blockmaps'))) for (const d of entries(join(vault, 'blockmaps', b))) out.add(`${b}/${d}`);
  return out;
}

interface VaultState {
  packs: Set<string>;
  index: Set<string>;
  blockMaps: Set<string>;
  backups: Set<string>;
  leases: Set<string>;
  gcPlan: boolean;
}

function vaultState(vault: string): VaultState {
  return {
    packs: packIds(vault),
    index: new Set(entries(join(vault, 'index'))),
    blockMaps: blockMapKeys(vault),
    backups: new Set(entries(join(vault, 'backups'))),
    leases: new Set(entries(join(vault, 'leases'))),
    gcPlan: entries(join(vault, 'gc')).includes('plan'),
  };
}

function added<T>(before: Set<T>, after: Set<T>): T[] {
  return [...after].filter((x) => !before.has(x));
}

/** Temp files left below a folder by interrupted writes. */
function tempFiles(dir: string): string[] {
  return (readdirSync(dir, { recursive: true }) as string[]).filter((p) => isTemp(p.split('/').pop()!));
}

function packBytes(vault: string, ids: Iterable<string>): number {
  let n = 0;
  for (const id of ids) n += statSync(join(vault, 'packs', id.slice(0, 2), id)).size;
  return n;
}

// ---- running the CLI under a watch -------------------------------------------------------------

interface Watched {
  /** True when the test killed the process (false: it exited before the point was seen). */
  killed: boolean;
  result: CliResult;
  /** Milliseconds from spawn to the kill (or exit). */
  ms: number;
}

/**
 * Runs `cairn ...args`, polls `reached()` every millisecond or so, and SIGKILLs the process as soon
 * as it returns true. Resolves when the process is gone.
 */
async function runAndKillWhen(args: string[], env: Record<string, string>, reached: () => boolean): Promise<Watched> {
  const childEnv: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('CAIRN_')) childEnv[k] = v;
  Object.assign(childEnv, env);
  const t0 = performance.now();
  const child: ChildProcess = spawn(process.execPath, [cliPath, ...args], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout!.on('data', (d: Buffer) => out.push(d));
  child.stderr!.on('data', (d: Buffer) => err.push(d));
  let exited = false;
  const done = new Promise<CliResult>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      exited = true;
      resolve({
        code: code ?? 128,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8') + (signal ? `\n[killed by ${signal}]` : ''),
      });
    });
  });
  let killed = false;
  let ms = 0;
  while (!exited) {
    if (reached()) {
      killed = child.kill('SIGKILL');
      ms = performance.now() - t0;
      break;
    }
    await new Promise((r) => setTimeout(r, 1));
    if (performance.now() - t0 > 60_000) {
      child.kill('SIGKILL');
      throw new Error(`cairn ${args.join(' ')} neither reached the kill point nor exited within 60 s`);
    }
  }
  const result = await done;
  if (!killed) ms = performance.now() - t0;
  return { killed: killed && result.stderr.includes('[killed by SIGKILL]'), result, ms };
}

// ---- the suite -------------------------------------------------------------------------------

describe('SIGKILL during backup and gc', () => {
  let box: Sandbox;
  let image: string;
  let baseSha: string;
  let changedSha: string;
  /** A vault holding one full backup ('base') of the base image; every scenario works on a copy. */
  let baseVault: string;
  let base: BackupJson;
  /** What an uninterrupted second backup of the changed image stores. */
  let reference: BackupJson;
  /** A vault with 'base' deleted and 'second' (the changed image) kept, ready for gc. */
  let gcVault: string;
  let cleanGc: { result: GcJson; packBytes: number };
  let copies = 0;

  const env = (stateDir: string) => ({ CAIRN_PASSPHRASE: PASSPHRASE, CAIRN_STATE_DIR: stateDir });

  /**
   * A fresh copy of a vault and a fresh state folder for one scenario. The copy keeps modification
   * times: gc tells packs of running backups from old ones by them.
   */
  function copyVault(from: string, label: string): { vault: string; state: string } {
    const n = ++copies;
    const vault = box.path(`${label}-${n}`);
    cpSync(from, vault, { recursive: true, preserveTimestamps: true });
    return { vault, state: box.path(`state-${label}-${n}`) };
  }

  const cairn = (args: string[], state: string) => box.cairn(args, { env: { CAIRN_STATE_DIR: state } });

  async function json<T>(args: string[], state: string): Promise<T> {
    const r = await cairn(args, state);
    expectOk(r, args);
    return JSON.parse(r.stdout) as T;
  }

  async function expectVerifies(vault: string, state: string): Promise<void> {
    const r = await cairn(['vault', 'verify', '--vault', vault, '--read-data', '--json'], state);
    expect(r.code, `verify of ${vault}: ${r.stdout}\n${r.stderr}`).toBe(0);
    const v = JSON.parse(r.stdout) as { ok: boolean; chunksChecked: number };
    expect(v.ok).toBe(true);
    expect(v.chunksChecked).toBeGreaterThan(0);
  }

  async function expectRestores(vault: string, state: string, backup: string, sha: string): Promise<void> {
    const to = box.path(`restored-${++copies}.img`);
    expectOk(await cairn(['restore', backup, '--vault', vault, '--to', to], state));
    expect(await sha256File(to), `restore of ${backup} from ${vault}`).toBe(sha);
    await rm(to);
  }

  async function backupNames(vault: string, state: string): Promise<string[]> {
    return (await json<SummaryJson[]>(['backups', 'list', '--vault', vault, '--json'], state)).map((b) => b.name);
  }

  /** No key that `list` yields names a temp file, whatever temp files the kill left on disk. */
  async function expectNoTempKeys(vault: string): Promise<void> {
    const keys: string[] = [];
    for await (const o of new LocalStore(vault).list('')) keys.push(o.key);
    expect(keys.length).toBeGreaterThan(0);
    expect(keys.filter((k) => k.split('/').some(isTemp))).toEqual([]);
  }

  beforeAll(async () => {
    box = await Sandbox.create('crash');
    image = box.path('disk.img');
    const img = baseImage();
    const changed = changedImage(img);
    baseSha = sha256(img);
    changedSha = sha256(changed);
    await writeImage(image, img);
    baseVault = box.path('base-vault');
    const state = box.path('state-setup');
    expectOk(await cairn(['vault', 'init', baseVault, '--pack-size', '1M'], state));
    base = await json<BackupJson>(['backup', image, '--vault', baseVault, '--name', 'base', '--json'], state);
    // From here on the image holds the changed data; every backup below is of it.
    await writeImage(image, changed);

    const ref = copyVault(baseVault, 'reference');
    reference = await json<BackupJson>(['backup', image, '--vault', ref.vault, '--name', 'second', '--json'], ref.state);
    expect(reference).toMatchObject({ kind: 'incremental', parent: base.id, recoveredPacks: 0 });
    expect(reference.bytesStored).toBeGreaterThan(30 * MiB);

    gcVault = ref.vault;
    expectOk(await cairn(['backups', 'delete', 'base', '--vault', gcVault], ref.state));
    const clean = copyVault(gcVault, 'clean-gc');
    const result = await json<GcJson>(['vault', 'gc', '--vault', clean.vault, '--grace', '0', '--json'], clean.state);
    expect(result.deferred).toBeNull();
    expect(result.packsDeleted).toBeGreaterThan(0);
    expect(result.packsRepacked).toBeGreaterThan(0);
    cleanGc = { result, packBytes: packBytes(clean.vault, packIds(clean.vault)) };
  });

  afterAll(async () => {
    await box?.cleanup();
  });

  type BackupPoint = 'lease' | 'first-pack' | 'index' | 'block-map';

  const backupPoints: { point: BackupPoint; what: string; reached: (vault: string, before: VaultState) => () => boolean }[] = [
    { point: 'lease', what: 'right after start (its lease appears)', reached: (v) => () => entries(join(v, 'leases')).length > 0 },
    {
      point: 'first-pack',
      what: 'after the first pack of the new backup is stored',
      reached: (v, before) => () => added(before.packs, packIds(v)).length > 0,
    },
    {
      point: 'index',
      what: 'after an index object for new packs is stored',
      reached: (v, before) => () => entries(join(v, 'index')).some((k) => !before.index.has(k)),
    },
    {
      point: 'block-map',
      what: 'after the block map is stored, before the manifest',
      reached: (v, before) => () => added(before.blockMaps, blockMapKeys(v)).length > 0,
    },
  ];

  for (const { point, what, reached } of backupPoints) {
    it(`backup killed ${what}: the vault verifies, the old backup restores, a rerun completes`, async () => {
      const { vault, state } = copyVault(baseVault, `kill-backup-${point}`);
      const before = vaultState(vault);
      const name = `crash-${point}`;
      const run = await runAndKillWhen(['backup', image, '--vault', vault, '--name', name, '--json'], env(state), reached(vault, before));
      const after = vaultState(vault);
      const newPacks = added(before.packs, after.packs);
      const newIndex = added(before.index, after.index);
      const committed = added(before.backups, after.backups).length > 0;
      const onDisk = tempFiles(vault);
      console.log(
        `[crash] backup ${point}: ${run.killed ? `killed after ${Math.round(run.ms)} ms` : `exited ${run.result.code} first`}; ` +
          `${newPacks.length} new packs, ${newIndex.length} new index objects, ` +
          `${added(before.blockMaps, after.blockMaps).length} new block maps, manifest ${committed ? 'written' : 'absent'}, ` +
          `${onDisk.length} temp files on disk`,
      );

      if (!run.killed || committed) {
        // The kill came too late: the backup committed. That state must be whole too.
        if (!run.killed) expectOk(run.result);
        const [names] = await Promise.all([
          backupNames(vault, state),
          expectVerifies(vault, state),
          expectRestores(vault, state, 'base', baseSha),
          expectRestores(vault, state, name, changedSha),
          expectNoTempKeys(vault),
        ]);
        expect(names).toEqual(['base', name]);
        return;
      }

      // The point was reached: what the watch saw is on disk.
      if (point === 'first-pack') expect(newPacks.length).toBeGreaterThan(0);
      if (point === 'index') expect(newIndex.length).toBeGreaterThan(0);
      if (point === 'block-map') expect(added(before.blockMaps, after.blockMaps)).toHaveLength(1);
      expect(after.leases.size, 'the killed run leaves its lease behind').toBe(1);

      // Killed before the commit point: no trace of the backup for readers, the old one intact.
      // Which of the killed run's packs no index names: the rerun must pick exactly those up.
      const [names, opened] = await Promise.all([
        backupNames(vault, state),
        Vault.open(new LocalStore(vault), PASSPHRASE),
        expectVerifies(vault, state),
        expectRestores(vault, state, 'base', baseSha),
        expectNoTempKeys(vault),
      ]);
      expect(names).toEqual(['base']);
      const { index } = await opened.loadIndex();
      const unindexed = newPacks.filter((p) => !index.hasPack(p));
      const uploaded = packBytes(vault, newPacks);

      const rerun = await json<BackupJson>(['backup', image, '--vault', vault, '--name', name, '--json'], state);
      expect(rerun).toMatchObject({ name, kind: 'incremental', parent: base.id, recoveredPacks: unindexed.length });
      // Chunks the killed run uploaded are not uploaded again.
      expect(rerun.bytesStored).toBeLessThanOrEqual(reference.bytesStored - 0.9 * uploaded + 64 * 1024);
      if (point === 'first-pack' || point === 'index') {
        expect(uploaded).toBeGreaterThan(0);
        expect(rerun.bytesStored).toBeLessThan(reference.bytesStored);
      }
      await expectRestores(vault, state, name, changedSha);
    });
  }

  type GcPoint = 'lease' | 'repacked-pack' | 'plan' | 'first-delete';

  const gcPoints: { point: GcPoint; what: string; reached: (vault: string, before: VaultState) => () => boolean }[] = [
    { point: 'lease', what: 'right after start (its lease appears)', reached: (v) => () => entries(join(v, 'leases')).length > 0 },
    {
      point: 'repacked-pack',
      what: 'after its first repacked pack is stored',
      reached: (v, before) => () => added(before.packs, packIds(v)).length > 0,
    },
    { point: 'plan', what: 'as soon as gc/plan appears', reached: (v) => () => entries(join(v, 'gc')).includes('plan') },
    {
      point: 'first-delete',
      what: 'after it deleted the first condemned pack',
      reached: (v, before) => () => {
        const now = packIds(v);
        return [...before.packs].some((p) => !now.has(p));
      },
    },
  ];

  /** Outcomes of the killed gc runs, for the test of an immediate rerun below. */
  const killedGcs: { point: GcPoint; vault: string; state: string }[] = [];

  for (const { point, what, reached } of gcPoints) {
    it(`gc killed ${what}: the vault verifies, the kept backup restores, a later gc frees the space`, async () => {
      const { vault, state } = copyVault(gcVault, `kill-gc-${point}`);
      const before = vaultState(vault);
      const beforeBytes = packBytes(vault, before.packs);
      const run = await runAndKillWhen(['vault', 'gc', '--vault', vault, '--grace', '0', '--json'], env(state), reached(vault, before));
      const after = vaultState(vault);
      if (run.killed) {
        // Kept as killed, for the test of an immediate rerun below.
        const pristine = box.path(`kill-gc-${point}-as-killed`);
        cpSync(vault, pristine, { recursive: true, preserveTimestamps: true });
        killedGcs.push({ point, vault: pristine, state });
      }
      console.log(
        `[crash] gc ${point}: ${run.killed ? `killed after ${Math.round(run.ms)} ms` : `exited ${run.result.code} first`}; ` +
          `${added(before.packs, after.packs).length} new packs, ${added(after.packs, before.packs).length} packs deleted, ` +
          `plan ${after.gcPlan ? 'present' : 'absent'}, ${tempFiles(vault).length} temp files on disk`,
      );
      if (!run.killed) expectOk(run.result);
      if (run.killed && point === 'repacked-pack') expect(added(before.packs, after.packs).length).toBeGreaterThan(0);
      if (run.killed && point === 'plan') expect(after.gcPlan).toBe(true);
      if (run.killed && point === 'first-delete') expect(added(after.packs, before.packs).length).toBeGreaterThan(0);

      const [names] = await Promise.all([
        backupNames(vault, state),
        expectVerifies(vault, state),
        expectRestores(vault, state, 'second', changedSha),
        expectNoTempKeys(vault),
      ]);
      expect(names).toEqual(['second']);

      // A later gc completes the job. The killed gc's lease lives until it expires (it cannot be told
      // from a gc still running on another host), so this one runs with the clock past the lease TTL.
      const later = await Vault.open(new LocalStore(vault), PASSPHRASE, {
        clock: { now: () => new Date(Date.now() + LEASE_TTL_MS + 60_000) },
      });
      const r = await collectGarbage(later, { graceMs: 0 });
      expect(r.deferred).toBeNull();
      expect(vaultState(vault).gcPlan).toBe(false);
      expect(vaultState(vault).leases.size).toBe(0);
      const afterBytes = packBytes(vault, packIds(vault));
      expect(afterBytes).toBeLessThan(beforeBytes);
      // As much space freed as by a gc that was never interrupted (repacking may cut packs differently).
      expect(afterBytes).toBeLessThanOrEqual(cleanGc.packBytes * 1.02 + 64 * 1024);
      await Promise.all([expectVerifies(vault, state), expectRestores(vault, state, 'second', changedSha)]);
    });
  }

  // FORMAT.md, "Garbage collection": "A crash anywhere in gc leaves a vault that restores: the plan
  // stays and the next gc completes it." Run right away, the next gc waits instead for the killed gc's
  // own lease (live for LEASE_TTL_MS, 15 minutes) as if it were a backup that started before the plan.
  it('a gc run right after a killed gc completes it instead of waiting for the dead gc\'s lease', async () => {
    expect(killedGcs.length, 'no gc run was killed before it finished').toBeGreaterThan(0);
    for (const k of killedGcs) {
      const r = await json<GcJson>(['vault', 'gc', '--vault', k.vault, '--grace', '0', '--json'], k.state);
      expect(r.deferred, `gc right after a gc killed at '${k.point}'`).toBeNull();
      expect(vaultState(k.vault).gcPlan).toBe(false);
      // Packs the killed gc wrote are younger than its lease and may wait for the next run: two at most.
      expect(packBytes(k.vault, packIds(k.vault))).toBeLessThanOrEqual(cleanGc.packBytes + 2 * MiB);
    }
  });

  it('setup sanity: the second backup is incremental on the first and gc of the deleted first frees data', () => {
    expect(base.kind).toBe('full');
    expect(reference.parent).toBe(base.id);
    expect(cleanGc.result.bytesFreed).toBeGreaterThan(10 * MiB);
  });
});
