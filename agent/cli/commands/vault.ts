import { CairnError } from '../../../shared/errors.js';
import { vaultTypes, type VaultType } from '../../../shared/vault/config.js';
import { collectGarbage } from '../../../shared/vault/gc.js';
import { Vault } from '../../../shared/vault/vault.js';
import { verifyVault } from '../../../shared/vault/verify.js';
import { WorkerPool } from '../../../shared/vault/worker-pool.js';
import { parse, parseDuration, parseSize, vaultOptions } from '../args.js';
import { openStore, openVault, readPassphrase } from '../context.js';
import { isS3Url } from '../../../shared/store/s3-url.js';
import { formatBytes } from '../format.js';
import { ProgressBar } from '../progress.js';

export const vaultHelp = `Usage:
  cairn vault init <vault> [--type disk|server|filesystem|hybrid] [--chunk-size SIZE] [--file-chunk-avg SIZE]
                   [--pack-size SIZE] [--compression-level N] [--immutable-days N] [--kdf-log-n N] [--json]
  cairn vault gc --vault <vault> [--grace DURATION] [--upload-concurrency N] [--json]
  cairn vault verify --vault <vault> [--read-data] [--json]

<vault> is a folder path, file:///path, or s3://bucket/prefix with optional ?endpoint=URL,
&region=R, &path-style=true (S3-compatible services) and &profile=NAME; S3 credentials come from the
standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws). The passphrase comes
from CAIRN_PASSPHRASE or --passphrase-file FILE. --limit-upload / --limit-download R cap transfers to
R MiB/s.
  init     create a vault; --chunk-size is the fixed chunk size of disk block maps (default 64K);
           --file-chunk-avg the average content-defined chunk of file data (default 1M; chunks are
           from a quarter to four times it);
           packs are 16M in a folder and 32M in S3 by default; --immutable-days N (S3 buckets with
           Object Lock) keeps every backup N days so that nobody can delete it earlier; --kdf-log-n N
           (12-20, default 16) sets the passphrase's scrypt cost to 2^N: lower for small hosts or
           throw-away vaults (each step halves unlock time and the cost of guessing the passphrase)
  gc       delete data no backup needs; keeps data younger than --grace (default 15m) and data of
           backups still running
  verify   check that every backup is complete; --read-data also decrypts and hashes every chunk`;

export async function vaultCommand(argv: string[], out: (s: string) => void): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case 'init':
      return init(rest, out);
    case 'gc':
      return gc(rest, out);
    case 'verify':
      return verify(rest, out);
    case undefined:
    case '--help':
    case '-h':
    case 'help':
      out(vaultHelp);
      return 0;
    default:
      throw new CairnError('USAGE', `unknown command 'cairn vault ${sub}'; see 'cairn vault --help'`);
  }
}

async function init(argv: string[], out: (s: string) => void): Promise<number> {
  const { values, positionals } = parse('vault init', argv, {
    ...vaultOptions,
    type: { type: 'string' },
    'chunk-size': { type: 'string' },
    'file-chunk-avg': { type: 'string' },
    'compression-level': { type: 'string' },
    'pack-size': { type: 'string' },
    'immutable-days': { type: 'string' },
    'kdf-log-n': { type: 'string' },
  });
  if (values.help) return (out(vaultHelp), 0);
  const location = positionals[0] ?? values.vault;
  if (!location || positionals.length > 1) {
    throw new CairnError('USAGE', `vault init: give exactly one vault location, e.g. 'cairn vault init /srv/vault'`);
  }
  const type = (values.type ?? 'disk') as VaultType;
  if (!vaultTypes.includes(type)) {
    throw new CairnError('USAGE', `vault init: --type must be one of ${vaultTypes.join(', ')}, not '${values.type}'`);
  }
  const chunkSize = values['chunk-size'] ? parseSize(values['chunk-size'], '--chunk-size') : undefined;
  const fileAvg = values['file-chunk-avg'] ? parseSize(values['file-chunk-avg'], '--file-chunk-avg') : undefined;
  if (fileAvg !== undefined && (fileAvg < 16 * 1024 || fileAvg > 16 * 1024 * 1024 || (fileAvg & (fileAvg - 1)) !== 0)) {
    throw new CairnError('USAGE', `vault init: --file-chunk-avg must be a power of two from 16K to 16M, e.g. 1M`);
  }
  const level = values['compression-level'] !== undefined ? Number(values['compression-level']) : undefined;
  if (level !== undefined && (!Number.isInteger(level) || level < -7 || level > 19)) {
    throw new CairnError('USAGE', `vault init: --compression-level must be an integer from -7 to 19`);
  }
  // Object storage bills per request: 32 MiB packs keep a backup near 35 PUTs per GiB stored.
  const packSize = values['pack-size'] ? parseSize(values['pack-size'], '--pack-size') : isS3Url(location) ? 32 * 1024 * 1024 : undefined;
  if (packSize !== undefined && (packSize < 1024 * 1024 || packSize > 128 * 1024 * 1024)) {
    throw new CairnError('USAGE', `vault init: --pack-size must be from 1M to 128M (16M to 64M suits object stores)`);
  }
  const days = values['immutable-days'];
  if (days !== undefined && !/^\d+$/.test(days)) {
    throw new CairnError('USAGE', `vault init: --immutable-days must be a whole number of days, not '${days}'`);
  }
  const kdf = values['kdf-log-n'];
  if (kdf !== undefined && !/^\d+$/.test(kdf)) {
    throw new CairnError('USAGE', `vault init: --kdf-log-n must be a whole number from 12 to 20, not '${kdf}'`);
  }
  const store = await openStore(location, values);
  // The store is checked before the passphrase is asked for, so a wrong URL is named as such.
  if (await store.stat('config')) {
    throw new CairnError('VAULT_EXISTS', `a vault exists already at ${store.location}; use it, or choose an empty location`);
  }
  const passphrase = readPassphrase(values['passphrase-file']);
  const vault = await Vault.init(store, passphrase, {
    type,
    chunkSize,
    ...(fileAvg !== undefined ? { cdc: { min: fileAvg / 4, avg: fileAvg, max: fileAvg * 4 } } : {}),
    compressionLevel: level,
    packSize,
    immutableDays: days === undefined ? undefined : Number(days),
    kdfLogN: kdf === undefined ? undefined : Number(kdf),
  });
  const c = vault.config;
  if (values.json) out(JSON.stringify({ location: vault.store.location, ...c }));
  else {
    out(`created ${c.type} vault ${c.id} at ${vault.store.location}`);
    out(`chunk size ${formatBytes(c.chunkSize)}, packs of ${formatBytes(c.packSize)}, zstd level ${c.compression.level}${c.compression.fileLevel !== undefined && c.compression.fileLevel !== c.compression.level ? ` (file data ${c.compression.fileLevel})` : ''}`);
    if (c.cdc) out(`file data in chunks of ${formatBytes(c.cdc.min)} to ${formatBytes(c.cdc.max)}, ${formatBytes(c.cdc.avg)} on average`);
    if (c.immutability) {
      out(`immutable: Object Lock (compliance mode) keeps every backup ${c.immutability.days} days; retention is extended in ${c.immutability.generationDays}-day generations`);
    }
    out('keep the passphrase safe: without it the backups cannot be read');
  }
  return 0;
}

