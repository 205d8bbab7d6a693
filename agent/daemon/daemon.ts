import { isAbsolute } from 'node:path';
import { systemClock, type Clock } from '../../shared/clock.js';
import { CairnError, isCairnError } from '../../shared/errors.js';
import type { BackupSummary, CommandMessage, Problem } from '../../shared/protocol/messages.js';
import type { Manifest } from '../../shared/vault/manifest.js';
import { Vault } from '../../shared/vault/vault.js';
import { collectGarbage } from '../../shared/vault/gc.js';
import { verifyVault } from '../../shared/vault/verify.js';
import { WorkerPool } from '../../shared/vault/worker-pool.js';
import { resourceKey, runBackup } from '../backup/backup-engine.js';
import { deleteBackup } from '../backup/delete-backup.js';
import { restoreBackup } from '../restore/restore-backup.js';
import { isS3Url } from '../../shared/store/s3-url.js';
import { backupSummary, resourceNameOf } from './backup-summary.js';
import { openStore, readPassphrase } from '../cli/context.js';
import { catchUp, type Schedule } from '../policy/trigger.js';
import { planRetention } from '../policy/retention.js';
import { openSources } from '../source/open-sources.js';
import type { AgentJobRecord, StateStore } from '../state/state-store.js';
import type { AgentConfig, PolicyConfig, ResourceConfig, VaultConfig } from './config.js';
import { JobQueue } from './job-queue.js';
import type { AgentStatus, ControlPlaneStatus, Inventory, JobProgress, MetricsSnapshot, RunningJob, StatusProvider, VaultStatus } from './status.js';

export interface DaemonLog {
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

/** A job that ended: what the control-plane link turns into a `job-result`. */
export interface FinishedJob {
  job: RunningJob;
  status: 'ok' | 'failed' | 'cancelled';
  /** The backup the job made, if it made one. */
  backup: BackupSummary | null;
  /** null exactly when status is 'ok'. */
  error: Problem | null;
}

/** Hooks for the control-plane link; called synchronously, must not throw. */
export interface DaemonEvents {
  /** Every finished job (ok, failed, cancelled), after it is in the job history. */
  jobFinished?(finished: FinishedJob): void;
  /** A running job's progress moved (often: throttle before sending anything). */
  jobProgress?(job: RunningJob): void;
  /** A vault's backups changed other than by a new backup: pruned or deleted. */
  vaultChanged?(vault: string): void;
}

export interface DaemonDeps {
  state: StateStore;
  log: DaemonLog;
  agentId: string;
  version: string;
  clock?: Clock;
  inventory?: Inventory | null;
  events?: DaemonEvents;
  /** The control-plane link's state for /status (default: not configured). */
  controlPlane?: () => ControlPlaneStatus;
}

/** setTimeout takes at most 2^31-1 ms; longer waits are re-armed. */
const MAX_TIMER_MS = 2 ** 31 - 1;

interface Running {
  job: RunningJob;
  started: number;
}

/**
 * The agent daemon: runs every enabled policy for every resource of the policy's vaults on the
 * policy's schedule (periodic backups are named autobk_...), prunes the policy's backups by its
 * retention rule after each backup, and runs vault gc on its own schedule. A run missed while the
 * agent was down is caught up once at start. Jobs go through one queue (a concurrency limit, never
 * two on one resource); every finished job is a row in the local state's history.
 */
export class AgentDaemon implements StatusProvider {
  private config: AgentConfig;
  private readonly clock: Clock;
  private readonly queue: JobQueue;
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly running = new Map<string, Running>();
  private readonly nextRuns = new Map<string, Date>();
  private readonly vaultStatus = new Map<string, VaultStatus>();
  private readonly counters = new Map<string, { resource: string; vault: string; result: 'ok' | 'failed' | 'cancelled'; count: number }>();
  private readonly bytesRead = new Map<string, number>();
  private readonly bytesStored = new Map<string, number>();
  private readonly durations = new Map<string, number[]>();
  private readonly startedAt: Date;
  private jobSeq = 0;
  private stopping = false;
  private started = false;
  /** Policies the control plane pushed (the last accepted set); they apply besides the config's. */
  private pushed: PolicyConfig[] = [];

