import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { CairnError, fromSystemError } from '../../../shared/errors.js';
import { LocalStore } from '../../../shared/store/local-store.js';
import { collectGarbage } from '../../../shared/vault/gc.js';
import { Vault } from '../../../shared/vault/vault.js';
import { verifyVault } from '../../../shared/vault/verify.js';
import { WorkerPool } from '../../../shared/vault/worker-pool.js';
import { runBackup } from '../../backup/backup-engine.js';
import { restoreDisk } from '../../restore/restore-disk.js';
import { FileSource } from '../../source/file-source.js';
import { parse, parseSize } from '../args.js';
import { openState } from '../context.js';
import { formatBytes, formatDuration } from '../format.js';

export const quickstartHelp = `Usage:
  cairn quickstart [--dir DIR] [--size SIZE]

Shows Cairn end to end on the embedded defaults: creates a local vault in DIR (default
./cairn-quickstart, replaced if it exists), makes a disk image of SIZE (default 512M) with random,
compressible, all-zero and sparse regions, backs it up, changes 1% of it, backs it up again
(incremental), restores both backups and checks them byte for byte (sha256), then verifies the vault.`;

export async function quickstartCommand(argv: string[], out: (s: string) => void): Promise<number> {
  const { values } = parse('quickstart', argv, { dir: { type: 'string' }, size: { type: 'string' }, help: { type: 'boolean', short: 'h' } });
  if (values.help) return (out(quickstartHelp), 0);
  const dir = resolve(values.dir ?? 'cairn-quickstart');
  const size = parseSize(values.size ?? '512M', '--size');
  if (size < 16 * 1024 * 1024) throw new CairnError('USAGE', 'quickstart: --size must be at least 16M');
  try {
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true });
  } catch (err) {
    throw fromSystemError(err, 'cannot prepare the quickstart folder', dir);
  }
  const passphrase = process.env.CAIRN_PASSPHRASE || randomBytes(12).toString('base64url');
  if (!process.env.CAIRN_PASSPHRASE) await writeFile(join(dir, 'passphrase'), passphrase + '\n', { mode: 0o600 });
  const vaultDir = join(dir, 'vault');
  const image = join(dir, 'disk.img');

  out(`1. vault: creating a local vault in ${vaultDir}`);
  const vault = await Vault.init(new LocalStore(vaultDir), passphrase, { type: 'disk' }, { indexCache: openState() });
  out(`   chunk size ${formatBytes(vault.config.chunkSize)}, zstd + AES-256-GCM, BLAKE3 chunk ids`);

  out(`2. source: writing a ${formatBytes(size)} disk image ${image}`);
  await makeImage(image, size);
  const sha1 = await sha256(image);
  out(`   sha256 ${sha1.slice(0, 16)}..., ${formatBytes((await stat(image)).blocks * 512)} allocated`);

  const b1 = await backupOnce(vault, image);
  out(`3. full backup ${b1.manifest.name}: read ${formatBytes(b1.bytesRead)}, stored ${formatBytes(b1.bytesStored)} in ${formatDuration(b1.durationMs)}`);

  const changed = await changeImage(image, size);
  const sha2 = await sha256(image);
  out(`4. change: wrote ${changed} scattered 64 KiB blocks (1%), sha256 now ${sha2.slice(0, 16)}...`);

  const b2 = await backupOnce(vault, image);
  out(
    `5. ${b2.manifest.kind} backup ${b2.manifest.name}: ${b2.changedChunks} chunks changed, ` +
      `stored ${formatBytes(b2.bytesStored)} in ${formatDuration(b2.durationMs)}`,
  );

  const { index } = await vault.loadIndex();
  const pool = new WorkerPool(vault.key, vault.config.compression.level);
  try {
    for (const [n, b, want] of [[1, b1, sha1], [2, b2, sha2]] as const) {
      const target = join(dir, `restore-${n}.img`);
      const r = await restoreDisk(vault, index, pool, b.manifest.disks[0], target);
      const got = await sha256(target);
      const ok = got === want;
      out(
        `${5 + n}. restore ${b.manifest.name} -> ${target}: ${ok ? 'identical' : 'DIFFERENT'} (sha256 ${got.slice(0, 16)}...), ` +
          `${formatBytes((await stat(target)).blocks * 512)} allocated, ${formatDuration(r.durationMs)}`,
      );
      if (!ok) throw new CairnError('VERIFY_FAILED', `the restore of ${b.manifest.name} differs from the image it was taken from`);
    }
    const v = await verifyVault(vault, { readData: true, pool });
    out(`8. verify --read-data: ${v.ok ? 'healthy' : 'PROBLEMS'}, ${v.chunksChecked} chunks in ${v.packs} packs checked`);
    if (!v.ok) throw new CairnError('VERIFY_FAILED', `verify found problems: ${v.problems[0].message}`);
  } finally {
    await pool.close();
  }
  const gc = await collectGarbage(vault, { graceMs: 15 * 60_000 });
  out(`9. gc: ${gc.packsAfter} packs in use, nothing to free (${gc.packsDeleted} deleted)`);
  out('');
  out(`try: export CAIRN_PASSPHRASE=${process.env.CAIRN_PASSPHRASE ? '...' : `$(cat ${join(dir, 'passphrase')})`}`);
  out(`     npx cairn backups list --vault ${vaultDir}`);
  return 0;
}

async function backupOnce(vault: Vault, image: string) {
  const src = await FileSource.open(image);
  try {
    return await runBackup(vault, [src]);
  } finally {
    await src.close();
  }
}

/** Regions in turn: random, compressible text, all zero (written), sparse (never written). */
async function makeImage(path: string, size: number): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.truncate(size);
    const block = 1024 * 1024;
    const text = Buffer.alloc(block, 'Cairn quickstart: a compressible log line\n');
    for (let at = 0; at < size; at += block) {
      const n = Math.min(block, size - at);
      const kind = Math.floor(at / block) % 4;
      if (kind === 0) await fh.write(randomBytes(n), 0, n, at);
      else if (kind === 1) await fh.write(text, 0, n, at);
      else if (kind === 2) await fh.write(Buffer.alloc(n), 0, n, at);
    }
  } finally {
    await fh.close();
  }
}

async function changeImage(path: string, size: number): Promise<number> {
  const blocks = Math.max(1, Math.floor((size * 0.01) / 65536));
  const fh = await open(path, 'r+');
  try {
    for (let i = 0; i < blocks; i++) {
      const at = Math.floor(Math.random() * ((size - 65536) / 4096)) * 4096;
      await fh.write(randomBytes(65536), 0, 65536, at);
    }
  } finally {
    await fh.close();
  }
  return blocks;
}

function sha256(path: string): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    const h = createHash('sha256');
    createReadStream(path, { highWaterMark: 4 * 1024 * 1024 })
      .on('data', (d) => h.update(d))
      .on('end', () => resolvePromise(h.digest('hex')))
      .on('error', reject);
  });
}
