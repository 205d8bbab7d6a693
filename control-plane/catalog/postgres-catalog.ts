import { EventEmitter } from 'node:events';

import pg from 'pg';

import { CairnError } from '../../shared/errors.js';
import type {
  AgentInput,
  AgentRecord,
  AgentStatus,
  BackupFilter,
  BackupInput,
  BackupRecord,
  Catalog,
  CatalogEvent,
  CommandFilter,
  CommandInput,
  CommandRecord,
  EnrollmentToken,
  EnrollmentTokenInput,
  JobResultFilter,
  JobResultRecord,
  JsonValue,
  PolicyChanges,
  PolicyRecord,
  RecordBackupOptions,
  ReplaceSummary,
  ResourceConflict,
  ResourceFilter,
  ResourceRecord,
  ScannedBackup,
  SyncPartInput,
  Timestamp,
  VaultInput,
  VaultRecord,
} from './catalog.js';
import {
  BACKUP_IDENTITY,
  BACKUP_KINDS,
  BACKUP_STATUSES,
  JOB_STATUSES,
  agentResources,
  backupInput,
  booleanFilter,
  canonicalJson,
  checkSyncPart,
  type CheckedBackup,
  jobResultInput,
  jsonText,
  nonNegativeInteger,
  policyRecord,
  requiredText,
  stringList,
  syncPartInput,
  timestamp,
  vaultInput,
} from './catalog-input.js';

/**
 * The catalog on a PostgreSQL server, for several control-plane instances sharing one database.
 *
 * Every call is one transaction on a pooled connection, at READ COMMITTED, made atomic across
 * connections and instances by what it locks (see README.md, "PostgreSQL"): single conditional
 * statements for token use and command completion; the policy_version counter row, locked first
 * by every policy change, so policy changes run one at a time and versions are consecutive; the
 * vault row (FOR SHARE to record a backup, FOR UPDATE to replace the vault's backups); the agent row
 * for a resources report; a transaction-level advisory lock per catalog sync. Reads of several
 * tables run at REPEATABLE READ, READ ONLY, so they see one snapshot. A serialization failure or
 * deadlock is retried a few times, then reported as BUSY (retryable).
 *
 * Notices: a change that watchers must hear calls pg_notify in its transaction, so the notice goes
 * out on commit only; every instance LISTENs on one extra connection.
 */

interface Migration {
  version: number;
  description: string;
  sql: string;
}

/**
 * The PostgreSQL schema, as migrations applied in order (numbered on their own: the SQLite file has
 * its own list); schema_version holds the last one applied. Append, never edit an applied one.
 * Times are ISO 8601 text in UTC with milliseconds, as in SQLite, so both sort and compare alike;
 * JSON is kept as text, as given.
 */
export const POSTGRES_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: 'tokens, agents, vaults, resources, policies, backups, commands, job results, catalog syncs',
    sql: `
      CREATE TABLE enrollment_tokens (
        id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, expires_at TEXT NOT NULL, created_at TEXT NOT NULL, used_at TEXT
      );
      CREATE TABLE agents (
        agent_id TEXT PRIMARY KEY, credential_hash TEXT NOT NULL, hostname TEXT NOT NULL, inventory TEXT NOT NULL,
        enrolled_at TEXT NOT NULL, last_seen TEXT,
        status TEXT NOT NULL CHECK (status IN ('online', 'offline')),
        revoked_at TEXT, policy_ack BIGINT NOT NULL DEFAULT 0
      );
      CREATE TABLE vaults (
        name TEXT PRIMARY KEY,
        type TEXT NOT NULL CHECK (type IN ('server', 'disk', 'filesystem', 'hybrid')),
        location TEXT NOT NULL, capacity_bytes BIGINT
      );
      CREATE TABLE resources (
        name TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL REFERENCES agents (agent_id),
        vault TEXT NOT NULL REFERENCES vaults (name),
        disks TEXT NOT NULL
      );
      CREATE INDEX resources_by_agent ON resources (agent_id);
      CREATE INDEX resources_by_vault ON resources (vault);
      CREATE TABLE policies (
        name TEXT PRIMARY KEY, enabled BOOLEAN NOT NULL, trigger TEXT NOT NULL, retention TEXT NOT NULL
      );
      CREATE TABLE policy_vaults (
        policy TEXT NOT NULL REFERENCES policies (name) ON DELETE CASCADE,
        vault TEXT NOT NULL REFERENCES vaults (name),
        PRIMARY KEY (policy, vault)
      );
      CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
      INSERT INTO counters (name, value) VALUES ('policy_version', 0);
      CREATE TABLE backups (
        id TEXT PRIMARY KEY, name TEXT NOT NULL,
        vault TEXT NOT NULL REFERENCES vaults (name),
        resource TEXT NOT NULL, agent_id TEXT,
        kind TEXT NOT NULL CHECK (kind IN ('full', 'incremental')),
        started_at TEXT NOT NULL, finished_at TEXT NOT NULL,
        bytes_read BIGINT NOT NULL, bytes_stored BIGINT NOT NULL, consistency TEXT NOT NULL,
        logical_bytes BIGINT, host TEXT,
        status TEXT NOT NULL CHECK (status IN ('available', 'deleted')),
        deleted_at TEXT
      );
      CREATE INDEX backups_newest ON backups (started_at DESC, id DESC);
      CREATE INDEX backups_by_vault ON backups (vault, started_at DESC, id DESC);
      CREATE INDEX backups_by_resource ON backups (resource, started_at DESC, id DESC);
      CREATE INDEX backups_by_agent ON backups (agent_id, started_at DESC, id DESC);
      CREATE TABLE commands (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        command_id TEXT NOT NULL UNIQUE,
        agent_id TEXT NOT NULL REFERENCES agents (agent_id),
        action TEXT NOT NULL, args TEXT NOT NULL, created_at TEXT NOT NULL,
        completed_at TEXT, result TEXT
      );
      CREATE INDEX commands_pending ON commands (agent_id, seq) WHERE completed_at IS NULL;
      CREATE INDEX commands_newest ON commands (created_at DESC, command_id DESC);
      CREATE TABLE job_results (
        agent_id TEXT NOT NULL REFERENCES agents (agent_id),
        job_id TEXT NOT NULL,
        command_id TEXT,
        status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'cancelled')),
        backup_id TEXT, error_code TEXT, error_message TEXT,
        received_at TEXT NOT NULL,
        PRIMARY KEY (agent_id, job_id)
      );
      CREATE INDEX job_results_newest ON job_results (received_at DESC, agent_id DESC, job_id DESC);
      CREATE TABLE sync_parts (
        agent_id TEXT NOT NULL, sync_id TEXT NOT NULL, part INTEGER NOT NULL,
        vault TEXT NOT NULL, last BOOLEAN NOT NULL, backups TEXT NOT NULL,
        PRIMARY KEY (agent_id, sync_id, part)
      );
      CREATE TABLE syncs_done (
        agent_id TEXT NOT NULL, sync_id TEXT NOT NULL, vault TEXT NOT NULL, done_at TEXT NOT NULL,
        PRIMARY KEY (agent_id, sync_id)
      );
    `,
  },
];

