import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { LocalStore } from '../store/local-store.js';
import { newMasterKey, type ScryptParams } from './crypto.js';
import { unwrapMasterKey, wrapMasterKey } from './keys.js';
import { Vault } from './vault.js';

/** Cheap scrypt so the unit tests stay fast; the format records the parameters per key file. */
const cheap: ScryptParams = { N: 1024, r: 8, p: 1 };
const meta = { createdAt: '2026-11-25T10:00:00.000Z', host: 'test' };

async function wrapped(passphrase: string) {
  const master = newMasterKey();
  const file = await wrapMasterKey(master, passphrase, meta, cheap);
  return { master, raw: Buffer.from(JSON.stringify(file)) };
}

describe('key files', () => {
  it('open with the right passphrase and give back the master key', async () => {
    const { master, raw } = await wrapped('correct horse battery staple');
    expect(await unwrapMasterKey(raw, 'correct horse battery staple', 'keys/a')).toEqual(master);
  });

  it('do not open with a wrong passphrase (undefined, not an error)', async () => {
    const { raw } = await wrapped('correct horse battery staple');
    expect(await unwrapMasterKey(raw, 'correct horse battery stapler', 'keys/a')).toBeUndefined();
    expect(await unwrapMasterKey(raw, '', 'keys/a')).toBeUndefined();
  });

  it('normalise the passphrase to NFC, so composed and decomposed accents are the same passphrase', async () => {
    const { master, raw } = await wrapped('caf\u00e9');
    expect(await unwrapMasterKey(raw, 'cafe\u0301', 'keys/a')).toEqual(master);
  });

  it('record the scrypt parameters and a fresh salt in plaintext JSON', async () => {
    const a = JSON.parse((await wrapped('p')).raw.toString('utf8'));
    const b = JSON.parse((await wrapped('p')).raw.toString('utf8'));
    expect(a).toMatchObject({ version: 1, kdf: 'scrypt', scrypt: cheap, host: 'test' });
    expect(Buffer.from(a.salt, 'base64')).toHaveLength(32);
    expect(a.salt).not.toBe(b.salt);
  });

  it('refuse garbage with VAULT_CORRUPT and an unknown version or kdf with VAULT_VERSION', async () => {
    const { raw } = await wrapped('p');
    await expect(unwrapMasterKey(Buffer.from('{nope'), 'p', 'keys/a')).rejects.toMatchObject({ code: 'VAULT_CORRUPT' });
    const file = JSON.parse(raw.toString('utf8'));
    await expect(unwrapMasterKey(Buffer.from(JSON.stringify({ ...file, version: 2 })), 'p', 'keys/a')).rejects.toMatchObject({
      code: 'VAULT_VERSION',
    });
    await expect(unwrapMasterKey(Buffer.from(JSON.stringify({ ...file, kdf: 'argon2id' })), 'p', 'keys/a')).rejects.toMatchObject({
      code: 'VAULT_VERSION',
    });
  });
});

describe('opening a vault', () => {
  let dir: string | undefined;
  afterEach(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it('succeeds with the right passphrase and is WRONG_PASSPHRASE otherwise', async () => {
    dir = await mkdtemp(join(tmpdir(), 'cairn-keys-'));
    const store = new LocalStore(dir);
    const created = await Vault.init(store, 'right passphrase');
    const opened = await Vault.open(store, 'right passphrase');
    expect(opened.key).toEqual(created.key);
    expect(opened.config).toEqual(created.config);
    await expect(Vault.open(store, 'wrong passphrase')).rejects.toMatchObject({ code: 'WRONG_PASSPHRASE' });
  });

  it('is VAULT_CORRUPT when the vault has no key file', async () => {
    dir = await mkdtemp(join(tmpdir(), 'cairn-keys-'));
    const store = new LocalStore(dir);
    await Vault.init(store, 'p');
    for await (const o of store.list('keys/')) await store.delete(o.key);
    await expect(Vault.open(store, 'p')).rejects.toMatchObject({ code: 'VAULT_CORRUPT' });
  });
});
