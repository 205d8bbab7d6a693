import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CairnError, fromSystemError } from '../../shared/errors.js';
import type { ObjectStore } from '../../shared/store/object-store.js';
import { LocalStore } from '../../shared/store/local-store.js';
import { Vault } from '../../shared/vault/vault.js';
import { StateStore } from '../state/state-store.js';

/**
 * The one place the CLI wires concrete classes together: vault locations to stores, the
 * passphrase, the local state database.
 */

/** Turns a vault location (a folder path or file:///path) into an object store. */
export function openStore(location: string): ObjectStore {
  if (location.startsWith('file://')) return new LocalStore(fileURLToPath(location));
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(location)) {
    throw new CairnError('USAGE', `vault location ${location} has an unsupported scheme; give a folder path or file:///path`);
  }
  return new LocalStore(resolve(location));
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

export async function openVault(location: string | undefined, passphraseFile: string | undefined, command: string): Promise<Vault> {
  if (!location) throw new CairnError('USAGE', `${command}: --vault is required; see 'cairn ${command} --help'`);
  const store = openStore(location);
  // Check the vault exists before asking for a passphrase, so a wrong path is named as such.
  await Vault.readConfig(store);
  return Vault.open(store, readPassphrase(passphraseFile), { indexCache: openState() });
}
