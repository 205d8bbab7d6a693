import { errorCatalogue, type ErrorCode } from '../errors.js';
import { ProtocolError } from './protocol-error.js';
import {
  array,
  boolean,
  describe,
  enumOf,
  int,
  literal,
  nullable,
  nullOnly,
  number,
  object,
  optional,
  quote,
  refine,
  string,
  variants,
  type Infer,
  type Schema,
} from './schema.js';

export { ProtocolError } from './protocol-error.js';

/**
 * The messages between agent and control plane (README.md in this folder is the table). Every
 * message is one WebSocket text frame holding one JSON object `{ v, type, id, ...payload }`.
 * `decodeMessage` and `encodeMessage` apply the same checks, so a peer never sends what the other
 * refuses; both throw only ProtocolError.
 */

/** Largest frame either side sends or accepts, in bytes of UTF-8. */
export const MAX_FRAME_BYTES = 256 * 1024;

/** Envelope versions (`v`) this build speaks, oldest first. */
export const SUPPORTED_VERSIONS: readonly number[] = [1];
export const PROTOCOL_VERSION = 1;

/** Length and count limits; README.md lists them. */
export const LIMITS = {
  /** Message, agent, job, command, backup and sync ids. */
  id: 64,
  /** Vault, resource, policy and backup names. */
  name: 128,
  token: 4096,
  version: 64,
  /** Free text: inventory strings, error messages, cron expressions, trigger patterns. */
  text: 256,
  errorMessage: 1024,
  /** A restore target: a path or an nbd:// URL. */
  target: 4096,
  timestamp: 40,
  protocolVersions: 16,
  runningJobs: 256,
  policies: 256,
  policyVaults: 64,
  triggerPatterns: 24,
  inventoryItems: 256,
  addresses: 64,
  catalogBackups: 500,
  resources: 1024,
  disksPerResource: 1024,
} as const;

// ---- payload types ---------------------------------------------------------------------------

/** As `Inventory` in agent/daemon/status.ts (systeminformation's view of the host). */
export interface Inventory {
  hostname: string;
  os: { platform: string; distro: string; release: string; kernel: string; arch: string };
  cpus: { model: string; cores: number; physicalCores: number };
  memoryBytes: number;
  disks: { name: string; type: string; sizeBytes: number; model: string }[];
  network: { iface: string; mac: string; ip4: string[]; ip6: string[] }[];
}

/** A failure as the CLI and the console show it: a code of the shared/errors.ts catalogue. */
export interface Problem {
  code: ErrorCode;
  message: string;
}

/** One backup as the vault's manifest records it; what the control plane's catalog holds. */
export interface BackupSummary {
  id: string;
  name: string;
  vault: string;
  resource: string;
  kind: 'full' | 'incremental';
  startedAt: string;
  finishedAt: string;
  bytesRead: number;
  bytesStored: number;
  /** Absent from agents that predate it. */
  consistency?: 'crash_consistent' | 'app_consistent';
  /** The host that made it (the manifest's `host`). */
  host?: string;
  /** What a restore writes: the sum of its disks' sizes. With `bytesStored`, the dedup ratio. */
  logicalBytes?: number;
}

/** One resource the agent's config protects: what the control plane can target with a command. */
export interface ResourceSummary {
  name: string;
  /** The vault the agent backs it up to. */
  vault: string;
  /** Its disks' sources as the agent's config names them, without any user or password in a URL. */
  disks: string[];
}

export interface RunningJobSummary {
  id: string;
  kind: 'backup' | 'prune' | 'gc';
  /** null for gc (a whole vault). */
  resource: string | null;
  /** 0-100; null while the job does not know its size yet. */
  percent: number | null;
}

/** When a policy fires: as ScheduleSpec in agent/policy/trigger.ts (patterns and/or cron, one zone). */
export interface Trigger {
  /** CBR trigger patterns (RRULE subset), e.g. 'FREQ=DAILY;INTERVAL=1;BYHOUR=2;BYMINUTE=00'. */
  patterns?: string[];
  cron?: string;
  /** IANA name ('Europe/Berlin') or CBR offset ('UTC+08:00'). */
  timezone: string;
}

/** As RetentionRule in agent/policy/retention.ts (CBR's field names); ranges checked here, the rest there. */
export interface Retention {
  max_backups?: number;
  retention_duration_days?: number;
  day_backups?: number;
  week_backups?: number;
  month_backups?: number;
  year_backups?: number;
  timezone?: string;
}