  constructor(
    config: AgentConfig,
    private readonly deps: DaemonDeps,
  ) {
    this.config = config;
    this.clock = deps.clock ?? systemClock;
    this.queue = new JobQueue(config.concurrency);
    this.startedAt = this.clock.now();
  }

  /** Arms every schedule and catches up runs missed while the agent was down. */
  start(): void {
    this.started = true;
    this.disarm();
    for (const v of this.config.vaults.values()) this.vaultStatus.set(v.name, { name: v.name, location: displayLocation(v.url), backups: null, storedBytes: null });
    this.armAll();
    for (const v of this.config.vaults.values()) void this.openVault(v).then((vault) => this.refreshVault(v, vault), () => undefined);
    this.deps.log.info('agent started', {
      policies: this.policies().filter((p) => p.enabled).length,
      resources: this.config.resources.size,
      vaults: this.config.vaults.size,
    });
  }

  /** The configuration in force (the last one loaded). */
  get configuration(): AgentConfig {
    return this.config;
  }

  /**
   * Replaces the pushed policies (an accepted `policy-push`, or the stored set at start): schedules
   * are re-armed, running jobs finish as they were.
   */
  setPushedPolicies(policies: PolicyConfig[]): void {
    this.pushed = policies.map((p) => ({ ...p, origin: 'control-plane' as const }));
    if (this.stopping || !this.started) return;
    this.disarm();
    this.armAll();
  }

  /** The config file's policies, then the pushed ones. */
  policies(): PolicyConfig[] {
    return [...this.config.policies.values(), ...this.pushed];
  }

  private disarm(): void {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    this.nextRuns.clear();
  }

  private armAll(): void {
    for (const { policy, resource } of this.assignments()) {
      const key = scheduleKey(policyKey(policy), resource.name);
      const last = this.deps.state.lastFire(policyKey(policy), resource.name);
      const { missed, next } = catchUp(policy.schedule, last, this.clock);
      if (missed) {
        this.deps.log.info('catching up a run missed while the agent was down', { policy: policy.name, resource: resource.name, missed: missed.toISOString() });
        this.fire(policy, resource, missed);
      } else if (last === undefined) {
        // First start: from now on, a run missed while the agent is down is caught up.
        this.deps.state.setLastFire(policyKey(policy), resource.name, this.clock.now());
      }
      this.arm(key, policy.schedule, next, () => this.fire(policy, resource, this.clock.now()));
    }
    if (this.config.gc) {
      const gcSchedule = this.config.gc.schedule;
      for (const vault of this.config.vaults.values()) {
        this.arm(`gc/${vault.name}`, gcSchedule, gcSchedule.next(this.clock.now()), () => this.enqueueGc(vault));
      }
    }
  }

  /** Replaces the configuration (SIGHUP): schedules are re-armed; running jobs finish as they were. */
  reload(config: AgentConfig): void {
    this.disarm();
    this.config = config;
    this.start();
  }

  /**
   * Stops taking work: no timer fires any more and queued jobs are dropped. Running jobs are
   * recorded as cancelled; the caller then runs the interrupt handlers (leases, thaw, capture
   * abort) and exits, which leaves every vault consistent (a backup exists only once its manifest does).
   */
  stop(): void {
    this.stopping = true;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    void this.queue.stop();
    for (const r of this.running.values()) {
      this.record(r.job, { status: 'cancelled', backup: null, bytesRead: r.job.progress?.bytesDone ?? 0, bytesStored: r.job.progress?.bytesStored ?? 0, error: 'the agent stopped' });
    }
  }

  /** Runs a resource's backup now, outside its schedule (tests, `agent run --now`). */
  runNow(resourceName: string): boolean {
    const resource = this.config.resources.get(resourceName);
    if (!resource) throw new CairnError('NOT_FOUND', `no resource named '${resourceName}' in ${this.config.path}`);
    const policy = this.policies().find((p) => p.enabled && p.vaults.includes(resource.vault));
    return this.enqueueBackup(resource, policy ?? null);
  }

