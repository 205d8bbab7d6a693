import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { LocalStore } from '../store/local-store.js';
import { DEFAULT_FILE_ZSTD_LEVEL, DEFAULT_ZSTD_LEVEL, fileCompressionLevel, FORMAT_VERSION, parseConfig, validChunkSize } from './config.js';
import { Vault } from './vault.js';

const good = {
  format: 'cairn-vault',
  version: 1,
  id: '0123456789abcdef0123456789abcdef',
  type: 'disk',
  createdAt: '2026-11-25T10:00:00.000Z',
  chunkSize: 65536,
  packSize: 16777216,
  compression: { algorithm: 'zstd', level: 1 },
};

function raw(value: unknown): Buffer {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value));
}

describe('config', () => {
  it('parses the config of a version it knows', () => {
    expect(parseConfig(raw(good), '/v')).toEqual(good);
  });

  it('refuses a newer version with VAULT_VERSION and an upgrade hint', () => {
    expect(() => parseConfig(raw({ ...good, version: FORMAT_VERSION + 1 }), '/v')).toThrow(
      expect.objectContaining({ code: 'VAULT_VERSION', message: expect.stringContaining('upgrade Cairn') }),
    );
  });

  it('refuses garbage, foreign JSON and invalid parameters with VAULT_CORRUPT', () => {
    for (const bad of [
      'not json {',
      '',
      'null',
      '[]',
      { ...good, format: 'restic' },
      { ...good, version: '1' },
      { ...good, chunkSize: 65535 },
      { ...good, chunkSize: 2048 },
      { ...good, packSize: 0 },
      { ...good, compression: { algorithm: 'gzip', level: 1 } },
      { ...good, compression: { algorithm: 'zstd', level: 1, fileLevel: 2.5 } },
      { ...good, compression: { algorithm: 'zstd', level: 1, fileLevel: '2' } },
      { ...good, compression: { algorithm: 'zstd', level: 1, fileLevel: 40 } },
    ]) {
      expect(() => parseConfig(raw(bad), '/v'), JSON.stringify(bad)).toThrow(expect.objectContaining({ code: 'VAULT_CORRUPT' }));
    }
  });

  it('accepts chunk sizes that are powers of two from 4 KiB to 4 MiB only', () => {
    expect([4096, 16384, 65536, 4 << 20].every(validChunkSize)).toBe(true);
    expect([0, 2048, 3 * 4096, 8 << 20, 65536.5].some(validChunkSize)).toBe(false);
  });
});

describe('config in a vault', () => {
  let dir: string | undefined;
  afterEach(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it('is VAULT_NOT_FOUND where there is none, VAULT_VERSION when newer, VAULT_CORRUPT when damaged', async () => {
    dir = await mkdtemp(join(tmpdir(), 'cairn-config-'));
    const store = new LocalStore(dir);
    await expect(Vault.readConfig(store)).rejects.toMatchObject({ code: 'VAULT_NOT_FOUND' });
    await Vault.init(store, 'config test', { chunkSize: 16384 });
    await expect(Vault.init(store, 'again')).rejects.toMatchObject({ code: 'VAULT_EXISTS' });
    const cfg = JSON.parse((await store.get('config')).toString('utf8'));
    expect(cfg.chunkSize).toBe(16384);
    // File data gets its own zstd level; configs written before it use `level` for files too.
    expect(cfg.compression).toEqual({ algorithm: 'zstd', level: DEFAULT_ZSTD_LEVEL, fileLevel: DEFAULT_FILE_ZSTD_LEVEL });
    expect(fileCompressionLevel(cfg)).toBe(DEFAULT_FILE_ZSTD_LEVEL);
    expect(fileCompressionLevel({ ...cfg, compression: { algorithm: 'zstd', level: 3 } })).toBe(3);
    await store.put('config', () => raw({ ...cfg, version: FORMAT_VERSION + 1 }));
    await expect(Vault.open(store, 'config test')).rejects.toMatchObject({ code: 'VAULT_VERSION' });
    await store.put('config', () => Buffer.from('\0\0garbage'));
    await expect(Vault.open(store, 'config test')).rejects.toMatchObject({ code: 'VAULT_CORRUPT' });
  });

  it('refuses an invalid chunk size at init with USAGE', async () => {
    dir = await mkdtemp(join(tmpdir(), 'cairn-config-'));
    await expect(Vault.init(new LocalStore(dir), 'x', { chunkSize: 5000 })).rejects.toMatchObject({ code: 'USAGE' });
  });
});
