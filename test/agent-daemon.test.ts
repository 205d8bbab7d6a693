import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliPath, expectCliError, makeImage, MiB, PASSPHRASE, Sandbox, unusedPort, waitFor as waitForValue } from './helpers.js';

/**
 * The agent daemon as a real process: a short cron schedule, a local vault and a qemu-nbd source.
 * The test watches /status and /metrics over HTTP while a backup runs, stops the agent with SIGTERM
 * in the middle of one, starts it again, and checks that the next run succeeds and the vault verifies.
 */

let sb: Sandbox;
let vault: string;
let port: number;
let nbd: ChildProcess | undefined;
let agent: ChildProcess | undefined;
let agentLog = '';

function config(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    stateDir: 'agent-state',
    logDir: 'agent-log',
    status: { port },
    vaults: { main: { url: vault, passphraseFile: 'vault.pass' } },
    resources: { web: { vault: 'main', disks: [`nbd+unix:///disk?socket=${sb.path('nbd.sock')}`] } },
    policies: {
      often: {
        vaults: ['main'],
        trigger: { cron: '*/4 * * * * *', timezone: 'Europe/Berlin' },
        retention: { max_backups: 2 },
      },
    },
    ...extra,
  };
}

async function writeConfig(name: string, c: Record<string, unknown>): Promise<string> {
  const path = sb.path(name);
  await writeFile(path, JSON.stringify(c, null, 2));
  return path;
}