  /**
   * Runs a control-plane command (not catalog-sync, which the link answers itself) through the job
   * queue: it waits for a job on the same resource (or vault, for verify) instead of being refused.
   * A restore needs only the vault, not the resource. The outcome, including a refusal (NOT_FOUND: no such vault, resource or backup; USAGE: the
   * resource is not in that vault, or a relative restore target), arrives as `events.jobFinished`
   * with `job.id === jobId` and the command's id.
   */
  runCommand(cmd: Exclude<CommandMessage, { action: 'catalog-sync' }>, jobId: string): void {
    const kind = cmd.action === 'backup-now' ? 'backup' : cmd.action;
    const job: RunningJob = { id: jobId, kind, commandId: cmd.commandId, resource: cmd.resource, vault: cmd.vault, policy: null, startedAt: this.clock.now().toISOString(), progress: null };
    const refuse = (code: Problem['code'], message: string): void => {
      this.deps.log.warn('command refused', { command: cmd.commandId, action: cmd.action, error: message });
      this.record(job, { status: 'failed', backup: null, bytesRead: 0, bytesStored: 0, error: message }, { error: { code, message } });
    };
    const vaultConfig = this.config.vaults.get(cmd.vault);
    if (!vaultConfig) return refuse('NOT_FOUND', `this agent has no vault named '${cmd.vault}' in ${this.config.path} (it has: ${[...this.config.vaults.keys()].join(', ')})`);
    let resource: ResourceConfig | undefined;
    // A restore needs only the vault: any agent with the vault can restore any backup in it (a
    // cloud-side agent brings back an on-premises machine's disk), configured resource or not.
    if (cmd.resource !== null && !(cmd.action === 'restore' && !this.config.resources.has(cmd.resource))) {
      resource = this.config.resources.get(cmd.resource);
      const known = [...this.config.resources.keys()].join(', ') || 'none';
      if (!resource) return refuse('NOT_FOUND', `this agent has no resource named '${cmd.resource}' in ${this.config.path} (it has: ${known})`);
      if (resource.vault !== cmd.vault) return refuse('USAGE', `resource '${resource.name}' is backed up to vault '${resource.vault}', not '${cmd.vault}'`);
    }
    let lock: string;
    let run: () => Promise<void>;
    switch (cmd.action) {
      case 'backup-now':
        lock = resource!.name;
        run = () => this.backupJob(jobId, resource!, null, { commandId: cmd.commandId, name: cmd.args.name, full: cmd.args.full });
        break;
      case 'restore':
        if (!isAbsolute(cmd.args.target) && !isS3Url(cmd.args.target)) {
          return refuse('USAGE', `restore target '${cmd.args.target}' must be an absolute path on the agent's host or an s3:// object (restore to cloud)`);
        }
        lock = cmd.resource;
        run = () => this.commandJob(job, (j) => this.restoreWork(j, vaultConfig, cmd.args));
        break;
      case 'verify':
        lock = `vault:${vaultConfig.name}`;
        run = () => this.commandJob(job, (j) => this.verifyWork(j, vaultConfig, resource ?? null, cmd.args.readData));
        break;
      case 'delete':
        lock = resource!.name;
        run = () => this.commandJob(job, (j) => this.deleteWork(vaultConfig, cmd.args.backupId));
        break;
    }
    if (!this.queue.enqueue({ id: jobId, lock, run }, { wait: true })) refuse('BUSY', 'the agent is stopping; send the command again once it runs');
  }

  /** Every backup in a configured vault, oldest first, as the control plane's catalog holds them. */
  async catalog(vaultName: string): Promise<BackupSummary[]> {
    const v = this.config.vaults.get(vaultName);
    if (!v) throw new CairnError('NOT_FOUND', `this agent has no vault named '${vaultName}' in ${this.config.path} (it has: ${[...this.config.vaults.keys()].join(', ')})`);
    const vault = await this.openVault(v);
    const resources = [...this.config.resources.values()].filter((r) => r.vault === vaultName);
    return (await vault.listBackups()).map((m) => backupSummary(m, vaultName, resourceNameOf(m, resources)));
  }

  /** The jobs running now (not those queued). */
  runningJobs(): RunningJob[] {
    return [...this.running.values()].map((r) => r.job);
  }

  idle(): Promise<void> {
    return this.queue.idle();
  }

