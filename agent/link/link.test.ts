import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';

import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { WebSocketServer, type WebSocket } from 'ws';

import { ManualClock } from '../../shared/clock.js';
import { formatEnrollmentToken, parseEnrollmentToken } from '../../shared/protocol/enrollment-token.js';
import type { Problem } from '../../shared/protocol/messages.js';
import { ensurePki } from '../../control-plane/pki/certificates.js';
import { startControlPlane, type ControlPlane } from '../../control-plane/server/server.js';
import { CONTROL_PLANE_FILE, enrollAgent, loadControlPlaneState, type ControlPlaneState } from './enroll.js';
import { BACKOFF, ControlPlaneLink, type LinkState } from './link.js';
import { call, type Reply } from '../../control-plane/server/test-client.js';

const silent = (): void => {};

/** One admin API call that trusts only the control plane's CA. */
function api(cp: ControlPlane, admin: string, method: string, path: string, body?: unknown): Promise<Reply> {
  return call(cp, method, path, { token: admin, body });
}

async function newToken(cp: ControlPlane, admin: string): Promise<string> {
  const reply = await api(cp, admin, 'POST', '/v1/enrollment-tokens', { ttlSeconds: 600 });
  expect(reply.status).toBe(201);
  return reply.body.token as string;
}

async function failure(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a failure');
}

describe('agent enrollment and control plane link', () => {
  let dataDir: string;
  let stateDir: string;
  let cp: ControlPlane;
  let admin: string;
  let port: number;
  let state: ControlPlaneState;

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'cairn-link-cp-'));
    stateDir = join(await mkdtemp(join(tmpdir(), 'cairn-link-agent-')), 'state');
    cp = await startControlPlane({ dataDir, port: 0, log: silent, helloTimeoutMs: 2000 });
    admin = cp.adminToken!;
    port = Number(new URL(cp.url).port);
  });

  afterAll(async () => {
    await cp?.close();
    await rm(dataDir, { recursive: true, force: true });
    await rm(join(stateDir, '..'), { recursive: true, force: true });
  });

  it('enrolls: pins the CA, stores the credential 0600, and a token works once', async () => {
    const token = await newToken(cp, admin);
    state = await enrollAgent({ token, stateDir, hostname: 'host-1', inventory: null });
    expect(state.agentId).toMatch(/^agt_[0-9a-f]{16}$/);
    expect(state.controlPlaneUrl).toBe(cp.wsUrl);
    expect(state.caFingerprint).toBe(cp.caFingerprint);
    expect(state.caCertPem.trim()).toBe(cp.caCertPem.trim());
    const file = join(stateDir, CONTROL_PLANE_FILE);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(await loadControlPlaneState(stateDir)).toEqual(state);
    expect(JSON.parse(await readFile(file, 'utf8')).credential).toBe(state.credential);

    const again = await failure(enrollAgent({ token, stateDir: join(stateDir, 'other'), hostname: 'host-1', inventory: null }));
    expect(again.message).toContain('reused');
    expect(await cp.catalog.listAgents()).toHaveLength(1);
  });

  it('refuses a token whose CA fingerprint is not the server\'s, before sending it', async () => {
    const real = parseEnrollmentToken(await newToken(cp, admin));
    const forged = formatEnrollmentToken({ ...real, caFingerprint: 'cd'.repeat(32) });
    const err = await failure(enrollAgent({ token: forged, stateDir: join(stateDir, 'forged'), hostname: 'host-2', inventory: null }));
    expect(err.message).toContain(`the server at ${cp.wsUrl} is not the control plane this token was made by`);
    expect(await cp.catalog.listAgents()).toHaveLength(1);
    await expect(stat(join(stateDir, 'forged', CONTROL_PLANE_FILE))).rejects.toThrow();
    // The secret never reached the server: the real token is still unused.
    const other = await enrollAgent({ token: formatEnrollmentToken(real), stateDir: join(stateDir, 'real'), hostname: 'host-2', inventory: null });
    expect(other.agentId).not.toBe(state.agentId);
    expect(await cp.catalog.listAgents()).toHaveLength(2);
  });

  it('refuses an expired token without dialling', async () => {
    const token = await newToken(cp, admin);
    const later = new ManualClock(Date.now() + 3600_000);
    const err = await failure(enrollAgent({ token, stateDir: join(stateDir, 'late'), hostname: 'h', inventory: null, clock: later }));
    expect(err.message).toMatch(/expired at .*create a new one/);
  });

  it('links, survives a control plane restart, and backs off after it is revoked', async () => {
    const clock = new ManualClock(Date.now());
    const delays: number[] = [];
    const states: LinkState[] = [];
    const refusals: Problem[] = [];
    const link = new ControlPlaneLink({
      state,
      agentVersion: '0.1.0-test',
      inventory: () => null,
      policyVersion: () => null,
      onPolicyPush: async () => {},
      onRefused: (p) => refusals.push(p),
      onStateChange: (s) => states.push(s),
      clock,
      random: () => 0.999,
      // Records what the link asked for; waits at most 20 ms so the test does not.
      sleep: (ms, signal) => {
        delays.push(ms);
        return delay(Math.min(ms, 20), undefined, { signal });
      },
    });
    try {
      await vi.waitFor(() => expect(link.state).toBe('connected'), { timeout: 5000, interval: 10 });
      await vi.waitFor(async () => expect((await cp.catalog.getAgent(state.agentId))?.status).toBe('online'), { timeout: 5000, interval: 20 });

      // A connection up for a minute is stable: the next wait starts from the base again.
      clock.advance(BACKOFF.stableMs);
      await cp.close();
      await vi.waitFor(() => expect(link.state).not.toBe('connected'), { timeout: 5000, interval: 10 });
      await vi.waitFor(() => expect(delays.length).toBeGreaterThanOrEqual(3), { timeout: 5000, interval: 10 });
      expect(delays[0]).toBeLessThan(BACKOFF.baseMs);
      expect(delays[1]).toBe(Math.floor(0.999 * 2 * BACKOFF.baseMs));
      expect(delays[2]).toBe(Math.floor(0.999 * 4 * BACKOFF.baseMs));
      expect(states).toContain('disconnected');

      cp = await startControlPlane({ dataDir, port, log: silent, helloTimeoutMs: 2000 });
      await vi.waitFor(() => expect(link.state).toBe('connected'), { timeout: 10_000, interval: 10 });
      await vi.waitFor(async () => expect((await cp.catalog.getAgent(state.agentId))?.status).toBe('online'), { timeout: 5000, interval: 20 });

      const before = delays.length;
      expect((await api(cp, admin, 'POST', `/v1/agents/${state.agentId}/revoke`)).status).toBe(200);
      await vi.waitFor(() => expect(refusals.length).toBeGreaterThanOrEqual(2), { timeout: 10_000, interval: 10 });
      expect(refusals[0]!.code).toBe('PERMISSION_DENIED');
      expect(refusals[0]!.message).toContain('revoked');
      expect(link.state).not.toBe('connected');
      // The connection lasted less than a minute, so refusals keep growing the wait.
      const after = delays.slice(before);
      for (let i = 1; i < after.length; i++) expect(after[i]).toBeGreaterThanOrEqual(Math.min(after[i - 1]! * 2 - 1, Math.floor(0.999 * BACKOFF.capMs)));
      expect(after[0]).toBeGreaterThanOrEqual(Math.floor(0.999 * 8 * BACKOFF.baseMs));
    } finally {
      await link.close();
    }
    expect(link.state).toBe('disconnected');
  });
});