export interface Policy {
  name: string;
  enabled: boolean;
  /** Every resource of these vaults (as the agent's config binds resources to vaults) is backed up. */
  vaults: string[];
  trigger: Trigger;
  retention: Retention;
}

// ---- messages ------------------------------------------------------------------------------

interface Envelope<T extends string> {
  v: 1;
  type: T;
  /** Unique per sender and connection lifetime; what `ack` and `error.inReplyTo` name. */
  id: string;
}

/** First message on every connection; the control plane answers `welcome` or `error`, then closes. */
export interface HelloMessage extends Envelope<'hello'> {
  agentId: string;
  /** The per-agent credential. Never logged, never echoed in an error. */
  token: string;
  agentVersion: string;
  /** Envelope versions the agent speaks. */
  protocolVersions: number[];
  /** null while the agent has not collected it. */
  inventory: Inventory | null;
  /** The policy version the agent runs; null: none received yet. */
  policyVersion: number | null;
}

export interface HeartbeatMessage extends Envelope<'heartbeat'> {
  jobs: RunningJobSummary[];
}

/** Answers `policy-push`. With `error`, the agent refused that version and keeps running the one before. */
export interface PolicyAckMessage extends Envelope<'policy-ack'> {
  version: number;
  error: Problem | null;
}

/**
 * The resources the agent protects, as its config says; sent after every `welcome` and after the
 * config changes. Replaces what the control plane knew of this agent's resources. Not acknowledged.
 */
export interface ResourcesMessage extends Envelope<'resources'> {
  resources: ResourceSummary[];
}

/** Best effort: neither stored nor acknowledged; the next one supersedes it. */
export interface JobProgressMessage extends Envelope<'job-progress'> {
  jobId: string;
  /** The `command` the job answers (null: a policy started it); absent from older agents. */
  commandId?: string | null;
  /** What the job works on; absent from older agents. */
  kind?: 'backup' | 'prune' | 'gc' | 'restore' | 'verify' | 'delete';
  resource?: string | null;
  vault?: string;
  percent: number;
  bytesDone: number;
  bytesTotal: number;
  rateBytesPerSecond: number;
}

/** Goes through the agent's durable outbox: sent again until the control plane acks its id. */
export interface JobResultMessage extends Envelope<'job-result'> {
  jobId: string;
  /** The `command` this job answers; null for jobs the agent's policies started. */
  commandId: string | null;
  status: 'ok' | 'failed' | 'cancelled';
  /** The backup the job made, if it made one. */
  backup: BackupSummary | null;
  /** null exactly when status is 'ok'; required when 'failed'. */
  error: Problem | null;
}

/**
 * The backups of one vault, so the control plane can rebuild its catalog. A catalog bigger than one
 * frame goes in parts 0..n of one `syncId`, the last with `last: true`; the control plane replaces
 * the vault's catalog once it holds every part. Durable outbox, acked per message.
 */
export interface CatalogSyncMessage extends Envelope<'catalog-sync'> {
  vault: string;
  syncId: string;
  part: number;
  last: boolean;
  backups: BackupSummary[];
}

export interface WelcomeMessage extends Envelope<'welcome'> {
  agentId: string;
  serverTime: string;
  heartbeatSeconds: number;
  /** The envelope version both sides use from now on: the highest both speak. */
  protocolVersion: number;
}

/** The whole policy set, replacing the one before; the agent answers `policy-ack` with the version. */
export interface PolicyPushMessage extends Envelope<'policy-push'> {
  version: number;
  policies: Policy[];
}

interface CommandBase<A extends string> extends Envelope<'command'> {
  /** Stable across re-sends; the job-result that answers it carries it. The agent runs it at most once. */
  commandId: string;
  action: A;
  vault: string;
}

export interface BackupNowCommand extends CommandBase<'backup-now'> {
  resource: string;
  args: {
    /** Read every block instead of comparing with the previous backup. */
    full: boolean;
    /** The backup's name; null: the agent makes a `manualbk_` name. */
    name: string | null;
  };
}

export interface RestoreCommand extends CommandBase<'restore'> {
  resource: string;
  args: {
    backupId: string;
    /** A path on the agent's host, as `cairn restore --to` takes it. */
    target: string;
    /** Only this disk (0-based); null: every disk. */
    disk: number | null;
    /** Replace an existing file or write over a block device. */
    force: boolean;
  };
}

