import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';

import { ManualClock } from '../../shared/clock.js';
import { startControlPlane, type ControlPlane } from './server.js';
import { call, connect as connectAgent, enroll as enrollAgent, type EnrolledAgent, type TestAgent } from './test-client.js';

/** A backup as an agent reports it in job-result and catalog-sync. */
function summary(id: string, resource: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id,
    name: `autobk_${id}`,
    vault: 'primary',
    resource,
    kind: 'full',
    startedAt: `2026-01-0${1 + (Number(id.replace(/\D/g, '')) % 9)}T02:00:00.000Z`,
    finishedAt: '2026-01-10T03:00:00.000Z',
    bytesRead: 1000,
    bytesStored: 400,
    ...extra,
  };
}

describe('agents report, the API drives commands', () => {
  let dataDir: string;
  let cp: ControlPlane;
  let admin: string;
  const clock = new ManualClock(Date.parse('2026-02-01T12:00:00.000Z'));
  const clients: TestAgent[] = [];
  let db: EnrolledAgent;
  let web: EnrolledAgent;

  const api = (method: string, path: string, body?: unknown) => call(cp, method, path, { token: admin, body });
  async function connect(agent: EnrolledAgent): Promise<TestAgent> {
    const client = await connectAgent(cp, agent);
    clients.push(client);
    return client;
  }

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'cairn-cp-ops-'));
    cp = await startControlPlane({ dataDir, port: 0, clock, log: () => {} });
    admin = cp.adminToken!;
    db = await enrollAgent(cp, admin, 'db-host');
    web = await enrollAgent(cp, admin, 'web-host');
  });

  afterAll(async () => {
    for (const c of clients) c.ws.close();
    await cp?.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('stores what an agent protects, creating vaults it names', async () => {
    const agent = await connect(db);
    agent.message({ type: 'resources', resources: [{ name: 'db', vault: 'primary', disks: ['/dev/vg0/db'] }, { name: 'logs', vault: 'primary', disks: ['/srv/logs.img'] }] });
    await vi.waitFor(async () => expect((await api('GET', '/v1/resources')).body.resources).toHaveLength(2));
    expect((await api('GET', `/v1/resources?agent=${db.agentId}&vault=primary`)).body.resources).toEqual([
      { name: 'db', agentId: db.agentId, vault: 'primary', disks: ['/dev/vg0/db'] },
      { name: 'logs', agentId: db.agentId, vault: 'primary', disks: ['/srv/logs.img'] },
    ]);
    const vault = (await api('GET', '/v1/vaults')).body.vaults.find((v: any) => v.name === 'primary');
    expect(vault).toMatchObject({ type: 'server', location: '', resources: ['db', 'logs'] });

    // A later report replaces the earlier one.
    agent.message({ type: 'resources', resources: [{ name: 'db', vault: 'primary', disks: ['/dev/vg0/db', '/dev/vg0/wal'] }] });
    await vi.waitFor(async () => expect((await api('GET', '/v1/resources?vault=primary')).body.resources).toEqual([
      { name: 'db', agentId: db.agentId, vault: 'primary', disks: ['/dev/vg0/db', '/dev/vg0/wal'] },
    ]));
    agent.message({ type: 'resources', resources: [{ name: 'db', vault: 'primary', disks: ['/dev/vg0/db'] }, { name: 'logs', vault: 'primary', disks: ['/srv/logs.img'] }] });
    await vi.waitFor(async () => expect((await api('GET', '/v1/resources')).body.resources).toHaveLength(2));
  });

  it('stores a job-result before its ack, and a repeated one once', async () => {
    const agent = clients[0]!;
    const id = agent.message({
      type: 'job-result',
      jobId: 'job-1',
      commandId: null,
      status: 'ok',
      backup: summary('b1', 'db', { host: 'db-host', logicalBytes: 4000 }),
      error: null,
    });
    await agent.ack(id);
    // The ack came after the store: the backup is there at once.
    const stored = await api('GET', '/v1/backups/b1');
    expect(stored.status).toBe(200);
    expect(stored.body.backup).toMatchObject({
      id: 'b1',
      agentId: db.agentId,
      resource: 'db',
      consistency: 'crash_consistent',
      logicalBytes: 4000,
      host: 'db-host',
      status: 'available',
    });

    // The agent's outbox sends it again after a reconnect: acked again, stored once.
    agent.send({ v: 1, type: 'job-result', id, jobId: 'job-1', commandId: null, status: 'ok', backup: summary('b1', 'db', { host: 'db-host', logicalBytes: 4000 }), error: null });
    await vi.waitFor(() => expect(agent.all('ack').filter((m) => m.messageId === id)).toHaveLength(2));
    expect(await cp.catalog.listJobResults({ agentId: db.agentId })).toHaveLength(1);
    expect((await api('GET', '/v1/backups?resource=db')).body.backups.map((b: any) => b.id)).toEqual(['b1']);

    // A failed job without a backup is stored too.
    const failed = agent.message({ type: 'job-result', jobId: 'job-2', commandId: null, status: 'failed', backup: null, error: { code: 'SOURCE_UNREADABLE', message: 'cannot read /dev/vg0/db' } });
    await agent.ack(failed);
    expect((await cp.catalog.listJobResults({ agentId: db.agentId, status: 'failed' }))[0]).toMatchObject({ jobId: 'job-2', errorCode: 'SOURCE_UNREADABLE' });
  });

  it('acks a job-result the catalog refuses, keeping the job and completing its command with why', async () => {
    const agent = clients[0]!;
    await cp.catalog.addCommand({ commandId: 'cmd-refused', agentId: db.agentId, action: 'backup-now', args: { vault: 'primary', resource: 'logs', args: {} }, createdAt: clock.now().toISOString() });
    // Same backup id, another identity: the catalog refuses the backup, which no re-send can cure.
    const id = agent.message({ type: 'job-result', jobId: 'job-3', commandId: 'cmd-refused', status: 'ok', backup: summary('b1', 'logs'), error: null });
    await agent.ack(id);
    const error = await agent.next('error', (m) => m.inReplyTo === id);
    expect(error.code).toBe('ALREADY_EXISTS');
    expect(agent.ws.readyState).toBe(agent.ws.OPEN);
    expect((await api('GET', '/v1/backups/b1')).body.backup.resource).toBe('db');
    expect((await cp.catalog.listJobResults({ agentId: db.agentId })).find((r) => r.jobId === 'job-3')).toMatchObject({ status: 'ok', backupId: null });
    const command = (await api('GET', '/v1/commands/cmd-refused')).body.command;
    expect(command.completedAt).not.toBeNull();
    expect(command.result).toMatchObject({ status: 'ok', catalogError: { code: 'ALREADY_EXISTS' } });
    expect(command.result.catalogError.message).toContain('b1 could not be catalogued');
  });

  it('rebuilds a vault from catalog-sync parts, acking each, owners from the resources', async () => {
    const agent = clients[0]!;
    const first = agent.message({ type: 'catalog-sync', vault: 'primary', syncId: 's1', part: 0, last: false, backups: [summary('b2', 'db'), summary('b3', 'logs')] });
    await agent.ack(first);
    // Not complete yet: nothing replaced.
    expect((await api('GET', '/v1/backups/b2')).status).toBe(404);
    const second = agent.message({ type: 'catalog-sync', vault: 'primary', syncId: 's1', part: 1, last: true, backups: [summary('b4', 'gone-host-disk')] });
    await agent.ack(second);
    const listed = (await api('GET', '/v1/backups?vault=primary&status=available')).body.backups;
    expect(Object.fromEntries(listed.map((b: any) => [b.id, b.agentId]))).toEqual({ b2: db.agentId, b3: db.agentId, b4: null });
    // b1 was not in the scan: marked deleted.
    expect((await api('GET', '/v1/backups/b1')).body.backup.status).toBe('deleted');
    // A re-sent part is acked and changes nothing.
    agent.send({ v: 1, type: 'catalog-sync', id: second, vault: 'primary', syncId: 's1', part: 1, last: true, backups: [summary('b4', 'gone-host-disk')] });
    await vi.waitFor(() => expect(agent.all('ack').filter((m) => m.messageId === second)).toHaveLength(2));
    expect((await api('GET', '/v1/backups?vault=primary&status=available')).body.backups).toHaveLength(3);
  });

  it('sends commands queued while an agent was away right after welcome, in order, and new ones at once', async () => {
    const w = await connect(web);
    w.message({ type: 'resources', resources: [{ name: 'site', vault: 'primary', disks: ['/srv/site.img'] }] });
    await vi.waitFor(async () => expect((await api('GET', `/v1/resources?agent=${web.agentId}`)).body.resources).toHaveLength(1));
    w.ws.close();
    await w.closed;
    await vi.waitFor(async () => expect((await api('GET', `/v1/agents/${web.agentId}`)).body.agent.status).toBe('offline'));

    const checkpoint = await api('POST', '/v1/checkpoints', { vault: 'primary', resources: ['site'], full: true, name: 'before-upgrade' });
    expect(checkpoint.status).toBe(202);
    expect(checkpoint.body.checkpoint).toMatchObject({ vault: 'primary', commands: [{ agentId: web.agentId, action: 'backup-now', resource: 'site', status: 'pending' }] });
    const verify = await api('POST', '/v1/vaults/primary/verify', { readData: true });
    expect(verify.status).toBe(202);
    const verifyForWeb = verify.body.commands.find((c: any) => c.agentId === web.agentId);
    expect(verifyForWeb).toMatchObject({ action: 'verify', resource: 'site', args: { readData: true } });
    expect(verify.body.commands.map((c: any) => c.resource).sort()).toEqual(['db', 'logs', 'site']);

    const again = await connect(web);
    await vi.waitFor(() => expect(again.all('command')).toHaveLength(2));
    const [backupNow, verifyCmd] = again.all('command');
    expect(backupNow).toMatchObject({ commandId: checkpoint.body.checkpoint.commands[0].commandId, action: 'backup-now', vault: 'primary', resource: 'site', args: { full: true, name: 'before-upgrade' } });
    expect(verifyCmd).toMatchObject({ commandId: verifyForWeb.commandId, action: 'verify', resource: 'site', args: { readData: true } });
    const welcomeAt = again.received.findIndex((m) => m.type === 'welcome');
    expect(again.received.findIndex((m) => m.type === 'command')).toBeGreaterThan(welcomeAt);

    // Online: a restore goes out at once.
    const restore = await api('POST', '/v1/restores', { backupId: 'b3', target: '/restore/logs.img', agentId: web.agentId, disk: 0, force: true });
    expect(restore.status).toBe(202);
    const sent = await again.next('command', (m) => m.action === 'restore');
    expect(sent).toMatchObject({ commandId: restore.body.command.commandId, vault: 'primary', resource: 'logs', args: { backupId: 'b3', target: '/restore/logs.img', disk: 0, force: true } });
    expect(again.all('command')).toHaveLength(3);
  });

  it('shows a running command with its progress, and its result once the job-result is stored', async () => {
    const w = clients[clients.length - 1]!;
    const command = w.all('command').find((m) => m.action === 'backup-now');
    w.message({ type: 'job-progress', jobId: 'wj-1', commandId: command.commandId, kind: 'backup', resource: 'site', vault: 'primary', percent: 40, bytesDone: 400, bytesTotal: 1000, rateBytesPerSecond: 100 });
    await vi.waitFor(async () => expect((await api('GET', `/v1/commands/${command.commandId}`)).body.command.status).toBe('running'));
    const running = (await api('GET', `/v1/commands/${command.commandId}`)).body.command;
    expect(running.progress).toMatchObject({ percent: 40, bytesDone: 400, bytesTotal: 1000, rateBytesPerSecond: 100 });
    const jobs = (await api('GET', '/v1/jobs')).body.jobs;
    expect(jobs).toEqual([
      expect.objectContaining({ agentId: web.agentId, jobId: 'wj-1', commandId: command.commandId, kind: 'backup', resource: 'site', vault: 'primary', percent: 40 }),
    ]);

    // A heartbeat that no longer lists a job drops it; one that lists it keeps it.
    w.message({ type: 'heartbeat', jobs: [{ id: 'wj-1', kind: 'backup', resource: 'site', percent: 55 }, { id: 'wj-gc', kind: 'gc', resource: null, percent: null }] });
    await vi.waitFor(async () => expect((await api('GET', '/v1/jobs')).body.jobs.map((j: any) => [j.jobId, j.percent])).toEqual([['wj-1', 55], ['wj-gc', null]]));
    w.message({ type: 'heartbeat', jobs: [{ id: 'wj-1', kind: 'backup', resource: 'site', percent: 60 }] });
    await vi.waitFor(async () => expect((await api('GET', '/v1/jobs')).body.jobs.map((j: any) => j.jobId)).toEqual(['wj-1']));

    const result = w.message({ type: 'job-result', jobId: 'wj-1', commandId: command.commandId, status: 'ok', backup: summary('b7', 'site', { name: 'before-upgrade', consistency: 'app_consistent' }), error: null });
    await w.ack(result);
    const done = (await api('GET', `/v1/commands/${command.commandId}`)).body.command;
    expect(done).toMatchObject({ status: 'ok', progress: null, result: { status: 'ok', error: null, backup: { id: 'b7' } } });
    expect(done.completedAt).not.toBeNull();
    expect((await api('GET', '/v1/jobs')).body.jobs).toEqual([]);
    expect((await api('GET', '/v1/backups/b7')).body.backup).toMatchObject({ consistency: 'app_consistent', agentId: web.agentId });

    const pending = (await api('GET', `/v1/commands?agent=${web.agentId}&pending=true`)).body.commands;
    expect(pending.map((c: any) => c.action).sort()).toEqual(['restore', 'verify']);
    const completed = (await api('GET', `/v1/commands?agent=${web.agentId}&pending=false`)).body.commands;
    expect(completed.map((c: any) => c.commandId)).toEqual([command.commandId]);
  });

  it('deletes a backup through its owner and marks it deleted when the agent says ok', async () => {
    const agent = clients[0]!;
    const queued = await api('DELETE', '/v1/backups/b2');
    expect(queued.status).toBe(202);
    expect(queued.body.command).toMatchObject({ agentId: db.agentId, action: 'delete', vault: 'primary', resource: 'db', args: { backupId: 'b2' }, status: 'pending' });
    const command = await agent.next('command', (m) => m.commandId === queued.body.command.commandId);
    expect(command.args).toEqual({ backupId: 'b2' });
    const id = agent.message({ type: 'job-result', jobId: 'del-1', commandId: command.commandId, status: 'ok', backup: null, error: null });
    await agent.ack(id);
    expect((await api('GET', '/v1/backups/b2')).body.backup.status).toBe('deleted');
    expect((await api('DELETE', '/v1/backups/b2')).status).toBe(409);

    // A rescan goes to the connected agent holding the vault.
    const rescan = await api('POST', '/v1/vaults/primary/rescan');
    expect(rescan.status).toBe(202);
    expect(rescan.body.command).toMatchObject({ action: 'catalog-sync', vault: 'primary', resource: null, args: {} });
    expect([db.agentId, web.agentId]).toContain(rescan.body.command.agentId);
  });

  it('summarises agents, the last 24 hours of jobs and vault usage', async () => {
    const dashboard = (await api('GET', '/v1/dashboard')).body;
    expect(dashboard.agents).toEqual({ total: 2, online: 2, offline: 0, revoked: 0 });
    // job-1, job-3 (its backup refused, the job kept), wj-1, del-1.
    expect(dashboard.jobs24h).toEqual({ ok: 4, failed: 1, cancelled: 0 });
    const primary = dashboard.vaults.find((v: any) => v.name === 'primary');
    const available = (await api('GET', '/v1/backups?vault=primary&status=available')).body.backups;
    const used = available.reduce((n: number, b: any) => n + b.bytesStored, 0);
    const logical = available.reduce((n: number, b: any) => n + (b.logicalBytes ?? 0), 0);
    expect(primary).toMatchObject({ type: 'server', usedBytes: used, logicalBytes: logical, backupCount: available.length, dedupRatio: logical / used });
    expect(dashboard.generatedAt).toBe(clock.now().toISOString());

    clock.advance(25 * 3600_000);
    expect((await api('GET', '/v1/dashboard')).body.jobs24h).toEqual({ ok: 0, failed: 0, cancelled: 0 });
  });

  it('pages and filters backups and commands', async () => {
    const all = (await api('GET', '/v1/backups')).body.backups;
    expect(all.length).toBeGreaterThanOrEqual(5);
    const page1 = (await api('GET', '/v1/backups?limit=2')).body.backups;
    const page2 = (await api('GET', '/v1/backups?limit=2&offset=2')).body.backups;
    expect([...page1, ...page2].map((b: any) => b.id)).toEqual(all.slice(0, 4).map((b: any) => b.id));
    const recent = (await api('GET', `/v1/backups?from=${encodeURIComponent('2026-01-05T00:00:00Z')}&kind=full`)).body.backups;
    expect(recent.every((b: any) => b.startedAt >= '2026-01-05')).toBe(true);
    expect((await api('GET', `/v1/backups?agent=${web.agentId}`)).body.backups.map((b: any) => b.id)).toEqual(['b7']);
    expect((await api('GET', '/v1/commands?limit=1')).body.commands).toHaveLength(1);
  });

  it('answers bad input with 400 naming the field or parameter, 404, 409 and 401', async () => {
    const commandsBefore = (await api('GET', '/v1/commands?limit=1000')).body.commands.length;
    for (const [path, name] of [
      ['/v1/backups?limit=5000', 'limit'],
      ['/v1/backups?limit=-1', 'limit'],
      ['/v1/backups?offset=x', 'offset'],
      ['/v1/backups?kind=differential', 'kind'],
      ['/v1/backups?status=gone', 'status'],
      ['/v1/backups?from=yesterday', 'from'],
      ['/v1/backups?to=2026-13-45', 'to'],
      ['/v1/backups?colour=blue', 'colour'],
      ['/v1/commands?pending=maybe', 'pending'],
      ['/v1/resources?vault=', 'vault'],
    ] as const) {
      const reply = await api('GET', path);
      expect(reply.status, path).toBe(400);
      expect(reply.body.error.code).toBe('USAGE');
      expect(reply.body.error.message, path).toContain(name);
    }
    for (const [path, body, name] of [
      ['/v1/checkpoints', {}, 'vault'],
      ['/v1/checkpoints', { vault: 'primary', resources: 'db' }, 'resources'],
      ['/v1/checkpoints', { vault: 'primary', full: 'yes' }, 'full'],
      ['/v1/checkpoints', { vault: 'primary', name: 'x\u0007' }, 'name'],
      ['/v1/checkpoints', { vault: 'primary', when: 'now' }, 'when'],
      ['/v1/restores', { backupId: 'b3' }, 'target'],
      ['/v1/restores', { backupId: 'b3', target: 'x'.repeat(5000) }, 'target'],
      ['/v1/restores', { backupId: 'b3', target: '/r', disk: -1 }, 'disk'],
      ['/v1/restores', { target: '/r' }, 'backupId'],
      ['/v1/vaults/primary/verify', { readData: 1 }, 'readData'],
    ] as const) {
      const reply = await api('POST', path, body);
      expect(reply.status, JSON.stringify(body)).toBe(400);
      expect(reply.body.error.message, JSON.stringify(body)).toMatch(new RegExp(`^${name}\\b|\\b${name}\\b`));
    }
    await api('PUT', '/v1/vaults/empty', { type: 'disk', location: '/srv/empty', capacityBytes: null });
    const noResources = await api('POST', '/v1/checkpoints', { vault: 'empty' });
    expect(noResources.status).toBe(400);
    expect(noResources.body.error.message).toContain('no resources');

    for (const [method, path, body] of [
      ['GET', '/v1/agents/agt_0000000000000000', undefined],
      ['GET', '/v1/backups/nope', undefined],
      ['DELETE', '/v1/backups/nope', undefined],
      ['GET', '/v1/commands/nope', undefined],
      ['POST', '/v1/checkpoints', { vault: 'nope' }],
      ['POST', '/v1/checkpoints', { vault: 'primary', resources: ['nope'] }],
      ['POST', '/v1/restores', { backupId: 'nope', target: '/r' }],
      ['POST', '/v1/restores', { backupId: 'b3', target: '/r', agentId: 'agt_0000000000000000' }],
      ['POST', '/v1/vaults/nope/verify', {}],
      ['POST', '/v1/vaults/nope/rescan', undefined],
    ] as const) {
      const reply = await api(method, path, body);
      expect(reply.status, `${method} ${path} ${JSON.stringify(body)}`).toBe(404);
      expect(reply.body.error.code).toBe('NOT_FOUND');
    }

    // An agent in no way holding the vault cannot restore from it; a revoked owner gets no commands.
    const stranger = await enrollAgent(cp, admin, 'stranger');
    const foreign = await api('POST', '/v1/restores', { backupId: 'b3', target: '/r', agentId: stranger.agentId });
    expect(foreign.status).toBe(409);
    expect(foreign.body.error.code).toBe('CONFLICT');
    expect((await api('POST', `/v1/agents/${web.agentId}/revoke`)).status).toBe(200);
    const toRevoked = await api('DELETE', '/v1/backups/b7');
    expect(toRevoked.status).toBe(409);
    expect(toRevoked.body.error.message).toContain('revoked');
    expect((await api('POST', '/v1/checkpoints', { vault: 'primary', resources: ['site'] })).status).toBe(409);
    expect((await api('GET', '/v1/dashboard')).body.agents).toMatchObject({ total: 3, revoked: 1 });

    for (const [method, path] of [
      ['GET', '/v1/dashboard'],
      ['GET', `/v1/agents/${db.agentId}`],
      ['GET', '/v1/resources'],
      ['GET', '/v1/backups'],
      ['GET', '/v1/backups/b3'],
      ['DELETE', '/v1/backups/b3'],
      ['POST', '/v1/checkpoints'],
      ['POST', '/v1/restores'],
      ['POST', '/v1/vaults/primary/verify'],
      ['POST', '/v1/vaults/primary/rescan'],
      ['GET', '/v1/commands'],
      ['GET', '/v1/commands/x'],
      ['GET', '/v1/jobs'],
    ] as const) {
      const reply = await call(cp, method, path, { body: method === 'POST' ? { vault: 'primary' } : undefined });
      expect(reply.status, `${method} ${path}`).toBe(401);
    }
    // Nothing was queued by the refused calls.
    expect((await api('GET', '/v1/commands?limit=1000')).body.commands).toHaveLength(commandsBefore);
  });
});

