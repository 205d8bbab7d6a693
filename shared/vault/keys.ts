import { randomBytes } from 'node:crypto';
import { CairnError } from '../errors.js';
import {
  defaultScrypt,
  deriveKeyFromPassphrase,
  masterKeyFromBytes,
  masterKeyToBytes,
  open,
  seal,
  type MasterKey,
  type ScryptParams,
} from './crypto.js';

/**
 * Key files (FORMAT.md, "Keys"): `keys/<id>`, plaintext JSON holding the master key sealed with a
 * key derived from a passphrase by scrypt. A vault may have several, one per passphrase.
 */

export interface KeyFile {
  version: 1;
  kdf: 'scrypt';
  scrypt: ScryptParams;
  salt: string;
  createdAt: string;
  host: string;
  /** base64 of seal(kek, masterKey(64 bytes), "cairn/key/v1") */
  sealed: string;
}

const AAD = Buffer.from('cairn/key/v1');

export async function wrapMasterKey(
  master: MasterKey,
  passphrase: string,
  meta: { createdAt: string; host: string },
  params: ScryptParams = defaultScrypt,
): Promise<KeyFile> {
  const salt = randomBytes(32);
  const kek = await deriveKeyFromPassphrase(passphrase, salt, params);
  return {
    version: 1,
    kdf: 'scrypt',
    scrypt: params,
    salt: salt.toString('base64'),
    createdAt: meta.createdAt,
    host: meta.host,
    sealed: seal(kek, masterKeyToBytes(master), AAD).toString('base64'),
  };
}

/** Returns the master key, or undefined when this passphrase does not open this key file. */
export async function unwrapMasterKey(raw: Buffer, passphrase: string, name: string): Promise<MasterKey | undefined> {
  let file: KeyFile;
  try {
    file = JSON.parse(raw.toString('utf8')) as KeyFile;
  } catch (err) {
    throw new CairnError('VAULT_CORRUPT', `key file ${name} is not valid JSON`, { cause: err });
  }
  if (file.version !== 1 || file.kdf !== 'scrypt') {
    throw new CairnError('VAULT_VERSION', `key file ${name} uses an unknown format; upgrade Cairn`);
  }
  const kek = await deriveKeyFromPassphrase(passphrase, Buffer.from(file.salt, 'base64'), file.scrypt);
  try {
    return masterKeyFromBytes(open(kek, Buffer.from(file.sealed, 'base64'), AAD, `key file ${name}`));
  } catch (err) {
    if (err instanceof CairnError && err.code === 'VAULT_CORRUPT') return undefined;
    throw err;
  }
}
