import Database from 'better-sqlite3';
import { EventEmitter } from 'node:events';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';

import { CairnError } from '../../shared/errors.js';
import { retain, StatementCache } from '../../shared/runtime/sqlite-retain.js';
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
 * The catalog in one SQLite file (better-sqlite3): WAL, so readers never wait for the writer; a
 * busy timeout, so a second process waits for the lock instead of failing at once; foreign keys on.
 * Every write runs in a BEGIN IMMEDIATE transaction, which takes the write lock before the first
 * read, so read-then-write sequences cannot interleave across processes. synchronous stays at
 * SQLite's default (FULL): a committed token use or policy change survives a power cut.
 *
 * better-sqlite3 is synchronous; the methods are async only to fit the Catalog interface.
 *
 * watch() is an in-process emitter: it hears this instance's changes only. Another process (or
 * another SqliteCatalog on the same file) is not notified; several control-plane instances need
 * the PostgreSQL catalog, whose notices cross instances.
 */

interface Migration {
  version: number;
  description: string;
  sql: string;
}

/**
 * The schema, as migrations applied in order; schema_version holds the last one applied. A new
 * version appends here and never edits an applied migration. A database whose version is above the
 * last one here was written by a newer Cairn and is refused.
 */
export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: 'tokens, agents, vaults, resources, policies, backups, commands',
    sql: `
      CREATE TABLE enrollment_tokens (
        id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, expires_at TEXT NOT NULL, created_at TEXT NOT NULL, used_at TEXT
      );
      CREATE TABLE agents (
        agent_id TEXT PRIMARY KEY, credential_hash TEXT NOT NULL, hostname TEXT NOT NULL, inventory TEXT NOT NULL,
        enrolled_at TEXT NOT NULL, last_seen TEXT,
        status TEXT NOT NULL CHECK (status IN ('online', 'offline')),
        revoked_at TEXT, policy_ack INTEGER NOT NULL DEFAULT 0
      );
      CREATE TABLE vaults (
        name TEXT PRIMARY KEY,
        type TEXT NOT NULL CHECK (type IN ('server', 'disk', 'filesystem', 'hybrid')),
        location TEXT NOT NULL, capacity_bytes INTEGER
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
        name TEXT PRIMARY KEY, enabled INTEGER NOT NULL, trigger TEXT NOT NULL, retention TEXT NOT NULL
      );
      CREATE TABLE policy_vaults (
        policy TEXT NOT NULL REFERENCES policies (name) ON DELETE CASCADE,
        vault TEXT NOT NULL REFERENCES vaults (name),
        PRIMARY KEY (policy, vault)
      );
      CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
      INSERT INTO counters (name, value) VALUES ('policy_version', 0);
      CREATE TABLE backups (
        id TEXT PRIMARY KEY, name TEXT NOT NULL,
        vault TEXT NOT NULL REFERENCES vaults (name),
        resource TEXT NOT NULL, agent_id TEXT,
        kind TEXT NOT NULL CHECK (kind IN ('full', 'incremental')),
        started_at TEXT NOT NULL, finished_at TEXT NOT NULL,
        bytes_read INTEGER NOT NULL, bytes_stored INTEGER NOT NULL, consistency TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('available', 'deleted')),
        deleted_at TEXT
      );
      CREATE INDEX backups_newest ON backups (started_at DESC, id DESC);
      CREATE INDEX backups_by_vault ON backups (vault, started_at DESC, id DESC);
      CREATE INDEX backups_by_resource ON backups (resource, started_at DESC, id DESC);
      CREATE INDEX backups_by_agent ON backups (agent_id, started_at DESC, id DESC);
      CREATE TABLE commands (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        command_id TEXT NOT NULL UNIQUE,
        agent_id TEXT NOT NULL REFERENCES agents (agent_id),
        action TEXT NOT NULL, args TEXT NOT NULL, created_at TEXT NOT NULL,
        completed_at TEXT, result TEXT
      );
      CREATE INDEX commands_pending ON commands (agent_id, seq) WHERE completed_at IS NULL;
    `,
  },
  {
    version: 2,
    description: 'backups: logical size and host; job results; catalog sync parts; commands listed newest first',
    sql: `
      ALTER TABLE backups ADD COLUMN logical_bytes INTEGER;
      ALTER TABLE backups ADD COLUMN host TEXT;
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
        vault TEXT NOT NULL, last INTEGER NOT NULL, backups TEXT NOT NULL,
        PRIMARY KEY (agent_id, sync_id, part)
      );
      CREATE TABLE syncs_done (
        agent_id TEXT NOT NULL, sync_id TEXT NOT NULL, vault TEXT NOT NULL, done_at TEXT NOT NULL,
        PRIMARY KEY (agent_id, sync_id)
      );
    `,
  },
];

export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1].version;

interface AgentRow {
  agent_id: string;
  credential_hash: string;
  hostname: string;
  inventory: string;
  enrolled_at: string;
  last_seen: string | null;
  status: AgentStatus;
  revoked_at: string | null;
  policy_ack: number;
}

