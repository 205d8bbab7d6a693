import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { CairnError } from '../../shared/errors.js';
import { retain, StatementCache } from '../../shared/runtime/sqlite-retain.js';
import type { IndexCache } from '../../shared/vault/index-cache.js';

export interface BackupRun {
  vaultId: string;
  vaultLocation: string;
  backupId: string | null;
  name: string | null;
  kind: string | null;
  status: 'ok' | 'failed';
  startedAt: string;
  finishedAt: string;
  bytesRead: number;
  bytesStored: number;
  durationMs: number;
  error: string | null;
}

/**
 * The agent's local state in one SQLite file: the history of backup runs on this machine (including
 * failed ones, which the vault never sees) and a cache of decrypted index objects per vault. The
 * vault stays the source of truth: deleting this file loses only history of failed runs, and the
 * cache is rebuilt on the next run.
 */
export interface AgentJobRecord {
  jobId: string;
  kind: 'backup' | 'prune' | 'gc' | 'restore' | 'verify' | 'delete' | 'catalog-sync';
  resource: string | null;
  vault: string;
  policy: string | null;
  backup: string | null;
  status: 'ok' | 'failed' | 'cancelled';
  startedAt: string;
  finishedAt: string;
  bytesRead: number;
  bytesStored: number;
  durationMs: number;
  error: string | null;
}

/** A command the control plane sent (cp_commands). `result` is the job-result frame once the job finished. */
export interface CommandRecord {
  commandId: string;
  action: string;
  jobId: string;
  resultMessageId: string | null;
  result: string | null;
}

/** One durable outbox message (cp_outbox): the whole frame as it is sent, again and again, until acked. */
export interface OutboxEntry {
  messageId: string;
  type: 'job-result' | 'catalog-sync';
  /** The vault a catalog-sync is about; null for job-result. */
  vault: string | null;
  body: string;
}

/**
 * Schema migrations, applied in order; `PRAGMA user_version` is the number applied. Never edit an
 * applied migration: add a new one. Migration 1 is the schema from before migrations were counted
 * (IF NOT EXISTS, so databases made then pass through it unchanged).
 */
const MIGRATIONS: readonly string[] = [
  `
        CREATE TABLE IF NOT EXISTS backup_runs (
          seq INTEGER PRIMARY KEY AUTOINCREMENT,
          vault_id TEXT NOT NULL, vault_location TEXT NOT NULL,
          backup_id TEXT, name TEXT, kind TEXT, status TEXT NOT NULL,
          started_at TEXT NOT NULL, finished_at TEXT NOT NULL,
          bytes_read INTEGER NOT NULL, bytes_stored INTEGER NOT NULL, duration_ms INTEGER NOT NULL,
          error TEXT
        );
        CREATE TABLE IF NOT EXISTS agent_jobs (
          seq INTEGER PRIMARY KEY AUTOINCREMENT,
          job_id TEXT NOT NULL, kind TEXT NOT NULL, resource TEXT, vault TEXT NOT NULL, policy TEXT,
          backup TEXT, status TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT NOT NULL,
          bytes_read INTEGER NOT NULL, bytes_stored INTEGER NOT NULL, duration_ms INTEGER NOT NULL, error TEXT
        );
        CREATE TABLE IF NOT EXISTS agent_marks (
          policy TEXT NOT NULL, resource TEXT NOT NULL, last_fire TEXT NOT NULL,
          PRIMARY KEY (policy, resource)
        );
        CREATE TABLE IF NOT EXISTS index_cache (
          vault_id TEXT NOT NULL, key TEXT NOT NULL, body BLOB NOT NULL,
          PRIMARY KEY (vault_id, key)
        );
  `,
  // 2: the control-plane link. One row of the last accepted pushed policy set; every command
  // received (at most once per command id, with the job-result that answered it); the durable
  // outbox of job-result and catalog-sync messages, in send order, until the control plane acks them.
  `
    CREATE TABLE cp_policy_set (
      one INTEGER PRIMARY KEY CHECK (one = 1),
      version INTEGER NOT NULL, policies TEXT NOT NULL, accepted_at TEXT NOT NULL
    );
    CREATE TABLE cp_commands (
      command_id TEXT PRIMARY KEY, action TEXT NOT NULL, job_id TEXT NOT NULL,
      received_at TEXT NOT NULL, result_message_id TEXT, result TEXT
    );
    CREATE TABLE cp_outbox (
      seq INTEGER PRIMARY KEY AUTOINCREMENT,
      message_id TEXT NOT NULL UNIQUE, type TEXT NOT NULL, vault TEXT, body TEXT NOT NULL, created_at TEXT NOT NULL
    );
  `,
  // 3: which enrollment (agent id) the cp_ tables belong to, so enrolling again starts them afresh.
  `
    CREATE TABLE cp_enrollment (
      one INTEGER PRIMARY KEY CHECK (one = 1),
      agent_id TEXT NOT NULL, bound_at TEXT NOT NULL
    );
  `,
];

