import { CairnError } from '../../shared/errors.js';
import type {
  BackupInput,
  BackupKind,
  BackupStatus,
  JobResultRecord,
  JobStatus,
  JsonValue,
  PolicyRecord,
  PolicyRetention,
  PolicyTrigger,
  ResourceRecord,
  SyncPartInput,
  Timestamp,
  VaultInput,
  VaultType,
} from './catalog.js';

/**
 * Checks and normalises what callers hand a Catalog, so that every implementation stores the same
 * values and refuses the same input with the same CairnError USAGE. Pure: no database, no clock.
 */

function usage(message: string): CairnError {
  return new CairnError('USAGE', `catalog: ${message}`);
}

/**
 * An ISO 8601 timestamp in UTC with milliseconds ('2025-01-02T03:04:05.000Z'), so stored times sort
 * as text. Years outside 0000-9999 are refused: their extended form ('+010000-...') would not sort.
 */
export function timestamp(value: unknown, field: string): Timestamp {
  const date = typeof value === 'string' ? new Date(value) : undefined;
  const iso = date && !Number.isNaN(date.getTime()) ? date.toISOString() : undefined;
  if (iso === undefined || iso.length !== 24) {
    throw usage(`${field} must be an ISO 8601 date and time between years 0000 and 9999, got ${JSON.stringify(value)}`);
  }
  return iso;
}

export function nullableTimestamp(value: unknown, field: string): Timestamp | null {
  return value === null || value === undefined ? null : timestamp(value, field);
}

export function requiredText(value: unknown, field: string): string {
  if (typeof value !== 'string' || value.length === 0) throw usage(`${field} must be a non-empty string, got ${JSON.stringify(value)}`);
  return value;
}

export function nonNegativeInteger(value: unknown, field: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw usage(`${field} must be a non-negative integer, got ${JSON.stringify(value)}`);
  }
  return value;
}

function oneOf<T extends string>(value: unknown, allowed: readonly T[], field: string): T {
  if (!allowed.includes(value as T)) throw usage(`${field} must be one of ${allowed.join(', ')}, got ${JSON.stringify(value)}`);
  return value as T;
}

export const VAULT_TYPES: readonly VaultType[] = ['server', 'disk', 'filesystem', 'hybrid'];
export const BACKUP_KINDS: readonly BackupKind[] = ['full', 'incremental'];
export const BACKUP_STATUSES: readonly BackupStatus[] = ['available', 'deleted'];
const CONSISTENCIES = ['crash_consistent', 'app_consistent'] as const;

/** JSON text of a value; USAGE if JSON cannot carry it (undefined, a function, a cycle, a bigint). */
export function jsonText(value: unknown, field: string): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch (err) {
    throw new CairnError('USAGE', `catalog: ${field} is not JSON-serialisable: ${(err as Error).message}`, { cause: err });
  }
  if (text === undefined) throw usage(`${field} is not JSON-serialisable`);
  return text;
}

/** JSON text with object keys sorted, so two equal values give equal text whatever their key order. */
export function canonicalJson(value: JsonValue): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v !== null && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v,
  );
}

const SECRET_PARAMETER = /secret|password|passwd|token|signature|credential|access.?key/i;

export function vaultInput(v: VaultInput): VaultInput {
  const name = requiredText(v.name, 'vault name');
  const location = requiredText(v.location, `location of vault ${name}`);
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(location)) {
    let url: URL;
    try {
      url = new URL(location);
    } catch (err) {
      throw new CairnError('USAGE', `catalog: location of vault ${name} is not a valid URL: ${location}`, { cause: err });
    }
    const secretParam = [...url.searchParams.keys()].find((k) => SECRET_PARAMETER.test(k));
    if (url.username || url.password || secretParam !== undefined) {
      // The message must not repeat the location: it holds a secret.
      throw usage(
        `location of vault ${name} carries credentials (${secretParam ?? 'user or password'}); store the location only and keep credentials in the credential store`,
      );
    }
  }
  if (v.capacityBytes !== null && (!Number.isSafeInteger(v.capacityBytes) || v.capacityBytes <= 0)) {
    throw usage(`capacityBytes of vault ${name} must be a positive integer or null, got ${JSON.stringify(v.capacityBytes)}`);
  }
  return { name, type: oneOf(v.type, VAULT_TYPES, `type of vault ${name}`), location, capacityBytes: v.capacityBytes };
}

export function stringList(value: unknown, field: string): string[] {
  if (!Array.isArray(value)) throw usage(`${field} must be an array of strings, got ${JSON.stringify(value)}`);
  return value.map((s, i) => requiredText(s, `${field}[${i}]`));
}