export const POSTGRES_SCHEMA_VERSION = POSTGRES_MIGRATIONS[POSTGRES_MIGRATIONS.length - 1].version;

/** The channel every instance LISTENs on; payloads are CatalogEvents as JSON. */
export const NOTICE_CHANNEL = 'cairn_catalog';
/** The application_name of each instance's notice connection (pg_stat_activity shows it). */
export const NOTICE_APPLICATION = 'cairn-control-plane-notices';

/** Keys of Cairn's advisory locks (the two-int form): one class for migrations, one for syncs. */
const LOCK_CLASS = 0x43a1;
const MIGRATION_LOCK = 1;
const SYNC_LOCK_CLASS = 0x43a2;

/** How often a transaction that met a serialization failure or deadlock is tried again before BUSY. */
const RETRIES = 5;

const INT8_OID = 20;

/** int8 (BIGINT, COUNT, SUM) as a JavaScript number: every stored integer is a safe integer. */
const types = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === INT8_OID ? (value: string) => Number(value) : pg.types.getTypeParser(oid, format)) as pg.CustomTypesConfig['getTypeParser'],
};

export interface PostgresCatalogOptions {
  /** Most connections this instance opens for calls (one more is used for notices). Default 10. */
  maxConnections?: number;
  /** How long opening waits for the server. Default 10 s. */
  connectTimeoutMs?: number;
  /**
   * How long a call waits for a lock another transaction holds before failing with BUSY (retryable),
   * as SQLite's busy timeout. Default 5 s.
   */
  lockTimeoutMs?: number;
}

type Row = Record<string, unknown>;

/** The statements a transaction runs. */
interface Tx {
  rows<T = Row>(sql: string, params?: unknown[]): Promise<T[]>;
  one<T = Row>(sql: string, params?: unknown[]): Promise<T | undefined>;
  /** Rows changed (or returned). */
  count(sql: string, params?: unknown[]): Promise<number>;
  notify(event: CatalogEvent): Promise<void>;
}

type Mode = 'write' | 'snapshot';

export class PostgresCatalog implements Catalog {
  private readonly events = new EventEmitter();
  private listener: pg.Client | undefined;
  private closed = false;
  private reconnectTimer: NodeJS.Timeout | undefined;
  /** Set once the first LISTEN succeeded: later successes are reconnects. */
  private listenedBefore = false;

  private constructor(
    private readonly pool: pg.Pool,
    private readonly config: pg.ClientConfig,
    /** The server and database, without the password: for messages. */
    readonly where: string,
  ) {}

  /**
   * Connects to the database at `url` (postgres:// or postgresql://), migrates it to
   * POSTGRES_SCHEMA_VERSION under an advisory lock (so instances starting together migrate once), and
   * starts listening for notices. Throws CairnError STORE_UNAVAILABLE when the server does not
   * answer, PERMISSION_DENIED for refused credentials, NOT_FOUND for a missing database, USAGE for an
   * unparsable URL, a database of a newer schema or one holding other tables; messages name the
   * server, never the password.
   */
  static async open(url: string, options: PostgresCatalogOptions = {}): Promise<PostgresCatalog> {
    try {
      new URL(url);
    } catch (err) {
      // Not repeated: it may hold a password.
      throw new CairnError('USAGE', 'the PostgreSQL database URL is not a valid URL; write it as postgresql://user:password@host:port/database', { cause: err });
    }
    const where = describeDatabase(url);
    const config: pg.ClientConfig = {
      connectionString: url,
      connectionTimeoutMillis: options.connectTimeoutMs ?? 10_000,
      application_name: 'cairn-control-plane',
      types,
    };
    const pool = new pg.Pool({ ...config, max: options.maxConnections ?? 10 });
    // An idle connection the server dropped: the pool discards it and the next call opens another.
    pool.on('error', () => {});
    const lockTimeout = Math.max(1, Math.floor(options.lockTimeoutMs ?? 5000));
    pool.on('connect', (client) => {
      client.query(`SET lock_timeout = ${lockTimeout}`).catch(() => {});
    });
    const catalog = new PostgresCatalog(pool, config, where);
    try {
      await catalog.migrate();
      await catalog.listen();
    } catch (err) {
      await catalog.close();
      throw translate(err, 'opening the catalog', where);
    }
    return catalog;
  }

  // Enrollment tokens

  async addEnrollmentToken(token: EnrollmentTokenInput): Promise<void> {
    const id = requiredText(token.id, 'enrollment token id');
    const params = [
      id,
      requiredText(token.secretHash, `secretHash of enrollment token ${id}`),
      timestamp(token.expiresAt, `expiresAt of enrollment token ${id}`),
      timestamp(token.createdAt, `createdAt of enrollment token ${id}`),
    ];
    await this.tx('adding an enrollment token', 'write', async (q) => {
      const added = await q.count(
        'INSERT INTO enrollment_tokens (id, secret_hash, expires_at, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING',
        params,
      );
      if (!added) throw new CairnError('ALREADY_EXISTS', `catalog: enrollment token ${id} exists already`);
    });
  }

  async getEnrollmentToken(id: string): Promise<EnrollmentToken | undefined> {
    const row = await this.tx('reading an enrollment token', 'snapshot', (q) => q.one('SELECT * FROM enrollment_tokens WHERE id = $1', [id]));
    return row && tokenFrom(row);
  }

  async useEnrollmentToken(id: string, now: Timestamp): Promise<EnrollmentToken | undefined> {
    const at = timestamp(now, 'now');
    // One statement: a concurrent caller waits for the row lock, then finds used_at set.
    const row = await this.tx('using an enrollment token', 'write', (q) =>
      q.one('UPDATE enrollment_tokens SET used_at = $2 WHERE id = $1 AND used_at IS NULL AND expires_at > $2 RETURNING *', [id, at]),
    );
    return row && { ...tokenFrom(row), usedAt: null };
  }

  // Agents

  async addAgent(agent: AgentInput): Promise<void> {
    const agentId = requiredText(agent.agentId, 'agentId');
    const params = [
      agentId,
      requiredText(agent.credentialHash, `credentialHash of agent ${agentId}`),
      requiredText(agent.hostname, `hostname of agent ${agentId}`),
      jsonText(agent.inventory, `inventory of agent ${agentId}`),
      timestamp(agent.enrolledAt, `enrolledAt of agent ${agentId}`),
    ];
    await this.tx('adding an agent', 'write', async (q) => {
      const added = await q.count(
        `INSERT INTO agents (agent_id, credential_hash, hostname, inventory, enrolled_at, status)
         VALUES ($1, $2, $3, $4, $5, 'offline') ON CONFLICT (agent_id) DO NOTHING`,
        params,
      );
      if (!added) throw new CairnError('ALREADY_EXISTS', `catalog: agent ${agentId} exists already`);
    });
  }

