import type { Consistency } from '../../shared/vault/manifest.js';

/**
 * The control plane's catalog: enrollment tokens, agents, vaults, resources, policies, backups, the
 * per-agent command outbox, job results and catalog syncs. One async interface so that SQLite
 * (sqlite-catalog.ts) and PostgreSQL (postgres-catalog.ts) are interchangeable; `conformance.ts`
 * holds the suite every implementation must pass, and README.md the data model and the idempotency
 * rules.
 *
 * Contracts shared by every operation:
 * - Each call is atomic: it either happens whole or not at all, also across processes sharing the
 *   database. A failed call changes nothing and bumps no version.
 * - Timestamps are ISO 8601 strings. They are stored and returned in UTC with milliseconds
 *   (`Date.toISOString()` form), so they sort as text; an unparsable one is a CairnError USAGE.
 * - The catalog never reads the clock: every time it records comes from the caller.
 * - Errors are CairnErrors: NOT_FOUND when a named record the call needs is missing, ALREADY_EXISTS
 *   when a create meets an existing record (or a retry carries different data), USAGE for bad input,
 *   BUSY (retryable) when the database stayed locked too long.
 * - Records returned are copies: changing them changes nothing in the catalog.
 */

/** ISO 8601 date and time. */
export type Timestamp = string;

/** Anything JSON can carry; stored as JSON and returned parsed. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

export interface EnrollmentToken {
  id: string;
  /** Hash of the token's secret; the catalog never sees the secret itself. */
  secretHash: string;
  expiresAt: Timestamp;
  createdAt: Timestamp;
  /** When the token was used to enroll an agent; null while unused. */
  usedAt: Timestamp | null;
}

export type EnrollmentTokenInput = Omit<EnrollmentToken, 'usedAt'>;

export type AgentStatus = 'online' | 'offline';

export interface AgentRecord {
  agentId: string;
  /** Hash of the agent's long-lived credential. */
  credentialHash: string;
  hostname: string;
  /** What the agent reported about its machine at enrollment (see agent/daemon/inventory.ts). */
  inventory: JsonValue;
  enrolledAt: Timestamp;
  /** Last time the control plane heard from the agent; null before the first touch. */
  lastSeen: Timestamp | null;
  /** 'offline' until the first touchAgent. */
  status: AgentStatus;
  /** Set once by revokeAgent; a revoked agent stays listed. */
  revokedAt: Timestamp | null;
  /** The highest policy version the agent has acknowledged; 0 before its first ack. */
  policyAck: number;
}

export type AgentInput = Pick<AgentRecord, 'agentId' | 'credentialHash' | 'hostname' | 'inventory' | 'enrolledAt'>;

/** CBR's vault protection types. */
export type VaultType = 'server' | 'disk' | 'filesystem' | 'hybrid';

export interface VaultInput {
  name: string;
  type: VaultType;
  /** Where the vault lives (a path or an s3:// URL); never credentials: URLs with a user or password are refused. */
  location: string;
  /** The capacity the operator allots the vault; null: no limit. */
  capacityBytes: number | null;
}

export interface VaultRecord extends VaultInput {
  /** Sum of bytesStored over the vault's backups with status 'available'. */
  usedBytes: number;
  /** Number of the vault's backups with status 'available'. */
  backupCount: number;
  /** Names of the resources assigned to the vault, sorted. */
  resources: string[];
  /** Names of the policies bound to the vault, sorted. */
  policies: string[];
}

export interface ResourceRecord {
  /** Unique across the control plane (not per agent): callers qualify agent-local names if needed. */
  name: string;
  agentId: string;
  vault: string;
  /** Sources as the agent's `cairn backup` takes them. */
  disks: string[];
}

/** A resource `replaceAgentResources` did not move because another unrevoked agent holds it. */
export interface ResourceConflict {
  name: string;
  /** The agent that holds it and keeps it. */
  heldBy: string;
}

export interface ResourceFilter {
  agentId?: string;
  vault?: string;
}

/**
 * When a policy fires: CBR trigger patterns and/or one cron expression, read in `timezone` (as
 * ScheduleSpec in agent/policy/trigger.ts, and Trigger in shared/protocol/messages.ts).
 */
export interface PolicyTrigger {
  patterns?: string[];
  cron?: string;
  timezone: string;
}

/**
 * Which backups a policy keeps, with CBR's field names (operation_definition). Mirrors
 * agent/policy/retention.ts RetentionRule; the control plane may not import the agent. Structurally
 * the same as Retention in shared/protocol (as PolicyRecord is as its Policy), so a stored policy
 * can be pushed as it is.
 */