/** `sql`: a statement of the store's own (retained, see StateStore's `statements`). */
function migrate(db: Database.Database, sql: (text: string) => Database.Statement): void {
  const applied = sql('PRAGMA user_version').pluck().get() as number;
  for (let i = applied; i < MIGRATIONS.length; i++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[i]!);
      sql(`PRAGMA user_version = ${i + 1}`).run();
    })();
  }
}

export class StateStore implements IndexCache {
  private readonly db: Database.Database;
  /** Prepared statements, one per SQL text, retained (shared/runtime/sqlite-retain.ts). */
  private readonly statements: StatementCache;

  constructor(readonly path: string) {
    try {
      mkdirSync(dirname(path), { recursive: true });
      this.db = retain(new Database(path));
      this.statements = new StatementCache(this.db);
      // Pragmas as retained statements too (db.pragma prepares one and drops it).
      this.sql('PRAGMA journal_mode = WAL').get();
      this.sql('PRAGMA busy_timeout = 5000').get();
      migrate(this.db, (text) => this.sql(text));
    } catch (err) {
      throw new CairnError(
        'PERMISSION_DENIED',
        `cannot open the local state database ${path}: ${(err as Error).message}; set CAIRN_STATE_DIR to a writable folder`,
        { cause: err },
      );
    }
  }

  recordRun(run: BackupRun): void {
    this
      .sql(
        `INSERT INTO backup_runs (vault_id, vault_location, backup_id, name, kind, status, started_at, finished_at,
          bytes_read, bytes_stored, duration_ms, error)
         VALUES (@vaultId, @vaultLocation, @backupId, @name, @kind, @status, @startedAt, @finishedAt,
          @bytesRead, @bytesStored, @durationMs, @error)`,
      )
      .run(run);
  }

  /** The agent's job history (backups, prunes, gc runs), one row per finished job. */
  recordJob(job: AgentJobRecord): void {
    this
      .sql(
        `INSERT INTO agent_jobs (job_id, kind, resource, vault, policy, backup, status, started_at, finished_at,
          bytes_read, bytes_stored, duration_ms, error)
         VALUES (@jobId, @kind, @resource, @vault, @policy, @backup, @status, @startedAt, @finishedAt,
          @bytesRead, @bytesStored, @durationMs, @error)`,
      )
      .run(job);
  }

  /** Jobs of a kind, oldest first (optionally of one resource). */
  jobs(kind: string, resource?: string): AgentJobRecord[] {
    return this
      .sql(
        `SELECT job_id AS jobId, kind, resource, vault, policy, backup, status, started_at AS startedAt,
          finished_at AS finishedAt, bytes_read AS bytesRead, bytes_stored AS bytesStored, duration_ms AS durationMs, error
         FROM agent_jobs WHERE kind = ? ${resource === undefined ? '' : 'AND resource = ?'} ORDER BY seq`,
      )
      .all(...(resource === undefined ? [kind] : [kind, resource])) as AgentJobRecord[];
  }