  async getAgent(agentId: string): Promise<AgentRecord | undefined> {
    const row = await this.tx('reading an agent', 'snapshot', (q) => q.one('SELECT * FROM agents WHERE agent_id = $1', [agentId]));
    return row && agentFrom(row);
  }

  async listAgents(): Promise<AgentRecord[]> {
    const rows = await this.tx('listing agents', 'snapshot', (q) => q.rows('SELECT * FROM agents ORDER BY enrolled_at, agent_id'));
    return rows.map(agentFrom);
  }

  async touchAgent(agentId: string, lastSeen: Timestamp, status: AgentStatus): Promise<void> {
    const seen = timestamp(lastSeen, `lastSeen of agent ${agentId}`);
    if (status !== 'online' && status !== 'offline') {
      throw new CairnError('USAGE', `catalog: status of agent ${agentId} must be online or offline, got ${JSON.stringify(status)}`);
    }
    await this.tx('recording agent contact', 'write', async (q) =>
      mustChange(await q.count('UPDATE agents SET last_seen = $2, status = $3 WHERE agent_id = $1', [agentId, seen, status]), `agent ${agentId}`),
    );
  }

  async revokeAgent(agentId: string, at: Timestamp): Promise<void> {
    const when = timestamp(at, `revocation time of agent ${agentId}`);
    await this.tx('revoking an agent', 'write', async (q) =>
      mustChange(await q.count('UPDATE agents SET revoked_at = COALESCE(revoked_at, $2) WHERE agent_id = $1', [agentId, when]), `agent ${agentId}`),
    );
  }

  async setAgentPolicyAck(agentId: string, version: number): Promise<void> {
    nonNegativeInteger(version, `policy version acknowledged by agent ${agentId}`);
    await this.tx('recording a policy ack', 'write', async (q) => {
      // The version only grows, so a concurrent change cannot make this check wrong.
      const current = await currentPolicyVersion(q);
      if (version > current) {
        throw new CairnError('USAGE', `catalog: agent ${agentId} acknowledged policy version ${version}, but the newest version is ${current}`);
      }
      mustChange(await q.count('UPDATE agents SET policy_ack = GREATEST(policy_ack, $2) WHERE agent_id = $1', [agentId, version]), `agent ${agentId}`);
    });
  }

  // Vaults

  async upsertVault(vault: VaultInput): Promise<void> {
    const v = vaultInput(vault);
    await this.tx('saving a vault', 'write', (q) =>
      q.count(
        `INSERT INTO vaults (name, type, location, capacity_bytes) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO UPDATE SET type = excluded.type, location = excluded.location, capacity_bytes = excluded.capacity_bytes`,
        [v.name, v.type, v.location, v.capacityBytes],
      ),
    );
  }

  async listVaults(): Promise<VaultRecord[]> {
    return this.tx('listing vaults', 'snapshot', async (q) => {
      const vaults = await q.rows<{ name: string; type: VaultRecord['type']; location: string; capacity_bytes: number | null; used: number; count: number }>(
        `SELECT v.name, v.type, v.location, v.capacity_bytes, COALESCE(SUM(b.bytes_stored), 0)::BIGINT AS used, COUNT(b.id) AS count
         FROM vaults v LEFT JOIN backups b ON b.vault = v.name AND b.status = 'available'
         GROUP BY v.name ORDER BY v.name`,
      );
      const resources = groupBy(await q.rows<{ vault: string; name: string }>('SELECT vault, name FROM resources ORDER BY name'), 'vault', 'name');
      const policies = groupBy(await q.rows<{ vault: string; policy: string }>('SELECT vault, policy FROM policy_vaults ORDER BY policy'), 'vault', 'policy');
      return vaults.map((v) => ({
        name: v.name,
        type: v.type,
        location: v.location,
        capacityBytes: v.capacity_bytes,
        usedBytes: v.used,
        backupCount: v.count,
        resources: resources.get(v.name) ?? [],
        policies: policies.get(v.name) ?? [],
      }));
    });
  }

  async ensureVault(name: string): Promise<void> {
    const vault = requiredText(name, 'vault name');
    await this.tx('ensuring a vault', 'write', (q) => ensureVaultRow(q, vault));
  }

  // Resources

  async upsertResource(resource: ResourceRecord): Promise<void> {
    const name = requiredText(resource.name, 'resource name');
    const agentId = requiredText(resource.agentId, `agentId of resource ${name}`);
    const vault = requiredText(resource.vault, `vault of resource ${name}`);
    const disks = JSON.stringify(stringList(resource.disks, `disks of resource ${name}`));
    await this.tx('saving a resource', 'write', async (q) => {
      await mustExist(q, 'agents', 'agent_id', agentId, `agent ${agentId} of resource ${name}`);
      await mustExist(q, 'vaults', 'name', vault, `vault ${vault} of resource ${name}`);
      await upsertResourceRow(q, name, agentId, vault, disks);
    });
  }

  async listResources(filter: ResourceFilter = {}): Promise<ResourceRecord[]> {
    const w = new Where();
    if (filter.agentId !== undefined) w.add('agent_id =', filter.agentId);
    if (filter.vault !== undefined) w.add('vault =', filter.vault);
    const rows = await this.tx('listing resources', 'snapshot', (q) =>
      q.rows<{ name: string; agent_id: string; vault: string; disks: string }>(`SELECT * FROM resources ${w.sql()} ORDER BY name`, w.params),
    );
    return rows.map((r) => ({ name: r.name, agentId: r.agent_id, vault: r.vault, disks: JSON.parse(r.disks) as string[] }));
  }

  async replaceAgentResources(agentId: string, resources: Omit<ResourceRecord, 'agentId'>[]): Promise<ResourceConflict[]> {
    const rows = agentResources(requiredText(agentId, 'agentId'), resources).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return this.tx("replacing an agent's resources", 'write', async (q) => {
      // The agent's row lock serialises its reports.
      if (!(await q.one('SELECT 1 FROM agents WHERE agent_id = $1 FOR UPDATE', [agentId]))) {
        throw new CairnError('NOT_FOUND', `catalog: agent ${agentId} does not exist`);
      }
      await q.count('DELETE FROM resources WHERE agent_id = $1 AND NOT (name = ANY ($2::TEXT[]))', [agentId, rows.map((r) => r.name)]);
      const conflicts: ResourceConflict[] = [];
      for (const r of rows) {
        await ensureVaultRow(q, r.vault);
        // One statement decides and writes: a concurrent report of the same name waits on the row,
        // then re-checks the condition. Another unrevoked agent's resource stays its own.
        const stored = await q.count(
          `INSERT INTO resources (name, agent_id, vault, disks) VALUES ($1, $2, $3, $4)
           ON CONFLICT (name) DO UPDATE SET agent_id = excluded.agent_id, vault = excluded.vault, disks = excluded.disks
           WHERE resources.agent_id = excluded.agent_id
              OR EXISTS (SELECT 1 FROM agents a WHERE a.agent_id = resources.agent_id AND a.revoked_at IS NOT NULL)`,
          [r.name, agentId, r.vault, JSON.stringify(r.disks)],
        );
        if (stored === 0) {
          const holder = await q.one<{ agent_id: string }>('SELECT agent_id FROM resources WHERE name = $1', [r.name]);
          conflicts.push({ name: r.name, heldBy: holder?.agent_id ?? 'unknown' });
        }
      }
      return conflicts;
    });
  }