export interface VerifyCommand extends CommandBase<'verify'> {
  /** null: the whole vault. */
  resource: string | null;
  args: {
    /** Also decrypt and hash every chunk (`cairn vault verify --read-data`). */
    readData: boolean;
  };
}

/** Deletes one backup from the vault (its chunks go at the vault's next gc). */
export interface DeleteCommand extends CommandBase<'delete'> {
  resource: string;
  args: { backupId: string };
}

/** Asks the agent to send `catalog-sync` for `vault` now (the control plane rebuilds that vault's catalog). */
export interface CatalogSyncCommand extends CommandBase<'catalog-sync'> {
  resource: null;
  args: Record<string, never>;
}

export type CommandMessage = BackupNowCommand | RestoreCommand | VerifyCommand | DeleteCommand | CatalogSyncCommand;

/** Acknowledges a durable outbox message (`job-result`, `catalog-sync`) by its id. */
export interface AckMessage extends Envelope<'ack'> {
  messageId: string;
}

/** Either side, then usually closes. Sent in envelope v1 whatever the version refused. */
export interface ErrorMessage extends Envelope<'error'> {
  code: ErrorCode;
  message: string;
  /** The id of the message this answers, when it could be read. */
  inReplyTo: string | null;
  /** Present when a message's `v` was refused: the versions the sender speaks. */
  supportedVersions?: number[];
}

export type AgentMessage =
  | HelloMessage
  | HeartbeatMessage
  | ResourcesMessage
  | PolicyAckMessage
  | JobProgressMessage
  | JobResultMessage
  | CatalogSyncMessage
  | ErrorMessage;
export type ServerMessage = WelcomeMessage | PolicyPushMessage | CommandMessage | AckMessage | ErrorMessage;
export type Message = AgentMessage | ServerMessage;
export type MessageType = Message['type'];

/** 'to-server': sent by the agent; 'to-agent': sent by the control plane. */
export type Direction = 'to-server' | 'to-agent';

// ---- schemas -------------------------------------------------------------------------------

const id = string({ min: 1, max: LIMITS.id, pattern: /^[A-Za-z0-9._:-]+$/, hint: "letters, digits, '.', '_', ':' and '-'" });
const name = string({ min: 1, max: LIMITS.name, pattern: /^[^\p{Cc}]+$/u, hint: 'printable characters (no control characters)' });
const text = string({ max: LIMITS.text });
const bytes = int({ min: 0 });
const percent = number({ min: 0, max: 100 });
const timestamp = string({
  max: LIMITS.timestamp,
  pattern: /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/,
  hint: 'an ISO 8601 time such as 2024-05-01T02:00:00.000Z',
  check: (s) => (Number.isNaN(Date.parse(s)) ? 'is not a valid date and time' : undefined),
});
const envelopeVersion = int({ min: 1, max: 65535 });
const errorCode = enumOf(Object.keys(errorCatalogue) as ErrorCode[]);

const problem: Schema<Problem> = object({ code: errorCode, message: string({ max: LIMITS.errorMessage }) });

const inventory: Schema<Inventory> = object({
  hostname: text,
  os: object({ platform: text, distro: text, release: text, kernel: text, arch: text }),
  cpus: object({ model: text, cores: int({ min: 0 }), physicalCores: int({ min: 0 }) }),
  memoryBytes: bytes,
  disks: array(object({ name: text, type: text, sizeBytes: bytes, model: text }), { max: LIMITS.inventoryItems }),
  network: array(
    object({
      iface: text,
      mac: text,
      ip4: array(text, { max: LIMITS.addresses }),
      ip6: array(text, { max: LIMITS.addresses }),
    }),
    { max: LIMITS.inventoryItems },
  ),
});

const backupSummary: Schema<BackupSummary> = object({
  id,
  name,
  vault: name,
  resource: name,
  kind: enumOf(['full', 'incremental']),
  startedAt: timestamp,
  finishedAt: timestamp,
  bytesRead: bytes,
  bytesStored: bytes,
  consistency: optional(enumOf(['crash_consistent', 'app_consistent'])),
  host: optional(text),
  logicalBytes: optional(bytes),
});

