import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocketServer, type WebSocket } from 'ws';

import { ensurePki, type Pki } from '../control-plane/pki/certificates.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server/server.js';
import { decodeMessage, encodeMessage, type AgentMessage, type ServerMessage } from '../shared/protocol/messages.js';
import { cliPath, expectCliError, makeImage, MiB, PASSPHRASE, Sandbox, sha256File, unusedPort } from './helpers.js';
import { call, type Reply } from '../control-plane/server/test-client.js';

/**
 * `cairn agent enroll` against the real control plane, then `cairn agent run` as a real process
 * against a scripted control plane (a wss server with a CA from ensurePki that speaks the protocol
 * and records every message, each checked with decodeMessage): policies pushed, stored and run
 * after a restart without the control plane; commands run once; the durable outbox; catalog-sync
 * and resources after every welcome.
 */

type Received = AgentMessage & Record<string, any>;

/** A control plane that welcomes every hello, records what the agent sends and acks the outbox when told to. */
class ScriptedControlPlane {
  readonly received: Received[] = [];
  autoAck = true;
  private peer: WebSocket | undefined;
  private seq = 0;

  private constructor(
    private readonly https: Server,
    private readonly wss: WebSocketServer,
    readonly port: number,
  ) {}

  static async start(pki: Pki, port = 0): Promise<ScriptedControlPlane> {
    const https = createServer({ cert: pki.serverCertPem.trimEnd() + '\n' + pki.caCertPem, key: pki.serverKeyPem });
    const wss = new WebSocketServer({ server: https, path: '/v1/agent' });
    await new Promise<void>((resolve) => https.listen(port, '127.0.0.1', resolve));
    const cp = new ScriptedControlPlane(https, wss, (https.address() as AddressInfo).port);
    wss.on('connection', (ws) => {
      cp.peer = ws;
      ws.on('message', (data) => {
        const message = decodeMessage(data as Buffer, 'to-server') as Received;
        cp.received.push(message);
        if (message.type === 'hello') {
          cp.send({ v: 1, type: 'welcome', id: cp.nextId(), agentId: message.agentId, serverTime: new Date().toISOString(), heartbeatSeconds: 1, protocolVersion: 1 });
        }
        if ((message.type === 'job-result' || message.type === 'catalog-sync') && cp.autoAck) cp.ack(message.id);
      });
    });
    return cp;
  }

  nextId(): string {
    return `s-${++this.seq}`;
  }

  /** Sends a message to the agent (checked as the agent will check it) with the next server id. */
  send(message: Record<string, unknown> & { type: ServerMessage['type'] }): void {
    this.peer!.send(encodeMessage({ id: this.nextId(), ...message } as unknown as ServerMessage));
  }

  ack(messageId: string): void {
    this.send({ v: 1, type: 'ack', messageId });
  }

  /** Index into `received` to wait from: only messages after this point count. */
  get mark(): number {
    return this.received.length;
  }

  async waitFor(what: string, match: (m: Received) => boolean, from = 0, timeoutMs = 30_000): Promise<Received> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.received.slice(from).find(match);
      if (hit) return hit;
      if (Date.now() > until) {
        throw new Error(`no ${what} from the agent within ${timeoutMs} ms; received: ${this.received.map((m) => m.type).join(', ')}\nagent output:\n${agentLog}`);
      }
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  async close(): Promise<void> {
    for (const c of this.wss.clients) c.terminate();
    this.wss.close();
    this.https.closeAllConnections();
    await new Promise<void>((resolve) => this.https.close(() => resolve()));
  }
}

let sb: Sandbox;
let vault: string;
let image: string;
let statusPort: number;
let configPath: string;
let pki: Pki;
let fake: ScriptedControlPlane | undefined;
let agent: ChildProcess | undefined;
let agentLog = '';
let agentId: string;
const CREDENTIAL_URL = 'nbd://backup:s3cret@127.0.0.1:10809/db';

