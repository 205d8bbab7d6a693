import Database from 'better-sqlite3';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { CairnError, isCairnError } from '../../shared/errors.js';
import { agentInput, at, backupInput, describeCatalog, policyInput, vaultInput } from './conformance.js';
import { MIGRATIONS, SCHEMA_VERSION, SqliteCatalog } from './sqlite-catalog.js';

async function freshDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'cairn-catalog-'));
}

describeCatalog('SqliteCatalog', async () => {
  const dir = await freshDir();
  return { catalog: new SqliteCatalog(join(dir, 'catalog.db')), cleanup: () => rm(dir, { recursive: true, force: true }) };
});

/** The CairnError `open` throws; fails the test if it throws anything else or nothing. */
function openError(open: () => unknown): CairnError {
  try {
    open();
  } catch (err) {
    if (isCairnError(err)) return err;
    throw err;
  }
  throw new Error('expected a CairnError, but the catalog opened');
}

describe('SqliteCatalog on its file', () => {
  let dir: string;
  let path: string;
  beforeEach(async () => {
    dir = await freshDir();
    path = join(dir, 'sub', 'catalog.db');
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  it('keeps everything when the file is closed and opened again', async () => {
    const first = new SqliteCatalog(path);
    await first.addEnrollmentToken({ id: 'tok', secretHash: 'h', createdAt: at(0), expiresAt: at(60) });
    await first.useEnrollmentToken('tok', at(1));
    await first.addAgent(agentInput('agent-1'));
    await first.touchAgent('agent-1', at(2), 'online');
    await first.upsertVault(vaultInput('v1', { capacityBytes: 1e12 }));
    await first.upsertResource({ name: 'web', agentId: 'agent-1', vault: 'v1', disks: ['/dev/sda'] });
    await first.createPolicy(policyInput('nightly', { vaults: ['v1'] }));
    await first.setAgentPolicyAck('agent-1', 1);
    await first.recordBackup(backupInput('b1', 0));
    await first.recordBackup(backupInput('b2', 1));
    await first.markBackupDeleted('b2', at(30));
    await first.addCommand({ commandId: 'c1', agentId: 'agent-1', action: 'verify', args: { vault: 'v1' }, createdAt: at(3) });
    await first.addCommand({ commandId: 'c2', agentId: 'agent-1', action: 'verify', args: null, createdAt: at(4) });
    await first.completeCommand('c1', { ok: true }, at(5));
    const snapshot = async (c: SqliteCatalog) => ({
      token: await c.getEnrollmentToken('tok'),
      agents: await c.listAgents(),
      vaults: await c.listVaults(),
      resources: await c.listResources(),
      policies: await c.listPolicies(),
      version: await c.policyVersion(),
      backups: await c.listBackups(),
      c1: await c.getCommand('c1'),
      pending: await c.pendingCommands('agent-1'),
    });
    const before = await snapshot(first);
    await first.close();

    const second = new SqliteCatalog(path);
    try {
      expect(await snapshot(second)).toEqual(before);
      expect(before.version).toBe(1);
      expect(before.backups.map((b) => [b.id, b.status])).toEqual([
        ['b2', 'deleted'],
        ['b1', 'available'],
      ]);
      expect(before.pending.map((c) => c.commandId)).toEqual(['c2']);
      // Versions keep counting from where they were; the token stays used.
      expect(await second.bindPolicy('nightly', 'v1')).toBe(1);
      expect(await second.updatePolicy('nightly', { enabled: false })).toBe(2);
      expect(await second.useEnrollmentToken('tok', at(2))).toBeUndefined();
    } finally {
      await second.close();
    }
  });

  it('creates the schema at the newest version, in WAL mode', async () => {
    await new SqliteCatalog(path).close();
    const db = new Database(path, { readonly: true });
    try {
      expect(db.prepare('SELECT version FROM schema_version').all()).toEqual([{ version: SCHEMA_VERSION }]);
      expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    } finally {
      db.close();
    }
  });

  it('migrates a database of schema version 1, keeping its backups (logicalBytes and host unknown)', async () => {
    const db = new Database(path.replace('sub/', ''));
    db.exec(MIGRATIONS[0].sql);
    db.exec('CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version (version) VALUES (1)');
    db.exec(`INSERT INTO vaults (name, type, location) VALUES ('v1', 'server', '/srv/v1')`);
    db.exec(`INSERT INTO backups (id, name, vault, resource, agent_id, kind, started_at, finished_at, bytes_read, bytes_stored, consistency, status)
             VALUES ('b1', 'autobk_b1', 'v1', 'web', 'agent-1', 'full', '${at(0)}', '${at(10)}', 10, 5, 'crash_consistent', 'available')`);
    db.close();
    const catalog = new SqliteCatalog(path.replace('sub/', ''));
    try {
      expect(await catalog.getBackup('b1')).toMatchObject({ id: 'b1', bytesStored: 5, logicalBytes: null, host: null });
      await catalog.recordBackup(backupInput('b1', 0, { kind: 'full', logicalBytes: 100, host: 'h' }));
      expect(await catalog.getBackup('b1')).toMatchObject({ logicalBytes: 100, host: 'h' });
      expect(await catalog.listJobResults()).toEqual([]);
    } finally {
      await catalog.close();
    }
  });

  it('tells only its own watchers: another SqliteCatalog on the same file hears nothing', async () => {
    const a = new SqliteCatalog(path);
    const b = new SqliteCatalog(path);
    const heardA: string[] = [];
    const heardB: string[] = [];
    const stopA = a.watch((e) => heardA.push(e.kind));
    const stopB = b.watch((e) => heardB.push(e.kind));
    try {
      await a.createPolicy(policyInput('p1'));
      expect(heardA).toEqual(['policies']);
      expect(heardB).toEqual([]);
    } finally {
      stopA();
      stopB();
      await a.close();
      await b.close();
    }
  });

  it('refuses a database of a newer schema version with USAGE, leaving the file unchanged', async () => {
    await new SqliteCatalog(path).close();
    const db = new Database(path);
    db.prepare('UPDATE schema_version SET version = ?').run(SCHEMA_VERSION + 1);
    db.close();
    const bytes = await readFile(path);

    const err = openError(() => new SqliteCatalog(path));
    expect(err.code).toBe('USAGE');
    expect(err.message).toContain(path);
    expect(err.message).toContain(`schema version ${SCHEMA_VERSION + 1}`);
    expect(err.message).toContain('newer Cairn');
    expect((await readFile(path)).equals(bytes)).toBe(true);
  });

  it('refuses a SQLite database that is no catalog, and a file that is no database, with USAGE', async () => {
    const state = join(dir, 'state.db');
    const db = new Database(state);
    db.exec('CREATE TABLE backup_runs (seq INTEGER)');
    db.close();
    const err = openError(() => new SqliteCatalog(state));
    expect(err.code).toBe('USAGE');
    expect(err.message).toContain('backup_runs');

    const text = join(dir, 'notes.txt');
    await writeFile(text, 'not a database, but long enough to have a header that SQLite reads and rejects\n'.repeat(20));
    expect(openError(() => new SqliteCatalog(text)).code).toBe('USAGE');
  });

  it('lets exactly one of two processes sharing the file use a token', async () => {
    const a = new SqliteCatalog(path);
    const b = new SqliteCatalog(path);
    try {
      await a.addEnrollmentToken({ id: 'tok', secretHash: 'h', createdAt: at(0), expiresAt: at(60) });
      const results = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).useEnrollmentToken('tok', at(1))));
      expect(results.filter((r) => r !== undefined)).toHaveLength(1);
      // Versions are one counter across connections too.
      await a.upsertVault(vaultInput('v1'));
      expect(await a.createPolicy(policyInput('p1'))).toBe(1);
      expect(await b.createPolicy(policyInput('p2'))).toBe(2);
      expect(await a.policyVersion()).toBe(2);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('reports a database another process keeps locked as BUSY, retryable', async () => {
    const catalog = new SqliteCatalog(path, { busyTimeoutMs: 50 });
    const other = new Database(path);
    try {
      other.exec('BEGIN IMMEDIATE');
      const err = await catalog.upsertVault(vaultInput('v1')).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(isCairnError(err, 'BUSY'), String(err)).toBe(true);
      expect((err as CairnError).retryable).toBe(true);
      other.exec('ROLLBACK');
      await catalog.upsertVault(vaultInput('v1'));
      expect((await catalog.listVaults()).map((v) => v.name)).toEqual(['v1']);
    } finally {
      other.close();
      await catalog.close();
    }
  });
});
