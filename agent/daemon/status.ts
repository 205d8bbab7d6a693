/**
 * What the agent daemon reports about itself: the data behind `GET /status`, `GET /metrics` and
 * `cairn agent status`. The daemon fills these in; the status server only renders them. Nothing
 * here may hold a secret: vault locations are shown without query strings or credentials.
 */
import type { Inventory } from '../../shared/protocol/messages.js';

export interface JobProgress {
  bytesDone: number;
  bytesTotal: number;
  bytesStored: number;
  /** 0-100, one decimal. */
  percent: number;
  /** Average read rate since the job started, bytes per second. */
  rateBytesPerSecond: number;
  /** Seconds left at the current rate; null while unknown. */
  etaSeconds: number | null;
}

/** What a job does; restore, verify, delete and catalog-sync come only from control-plane commands. */
export type JobKind = 'backup' | 'prune' | 'gc' | 'restore' | 'verify' | 'delete' | 'catalog-sync';

export interface RunningJob {
  id: string;
  kind: JobKind;
  /** The control-plane command the job answers; null or absent: a policy (or `--now`) started it. */
  commandId?: string | null;
  resource: string | null;
  vault: string;
  policy: string | null;
  startedAt: string;
  progress: JobProgress | null;
}

export interface LastResult {
  status: 'ok' | 'failed' | 'cancelled';
  backup: string | null;
  startedAt: string;
  finishedAt: string;
  bytesRead: number;
  bytesStored: number;
  durationMs: number;
  error: string | null;
}

export interface ResourceStatus {
  name: string;
  vault: string;
  policy: string | null;
  lastResult: LastResult | null;
  lastSuccessAt: string | null;
  nextRun: string | null;
}

export interface VaultStatus {
  name: string;
  /** The location without credentials or query string. */
  location: string;
  backups: number | null;
  storedBytes: number | null;
}

// The same inventory goes to the control plane at enrollment and hello: one type, the protocol's.
export type { Inventory };

/** The link to the control plane; `not-configured` until `cairn agent enroll`. */
export interface ControlPlaneStatus {
  state: 'not-configured' | 'connecting' | 'connected' | 'disconnected';
  url: string | null;
  /** The id the control plane gave this agent at enrollment. */
  agentId?: string | null;
  /** The pushed policy set the agent runs; null: none accepted yet. */
  policyVersion?: number | null;
  /** Why the last connection failed or was refused, while not connected. */
  problem?: string | null;
}

export interface AgentStatus {
  agentId: string;
  version: string;
  startedAt: string;
  uptimeSeconds: number;
  controlPlane: ControlPlaneStatus;
  jobs: RunningJob[];
  resources: ResourceStatus[];
  vaults: VaultStatus[];
  inventory: Inventory | null;
}

/** Counters since the daemon started, plus the last success per resource, for `GET /metrics`. */
export interface MetricsSnapshot {
  /** One entry per (resource, result). */
  backups: { resource: string; vault: string; result: 'ok' | 'failed' | 'cancelled'; count: number }[];
  bytesRead: { resource: string; bytes: number }[];
  bytesStored: { resource: string; bytes: number }[];
  /** Durations of finished backups in seconds, per resource (rendered as a histogram). */
  durations: { resource: string; seconds: number[] }[];
  lastSuccess: { resource: string; timestamp: number }[];
  runningJobs: number;
  queuedJobs: number;
  /** Seconds since the daemon started; rendered as `cairn_agent_uptime_seconds` when present. */
  uptimeSeconds?: number;
}

export interface StatusProvider {
  status(): AgentStatus;
  metrics(): MetricsSnapshot;
}