const trigger: Schema<Trigger> = refine(
  object({
    patterns: optional(array(string({ min: 1, max: LIMITS.text }), { max: LIMITS.triggerPatterns })),
    cron: optional(string({ min: 1, max: LIMITS.text })),
    timezone: string({ min: 1, max: LIMITS.version }),
  }),
  (t) => (!t.patterns?.length && t.cron === undefined ? { at: '', problem: "needs 'patterns' or 'cron'" } : undefined),
);

const retentionCount = optional(int({ min: -1, max: 99_999 }));
const longTerm = optional(int({ min: 0, max: 100 }));
const retention: Schema<Retention> = object({
  max_backups: retentionCount,
  retention_duration_days: retentionCount,
  day_backups: longTerm,
  week_backups: longTerm,
  month_backups: longTerm,
  year_backups: longTerm,
  timezone: optional(string({ min: 1, max: LIMITS.version })),
});

const policy: Schema<Policy> = object({
  name,
  enabled: boolean(),
  vaults: array(name, { min: 1, max: LIMITS.policyVaults }),
  trigger,
  retention,
});

function uniqueBy<T>(key: (item: T) => string, what: string): (items: T[]) => { at: string; problem: string } | undefined {
  return (items) => {
    const seen = new Map<string, number>();
    for (let i = 0; i < items.length; i++) {
      const k = key(items[i]!);
      const first = seen.get(k);
      if (first !== undefined) return { at: `[${i}].${what}`, problem: `repeats [${first}].${what} ${quote(k)}` };
      seen.set(k, i);
    }
    return undefined;
  };
}

function envelope<const T extends MessageType>(type: T) {
  return { v: literal(1), type: literal(type), id };
}

const commandBase = { ...envelope('command'), commandId: id, vault: name };

const schemas = {
  hello: object({
    ...envelope('hello'),
    agentId: id,
    token: string({ min: 1, max: LIMITS.token }),
    agentVersion: string({ min: 1, max: LIMITS.version }),
    protocolVersions: array(envelopeVersion, { min: 1, max: LIMITS.protocolVersions }),
    inventory: nullable(inventory),
    policyVersion: nullable(int({ min: 0 })),
  }) satisfies Schema<HelloMessage>,
  heartbeat: object({
    ...envelope('heartbeat'),
    jobs: array(
      object({ id, kind: enumOf(['backup', 'prune', 'gc']), resource: nullable(name), percent: nullable(percent) }),
      { max: LIMITS.runningJobs },
    ),
  }) satisfies Schema<HeartbeatMessage>,
  resources: object({
    ...envelope('resources'),
    resources: refine(
      array(object({ name, vault: name, disks: array(string({ min: 1, max: LIMITS.target }), { min: 1, max: LIMITS.disksPerResource }) }), {
        max: LIMITS.resources,
      }),
      uniqueBy((r) => r.name, 'name'),
    ),
  }) satisfies Schema<ResourcesMessage>,
  'policy-ack': object({ ...envelope('policy-ack'), version: int({ min: 0 }), error: nullable(problem) }) satisfies Schema<PolicyAckMessage>,
  'job-progress': object({
    ...envelope('job-progress'),
    jobId: id,
    commandId: optional(nullable(id)),
    kind: optional(enumOf(['backup', 'prune', 'gc', 'restore', 'verify', 'delete'])),
    resource: optional(nullable(name)),
    vault: optional(name),
    percent,
    bytesDone: bytes,
    bytesTotal: bytes,
    rateBytesPerSecond: number({ min: 0 }),
  }) satisfies Schema<JobProgressMessage>,
  'job-result': refine(
    object({
      ...envelope('job-result'),
      jobId: id,
      commandId: nullable(id),
      status: enumOf(['ok', 'failed', 'cancelled']),
      backup: nullable(backupSummary),
      error: nullable(problem),
    }),
    (m) => {
      if (m.status === 'ok' && m.error !== null) return { at: '.error', problem: "must be null when status is 'ok'" };
      if (m.status === 'failed' && m.error === null) return { at: '.error', problem: "must say what failed when status is 'failed'" };
      return undefined;
    },
  ) satisfies Schema<JobResultMessage>,
  'catalog-sync': object({
    ...envelope('catalog-sync'),
    vault: name,
    syncId: id,
    part: int({ min: 0 }),
    last: boolean(),
    backups: array(backupSummary, { max: LIMITS.catalogBackups }),
  }) satisfies Schema<CatalogSyncMessage>,
  welcome: object({
    ...envelope('welcome'),
    agentId: id,
    serverTime: timestamp,
    heartbeatSeconds: int({ min: 1, max: 3600 }),
    protocolVersion: envelopeVersion,
  }) satisfies Schema<WelcomeMessage>,
  'policy-push': object({
    ...envelope('policy-push'),
    version: int({ min: 1 }),
    policies: refine(
      array(policy, { max: LIMITS.policies }),
      uniqueBy((p) => p.name, 'name'),
    ),
  }) satisfies Schema<PolicyPushMessage>,
  command: variants('action', {
    'backup-now': object({
      ...commandBase,
      action: literal('backup-now'),
      resource: name,
      args: object({
        full: boolean(),
        name: nullable(string({ min: 1, max: LIMITS.name, pattern: /^[A-Za-z0-9][A-Za-z0-9._-]*$/, hint: "letters, digits, '.', '_' and '-'" })),
      }),
    }),
    restore: object({
      ...commandBase,
      action: literal('restore'),
      resource: name,
      args: object({
        backupId: id,
        target: string({ min: 1, max: LIMITS.target }),
        disk: nullable(int({ min: 0, max: 1023 })),
        force: boolean(),
      }),
    }),
    verify: object({ ...commandBase, action: literal('verify'), resource: nullable(name), args: object({ readData: boolean() }) }),
    delete: object({ ...commandBase, action: literal('delete'), resource: name, args: object({ backupId: id }) }),
    'catalog-sync': object({ ...commandBase, action: literal('catalog-sync'), resource: nullOnly, args: object({}) }),
  }) satisfies Schema<CommandMessage>,
  ack: object({ ...envelope('ack'), messageId: id }) satisfies Schema<AckMessage>,
  error: object({
    ...envelope('error'),
    code: errorCode,
    message: string({ max: LIMITS.errorMessage }),
    inReplyTo: nullable(id),
    supportedVersions: optional(array(envelopeVersion, { max: LIMITS.protocolVersions })),
  }) satisfies Schema<ErrorMessage>,
} satisfies { [T in MessageType]: Schema<Extract<Message, { type: T }>> };