  // Policies: each change locks the policy_version row first, so changes run one at a time.

  async createPolicy(policy: PolicyRecord): Promise<number> {
    const p = policyRecord(policy);
    return this.tx('creating a policy', 'write', async (q) => {
      await lockPolicyVersion(q);
      if (await q.one('SELECT 1 FROM policies WHERE name = $1', [p.name])) {
        throw new CairnError('ALREADY_EXISTS', `catalog: policy ${p.name} exists already`);
      }
      for (const vault of p.vaults) await mustExist(q, 'vaults', 'name', vault, `vault ${vault} of policy ${p.name}`);
      await q.count('INSERT INTO policies (name, enabled, trigger, retention) VALUES ($1, $2, $3, $4)', [
        p.name,
        p.enabled,
        JSON.stringify(p.trigger),
        JSON.stringify(p.retention),
      ]);
      for (const vault of p.vaults) await q.count('INSERT INTO policy_vaults (policy, vault) VALUES ($1, $2)', [p.name, vault]);
      return bumpPolicyVersion(q);
    });
  }

  async updatePolicy(name: string, changes: PolicyChanges): Promise<number> {
    return this.tx('updating a policy', 'write', async (q) => {
      const current = await lockPolicyVersion(q);
      const old = await readPolicy(q, name);
      if (!old) throw new CairnError('NOT_FOUND', `catalog: policy ${name} does not exist`);
      const defined = Object.fromEntries(Object.entries(changes).filter(([, v]) => v !== undefined)) as PolicyChanges;
      const p = policyRecord({ ...old, ...defined, name });
      if (canonicalJson(p as unknown as JsonValue) === canonicalJson(old as unknown as JsonValue)) return current;
      for (const vault of p.vaults) await mustExist(q, 'vaults', 'name', vault, `vault ${vault} of policy ${name}`);
      await q.count('UPDATE policies SET enabled = $2, trigger = $3, retention = $4 WHERE name = $1', [
        name,
        p.enabled,
        JSON.stringify(p.trigger),
        JSON.stringify(p.retention),
      ]);
      await q.count('DELETE FROM policy_vaults WHERE policy = $1', [name]);
      for (const vault of p.vaults) await q.count('INSERT INTO policy_vaults (policy, vault) VALUES ($1, $2)', [name, vault]);
      return bumpPolicyVersion(q);
    });
  }

  async deletePolicy(name: string): Promise<number> {
    return this.tx('deleting a policy', 'write', async (q) => {
      await lockPolicyVersion(q);
      mustChange(await q.count('DELETE FROM policies WHERE name = $1', [name]), `policy ${name}`);
      return bumpPolicyVersion(q);
    });
  }

  async getPolicy(name: string): Promise<PolicyRecord | undefined> {
    return this.tx('reading a policy', 'snapshot', (q) => readPolicy(q, name));
  }

  async listPolicies(): Promise<PolicyRecord[]> {
    return this.tx('listing policies', 'snapshot', async (q) => {
      const vaults = groupBy(await q.rows<{ policy: string; vault: string }>('SELECT policy, vault FROM policy_vaults ORDER BY vault'), 'policy', 'vault');
      return (await q.rows('SELECT * FROM policies ORDER BY name')).map((row) => policyFrom(row, vaults.get(row.name as string) ?? []));
    });
  }

  async bindPolicy(policy: string, vault: string): Promise<number> {
    return this.tx('binding a policy', 'write', async (q) => {
      const current = await lockPolicyVersion(q);
      await mustExist(q, 'policies', 'name', policy, `policy ${policy}`);
      await mustExist(q, 'vaults', 'name', vault, `vault ${vault}`);
      const added = await q.count('INSERT INTO policy_vaults (policy, vault) VALUES ($1, $2) ON CONFLICT DO NOTHING', [policy, vault]);
      return added ? bumpPolicyVersion(q) : current;
    });
  }

  async unbindPolicy(policy: string, vault: string): Promise<number> {
    return this.tx('unbinding a policy', 'write', async (q) => {
      const current = await lockPolicyVersion(q);
      await mustExist(q, 'policies', 'name', policy, `policy ${policy}`);
      const removed = await q.count('DELETE FROM policy_vaults WHERE policy = $1 AND vault = $2', [policy, vault]);
      return removed ? bumpPolicyVersion(q) : current;
    });
  }

  async policyVersion(): Promise<number> {
    return this.tx('reading the policy version', 'snapshot', (q) => currentPolicyVersion(q));
  }

  // Backups

  async recordBackup(backup: BackupInput, options: RecordBackupOptions = {}): Promise<void> {
    const b = backupInput(backup);
    await this.tx('recording a backup', 'write', async (q) => {
      // FOR SHARE: backups of one vault may be recorded together, but not while its backups are replaced.
      if (!(await q.one('SELECT 1 FROM vaults WHERE name = $1 FOR SHARE', [b.vault]))) {
        throw new CairnError('NOT_FOUND', `catalog: vault ${b.vault} of backup ${b.id} does not exist`);
      }
      await recordBackupRow(q, b, options.keepStatus === true);
    });
  }

  async getBackup(id: string): Promise<BackupRecord | undefined> {
    const row = await this.tx('reading a backup', 'snapshot', (q) => q.one('SELECT * FROM backups WHERE id = $1', [id]));
    return row && backupFrom(row);
  }

  async listBackups(filter: BackupFilter = {}): Promise<BackupRecord[]> {
    const w = new Where();
    if (filter.vault !== undefined) w.add('vault =', filter.vault);
    if (filter.resource !== undefined) w.add('resource =', filter.resource);
    if (filter.agentId !== undefined) w.add('agent_id =', filter.agentId);
    if (filter.kind !== undefined) w.add('kind =', oneOfFilter(filter.kind, BACKUP_KINDS, 'kind'));
    if (filter.status !== undefined) w.add('status =', oneOfFilter(filter.status, BACKUP_STATUSES, 'status'));
    if (filter.from !== undefined) w.add('started_at >=', timestamp(filter.from, 'filter from'));
    if (filter.to !== undefined) w.add('started_at <', timestamp(filter.to, 'filter to'));
    const page = pageOf(filter);
    const rows = await this.tx('listing backups', 'snapshot', (q) =>
      q.rows(`SELECT * FROM backups ${w.sql()} ORDER BY started_at DESC, id DESC ${w.page(page)}`, w.params),
    );
    return rows.map(backupFrom);
  }