  status(): AgentStatus {
    const now = this.clock.now();
    return {
      agentId: this.deps.agentId,
      version: this.deps.version,
      startedAt: this.startedAt.toISOString(),
      uptimeSeconds: Math.round((now.getTime() - this.startedAt.getTime()) / 1000),
      controlPlane: this.deps.controlPlane?.() ?? { state: 'not-configured', url: null },
      jobs: [...this.running.values()].map((r) => r.job),
      resources: [...this.config.resources.values()].map((r) => {
        const history = this.deps.state.jobs('backup', r.name);
        const last = history[history.length - 1];
        const success = [...history].reverse().find((j) => j.status === 'ok');
        const policies = this.policies().filter((p) => p.enabled && p.vaults.includes(r.vault));
        const next = policies
          .map((p) => this.nextRuns.get(scheduleKey(policyKey(p), r.name)))
          .filter((d): d is Date => d !== undefined)
          .sort((a, b) => a.getTime() - b.getTime())[0];
        return {
          name: r.name,
          vault: r.vault,
          policy: policies[0] ? policyKey(policies[0]) : null,
          lastResult: last
            ? {
                status: last.status,
                backup: last.backup,
                startedAt: last.startedAt,
                finishedAt: last.finishedAt,
                bytesRead: last.bytesRead,
                bytesStored: last.bytesStored,
                durationMs: last.durationMs,
                error: last.error,
              }
            : null,
          lastSuccessAt: success?.finishedAt ?? null,
          nextRun: next?.toISOString() ?? null,
        };
      }),
      vaults: [...this.vaultStatus.values()],
      inventory: this.deps.inventory ?? null,
    };
  }

  metrics(): MetricsSnapshot {
    const lastSuccess: MetricsSnapshot['lastSuccess'] = [];
    for (const r of this.config.resources.values()) {
      const ok = this.deps.state.jobs('backup', r.name).filter((j) => j.status === 'ok');
      const last = ok[ok.length - 1];
      if (last) lastSuccess.push({ resource: r.name, timestamp: Date.parse(last.finishedAt) / 1000 });
    }
    return {
      backups: [...this.counters.values()].map((c) => ({ ...c })),
      bytesRead: [...this.bytesRead].map(([resource, bytes]) => ({ resource, bytes })),
      bytesStored: [...this.bytesStored].map(([resource, bytes]) => ({ resource, bytes })),
      durations: [...this.durations].map(([resource, seconds]) => ({ resource, seconds: [...seconds] })),
      lastSuccess,
      runningJobs: this.running.size,
      queuedJobs: this.queue.queued.length,
    };
  }

  private *assignments(): Generator<{ policy: PolicyConfig; resource: ResourceConfig }> {
    for (const policy of this.policies()) {
      if (!policy.enabled) continue;
      for (const resource of this.config.resources.values()) {
        if (policy.vaults.includes(resource.vault)) yield { policy, resource };
      }
    }
  }

  private arm(key: string, schedule: Schedule, at: Date, fire: () => void): void {
    this.nextRuns.set(key, at);
    const wait = Math.max(0, at.getTime() - this.clock.now().getTime());
    const timer = setTimeout(
      () => {
        this.timers.delete(key);
        if (this.stopping) return;
        if (this.clock.now().getTime() >= at.getTime()) {
          fire();
          this.arm(key, schedule, schedule.next(this.clock.now()), fire);
        } else this.arm(key, schedule, at, fire);
      },
      Math.min(wait, MAX_TIMER_MS),
    );
    timer.unref?.();
    this.timers.set(key, timer);
  }

  private fire(policy: PolicyConfig, resource: ResourceConfig, at: Date): void {
    this.deps.state.setLastFire(policyKey(policy), resource.name, at);
    if (!this.enqueueBackup(resource, policy)) {
      this.deps.log.warn('skipped a scheduled backup: the last one of this resource is still queued or running', { policy: policyKey(policy), resource: resource.name });
    }
  }

  private enqueueBackup(resource: ResourceConfig, policy: PolicyConfig | null): boolean {
    const id = this.newJobId('backup');
    return this.queue.enqueue({ id, lock: resource.name, run: () => this.backupJob(id, resource, policy) });
  }

  private enqueueGc(vault: VaultConfig): void {
    const id = this.newJobId('gc');
    this.queue.enqueue({ id, lock: `vault:${vault.name}`, run: () => this.gcJob(id, vault) });
  }

  private newJobId(kind: string): string {
    return `${kind}-${this.clock.now().toISOString().replace(/[-:.]/g, '')}-${++this.jobSeq}`;
  }

