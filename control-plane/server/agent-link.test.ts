import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';

import { ManualClock } from '../../shared/clock.js';
import { CairnError } from '../../shared/errors.js';
import type { AgentRecord } from '../catalog/catalog.js';
import { SqliteCatalog } from '../catalog/sqlite-catalog.js';
import { startControlPlane, type ControlPlane } from './server.js';
import { call, connect as connectAgent, enroll as enrollAgent, hello, TestAgent, type EnrolledAgent } from './test-client.js';

/** A backup as an agent reports it in job-result and catalog-sync. */
function summary(id: string, vault: string, resource: string): Record<string, unknown> {
  return {
    id,
    name: `autobk_${id}`,
    vault,
    resource,
    kind: 'full',
    startedAt: '2026-01-02T02:00:00.000Z',
    finishedAt: '2026-01-02T03:00:00.000Z',
    bytesRead: 1000,
    bytesStored: 400,
  };
}

/**
 * The agent link's defences and recoveries: what an agent may change in the catalog (only what it
 * protects), revocation reaching connections on any instance, store failures, closes during hello,
 * lost notices and policy versions from another catalog.
 */
describe('the agent link', () => {
  let dataDir: string;
  let cp: ControlPlane;
  let admin: string;
  const clock = new ManualClock(Date.parse('2026-02-01T12:00:00.000Z'));
  const logs: string[] = [];
  const clients: TestAgent[] = [];
  let alpha: EnrolledAgent;
  let beta: EnrolledAgent;

  const api = (method: string, path: string, body?: unknown) => call(cp, method, path, { token: admin, body });
  async function connect(agent: EnrolledAgent, policyVersion: number | null = null): Promise<TestAgent> {
    const client = await connectAgent(cp, agent, policyVersion);
    clients.push(client);
    return client;
  }
  async function resources(client: TestAgent, list: { name: string; vault: string }[]): Promise<void> {
    client.message({ type: 'resources', resources: list.map((r) => ({ ...r, disks: ['/dev/sda'] })) });
    // Handled in order: the ack of a job-result sent after it proves the report is stored.
    const probe = client.message({ type: 'job-result', jobId: `probe-${Math.random()}`, commandId: null, status: 'ok', backup: null, error: null });
    await client.ack(probe);
  }

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'cairn-cp-link-'));
    cp = await startControlPlane({ dataDir, port: 0, clock, log: (level, message) => logs.push(`${level} ${message}`) });
    admin = cp.adminToken!;
    alpha = await enrollAgent(cp, admin, 'alpha-host');
    beta = await enrollAgent(cp, admin, 'beta-host');
    const a = await connect(alpha);
    await resources(a, [{ name: 'alpha-db', vault: 'alpha-vault' }]);
    const made = a.message({ type: 'job-result', jobId: 'a-1', commandId: null, status: 'ok', backup: summary('ab-1', 'alpha-vault', 'alpha-db'), error: null });
    await a.ack(made);
  });

  afterEach(() => {
    vi.restoreAllMocks();
  });

  afterAll(async () => {
    for (const c of clients) c.ws.close();
    await cp?.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  it("acks but ignores a catalog-sync of a vault in which the agent holds no resource, so it cannot mark another's backups deleted", async () => {
    const b = await connect(beta);
    await resources(b, [{ name: 'beta-web', vault: 'beta-vault' }]);
    const part = b.message({ type: 'catalog-sync', vault: 'alpha-vault', syncId: 'evil-1', part: 0, last: true, backups: [] });
    await b.ack(part);
    expect((await cp.catalog.getBackup('ab-1'))?.status).toBe('available');
    expect(logs.some((l) => l.startsWith('warn') && l.includes('evil-1') && l.includes(beta.agentId))).toBe(true);
    // Its own vault it may sync.
    const own = b.message({ type: 'catalog-sync', vault: 'beta-vault', syncId: 'own-1', part: 0, last: true, backups: [summary('bb-1', 'beta-vault', 'beta-web')] });
    await b.ack(own);
    expect((await cp.catalog.getBackup('bb-1'))?.status).toBe('available');
  });

  it("keeps a resource with its first unrevoked owner when another agent reports it, and logs both", async () => {
    const b = clients[clients.length - 1]!;
    await resources(b, [{ name: 'beta-web', vault: 'beta-vault' }, { name: 'alpha-db', vault: 'alpha-vault' }]);
    expect((await cp.catalog.listResources()).map((r) => [r.name, r.agentId])).toEqual([
      ['alpha-db', alpha.agentId],
      ['beta-web', beta.agentId],
    ]);
    expect(logs.some((l) => l.startsWith('warn') && l.includes('alpha-db') && l.includes(alpha.agentId) && l.includes(beta.agentId))).toBe(true);
    // So a delete aimed at alpha's backup goes to alpha, not beta.
    const queued = await api('DELETE', '/v1/backups/ab-1');
    expect(queued.body.command.agentId).toBe(alpha.agentId);
  });

  it("does not mark deleted a backup that is neither the agent's own nor of a resource it holds, when its delete says ok", async () => {
    const b = clients[clients.length - 1]!;
    await cp.catalog.addCommand({
      commandId: 'cmd-beta-delete',
      agentId: beta.agentId,
      action: 'delete',
      args: { vault: 'alpha-vault', resource: 'alpha-db', args: { backupId: 'ab-1' } },
      createdAt: clock.now().toISOString(),
    });
    const result = b.message({ type: 'job-result', jobId: 'b-del', commandId: 'cmd-beta-delete', status: 'ok', backup: null, error: null });
    await b.ack(result);
    expect((await cp.catalog.getCommand('cmd-beta-delete'))?.completedAt).not.toBeNull();
    expect((await cp.catalog.getBackup('ab-1'))?.status).toBe('available');
    // Its own backup it may delete.
    await cp.catalog.addCommand({
      commandId: 'cmd-beta-delete-own',
      agentId: beta.agentId,
      action: 'delete',
      args: { vault: 'beta-vault', resource: 'beta-web', args: { backupId: 'bb-1' } },
      createdAt: clock.now().toISOString(),
    });
    const own = b.message({ type: 'job-result', jobId: 'b-del-own', commandId: 'cmd-beta-delete-own', status: 'ok', backup: null, error: null });
    await b.ack(own);
    expect((await cp.catalog.getBackup('bb-1'))?.status).toBe('deleted');
  });

  it('does not undo a deletion when a job-result of the backup arrives late', async () => {
    const b = clients[clients.length - 1]!;
    const late = b.message({ type: 'job-result', jobId: 'b-late', commandId: null, status: 'ok', backup: summary('bb-1', 'beta-vault', 'beta-web'), error: null });
    await b.ack(late);
    expect((await cp.catalog.getBackup('bb-1'))?.status).toBe('deleted');
  });

  it('closes with 1013 and does not ack when the catalog fails for now, so the agent reconnects and sends again', async () => {
    const b = await connect(beta);
    vi.spyOn(cp.catalog, 'recordJobResult').mockRejectedValueOnce(new CairnError('BUSY', 'catalog: the database stayed locked', { retryable: true }));
    const id = b.message({ type: 'job-result', jobId: 'b-busy', commandId: null, status: 'ok', backup: null, error: null });
    expect((await b.closed).code).toBe(1013);
    expect(b.all('ack').map((m) => m.messageId)).not.toContain(id);
    const again = await connect(beta);
    again.message({ id, type: 'job-result', jobId: 'b-busy', commandId: null, status: 'ok', backup: null, error: null });
    await again.ack(id);
    expect((await cp.catalog.listJobResults({ agentId: beta.agentId })).map((r) => r.jobId)).toContain('b-busy');
  });

  it("closes a connection at its next heartbeat once the agent is revoked in the catalog (as another instance would)", async () => {
    const gamma = await enrollAgent(cp, admin, 'gamma-host');
    const g = await connect(gamma);
    g.message({ type: 'heartbeat', jobs: [] });
    await new Promise((r) => setTimeout(r, 50));
    expect(g.ws.readyState).toBe(g.ws.OPEN);
    // Straight into the catalog: this instance's revoke route (which closes at once) is not involved.
    await cp.catalog.revokeAgent(gamma.agentId, clock.now().toISOString());
    g.message({ type: 'heartbeat', jobs: [] });
    expect((await g.closed).code).toBe(1008);
    expect((await g.next('error')).code).toBe('PERMISSION_DENIED');
  });

  it('refuses a hello when the agent is revoked between reading its record and registering its connection', async () => {
    const delta = await enrollAgent(cp, admin, 'delta-host');
    const getAgent = cp.catalog.getAgent.bind(cp.catalog);
    vi.spyOn(cp.catalog, 'getAgent').mockImplementationOnce(async (id: string): Promise<AgentRecord | undefined> => {
      const before = await getAgent(id);
      await cp.catalog.revokeAgent(id, clock.now().toISOString());
      return before;
    });
    const d = new TestAgent(cp);
    clients.push(d);
    await d.opened;
    d.send(hello(delta.agentId, delta.credential));
    expect((await d.closed).code).toBe(1008);
    expect(d.all('welcome')).toEqual([]);
    expect((await cp.catalog.getAgent(delta.agentId))?.status).toBe('offline');
  });

  it('leaves no live connection behind when the socket closes during the hello', async () => {
    const epsilon = await enrollAgent(cp, admin, 'epsilon-host');
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const touch = cp.catalog.touchAgent.bind(cp.catalog);
    let entered!: () => void;
    const inHello = new Promise<void>((resolve) => (entered = resolve));
    vi.spyOn(cp.catalog, 'touchAgent').mockImplementationOnce(async (...args) => {
      entered();
      await gate;
      return touch(...args);
    });
    const e = new TestAgent(cp);
    clients.push(e);
    await e.opened;
    e.send(hello(epsilon.agentId, epsilon.credential));
    await inHello;
    e.ws.close();
    await e.closed;
    await new Promise((r) => setTimeout(r, 50));
    release();
    await vi.waitFor(async () => expect((await cp.catalog.getAgent(epsilon.agentId))?.status).toBe('offline'));
    await new Promise((r) => setTimeout(r, 50));
    expect((await cp.catalog.getAgent(epsilon.agentId))?.status).toBe('offline');
    expect(e.all('welcome')).toEqual([]);
  });

  it('sends at a heartbeat the commands whose notice it never heard (queued by another instance)', async () => {
    const zeta = await enrollAgent(cp, admin, 'zeta-host');
    const z = await connect(zeta);
    // Another catalog object on the same file: its notices do not reach this instance's watch.
    const other = new SqliteCatalog(join(dataDir, 'catalog.sqlite'));
    try {
      await other.addCommand({
        commandId: 'cmd-unheard',
        agentId: zeta.agentId,
        action: 'catalog-sync',
        args: { vault: 'zeta-vault', resource: null, args: {} },
        createdAt: clock.now().toISOString(),
      });
    } finally {
      await other.close();
    }
    await new Promise((r) => setTimeout(r, 100));
    expect(z.all('command')).toEqual([]);
    z.message({ type: 'heartbeat', jobs: [] });
    expect(await z.next('command')).toMatchObject({ commandId: 'cmd-unheard', action: 'catalog-sync' });
    // Once per connection: the next heartbeat does not send it again.
    z.message({ type: 'heartbeat', jobs: [] });
    const probe = z.message({ type: 'job-result', jobId: 'z-probe', commandId: null, status: 'ok', backup: null, error: null });
    await z.ack(probe);
    expect(z.all('command')).toHaveLength(1);
  });

  it("pushes this catalog's policies to an agent that runs a higher version than this catalog has", async () => {
    await api('PUT', '/v1/vaults/pol-vault', { type: 'server', location: '/srv/pol', capacityBytes: null });
    const made = await api('POST', '/v1/policies', {
      name: 'nightly',
      enabled: true,
      trigger: { cron: '0 2 * * *', timezone: 'UTC' },
      retention: { max_backups: 7 },
      vaults: ['pol-vault'],
    });
    expect(made.status).toBe(201);
    const version = made.body.policyVersion as number;
    const eta = await enrollAgent(cp, admin, 'eta-host');
    // Its stored version 57 came from another control plane's catalog.
    const h = await connect(eta, version + 57);
    const push = await h.push(version);
    expect(push.policies.map((p: any) => p.name)).toEqual(['nightly']);
    // An agent that runs the current version gets nothing.
    const theta = await enrollAgent(cp, admin, 'theta-host');
    const t = await connect(theta, version);
    await new Promise((r) => setTimeout(r, 100));
    expect(t.pushes()).toEqual([]);
  });
});
