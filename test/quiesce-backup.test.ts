import { execFileSync, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { chmod, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectCliError, listFiles, makeImage, MiB, Sandbox, sha256File, type BackupJson } from './helpers.js';

/**
 * Quiesce through the real CLI: hooks that succeed, fail or hang, and fsfreeze of a loop-mounted
 * ext4 file system whose block device is backed up. The backup records the consistency actually
 * achieved, --require-app-consistent turns a failed quiesce into a failed backup that leaves the
 * vault as it was, and the file system is thawed whatever happened.
 */

let sb: Sandbox;
let vault: string;
let image: string;
let fsImage: string;
let mount: string;
let loopDevice: string;

beforeAll(async () => {
  sb = await Sandbox.create('quiesce');
  vault = await sb.initVault('vault');
  image = sb.path('disk.img');
  await makeImage(image, [{ kind: 'random', length: 2 * MiB }, { kind: 'hole', length: 2 * MiB }]);
  fsImage = sb.path('fs.img');
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', fsImage, '32M'], { stdio: 'ignore' });
  loopDevice = execFileSync('losetup', ['--find', '--show', fsImage], { encoding: 'utf8' }).trim();
  mount = sb.path('mnt');
  execFileSync('mkdir', ['-p', mount]);
  execFileSync('mount', [loopDevice, mount]);
  await writeFile(`${mount}/data.txt`, 'committed before the freeze\n');
  await hook('ok.sh', `echo "$CAIRN_PHASE $CAIRN_BACKUP_NAME" >> ${sb.path('hooks.log')}`);
  await hook('fail.sh', 'echo "database refused to flush" >&2; exit 3');
  await hook('hang.sh', 'exec sleep 611');
});

afterAll(async () => {
  spawnSync('fsfreeze', ['-u', mount]);
  spawnSync('umount', [mount]);
  spawnSync('losetup', ['-d', loopDevice]);
  await sb?.cleanup();
});

async function hook(name: string, body: string): Promise<void> {
  await writeFile(sb.path(name), `#!/bin/sh\n${body}\n`);
  await chmod(sb.path(name), 0o755);
}

/** Pids whose command line contains `text` (arguments separated by NUL). */
function processesRunning(text: string): number[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        return readFileSync(`/proc/${d}/cmdline`, 'utf8').includes(text);
      } catch {
        return false;
      }
    })
    .map(Number);
}

/** True when a write into the mount finishes at once (the file system is not frozen). */
function writable(): boolean {
  const r = spawnSync('touch', [`${mount}/probe`], { timeout: 2000 });
  return r.status === 0;
}

describe('quiesce around the capture', () => {
  it('hooks and fsfreeze that succeed give an app-consistent backup that restores the frozen file system', async () => {
    const b = await sb.cairnJson<BackupJson>([
      'backup', loopDevice, '--vault', vault, '--name', 'app', '--json',
      '--pre-freeze', sb.path('ok.sh'), '--post-thaw', sb.path('ok.sh'), '--freeze', mount,
    ]);
    expect(b).toMatchObject({ consistency: 'app_consistent', warnings: [] });
    expect(writable(), 'thawed after the backup').toBe(true);
    const log = spawnSync('cat', [sb.path('hooks.log')], { encoding: 'utf8' }).stdout;
    expect(log).toBe('pre-freeze app\npost-thaw app\n');
    const shown = await sb.cairnJson<{ consistency: string }>(['backups', 'show', 'app', '--vault', vault, '--json']);
    expect(shown.consistency).toBe('app_consistent');

    // The restored disk is a clean file system with the data written before the freeze.
    const to = sb.path('restored-fs.img');
    expect((await sb.cairn(['restore', 'app', '--vault', vault, '--to', to])).code).toBe(0);
    const fsck = spawnSync('e2fsck', ['-fn', to], { encoding: 'utf8' });
    expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0);
    const dump = spawnSync('debugfs', ['-R', 'cat /data.txt', to], { encoding: 'utf8' });
    expect(dump.stdout).toBe('committed before the freeze\n');
  });

  it('a failing pre-freeze hook gives a crash-consistent backup with the hook named, and nothing stays frozen', async () => {
    const b = await sb.cairnJson<BackupJson>([
      'backup', image, '--vault', vault, '--name', 'hook-failed', '--json', '--pre-freeze', sb.path('fail.sh'), '--freeze', mount,
    ]);
    expect(b.consistency).toBe('crash_consistent');
    expect(b.warnings.join('\n')).toMatch(/fail\.sh.*exit.*3/);
    expect(b.warnings.join('\n')).toContain('database refused to flush');
    expect(writable()).toBe(true);
  });

  it('a hanging hook is killed at --hook-timeout and the backup is crash-consistent', async () => {
    const t0 = Date.now();
    const b = await sb.cairnJson<BackupJson>([
      'backup', image, '--vault', vault, '--name', 'hook-hung', '--json', '--pre-freeze', sb.path('hang.sh'), '--hook-timeout', '1s',
    ]);
    expect(b.consistency).toBe('crash_consistent');
    expect(b.warnings.join('\n')).toMatch(/hang\.sh.*timed out after 1 s/);
    expect(Date.now() - t0).toBeLessThan(20_000);
    expect(processesRunning('sleep\u0000611'), 'the hook process is gone').toEqual([]);
  });

  it('--require-app-consistent fails the backup (exit 22) and leaves the vault as it was', async () => {
    const before = await listFiles(vault);
    const sha = await sha256File(image);
    const r = await sb.cairn([
      'backup', image, '--vault', vault, '--name', 'must-be-app', '--pre-freeze', sb.path('fail.sh'), '--freeze', mount, '--require-app-consistent',
    ]);
    expectCliError(r, 'QUIESCE_FAILED', 'fail.sh');
    expect(await listFiles(vault)).toEqual(before);
    expect(await sha256File(image)).toBe(sha);
    expect(writable()).toBe(true);
  });

  it('refuses quiesce settings that make no sense', async () => {
    expectCliError(await sb.cairn(['backup', image, '--vault', vault, '--require-app-consistent']), 'USAGE', '--require-app-consistent');
    expectCliError(await sb.cairn(['backup', image, '--vault', vault, '--freeze', mount, '--hook-timeout', 'soon']), 'USAGE', '--hook-timeout');
  });
});
