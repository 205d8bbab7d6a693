import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';

import { startControlPlane, type ControlPlane } from './server.js';
import { call, connect as connectAgent, enroll as enrollAgent, type TestAgent } from './test-client.js';

const daily = { patterns: ['FREQ=DAILY;INTERVAL=1;BYHOUR=2;BYMINUTE=00'], timezone: 'UTC' };

describe('policies through the REST API, pushed to agents', () => {
  let dataDir: string;
  let cp: ControlPlane;
  let admin: string;
  const agents: TestAgent[] = [];

  const enroll = (hostname: string) => enrollAgent(cp, admin, hostname);

  async function connect(agent: { agentId: string; credential: string }, policyVersion: number | null): Promise<TestAgent> {
    const client = await connectAgent(cp, agent, policyVersion);
    agents.push(client);
    return client;
  }

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'cairn-cp-policy-'));
    cp = await startControlPlane({ dataDir, port: 0, log: () => {} });
    admin = cp.adminToken!;
  });

  afterAll(async () => {
    for (const agent of agents) agent.ws.close();
    await cp?.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('pushes each change to connected agents, records their acks, and catches up a late agent at hello', async () => {
    const [a, b, late] = [await enroll('pa'), await enroll('pb'), await enroll('pc')];
    const first = await connect(a, null);
    const second = await connect(b, null);
    // Version 0: nothing to push yet.
    expect(first.pushes()).toEqual([]);

    const vault = await call(cp, 'PUT', '/v1/vaults/primary', { token: admin, body: { type: 'disk', location: '/srv/vaults/primary', capacityBytes: null } });
    expect(vault.status).toBe(201);
    expect(vault.body.vault).toMatchObject({ name: 'primary', type: 'disk', policies: [] });

    const created = await call(cp, 'POST', '/v1/policies', {
      token: admin,
      body: { name: 'nightly', enabled: true, vaults: ['primary'], trigger: daily, retention: { max_backups: 7 } },
    });
    expect(created.status).toBe(201);
    const version = created.body.policyVersion as number;
    expect(version).toBeGreaterThanOrEqual(1);
    const policy = { name: 'nightly', enabled: true, vaults: ['primary'], trigger: daily, retention: { max_backups: 7 } };
    expect(created.body.policy).toEqual(policy);

    for (const agent of [first, second]) {
      const push = await agent.push(version);
      expect(push.policies).toEqual([policy]);
      agent.send({ v: 1, type: 'policy-ack', id: 'pa-1', version, error: null });
    }
    await vi.waitFor(async () => {
      const listed = await call(cp, 'GET', '/v1/agents', { token: admin });
      const acked = Object.fromEntries(listed.body.agents.map((x: any) => [x.agentId, x.policyVersionAcked]));
      expect(acked).toMatchObject({ [a.agentId]: version, [b.agentId]: version, [late.agentId]: 0 });
      expect(listed.body.agents[0]).not.toHaveProperty('policyAck');
    });

    // The agent that was offline gets the latest version right after welcome.
    const third = await connect(late, null);
    expect((await third.push(version)).policies).toEqual([policy]);
    // One that already runs it gets nothing.
    const current = await connect(b, version);
    await new Promise((r) => setTimeout(r, 100));
    expect(current.pushes()).toEqual([]);

    // A partial update bumps the version and is pushed to everyone connected, disabled policies included.
    const updated = await call(cp, 'PUT', '/v1/policies/nightly', { token: admin, body: { enabled: false } });
    expect(updated.status).toBe(200);
    expect(updated.body.policyVersion).toBe(version + 1);
    expect(updated.body.policy).toEqual({ ...policy, enabled: false });
    for (const agent of [first, third, current]) {
      expect((await agent.push(version + 1)).policies).toEqual([{ ...policy, enabled: false }]);
    }
    // `second` was replaced by `current` (same agent): closed, not pushed to.
    expect((await second.closed).code).toBe(1000);
    expect(second.pushes().map((m) => m.version)).toEqual([version]);

    // Bind, unbind and delete are changes too; reads show what was stored.
    await call(cp, 'PUT', '/v1/vaults/offsite', { token: admin, body: { type: 'disk', location: 's3://bucket/cairn', capacityBytes: 1 << 30 } });
    const bound = await call(cp, 'POST', '/v1/policies/nightly/bind', { token: admin, body: { vault: 'offsite' } });
    expect(bound.body.policy.vaults).toEqual(['offsite', 'primary']);
    expect((await first.push(version + 2)).policies[0].vaults).toEqual(['offsite', 'primary']);
    const unbound = await call(cp, 'POST', '/v1/policies/nightly/unbind', { token: admin, body: { vault: 'offsite' } });
    expect(unbound.body.policyVersion).toBe(version + 3);
    const vaults = await call(cp, 'GET', '/v1/vaults', { token: admin });
    expect(vaults.body.vaults.map((v: any) => [v.name, v.policies])).toEqual([
      ['offsite', []],
      ['primary', ['nightly']],
    ]);
    expect((await call(cp, 'GET', '/v1/policies/nightly', { token: admin })).body.policy.vaults).toEqual(['primary']);
    const listed = await call(cp, 'GET', '/v1/policies', { token: admin });
    expect(listed.body).toMatchObject({ policyVersion: version + 3, policies: [{ name: 'nightly' }] });
    const deleted = await call(cp, 'DELETE', '/v1/policies/nightly', { token: admin });
    expect(deleted.body.policyVersion).toBe(version + 4);
    expect((await third.push(version + 4)).policies).toEqual([]);
  });

  it('ends a burst of concurrent changes with every agent sent the last version, in growing order', async () => {
    const agent = await connect(await enroll('burst'), null);
    const before = (await call(cp, 'GET', '/v1/policies', { token: admin })).body.policyVersion as number;
    const replies = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        call(cp, 'POST', '/v1/policies', {
          token: admin,
          body: { name: `burst-${i}`, enabled: true, vaults: ['primary'], trigger: daily, retention: {} },
        }),
      ),
    );
    expect(replies.map((r) => r.status)).toEqual(Array(8).fill(201));
    const last = before + 8;
    const push = await agent.push(last);
    expect(push.policies.map((p: any) => p.name).sort()).toEqual(Array.from({ length: 8 }, (_, i) => `burst-${i}`));
    const versions = agent.pushes().map((m) => m.version);
    expect(versions).toEqual([...versions].sort((x, y) => x - y));
    expect(new Set(versions).size).toBe(versions.length);
  });

  it('answers bad input with 400 naming the field, 404, 409 and 401', async () => {
    const base = { name: 'weekly', enabled: true, trigger: { cron: '0 3 * * 0', timezone: 'Europe/Berlin' }, retention: {} };
    const badPattern = await call(cp, 'POST', '/v1/policies', { token: admin, body: { ...base, trigger: { patterns: [''], timezone: 'UTC' } } });
    expect(badPattern.status).toBe(400);
    expect(badPattern.body.error.code).toBe('USAGE');
    expect(badPattern.body.error.message).toMatch(/^trigger\.patterns\[0\] /);
    const badRetention = await call(cp, 'POST', '/v1/policies', { token: admin, body: { ...base, retention: { max_backups: 100_000 } } });
    expect(badRetention.body.error.message).toMatch(/^retention\.max_backups /);
    const noTrigger = await call(cp, 'POST', '/v1/policies', { token: admin, body: { ...base, trigger: { timezone: 'UTC' } } });
    expect(noTrigger.body.error.message).toMatch(/^trigger needs 'patterns' or 'cron'/);
    const unknownField = await call(cp, 'POST', '/v1/policies', { token: admin, body: { ...base, schedule: 'daily' } });
    expect(unknownField.body.error.message).toMatch(/^schedule is not a known field/);

    expect((await call(cp, 'POST', '/v1/policies', { token: admin, body: base })).status).toBe(201);
    const duplicate = await call(cp, 'POST', '/v1/policies', { token: admin, body: base });
    expect(duplicate.status).toBe(409);
    expect(duplicate.body.error.code).toBe('ALREADY_EXISTS');
    const badUpdate = await call(cp, 'PUT', '/v1/policies/weekly', { token: admin, body: { trigger: { patterns: ['x'.repeat(300)], timezone: 'UTC' } } });
    expect(badUpdate.status).toBe(400);
    expect(badUpdate.body.error.message).toMatch(/^trigger\.patterns\[0\] /);

    for (const [method, path, body] of [
      ['GET', '/v1/policies/nothing', undefined],
      ['PUT', '/v1/policies/nothing', { enabled: false }],
      ['DELETE', '/v1/policies/nothing', undefined],
      ['POST', '/v1/policies/nothing/bind', { vault: 'primary' }],
      ['POST', '/v1/policies/weekly/bind', { vault: 'no-such-vault' }],
    ] as const) {
      const reply = await call(cp, method, path, { token: admin, body });
      expect(reply.status, `${method} ${path}`).toBe(404);
      expect(reply.body.error.code).toBe('NOT_FOUND');
    }
    const badVault = await call(cp, 'PUT', '/v1/vaults/v1', { token: admin, body: { type: 'tape', location: '/x', capacityBytes: null } });
    expect(badVault.status).toBe(400);
    expect(badVault.body.error.message).toContain('type');

    for (const [method, path] of [
      ['GET', '/v1/policies'],
      ['POST', '/v1/policies'],
      ['PUT', '/v1/policies/weekly'],
      ['DELETE', '/v1/policies/weekly'],
      ['GET', '/v1/vaults'],
      ['PUT', '/v1/vaults/v1'],
    ] as const) {
      const reply = await call(cp, method, path, { body: method === 'GET' || method === 'DELETE' ? undefined : base });
      expect(reply.status, `${method} ${path}`).toBe(401);
    }
    expect((await call(cp, 'GET', '/v1/policies/weekly', { token: admin })).body.policy.enabled).toBe(true);
  });
});