export interface PolicyRetention {
  max_backups?: number;
  retention_duration_days?: number;
  day_backups?: number;
  week_backups?: number;
  month_backups?: number;
  year_backups?: number;
  timezone?: string;
}

export interface PolicyRecord {
  name: string;
  enabled: boolean;
  trigger: PolicyTrigger;
  retention: PolicyRetention;
  /** Vaults the policy is bound to, sorted. */
  vaults: string[];
}

/** What updatePolicy changes: only the fields given. `vaults`, when given, replaces the bindings. */
export type PolicyChanges = Partial<Omit<PolicyRecord, 'name'>>;

export type BackupKind = 'full' | 'incremental';
export type BackupStatus = 'available' | 'deleted';

export interface BackupRecord {
  id: string;
  name: string;
  vault: string;
  resource: string;
  /** The agent that made the backup; null when only a vault scan knows it. */
  agentId: string | null;
  kind: BackupKind;
  startedAt: Timestamp;
  finishedAt: Timestamp;
  bytesRead: number;
  bytesStored: number;
  consistency: Consistency;
  /** What a restore writes (sum of the disks' sizes); null when the reporter did not say. A measurement. */
  logicalBytes: number | null;
  /** The host that made it, as its manifest says; null when not reported. A measurement. */
  host: string | null;
  status: BackupStatus;
  /** When the backup was marked deleted; null while available (and when the time is unknown). */
  deletedAt: Timestamp | null;
}

/** `logicalBytes` and `host` default to null. */
export type BackupInput = Omit<BackupRecord, 'deletedAt' | 'logicalBytes' | 'host'> & {
  deletedAt?: Timestamp | null;
  logicalBytes?: number | null;
  host?: string | null;
};

/** A backup found by a vault scan: present in the vault, so available by definition. */
export type ScannedBackup = Omit<BackupInput, 'status' | 'deletedAt'>;

export interface RecordBackupOptions {
  /** For an id already recorded: leave status and deletedAt as stored (the new status applies only to a new backup). */
  keepStatus?: boolean;
}

export interface BackupFilter {
  vault?: string;
  resource?: string;
  agentId?: string;
  kind?: BackupKind;
  status?: BackupStatus;
  /** Backups started at or after this time. */
  from?: Timestamp;
  /** Backups started before this time. */
  to?: Timestamp;
  /** At most this many (a non-negative integer); absent: all. */
  limit?: number;
  /** Skip this many of the matching backups first (a non-negative integer). */
  offset?: number;
}

export interface ReplaceSummary {
  /** Backups the catalog did not know. */
  added: number;
  /** Backups the catalog had marked deleted, available again because the vault still holds them. */
  restored: number;
  /** Available backups of the vault the scan did not find, now marked deleted. */
  deleted: number;
}

export interface CommandInput {
  commandId: string;
  agentId: string;
  action: string;
  args: JsonValue;
  createdAt: Timestamp;
}

export interface CommandRecord extends CommandInput {
  completedAt: Timestamp | null;
  result: JsonValue | null;
}

export interface CommandFilter {
  agentId?: string;
  /** true: only commands not completed; false: only completed ones; absent: both. */
  pending?: boolean;
  /** At most this many (a non-negative integer); absent: all. */
  limit?: number;
  offset?: number;
}

export type JobStatus = 'ok' | 'failed' | 'cancelled';

/** The outcome of one job an agent ran (a policy's or a command's), as its `job-result` said. */
export interface JobResultRecord {
  agentId: string;
  /** Unique per agent. */
  jobId: string;
  /** null: a policy started it. */
  commandId: string | null;
  status: JobStatus;
  /** The backup the job made, if any. */
  backupId: string | null;
  /** null exactly when status is 'ok' (a cancelled job may carry one). */
  errorCode: string | null;
  errorMessage: string | null;
  /** When the control plane received it (the catalog never reads the clock). */
  receivedAt: Timestamp;
}

export interface JobResultFilter {
  agentId?: string;
  status?: JobStatus;
  /** Received at or after. */
  from?: Timestamp;
  /** Received before. */
  to?: Timestamp;
  limit?: number;
}

export type CatalogEvent = { kind: 'policies' } | { kind: 'commands'; agentId: string };