  async markBackupDeleted(id: string, at: Timestamp): Promise<void> {
    const when = timestamp(at, `deletion time of backup ${id}`);
    await this.tx('marking a backup deleted', 'write', async (q) =>
      mustChange(
        await q.count(
          `UPDATE backups SET deleted_at = CASE WHEN status = 'deleted' THEN deleted_at ELSE $2 END, status = 'deleted' WHERE id = $1`,
          [id, when],
        ),
        `backup ${id}`,
      ),
    );
  }

  async replaceVaultBackups(vault: string, backups: ScannedBackup[], at: Timestamp): Promise<ReplaceSummary> {
    const when = timestamp(at, 'scan time');
    const scanned = backups.map((b) => backupInput({ ...b, status: 'available' }));
    for (const b of scanned) {
      if (b.vault !== vault) throw new CairnError('USAGE', `catalog: the scan of vault ${vault} lists backup ${b.id} of vault ${b.vault}`);
    }
    return this.tx('replacing the backups of a vault', 'write', async (q) => {
      if (!(await lockVault(q, vault))) throw new CairnError('NOT_FOUND', `catalog: vault ${vault} does not exist`);
      return replaceVaultRows(q, vault, scanned, when);
    });
  }

  // Commands

  async addCommand(command: CommandInput): Promise<void> {
    const commandId = requiredText(command.commandId, 'commandId');
    const c = {
      agentId: requiredText(command.agentId, `agentId of command ${commandId}`),
      action: requiredText(command.action, `action of command ${commandId}`),
      args: jsonText(command.args, `args of command ${commandId}`),
      createdAt: timestamp(command.createdAt, `createdAt of command ${commandId}`),
    };
    await this.tx('adding a command', 'write', async (q) => {
      const sameAsStored = async (): Promise<boolean> => {
        const old = await q.one<{ agent_id: string; action: string; args: string }>('SELECT agent_id, action, args FROM commands WHERE command_id = $1', [commandId]);
        if (!old) return false;
        const same =
          old.agent_id === c.agentId &&
          old.action === c.action &&
          canonicalJson(JSON.parse(old.args) as JsonValue) === canonicalJson(JSON.parse(c.args) as JsonValue);
        if (same) return true;
        throw new CairnError(
          'ALREADY_EXISTS',
          `catalog: command ${commandId} exists already with another agent, action or arguments (${old.action} for agent ${old.agent_id})`,
        );
      };
      if (await sameAsStored()) return;
      await mustExist(q, 'agents', 'agent_id', c.agentId, `agent ${c.agentId} of command ${commandId}`);
      const added = await q.count(
        'INSERT INTO commands (command_id, agent_id, action, args, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (command_id) DO NOTHING',
        [commandId, c.agentId, c.action, c.args, c.createdAt],
      );
      // Not added: another instance added the id meanwhile; it must be the same command.
      if (!added) await sameAsStored();
      else await q.notify({ kind: 'commands', agentId: c.agentId });
    });
  }

  async getCommand(commandId: string): Promise<CommandRecord | undefined> {
    const row = await this.tx('reading a command', 'snapshot', (q) => q.one('SELECT * FROM commands WHERE command_id = $1', [commandId]));
    return row && commandFrom(row);
  }

  async pendingCommands(agentId: string): Promise<CommandRecord[]> {
    const rows = await this.tx('listing pending commands', 'snapshot', (q) =>
      q.rows('SELECT * FROM commands WHERE agent_id = $1 AND completed_at IS NULL ORDER BY seq', [agentId]),
    );
    return rows.map(commandFrom);
  }

  async listCommands(filter: CommandFilter = {}): Promise<CommandRecord[]> {
    const w = new Where();
    if (filter.agentId !== undefined) w.add('agent_id =', filter.agentId);
    if (filter.pending !== undefined) w.raw(booleanFilter(filter.pending, 'pending') ? 'completed_at IS NULL' : 'completed_at IS NOT NULL');
    const page = pageOf(filter);
    const rows = await this.tx('listing commands', 'snapshot', (q) =>
      q.rows(`SELECT * FROM commands ${w.sql()} ORDER BY created_at DESC, command_id DESC ${w.page(page)}`, w.params),
    );
    return rows.map(commandFrom);
  }

  async completeCommand(commandId: string, result: JsonValue, at: Timestamp): Promise<boolean> {
    const text = jsonText(result, `result of command ${commandId}`);
    const when = timestamp(at, `completion time of command ${commandId}`);
    return this.tx('completing a command', 'write', async (q) => {
      if (await q.count('UPDATE commands SET completed_at = $2, result = $3 WHERE command_id = $1 AND completed_at IS NULL', [commandId, when, text])) {
        return true;
      }
      await mustExist(q, 'commands', 'command_id', commandId, `command ${commandId}`);
      return false;
    });
  }

  // Job results

  async recordJobResult(result: JobResultRecord): Promise<boolean> {
    const r = jobResultInput(result);
    return this.tx('recording a job result', 'write', async (q) => {
      await mustExist(q, 'agents', 'agent_id', r.agentId, `agent ${r.agentId} of job ${r.jobId}`);
      const added = await q.count(
        `INSERT INTO job_results (agent_id, job_id, command_id, status, backup_id, error_code, error_message, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (agent_id, job_id) DO NOTHING`,
        [r.agentId, r.jobId, r.commandId, r.status, r.backupId, r.errorCode, r.errorMessage, r.receivedAt],
      );
      return added > 0;
    });
  }

  async listJobResults(filter: JobResultFilter = {}): Promise<JobResultRecord[]> {
    const w = new Where();
    if (filter.agentId !== undefined) w.add('agent_id =', filter.agentId);
    if (filter.status !== undefined) w.add('status =', oneOfFilter(filter.status, JOB_STATUSES, 'status'));
    if (filter.from !== undefined) w.add('received_at >=', timestamp(filter.from, 'filter from'));
    if (filter.to !== undefined) w.add('received_at <', timestamp(filter.to, 'filter to'));
    const page = pageOf({ limit: filter.limit });
    const rows = await this.tx('listing job results', 'snapshot', (q) =>
      q.rows(`SELECT * FROM job_results ${w.sql()} ORDER BY received_at DESC, agent_id DESC, job_id DESC ${w.page(page)}`, w.params),
    );
    return rows.map(jobResultFrom);
  }

  // Catalog syncs

