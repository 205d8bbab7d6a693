import { randomBytes } from 'node:crypto';

import { systemClock, type Clock } from '../../shared/clock.js';
import { isCairnError } from '../../shared/errors.js';
import {
  encodeMessage,
  LIMITS,
  type CommandMessage,
  type Inventory,
  type JobProgressMessage,
  type JobResultMessage,
  type Policy,
  type PolicyPushMessage,
  type Problem,
  type ResourceSummary,
  type RunningJobSummary,
} from '../../shared/protocol/messages.js';
import type { AgentDaemon, DaemonEvents, DaemonLog, FinishedJob } from '../daemon/daemon.js';
import type { ControlPlaneStatus, RunningJob } from '../daemon/status.js';
import type { StateStore } from '../state/state-store.js';
import { catalogParts } from './catalog-parts.js';
import type { ControlPlaneState } from './enroll.js';
import { ControlPlaneLink, type ControlPlaneLinkOptions } from './link.js';
import { pushedPolicies } from './pushed-policies.js';

export interface ControlPlaneSessionOptions {
  daemon: AgentDaemon;
  store: StateStore;
  state: ControlPlaneState;
  agentVersion: string;
  inventory: Inventory | null;
  log: DaemonLog;
  clock?: Clock;
  /** How often one job's progress may go out (default 1000 ms). */
  progressIntervalMs?: number;
  /** Passed to the link (tests shorten the reconnect waits). */
  link?: Pick<ControlPlaneLinkOptions, 'sleep' | 'random' | 'handshakeTimeoutMs'>;
}

const PROGRESS_KINDS = new Set(['backup', 'prune', 'gc', 'restore', 'verify', 'delete']);
const HEARTBEAT_KINDS = new Set(['backup', 'prune', 'gc']);
/** Job kinds that write or delete backups in their vault: each bumps the vault's change counter when it ends. */
const VAULT_WRITING_KINDS = new Set(['backup', 'prune', 'delete']);
/** Scans of one sync repeated because the vault changed meanwhile, before the last one is queued anyway. */
const MAX_SCANS_PER_SYNC = 10;

/**
 * What an enrolled agent does with its control plane, on top of the daemon (README.md, "The
 * session"). Contracts:
 * - Policies: a pushed set is checked whole (pushedPolicies), stored in the StateStore, then applied
 *   beside the config file's; a version at or below the running one is acked and ignored. At start
 *   the stored set runs, with or without a control plane.
 * - Commands run at most once per commandId (cp_commands): a repeat gets the stored job-result
 *   queued again under its first message id, or nothing while the job runs. A command accepted but
 *   never finished (the agent stopped first) is answered `cancelled` at the next start.
 * - Durable outbox (cp_outbox): every finished job's job-result and every catalog-sync part is
 *   stored before it is sent, sent in stored order after every welcome and when stored, and kept
 *   (re-sent with the same id after each reconnect) until an `ack` names it.
 * - After every welcome: `resources`, then the outbox, then a catalog-sync of every configured vault.
 *   A vault is synced again after a prune or delete changes it; a newer sync of a vault replaces
 *   its parts still waiting in the outbox. A sync's parts never describe the vault as it was before
 *   a job-result queued ahead of them: a job that writes or deletes backups (backup, prune, delete)
 *   bumps its vault's change counter before its job-result is queued, and a scan during which the
 *   counter moved is repeated before its parts are queued.
 * - Policy pushes: versions only grow, except the first push after each `welcome`, which is taken
 *   whenever its version differs from the running one (the control plane sends a lower one only when
 *   its catalog never had the agent's version: a restored or replaced catalog).
 * - Best effort: job-progress when a job's progress moves, at most once per progress interval per
 *   job (the first at once); heartbeats with the running backup, prune and gc jobs.
 */
export class ControlPlaneSession implements DaemonEvents {
  private link: ControlPlaneLink | undefined;
  private policyVersion: number | null = null;
  /** Highest outbox seq sent on the current connection. */
  private sentSeq = 0;
  private readonly clock: Clock;
  /** Per running job: when its progress last went out. */
  private readonly progressSent = new Map<string, number>();
  /** Per vault: the sync running or queued, and whether one more is queued behind it. */
  private readonly syncs = new Map<string, Promise<void>>();
  private readonly syncQueued = new Set<string>();
  /** Per vault: bumped whenever a job wrote or deleted backups in it (see VAULT_WRITING_KINDS). */
  private readonly vaultChanges = new Map<string, number>();
  /** True from a `welcome` until the first policy-push of that connection. */
  private firstPushOfConnection = false;
  private closed = false;