interface BackupRow {
  id: string;
  name: string;
  vault: string;
  resource: string;
  agent_id: string | null;
  kind: BackupRecord['kind'];
  started_at: string;
  finished_at: string;
  bytes_read: number;
  bytes_stored: number;
  consistency: BackupRecord['consistency'];
  logical_bytes: number | null;
  host: string | null;
  status: BackupRecord['status'];
  deleted_at: string | null;
}

interface JobResultRow {
  agent_id: string;
  job_id: string;
  command_id: string | null;
  status: JobResultRecord['status'];
  backup_id: string | null;
  error_code: string | null;
  error_message: string | null;
  received_at: string;
}

interface CommandRow {
  command_id: string;
  agent_id: string;
  action: string;
  args: string;
  created_at: string;
  completed_at: string | null;
  result: string | null;
}

interface PolicyRow {
  name: string;
  enabled: number;
  trigger: string;
  retention: string;
}

export class SqliteCatalog implements Catalog {
  private readonly db: Database.Database;
  private readonly statements: StatementCache;
  private readonly events = new EventEmitter();
  /** Notices of the write transaction running now, emitted once it commits. */
  private notices: CatalogEvent[] = [];

  /**
   * Opens (creating if needed) the catalog at `path` and migrates it to SCHEMA_VERSION. Throws
   * CairnError USAGE for a file that is no Cairn catalog or one of a newer schema version (nothing
   * in it is changed), PERMISSION_DENIED when the file cannot be opened. `busyTimeoutMs`: how long
   * a call waits for another process's lock before failing with BUSY (default 5 s).
   */
  constructor(
    readonly path: string,
    options: { busyTimeoutMs?: number } = {},
  ) {
    let db: Database.Database;
    try {
      mkdirSync(dirname(path), { recursive: true });
      db = retain(new Database(path));
    } catch (err) {
      throw new CairnError(
        'PERMISSION_DENIED',
        `cannot open the catalog database ${path}: ${(err as Error).message}; check the folder exists and is writable`,
        { cause: err },
      );
    }
    try {
      // Pragmas as retained statements (db.pragma prepares one and drops it; sqlite-retain.ts).
      const pragma = (text: string) => {
        const statement = retain(db.prepare(`PRAGMA ${text}`));
        return statement.reader ? statement.get() : statement.run();
      };
      pragma(`busy_timeout = ${Math.max(0, Math.floor(options.busyTimeoutMs ?? 5000))}`);
      pragma('foreign_keys = ON');
      migrate(db, path);
      retain(db.prepare('PRAGMA journal_mode = WAL')).get();
    } catch (err) {
      db.close();
      throw translate(err, 'opening the catalog', path);
    }
    this.db = db;
    this.statements = new StatementCache(db);
  }

  // Enrollment tokens

  async addEnrollmentToken(token: EnrollmentTokenInput): Promise<void> {
    const id = requiredText(token.id, 'enrollment token id');
    const row = {
      id,
      secretHash: requiredText(token.secretHash, `secretHash of enrollment token ${id}`),
      expiresAt: timestamp(token.expiresAt, `expiresAt of enrollment token ${id}`),
      createdAt: timestamp(token.createdAt, `createdAt of enrollment token ${id}`),
    };
    this.write('adding an enrollment token', () => {
      if (this.get('SELECT 1 FROM enrollment_tokens WHERE id = ?', id)) {
        throw new CairnError('ALREADY_EXISTS', `catalog: enrollment token ${id} exists already`);
      }
      this.run(
        'INSERT INTO enrollment_tokens (id, secret_hash, expires_at, created_at) VALUES (@id, @secretHash, @expiresAt, @createdAt)',
        row,
      );
    });
  }

  async getEnrollmentToken(id: string): Promise<EnrollmentToken | undefined> {
    return this.read('reading an enrollment token', () => {
      const row = this.get<Record<string, string | null>>('SELECT * FROM enrollment_tokens WHERE id = ?', id);
      return row && tokenFrom(row);
    });
  }

  async useEnrollmentToken(id: string, now: Timestamp): Promise<EnrollmentToken | undefined> {
    const at = timestamp(now, 'now');
    // One statement, so the check and the mark are atomic whatever else runs.
    const row = this.write('using an enrollment token', () =>
      this.get<Record<string, string | null>>(
        'UPDATE enrollment_tokens SET used_at = ? WHERE id = ? AND used_at IS NULL AND expires_at > ? RETURNING *',
        at,
        id,
        at,
      ),
    );
    return row && { ...tokenFrom(row), usedAt: null };
  }

  // Agents

  async addAgent(agent: AgentInput): Promise<void> {
    const agentId = requiredText(agent.agentId, 'agentId');
    const row = {
      agentId,
      credentialHash: requiredText(agent.credentialHash, `credentialHash of agent ${agentId}`),
      hostname: requiredText(agent.hostname, `hostname of agent ${agentId}`),
      inventory: jsonText(agent.inventory, `inventory of agent ${agentId}`),
      enrolledAt: timestamp(agent.enrolledAt, `enrolledAt of agent ${agentId}`),
    };
    this.write('adding an agent', () => {
      if (this.get('SELECT 1 FROM agents WHERE agent_id = ?', agentId)) {
        throw new CairnError('ALREADY_EXISTS', `catalog: agent ${agentId} exists already`);
      }
      this.run(
        `INSERT INTO agents (agent_id, credential_hash, hostname, inventory, enrolled_at, status)
         VALUES (@agentId, @credentialHash, @hostname, @inventory, @enrolledAt, 'offline')`,
        row,
      );
    });
  }