  async addSyncPart(part: SyncPartInput, at: Timestamp): Promise<ReplaceSummary | null> {
    const p = syncPartInput(part);
    const when = timestamp(at, 'sync time');
    const sync = `sync ${p.syncId} of agent ${p.agentId}`;
    return this.tx('storing a catalog sync part', 'write', async (q) => {
      // One sync's parts are stored one at a time, so exactly one of them sees the sync complete.
      await q.rows('SELECT pg_advisory_xact_lock($1, hashtext($2))', [SYNC_LOCK_CLASS, `${p.agentId}\n${p.syncId}`]);
      if (await q.one('SELECT 1 FROM syncs_done WHERE agent_id = $1 AND sync_id = $2', [p.agentId, p.syncId])) return null;
      const stored = await q.rows<{ part: number; vault: string; last: boolean; backups: string }>(
        'SELECT part, vault, last, backups FROM sync_parts WHERE agent_id = $1 AND sync_id = $2 ORDER BY part',
        [p.agentId, p.syncId],
      );
      checkSyncPart(p, stored, sync);
      if (stored.some((s) => s.part === p.part)) return null;
      await q.count('INSERT INTO sync_parts (agent_id, sync_id, part, vault, last, backups) VALUES ($1, $2, $3, $4, $5, $6)', [
        p.agentId,
        p.syncId,
        p.part,
        p.vault,
        p.last,
        JSON.stringify(p.backups),
      ]);
      const parts = [...stored, { part: p.part, last: p.last, backups: JSON.stringify(p.backups) }];
      const last = parts.find((s) => s.last);
      if (!last || parts.length !== last.part + 1) return null;
      await ensureVaultRow(q, p.vault);
      await lockVault(q, p.vault);
      const union = parts.sort((a, b) => a.part - b.part).flatMap((s) => JSON.parse(s.backups) as CheckedBackup[]);
      const summary = await replaceVaultRows(q, p.vault, union, when);
      await q.count('DELETE FROM sync_parts WHERE agent_id = $1 AND sync_id = $2', [p.agentId, p.syncId]);
      await q.count('INSERT INTO syncs_done (agent_id, sync_id, vault, done_at) VALUES ($1, $2, $3, $4)', [p.agentId, p.syncId, p.vault, when]);
      return summary;
    });
  }

  // Change notices

  watch(listener: (event: CatalogEvent) => void): () => void {
    const safe = (event: CatalogEvent) => {
      try {
        listener(event);
      } catch {
        // A listener's failure is the listener's: the change it hears about is committed already.
      }
    };
    this.events.on('notice', safe);
    return () => this.events.off('notice', safe);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    const listener = this.listener;
    this.listener = undefined;
    await listener?.end().catch(() => {});
    await this.pool.end().catch(() => {});
  }

  // Internals

  /**
   * Runs `fn` in one transaction on a pooled connection: 'write' at READ COMMITTED (callers lock
   * what they read to decide), 'snapshot' at REPEATABLE READ READ ONLY. Serialization failures and
   * deadlocks roll back and run `fn` again, up to RETRIES times, then BUSY; any other error rolls
   * back and comes out as a CairnError.
   */
  private async tx<T>(what: string, mode: Mode, fn: (q: Tx) => Promise<T>): Promise<T> {
    if (this.closed) throw new CairnError('INTERNAL', `${what}: the catalog ${this.where} is closed`);
    for (let attempt = 0; ; attempt++) {
      let client: pg.PoolClient;
      try {
        client = await this.pool.connect();
      } catch (err) {
        throw translate(err, what, this.where);
      }
      let broken = false;
      try {
        await client.query(mode === 'write' ? 'BEGIN' : 'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
        const result = await fn(txOn(client));
        await client.query('COMMIT');
        return result;
      } catch (err) {
        await client.query('ROLLBACK').catch(() => {
          broken = true;
        });
        const code = (err as { code?: unknown }).code;
        if ((code === '40001' || code === '40P01') && attempt < RETRIES) {
          await new Promise((r) => setTimeout(r, 5 * 2 ** attempt * Math.random()));
          continue;
        }
        throw translate(err, what, this.where);
      } finally {
        client.release(broken);
      }
    }
  }

  /** Brings the database to POSTGRES_SCHEMA_VERSION in one transaction, under Cairn's migration lock. */
  private async migrate(): Promise<void> {
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      // Another instance migrating may take a while: wait for it longer than for a call's lock.
      await client.query(`SET LOCAL lock_timeout = '60s'`);
      await client.query('SELECT pg_advisory_xact_lock($1, $2)', [LOCK_CLASS, MIGRATION_LOCK]);
      const hasVersionTable = (await client.query(`SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'schema_version'`)).rowCount;
      if (!hasVersionTable) {
        const tables = (await client.query<{ tablename: string }>('SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename')).rows;
        if (tables.length) {
          throw new CairnError(
            'USAGE',
            `the database ${this.where} holds tables but no Cairn catalog (${tables.map((t) => t.tablename).join(', ')}, and no schema_version); give the catalog a database of its own`,
          );
        }
        await client.query('CREATE TABLE schema_version (version INTEGER NOT NULL)');
        await client.query('INSERT INTO schema_version (version) VALUES (0)');
      }
      const found = (await client.query<{ version: number }>('SELECT version FROM schema_version')).rows[0]?.version ?? 0;
      if (found > POSTGRES_SCHEMA_VERSION) {
        // USAGE, as for SQLite: nothing is damaged; run the newer Cairn or use another database.
        throw new CairnError(
          'USAGE',
          `the catalog database ${this.where} has schema version ${found}, written by a newer Cairn; this Cairn knows versions up to ${POSTGRES_SCHEMA_VERSION}. ` +
            'Run the newer Cairn control plane, or give this one another database; the database was left unchanged',
        );
      }
      for (const m of POSTGRES_MIGRATIONS) {
        if (m.version <= found) continue;
        await client.query(m.sql);
        await client.query('UPDATE schema_version SET version = $1', [m.version]);
      }
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      client.release();
    }
  }

  /** Opens the notice connection and LISTENs; when it drops, tries again every second until closed. */
  private async listen(): Promise<void> {
    const client = new pg.Client({ ...this.config, application_name: NOTICE_APPLICATION });
    const dropped = () => {
      if (this.listener !== client) return;
      this.listener = undefined;
      client.end().catch(() => {});
      this.listenLater();
    };
    client.on('error', dropped);
    client.on('end', dropped);
    client.on('notification', (msg) => {
      const event = parseNotice(msg.payload);
      if (event) this.events.emit('notice', event);
    });
    this.listener = client;
    try {
      await client.connect();
      await client.query(`LISTEN ${NOTICE_CHANNEL}`);
    } catch (err) {
      if (this.listener === client) this.listener = undefined;
      await client.end().catch(() => {});
      throw err;
    }
    if (this.closed) {
      await client.end().catch(() => {});
      return;
    }
    // Notices sent while no connection listened are lost: after a reconnect, tell watchers that
    // policies may have changed (pushing the latest is idempotent per connection). Lost `commands`
    // notices are covered by the server, which sends pending commands on every heartbeat.
    if (this.listenedBefore) this.events.emit('notice', { kind: 'policies' } satisfies CatalogEvent);
    this.listenedBefore = true;
  }

