import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { cp, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  expectCliError,
  expectOk,
  listFiles,
  makeImage,
  MiB,
  mountCommand,
  Sandbox,
  sha256File,
  type CliResult,
} from './helpers.js';

/**
 * Wrong input through the real CLI: every case exits with the catalogue's code for it, prints one
 * `cairn: error:` line and no stack trace, and leaves the vault exactly as it was. The last cases
 * mount tmpfs file systems (read-only, and too small) and so need root with CAP_SYS_ADMIN.
 */

let template: Sandbox;
let templateSha: string;
let sb: Sandbox;
let vault: string;
let image: string;
let imageSha: string;

/** One vault holding one small backup named 'first' of small.img, copied into every test's sandbox. */
beforeAll(async () => {
  template = await Sandbox.create('bad-template');
  await template.initVault('vault');
  await makeImage(template.path('small.img'), [
    { kind: 'random', length: MiB },
    { kind: 'hole', length: MiB + 123 },
  ]);
  templateSha = await sha256File(template.path('small.img'));
  const r = await template.cairn(['backup', template.path('small.img'), '--vault', template.path('vault'), '--name', 'first']);
  expect(r.code, r.stderr).toBe(0);
});

beforeEach(async () => {
  sb = await Sandbox.create('bad');
  vault = sb.path('vault');
  image = sb.path('small.img');
  await cp(template.path('vault'), vault, { recursive: true });
  await cp(template.path('small.img'), image);
  imageSha = await sha256File(image);
  expect(imageSha).toBe(templateSha);
});

const mounted: string[] = [];

afterEach(async () => {
  // Unmount before removing the sandbox: a read-only mount cannot be emptied.
  while (mounted.length) mountCommand(['umount', mounted.pop()!]);
  await sb.cleanup();
});

afterAll(async () => {
  while (mounted.length) mountCommand(['umount', '-l', mounted.pop()!]);
  await template?.cleanup();
});

/** Runs `cairn ...args` and checks that the vault's files and sizes did not change. */
async function unchanged(args: string[], env?: Record<string, string | undefined>, where = vault): Promise<CliResult> {
  const before = await listFiles(where);
  const r = await sb.cairn(args, { env });
  expect(await listFiles(where), `files of ${where} after cairn ${args.join(' ')}`).toEqual(before);
  return r;
}