describe('control plane link messages (scripted server)', () => {
  it('sends heartbeats, acks policy pushes (with the error of a refused one) and hands over commands', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cairn-link-fake-'));
    const pki = await ensurePki(join(dir, 'pki'), { hostnames: ['localhost'], ips: ['127.0.0.1'] });
    const https = createServer({ cert: pki.serverCertPem.trimEnd() + '\n' + pki.caCertPem, key: pki.serverKeyPem });
    const wss = new WebSocketServer({ server: https, path: '/v1/agent' });
    const received: any[] = [];
    let peer: WebSocket | undefined;
    wss.on('connection', (ws) => {
      peer = ws;
      ws.on('message', (data) => {
        const message = JSON.parse(data.toString());
        received.push(message);
        if (message.type === 'hello') {
          ws.send(JSON.stringify({ v: 1, type: 'welcome', id: 's-1', agentId: message.agentId, serverTime: new Date().toISOString(), heartbeatSeconds: 1, protocolVersion: 1 }));
        }
      });
    });
    await new Promise<void>((resolve) => https.listen(0, '127.0.0.1', resolve));
    const { port } = https.address() as AddressInfo;
    const pushes: number[] = [];
    const commands: string[] = [];
    const link = new ControlPlaneLink({
      state: { controlPlaneUrl: `wss://127.0.0.1:${port}/v1/agent`, agentId: 'agt_0011223344556677', credential: 'secret', caCertPem: pki.caCertPem, caFingerprint: pki.caFingerprint },
      agentVersion: '0.1.0-test',
      inventory: () => null,
      policyVersion: () => 7,
      onPolicyPush: async (message) => {
        pushes.push(message.version);
        if (message.version === 9) throw new Error('policy nightly: the schedule does not parse');
      },
      onCommand: (message) => commands.push(message.commandId),
      log: silent,
    });
    try {
      await vi.waitFor(() => expect(link.state).toBe('connected'), { timeout: 5000, interval: 10 });
      const hello = received[0];
      expect(hello).toMatchObject({ type: 'hello', agentId: 'agt_0011223344556677', token: 'secret', protocolVersions: [1], policyVersion: 7, inventory: null });

      const policy = { name: 'nightly', enabled: true, vaults: ['main'], trigger: { cron: '0 2 * * *', timezone: 'UTC' }, retention: { max_backups: 7 } };
      peer!.send(JSON.stringify({ v: 1, type: 'policy-push', id: 's-2', version: 8, policies: [policy] }));
      peer!.send(JSON.stringify({ v: 1, type: 'policy-push', id: 's-3', version: 9, policies: [policy] }));
      peer!.send(JSON.stringify({ v: 1, type: 'command', id: 's-4', commandId: 'cmd-1', action: 'backup-now', vault: 'main', resource: 'disk0', args: { full: false, name: null } }));
      await vi.waitFor(() => expect(received.filter((m) => m.type === 'policy-ack')).toHaveLength(2), { timeout: 5000, interval: 10 });
      const acks = received.filter((m) => m.type === 'policy-ack');
      expect(acks[0]).toMatchObject({ version: 8, error: null });
      expect(acks[1]).toMatchObject({ version: 9, error: { code: 'INTERNAL', message: 'policy nightly: the schedule does not parse' } });
      expect(pushes).toEqual([8, 9]);
      await vi.waitFor(() => expect(commands).toEqual(['cmd-1']), { timeout: 5000, interval: 10 });
      await vi.waitFor(() => expect(received.some((m) => m.type === 'heartbeat')).toBe(true), { timeout: 5000, interval: 20 });
      expect(received.find((m) => m.type === 'heartbeat')).toMatchObject({ jobs: [] });
    } finally {
      await link.close();
      wss.close();
      https.closeAllConnections();
      await new Promise<void>((resolve) => https.close(() => resolve()));
      await rm(dir, { recursive: true, force: true });
    }
  });
});