  private async backupJob(
    id: string,
    resource: ResourceConfig,
    policy: PolicyConfig | null,
    command?: { commandId: string; name: string | null; full: boolean },
  ): Promise<void> {
    const vaultConfig = this.config.vaults.get(resource.vault)!;
    const job: RunningJob = {
      id,
      kind: 'backup',
      commandId: command?.commandId ?? null,
      resource: resource.name,
      vault: vaultConfig.name,
      policy: policy ? policyKey(policy) : null,
      startedAt: this.clock.now().toISOString(),
      progress: null,
    };
    const t0 = performance.now();
    this.running.set(id, { job, started: t0 });
    this.deps.log.info('backup started', { job: id, resource: resource.name, vault: vaultConfig.name, policy: job.policy, command: command?.commandId });
    try {
      const vault = await this.openVault(vaultConfig);
      const sources = await openSources(resource.disks);
      let result;
      try {
        result = await runBackup(vault, sources, {
          namePrefix: command ? 'manualbk' : 'autobk',
          resourceName: resource.name,
          name: command?.name ?? undefined,
          full: command?.full,
          quiesce: resource.quiesce,
          requireAppConsistent: resource.requireAppConsistent,
          onProgress: (p) => this.progressed(job, progressOf(p, performance.now() - t0)),
        });
      } finally {
        for (const s of sources) await s.close().catch(() => undefined);
      }
      if (this.stopping) return;
      const m = result.manifest;
      this.record(job, { status: 'ok', backup: m.name, bytesRead: result.bytesRead, bytesStored: result.bytesStored, error: null }, { backup: backupSummary(m, vaultConfig.name, resource.name) });
      this.deps.log.info('backup done', { job: id, resource: resource.name, backup: m.name, kind: m.kind, bytesRead: result.bytesRead, bytesStored: result.bytesStored, consistency: m.consistency });
      for (const w of result.warnings) this.deps.log.warn(w, { job: id, resource: resource.name });
      if (policy) await this.prune(vault, policy, resourceKey(sources), resource);
      await this.refreshVault(vaultConfig, vault);
    } catch (err) {
      if (this.stopping) return;
      this.record(job, { status: 'failed', backup: null, bytesRead: job.progress?.bytesDone ?? 0, bytesStored: job.progress?.bytesStored ?? 0, error: (err as Error).message }, { error: problemOf(err) });
      this.deps.log.error('backup failed', { job: id, resource: resource.name, error: (err as Error).message });
    } finally {
      this.running.delete(id);
    }
  }

  /** Deletes the policy's own backups of this resource that its retention rule no longer keeps. */
  private async prune(vault: Vault, policy: PolicyConfig, resource: string, config: ResourceConfig): Promise<void> {
    const backups = (await vault.listBackups()).filter((m) => m.resource === resource);
    const plan = planRetention(backups, policy.retention, this.clock.now());
    let pruned = 0;
    for (const { id } of plan.prune) {
      const m = backups.find((b) => b.id === id)!;
      try {
        await deleteBackup(vault, m);
        pruned++;
        this.deps.log.info('pruned a backup by retention', { policy: policyKey(policy), resource: config.name, backup: m.name });
      } catch (err) {
        this.deps.log.warn('could not prune a backup', { backup: m.name, error: (err as Error).message });
      }
    }
    if (pruned > 0) this.deps.events?.vaultChanged?.(config.vault);
  }

  /** Runs a command's work as a job: in the running list while it runs, recorded and reported when it ends. */
  private async commandJob(job: RunningJob, work: (job: RunningJob) => Promise<{ bytesRead?: number }>): Promise<void> {
    const started = { ...job, startedAt: this.clock.now().toISOString() };
    this.running.set(job.id, { job: started, started: performance.now() });
    this.deps.log.info(`${job.kind} started`, { job: job.id, command: job.commandId, resource: job.resource, vault: job.vault });
    try {
      const r = await work(started);
      if (this.stopping) return;
      this.record(started, { status: 'ok', backup: null, bytesRead: r.bytesRead ?? 0, bytesStored: 0, error: null });
      this.deps.log.info(`${job.kind} done`, { job: job.id, command: job.commandId });
    } catch (err) {
      if (this.stopping) return;
      this.record(started, { status: 'failed', backup: null, bytesRead: started.progress?.bytesDone ?? 0, bytesStored: 0, error: (err as Error).message }, { error: problemOf(err) });
      this.deps.log.error(`${job.kind} failed`, { job: job.id, command: job.commandId, error: (err as Error).message });
    } finally {
      this.running.delete(job.id);
    }
  }

