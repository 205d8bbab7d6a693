import Database from 'better-sqlite3';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { StateStore } from './state-store.js';

describe('StateStore', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cairn-state-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('migrates a database from before migrations were counted, keeping its rows', () => {
    const path = join(dir, 'agent.sqlite');
    const old = new Database(path);
    old.exec(`CREATE TABLE agent_marks (policy TEXT NOT NULL, resource TEXT NOT NULL, last_fire TEXT NOT NULL, PRIMARY KEY (policy, resource));
      INSERT INTO agent_marks VALUES ('nightly', 'web', '2025-01-01T02:00:00.000Z');`);
    old.close();
    const store = new StateStore(path);
    expect(store.lastFire('nightly', 'web')?.toISOString()).toBe('2025-01-01T02:00:00.000Z');
    expect(store.outbox()).toEqual([]);
    store.close();
    const again = new StateStore(path);
    expect(again.pushedPolicySet()).toBeUndefined();
    again.close();
    const raw = new Database(path);
    expect(raw.pragma('user_version', { simple: true })).toBe(3);
    raw.close();
  });

  it('keeps the outbox in order until acked, and a command with its result', () => {
    const store = new StateStore(join(dir, 'agent.sqlite'));
    expect(store.beginCommand('cmd-1', 'backup-now', 'job-1', new Date())).toBe(true);
    expect(store.beginCommand('cmd-1', 'backup-now', 'job-2', new Date()), 'a command id is taken once').toBe(false);
    expect(store.unfinishedCommands().map((c) => c.commandId)).toEqual(['cmd-1']);
    store.enqueueJobResult('ob-1', '{"r":1}', 'cmd-1');
    store.enqueueCatalogSync('main', [{ messageId: 'ob-2', body: 'p0' }, { messageId: 'ob-3', body: 'p1' }]);
    store.enqueueJobResult('ob-4', '{"r":2}', null);
    expect(store.outbox().map((e) => e.messageId)).toEqual(['ob-1', 'ob-2', 'ob-3', 'ob-4']);
    expect(store.command('cmd-1')).toMatchObject({ jobId: 'job-1', resultMessageId: 'ob-1', result: '{"r":1}' });
    expect(store.unfinishedCommands()).toEqual([]);

    // A newer sync of the vault replaces the waiting parts; other messages stay.
    store.enqueueCatalogSync('main', [{ messageId: 'ob-5', body: 'q0' }]);
    expect(store.outbox().map((e) => e.messageId)).toEqual(['ob-1', 'ob-4', 'ob-5']);
    const after = store.outbox()[0]!.seq;
    expect(store.outbox(after).map((e) => e.messageId)).toEqual(['ob-4', 'ob-5']);

    expect(store.ackOutbox('ob-1')).toBe(true);
    expect(store.ackOutbox('ob-1')).toBe(false);
    // The stored result of an acked command can be queued again under its first id.
    store.enqueueJobResult('ob-1', '{"r":1}', null);
    expect(store.outbox().map((e) => e.messageId)).toEqual(['ob-4', 'ob-5', 'ob-1']);
    store.close();
  });

  it('empties the control-plane tables when bound to another enrollment, and adopts them the first time', () => {
    const store = new StateStore(join(dir, 'agent.sqlite'));
    store.savePushedPolicySet(57, '[1]', new Date());
    store.beginCommand('cmd-1', 'backup-now', 'job-1', new Date());
    store.enqueueJobResult('ob-1', '{"r":1}', null);
    // First binding (a database from before migration 3): what is stored is this enrollment's.
    expect(store.bindControlPlane('agent-a')).toBe(false);
    expect(store.bindControlPlane('agent-a')).toBe(false);
    expect(store.pushedPolicySet()?.version).toBe(57);
    // Enrolled again: a new agent id.
    expect(store.bindControlPlane('agent-b')).toBe(true);
    expect(store.pushedPolicySet()).toBeUndefined();
    expect(store.command('cmd-1')).toBeUndefined();
    expect(store.outbox()).toEqual([]);
    store.close();
  });

  it('stores one pushed policy set, replaced by the next', () => {
    const store = new StateStore(join(dir, 'agent.sqlite'));
    store.savePushedPolicySet(3, '[1]', new Date());
    store.savePushedPolicySet(4, '[2]', new Date());
    expect(store.pushedPolicySet()).toEqual({ version: 4, policies: '[2]' });
    store.close();
  });
});
