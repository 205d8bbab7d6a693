import { CairnError } from '../errors.js';
import { DEFAULT_CDC, validCdcParams, type CdcParams } from './cdc.js';

/**
 * The vault's `config` object (FORMAT.md, "config"): plaintext JSON, written once by `vault init`
 * and never changed. It is the commit point of init: a folder without it is not a vault.
 */

export const FORMAT_NAME = 'cairn-vault';
export const FORMAT_VERSION = 1;

export type VaultType = 'disk' | 'server' | 'filesystem' | 'hybrid';
export const vaultTypes: readonly VaultType[] = ['disk', 'server', 'filesystem', 'hybrid'];

export interface VaultConfig {
  format: typeof FORMAT_NAME;
  version: number;
  id: string;
  type: VaultType;
  createdAt: string;
  /** Fixed chunk size for disk block maps, a power of two between 4 KiB and 4 MiB. */
  chunkSize: number;
  /** Target pack size; packs close when they reach it. */
  packSize: number;
  /**
   * zstd level of chunks. `fileLevel` is the level of file-system backups' chunks (written by
   * `vault init` since they exist; a config without it uses `level` for them too).
   */
  compression: { algorithm: 'zstd'; level: number; fileLevel?: number };
  /**
   * Content-defined chunking of file data (cdc.ts): min, average and max chunk size. Written by
   * `vault init` since file-system backups exist; a config without it uses DEFAULT_CDC.
   */
  cdc?: CdcParams;
  /** Set on vaults in Object Lock buckets: every backup is kept `days` at least (retention.ts). */
  immutability?: { days: number; generationDays: number };
}

export const MIN_CHUNK = 4 * 1024;
export const MAX_CHUNK = 4 * 1024 * 1024;
export const DEFAULT_CHUNK = 64 * 1024;
export const DEFAULT_PACK = 16 * 1024 * 1024;
export const DEFAULT_ZSTD_LEVEL = 1;
/**
 * File-system backups store chunks at zstd level 3, like restic's default: on a copy of /usr/lib it
 * stores 8% less than level 1 (4% less than restic) for about 5% more CPU time in all.
 */
export const DEFAULT_FILE_ZSTD_LEVEL = 3;

export function validChunkSize(n: number): boolean {
  return Number.isInteger(n) && n >= MIN_CHUNK && n <= MAX_CHUNK && (n & (n - 1)) === 0;
}

export function parseConfig(raw: Buffer, location: string): VaultConfig {
  let cfg: VaultConfig;
  try {
    cfg = JSON.parse(raw.toString('utf8')) as VaultConfig;
  } catch (err) {
    throw new CairnError('VAULT_CORRUPT', `the config of the vault at ${location} is not valid JSON`, { cause: err });
  }
  if (cfg?.format !== FORMAT_NAME || typeof cfg.version !== 'number') {
    throw new CairnError('VAULT_CORRUPT', `${location} holds a config that is not a Cairn vault's`);
  }
  if (cfg.version > FORMAT_VERSION) {
    throw new CairnError(
      'VAULT_VERSION',
      `the vault at ${location} has format version ${cfg.version}, newer than this Cairn reads (${FORMAT_VERSION}); upgrade Cairn`,
    );
  }
  if (!validChunkSize(cfg.chunkSize) || !(cfg.packSize > 0) || cfg.compression?.algorithm !== 'zstd') {
    throw new CairnError('VAULT_CORRUPT', `the config of the vault at ${location} has invalid parameters`);
  }
  const fileLevel = cfg.compression.fileLevel;
  if (fileLevel !== undefined && !(Number.isInteger(fileLevel) && fileLevel >= -7 && fileLevel <= 19)) {
    throw new CairnError('VAULT_CORRUPT', `the config of the vault at ${location} has an invalid compression.fileLevel (${String(fileLevel)})`);
  }
  if (cfg.cdc !== undefined && !validCdcParams(cfg.cdc)) {
    throw new CairnError('VAULT_CORRUPT', `the config of the vault at ${location} has invalid content-defined chunking parameters`);
  }
  return cfg;
}

/** The zstd level of file data in a vault (see VaultConfig.compression). */
export function fileCompressionLevel(cfg: VaultConfig): number {
  return cfg.compression.fileLevel ?? cfg.compression.level;
}

/** The chunking parameters of file data in a vault: its config's `cdc`, or DEFAULT_CDC for configs written before it. */
export function cdcParams(cfg: VaultConfig): CdcParams {
  return cfg.cdc ?? DEFAULT_CDC;
}
