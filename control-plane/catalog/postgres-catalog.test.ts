import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { CairnError, isCairnError } from '../../shared/errors.js';
import { rejection } from '../../shared/store/conformance.js';
import { startPostgres, type PostgresServer } from '../../test/support/postgres.js';
import type { Catalog, SyncPartInput } from './catalog.js';
import { agentInput, at, backupInput, describeCatalog, policyInput, scanned, vaultInput, watchEvents } from './conformance.js';
import { openCatalog } from './open-catalog.js';
import { NOTICE_APPLICATION, POSTGRES_SCHEMA_VERSION, PostgresCatalog } from './postgres-catalog.js';
import { SqliteCatalog } from './sqlite-catalog.js';

let server: PostgresServer;

beforeAll(async () => {
  server = await startPostgres();
});
afterAll(async () => {
  await conformance?.admin.end();
  await server?.stop();
});

/**
 * One database for the conformance suite, emptied before each test (a new database per test would
 * take half a second each): every table but schema_version truncated, the policy version back at 0.
 */
let conformance: { url: string; admin: pg.Client } | undefined;
describeCatalog('PostgresCatalog', async () => {
  if (conformance === undefined) {
    const url = await server.createDatabase();
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    conformance = { url, admin };
  } else {
    const tables = (await conformance.admin.query(`SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_version'`)).rows;
    await conformance.admin.query(
      `TRUNCATE ${tables.map((t: { tablename: string }) => t.tablename).join(', ')} RESTART IDENTITY CASCADE;
       INSERT INTO counters (name, value) VALUES ('policy_version', 0)`,
    );
  }
  // The cluster, with every database, goes when the file is done.
  return { catalog: await PostgresCatalog.open(conformance.url), cleanup: async () => {} };
});

async function query(url: string, sql: string, params: unknown[] = []): Promise<pg.QueryResult> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await client.query(sql, params);
  } finally {
    await client.end();
  }
}

/** The CairnError `p` rejects with; fails the test if it resolves or rejects with anything else. */
async function failure(p: Promise<unknown>): Promise<CairnError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (isCairnError(err)) return err;
  throw new Error(`expected a CairnError, got ${String(err)}`);
}