  /** When a policy last fired for a resource (for catching up a run missed while the agent was down). */
  lastFire(policy: string, resource: string): Date | undefined {
    const row = this.sql('SELECT last_fire AS t FROM agent_marks WHERE policy = ? AND resource = ?').get(policy, resource) as { t: string } | undefined;
    return row ? new Date(row.t) : undefined;
  }

  setLastFire(policy: string, resource: string, at: Date): void {
    this
      .sql('INSERT INTO agent_marks (policy, resource, last_fire) VALUES (?, ?, ?) ON CONFLICT (policy, resource) DO UPDATE SET last_fire = excluded.last_fire')
      .run(policy, resource, at.toISOString());
  }

  // ---- control-plane link (migration 2) -----------------------------------------------------

  /**
   * Ties the control-plane tables (cp_policy_set, cp_commands, cp_outbox) to the enrollment `agentId`.
   * When they belong to another agent id (the agent enrolled again, with this or another control
   * plane), they are emptied first, in one transaction: a stored policy version, command ids and
   * unsent messages mean nothing to the new enrollment. Returns true when it emptied them. The first
   * call on a database from before migration 3 adopts what is stored for `agentId`.
   */
  bindControlPlane(agentId: string, at: Date = new Date()): boolean {
    return this.db.transaction(() => {
      const bound = this.sql('SELECT agent_id AS agentId FROM cp_enrollment WHERE one = 1').get() as { agentId: string } | undefined;
      if (bound?.agentId === agentId) return false;
      this
        .sql(
          `INSERT INTO cp_enrollment (one, agent_id, bound_at) VALUES (1, ?, ?)
           ON CONFLICT (one) DO UPDATE SET agent_id = excluded.agent_id, bound_at = excluded.bound_at`,
        )
        .run(agentId, at.toISOString());
      if (bound === undefined) return false;
      this.db.exec('DELETE FROM cp_policy_set; DELETE FROM cp_commands; DELETE FROM cp_outbox;');
      return true;
    })();
  }

  /** The last policy set the control plane pushed and the agent accepted (policies as JSON), or undefined. */
  pushedPolicySet(): { version: number; policies: string } | undefined {
    return this.sql('SELECT version, policies FROM cp_policy_set WHERE one = 1').get() as { version: number; policies: string } | undefined;
  }

  /** Replaces the accepted policy set (one row). */
  savePushedPolicySet(version: number, policies: string, at: Date): void {
    this
      .sql(
        `INSERT INTO cp_policy_set (one, version, policies, accepted_at) VALUES (1, ?, ?, ?)
         ON CONFLICT (one) DO UPDATE SET version = excluded.version, policies = excluded.policies, accepted_at = excluded.accepted_at`,
      )
      .run(version, policies, at.toISOString());
  }

  /** A command seen before: its job, and the job-result (message id and frame) once it finished. */
  command(commandId: string): CommandRecord | undefined {
    return this
      .sql(
        `SELECT command_id AS commandId, action, job_id AS jobId, result_message_id AS resultMessageId, result
         FROM cp_commands WHERE command_id = ?`,
      )
      .get(commandId) as CommandRecord | undefined;
  }

  /** Records a command as accepted; false when its id was seen before (then nothing changes). */
  beginCommand(commandId: string, action: string, jobId: string, at: Date): boolean {
    return (
      this
        .sql('INSERT OR IGNORE INTO cp_commands (command_id, action, job_id, received_at) VALUES (?, ?, ?, ?)')
        .run(commandId, action, jobId, at.toISOString()).changes === 1
    );
  }

  /** Commands accepted but never finished (the agent stopped or was killed first), oldest first. */
  unfinishedCommands(): CommandRecord[] {
    return this
      .sql(
        `SELECT command_id AS commandId, action, job_id AS jobId, result_message_id AS resultMessageId, result
         FROM cp_commands WHERE result IS NULL ORDER BY rowid`,
      )
      .all() as CommandRecord[];
  }