function policyTrigger(t: PolicyTrigger, field: string): PolicyTrigger {
  if (t === null || typeof t !== 'object') throw usage(`${field} must be an object, got ${JSON.stringify(t)}`);
  const out: PolicyTrigger = { timezone: requiredText(t.timezone, `${field}.timezone`) };
  if (t.patterns !== undefined) out.patterns = stringList(t.patterns, `${field}.patterns`);
  if (t.cron !== undefined) out.cron = requiredText(t.cron, `${field}.cron`);
  if (!out.patterns?.length && out.cron === undefined) throw usage(`${field} needs patterns or cron: a policy that never fires`);
  return out;
}

const RETENTION_COUNTS = ['max_backups', 'retention_duration_days', 'day_backups', 'week_backups', 'month_backups', 'year_backups'] as const;

/**
 * The retention fields the catalog knows, each an integer (ranges are checked where policies are
 * parsed for use, agent/policy/retention.ts); unknown fields are refused rather than silently kept.
 */
function policyRetention(r: PolicyRetention, field: string): PolicyRetention {
  if (r === null || typeof r !== 'object') throw usage(`${field} must be an object, got ${JSON.stringify(r)}`);
  const out: PolicyRetention = {};
  for (const [key, value] of Object.entries(r)) {
    if (value === undefined) continue;
    if (key === 'timezone') out.timezone = requiredText(value, `${field}.timezone`);
    else if ((RETENTION_COUNTS as readonly string[]).includes(key)) {
      if (!Number.isSafeInteger(value)) throw usage(`${field}.${key} must be an integer, got ${JSON.stringify(value)}`);
      out[key as (typeof RETENTION_COUNTS)[number]] = value as number;
    } else throw usage(`${field} has an unknown field ${key}; known: ${[...RETENTION_COUNTS, 'timezone'].join(', ')}`);
  }
  return out;
}

export function policyRecord(p: PolicyRecord): PolicyRecord {
  const name = requiredText(p.name, 'policy name');
  if (typeof p.enabled !== 'boolean') throw usage(`enabled of policy ${name} must be true or false, got ${JSON.stringify(p.enabled)}`);
  return {
    name,
    enabled: p.enabled,
    trigger: policyTrigger(p.trigger, `trigger of policy ${name}`),
    retention: policyRetention(p.retention, `retention of policy ${name}`),
    vaults: [...new Set(stringList(p.vaults, `vaults of policy ${name}`))].sort(),
  };
}

/** A backup with its fields checked and the optional ones filled in (null). */
export type CheckedBackup = Required<BackupInput>;

export function backupInput(b: BackupInput): CheckedBackup {
  const id = requiredText(b.id, 'backup id');
  const at = `backup ${id}`;
  return {
    id,
    name: requiredText(b.name, `name of ${at}`),
    vault: requiredText(b.vault, `vault of ${at}`),
    resource: requiredText(b.resource, `resource of ${at}`),
    agentId: b.agentId === null ? null : requiredText(b.agentId, `agentId of ${at}`),
    kind: oneOf(b.kind, BACKUP_KINDS, `kind of ${at}`),
    startedAt: timestamp(b.startedAt, `startedAt of ${at}`),
    finishedAt: timestamp(b.finishedAt, `finishedAt of ${at}`),
    bytesRead: nonNegativeInteger(b.bytesRead, `bytesRead of ${at}`),
    bytesStored: nonNegativeInteger(b.bytesStored, `bytesStored of ${at}`),
    consistency: oneOf(b.consistency, CONSISTENCIES, `consistency of ${at}`),
    logicalBytes: b.logicalBytes === null || b.logicalBytes === undefined ? null : nonNegativeInteger(b.logicalBytes, `logicalBytes of ${at}`),
    host: b.host === null || b.host === undefined ? null : requiredText(b.host, `host of ${at}`),
    status: oneOf(b.status, BACKUP_STATUSES, `status of ${at}`),
    deletedAt: b.status === 'deleted' ? nullableTimestamp(b.deletedAt, `deletedAt of ${at}`) : null,
  };
}

/** The fields that say which backup a record is; a record for a known id must repeat them. */
export const BACKUP_IDENTITY = ['name', 'vault', 'resource', 'kind', 'startedAt'] as const;

export const JOB_STATUSES: readonly JobStatus[] = ['ok', 'failed', 'cancelled'];

function nullableText(value: unknown, field: string): string | null {
  return value === null || value === undefined ? null : requiredText(value, field);
}