describe('passphrase and vault location', () => {
  it('rejects a wrong passphrase (WRONG_PASSPHRASE)', async () => {
    const env = { CAIRN_PASSPHRASE: 'not the passphrase' };
    expectCliError(await unchanged(['backup', image, '--vault', vault], env), 'WRONG_PASSPHRASE', 'opens none of the 1 key(s)', vault);
    expectCliError(await unchanged(['restore', 'first', '--vault', vault, '--to', sb.path('r.img')], env), 'WRONG_PASSPHRASE');
    expect(existsSync(sb.path('r.img'))).toBe(false);
    // A passphrase file with the wrong passphrase is no better.
    await writeFile(sb.path('pass'), 'also wrong\n');
    expectCliError(await unchanged(['backups', 'list', '--vault', vault, '--passphrase-file', sb.path('pass')]), 'WRONG_PASSPHRASE');
  });

  it('asks for a passphrase when none is given (NO_PASSPHRASE)', async () => {
    const env = { CAIRN_PASSPHRASE: undefined };
    expectCliError(await unchanged(['backup', image, '--vault', vault], env), 'NO_PASSPHRASE', 'CAIRN_PASSPHRASE', '--passphrase-file');
    expectCliError(await unchanged(['backups', 'list', '--vault', vault], { CAIRN_PASSPHRASE: '' }), 'NO_PASSPHRASE');
    await writeFile(sb.path('empty-pass'), '');
    expectCliError(
      await unchanged(['backups', 'list', '--vault', vault, '--passphrase-file', sb.path('empty-pass')], env),
      'NO_PASSPHRASE',
      'is empty',
    );
    const inexistent = await sb.cairn(['vault', 'init', sb.path('v2')], { env });
    expectCliError(inexistent, 'NO_PASSPHRASE');
    expect(existsSync(sb.path('v2'))).toBe(false);
  });

  it('names a missing vault folder (VAULT_NOT_FOUND) and does not create it', async () => {
    const missing = sb.path('no-such-vault');
    expectCliError(await sb.cairn(['backup', image, '--vault', missing]), 'VAULT_NOT_FOUND', missing, 'cairn vault init');
    expectCliError(await sb.cairn(['backups', 'list', '--vault', missing]), 'VAULT_NOT_FOUND', missing);
    expectCliError(await sb.cairn(['vault', 'gc', '--vault', missing, '--grace', '0']), 'VAULT_NOT_FOUND', missing);
    expect(existsSync(missing)).toBe(false);
    // Without a passphrase too: the location is checked first.
    expectCliError(await sb.cairn(['backups', 'list', '--vault', missing], { env: { CAIRN_PASSPHRASE: undefined } }), 'VAULT_NOT_FOUND');
  });

  it('refuses a folder that is not a vault (VAULT_NOT_FOUND) and leaves it alone', async () => {
    const folder = sb.path('just-a-folder');
    await mkdir(folder);
    await writeFile(sb.path('just-a-folder', 'notes.txt'), 'not a vault\n');
    for (const args of [
      ['backup', image, '--vault', folder],
      ['backups', 'list', '--vault', folder],
      ['vault', 'verify', '--vault', folder],
      ['vault', 'gc', '--vault', folder],
    ]) {
      expectCliError(await unchanged(args, undefined, folder), 'VAULT_NOT_FOUND', folder);
    }
    // A vault's own subfolder is not a vault either.
    expectCliError(await unchanged(['backups', 'list', '--vault', sb.path('vault', 'packs')]), 'VAULT_NOT_FOUND');
  });

  it('reports a config that is not JSON (VAULT_CORRUPT)', async () => {
    await writeFile(sb.path('vault', 'config'), '{"format": "cairn-vault", "version": 1,');
    expectCliError(await unchanged(['backup', image, '--vault', vault]), 'VAULT_CORRUPT', 'not valid JSON', vault);
    expectCliError(await unchanged(['vault', 'verify', '--vault', vault]), 'VAULT_CORRUPT');
    expectCliError(await unchanged(['vault', 'init', vault]), 'VAULT_EXISTS');
    await writeFile(sb.path('vault', 'config'), '{"format": "something-else", "version": 1}\n');
    expectCliError(await unchanged(['backups', 'list', '--vault', vault]), 'VAULT_CORRUPT', 'not a Cairn vault');
  });

  it('asks to upgrade for a config of a newer format (VAULT_VERSION)', async () => {
    const config = JSON.parse(await readFile(sb.path('vault', 'config'), 'utf8')) as Record<string, unknown>;
    expect(config.version).toBe(1);
    await writeFile(sb.path('vault', 'config'), JSON.stringify({ ...config, version: 99 }, null, 2) + '\n');
    expectCliError(await unchanged(['backup', image, '--vault', vault]), 'VAULT_VERSION', 'version 99', 'upgrade Cairn');
    expectCliError(await unchanged(['restore', 'first', '--vault', vault, '--to', sb.path('r.img')]), 'VAULT_VERSION', 'upgrade');
    expectCliError(await unchanged(['vault', 'gc', '--vault', vault, '--grace', '0']), 'VAULT_VERSION', 'upgrade');
    expect(existsSync(sb.path('r.img'))).toBe(false);
  });

  it('takes --kdf-log-n from 12 to 20 into the key file, and refuses others before creating anything', async () => {
    for (const bad of ['11', '21', 'x', '1e3']) {
      expectCliError(await sb.cairn(['vault', 'init', sb.path(`kdf-${bad}`), '--kdf-log-n', bad]), 'USAGE', '--kdf-log-n', '12 to 20');
      expect(existsSync(sb.path(`kdf-${bad}`, 'config'))).toBe(false);
    }
    const cheap = await sb.initVault('kdf-13', ['--kdf-log-n', '13']);
    const [keyName] = await readdir(`${cheap}/keys`);
    expect(JSON.parse(await readFile(`${cheap}/keys/${keyName}`, 'utf8')).scrypt).toEqual({ N: 8192, r: 8, p: 1 });
    expectOk(await sb.cairn(['vault', 'verify', '--vault', cheap]));
    expectCliError(await sb.cairn(['vault', 'verify', '--vault', cheap], { env: { CAIRN_PASSPHRASE: 'not it' } }), 'WRONG_PASSPHRASE');
  });

  it('refuses vault init on an existing vault (VAULT_EXISTS)', async () => {
    const r = await unchanged(['vault', 'init', vault]);
    expectCliError(r, 'VAULT_EXISTS', vault);
    expectCliError(await unchanged(['vault', 'init', vault, '--chunk-size', '16K']), 'VAULT_EXISTS');
    // The vault still opens with its passphrase and holds its backup.
    const list = await sb.cairnJson<{ name: string }[]>(['backups', 'list', '--vault', vault, '--json']);
    expect(list.map((b) => b.name)).toEqual(['first']);
  });
});

