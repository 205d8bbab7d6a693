import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { WebSocket } from 'ws';

import { ManualClock } from '../../shared/clock.js';
import { PROTOCOL_VERSION } from '../../shared/protocol/messages.js';
import { ensurePki } from '../pki/certificates.js';
import { startControlPlane, type ControlPlane } from './server.js';
import { call, connect as connectAgent, enroll as enrollAgent, hello, TestAgent } from './test-client.js';

describe('control plane server', () => {
  let dataDir: string;
  let cp: ControlPlane;
  let admin: string;
  const clock = new ManualClock(Date.now());

  const enroll = (hostname = 'host-a') => enrollAgent(cp, admin, hostname);
  const connect = (agent: { agentId: string; credential: string }) => connectAgent(cp, agent);

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'cairn-cp-'));
    cp = await startControlPlane({ dataDir, port: 0, clock, log: () => {} });
    expect(cp.adminToken).toBeDefined();
    admin = cp.adminToken!;
  });

  afterAll(async () => {
    await cp?.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('serves on https and wss URLs and keeps the admin token only hashed, 0600', async () => {
    expect(cp.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(cp.wsUrl).toBe(`${cp.url.replace('https', 'wss')}/v1/agent`);
    expect(cp.caFingerprint).toMatch(/^[0-9a-f]{64}$/);
    expect((await stat(join(dataDir, 'admin-token.hash'))).mode & 0o777).toBe(0o600);
  });

  it('requires the admin token', async () => {
    const none = await call(cp, 'GET', '/v1/agents');
    expect(none.status).toBe(401);
    expect(none.body.error.code).toBe('UNAUTHENTICATED');
    expect((await call(cp, 'GET', '/v1/agents', { token: 'cairn-admin.wrong' })).status).toBe(401);
    expect((await call(cp, 'POST', '/v1/enrollment-tokens', { body: { ttlSeconds: 60 } })).status).toBe(401);
    const ok = await call(cp, 'GET', '/v1/agents', { token: admin });
    expect(ok.status).toBe(200);
    expect(ok.body.agents).toEqual([]);
  });

  it('enrolls an agent once per token and refuses reuse, wrong secrets and expired tokens', async () => {
    const made = await call(cp, 'POST', '/v1/enrollment-tokens', { token: admin, body: { ttlSeconds: 600 } });
    expect(made.status).toBe(201);
    expect(made.body.token).toMatch(/^cairn-enroll\.v1\./);
    expect((await cp.catalog.getEnrollmentToken(made.body.id))?.secretHash).toMatch(/^[0-9a-f]{64}$/);

    const first = await call(cp, 'POST', '/v1/enroll', { body: { token: made.body.token, hostname: 'db-1', inventory: { cpus: 4 } } });
    expect(first.status).toBe(200);
    expect(first.body.agentId).toMatch(/^agt_[0-9a-f]{16}$/);
    expect(typeof first.body.credential).toBe('string');

    const again = await call(cp, 'POST', '/v1/enroll', { body: { token: made.body.token, hostname: 'db-2', inventory: null } });
    expect(again.status).toBe(401);
    expect(again.body.error.code).toBe('ENROLLMENT_REUSED');
    expect(again.body.error.message).toContain('reused');

    // A token whose secret was changed: same id, other secret.
    const other = await call(cp, 'POST', '/v1/enrollment-tokens', { token: admin, body: { ttlSeconds: 600 } });
    const payload = JSON.parse(Buffer.from(other.body.token.slice('cairn-enroll.v1.'.length), 'base64url').toString());
    payload.s = Buffer.alloc(32, 7).toString('base64url');
    const forged = 'cairn-enroll.v1.' + Buffer.from(JSON.stringify(payload)).toString('base64url');
    const wrong = await call(cp, 'POST', '/v1/enroll', { body: { token: forged, hostname: 'x', inventory: null } });
    expect(wrong.status).toBe(401);
    expect(wrong.body.error.code).toBe('ENROLLMENT_WRONG');
    // The wrong guess did not burn the token.
    expect((await call(cp, 'POST', '/v1/enroll', { body: { token: other.body.token, hostname: 'y', inventory: null } })).status).toBe(200);

    const short = await call(cp, 'POST', '/v1/enrollment-tokens', { token: admin, body: { ttlSeconds: 1 } });
    clock.advance(2000);
    const expired = await call(cp, 'POST', '/v1/enroll', { body: { token: short.body.token, hostname: 'z', inventory: null } });
    expect(expired.status).toBe(401);
    expect(expired.body.error.code).toBe('ENROLLMENT_EXPIRED');

    const list = await call(cp, 'GET', '/v1/agents', { token: admin });
    // Both enrolled at the same (manual) time: the order between them is the catalog's tie-break.
    expect(list.body.agents.map((a: any) => a.hostname).sort()).toEqual(['db-1', 'y']);
    expect(list.text).not.toContain('credentialHash');
    expect(list.body.agents.find((a: any) => a.hostname === 'db-1').inventory).toEqual({ cpus: 4 });
  });

  it('answers bad requests with a JSON error and no stack trace', async () => {
    const unknown = await call(cp, 'GET', '/v1/nothing', { token: admin });
    expect(unknown.status).toBe(404);
    expect(unknown.body.error.code).toBe('ROUTE_NOT_FOUND');
    const badJson = await call(cp, 'POST', '/v1/enroll', { raw: '{"token":' });
    expect(badJson.status).toBe(400);
    expect(badJson.body.error.code).toBe('USAGE');
    const damaged = await call(cp, 'POST', '/v1/enroll', { body: { token: 'cairn-enroll.v1.xyz', hostname: 'h', inventory: null } });
    expect(damaged.status).toBe(400);
    const big = await call(cp, 'POST', '/v1/enroll', { raw: Buffer.alloc(1024 * 1024 + 10, 0x20) });
    expect(big.status).toBe(413);
    expect(big.body.error.code).toBe('TOO_LARGE');
    const badTtl = await call(cp, 'POST', '/v1/enrollment-tokens', { token: admin, body: { ttlSeconds: 'soon' } });
    expect(badTtl.status).toBe(400);
    for (const reply of [unknown, badJson, damaged, big, badTtl]) expect(reply.text).not.toMatch(/\n\s+at /);
  });

  it('welcomes a hello, marks the agent online on heartbeat and offline on close', async () => {
    const agent = await enroll('web-1');
    const client = await connect(agent);
    const welcome = await client.next('welcome');
    expect(welcome).toMatchObject({ v: 1, agentId: agent.agentId, protocolVersion: PROTOCOL_VERSION });

    clock.advance(1000);
    const beat = clock.now().toISOString();
    client.send({ v: 1, type: 'heartbeat', id: 'b-1', jobs: [] });
    await vi.waitFor(async () => expect(await cp.catalog.getAgent(agent.agentId)).toMatchObject({ status: 'online', lastSeen: beat }));

    client.ws.close(1000);
    await vi.waitFor(async () => expect((await cp.catalog.getAgent(agent.agentId))?.status).toBe('offline'));
  });

  it('refuses a wrong credential, and a revoked agent even with the right one', async () => {
    const agent = await enroll('web-2');
    const wrong = new TestAgent(cp);
    await wrong.opened;
    wrong.send(hello(agent.agentId, 'not-the-credential'));
    expect((await wrong.next('error')).code).toBe('PERMISSION_DENIED');
    expect((await wrong.closed).code).toBe(1008);

    const live = await connect(agent);
    const revoked = await call(cp, 'POST', `/v1/agents/${agent.agentId}/revoke`, { token: admin });
    expect(revoked.status).toBe(200);
    expect(revoked.body.agent.revokedAt).not.toBeNull();
    expect((await live.closed).code).toBe(1008);

    const after = new TestAgent(cp);
    await after.opened;
    after.send(hello(agent.agentId, agent.credential));
    const error = await after.next('error');
    expect(error).toMatchObject({ code: 'PERMISSION_DENIED', inReplyTo: 'h-1' });
    expect((await after.closed).code).toBe(1008);
    expect(after.received.map((m) => m.type)).not.toContain('welcome');
    expect((await call(cp, 'POST', '/v1/agents/agt_0000000000000000/revoke', { token: admin })).status).toBe(404);
  });

  it('closes only the offending connection on malformed JSON, unknown types and oversized frames', async () => {
    const steady = await connect(await enroll('steady'));
    const steadyId = steady.received[0].agentId as string;

    const malformed = await connect(await enroll('bad-json'));
    malformed.send('{"v":1,"type":');
    expect((await malformed.next('error')).code).toBe('USAGE');
    expect((await malformed.closed).code).toBe(1008);

    const unknownType = await connect(await enroll('bad-type'));
    unknownType.send({ v: 1, type: 'launch-missiles', id: 'x-1' });
    const error = await unknownType.next('error');
    expect(error.message).toContain('type');
    expect((await unknownType.closed).code).toBe(1008);

    const before = new TestAgent(cp);
    await before.opened;
    before.send('not json at all');
    expect((await before.next('error')).code).toBe('USAGE');
    expect((await before.closed).code).toBe(1008);

    const oversized = await connect(await enroll('big'));
    oversized.send(JSON.stringify({ v: 1, type: 'heartbeat', id: 'b-1', jobs: [], pad: 'x'.repeat(300 * 1024) }));
    expect((await oversized.closed).code).toBe(1009);

    clock.advance(1000);
    const beat = clock.now().toISOString();
    steady.send({ v: 1, type: 'heartbeat', id: 'b-2', jobs: [] });
    await vi.waitFor(async () => expect(await cp.catalog.getAgent(steadyId)).toMatchObject({ status: 'online', lastSeen: beat }));
    expect(steady.ws.readyState).toBe(WebSocket.OPEN);
    steady.ws.close();
    await steady.closed;
  });

  it('refuses more than 20 pending handshakes from one address', async () => {
    const pending = Array.from({ length: 20 }, () => new TestAgent(cp));
    await Promise.all(pending.map((p) => p.opened));
    const extra = new TestAgent(cp);
    await expect(extra.opened).rejects.toThrow('HTTP 503');
    for (const p of pending) p.ws.close();
    await Promise.all(pending.map((p) => p.closed));
    const agent = await connect(await enroll('after-flood'));
    agent.ws.close();
    await agent.closed;
  });

  it('closes a connection that sends no hello in time', async () => {
    const quick = await startControlPlane({ dataDir, port: 0, clock, log: () => {}, helloTimeoutMs: 200 });
    try {
      const silent = new TestAgent(quick);
      await silent.opened;
      expect((await silent.next('error')).message).toContain('no hello');
      expect((await silent.closed).code).toBe(1008);
    } finally {
      await quick.close();
    }
  });

  it('serves with the operator\'s certificate, key and CA when given', async () => {
    const own = join(dataDir, 'operator-pki');
    const made = await ensurePki(own, { hostnames: ['localhost'], ips: ['127.0.0.1'] });
    const given = await startControlPlane({
      dataDir,
      port: 0,
      clock,
      log: () => {},
      tls: { certFile: join(own, 'server.crt'), keyFile: join(own, 'server.key'), caFile: join(own, 'ca.crt') },
    });
    try {
      expect(given.caFingerprint).toBe(made.caFingerprint);
      expect(given.caFingerprint).not.toBe(cp.caFingerprint);
      expect((await call(given, 'GET', '/v1/agents', { token: admin })).status).toBe(200);
      await expect(call({ url: given.url, caCertPem: cp.caCertPem }, 'GET', '/v1/agents')).rejects.toThrow();
    } finally {
      await given.close();
    }
    const broken = startControlPlane({ dataDir, port: 0, clock, log: () => {}, tls: { certFile: join(own, 'server.crt'), keyFile: join(own, 'ca.key'), caFile: join(own, 'ca.crt') } });
    await expect(broken).rejects.toMatchObject({ code: 'USAGE' });
  });

  it('says so when its port is taken', async () => {
    const port = Number(new URL(cp.url).port);
    await expect(startControlPlane({ dataDir, port, clock, log: () => {} })).rejects.toMatchObject({
      code: 'USAGE',
      message: expect.stringContaining('another program uses that port'),
    });
  });

  it('keeps its CA and admin token across a restart', async () => {
    const fingerprint = cp.caFingerprint;
    await cp.close();
    cp = await startControlPlane({ dataDir, port: 0, clock, log: () => {} });
    expect(cp.caFingerprint).toBe(fingerprint);
    expect(cp.adminToken).toBeUndefined();
    const list = await call(cp, 'GET', '/v1/agents', { token: admin });
    expect(list.status).toBe(200);
    expect(list.body.agents.length).toBeGreaterThan(3);
  });
});