  /**
   * Adds a job-result to the durable outbox; when it answers a command, in one transaction with the
   * command's stored result. A message id already in the outbox is left as it is (a repeated
   * command's result is queued again under its first id).
   */
  enqueueJobResult(messageId: string, body: string, commandId: string | null, at: Date = new Date()): void {
    this.db.transaction(() => {
      this
        .sql("INSERT OR IGNORE INTO cp_outbox (message_id, type, vault, body, created_at) VALUES (?, 'job-result', NULL, ?, ?)")
        .run(messageId, body, at.toISOString());
      if (commandId !== null) {
        this.sql('UPDATE cp_commands SET result_message_id = ?, result = ? WHERE command_id = ?').run(messageId, body, commandId);
        // Bounded history: the newest 10000 commands are remembered.
        this.sql('DELETE FROM cp_commands WHERE rowid <= (SELECT MAX(rowid) FROM cp_commands) - 10000').run();
      }
    })();
  }

  /**
   * Stores the parts of one catalog-sync of a vault, all or none, and removes that vault's older
   * catalog-sync parts still waiting: the newer sync supersedes them.
   */
  enqueueCatalogSync(vault: string, parts: { messageId: string; body: string }[], at: Date = new Date()): void {
    this.db.transaction(() => {
      this.sql("DELETE FROM cp_outbox WHERE type = 'catalog-sync' AND vault = ?").run(vault);
      const insert = this.sql("INSERT INTO cp_outbox (message_id, type, vault, body, created_at) VALUES (?, 'catalog-sync', ?, ?, ?)");
      for (const p of parts) insert.run(p.messageId, vault, p.body, at.toISOString());
    })();
  }

  /** Outbox messages after `afterSeq`, in the order they were stored. */
  outbox(afterSeq = 0): (OutboxEntry & { seq: number })[] {
    return this
      .sql('SELECT seq, message_id AS messageId, type, vault, body FROM cp_outbox WHERE seq > ? ORDER BY seq')
      .all(afterSeq) as (OutboxEntry & { seq: number })[];
  }

  /** Removes an acknowledged message; false when it was not in the outbox. */
  ackOutbox(messageId: string): boolean {
    return this.sql('DELETE FROM cp_outbox WHERE message_id = ?').run(messageId).changes === 1;
  }

  runs(vaultId?: string): BackupRun[] {
    const rows = this
      .sql(
        `SELECT vault_id AS vaultId, vault_location AS vaultLocation, backup_id AS backupId, name, kind, status,
          started_at AS startedAt, finished_at AS finishedAt, bytes_read AS bytesRead, bytes_stored AS bytesStored,
          duration_ms AS durationMs, error FROM backup_runs ${vaultId ? 'WHERE vault_id = ?' : ''} ORDER BY seq`,
      )
      .all(...(vaultId ? [vaultId] : []));
    return rows as BackupRun[];
  }

  // IndexCache
  getIndex(vaultId: string, key: string): Buffer | undefined {
    const row = this.sql('SELECT body FROM index_cache WHERE vault_id = ? AND key = ?').get(vaultId, key) as
      | { body: Buffer }
      | undefined;
    return row?.body;
  }

  putIndex(vaultId: string, key: string, body: Buffer): void {
    this.sql('INSERT OR REPLACE INTO index_cache (vault_id, key, body) VALUES (?, ?, ?)').run(vaultId, key, body);
  }

  retainIndexes(vaultId: string, keys: string[]): void {
    const keep = new Set(keys);
    const all = this.sql('SELECT key FROM index_cache WHERE vault_id = ?').all(vaultId) as { key: string }[];
    const del = this.sql('DELETE FROM index_cache WHERE vault_id = ? AND key = ?');
    this.db.transaction(() => {
      for (const { key } of all) if (!keep.has(key)) del.run(vaultId, key);
    })();
  }

  close(): void {
    this.db.close();
  }

  private sql(text: string): Database.Statement {
    return this.statements.get(text);
  }
}