  constructor(private readonly options: ControlPlaneSessionOptions) {
    this.clock = options.clock ?? systemClock;
  }

  /**
   * Before the daemon starts: applies the stored policy set and answers commands a previous run
   * accepted but never finished. Then dials the control plane.
   */
  start(): void {
    const { store, daemon, log } = this.options;
    if (store.bindControlPlane(this.options.state.agentId, this.clock.now())) {
      log.info('enrolled again: forgot the previous enrollment\'s pushed policies, commands and unsent messages', { agentId: this.options.state.agentId });
    }
    const stored = store.pushedPolicySet();
    if (stored) {
      try {
        daemon.setPushedPolicies(pushedPolicies(JSON.parse(stored.policies) as Policy[]));
        this.policyVersion = stored.version;
        log.info('running the stored control-plane policies', { version: stored.version });
      } catch (err) {
        log.error('the stored control-plane policies no longer apply; waiting for the control plane to push them again', {
          version: stored.version,
          error: (err as Error).message,
        });
      }
    }
    for (const c of store.unfinishedCommands()) {
      this.storeJobResult({
        jobId: c.jobId,
        commandId: c.commandId,
        status: 'cancelled',
        backup: null,
        error: { code: 'INTERNAL', message: `the agent stopped before command ${c.commandId} (${c.action}) finished; send it again` },
      });
    }
    const { state } = this.options;
    this.link = new ControlPlaneLink({
      state,
      agentVersion: this.options.agentVersion,
      inventory: () => this.options.inventory,
      policyVersion: () => this.policyVersion,
      runningJobs: () => this.runningJobs(),
      onPolicyPush: (m) => this.onPolicyPush(m),
      onCommand: (m) => this.onCommand(m),
      onWelcome: () => this.onWelcome(),
      onAck: (id) => {
        if (!store.ackOutbox(id)) log.warn('the control plane acknowledged a message not in the outbox', { messageId: id });
      },
      onStateChange: (s) => log.info(`control plane link ${s}`, { url: state.controlPlaneUrl }),
      log: (level, message) => log[level](message),
      clock: this.clock,
      ...this.options.link,
    });
  }

  /** For /status and `cairn agent status`. */
  status(): ControlPlaneStatus {
    const link = this.link;
    return {
      state: link?.state ?? 'connecting',
      url: this.options.state.controlPlaneUrl,
      agentId: this.options.state.agentId,
      policyVersion: this.policyVersion,
      problem: link && link.state !== 'connected' ? (link.lastProblem?.message ?? null) : null,
    };
  }

  /** The config changed (SIGHUP): tell the control plane what the agent protects now. */
  configReloaded(): void {
    this.sendResources();
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.link?.close();
  }

  // ---- DaemonEvents ---------------------------------------------------------------------------

  jobFinished(f: FinishedJob): void {
    this.progressSent.delete(f.job.id);
    // Before the job-result is queued: a scan running now sees the bump and scans again.
    if (VAULT_WRITING_KINDS.has(f.job.kind)) this.bumpVaultChanges(f.job.vault);
    this.storeJobResult({ jobId: f.job.id, commandId: f.job.commandId ?? null, status: f.status, backup: f.backup, error: f.error });
  }

  /** The first progress of a job goes out at once, then at most one per progress interval. */
  jobProgress(job: RunningJob): void {
    const link = this.link;
    const p = job.progress;
    if (!link || link.state !== 'connected' || !p || !PROGRESS_KINDS.has(job.kind)) return;
    const now = this.clock.now().getTime();
    const last = this.progressSent.get(job.id);
    if (last !== undefined && now - last < (this.options.progressIntervalMs ?? 1000)) return;
    const message: Omit<JobProgressMessage, 'id'> = {
      v: 1,
      type: 'job-progress',
      jobId: job.id,
      commandId: job.commandId ?? null,
      kind: job.kind as JobProgressMessage['kind'],
      resource: job.resource,
      vault: job.vault,
      percent: clampPercent(p.percent),
      bytesDone: p.bytesDone,
      bytesTotal: p.bytesTotal,
      rateBytesPerSecond: p.rateBytesPerSecond,
    };
    try {
      if (link.send(message)) this.progressSent.set(job.id, now);
    } catch (err) {
      this.options.log.warn('a job-progress message could not be sent', { job: job.id, error: (err as Error).message });
    }
  }

