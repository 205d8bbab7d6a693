import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CairnError, fromSystemError } from '../../shared/errors.js';
import type { ObjectStore } from '../../shared/store/object-store.js';
import { LocalStore } from '../../shared/store/local-store.js';
import type { S3Store } from '../../shared/store/s3-store.js';
import { isS3Url } from '../../shared/store/s3-url.js';
import { RateLimiter, ThrottledStore } from '../../shared/store/throttled-store.js';
import { Vault } from '../../shared/vault/vault.js';
import { StateStore } from '../state/state-store.js';

/**
 * The one place the CLI wires concrete classes together: vault locations to stores, the
 * passphrase, the local state database.
 */

/** Transfer settings every command that opens a vault accepts (see vaultOptions in args.ts). */
export interface TransferOptions {
  'limit-upload'?: string;
  'limit-download'?: string;
}

const s3Stores: S3Store[] = [];

/**
 * Turns a vault location (a folder path, file:///path or s3://bucket/prefix?…) into an object store,
 * rate-limited when --limit-upload / --limit-download (MiB/s) are given.
 */
export async function openStore(location: string, transfer: TransferOptions = {}): Promise<ObjectStore> {
  let store: ObjectStore;
  if (isS3Url(location)) {
    // Loaded only for S3 vaults: the AWS SDK takes about 100 ms to load.
    const { S3Store } = await import('../../shared/store/s3-store.js');
    // After closeStores() a store retries nothing more, so no warning follows the command's error.
    const s3 = new S3Store(location, {
      onRetry: (what, err, wait) =>
        process.stderr.write(`cairn: warning: ${err.message}; retrying ${what} in ${(wait / 1000).toFixed(1)} s\n`),
    });
    s3Stores.push(s3);
    store = s3;
  } else if (location.startsWith('file://')) {
    store = new LocalStore(fileURLToPath(location));
  } else if (/^[a-z][a-z0-9+.-]*:\/\//i.test(location)) {
    throw new CairnError('USAGE', `vault location ${location.split('?')[0]} has an unsupported scheme; give a folder path, file:///path or s3://bucket/prefix`);
  } else {
    store = new LocalStore(resolve(location));
  }
  const up = rate(transfer['limit-upload'], '--limit-upload');
  const down = rate(transfer['limit-download'], '--limit-download');
  return up || down ? new ThrottledStore(store, up, down) : store;
}

/** Closes the connections of S3 stores, so the process can exit at once. */
export function closeStores(): void {
  for (const s of s3Stores.splice(0)) s.destroy();
}

function rate(text: string | undefined, flag: string): RateLimiter | undefined {
  if (text === undefined) return undefined;
  const mib = Number(text);
  if (!(mib > 0) || !Number.isFinite(mib)) throw new CairnError('USAGE', `${flag} '${text}' is not a rate; give MiB/s as a positive number, e.g. 10 or 0.5`);
  return new RateLimiter(mib * 1024 * 1024);
}

/**
 * Packs uploaded at once: --upload-concurrency, else 3 for object storage and 2 for a local folder.
 * A backup holds (concurrency + 1) packs in memory: 128 MiB with 32 MiB packs.
 */
export function uploadConcurrency(location: string, text: string | undefined): number {
  if (text === undefined) return isS3Url(location) ? 3 : 2;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > 64) throw new CairnError('USAGE', `--upload-concurrency '${text}' must be a whole number from 1 to 64`);
  return n;
}

/** The passphrase from --passphrase-file or CAIRN_PASSPHRASE (the file wins). */
export function readPassphrase(file: string | undefined): string {
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw fromSystemError(err, 'cannot read the passphrase file', file);
    }
    const pass = text.replace(/\r?\n$/, '');
    if (!pass) throw new CairnError('NO_PASSPHRASE', `the passphrase file ${file} is empty`);
    return pass;
  }
  const env = process.env.CAIRN_PASSPHRASE;
  if (!env) {
    throw new CairnError('NO_PASSPHRASE', 'no passphrase: set CAIRN_PASSPHRASE or pass --passphrase-file FILE');
  }
  return env;
}

export function stateDir(): string {
  if (process.env.CAIRN_STATE_DIR) return resolve(process.env.CAIRN_STATE_DIR);
  const base = process.env.XDG_STATE_HOME || join(homedir(), '.local', 'state');
  return join(base, 'cairn');
}

let state: StateStore | undefined;

export function openState(): StateStore {
  state ??= new StateStore(join(stateDir(), 'agent.sqlite'));
  return state;
}

export function closeState(): void {
  state?.close();
  state = undefined;
}

export interface VaultArgs extends TransferOptions {
  vault?: string;
  'passphrase-file'?: string;
  'upload-concurrency'?: string;
}

export async function openVault(args: VaultArgs, command: string): Promise<Vault> {
  const location = args.vault;
  if (!location) throw new CairnError('USAGE', `${command}: --vault is required; see 'cairn ${command} --help'`);
  const store = await openStore(location, args);
  const concurrency = uploadConcurrency(location, args['upload-concurrency']);
  // Check the vault exists before asking for a passphrase, so a wrong path is named as such.
  const config = await Vault.readConfig(store);
  return Vault.open(store, readPassphrase(args['passphrase-file']), { indexCache: openState(), uploadConcurrency: concurrency }, config);
}