describe('changes another instance makes in a shared catalog', () => {
  it('reach the agents connected here through catalog.watch', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'cairn-cp-watch-'));
    const cp = await startControlPlane({ dataDir, port: 0, log: () => {} });
    try {
      const admin = cp.adminToken!;
      const agent = await enrollAgent(cp, admin, 'watched');
      const client = await connectAgent(cp, agent);
      client.message({ type: 'resources', resources: [{ name: 'disk', vault: 'shared', disks: ['/dev/sdb'] }] });
      await vi.waitFor(async () => expect(await cp.catalog.listResources()).toHaveLength(1));
      // Written to the catalog directly, as another instance would: no REST call here tells the link.
      await cp.catalog.addCommand({
        commandId: 'cmd-elsewhere',
        agentId: agent.agentId,
        action: 'backup-now',
        args: { vault: 'shared', resource: 'disk', args: { full: false, name: null } },
        createdAt: new Date().toISOString(),
      });
      expect(await client.next('command')).toMatchObject({ commandId: 'cmd-elsewhere', action: 'backup-now', vault: 'shared', resource: 'disk', args: { full: false, name: null } });
      const version = await cp.catalog.createPolicy({ name: 'p', enabled: true, trigger: { cron: '0 1 * * *', timezone: 'UTC' }, retention: {}, vaults: ['shared'] });
      expect((await client.push(version)).policies.map((p: any) => p.name)).toEqual(['p']);
      client.ws.close();
      await client.closed;
    } finally {
      await cp.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