  vaultChanged(vault: string): void {
    this.bumpVaultChanges(vault);
    void this.syncCatalog(vault).catch(() => undefined);
  }

  private bumpVaultChanges(vault: string): void {
    this.vaultChanges.set(vault, (this.vaultChanges.get(vault) ?? 0) + 1);
  }

  // ---- link callbacks -------------------------------------------------------------------------

  private async onPolicyPush(m: PolicyPushMessage): Promise<void> {
    const { log, store, daemon } = this.options;
    const first = this.firstPushOfConnection;
    this.firstPushOfConnection = false;
    if (this.policyVersion !== null && (m.version === this.policyVersion || (m.version < this.policyVersion && !first))) {
      log.info('ignored a policy push not newer than the running set', { version: m.version, running: this.policyVersion });
      return;
    }
    if (this.policyVersion !== null && m.version < this.policyVersion) {
      log.warn("the control plane's policy version is below the one running here (its catalog was replaced); following it", {
        version: m.version,
        running: this.policyVersion,
      });
    }
    let policies;
    try {
      policies = pushedPolicies(m.policies);
    } catch (err) {
      log.warn('refused a pushed policy set; the previous one keeps running', { version: m.version, error: (err as Error).message });
      throw err;
    }
    store.savePushedPolicySet(m.version, JSON.stringify(m.policies), this.clock.now());
    daemon.setPushedPolicies(policies);
    this.policyVersion = m.version;
    log.info('applied pushed policies', { version: m.version, policies: m.policies.map((p) => p.name) });
  }

  private onCommand(cmd: CommandMessage): void {
    const { store, daemon, log } = this.options;
    const seen = store.command(cmd.commandId);
    if (seen) {
      if (seen.result !== null && seen.resultMessageId !== null) {
        log.info('command repeated: its result is sent again', { command: cmd.commandId });
        store.enqueueJobResult(seen.resultMessageId, seen.result, null, this.clock.now());
        this.pump();
      } else log.info('command repeated while it runs: nothing to do', { command: cmd.commandId });
      return;
    }
    const jobId = `${cmd.action === 'backup-now' ? 'backup' : cmd.action}-${randomBytes(8).toString('hex')}`;
    store.beginCommand(cmd.commandId, cmd.action, jobId, this.clock.now());
    log.info('command received', { command: cmd.commandId, action: cmd.action, vault: cmd.vault, resource: cmd.resource });
    if (cmd.action !== 'catalog-sync') {
      daemon.runCommand(cmd, jobId);
      return;
    }
    // Read-only and answered from the vault's manifests: not queued behind backups.
    this.syncCatalog(cmd.vault)
      .then(
        () => this.storeJobResult({ jobId, commandId: cmd.commandId, status: 'ok', backup: null, error: null }),
        (err) => this.storeJobResult({ jobId, commandId: cmd.commandId, status: 'failed', backup: null, error: problemOf(err) }),
      )
      // Storing the result failed (the state database): logged, not an unhandled rejection that ends
      // the agent. The command stays unfinished and is answered `cancelled` at the next start.
      .catch((err) => log.error('could not store the result of a catalog-sync command', { command: cmd.commandId, error: (err as Error)?.message ?? String(err) }));
  }

  private onWelcome(): void {
    this.sentSeq = 0;
    this.firstPushOfConnection = true;
    this.sendResources();
    this.pump();
    for (const vault of this.options.daemon.configuration.vaults.keys()) {
      void this.syncCatalog(vault).catch(() => undefined);
    }
  }

  // ---- outbox ---------------------------------------------------------------------------------

  /** Sends what the outbox holds beyond what this connection has had, in order, while connected. */
  private pump(): void {
    const link = this.link;
    if (!link) return;
    for (const row of this.options.store.outbox(this.sentSeq)) {
      if (!link.sendFrame(row.body)) return;
      this.sentSeq = row.seq;
    }
  }