  private listenLater(): void {
    clearTimeout(this.reconnectTimer);
    if (this.closed) return;
    this.reconnectTimer = setTimeout(() => {
      if (!this.closed && this.listener === undefined) this.listen().catch(() => this.listenLater());
    }, 1000);
    this.reconnectTimer.unref();
  }
}

function txOn(client: pg.PoolClient): Tx {
  return {
    rows: async <T>(sql: string, params: unknown[] = []) => (await client.query(sql, params)).rows as T[],
    one: async <T>(sql: string, params: unknown[] = []) => (await client.query(sql, params)).rows[0] as T | undefined,
    count: async (sql: string, params: unknown[] = []) => (await client.query(sql, params)).rowCount ?? 0,
    notify: async (event: CatalogEvent) => {
      await client.query('SELECT pg_notify($1, $2)', [NOTICE_CHANNEL, JSON.stringify(event)]);
    },
  };
}

function parseNotice(payload: string | undefined): CatalogEvent | undefined {
  try {
    const e = JSON.parse(payload ?? '') as CatalogEvent;
    if (e.kind === 'policies') return { kind: 'policies' };
    if (e.kind === 'commands' && typeof e.agentId === 'string') return { kind: 'commands', agentId: e.agentId };
  } catch {
    // Not one of ours: someone else NOTIFYs on the channel.
  }
  return undefined;
}

/** WHERE clauses with numbered parameters. */
class Where {
  readonly params: unknown[] = [];
  private readonly clauses: string[] = [];

  add(columnAndOperator: string, value: unknown): void {
    this.params.push(value);
    this.clauses.push(`${columnAndOperator} $${this.params.length}`);
  }

  raw(clause: string): void {
    this.clauses.push(clause);
  }

  sql(): string {
    return this.clauses.length ? `WHERE ${this.clauses.join(' AND ')}` : '';
  }

  /** LIMIT (null: all) and OFFSET, as parameters. */
  page(p: { limit: number | null; offset: number }): string {
    this.params.push(p.limit, p.offset);
    return `LIMIT $${this.params.length - 1} OFFSET $${this.params.length}`;
  }
}

function pageOf(filter: { limit?: number; offset?: number }): { limit: number | null; offset: number } {
  return {
    limit: filter.limit === undefined ? null : nonNegativeInteger(filter.limit, 'filter limit'),
    offset: filter.offset === undefined ? 0 : nonNegativeInteger(filter.offset, 'filter offset'),
  };
}

async function mustExist(q: Tx, table: string, column: string, value: string, what: string): Promise<void> {
  if (!(await q.one(`SELECT 1 FROM ${table} WHERE ${column} = $1`, [value]))) throw new CairnError('NOT_FOUND', `catalog: ${what} does not exist`);
}

function mustChange(count: number, what: string): void {
  if (count === 0) throw new CairnError('NOT_FOUND', `catalog: ${what} does not exist`);
}

async function ensureVaultRow(q: Tx, name: string): Promise<void> {
  await q.count(`INSERT INTO vaults (name, type, location, capacity_bytes) VALUES ($1, 'server', '', NULL) ON CONFLICT (name) DO NOTHING`, [name]);
}

/** Locks the vault's row for replacing its backups; false if there is no such vault. */
async function lockVault(q: Tx, name: string): Promise<boolean> {
  return (await q.one('SELECT 1 FROM vaults WHERE name = $1 FOR UPDATE', [name])) !== undefined;
}

async function upsertResourceRow(q: Tx, name: string, agentId: string, vault: string, disks: string): Promise<void> {
  await q.count(
    `INSERT INTO resources (name, agent_id, vault, disks) VALUES ($1, $2, $3, $4)
     ON CONFLICT (name) DO UPDATE SET agent_id = excluded.agent_id, vault = excluded.vault, disks = excluded.disks`,
    [name, agentId, vault, disks],
  );
}

async function currentPolicyVersion(q: Tx): Promise<number> {
  return (await q.one<{ value: number }>(`SELECT value FROM counters WHERE name = 'policy_version'`))!.value;
}

/** Locks the version row, so policy changes run one at a time; returns the current version. */
async function lockPolicyVersion(q: Tx): Promise<number> {
  return (await q.one<{ value: number }>(`SELECT value FROM counters WHERE name = 'policy_version' FOR UPDATE`))!.value;
}

async function bumpPolicyVersion(q: Tx): Promise<number> {
  const version = (await q.one<{ value: number }>(`UPDATE counters SET value = value + 1 WHERE name = 'policy_version' RETURNING value`))!.value;
  await q.notify({ kind: 'policies' });
  return version;
}

async function readPolicy(q: Tx, name: string): Promise<PolicyRecord | undefined> {
  const row = await q.one('SELECT * FROM policies WHERE name = $1', [name]);
  if (!row) return undefined;
  return policyFrom(row, (await q.rows<{ vault: string }>('SELECT vault FROM policy_vaults WHERE policy = $1 ORDER BY vault', [name])).map((r) => r.vault));
}

/**
 * Inserts or updates one backup by the rules of Catalog.recordBackup, inside the caller's
 * transaction; returns the record as it was before (undefined: new). A concurrent first record of
 * the same id waits on the unique index, then finds the row and follows the rules for a repeat.
 */
async function recordBackupRow(q: Tx, b: CheckedBackup, keepStatus = false): Promise<BackupRecord | undefined> {
  const added = await q.count(
    `INSERT INTO backups (id, name, vault, resource, agent_id, kind, started_at, finished_at, bytes_read, bytes_stored,
       consistency, logical_bytes, host, status, deleted_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) ON CONFLICT (id) DO NOTHING`,
    [b.id, b.name, b.vault, b.resource, b.agentId, b.kind, b.startedAt, b.finishedAt, b.bytesRead, b.bytesStored, b.consistency, b.logicalBytes, b.host, b.status, b.deletedAt],
  );
  if (added) return undefined;
  const before = backupFrom((await q.one('SELECT * FROM backups WHERE id = $1 FOR UPDATE', [b.id]))!);
  const differ = BACKUP_IDENTITY.filter((f) => before[f] !== b[f]);
  if (differ.length) {
    throw new CairnError(
      'ALREADY_EXISTS',
      `catalog: backup ${b.id} is recorded already with another ${differ.join(', ')} ` +
        `(${differ.map((f) => `${f} ${before[f]}, not ${b[f]}`).join('; ')}); a backup id names one backup only`,
    );
  }
  const status = keepStatus ? before.status : b.status;
  const deletedAt = keepStatus
    ? before.deletedAt
    : b.status === 'deleted' ? (before.status === 'deleted' ? before.deletedAt : null) ?? b.deletedAt : null;
  await q.count(
    `UPDATE backups SET agent_id = COALESCE(agent_id, $2), logical_bytes = COALESCE(logical_bytes, $3), host = COALESCE(host, $4),
       status = $5, deleted_at = $6 WHERE id = $1`,
    [b.id, b.agentId, b.logicalBytes, b.host, status, deletedAt],
  );
  return before;
}