/** A job result with its fields checked: errorCode null for 'ok', given for 'failed', either for 'cancelled'. */
export function jobResultInput(r: JobResultRecord): JobResultRecord {
  const agentId = requiredText(r.agentId, 'agentId of a job result');
  const jobId = requiredText(r.jobId, `jobId of a job result of agent ${agentId}`);
  const at = `job ${jobId} of agent ${agentId}`;
  const status = oneOf(r.status, JOB_STATUSES, `status of ${at}`);
  const errorCode = nullableText(r.errorCode, `errorCode of ${at}`);
  if (status === 'ok' && errorCode !== null) throw usage(`${at} succeeded but carries errorCode ${errorCode}; an ok job has none`);
  if (status === 'failed' && errorCode === null) throw usage(`${at} failed without an errorCode; a failed job says why`);
  return {
    agentId,
    jobId,
    commandId: nullableText(r.commandId, `commandId of ${at}`),
    status,
    backupId: nullableText(r.backupId, `backupId of ${at}`),
    errorCode,
    errorMessage: r.errorMessage === null || r.errorMessage === undefined ? null : textValue(r.errorMessage, `errorMessage of ${at}`),
    receivedAt: timestamp(r.receivedAt, `receivedAt of ${at}`),
  };
}

function textValue(value: unknown, field: string): string {
  if (typeof value !== 'string') throw usage(`${field} must be a string, got ${JSON.stringify(value)}`);
  return value;
}

/** A resource of an agent's `resources` report, checked; names must be unique within the report. */
export function agentResources(agentId: string, resources: Omit<ResourceRecord, 'agentId'>[]): ResourceRecord[] {
  if (!Array.isArray(resources)) throw usage(`the resources of agent ${agentId} must be an array, got ${JSON.stringify(resources)}`);
  const seen = new Set<string>();
  return resources.map((r, i) => {
    const name = requiredText(r?.name, `name of resource ${i} of agent ${agentId}`);
    if (seen.has(name)) throw usage(`agent ${agentId} reports resource ${name} twice; resource names are unique`);
    seen.add(name);
    return {
      name,
      agentId,
      vault: requiredText(r.vault, `vault of resource ${name}`),
      disks: stringList(r.disks, `disks of resource ${name}`),
    };
  });
}

/** One part of a catalog sync, checked: every backup must name the part's vault. */
export function syncPartInput(p: SyncPartInput): SyncPartInput & { backups: CheckedBackup[] } {
  const agentId = requiredText(p.agentId, 'agentId of a catalog sync');
  const syncId = requiredText(p.syncId, `syncId of a catalog sync of agent ${agentId}`);
  const at = `sync ${syncId} of agent ${agentId}`;
  const vault = requiredText(p.vault, `vault of ${at}`);
  const part = nonNegativeInteger(p.part, `part number of ${at}`);
  if (typeof p.last !== 'boolean') throw usage(`last of part ${part} of ${at} must be true or false, got ${JSON.stringify(p.last)}`);
  if (!Array.isArray(p.backups)) throw usage(`backups of part ${part} of ${at} must be an array`);
  const backups = p.backups.map((b) => backupInput({ ...b, status: 'available' }));
  for (const b of backups) {
    if (b.vault !== vault) throw usage(`part ${part} of ${at} scans vault ${vault} but lists backup ${b.id} of vault ${b.vault}`);
  }
  return { agentId, syncId, vault, part, last: p.last, backups };
}

/** A boolean filter field, or USAGE. */
export function booleanFilter(value: unknown, field: string): boolean {
  if (typeof value !== 'boolean') throw usage(`filter ${field} must be true or false, got ${JSON.stringify(value)}`);
  return value;
}

/**
 * USAGE when a new part of a sync disagrees with the parts stored of it: on the vault, or on which
 * part is the last one (a part after the last, two last parts, a repeated part with another flag).
 */
export function checkSyncPart(p: Pick<SyncPartInput, 'vault' | 'part' | 'last'>, stored: Pick<SyncPartInput, 'vault' | 'part' | 'last'>[], sync: string): void {
  const otherVault = stored.find((s) => s.vault !== p.vault);
  if (otherVault) throw usage(`part ${p.part} of ${sync} scans vault ${p.vault}, but part ${otherVault.part} scanned vault ${otherVault.vault}; one sync covers one vault`);
  const last = stored.find((s) => s.last);
  const same = stored.find((s) => s.part === p.part);
  const disagree =
    (same !== undefined && same.last !== p.last) ||
    (last !== undefined && (p.part > last.part || (p.last && p.part !== last.part))) ||
    (p.last && stored.some((s) => s.part > p.part));
  if (disagree) {
    const known = last ? `part ${last.part} is the last` : `parts up to ${Math.max(...stored.map((s) => s.part))} are stored`;
    throw usage(`part ${p.part}${p.last ? ' (last)' : ''} of ${sync} disagrees on which part is the last: ${known}`);
  }
}
