import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { CairnError } from '../../shared/errors.js';
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
  kind: 'backup' | 'prune' | 'gc';
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

export class StateStore implements IndexCache {
  private readonly db: Database.Database;

  constructor(readonly path: string) {
    try {
      mkdirSync(dirname(path), { recursive: true });
      this.db = new Database(path);
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('busy_timeout = 5000');
      this.db.exec(`
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
      `);
    } catch (err) {
      throw new CairnError(
        'PERMISSION_DENIED',
        `cannot open the local state database ${path}: ${(err as Error).message}; set CAIRN_STATE_DIR to a writable folder`,
        { cause: err },
      );
    }
  }

  recordRun(run: BackupRun): void {
    this.db
      .prepare(
        `INSERT INTO backup_runs (vault_id, vault_location, backup_id, name, kind, status, started_at, finished_at,
          bytes_read, bytes_stored, duration_ms, error)
         VALUES (@vaultId, @vaultLocation, @backupId, @name, @kind, @status, @startedAt, @finishedAt,
          @bytesRead, @bytesStored, @durationMs, @error)`,
      )
      .run(run);
  }

  /** The agent's job history (backups, prunes, gc runs), one row per finished job. */
  recordJob(job: AgentJobRecord): void {
    this.db
      .prepare(
        `INSERT INTO agent_jobs (job_id, kind, resource, vault, policy, backup, status, started_at, finished_at,
          bytes_read, bytes_stored, duration_ms, error)
         VALUES (@jobId, @kind, @resource, @vault, @policy, @backup, @status, @startedAt, @finishedAt,
          @bytesRead, @bytesStored, @durationMs, @error)`,
      )
      .run(job);
  }

  /** Jobs of a kind, oldest first (optionally of one resource). */
  jobs(kind: string, resource?: string): AgentJobRecord[] {
    return this.db
      .prepare(
        `SELECT job_id AS jobId, kind, resource, vault, policy, backup, status, started_at AS startedAt,
          finished_at AS finishedAt, bytes_read AS bytesRead, bytes_stored AS bytesStored, duration_ms AS durationMs, error
         FROM agent_jobs WHERE kind = ? ${resource === undefined ? '' : 'AND resource = ?'} ORDER BY seq`,
      )
      .all(...(resource === undefined ? [kind] : [kind, resource])) as AgentJobRecord[];
  }

  /** When a policy last fired for a resource (for catching up a run missed while the agent was down). */
  lastFire(policy: string, resource: string): Date | undefined {
    const row = this.db.prepare('SELECT last_fire AS t FROM agent_marks WHERE policy = ? AND resource = ?').get(policy, resource) as { t: string } | undefined;
    return row ? new Date(row.t) : undefined;
  }

  setLastFire(policy: string, resource: string, at: Date): void {
    this.db
      .prepare('INSERT INTO agent_marks (policy, resource, last_fire) VALUES (?, ?, ?) ON CONFLICT (policy, resource) DO UPDATE SET last_fire = excluded.last_fire')
      .run(policy, resource, at.toISOString());
  }

  runs(vaultId?: string): BackupRun[] {
    const rows = this.db
      .prepare(
        `SELECT vault_id AS vaultId, vault_location AS vaultLocation, backup_id AS backupId, name, kind, status,
          started_at AS startedAt, finished_at AS finishedAt, bytes_read AS bytesRead, bytes_stored AS bytesStored,
          duration_ms AS durationMs, error FROM backup_runs ${vaultId ? 'WHERE vault_id = ?' : ''} ORDER BY seq`,
      )
      .all(...(vaultId ? [vaultId] : []));
    return rows as BackupRun[];
  }

  // IndexCache
  getIndex(vaultId: string, key: string): Buffer | undefined {
    const row = this.db.prepare('SELECT body FROM index_cache WHERE vault_id = ? AND key = ?').get(vaultId, key) as
      | { body: Buffer }
      | undefined;
    return row?.body;
  }

  putIndex(vaultId: string, key: string, body: Buffer): void {
    this.db.prepare('INSERT OR REPLACE INTO index_cache (vault_id, key, body) VALUES (?, ?, ?)').run(vaultId, key, body);
  }

  retainIndexes(vaultId: string, keys: string[]): void {
    const keep = new Set(keys);
    const all = this.db.prepare('SELECT key FROM index_cache WHERE vault_id = ?').all(vaultId) as { key: string }[];
    const del = this.db.prepare('DELETE FROM index_cache WHERE vault_id = ? AND key = ?');
    this.db.transaction(() => {
      for (const { key } of all) if (!keep.has(key)) del.run(vaultId, key);
    })();
  }

  close(): void {
    this.db.close();
  }
}