/** replaceVaultBackups inside the caller's transaction, which holds the vault's row lock. */
async function replaceVaultRows(q: Tx, vault: string, scanned: CheckedBackup[], when: Timestamp): Promise<ReplaceSummary> {
  const summary: ReplaceSummary = { added: 0, restored: 0, deleted: 0 };
  for (const b of scanned) {
    const before = await recordBackupRow(q, b);
    if (before === undefined) summary.added++;
    else if (before.status === 'deleted') summary.restored++;
  }
  summary.deleted = await q.count(
    `UPDATE backups SET status = 'deleted', deleted_at = $2 WHERE vault = $1 AND status = 'available' AND NOT (id = ANY ($3::TEXT[]))`,
    [vault, when, [...new Set(scanned.map((b) => b.id))]],
  );
  return summary;
}

/** postgresql://user@host:port/database, never the password: what messages name. */
export function describeDatabase(url: string): string {
  try {
    const u = new URL(url);
    const socket = u.searchParams.get('host');
    const host = u.hostname ? `${u.hostname}${u.port ? `:${u.port}` : ''}` : socket ?? 'localhost';
    return `postgresql://${u.username ? `${decodeURIComponent(u.username)}@` : ''}${host}${u.pathname || '/'}${socket && u.hostname ? ` (socket ${socket})` : ''}`;
  } catch {
    return 'the PostgreSQL database (an unparsable URL)';
  }
}

const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'ENOENT']);

/** A CairnError for anything the server or driver threw while doing `what`; never repeats the URL. */
export function translate(err: unknown, what: string, where: string): CairnError {
  if (err instanceof CairnError) return err;
  const code = String((err as { code?: unknown }).code ?? '');
  const message = (err as Error)?.message ?? String(err);
  if (code === '40001' || code === '40P01' || code === '55P03') {
    return new CairnError('BUSY', `${what}: the catalog database ${where} stayed locked by other transactions; try again`, { cause: err, retryable: true });
  }
  if (code === '28P01' || code === '28000') {
    return new CairnError('PERMISSION_DENIED', `${what}: the PostgreSQL server ${where} refused the credentials: ${message}; check the user and password in the database URL`, { cause: err });
  }
  if (code === '42501') return new CairnError('PERMISSION_DENIED', `${what}: the catalog database ${where} refused access: ${message}`, { cause: err });
  if (code === '3D000') {
    return new CairnError('NOT_FOUND', `${what}: the PostgreSQL server has no database named in ${where}: ${message}; create it (createdb) or fix the URL`, { cause: err });
  }
  if (code === '53100') return new CairnError('NO_SPACE', `${what}: no space left for the catalog database ${where}`, { cause: err });
  if (code === '23505') return new CairnError('ALREADY_EXISTS', `${what}: ${message}`, { cause: err });
  if (code === '23503') return new CairnError('NOT_FOUND', `${what}: a record it refers to does not exist: ${message}`, { cause: err });
  const unreachable =
    UNREACHABLE.has(code) ||
    code.startsWith('08') ||
    code.startsWith('57P') ||
    code === '53300' ||
    /timeout expired|Connection terminated|connection is closed|Client has encountered a connection error/i.test(message);
  if (unreachable) {
    return new CairnError('STORE_UNAVAILABLE', `${what}: the PostgreSQL server ${where} did not answer (${code || message}); check it runs and the URL's host and port`, {
      cause: err,
      retryable: true,
    });
  }
  return new CairnError('INTERNAL', `${what} in the catalog database ${where} failed: ${message}`, { cause: err });
}

function oneOfFilter<T extends string>(value: T, allowed: readonly T[], field: string): T {
  if (!allowed.includes(value)) throw new CairnError('USAGE', `catalog: filter ${field} must be one of ${allowed.join(', ')}, got ${JSON.stringify(value)}`);
  return value;
}

function groupBy<K extends string, V extends string>(rows: Record<K | V, string>[], key: K, value: V): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const row of rows) {
    const list = out.get(row[key]);
    if (list) list.push(row[value]);
    else out.set(row[key], [row[value]]);
  }
  return out;
}

// Rows as the schema above defines them: the row mappers below are the one place that reads columns.
function tokenFrom(r: any): EnrollmentToken {
  return { id: r.id, secretHash: r.secret_hash, expiresAt: r.expires_at, createdAt: r.created_at, usedAt: r.used_at };
}

function agentFrom(r: any): AgentRecord {
  return {
    agentId: r.agent_id,
    credentialHash: r.credential_hash,
    hostname: r.hostname,
    inventory: JSON.parse(r.inventory) as JsonValue,
    enrolledAt: r.enrolled_at,
    lastSeen: r.last_seen,
    status: r.status,
    revokedAt: r.revoked_at,
    policyAck: r.policy_ack,
  };
}

function policyFrom(r: any, vaults: string[]): PolicyRecord {
  return {
    name: r.name,
    enabled: r.enabled,
    trigger: JSON.parse(r.trigger) as PolicyRecord['trigger'],
    retention: JSON.parse(r.retention) as PolicyRecord['retention'],
    vaults,
  };
}

function backupFrom(r: any): BackupRecord {
  return {
    id: r.id,
    name: r.name,
    vault: r.vault,
    resource: r.resource,
    agentId: r.agent_id,
    kind: r.kind,
    startedAt: r.started_at,
    finishedAt: r.finished_at,
    bytesRead: r.bytes_read,
    bytesStored: r.bytes_stored,
    consistency: r.consistency,
    logicalBytes: r.logical_bytes,
    host: r.host,
    status: r.status,
    deletedAt: r.deleted_at,
  };
}

function commandFrom(r: any): CommandRecord {
  return {
    commandId: r.command_id,
    agentId: r.agent_id,
    action: r.action,
    args: JSON.parse(r.args) as JsonValue,
    createdAt: r.created_at,
    completedAt: r.completed_at,
    result: r.result === null ? null : (JSON.parse(r.result) as JsonValue),
  };
}

function jobResultFrom(r: any): JobResultRecord {
  return {
    agentId: r.agent_id,
    jobId: r.job_id,
    commandId: r.command_id,
    status: r.status,
    backupId: r.backup_id,
    errorCode: r.error_code,
    errorMessage: r.error_message,
    receivedAt: r.received_at,
  };
}