async function gc(argv: string[], out: (s: string) => void): Promise<number> {
  const { values, positionals } = parse('vault gc', argv, { ...vaultOptions, grace: { type: 'string' }, 'upload-concurrency': { type: 'string' } });
  if (values.help) return (out(vaultHelp), 0);
  if (positionals.length) throw new CairnError('USAGE', `vault gc: unexpected argument '${positionals[0]}'`);
  const graceMs = parseDuration(values.grace ?? '15m', '--grace');
  const vault = await openVault(values, 'vault gc');
  const r = await collectGarbage(vault, { graceMs });
  if (values.json) out(JSON.stringify({ ...r, requests: vault.store.requests }));
  else {
    out(`${r.backups} backups keep ${r.packsAfter} of ${r.packsBefore} packs`);
    out(`deleted ${r.packsDeleted} packs (${formatBytes(r.bytesFreed)} freed), repacked ${r.packsRepacked} (${formatBytes(r.bytesRepacked)} copied)`);
    if (r.blockMapsDeleted) out(`deleted ${r.blockMapsDeleted} block maps of deleted backups`);
    if (r.packsRetained) out(`kept ${r.packsRetained} packs with dead data that Object Lock still protects`);
    if (r.packsTooYoung) out(`kept ${r.packsTooYoung} unreferenced packs younger than the grace period or a running backup`);
    if (r.deferred) {
      out(`deletion waits for ${r.deferred.leases} backup(s) that started before gc; run 'cairn vault gc' again after they finish`);
    }
  }
  return 0;
}

async function verify(argv: string[], out: (s: string) => void): Promise<number> {
  const { values, positionals } = parse('vault verify', argv, { ...vaultOptions, 'read-data': { type: 'boolean' } });
  if (values.help) return (out(vaultHelp), 0);
  if (positionals.length) throw new CairnError('USAGE', `vault verify: unexpected argument '${positionals[0]}'`);
  const vault = await openVault(values, 'vault verify');
  const readData = values['read-data'] ?? false;
  const pool = readData ? new WorkerPool(vault.key, vault.config.compression.level) : undefined;
  const bar = new ProgressBar('verify', !values.json && process.stderr.isTTY === true);
  try {
    const r = await verifyVault(vault, { readData, pool, onProgress: (d, t) => bar.update(d, t) });
    bar.done();
    if (values.json) out(JSON.stringify({ ...r, requests: vault.store.requests }));
    else {
      out(
        `checked ${r.backups} backups, ${r.packs} packs` +
          (readData ? `, ${r.chunksChecked} chunks (${formatBytes(r.bytesChecked)} read)` : ' (structure only; --read-data reads every chunk)'),
      );
      for (const p of r.problems) out(`problem: ${p.kind}: ${p.message}`);
      for (const a of r.affected) {
        out(`affected backup: ${a.name} (${a.id}): ${a.missingChunks} missing, ${a.corruptChunks} corrupt chunks`);
      }
      out(r.ok ? 'vault is healthy' : `vault has ${r.problems.length} problem(s); ${r.affected.length} backup(s) cannot be fully restored`);
    }
    if (!r.ok) {
      throw new CairnError(
        'VERIFY_FAILED',
        `verify found ${r.problems.length} problem(s) in ${vault.store.location}` +
          (r.affected.length ? `; affected: ${r.affected.map((a) => a.name).join(', ')}` : ''),
      );
    }
    return 0;
  } finally {
    await pool?.close();
  }
}