  private storeJobResult(r: Omit<JobResultMessage, 'v' | 'type' | 'id'>): void {
    const id = outboxId();
    let body: string;
    try {
      body = encodeMessage({ v: 1, type: 'job-result', id, ...r });
    } catch (err) {
      // Should not happen (names come from the config and the vault); report the job without the summary.
      this.options.log.error('a job-result could not be encoded; sent without its backup summary', { job: r.jobId, error: (err as Error).message });
      body = encodeMessage({
        v: 1,
        type: 'job-result',
        id,
        jobId: r.jobId,
        commandId: r.commandId,
        status: r.status,
        backup: null,
        error: r.error,
      });
    }
    this.options.store.enqueueJobResult(id, body, r.commandId, this.clock.now());
    this.pump();
  }

  /**
   * Scans a vault and stores its catalog-sync parts. Syncs of one vault run one at a time; a request
   * while one runs queues one more (requests meanwhile join it), so the last change is always sent.
   */
  private syncCatalog(vault: string): Promise<void> {
    if (this.syncQueued.has(vault)) return this.syncs.get(vault)!;
    this.syncQueued.add(vault);
    const before = this.syncs.get(vault) ?? Promise.resolve();
    const next = before
      .catch(() => undefined)
      .then(async () => {
        this.syncQueued.delete(vault);
        if (this.closed) return;
        try {
          // Scan again while a job changed the vault during the scan: its job-result is queued
          // already, and parts from before it would mark its backup deleted.
          let backups;
          for (let scan = 1; ; scan++) {
            const changes = this.vaultChanges.get(vault) ?? 0;
            backups = await this.options.daemon.catalog(vault);
            if ((this.vaultChanges.get(vault) ?? 0) === changes) break;
            if (scan >= MAX_SCANS_PER_SYNC) {
              this.options.log.warn('the vault kept changing during its catalog scan; sending the last scan', { vault, scans: scan });
              break;
            }
          }
          if (this.closed) return;
          const syncId = `sync-${randomBytes(8).toString('hex')}`;
          const parts = catalogParts(vault, syncId, backups, outboxId);
          this.options.store.enqueueCatalogSync(vault, parts, this.clock.now());
          this.pump();
        } catch (err) {
          this.options.log.warn('could not read a vault for the control plane catalog', { vault, error: (err as Error).message });
          throw err;
        }
      });
    this.syncs.set(vault, next);
    return next;
  }

  // ---- fire and forget ------------------------------------------------------------------------

  private sendResources(): void {
    const link = this.link;
    if (!link) return;
    const resources: ResourceSummary[] = [...this.options.daemon.configuration.resources.values()]
      .slice(0, LIMITS.resources)
      .map((r) => ({ name: r.name, vault: r.vault, disks: r.disks.map(withoutCredentials) }));
    try {
      link.send({ v: 1, type: 'resources', resources });
    } catch (err) {
      this.options.log.error('the resources message could not be sent', { error: (err as Error).message });
    }
  }

  private runningJobs(): RunningJobSummary[] {
    return this.options.daemon
      .runningJobs()
      .filter((j) => HEARTBEAT_KINDS.has(j.kind))
      .slice(0, LIMITS.runningJobs)
      .map((j) => ({ id: j.id, kind: j.kind as RunningJobSummary['kind'], resource: j.resource, percent: j.progress ? clampPercent(j.progress.percent) : null }));
  }
}

/** Outbox message ids: unique for the agent's lifetime, so the control plane may key on them. */
function outboxId(): string {
  return `ob-${randomBytes(12).toString('hex')}`;
}

function clampPercent(p: number): number {
  return Math.min(100, Math.max(0, p));
}

function problemOf(err: unknown): Problem {
  return { code: isCairnError(err) ? err.code : 'INTERNAL', message: ((err as Error)?.message ?? String(err)).slice(0, LIMITS.errorMessage) };
}

/** A disk source as the control plane may see it: a URL's user and password removed. */
export function withoutCredentials(source: string): string {
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(source)) return source;
  try {
    const url = new URL(source);
    if (url.username === '' && url.password === '') return source;
    url.username = '';
    url.password = '';
    return url.toString();
  } catch {
    // Not a URL after all: drop anything that looks like user:password@.
    return source.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/@]*@/i, '$1');
  }
}
