import { spawn } from 'node:child_process';
import { mkdir, readdir } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MiB, PASSPHRASE, Sandbox, cliPath, expectOk, makeImage, packFiles, sha256File, sum } from './helpers.js';

/** Ctrl-C (SIGINT): exit 130, a clear message, no lease or partial file left, nothing committed. */
describe('interrupting', () => {
  let box: Sandbox;

  beforeAll(async () => {
    box = await Sandbox.create('interrupt');
  });

  afterAll(async () => {
    await box.cleanup();
  });

  it('releases its lease on SIGINT and the next backup reuses the uploaded packs', async () => {
    const vault = await box.initVault('vault', ['--pack-size', '1M']);
    const image = box.path('disk.img');
    await makeImage(image, [{ kind: 'random', length: 96 * MiB }]);

    const env = { ...process.env, CAIRN_PASSPHRASE: PASSPHRASE, CAIRN_STATE_DIR: box.stateDir };
    const child = spawn(process.execPath, [cliPath, 'backup', image, '--vault', vault], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    // Interrupt once a few packs are completely stored (temp files do not count).
    const deadline = Date.now() + 60_000;
    const stored = async () =>
      [...(await packFiles(vault).catch(() => new Map<string, number>()))].filter(([k]) => !k.split('/').pop()!.startsWith('.tmp-'));
    while (Date.now() < deadline && (await stored()).length < 3) await new Promise((r) => setTimeout(r, 10));
    child.kill('SIGINT');
    const code = await exited;

    if (code === 0) {
      // The machine was fast enough to finish first: then the backup must be complete.
      expectOk(await box.cairn(['vault', 'verify', '--vault', vault]));
      return;
    }
    expect(code).toBe(130);
    expect(stderr).toContain('interrupted by SIGINT');
    expect(stderr).not.toContain('    at ');
    expect(await readdir(box.path('vault', 'leases')).catch(() => [])).toEqual([]);
    expect(await readdir(box.path('vault', 'backups')).catch(() => [])).toEqual([]);
    expectOk(await box.cairn(['vault', 'verify', '--vault', vault, '--read-data']));

    // What was uploaded before the interrupt is reused (through an index written before it, or by
    // re-indexing packs no index names), so the rerun stores at least that much less than 96 MiB.
    // Packs close before the next blob would pass 1 MiB, so three of them hold a little under 3 MiB.
    const packsKept = await stored();
    expect(packsKept.length).toBeGreaterThanOrEqual(3);
    const kept = sum(packsKept.map(([, size]) => size));
    const rerun = await box.cairnJson<{ name: string; bytesStored: number }>(['backup', image, '--vault', vault, '--json']);
    expect(rerun.bytesStored).toBeLessThan(98 * MiB - kept);
    expectOk(await box.cairn(['restore', rerun.name, '--vault', vault, '--to', box.path('r.img')]));
    expect(await sha256File(box.path('r.img'))).toBe(await sha256File(image));
  });

  it('removes its partial file when a restore is interrupted', async () => {
    const vault = await box.initVault('vault2');
    const image = box.path('disk2.img');
    await makeImage(image, [{ kind: 'random', length: 160 * MiB }]);
    const b = await box.cairnJson<{ name: string }>(['backup', image, '--vault', vault, '--json']);
    const env = { ...process.env, CAIRN_PASSPHRASE: PASSPHRASE, CAIRN_STATE_DIR: box.stateDir };
    const target = box.path('out', 'restored.img');
    await mkdir(box.path('out'));
    const child = spawn(process.execPath, [cliPath, 'restore', b.name, '--vault', vault, '--to', target], { env, stdio: 'ignore' });
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline && !(await readdir(box.path('out'))).some((f) => f.includes('.cairn-partial-'))) {
      await new Promise((r) => setTimeout(r, 5));
    }
    child.kill('SIGINT');
    const code = await exited;
    if (code === 0) {
      expect(await sha256File(target)).toBe(await sha256File(image));
      return;
    }
    expect(code).toBe(130);
    expect(await readdir(box.path('out'))).toEqual([]);
  });
});
