import { randomBytes } from 'node:crypto';
import { readdir, rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MiB, Sandbox, expectCliError, expectOk, makeImage, sha256File, writeAt } from './helpers.js';

/**
 * The local state (SQLite in CAIRN_STATE_DIR) keeps run history, failures included, and caches the
 * vault's index; the vault stays the source of truth, so deleting the state loses no backup.
 */
describe('local state', () => {
  let box: Sandbox;

  beforeAll(async () => {
    box = await Sandbox.create('state');
  });

  afterAll(async () => {
    await box.cleanup();
  });

  it('records runs, failed ones too, and can be deleted without losing anything', async () => {
    const vault = await box.initVault('vault');
    const image = box.path('disk.img');
    await makeImage(image, [
      { kind: 'random', length: 3 * MiB },
      { kind: 'hole', length: 2 * MiB },
      { kind: 'text', length: 3 * MiB },
    ]);
    const full = await box.cairnJson<{ name: string }>(['backup', image, '--vault', vault, '--json']);
    expectCliError(await box.cairn(['backup', box.path('missing.img'), '--vault', vault]), 'SOURCE_UNREADABLE', 'missing.img');

    const runs = await box.cairnJson<{ status: string; name: string | null; error: string | null; vaultLocation: string }[]>([
      'backups',
      'history',
      '--json',
    ]);
    expect(runs.map((r) => r.status)).toEqual(['ok', 'failed']);
    expect(runs[0].name).toBe(full.name);
    expect(runs[0].vaultLocation).toBe(vault);
    expect(runs[1].error).toContain('missing.img');
    // History needs no passphrase: it reads only the local state.
    expectOk(await box.cairn(['backups', 'history'], { env: { CAIRN_PASSPHRASE: undefined } }));
    expect(await readdir(box.stateDir)).toContain('agent.sqlite');

    // Delete the state: backups are still listed, an incremental still finds its parent, and both
    // restore; the index cache is rebuilt from the vault.
    await rm(box.stateDir, { recursive: true, force: true });
    const listed = await box.cairnJson<{ name: string }[]>(['backups', 'list', '--vault', vault, '--json']);
    expect(listed.map((b) => b.name)).toEqual([full.name]);
    const before = await sha256File(image);
    await writeAt(image, 1 * MiB, randomBytes(64 * 1024));
    const incr = await box.cairnJson<{ kind: string; name: string; bytesStored: number }>(['backup', image, '--vault', vault, '--json']);
    expect(incr.kind).toBe('incremental');
    expect(incr.bytesStored).toBeLessThan(1 * MiB);
    expectOk(await box.cairn(['restore', full.name, '--vault', vault, '--to', box.path('full.img')]));
    expect(await sha256File(box.path('full.img'))).toBe(before);
    expectOk(await box.cairn(['restore', incr.name, '--vault', vault, '--to', box.path('incr.img')]));
    expect(await sha256File(box.path('incr.img'))).toBe(await sha256File(image));
    const after = await box.cairnJson<{ status: string }[]>(['backups', 'history', '--json']);
    expect(after.map((r) => r.status)).toEqual(['ok']);
  });
});