/** One part of an agent's `catalog-sync`: the scan of one vault in parts 0..n of one syncId. */
export interface SyncPartInput {
  agentId: string;
  syncId: string;
  vault: string;
  part: number;
  last: boolean;
  backups: ScannedBackup[];
}

export interface Catalog {
  // Enrollment tokens

  /** Stores a new token; ALREADY_EXISTS if the id is taken. */
  addEnrollmentToken(token: EnrollmentTokenInput): Promise<void>;
  /** The token as stored, or undefined. For checking a presented secret before using the token. */
  getEnrollmentToken(id: string): Promise<EnrollmentToken | undefined>;
  /**
   * Marks the token used at `now` and returns it as it was before (usedAt null), if it exists, is
   * unused and expires after `now`; otherwise undefined and nothing changes. Atomic: of any number of
   * concurrent callers, in this process or others, exactly one gets the record.
   */
  useEnrollmentToken(id: string, now: Timestamp): Promise<EnrollmentToken | undefined>;

  // Agents

  /** Stores a newly enrolled agent, offline, with policyAck 0; ALREADY_EXISTS if the id is taken. */
  addAgent(agent: AgentInput): Promise<void>;
  getAgent(agentId: string): Promise<AgentRecord | undefined>;
  /** All agents, revoked ones included, in order of enrollment. */
  listAgents(): Promise<AgentRecord[]>;
  /** Records contact and status; allowed for revoked agents (so their socket can still go 'offline'). */
  touchAgent(agentId: string, lastSeen: Timestamp, status: AgentStatus): Promise<void>;
  /** Sets revokedAt; revoking again keeps the first time. */
  revokeAgent(agentId: string, at: Timestamp): Promise<void>;
  /** Records an ack; policyAck only grows, so a late ack of an older version changes nothing. */
  setAgentPolicyAck(agentId: string, version: number): Promise<void>;

  // Vaults

  /** Creates the vault or replaces its type, location and capacity. */
  upsertVault(vault: VaultInput): Promise<void>;
  /** All vaults by name, with usage, resources and bound policies. */
  listVaults(): Promise<VaultRecord[]>;
  /**
   * Creates a vault an agent named that the catalog does not know, as type 'server', location ''
   * (unknown: only the agents know where it is) and no capacity; an existing vault is left as it is.
   */
  ensureVault(name: string): Promise<void>;

  // Resources

  /** Creates the resource or replaces its agent, vault and disks; NOT_FOUND for an unknown agent or vault. */
  upsertResource(resource: ResourceRecord): Promise<void>;
  /** Resources by name, optionally only those of one agent and/or vault. */
  listResources(filter?: ResourceFilter): Promise<ResourceRecord[]>;
  /**
   * Makes the agent's resources `resources` (its `resources` message): adds and updates those,
   * removes the agent's others. A name another unrevoked agent holds is NOT moved: the first owner
   * keeps it, the entry is skipped and returned as a conflict (so one agent cannot take over
   * another's resource, its commands and its backups). A name held by a revoked agent moves to
   * this one (the resource moved hosts). Unknown vaults are created as by ensureVault (also for
   * skipped entries). Returns the conflicts, by name; empty when every entry was stored. NOT_FOUND
   * for an unknown agent; USAGE for a name repeated in the list.
   */
  replaceAgentResources(agentId: string, resources: Omit<ResourceRecord, 'agentId'>[]): Promise<ResourceConflict[]>;

  // Policies. Each call that changes something bumps the one global policy version by exactly 1 and
  // returns the new version; a call that changes nothing (binding a bound vault, unbinding an unbound
  // one, an update to the same values) returns the current version without bumping.

  /** ALREADY_EXISTS for a taken name; NOT_FOUND for an unknown vault in `vaults`. */
  createPolicy(policy: PolicyRecord): Promise<number>;
  /** NOT_FOUND for an unknown policy or vault. */
  updatePolicy(name: string, changes: PolicyChanges): Promise<number>;
  /** Removes the policy and its bindings; NOT_FOUND for an unknown policy. */
  deletePolicy(name: string): Promise<number>;
  getPolicy(name: string): Promise<PolicyRecord | undefined>;
  listPolicies(): Promise<PolicyRecord[]>;
  /** NOT_FOUND for an unknown policy or vault. */
  bindPolicy(policy: string, vault: string): Promise<number>;
  /** NOT_FOUND for an unknown policy. */
  unbindPolicy(policy: string, vault: string): Promise<number>;
  /** The current policy version; 0 before the first change. */
  policyVersion(): Promise<number>;