function startAgent(configPath: string): ChildProcess {
  agentLog = '';
  const child = spawn(process.execPath, [cliPath, 'agent', 'run', '--config', configPath], {
    cwd: sb.dir,
    env: { ...process.env, CAIRN_PASSPHRASE: undefined, JOURNAL_STREAM: undefined, INVOCATION_ID: undefined },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.on('data', (d: Buffer) => (agentLog += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (agentLog += d.toString()));
  return child;
}

async function get(path: string): Promise<{ status: number; type: string | null; text: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, type: res.headers.get('content-type'), text: await res.text() };
}

interface StatusJson {
  agentId: string;
  jobs: { kind: string; resource: string; progress: { percent: number; bytesDone: number; bytesTotal: number } | null }[];
  resources: { name: string; lastResult: { status: string; backup: string | null } | null; nextRun: string | null; lastSuccessAt: string | null }[];
  vaults: { name: string; location: string; backups: number | null }[];
}

async function statusJson(): Promise<StatusJson> {
  return JSON.parse((await get('/status')).text) as StatusJson;
}

function waitFor<T>(what: string, check: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  return waitForValue(what, check, timeoutMs, () => `agent output:\n${agentLog}`, 50);
}

async function stop(child: ChildProcess): Promise<{ code: number | null; ms: number }> {
  const t0 = Date.now();
  child.kill('SIGTERM');
  const code = await new Promise<number | null>((r) => (child.exitCode !== null ? r(child.exitCode) : child.once('exit', (c) => r(c))));
  return { code, ms: Date.now() - t0 };
}

beforeAll(async () => {
  sb = await Sandbox.create('agent');
  vault = await sb.initVault('vault');
  await writeFile(sb.path('vault.pass'), PASSPHRASE + '\n');
  port = await unusedPort();
  const image = sb.path('disk.img');
  await makeImage(image, [{ kind: 'random', length: 160 * MiB }, { kind: 'hole', length: 32 * MiB }]);
  nbd = spawn('qemu-nbd', [`--socket=${sb.path('nbd.sock')}`, '--export-name=disk', '--read-only', '--format=raw', '--shared=0', '--persistent', image], {
    stdio: 'ignore',
  });
  await waitFor('qemu-nbd', async () => (existsSync(sb.path('nbd.sock')) ? true : undefined), 10_000);
});

afterAll(async () => {
  if (agent && agent.exitCode === null) agent.kill('SIGKILL');
  nbd?.kill('SIGTERM');
  await sb?.cleanup();
});

describe('cairn agent run', () => {
  it('backs up on schedule, reports progress over HTTP, stops cleanly on SIGTERM and carries on after a restart', async () => {
    const configPath = await writeConfig('agent.json', config());
    agent = startAgent(configPath);
    expect((await waitFor('healthz', async () => ((await get('/healthz')).status === 200 ? true : undefined), 15_000))).toBe(true);

    // A backup in progress shows up with its progress.
    const running = await waitFor(
      'a running backup with progress',
      async () => {
        const s = await statusJson();
        const job = s.jobs.find((j) => j.kind === 'backup' && j.progress && j.progress.percent > 0 && j.progress.percent < 100);
        return job ? s : undefined;
      },
      30_000,
    );
    expect(running.jobs[0].resource).toBe('web');
    expect(running.vaults[0]).toMatchObject({ name: 'main', location: vault });
    expect(JSON.stringify(running)).not.toContain(PASSPHRASE);

    // SIGTERM in the middle of it: the agent exits promptly and commits nothing half-done.
    const stopped = await stop(agent);
    expect(stopped.ms).toBeLessThan(30_000);
    const afterStop = await sb.cairnJson<{ name: string }[]>(['backups', 'list', '--vault', vault, '--json']);

    // Started again: the run missed while it was down is caught up, and it succeeds.
    agent = startAgent(configPath);
    const ok = await waitFor(
      'a successful scheduled backup',
      async () => {
        const s = await statusJson();
        const r = s.resources.find((x) => x.name === 'web');
        return r?.lastResult?.status === 'ok' ? r : undefined;
      },
      60_000,
    );
    expect(ok.lastResult!.backup).toMatch(/^autobk_[a-z0-9]{6}$/);
    expect(ok.nextRun).not.toBeNull();
    const metrics = await get('/metrics');
    expect(metrics.status).toBe(200);
    expect(metrics.type).toContain('text/plain; version=0.0.4');
    expect(metrics.text).toMatch(/^cairn_backups_total\{resource="web",vault="main",result="ok"\} [1-9]/m);
    expect(metrics.text).toMatch(/^cairn_backup_last_success_timestamp_seconds\{resource="web"\} \d/m);

    // SIGHUP with a broken config keeps the running one and says why.
    await writeFile(configPath, JSON.stringify(config({ concurrency: 0 })));
    agent.kill('SIGHUP');
    await waitFor('the reload refusal in the log', async () => (agentLog.includes('configuration not reloaded') ? true : undefined), 10_000);
    expect(agentLog).toContain("'concurrency'");
    expect((await get('/healthz')).status).toBe(200);
    await writeFile(configPath, JSON.stringify(config(), null, 2));

    const text = await sb.cairn(['agent', 'status', '--config', configPath]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain('web');

    expect((await stop(agent)).ms).toBeLessThan(30_000);
    const list = await sb.cairnJson<{ name: string }[]>(['backups', 'list', '--vault', vault, '--json']);
    expect(list.length).toBeGreaterThan(afterStop.length - 1);
    expect(list.every((b) => b.name.startsWith('autobk_'))).toBe(true);
    expect(list.length, 'retention keeps at most max_backups=2').toBeLessThanOrEqual(2);
    const verify = await sb.cairn(['vault', 'verify', '--vault', vault]);
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
  });

  it('refuses bad configurations before starting anything', async () => {
    const run = async (c: Record<string, unknown>): Promise<Awaited<ReturnType<Sandbox['cairn']>>> =>
      sb.cairn(['agent', 'run', '--config', await writeConfig('bad.json', c)]);
    const pattern = config({
      policies: { p: { vaults: ['main'], trigger: { patterns: ['FREQ=DAILY;BYHOUR=25;BYMINUTE=00'] } } },
    });
    expectCliError(await run(pattern), 'CONFIG_INVALID', "'policies.p.trigger'", 'BYHOUR');
    const unknownVault = config({ resources: { web: { vault: 'nope', disks: ['disk.img'] } } });
    expectCliError(await run(unknownVault), 'CONFIG_INVALID', "'resources.web.vault'", "'nope'");
    const noPass = config({ vaults: { main: { url: vault, passphraseFile: 'missing.pass' } } });
    expectCliError(await run(noPass), 'CONFIG_INVALID', "'vaults.main.passphraseFile'", 'missing.pass');
    const busy = (await import('node:net')).createServer();
    await new Promise<void>((r) => busy.listen(port, '127.0.0.1', r));
    try {
      expectCliError(await run(config()), 'BUSY', `127.0.0.1:${port}`);
    } finally {
      busy.close();
    }
    expectCliError(await sb.cairn(['agent', 'run', '--config', sb.path('nothing.json')]), 'CONFIG_INVALID', 'nothing.json');
  });
});