  async getAgent(agentId: string): Promise<AgentRecord | undefined> {
    return this.read('reading an agent', () => {
      const row = this.get<AgentRow>('SELECT * FROM agents WHERE agent_id = ?', agentId);
      return row && agentFrom(row);
    });
  }

  async listAgents(): Promise<AgentRecord[]> {
    return this.read('listing agents', () => this.all<AgentRow>('SELECT * FROM agents ORDER BY enrolled_at, agent_id').map(agentFrom));
  }

  async touchAgent(agentId: string, lastSeen: Timestamp, status: AgentStatus): Promise<void> {
    const seen = timestamp(lastSeen, `lastSeen of agent ${agentId}`);
    if (status !== 'online' && status !== 'offline') {
      throw new CairnError('USAGE', `catalog: status of agent ${agentId} must be online or offline, got ${JSON.stringify(status)}`);
    }
    this.write('recording agent contact', () => {
      this.mustChange(this.run('UPDATE agents SET last_seen = ?, status = ? WHERE agent_id = ?', seen, status, agentId), `agent ${agentId}`);
    });
  }

  async revokeAgent(agentId: string, at: Timestamp): Promise<void> {
    const when = timestamp(at, `revocation time of agent ${agentId}`);
    this.write('revoking an agent', () => {
      this.mustChange(this.run('UPDATE agents SET revoked_at = COALESCE(revoked_at, ?) WHERE agent_id = ?', when, agentId), `agent ${agentId}`);
    });
  }

  async setAgentPolicyAck(agentId: string, version: number): Promise<void> {
    nonNegativeInteger(version, `policy version acknowledged by agent ${agentId}`);
    this.write('recording a policy ack', () => {
      const current = this.currentPolicyVersion();
      if (version > current) {
        throw new CairnError(
          'USAGE',
          `catalog: agent ${agentId} acknowledged policy version ${version}, but the newest version is ${current}`,
        );
      }
      this.mustChange(this.run('UPDATE agents SET policy_ack = MAX(policy_ack, ?) WHERE agent_id = ?', version, agentId), `agent ${agentId}`);
    });
  }

  // Vaults

  async upsertVault(vault: VaultInput): Promise<void> {
    const v = vaultInput(vault);
    this.write('saving a vault', () => {
      this.run(
        `INSERT INTO vaults (name, type, location, capacity_bytes) VALUES (@name, @type, @location, @capacityBytes)
         ON CONFLICT (name) DO UPDATE SET type = excluded.type, location = excluded.location, capacity_bytes = excluded.capacity_bytes`,
        v,
      );
    });
  }