  /**
   * As `cairn restore`: one disk or every disk to a path (one disk: the file or device; several: a
   * folder of disk-N.img), or exported as an image (.qcow2, .vmdk, .raw/.img) to a local file or an
   * s3:// object, streamed by multipart upload: restore to cloud.
   */
  private async restoreWork(job: RunningJob, v: VaultConfig, args: { backupId: string; target: string; disk: number | null; force: boolean }): Promise<{ bytesRead: number }> {
    const vault = await this.openVault(v);
    const m = await findById(vault, v.name, args.backupId);
    const t0 = performance.now();
    let read = 0;
    await restoreBackup(vault, m, {
      to: args.target,
      disk: args.disk ?? undefined,
      force: args.force,
      onProgress: (done, total) => {
        read = done;
        this.progressed(job, progressOf({ bytesDone: done, bytesTotal: total, bytesStored: 0 }, performance.now() - t0));
      },
    });
    return { bytesRead: read };
  }

  /** As `cairn vault verify`; with a resource, only problems that touch its backups fail the job. */
  private async verifyWork(job: RunningJob, v: VaultConfig, resource: ResourceConfig | null, readData: boolean): Promise<{ bytesRead: number }> {
    const vault = await this.openVault(v);
    const pool = readData ? new WorkerPool(vault.key, vault.config.compression.level) : undefined;
    const t0 = performance.now();
    try {
      const r = await verifyVault(vault, {
        readData,
        pool,
        onProgress: (done, total) => this.progressed(job, progressOf({ bytesDone: done, bytesTotal: total, bytesStored: 0 }, performance.now() - t0)),
      });
      let affected = r.affected;
      if (resource) {
        const resources = [...this.config.resources.values()].filter((x) => x.vault === v.name);
        const mine = new Set((await vault.listBackups()).filter((m) => resourceNameOf(m, resources) === resource.name).map((m) => m.id));
        affected = affected.filter((a) => mine.has(a.id));
      }
      const failed = resource ? affected.length > 0 : !r.ok;
      if (failed) {
        throw new CairnError(
          'VERIFY_FAILED',
          `verify found ${r.problems.length} problem(s) in vault '${v.name}'` + (affected.length ? `; affected: ${affected.map((a) => a.name).join(', ')}` : ''),
        );
      }
      return { bytesRead: r.bytesChecked };
    } finally {
      await pool?.close();
    }
  }

  private async deleteWork(v: VaultConfig, backupId: string): Promise<{ bytesRead: number }> {
    const vault = await this.openVault(v);
    const m = await findById(vault, v.name, backupId);
    await deleteBackup(vault, m);
    this.deps.log.info('deleted a backup', { vault: v.name, backup: m.name, id: m.id });
    this.deps.events?.vaultChanged?.(v.name);
    await this.refreshVault(v, vault);
    return { bytesRead: 0 };
  }

  private async gcJob(id: string, vaultConfig: VaultConfig): Promise<void> {
    const job: RunningJob = { id, kind: 'gc', resource: null, vault: vaultConfig.name, policy: null, startedAt: this.clock.now().toISOString(), progress: null };
    this.running.set(id, { job, started: performance.now() });
    try {
      const vault = await this.openVault(vaultConfig);
      const r = await collectGarbage(vault, { graceMs: 15 * 60_000 });
      this.record(job, { status: 'ok', backup: null, bytesRead: 0, bytesStored: 0, error: null });
      this.deps.log.info('gc done', { vault: vaultConfig.name, packsDeleted: r.packsDeleted, bytesFreed: r.bytesFreed });
      await this.refreshVault(vaultConfig, vault);
    } catch (err) {
      if (!this.stopping) this.record(job, { status: 'failed', backup: null, bytesRead: 0, bytesStored: 0, error: (err as Error).message }, { error: problemOf(err) });
      this.deps.log.error('gc failed', { vault: vaultConfig.name, error: (err as Error).message });
    } finally {
      this.running.delete(id);
    }
  }

  private async openVault(v: VaultConfig): Promise<Vault> {
    const store = await openStore(v.url);
    const config = await Vault.readConfig(store);
    return Vault.open(store, readPassphrase(v.passphraseFile), { indexCache: this.deps.state }, config);
  }