function startAgent(): ChildProcess {
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

async function stopAgent(): Promise<void> {
  const child = agent;
  agent = undefined;
  if (!child || child.exitCode !== null) return;
  child.kill('SIGTERM');
  await new Promise<void>((r) => child.once('exit', () => r()));
}

async function status(): Promise<any> {
  const res = await fetch(`http://127.0.0.1:${statusPort}/status`);
  return res.json();
}

async function waitUntil<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await check().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > until) throw new Error(`gave up waiting for ${what}; agent output:\n${agentLog}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Points the enrolled agent at the scripted control plane (same agent id and credential). */
async function useScriptedControlPlane(port: number): Promise<void> {
  const file = join(sb.path('agent-state'), 'control-plane.json');
  const state = JSON.parse(await readFile(file, 'utf8'));
  await writeFile(file, JSON.stringify({ ...state, controlPlaneUrl: `wss://127.0.0.1:${port}/v1/agent`, caCertPem: pki.caCertPem, caFingerprint: pki.caFingerprint }), {
    mode: 0o600,
  });
}

async function backups(): Promise<{ id: string; name: string }[]> {
  return sb.cairnJson<{ id: string; name: string }[]>(['backups', 'list', '--vault', vault, '--json']);
}

function api(cp: ControlPlane, method: string, path: string, body?: unknown): Promise<Reply> {
  return call(cp, method, path, { token: cp.adminToken, body });
}

const nightly = { name: 'nightly', enabled: true, vaults: ['main'], trigger: { cron: '0 3 1 1 *', timezone: 'Europe/Berlin' }, retention: { max_backups: 5 } };

beforeAll(async () => {
  sb = await Sandbox.create('agent-link');
  vault = await sb.initVault('vault');
  await writeFile(sb.path('vault.pass'), PASSPHRASE + '\n');
  image = sb.path('disk.img');
  await makeImage(image, [{ kind: 'random', length: 6 * MiB }, { kind: 'hole', length: 2 * MiB }]);
  statusPort = await unusedPort();
  pki = await ensurePki(sb.path('fake-pki'), { hostnames: ['localhost'], ips: ['127.0.0.1'] });
  configPath = sb.path('agent.json');
  await writeFile(
    configPath,
    JSON.stringify({
      stateDir: 'agent-state',
      logDir: 'agent-log',
      status: { port: statusPort },
      vaults: { main: { url: vault, passphraseFile: 'vault.pass' } },
      resources: { web: { vault: 'main', disks: ['disk.img'] }, db: { vault: 'main', disks: [CREDENTIAL_URL] } },
    }),
  );
});

afterAll(async () => {
  if (agent && agent.exitCode === null) agent.kill('SIGKILL');
  await fake?.close();
  await sb?.cleanup();
});

describe('cairn agent enroll', () => {
  it('enrolls with a token once; a reused, damaged or unreachable one fails in one line', async () => {
    const cp = await startControlPlane({ dataDir: sb.path('cp-data'), port: 0, log: () => {}, helloTimeoutMs: 2000 });
    let token: string;
    try {
      const reply = await api(cp, 'POST', '/v1/enrollment-tokens', { ttlSeconds: 600 });
      expect(reply.status).toBe(201);
      token = reply.body.token;
      const r = await sb.cairn(['agent', 'enroll', token, '--config', configPath]);
      expect(r.code, r.stderr).toBe(0);
      agentId = /enrolled as (agt_[0-9a-f]+)/.exec(r.stdout)![1]!;
      expect(r.stdout).toContain(join(sb.path('agent-state'), 'control-plane.json'));
      expect((await cp.catalog.getAgent(agentId))?.agentId).toBe(agentId);

      expectCliError(await sb.cairn(['agent', 'enroll', token, '--config', configPath]), 'USAGE', 'reused');
      expectCliError(await sb.cairn(['agent', 'enroll', 'not-a-token', '--config', configPath]), 'USAGE');
      const unused = (await api(cp, 'POST', '/v1/enrollment-tokens', { ttlSeconds: 600 })).body.token as string;
      await cp.close();
      expectCliError(await sb.cairn(['agent', 'enroll', unused, '--config', configPath]), 'STORE_UNAVAILABLE', 'cannot reach the control plane');
    } finally {
      await cp.close().catch(() => undefined);
    }
    expectCliError(await sb.cairn(['agent', 'enroll', '--config', configPath]), 'USAGE', 'enrollment token');
  });
});