  // Backups. Idempotent by id: see recordBackup.

  /**
   * Records a backup. The first call for an id stores every field. A later call for the same id:
   * - must carry the same identity (name, vault, resource, kind, startedAt), else ALREADY_EXISTS;
   * - fills in agentId if the catalog has none, and otherwise keeps the stored one;
   * - keeps the stored measurements (finishedAt, bytesRead, bytesStored, consistency): they are facts
   *   of the run, written once;
   * - sets status: 'available' clears deletedAt, 'deleted' keeps an earlier deletedAt or takes the given one;
   *   with `options.keepStatus`, status and deletedAt stay as stored (a report that the backup was
   *   made says nothing about whether it still exists, so it cannot undo a concurrent deletion).
   * NOT_FOUND for an unknown vault.
   */
  recordBackup(backup: BackupInput, options?: RecordBackupOptions): Promise<void>;
  getBackup(id: string): Promise<BackupRecord | undefined>;
  /** Matching backups, newest first (startedAt, then id, both descending: a stable order for paging). */
  listBackups(filter?: BackupFilter): Promise<BackupRecord[]>;
  /** NOT_FOUND for an unknown id; marking a deleted backup again keeps the first time. */
  markBackupDeleted(id: string, at: Timestamp): Promise<void>;
  /**
   * Makes the catalog match a scan of the vault, in one transaction: each scanned backup is recorded
   * (as recordBackup would, with status 'available'), and each available backup of the vault that is
   * not in the scan is marked deleted at `at`. USAGE if a scanned backup names another vault; on any
   * error nothing changes.
   */
  replaceVaultBackups(vault: string, backups: ScannedBackup[], at: Timestamp): Promise<ReplaceSummary>;

  // Commands: the server side of each agent's outbox.

  /**
   * Queues a command. Idempotent by commandId: adding the same command again changes nothing;
   * the same id with another agent, action or args is ALREADY_EXISTS. NOT_FOUND for an unknown agent.
   */
  addCommand(command: CommandInput): Promise<void>;
  getCommand(commandId: string): Promise<CommandRecord | undefined>;
  /** The agent's commands not completed yet, in the order they were added. */
  pendingCommands(agentId: string): Promise<CommandRecord[]>;
  /** Matching commands, newest first (createdAt, then commandId, both descending). */
  listCommands(filter?: CommandFilter): Promise<CommandRecord[]>;
  /**
   * Completes a command with its result. Idempotent: completing it again keeps the first result and
   * time and returns false; true when this call completed it. NOT_FOUND for an unknown id.
   */
  completeCommand(commandId: string, result: JsonValue, at: Timestamp): Promise<boolean>;

  // Job results: idempotent by (agentId, jobId), so a re-sent job-result is stored once.

  /** Stores the result; true when new, false when that agent's jobId was already stored (kept as first stored). NOT_FOUND for an unknown agent. */
  recordJobResult(result: JobResultRecord): Promise<boolean>;
  /** Matching results, newest first (receivedAt, then agentId and jobId, descending). */
  listJobResults(filter?: JobResultFilter): Promise<JobResultRecord[]>;

  // Catalog syncs

  /**
   * Stores one part of a sync. When the catalog then holds every part 0..n of that (agentId, syncId),
   * the part with `last` being n, it replaces the vault's backups with their union, as
   * replaceVaultBackups(vault, union, at) in the same transaction, forgets the parts, remembers the
   * sync as done and returns the summary; otherwise null. A part of a sync already done, or a part
   * stored already, changes nothing and returns null (re-sent outbox messages). USAGE when parts of one
   * sync disagree on the vault or on which part is last, or a backup names another vault. Unknown
   * vaults are created as by ensureVault.
   */
  addSyncPart(part: SyncPartInput, at: Timestamp): Promise<ReplaceSummary | null>;

  // Change notices between control-plane instances that share one database

  /**
   * Calls `listener` when any instance sharing this database (this one included) changed policies or
   * bindings (`policies`), or queued a command for an agent (`commands`), so the instance holding
   * that agent's connection pushes it at once. Best effort: a notice may be lost while the database
   * connection is down, so callers also catch up on connect (and on heartbeats), and an
   * implementation whose notice connection came back emits `policies` once, with or without a
   * change. Returns the function that stops it.
   */
  watch(listener: (event: CatalogEvent) => void): () => void;

  /** Releases the database; the catalog must not be used afterwards. */
  close(): Promise<void>;
}