  private async refreshVault(v: VaultConfig, vault: Vault): Promise<void> {
    try {
      const all = await vault.listBackups();
      this.vaultStatus.set(v.name, { name: v.name, location: displayLocation(v.url), backups: all.length, storedBytes: all.reduce((s, m) => s + m.bytesStored, 0) });
    } catch {
      // Status only; the next job tries again.
    }
  }

  private progressed(job: RunningJob, progress: JobProgress): void {
    job.progress = progress;
    try {
      this.deps.events?.jobProgress?.(job);
    } catch (err) {
      this.deps.log.warn('reporting job progress failed', { job: job.id, error: (err as Error).message });
    }
  }

  private record(
    job: RunningJob,
    r: Pick<AgentJobRecord, 'status' | 'backup' | 'bytesRead' | 'bytesStored' | 'error'>,
    report: { backup?: BackupSummary; error?: Problem } = {},
  ): void {
    const finishedAt = this.clock.now();
    const durationMs = finishedAt.getTime() - Date.parse(job.startedAt);
    this.deps.state.recordJob({ jobId: job.id, kind: job.kind, resource: job.resource, vault: job.vault, policy: job.policy, startedAt: job.startedAt, finishedAt: finishedAt.toISOString(), durationMs, ...r });
    // A cancelled job (the agent stopped) has no code of its own in the catalogue: INTERNAL with the reason.
    const error = r.status === 'ok' ? null : (report.error ?? { code: 'INTERNAL' as const, message: r.error ?? `the job was ${r.status}` });
    try {
      this.deps.events?.jobFinished?.({ job, status: r.status, backup: report.backup ?? null, error });
    } catch (err) {
      this.deps.log.error('reporting a finished job failed', { job: job.id, error: (err as Error).message });
    }
    if (job.kind !== 'backup' || job.resource === null) return;
    const key = `${job.resource}\n${r.status}`;
    const c = this.counters.get(key) ?? { resource: job.resource, vault: job.vault, result: r.status, count: 0 };
    c.count++;
    this.counters.set(key, c);
    this.bytesRead.set(job.resource, (this.bytesRead.get(job.resource) ?? 0) + r.bytesRead);
    this.bytesStored.set(job.resource, (this.bytesStored.get(job.resource) ?? 0) + r.bytesStored);
    if (r.status === 'ok') this.durations.set(job.resource, [...(this.durations.get(job.resource) ?? []), durationMs / 1000]);
  }
}

function scheduleKey(policy: string, resource: string): string {
  return `${policy}/${resource}`;
}

/** How a policy is known in schedule marks, job history and status: pushed ones as `cp:<name>`. */
export function policyKey(p: PolicyConfig): string {
  return p.origin === 'control-plane' ? `cp:${p.name}` : p.name;
}

function problemOf(err: unknown): Problem {
  return { code: isCairnError(err) ? err.code : 'INTERNAL', message: ((err as Error)?.message ?? String(err)).slice(0, 1024) };
}

/** A backup by its id (not its name: commands name backups by id). */
async function findById(vault: Vault, vaultName: string, id: string): Promise<Manifest> {
  const m = (await vault.listBackups()).find((b) => b.id === id);
  if (!m) throw new CairnError('NOT_FOUND', `no backup with id '${id}' in vault '${vaultName}' (${displayLocation(vault.store.location)})`);
  return m;
}

function progressOf(p: { bytesDone: number; bytesTotal: number; bytesStored: number }, elapsedMs: number): JobProgress {
  const rate = elapsedMs > 0 ? (p.bytesDone / elapsedMs) * 1000 : 0;
  return {
    bytesDone: p.bytesDone,
    bytesTotal: p.bytesTotal,
    bytesStored: p.bytesStored,
    percent: p.bytesTotal > 0 ? Math.round((p.bytesDone / p.bytesTotal) * 1000) / 10 : 0,
    rateBytesPerSecond: Math.round(rate),
    etaSeconds: rate > 0 ? Math.round((p.bytesTotal - p.bytesDone) / rate) : null,
  };
}

/** A vault location fit for status output: no query string (it may carry a profile or endpoint credentials). */
function displayLocation(url: string): string {
  return url.split('?')[0]!;
}