describe('cairn agent run with a control plane', () => {
  it('says hello, sends resources and the catalog, and shows the link in status', async () => {
    fake = await ScriptedControlPlane.start(pki);
    await useScriptedControlPlane(fake.port);
    agent = startAgent();
    const hello = await fake.waitFor('hello', (m) => m.type === 'hello');
    expect(hello).toMatchObject({ agentId, policyVersion: null });
    expect(hello.inventory?.hostname).toBeTruthy();

    const resources = await fake.waitFor('resources', (m) => m.type === 'resources');
    expect(resources.resources).toEqual([
      { name: 'web', vault: 'main', disks: [image] },
      { name: 'db', vault: 'main', disks: ['nbd://127.0.0.1:10809/db'] },
    ]);
    expect(JSON.stringify(fake.received)).not.toContain('s3cret');
    const sync = await fake.waitFor('catalog-sync', (m) => m.type === 'catalog-sync');
    expect(sync).toMatchObject({ vault: 'main', part: 0, last: true, backups: [] });

    const s = await waitUntil('connected status', async () => {
      const st = await status();
      return st.controlPlane.state === 'connected' ? st : undefined;
    });
    expect(s.controlPlane).toMatchObject({ url: `wss://127.0.0.1:${fake.port}/v1/agent`, agentId, policyVersion: null });
    const text = await sb.cairn(['agent', 'status', '--config', configPath]);
    expect(text.stdout).toContain(`connected to wss://127.0.0.1:${fake.port}/v1/agent (as ${agentId}, policy version none yet)`);
    await fake.waitFor('heartbeat', (m) => m.type === 'heartbeat');
  });

  it('applies a pushed policy set, refuses a bad one whole, and ignores an old version', async () => {
    const from = fake!.mark;
    fake!.send({ v: 1, type: 'policy-push', version: 3, policies: [nightly] });
    expect(await fake!.waitFor('policy-ack 3', (m) => m.type === 'policy-ack' && m.version === 3, from)).toMatchObject({ error: null });
    const st = await status();
    expect(st.controlPlane.policyVersion).toBe(3);
    expect(st.resources.find((r: any) => r.name === 'web')).toMatchObject({ policy: 'cp:nightly' });
    expect(st.resources.find((r: any) => r.name === 'web').nextRun).toMatch(/-01-01T02:00:00.000Z$/);

    const bad = { ...nightly, name: 'hourly', trigger: { patterns: ['FREQ=DAILY;BYHOUR=25;BYMINUTE=00'], timezone: 'UTC' } };
    fake!.send({ v: 1, type: 'policy-push', version: 4, policies: [nightly, bad] });
    const refused = await fake!.waitFor('policy-ack 4', (m) => m.type === 'policy-ack' && m.version === 4, from);
    expect(refused.error.code).toBe('CONFIG_INVALID');
    expect(refused.error.message).toContain("policy 'hourly' (policies[1].trigger)");
    expect(refused.error.message).toContain('BYHOUR');

    fake!.send({ v: 1, type: 'policy-push', version: 2, policies: [] });
    expect(await fake!.waitFor('policy-ack 2', (m) => m.type === 'policy-ack' && m.version === 2, from)).toMatchObject({ error: null });
    expect((await status()).controlPlane.policyVersion).toBe(3);
  });

  let backupResult: Received;

  it('runs backup-now once per command id and reports the backup', async () => {
    const from = fake!.mark;
    fake!.send({ v: 1, type: 'command', commandId: 'cmd-backup-1', action: 'backup-now', vault: 'main', resource: 'web', args: { full: false, name: null } });
    backupResult = await fake!.waitFor('job-result', (m) => m.type === 'job-result' && m.commandId === 'cmd-backup-1', from);
    expect(backupResult).toMatchObject({ status: 'ok', error: null });
    expect(backupResult.backup).toMatchObject({ vault: 'main', resource: 'web', kind: 'full', consistency: 'crash_consistent', logicalBytes: 8 * MiB });
    expect(backupResult.backup.name).toMatch(/^manualbk_/);
    expect(backupResult.backup.host).toBeTruthy();
    const list = await backups();
    expect(list.map((b) => b.id)).toEqual([backupResult.backup.id]);
    const progress = fake!.received.find((m) => m.type === 'job-progress' && m.commandId === 'cmd-backup-1');
    expect(progress).toMatchObject({ jobId: backupResult.jobId, kind: 'backup', resource: 'web', vault: 'main' });

    // Again (as after a reconnect): not run twice; the stored result comes again under its id.
    const again = fake!.mark;
    fake!.send({ v: 1, type: 'command', commandId: 'cmd-backup-1', action: 'backup-now', vault: 'main', resource: 'web', args: { full: false, name: null } });
    const repeat = await fake!.waitFor('repeated job-result', (m) => m.type === 'job-result' && m.commandId === 'cmd-backup-1', again);
    expect(repeat.id).toBe(backupResult.id);
    expect(await backups()).toHaveLength(1);
  });

  it('refuses commands for what the config does not have', async () => {
    const from = fake!.mark;
    fake!.send({ v: 1, type: 'command', commandId: 'cmd-nope', action: 'backup-now', vault: 'main', resource: 'mail', args: { full: true, name: null } });
    fake!.send({ v: 1, type: 'command', commandId: 'cmd-novault', action: 'verify', vault: 'archive', resource: null, args: { readData: false } });
    fake!.send({ v: 1, type: 'command', commandId: 'cmd-del-missing', action: 'delete', vault: 'main', resource: 'web', args: { backupId: 'no-such-backup' } });
    const nope = await fake!.waitFor('job-result', (m) => m.type === 'job-result' && m.commandId === 'cmd-nope', from);
    expect(nope).toMatchObject({ status: 'failed', backup: null, error: { code: 'NOT_FOUND' } });
    expect(nope.error.message).toContain("no resource named 'mail'");
    const novault = await fake!.waitFor('job-result', (m) => m.type === 'job-result' && m.commandId === 'cmd-novault', from);
    expect(novault.error).toMatchObject({ code: 'NOT_FOUND' });
    expect(novault.error.message).toContain("no vault named 'archive'");
    const missing = await fake!.waitFor('job-result', (m) => m.type === 'job-result' && m.commandId === 'cmd-del-missing', from);
    expect(missing).toMatchObject({ status: 'failed', error: { code: 'NOT_FOUND' } });
    expect(missing.error.message).toContain('no-such-backup');
  });

  it('restores bit-identically and verifies', async () => {
    const from = fake!.mark;
    const target = sb.path('restored.img');
    fake!.send({ v: 1, type: 'command', commandId: 'cmd-restore', action: 'restore', vault: 'main', resource: 'web', args: { backupId: backupResult.backup.id, target, disk: null, force: false } });
    expect(await fake!.waitFor('restore result', (m) => m.type === 'job-result' && m.commandId === 'cmd-restore', from)).toMatchObject({ status: 'ok', error: null });
    expect(await sha256File(target)).toBe(await sha256File(image));
    fake!.send({ v: 1, type: 'command', commandId: 'cmd-verify', action: 'verify', vault: 'main', resource: null, args: { readData: true } });
    expect(await fake!.waitFor('verify result', (m) => m.type === 'job-result' && m.commandId === 'cmd-verify', from)).toMatchObject({ status: 'ok' });
  });

  it('keeps a job-result in the outbox across restarts until it is acked', async () => {
    fake!.autoAck = false;
    const from = fake!.mark;
    fake!.send({ v: 1, type: 'command', commandId: 'cmd-backup-2', action: 'backup-now', vault: 'main', resource: 'web', args: { full: false, name: 'before-upgrade' } });
    const first = await fake!.waitFor('job-result', (m) => m.type === 'job-result' && m.commandId === 'cmd-backup-2', from);
    expect(first.backup).toMatchObject({ name: 'before-upgrade', kind: 'incremental' });

    // The control plane goes away before it acks; the agent restarts with it away, then it returns.
    await fake!.close();
    await stopAgent();
    agent = startAgent();
    const away = await waitUntil('status without a control plane', async () => {
      const st = await status();
      return st.controlPlane.state !== 'connected' && st.controlPlane.policyVersion === 3 ? st : undefined;
    });
    expect(away.resources.find((r: any) => r.name === 'web')).toMatchObject({ policy: 'cp:nightly' });
    expect(away.resources.find((r: any) => r.name === 'web').nextRun).toMatch(/-01-01T02:00:00.000Z$/);
    await stopAgent();

    fake = await ScriptedControlPlane.start(pki, fake!.port);
    fake.autoAck = false;
    agent = startAgent();
    const hello = await fake.waitFor('hello', (m) => m.type === 'hello');
    expect(hello.policyVersion).toBe(3);
    const resent = await fake.waitFor('re-sent job-result', (m) => m.type === 'job-result' && m.commandId === 'cmd-backup-2');
    expect(resent).toEqual(first);
    const sync = await fake.waitFor('catalog-sync', (m) => m.type === 'catalog-sync');
    expect(sync.backups.map((b: any) => b.name).sort()).toEqual([backupResult.backup.name, 'before-upgrade'].sort());
    expect(sync.backups.find((b: any) => b.name === 'before-upgrade')).toMatchObject({ resource: 'web', consistency: 'crash_consistent', logicalBytes: 8 * MiB });
    fake.ack(resent.id);
    // The agent handles messages in order: once this command is answered, the ack above is stored.
    fake.autoAck = true;
    const probe = fake.mark;
    fake.send({ v: 1, type: 'command', commandId: 'cmd-sync-probe', action: 'catalog-sync', vault: 'main', resource: null, args: {} });
    await fake.waitFor('catalog-sync result', (m) => m.type === 'job-result' && m.commandId === 'cmd-sync-probe', probe);

    // Acked: after another restart it is not sent again (the outbox goes out before the catalog).
    await stopAgent();
    const mark = fake.mark;
    agent = startAgent();
    await fake.waitFor('catalog-sync after the restart', (m) => m.type === 'catalog-sync', mark);
    expect(fake.received.slice(mark).some((m) => m.type === 'job-result' && m.id === resent.id)).toBe(false);
  });

  it('deletes a backup on command and sends the vault catalog again', async () => {
    const from = fake!.mark;
    fake!.send({ v: 1, type: 'command', commandId: 'cmd-delete', action: 'delete', vault: 'main', resource: 'web', args: { backupId: backupResult.backup.id } });
    expect(await fake!.waitFor('delete result', (m) => m.type === 'job-result' && m.commandId === 'cmd-delete', from)).toMatchObject({ status: 'ok', error: null });
    expect((await backups()).map((b) => b.name)).toEqual(['before-upgrade']);
    const sync = await fake!.waitFor('catalog-sync after the delete', (m) => m.type === 'catalog-sync' && m.backups.length === 1, from);
    expect(sync.backups[0].name).toBe('before-upgrade');

    const asked = fake!.mark;
    fake!.send({ v: 1, type: 'command', commandId: 'cmd-sync', action: 'catalog-sync', vault: 'main', resource: null, args: {} });
    const result = await fake!.waitFor('catalog-sync result', (m) => m.type === 'job-result' && m.commandId === 'cmd-sync', asked);
    expect(result).toMatchObject({ status: 'ok' });
    const parts = fake!.received.slice(asked).filter((m) => m.type === 'catalog-sync');
    expect(parts.length).toBeGreaterThanOrEqual(1);
    expect(parts.at(-1)).toMatchObject({ vault: 'main', last: true });
    // The parts were stored (and sent) before the result.
    expect(fake!.received.indexOf(parts.at(-1)!)).toBeLessThan(fake!.received.indexOf(result));

    // A config reload (SIGHUP) tells the control plane the resources again.
    const reload = fake!.mark;
    agent!.kill('SIGHUP');
    expect((await fake!.waitFor('resources after SIGHUP', (m) => m.type === 'resources', reload)).resources.map((r: any) => r.name)).toEqual(['web', 'db']);
    await stopAgent();
  });
});