  async listVaults(): Promise<VaultRecord[]> {
    return this.read('listing vaults', () => {
      const vaults = this.all<{ name: string; type: VaultRecord['type']; location: string; capacity_bytes: number | null; used: number; count: number }>(
        `SELECT v.name, v.type, v.location, v.capacity_bytes, COALESCE(SUM(b.bytes_stored), 0) AS used, COUNT(b.id) AS count
         FROM vaults v LEFT JOIN backups b ON b.vault = v.name AND b.status = 'available'
         GROUP BY v.name ORDER BY v.name`,
      );
      const resources = groupBy(this.all<{ vault: string; name: string }>('SELECT vault, name FROM resources ORDER BY name'), 'vault', 'name');
      const policies = groupBy(this.all<{ vault: string; policy: string }>('SELECT vault, policy FROM policy_vaults ORDER BY policy'), 'vault', 'policy');
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
    this.write('ensuring a vault', () => this.ensureVaultRow(vault));
  }

  // Resources

  async upsertResource(resource: ResourceRecord): Promise<void> {
    const name = requiredText(resource.name, 'resource name');
    const row = {
      name,
      agentId: requiredText(resource.agentId, `agentId of resource ${name}`),
      vault: requiredText(resource.vault, `vault of resource ${name}`),
      disks: JSON.stringify(stringList(resource.disks, `disks of resource ${name}`)),
    };
    this.write('saving a resource', () => {
      this.mustExist('agents', 'agent_id', row.agentId, `agent ${row.agentId} of resource ${name}`);
      this.mustExist('vaults', 'name', row.vault, `vault ${row.vault} of resource ${name}`);
      this.run(
        `INSERT INTO resources (name, agent_id, vault, disks) VALUES (@name, @agentId, @vault, @disks)
         ON CONFLICT (name) DO UPDATE SET agent_id = excluded.agent_id, vault = excluded.vault, disks = excluded.disks`,
        row,
      );
    });
  }

  async listResources(filter: ResourceFilter = {}): Promise<ResourceRecord[]> {
    const where: string[] = [];
    const params: string[] = [];
    if (filter.agentId !== undefined) {
      where.push('agent_id = ?');
      params.push(filter.agentId);
    }
    if (filter.vault !== undefined) {
      where.push('vault = ?');
      params.push(filter.vault);
    }
    return this.read('listing resources', () =>
      this.all<{ name: string; agent_id: string; vault: string; disks: string }>(
        `SELECT * FROM resources ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY name`,
        ...params,
      ).map((r) => ({ name: r.name, agentId: r.agent_id, vault: r.vault, disks: JSON.parse(r.disks) as string[] })),
    );
  }

  async replaceAgentResources(agentId: string, resources: Omit<ResourceRecord, 'agentId'>[]): Promise<ResourceConflict[]> {
    const rows = agentResources(requiredText(agentId, 'agentId'), resources);
    return this.write("replacing an agent's resources", () => {
      this.mustExist('agents', 'agent_id', agentId, `agent ${agentId}`);
      const keep = new Set(rows.map((r) => r.name));
      for (const { name } of this.all<{ name: string }>('SELECT name FROM resources WHERE agent_id = ?', agentId)) {
        if (!keep.has(name)) this.run('DELETE FROM resources WHERE name = ?', name);
      }
      const conflicts: ResourceConflict[] = [];
      for (const r of rows) {
        this.ensureVaultRow(r.vault);
        // Another unrevoked agent's resource stays its own; a revoked agent's may move here.
        const holder = this.get<{ agent_id: string; revoked_at: string | null }>(
          'SELECT r.agent_id, a.revoked_at FROM resources r JOIN agents a ON a.agent_id = r.agent_id WHERE r.name = ?',
          r.name,
        );
        if (holder !== undefined && holder.agent_id !== agentId && holder.revoked_at === null) {
          conflicts.push({ name: r.name, heldBy: holder.agent_id });
          continue;
        }
        this.run(
          `INSERT INTO resources (name, agent_id, vault, disks) VALUES (?, ?, ?, ?)
           ON CONFLICT (name) DO UPDATE SET agent_id = excluded.agent_id, vault = excluded.vault, disks = excluded.disks`,
          r.name,
          agentId,
          r.vault,
          JSON.stringify(r.disks),
        );
      }
      return conflicts;
    });
  }

  // Policies

  async createPolicy(policy: PolicyRecord): Promise<number> {
    const p = policyRecord(policy);
    return this.write('creating a policy', () => {
      if (this.get('SELECT 1 FROM policies WHERE name = ?', p.name)) {
        throw new CairnError('ALREADY_EXISTS', `catalog: policy ${p.name} exists already`);
      }
      for (const vault of p.vaults) this.mustExist('vaults', 'name', vault, `vault ${vault} of policy ${p.name}`);
      this.run('INSERT INTO policies (name, enabled, trigger, retention) VALUES (?, ?, ?, ?)', p.name, p.enabled ? 1 : 0, JSON.stringify(p.trigger), JSON.stringify(p.retention));
      for (const vault of p.vaults) this.run('INSERT INTO policy_vaults (policy, vault) VALUES (?, ?)', p.name, vault);
      return this.bumpPolicyVersion();
    });
  }

  async updatePolicy(name: string, changes: PolicyChanges): Promise<number> {
    return this.write('updating a policy', () => {
      const old = this.policy(name);
      if (!old) throw new CairnError('NOT_FOUND', `catalog: policy ${name} does not exist`);
      const defined = Object.fromEntries(Object.entries(changes).filter(([, v]) => v !== undefined)) as PolicyChanges;
      const p = policyRecord({ ...old, ...defined, name });
      if (canonicalJson(p as unknown as JsonValue) === canonicalJson(old as unknown as JsonValue)) return this.currentPolicyVersion();
      for (const vault of p.vaults) this.mustExist('vaults', 'name', vault, `vault ${vault} of policy ${name}`);
      this.run('UPDATE policies SET enabled = ?, trigger = ?, retention = ? WHERE name = ?', p.enabled ? 1 : 0, JSON.stringify(p.trigger), JSON.stringify(p.retention), name);
      this.run('DELETE FROM policy_vaults WHERE policy = ?', name);
      for (const vault of p.vaults) this.run('INSERT INTO policy_vaults (policy, vault) VALUES (?, ?)', name, vault);
      return this.bumpPolicyVersion();
    });
  }

  async deletePolicy(name: string): Promise<number> {
    return this.write('deleting a policy', () => {
      this.mustChange(this.run('DELETE FROM policies WHERE name = ?', name), `policy ${name}`);
      return this.bumpPolicyVersion();
    });
  }

  async getPolicy(name: string): Promise<PolicyRecord | undefined> {
    return this.read('reading a policy', () => this.policy(name));
  }

  async listPolicies(): Promise<PolicyRecord[]> {
    return this.read('listing policies', () => {
      const vaults = groupBy(this.all<{ policy: string; vault: string }>('SELECT policy, vault FROM policy_vaults ORDER BY vault'), 'policy', 'vault');
      return this.all<PolicyRow>('SELECT * FROM policies ORDER BY name').map((row) => policyFrom(row, vaults.get(row.name) ?? []));
    });
  }

  async bindPolicy(policy: string, vault: string): Promise<number> {
    return this.write('binding a policy', () => {
      this.mustExist('policies', 'name', policy, `policy ${policy}`);
      this.mustExist('vaults', 'name', vault, `vault ${vault}`);
      const r = this.run('INSERT INTO policy_vaults (policy, vault) VALUES (?, ?) ON CONFLICT DO NOTHING', policy, vault);
      return r.changes ? this.bumpPolicyVersion() : this.currentPolicyVersion();
    });
  }

  async unbindPolicy(policy: string, vault: string): Promise<number> {
    return this.write('unbinding a policy', () => {
      this.mustExist('policies', 'name', policy, `policy ${policy}`);
      const r = this.run('DELETE FROM policy_vaults WHERE policy = ? AND vault = ?', policy, vault);
      return r.changes ? this.bumpPolicyVersion() : this.currentPolicyVersion();
    });
  }

  async policyVersion(): Promise<number> {
    return this.read('reading the policy version', () => this.currentPolicyVersion());
  }

  // Backups

  async recordBackup(backup: BackupInput, options: RecordBackupOptions = {}): Promise<void> {
    const b = backupInput(backup);
    this.write('recording a backup', () => {
      this.mustExist('vaults', 'name', b.vault, `vault ${b.vault} of backup ${b.id}`);
      this.recordBackupRow(b, options.keepStatus === true);
    });
  }

  async getBackup(id: string): Promise<BackupRecord | undefined> {
    return this.read('reading a backup', () => {
      const row = this.get<BackupRow>('SELECT * FROM backups WHERE id = ?', id);
      return row && backupFrom(row);
    });
  }

  async listBackups(filter: BackupFilter = {}): Promise<BackupRecord[]> {
    const where: string[] = [];
    const params: (string | number)[] = [];
    const add = (sql: string, value: string | number) => {
      where.push(sql);
      params.push(value);
    };
    if (filter.vault !== undefined) add('vault = ?', filter.vault);
    if (filter.resource !== undefined) add('resource = ?', filter.resource);
    if (filter.agentId !== undefined) add('agent_id = ?', filter.agentId);
    if (filter.kind !== undefined) add('kind = ?', oneOfFilter(filter.kind, BACKUP_KINDS, 'kind'));
    if (filter.status !== undefined) add('status = ?', oneOfFilter(filter.status, BACKUP_STATUSES, 'status'));
    if (filter.from !== undefined) add('started_at >= ?', timestamp(filter.from, 'filter from'));
    if (filter.to !== undefined) add('started_at < ?', timestamp(filter.to, 'filter to'));
    const limit = filter.limit === undefined ? -1 : nonNegativeInteger(filter.limit, 'filter limit');
    const offset = filter.offset === undefined ? 0 : nonNegativeInteger(filter.offset, 'filter offset');
    return this.read('listing backups', () =>
      this.all<BackupRow>(
        `SELECT * FROM backups ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
         ORDER BY started_at DESC, id DESC LIMIT ? OFFSET ?`,
        ...params,
        limit,
        offset,
      ).map(backupFrom),
    );
  }

  async markBackupDeleted(id: string, at: Timestamp): Promise<void> {
    const when = timestamp(at, `deletion time of backup ${id}`);
    this.write('marking a backup deleted', () => {
      const r = this.run(
        `UPDATE backups SET deleted_at = CASE WHEN status = 'deleted' THEN deleted_at ELSE ? END, status = 'deleted' WHERE id = ?`,
        when,
        id,
      );
      this.mustChange(r, `backup ${id}`);
    });
  }

  async replaceVaultBackups(vault: string, backups: ScannedBackup[], at: Timestamp): Promise<ReplaceSummary> {
    const when = timestamp(at, 'scan time');
    const scanned = backups.map((b) => backupInput({ ...b, status: 'available' }));
    for (const b of scanned) {
      if (b.vault !== vault) throw new CairnError('USAGE', `catalog: the scan of vault ${vault} lists backup ${b.id} of vault ${b.vault}`);
    }
    return this.write('replacing the backups of a vault', () => {
      this.mustExist('vaults', 'name', vault, `vault ${vault}`);
      return this.replaceVaultRows(vault, scanned, when);
    });
  }

  // Commands

  async addCommand(command: CommandInput): Promise<void> {
    const commandId = requiredText(command.commandId, 'commandId');
    const c = {
      commandId,
      agentId: requiredText(command.agentId, `agentId of command ${commandId}`),
      action: requiredText(command.action, `action of command ${commandId}`),
      args: jsonText(command.args, `args of command ${commandId}`),
      createdAt: timestamp(command.createdAt, `createdAt of command ${commandId}`),
    };
    this.write('adding a command', () => {
      const old = this.get<CommandRow>('SELECT * FROM commands WHERE command_id = ?', commandId);
      if (old) {
        const same =
          old.agent_id === c.agentId &&
          old.action === c.action &&
          canonicalJson(JSON.parse(old.args) as JsonValue) === canonicalJson(JSON.parse(c.args) as JsonValue);
        if (same) return;
        throw new CairnError(
          'ALREADY_EXISTS',
          `catalog: command ${commandId} exists already with another agent, action or arguments (${old.action} for agent ${old.agent_id})`,
        );
      }
      this.mustExist('agents', 'agent_id', c.agentId, `agent ${c.agentId} of command ${commandId}`);
      this.run(
        'INSERT INTO commands (command_id, agent_id, action, args, created_at) VALUES (@commandId, @agentId, @action, @args, @createdAt)',
        c,
      );
      this.notices.push({ kind: 'commands', agentId: c.agentId });
    });
  }

  async getCommand(commandId: string): Promise<CommandRecord | undefined> {
    return this.read('reading a command', () => {
      const row = this.get<CommandRow>('SELECT * FROM commands WHERE command_id = ?', commandId);
      return row && commandFrom(row);
    });
  }

  async pendingCommands(agentId: string): Promise<CommandRecord[]> {
    return this.read('listing pending commands', () =>
      this.all<CommandRow>('SELECT * FROM commands WHERE agent_id = ? AND completed_at IS NULL ORDER BY seq', agentId).map(commandFrom),
    );
  }

  async completeCommand(commandId: string, result: JsonValue, at: Timestamp): Promise<boolean> {
    const text = jsonText(result, `result of command ${commandId}`);
    const when = timestamp(at, `completion time of command ${commandId}`);
    return this.write('completing a command', () => {
      const r = this.run('UPDATE commands SET completed_at = ?, result = ? WHERE command_id = ? AND completed_at IS NULL', when, text, commandId);
      if (r.changes) return true;
      this.mustExist('commands', 'command_id', commandId, `command ${commandId}`);
      return false;
    });
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }

  async listCommands(filter: CommandFilter = {}): Promise<CommandRecord[]> {
    const where: string[] = [];
    const params: string[] = [];
    if (filter.agentId !== undefined) {
      where.push('agent_id = ?');
      params.push(filter.agentId);
    }
    if (filter.pending !== undefined) where.push(booleanFilter(filter.pending, 'pending') ? 'completed_at IS NULL' : 'completed_at IS NOT NULL');
    const limit = filter.limit === undefined ? -1 : nonNegativeInteger(filter.limit, 'filter limit');
    const offset = filter.offset === undefined ? 0 : nonNegativeInteger(filter.offset, 'filter offset');
    return this.read('listing commands', () =>
      this.all<CommandRow>(
        `SELECT * FROM commands ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
         ORDER BY created_at DESC, command_id DESC LIMIT ? OFFSET ?`,
        ...params,
        limit,
        offset,
      ).map(commandFrom),
    );
  }

  // Job results

  async recordJobResult(result: JobResultRecord): Promise<boolean> {
    const r = jobResultInput(result);
    return this.write('recording a job result', () => {
      this.mustExist('agents', 'agent_id', r.agentId, `agent ${r.agentId} of job ${r.jobId}`);
      const done = this.run(
        `INSERT INTO job_results (agent_id, job_id, command_id, status, backup_id, error_code, error_message, received_at)
         VALUES (@agentId, @jobId, @commandId, @status, @backupId, @errorCode, @errorMessage, @receivedAt)
         ON CONFLICT (agent_id, job_id) DO NOTHING`,
        r,
      );
      return done.changes > 0;
    });
  }

  async listJobResults(filter: JobResultFilter = {}): Promise<JobResultRecord[]> {
    const where: string[] = [];
    const params: string[] = [];
    const add = (sql: string, value: string) => {
      where.push(sql);
      params.push(value);
    };
    if (filter.agentId !== undefined) add('agent_id = ?', filter.agentId);
    if (filter.status !== undefined) add('status = ?', oneOfFilter(filter.status, JOB_STATUSES, 'status'));
    if (filter.from !== undefined) add('received_at >= ?', timestamp(filter.from, 'filter from'));
    if (filter.to !== undefined) add('received_at < ?', timestamp(filter.to, 'filter to'));
    const limit = filter.limit === undefined ? -1 : nonNegativeInteger(filter.limit, 'filter limit');
    return this.read('listing job results', () =>
      this.all<JobResultRow>(
        `SELECT * FROM job_results ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
         ORDER BY received_at DESC, agent_id DESC, job_id DESC LIMIT ?`,
        ...params,
        limit,
      ).map(jobResultFrom),
    );
  }

  // Catalog syncs

  async addSyncPart(part: SyncPartInput, at: Timestamp): Promise<ReplaceSummary | null> {
    const p = syncPartInput(part);
    const when = timestamp(at, 'sync time');
    const sync = `sync ${p.syncId} of agent ${p.agentId}`;
    return this.write('storing a catalog sync part', () => {
      if (this.get('SELECT 1 FROM syncs_done WHERE agent_id = ? AND sync_id = ?', p.agentId, p.syncId)) return null;
      const stored = this.all<{ part: number; vault: string; last: number }>(
        'SELECT part, vault, last FROM sync_parts WHERE agent_id = ? AND sync_id = ? ORDER BY part',
        p.agentId,
        p.syncId,
      );
      checkSyncPart(p, stored.map((s) => ({ part: s.part, vault: s.vault, last: s.last === 1 })), sync);
      if (stored.some((s) => s.part === p.part)) return null;
      this.run(
        'INSERT INTO sync_parts (agent_id, sync_id, part, vault, last, backups) VALUES (?, ?, ?, ?, ?, ?)',
        p.agentId,
        p.syncId,
        p.part,
        p.vault,
        p.last ? 1 : 0,
        JSON.stringify(p.backups),
      );
      const parts = this.all<{ part: number; last: number; backups: string }>(
        'SELECT part, last, backups FROM sync_parts WHERE agent_id = ? AND sync_id = ? ORDER BY part',
        p.agentId,
        p.syncId,
      );
      const last = parts.find((s) => s.last === 1);
      if (!last || parts.length !== last.part + 1) return null;
      this.ensureVaultRow(p.vault);
      const summary = this.replaceVaultRows(p.vault, parts.flatMap((s) => JSON.parse(s.backups) as CheckedBackup[]), when);
      this.run('DELETE FROM sync_parts WHERE agent_id = ? AND sync_id = ?', p.agentId, p.syncId);
      this.run('INSERT INTO syncs_done (agent_id, sync_id, vault, done_at) VALUES (?, ?, ?, ?)', p.agentId, p.syncId, p.vault, when);
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

  // Internals

  private ensureVaultRow(name: string): void {
    this.run(`INSERT INTO vaults (name, type, location, capacity_bytes) VALUES (?, 'server', '', NULL) ON CONFLICT (name) DO NOTHING`, name);
  }

  /** replaceVaultBackups inside the caller's transaction, on checked backups of `vault`. */
  private replaceVaultRows(vault: string, scanned: CheckedBackup[], when: Timestamp): ReplaceSummary {
    const summary: ReplaceSummary = { added: 0, restored: 0, deleted: 0 };
    for (const b of scanned) {
      const before = this.recordBackupRow(b);
      if (before === undefined) summary.added++;
      else if (before.status === 'deleted') summary.restored++;
    }
    const present = new Set(scanned.map((b) => b.id));
    for (const { id } of this.all<{ id: string }>(`SELECT id FROM backups WHERE vault = ? AND status = 'available'`, vault)) {
      if (present.has(id)) continue;
      this.run(`UPDATE backups SET status = 'deleted', deleted_at = ? WHERE id = ?`, when, id);
      summary.deleted++;
    }
    return summary;
  }

  /**
   * Inserts or updates one backup by the rules of Catalog.recordBackup, inside the caller's
   * transaction; returns the row as it was before (undefined: new).
   */
  private recordBackupRow(b: CheckedBackup, keepStatus = false): BackupRecord | undefined {
    const old = this.get<BackupRow>('SELECT * FROM backups WHERE id = ?', b.id);
    if (!old) {
      this.run(
        `INSERT INTO backups (id, name, vault, resource, agent_id, kind, started_at, finished_at, bytes_read, bytes_stored,
           consistency, logical_bytes, host, status, deleted_at)
         VALUES (@id, @name, @vault, @resource, @agentId, @kind, @startedAt, @finishedAt, @bytesRead, @bytesStored,
           @consistency, @logicalBytes, @host, @status, @deletedAt)`,
        b,
      );
      return undefined;
    }
    const before = backupFrom(old);
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
    this.run(
      `UPDATE backups SET agent_id = COALESCE(agent_id, ?), logical_bytes = COALESCE(logical_bytes, ?), host = COALESCE(host, ?),
         status = ?, deleted_at = ? WHERE id = ?`,
      b.agentId,
      b.logicalBytes,
      b.host,
      status,
      deletedAt,
      b.id,
    );
    return before;
  }

  private policy(name: string): PolicyRecord | undefined {
    const row = this.get<PolicyRow>('SELECT * FROM policies WHERE name = ?', name);
    if (!row) return undefined;
    return policyFrom(row, this.all<{ vault: string }>('SELECT vault FROM policy_vaults WHERE policy = ? ORDER BY vault', name).map((r) => r.vault));
  }

  private currentPolicyVersion(): number {
    return this.get<{ value: number }>(`SELECT value FROM counters WHERE name = 'policy_version'`)!.value;
  }

  private bumpPolicyVersion(): number {
    this.notices.push({ kind: 'policies' });
    return this.get<{ value: number }>(`UPDATE counters SET value = value + 1 WHERE name = 'policy_version' RETURNING value`)!.value;
  }

  private mustExist(table: string, column: string, value: string, what: string): void {
    if (!this.get(`SELECT 1 FROM ${table} WHERE ${column} = ?`, value)) throw new CairnError('NOT_FOUND', `catalog: ${what} does not exist`);
  }

  private mustChange(result: Database.RunResult, what: string): void {
    if (result.changes === 0) throw new CairnError('NOT_FOUND', `catalog: ${what} does not exist`);
  }

  private statement(sql: string): Database.Statement {
    return this.statements.get(sql);
  }

  private get<T = unknown>(sql: string, ...params: unknown[]): T | undefined {
    return this.statement(sql).get(...params) as T | undefined;
  }

  private all<T>(sql: string, ...params: unknown[]): T[] {
    return this.statement(sql).all(...params) as T[];
  }

  private run(sql: string, ...params: unknown[]): Database.RunResult {
    return this.statement(sql).run(...params);
  }

  /**
   * Runs `fn` in a BEGIN IMMEDIATE transaction; any error rolls it back and comes out as a CairnError.
   * The notices `fn` queued go to the watchers after the commit, and are dropped on a rollback.
   */
  private write<T>(what: string, fn: () => T): T {
    this.notices = [];
    let result: T;
    try {
      result = this.db.transaction(fn).immediate();
    } catch (err) {
      this.notices = [];
      throw translate(err, what, this.path);
    }
    const notices = this.notices;
    this.notices = [];
    for (const notice of notices) this.events.emit('notice', notice);
    return result;
  }

  /** Runs one read (or one self-contained statement) and translates its errors. */
  private read<T>(what: string, fn: () => T): T {
    try {
      return this.db.transaction(fn).deferred();
    } catch (err) {
      throw translate(err, what, this.path);
    }
  }
}

/** Brings the database at `path` to SCHEMA_VERSION, in one transaction. */
function migrate(db: Database.Database, path: string): void {
  db.transaction(() => {
    const hasVersionTable = retain(db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'`)).get();
    if (!hasVersionTable) {
      const tables = retain(db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'`)).all() as { name: string }[];
      if (tables.length) {
        throw new CairnError(
          'USAGE',
          `${path} is a SQLite database but no Cairn catalog (it has tables ${tables.map((t) => t.name).join(', ')} and no schema_version); give the catalog a file of its own`,
        );
      }
      db.exec('CREATE TABLE schema_version (version INTEGER NOT NULL)');
      db.exec('INSERT INTO schema_version (version) VALUES (0)');
    }
    const found = (retain(db.prepare('SELECT version FROM schema_version')).get() as { version: number } | undefined)?.version ?? 0;
    if (found > SCHEMA_VERSION) {
      // No code of the catalogue names this exactly: VAULT_VERSION is about vaults, not the control
      // plane's database. USAGE is the closest: nothing is damaged (not VAULT_CORRUPT) and nothing
      // unexpected happened (not INTERNAL); the operator must run the newer Cairn or point this one
      // at another file, i.e. change how the program is invoked.
      throw new CairnError(
        'USAGE',
        `the catalog database ${path} has schema version ${found}, written by a newer Cairn; this Cairn knows versions up to ${SCHEMA_VERSION}. ` +
          'Run the newer Cairn control plane, or give this one another database file; the file was left unchanged',
      );
    }
    for (const m of MIGRATIONS) {
      if (m.version <= found) continue;
      db.exec(m.sql);
      retain(db.prepare('UPDATE schema_version SET version = ?')).run(m.version);
    }
  }).immediate();
}

/** A CairnError for anything a database call threw while doing `what` on `path`. */
function translate(err: unknown, what: string, path: string): CairnError {
  if (err instanceof CairnError) return err;
  const code = (err as { code?: unknown }).code;
  const message = (err as Error)?.message ?? String(err);
  switch (code) {
    case 'SQLITE_BUSY':
    case 'SQLITE_BUSY_SNAPSHOT':
    case 'SQLITE_LOCKED':
      return new CairnError('BUSY', `${what}: the catalog database ${path} stayed locked by another process; try again`, { cause: err, retryable: true });
    case 'SQLITE_FULL':
      return new CairnError('NO_SPACE', `${what}: no space left for the catalog database ${path}`, { cause: err });
    case 'SQLITE_READONLY':
    case 'SQLITE_CANTOPEN':
    case 'SQLITE_PERM':
    case 'SQLITE_AUTH':
      return new CairnError('PERMISSION_DENIED', `${what}: cannot write the catalog database ${path}: ${message}`, { cause: err });
    case 'SQLITE_NOTADB':
      return new CairnError('USAGE', `${what}: ${path} is not a SQLite database; give the catalog a file of its own`, { cause: err });
    case 'SQLITE_CORRUPT':
      return new CairnError('VAULT_CORRUPT', `${what}: the catalog database ${path} is damaged: ${message}`, { cause: err });
    default:
      return new CairnError('INTERNAL', `${what} in the catalog database ${path} failed: ${message}`, { cause: err });
  }
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

function tokenFrom(row: Record<string, string | null>): EnrollmentToken {
  return { id: row.id!, secretHash: row.secret_hash!, expiresAt: row.expires_at!, createdAt: row.created_at!, usedAt: row.used_at };
}

function agentFrom(r: AgentRow): AgentRecord {
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

function policyFrom(row: PolicyRow, vaults: string[]): PolicyRecord {
  return {
    name: row.name,
    enabled: row.enabled === 1,
    trigger: JSON.parse(row.trigger) as PolicyRecord['trigger'],
    retention: JSON.parse(row.retention) as PolicyRecord['retention'],
    vaults,
  };
}

function backupFrom(r: BackupRow): BackupRecord {
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

function jobResultFrom(r: JobResultRow): JobResultRecord {
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

function commandFrom(r: CommandRow): CommandRecord {
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