describe('sources and targets', () => {
  it('names a missing source (SOURCE_UNREADABLE)', async () => {
    const missing = sb.path('missing.img');
    expectCliError(await unchanged(['backup', missing, '--vault', vault]), 'SOURCE_UNREADABLE', missing, 'does not exist');
    // One bad source of several: nothing is backed up.
    expectCliError(await unchanged(['backup', image, missing, '--vault', vault]), 'SOURCE_UNREADABLE', missing);
  });

  it('refuses a directory as source (SOURCE_UNREADABLE)', async () => {
    const dir = sb.path('a-directory');
    await mkdir(dir);
    expectCliError(await unchanged(['backup', dir, '--vault', vault]), 'SOURCE_UNREADABLE', dir, 'not a disk image file or block device');
  });

  it('refuses to overwrite a restore target without --force (ALREADY_EXISTS) and replaces it with --force', async () => {
    const target = sb.path('target.img');
    await writeFile(target, randomBytes(5000));
    const targetSha = await sha256File(target);
    const r = await unchanged(['restore', 'first', '--vault', vault, '--to', target]);
    expectCliError(r, 'ALREADY_EXISTS', target, '--force');
    expect(await sha256File(target)).toBe(targetSha);

    const forced = await unchanged(['restore', 'first', '--vault', vault, '--to', target, '--force']);
    expect(forced.code, forced.stderr).toBe(0);
    expect(forced.stderr).toBe('');
    expect(await sha256File(target)).toBe(imageSha);
  });

  it('names an unknown backup (NOT_FOUND)', async () => {
    const to = sb.path('r.img');
    expectCliError(await unchanged(['restore', 'nope', '--vault', vault, '--to', to]), 'NOT_FOUND', `'nope'`, 'cairn backups list');
    expect(existsSync(to)).toBe(false);
    expectCliError(await unchanged(['backups', 'show', 'nope', '--vault', vault]), 'NOT_FOUND', `'nope'`);
  });
});

describe('command line', () => {
  it('rejects unknown commands and options (USAGE) without touching the vault', async () => {
    expectCliError(await unchanged(['frobnicate', '--vault', vault]), 'USAGE', `unknown command 'frobnicate'`);
    expectCliError(await unchanged(['vault', 'frobnicate', '--vault', vault]), 'USAGE', `'cairn vault frobnicate'`);
    expectCliError(await unchanged(['backups', 'frobnicate', '--vault', vault]), 'USAGE', `'cairn backups frobnicate'`);
    expectCliError(await unchanged(['backup', image, '--vault', vault, '--bogus']), 'USAGE', `'--bogus'`, 'cairn backup --help');
    expectCliError(await unchanged(['restore', 'first', '--vault', vault, '--to', sb.path('r.img'), '--forse']), 'USAGE', `'--forse'`);
    expectCliError(await unchanged(['restore', 'first', '--vault', vault]), 'USAGE', '--to is required');
    expectCliError(await unchanged(['backup', '--vault', vault]), 'USAGE', 'at least one source');
    expectCliError(await unchanged(['backups', 'list']), 'USAGE', '--vault is required');
    expectCliError(await unchanged(['vault', 'gc', '--vault', vault, '--grace', 'soon']), 'USAGE', `'soon' is not a duration`);
    expect(existsSync(sb.path('r.img'))).toBe(false);
  });

  it('rejects an invalid chunk size (USAGE) and creates no vault', async () => {
    const target = sb.path('new-vault');
    expectCliError(await sb.cairn(['vault', 'init', target, '--chunk-size', '3000']), 'USAGE', 'chunk size 3000 is invalid');
    expectCliError(await sb.cairn(['vault', 'init', target, '--chunk-size', '8M']), 'USAGE', 'is invalid');
    expectCliError(await sb.cairn(['vault', 'init', target, '--chunk-size', 'big']), 'USAGE', `'big' is not a size`);
    expect(existsSync(target)).toBe(false);
  });
});

