import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';

import { parseEnrollmentToken } from '../../shared/protocol/enrollment-token.js';
import { controlPlaneCommand } from './control-plane-command.js';
import { call, connect, enroll } from '../server/test-client.js';

// The real `cairn` program (bin/cairn.js runs the compiled dist/, so `npm run build` must have run).
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const cliPath = join(repoRoot, 'bin', 'cairn.js');

function cliEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('CAIRN_')) env[k] = v;
  return { ...env, ...extra };
}

/** Runs `cairn ...args` to its end. */
function runCli(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [cliPath, ...args], { cwd: repoRoot, env: cliEnv(env) });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', fail);
    child.on('close', (code, signal) => done({ code: code ?? (signal ? 128 : -1), stdout, stderr }));
  });
}

/** A running `cairn control-plane run`, with what it printed so far. */
class Server {
  readonly child: ChildProcessWithoutNullStreams;
  stdout = '';
  stderr = '';
  readonly exited: Promise<number | null>;

  constructor(args: string[], env: Record<string, string> = {}) {
    this.child = spawn(process.execPath, [cliPath, 'control-plane', 'run', ...args], { cwd: repoRoot, env: cliEnv(env) });
    this.child.stdout.on('data', (d: Buffer) => (this.stdout += d.toString()));
    this.child.stderr.on('data', (d: Buffer) => (this.stderr += d.toString()));
    this.exited = new Promise((done) => this.child.on('exit', (code) => done(code)));
  }

  /** The URL it printed, once it listens. */
  async url(): Promise<string> {
    await vi.waitFor(() => expect(this.stdout).toMatch(/listening on https:\/\/\S+/), { timeout: 30_000, interval: 20 });
    return /listening on (https:\/\/\S+)/.exec(this.stdout)![1]!;
  }
}

describe('cairn control-plane', () => {
  let dataDir: string;
  const servers: Server[] = [];

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'cairn-cp-cli-'));
  });

  afterAll(async () => {
    for (const s of servers) if (s.child.exitCode === null) s.child.kill('SIGKILL');
    await rm(dataDir, { recursive: true, force: true });
  });

  it('runs, prints its URL and the admin token once, makes tokens beside a running server, and stops on SIGTERM', async () => {
    const first = new Server(['--data-dir', dataDir, '--listen', '127.0.0.1:0']);
    servers.push(first);
    const url = await first.url();
    expect(url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    // The token line comes after the URL's, maybe in a later chunk of output.
    await vi.waitFor(() => expect(first.stdout).toMatch(/admin token \(shown this once[^:]*\): \S+\n/), { timeout: 10_000, interval: 20 });
    const admin = /admin token \(shown this once[^:]*\): (\S+)/.exec(first.stdout)?.[1];
    expect(admin).toBeDefined();
    const caCertPem = await readFile(join(dataDir, 'pki', 'ca.crt'), 'utf8');
    const endpoint = { url, wsUrl: `${url.replace('https', 'wss')}/v1/agent`, caCertPem };
    expect((await call(endpoint, 'GET', '/v1/agents', { token: admin })).status).toBe(200);

    // token create works on the data dir while the server runs, and the server accepts the token.
    const made = await runCli(['control-plane', 'token', 'create', '--ttl', '1h', '--data-dir', dataDir]);
    expect(made.stderr).toContain('usable once until');
    expect(made.code).toBe(0);
    const token = made.stdout.trim();
    const parsed = parseEnrollmentToken(token);
    expect(parsed.url).toBe(endpoint.wsUrl);
    const enrolled = await call(endpoint, 'POST', '/v1/enroll', { body: { token, hostname: 'cli-host', inventory: null } });
    expect(enrolled.status).toBe(200);
    const agent = await connect(endpoint, enrolled.body);
    expect(agent.all('welcome')).toHaveLength(1);

    first.child.kill('SIGTERM');
    expect(await first.exited).toBe(0);
    expect(first.stdout).toContain('control plane stopped');
    expect((await agent.closed).code).toBe(1001);

    // Second start: same data, no admin token printed; the old one still works. SIGINT stops it too.
    const second = new Server(['--listen', '127.0.0.1:0'], { CAIRN_CONTROL_PLANE_DIR: dataDir });
    servers.push(second);
    const again = await second.url();
    expect(second.stdout).not.toContain('admin token');
    const endpoint2 = { ...endpoint, url: again, wsUrl: `${again.replace('https', 'wss')}/v1/agent` };
    expect((await call(endpoint2, 'GET', '/v1/agents', { token: admin })).body.agents).toHaveLength(1);
    await enroll(endpoint2, admin!, 'api-host');
    second.child.kill('SIGINT');
    expect(await second.exited).toBe(0);
  });

  it('refuses bad flags with a clear error naming the flag', async () => {
    for (const [args, text] of [
      [['run', '--listen', 'nowhere'], "--listen 'nowhere' is not HOST:PORT"],
      [['run', '--listen', '127.0.0.1:70000'], 'is not HOST:PORT'],
      [['run', '--port', '80'], "Unknown option '--port'"],
      [['run', '--tls-cert', 'a.pem'], '--tls-cert, --tls-key and --tls-ca go together'],
      [['run', '--database', 'mysql://x'], '--database must be a postgres://'],
      [['run', 'extra'], "unexpected argument 'extra'"],
      [['launch'], "unknown command 'cairn control-plane launch'"],
      [['token', 'create', '--data-dir', dataDir], '--ttl is required'],
      [['token', 'create', '--ttl', '90d', '--data-dir', dataDir], "--ttl '90d' is not a duration"],
      [['token', 'create', '--ttl', 'soon', '--data-dir', dataDir], "--ttl 'soon' is not a duration"],
    ] as const) {
      const refused = controlPlaneCommand([...args], () => {});
      await expect(refused, args.join(' ')).rejects.toThrow(text);
      await expect(refused).rejects.toMatchObject({ code: 'USAGE' });
    }
  });

  it('exits non-zero with one line on stderr, as a real process', async () => {
    const [bad, nowhere, help, topHelp] = await Promise.all([
      runCli(['control-plane', 'run', '--listen', 'nowhere']),
      runCli(['control-plane', 'token', 'create', '--ttl', '1h', '--data-dir', join(dataDir, 'missing')]),
      runCli(['control-plane', '--help']),
      runCli(['--help']),
    ]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toBe("cairn: error: --listen 'nowhere' is not HOST:PORT; write e.g. 127.0.0.1:8443, 0.0.0.0:8443 or [::1]:8443\n");
    expect(nowhere.code).toBe(3);
    expect(nowhere.stderr).toContain("run 'cairn control-plane run");
    expect(nowhere.stderr).not.toMatch(/\n\s+at /);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('cairn control-plane token create');
    expect(topHelp.stdout).toContain('cairn control-plane run');
  });
});