// Each schema's inferred type and the interface above accept the same values (each is assignable
// to the other), so the two cannot drift apart.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
type AllTrue<T extends Record<MessageType, true>> = T;
type SchemasMatchInterfaces = AllTrue<{ [T in MessageType]: Same<Infer<(typeof schemas)[T]>, Extract<Message, { type: T }>> }>;

/** Which types travel in which direction; `error` travels both ways. */
export const MESSAGE_TYPES = {
  'to-server': ['hello', 'heartbeat', 'resources', 'policy-ack', 'job-progress', 'job-result', 'catalog-sync', 'error'],
  'to-agent': ['welcome', 'policy-push', 'command', 'ack', 'error'],
} as const satisfies Record<Direction, readonly MessageType[]>;

const PEER: Record<Direction, string> = { 'to-server': 'the control plane', 'to-agent': 'the agent' };

// ---- decode / encode -----------------------------------------------------------------------

const utf8 = new TextDecoder('utf-8', { fatal: true });

function frameError(problem: string, context: string, cause?: unknown): ProtocolError {
  return new ProtocolError(null, problem, { context, cause });
}

/** UTF-8 size of `raw`, or a figure at most MAX_FRAME_BYTES when it cannot exceed it (n UTF-16 units are at most 3n bytes). */
function frameBytes(raw: string): number {
  return raw.length * 3 <= MAX_FRAME_BYTES ? raw.length : Buffer.byteLength(raw, 'utf8');
}

function tooBig(size: number): string {
  return `frame is ${size} bytes; at most ${MAX_FRAME_BYTES} (256 KiB) allowed`;
}

/**
 * Checks the envelope (`v`, `type`, for `direction` or for either when undefined) and then the
 * message's fields. Throws ProtocolError with `context` and the message id when it could be read.
 */