describe('file system limits (needs root with CAP_SYS_ADMIN for tmpfs mounts)', () => {
  async function mountTmpfs(dir: string, size: string): Promise<void> {
    await mkdir(dir);
    mountCommand(['mount', '-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]);
    mounted.push(dir);
  }

  it('reports a read-only vault as PERMISSION_DENIED and writes nothing', async () => {
    const mnt = sb.path('ro');
    await mountTmpfs(mnt, '16m');
    const roVault = await sb.initVault('ro/vault');
    expect((await sb.cairn(['backup', image, '--vault', roVault, '--name', 'before'])).code).toBe(0);
    mountCommand(['mount', '-o', 'remount,ro', mnt]);

    const before = await listFiles(roVault);
    const r = await sb.cairn(['backup', image, '--vault', roVault, '--name', 'after']);
    expectCliError(r, 'PERMISSION_DENIED', 'permission denied', roVault);
    expectCliError(await sb.cairn(['vault', 'gc', '--vault', roVault, '--grace', '0']), 'PERMISSION_DENIED', roVault);
    expectCliError(await sb.cairn(['backups', 'delete', 'before', '--vault', roVault]), 'PERMISSION_DENIED', roVault);
    // Reading still works.
    const to = sb.path('restored.img');
    expect((await sb.cairn(['restore', 'before', '--vault', roVault, '--to', to])).code).toBe(0);
    expect(await sha256File(to)).toBe(imageSha);

    // Writable again: nothing was half-written, and the vault is whole.
    mountCommand(['mount', '-o', 'remount,rw', mnt]);
    expect(await listFiles(roVault)).toEqual(before);
    const verify = await sb.cairn(['vault', 'verify', '--vault', roVault, '--read-data']);
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
  });

  it('reports a full vault file system as NO_SPACE, cleans up, and keeps earlier backups', async () => {
    const mnt = sb.path('small');
    await mountTmpfs(mnt, '8m');
    const smallVault = await sb.initVault('small/vault');
    expect((await sb.cairn(['backup', image, '--vault', smallVault, '--name', 'fits'])).code).toBe(0);
    const before = await listFiles(smallVault);
    const big = sb.path('big.img');
    await makeImage(big, [{ kind: 'random', length: 32 * MiB }]);

    const r = await sb.cairn(['backup', big, '--vault', smallVault, '--name', 'too-big']);
    expectCliError(r, 'NO_SPACE', 'no space left', smallVault);

    const after = await listFiles(smallVault);
    expect([...after.keys()].filter((k) => k.split('/').some((s) => s.startsWith('.tmp-')))).toEqual([]);
    expect([...after.keys()].filter((k) => k.startsWith('leases/'))).toEqual([]);
    // Everything that was there is still there, unchanged; no manifest or block map was added.
    for (const [k, size] of before) expect(after.get(k), k).toBe(size);
    expect([...after.keys()].filter((k) => !before.has(k) && !k.startsWith('packs/') && !k.startsWith('index/'))).toEqual([]);
    const list = await sb.cairnJson<{ name: string }[]>(['backups', 'list', '--vault', smallVault, '--json']);
    expect(list.map((b) => b.name)).toEqual(['fits']);

    const verify = await sb.cairn(['vault', 'verify', '--vault', smallVault, '--read-data']);
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
    const to = sb.path('restored.img');
    expect((await sb.cairn(['restore', 'fits', '--vault', smallVault, '--to', to])).code).toBe(0);
    expect(await sha256File(to)).toBe(imageSha);
  });
});