describe('PostgresCatalog: two instances sharing one database', () => {
  let url: string;
  let a: PostgresCatalog;
  let b: PostgresCatalog;
  const opened: Catalog[] = [];
  const open = async () => {
    const c = await PostgresCatalog.open(url);
    opened.push(c);
    return c;
  };

  beforeAll(async () => {
    url = await server.createDatabase();
    [a, b] = await Promise.all([open(), open()]);
  });
  afterAll(async () => {
    await Promise.all(opened.map((c) => c.close()));
  });

  it('migrated the database once, though both opened it at the same time', async () => {
    expect((await query(url, 'SELECT version FROM schema_version')).rows).toEqual([{ version: POSTGRES_SCHEMA_VERSION }]);
    // A third instance opens the migrated database as it is.
    const c = await open();
    expect(await c.policyVersion()).toBe(await a.policyVersion());
  });

  it('lets exactly one caller among both instances use a token', async () => {
    for (let t = 0; t < 5; t++) {
      await a.addEnrollmentToken({ id: `race-${t}`, secretHash: 'h', createdAt: at(0), expiresAt: at(60) });
      const results = await Promise.all(Array.from({ length: 12 }, (_, i) => (i % 2 ? a : b).useEnrollmentToken(`race-${t}`, at(1))));
      expect(results.filter((r) => r !== undefined)).toHaveLength(1);
    }
  });

  it('serialises policy changes: concurrent changes from both instances get consecutive versions', async () => {
    await a.upsertVault(vaultInput('pv'));
    const start = await a.policyVersion();
    const versions = await Promise.all(Array.from({ length: 16 }, (_, i) => (i % 2 ? a : b).createPolicy(policyInput(`race-${i}`, { vaults: ['pv'] }))));
    expect([...versions].sort((x, y) => x - y)).toEqual(Array.from({ length: 16 }, (_, i) => start + 1 + i));
    const more = await Promise.all([a.bindPolicy('race-0', 'pv'), b.bindPolicy('race-0', 'pv'), a.updatePolicy('race-1', { enabled: false }), b.updatePolicy('race-1', { enabled: false })]);
    // The repeated calls change nothing the second time: two bumps in all.
    expect(await b.policyVersion()).toBe(start + 17);
    expect(Math.max(...more)).toBe(start + 17);
  });

  it('completes a sync once when its parts arrive at both instances at the same time', async () => {
    await a.upsertVault(vaultInput('sv'));
    const parts: SyncPartInput[] = Array.from({ length: 8 }, (_, i) => ({
      agentId: 'agent-1',
      syncId: 'race',
      vault: 'sv',
      part: i,
      last: i === 7,
      backups: [scanned(backupInput(`sync-${i}`, i, { vault: 'sv' }))],
    }));
    const results = await Promise.all([...parts, ...parts].map((p, i) => (i % 2 ? a : b).addSyncPart(p, at(60))));
    expect(results.filter((r) => r !== null)).toEqual([{ added: 8, restored: 0, deleted: 0 }]);
    expect(await b.listBackups({ vault: 'sv', status: 'available' })).toHaveLength(8);
  });

  it('records one backup and one command when both instances record the same at once', async () => {
    await a.upsertVault(vaultInput('v1'));
    await a.addAgent(agentInput('agent-x'));
    await Promise.all(Array.from({ length: 6 }, (_, i) => (i % 2 ? a : b).recordBackup(backupInput('same', 0))));
    expect(await a.listBackups({ vault: 'v1' })).toEqual([{ ...backupInput('same', 0), deletedAt: null }]);
    const command = { commandId: 'same', agentId: 'agent-x', action: 'verify', args: { deep: true }, createdAt: at(1) };
    await Promise.all(Array.from({ length: 6 }, (_, i) => (i % 2 ? a : b).addCommand(command)));
    expect(await b.pendingCommands('agent-x')).toEqual([{ ...command, completedAt: null, result: null }]);
    const completed = await Promise.all(Array.from({ length: 6 }, (_, i) => (i % 2 ? a : b).completeCommand('same', { ok: i }, at(2))));
    expect(completed.filter(Boolean)).toHaveLength(1);
  });

  it("tells the other instance's watchers of policy changes and queued commands", async () => {
    await a.addAgent(agentInput('agent-w'));
    const heardByB = watchEvents(b);
    const heardByA = watchEvents(a);
    try {
      await a.createPolicy(policyInput('watched'));
      await a.addCommand({ commandId: 'watched', agentId: 'agent-w', action: 'verify', args: null, createdAt: at(1) });
      await b.deletePolicy('watched');
      const expected = [{ kind: 'policies' }, { kind: 'commands', agentId: 'agent-w' }, { kind: 'policies' }];
      expect(await heardByB.until(3)).toEqual(expected);
      expect(await heardByA.until(3)).toEqual(expected);
    } finally {
      heardByA.stop();
      heardByB.stop();
    }
  });

  it('listens again when its notice connection drops, and then tells its watchers policies may have changed', async () => {
    const notices = `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = '${NOTICE_APPLICATION}'`;
    const before = (await query(url, notices)).rows.map((r: { pid: number }) => r.pid);
    expect(before.length).toBeGreaterThanOrEqual(2);
    // Notices sent while the connection was down are lost: after the reconnect each instance's
    // watchers hear a `policies` of its own, with no change made, so they push the latest anyway.
    const reconnectA = watchEvents(a);
    const reconnectB = watchEvents(b);
    await query(url, `SELECT pg_terminate_backend(pid) FROM (${notices}) n`);
    try {
      expect(await reconnectA.until(1)).toEqual([{ kind: 'policies' }]);
      expect(await reconnectB.until(1)).toEqual([{ kind: 'policies' }]);
    } finally {
      reconnectA.stop();
      reconnectB.stop();
    }
    const deadline = Date.now() + 10_000;
    let after: number[] = [];
    while (Date.now() < deadline) {
      after = (await query(url, notices)).rows.map((r: { pid: number }) => r.pid);
      if (after.length >= before.length && after.every((pid) => !before.includes(pid))) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(after.filter((pid) => !before.includes(pid)).length).toBeGreaterThanOrEqual(before.length);
    const heard = watchEvents(b);
    try {
      await a.createPolicy(policyInput('after-the-drop'));
      expect(await heard.until(1)).toEqual([{ kind: 'policies' }]);
    } finally {
      heard.stop();
    }
  });

  it('sends no notice for a change that rolled back', async () => {
    const heard = watchEvents(b);
    try {
      await rejection(a.createPolicy(policyInput('bad', { vaults: ['nowhere'] })), 'NOT_FOUND');
      await a.createPolicy(policyInput('after-the-bad-one'));
      expect(await heard.until(1)).toEqual([{ kind: 'policies' }]);
      await new Promise((r) => setTimeout(r, 100));
      expect(heard.seen).toHaveLength(1);
    } finally {
      heard.stop();
    }
  });
});

describe('PostgresCatalog on its database', () => {
  const toClose: Catalog[] = [];
  afterEach(async () => {
    await Promise.all(toClose.splice(0).map((c) => c.close()));
  });

  it('reports a lock another transaction keeps as BUSY, retryable, and works once it is released', async () => {
    const url = await server.createDatabase();
    const catalog = await PostgresCatalog.open(url, { lockTimeoutMs: 100 });
    toClose.push(catalog);
    const other = new pg.Client({ connectionString: url });
    await other.connect();
    try {
      await other.query('BEGIN');
      await other.query(`SELECT value FROM counters WHERE name = 'policy_version' FOR UPDATE`);
      const err = await failure(catalog.createPolicy(policyInput('p1')));
      expect(err.code).toBe('BUSY');
      expect(err.retryable).toBe(true);
      expect(err.message).not.toContain(server.password);
      await other.query('ROLLBACK');
      expect(await catalog.createPolicy(policyInput('p1'))).toBe(1);
    } finally {
      await other.end();
    }
  });

  it('refuses a database of a newer schema version, and one holding other tables, with USAGE, changing nothing', async () => {
    const newer = await server.createDatabase();
    await (await PostgresCatalog.open(newer)).close();
    await query(newer, 'UPDATE schema_version SET version = $1', [POSTGRES_SCHEMA_VERSION + 1]);
    const err = await failure(PostgresCatalog.open(newer));
    expect(err.code).toBe('USAGE');
    expect(err.message).toContain(`schema version ${POSTGRES_SCHEMA_VERSION + 1}`);
    expect(err.message).toContain('newer Cairn');
    expect((await query(newer, 'SELECT version FROM schema_version')).rows).toEqual([{ version: POSTGRES_SCHEMA_VERSION + 1 }]);

    const foreign = await server.createDatabase();
    await query(foreign, 'CREATE TABLE invoices (id INTEGER)');
    const other = await failure(PostgresCatalog.open(foreign));
    expect(other.code).toBe('USAGE');
    expect(other.message).toContain('invoices');
    expect((await query(foreign, `SELECT tablename FROM pg_tables WHERE schemaname = 'public'`)).rows).toEqual([{ tablename: 'invoices' }]);
  });
});

describe('openCatalog', () => {
  let dir: string;
  const toClose: Catalog[] = [];
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cairn-open-catalog-'));
  });
  afterAll(async () => {
    await Promise.all(toClose.map((c) => c.close()));
    await rm(dir, { recursive: true, force: true });
  });

  it('opens SQLite in the data folder when no database is given', async () => {
    const catalog = await openCatalog({ dataDir: dir });
    toClose.push(catalog);
    expect(catalog).toBeInstanceOf(SqliteCatalog);
    expect((catalog as SqliteCatalog).path).toBe(join(dir, 'catalog.sqlite'));
  });

  it('opens PostgreSQL for a postgres:// or postgresql:// URL, connected and migrated', async () => {
    const url = await server.createDatabase();
    for (const u of [url, url.replace(/^postgresql:/, 'postgres:')]) {
      const catalog = await openCatalog({ dataDir: dir, database: u });
      toClose.push(catalog);
      expect(catalog).toBeInstanceOf(PostgresCatalog);
      await catalog.upsertVault(vaultInput(`v-${u.slice(0, 10)}`));
    }
    expect((await query(url, 'SELECT name FROM vaults ORDER BY name')).rows).toHaveLength(2);
  });

  it('refuses wrong credentials with PERMISSION_DENIED, naming the server but not the password', async () => {
    const url = await server.createDatabase();
    const wrong = url.replace(`:${server.password}@`, ':not-the-password@');
    const err = await failure(openCatalog({ dataDir: dir, database: wrong }));
    expect(err.code).toBe('PERMISSION_DENIED');
    expect(err.message).toContain(`${server.host}:${server.port}`);
    expect(err.message).not.toContain('not-the-password');
  });

  it('reports a server that does not answer as STORE_UNAVAILABLE, and a missing database as NOT_FOUND', async () => {
    const closedPort = server.url.replace(`:${server.port}/`, ':1/');
    const down = await failure(openCatalog({ dataDir: dir, database: closedPort }));
    expect(down.code).toBe('STORE_UNAVAILABLE');
    expect(down.message).toContain('127.0.0.1:1');
    expect(down.message).not.toContain(server.password);

    const missing = await failure(openCatalog({ dataDir: dir, database: server.url.replace(/\/postgres$/, '/no_such_db') }));
    expect(missing.code).toBe('NOT_FOUND');
    expect(missing.message).toContain('no_such_db');
    expect(missing.message).not.toContain(server.password);
  });

  it('refuses any other database setting with USAGE, without repeating it', async () => {
    for (const database of ['mysql://root:hunter2@db/cairn', '/var/lib/cairn/catalog.sqlite', '', 'postgresql://root:hunter2@db:port/cairn']) {
      const err = await failure(openCatalog({ dataDir: dir, database }));
      expect(err.code).toBe('USAGE');
      expect(err.message).toMatch(/postgres(ql)?:\/\//);
      expect(err.message).not.toContain('hunter2');
    }
  });
});