function validate(value: unknown, direction: Direction | undefined, context: string): Message {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw frameError(`message must be a JSON object, not ${describe(value)}`, context);
  }
  const m = value as Record<string, unknown>;
  const messageId = typeof m.id === 'string' && m.id.length <= LIMITS.id && /^[A-Za-z0-9._:-]+$/.test(m.id) ? m.id : null;
  const refuse = (field: string, problem: string): ProtocolError => new ProtocolError(field, problem, { context, messageId });
  const versions = SUPPORTED_VERSIONS.join(', ');
  if (m.v === undefined) throw refuse('v', `is missing; supported envelope versions: ${versions}`);
  if (typeof m.v !== 'number') throw refuse('v', `must be a number, not ${describe(m.v)}; supported envelope versions: ${versions}`);
  if (!SUPPORTED_VERSIONS.includes(m.v)) {
    throw refuse('v', `${quote(m.v)} is not a supported envelope version; supported: ${versions}`);
  }
  const types: readonly string[] = direction === undefined ? Object.keys(schemas) : MESSAGE_TYPES[direction];
  const to = direction === undefined ? '' : ` to ${PEER[direction]}`;
  if (m.type === undefined) throw refuse('type', `is missing; a message${to} is one of ${types.join(', ')}`);
  if (typeof m.type !== 'string' || !types.includes(m.type)) {
    throw refuse('type', `${quote(m.type)} is not a message${to}; expected one of ${types.join(', ')}`);
  }
  try {
    return schemas[m.type as MessageType].parse(m, m.type);
  } catch (err) {
    if (!(err instanceof ProtocolError)) throw err;
    throw new ProtocolError(err.field, err.problem, { context, messageId });
  }
}

/**
 * Reads one frame that travels in `direction`. Refuses, with a ProtocolError naming the field:
 * frames over MAX_FRAME_BYTES (before parsing), invalid UTF-8, non-JSON, non-objects, an unknown
 * `v` or a `type` that does not travel this way, and any missing, unknown, mistyped or oversized field.
 */
export function decodeMessage(raw: string | Buffer, direction: 'to-server'): AgentMessage;
export function decodeMessage(raw: string | Buffer, direction: 'to-agent'): ServerMessage;
export function decodeMessage(raw: string | Buffer, direction: Direction): Message;
export function decodeMessage(raw: string | Buffer, direction: Direction): Message {
  const context = `message to ${PEER[direction]} refused`;
  let text: string;
  if (typeof raw === 'string') {
    const size = frameBytes(raw);
    if (size > MAX_FRAME_BYTES) throw frameError(tooBig(size), context);
    text = raw;
  } else if (Buffer.isBuffer(raw)) {
    if (raw.length > MAX_FRAME_BYTES) throw frameError(tooBig(raw.length), context);
    try {
      text = utf8.decode(raw);
    } catch (err) {
      throw frameError('frame is not valid UTF-8', context, err);
    }
  } else {
    throw frameError(`frame must be a string or a Buffer, not ${describe(raw)}`, context);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    // The parser's message quotes the frame, which may hold a credential: keep only the position.
    const at = /position (\d+)/.exec((err as Error).message)?.[1];
    throw frameError(`frame is not JSON${at === undefined ? '' : ` (error at character ${at})`}`, context, err);
  }
  return validate(value, direction, context);
}

/** The frame for `message`, after the same checks the peer makes: never sends what would be refused. */
export function encodeMessage(message: Message): string {
  const context = 'message not sent';
  const checked = validate(message, undefined, context);
  const frame = JSON.stringify(checked);
  const size = frameBytes(frame);
  if (size > MAX_FRAME_BYTES) {
    throw new ProtocolError(null, tooBig(size), { context, messageId: checked.id });
  }
  return frame;
}

/** The envelope version to use with a peer that speaks `offered`: the highest both speak, or undefined. */
export function chooseProtocolVersion(offered: readonly number[]): number | undefined {
  return [...offered].filter((v) => SUPPORTED_VERSIONS.includes(v)).sort((a, b) => b - a)[0];
}

/**
 * The `error` message that answers a refused frame: names the refused message's id when known, and
 * the supported versions when `v` was the problem. `id` is the new message's own id.
 */
export function errorReplyFor(err: ProtocolError, id: string): ErrorMessage {
  const reply: ErrorMessage = {
    v: 1,
    type: 'error',
    id,
    code: err.code,
    message: err.message.length > LIMITS.errorMessage ? `${err.message.slice(0, LIMITS.errorMessage - 3)}...` : err.message,
    inReplyTo: err.messageId,
  };
  if (err.field === 'v') reply.supportedVersions = [...SUPPORTED_VERSIONS];
  return reply;
}
