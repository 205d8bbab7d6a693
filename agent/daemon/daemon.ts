import { systemClock, type Clock } from '../../shared/clock.js';
import { CairnError } from '../../shared/errors.js';
import { Vault } from '../../shared/vault/vault.js';
import { collectGarbage } from '../../shared/vault/gc.js';
import { resourceKey, runBackup } from '../backup/backup-engine.js';
import { deleteBackup } from '../backup/delete-backup.js';
import { openStore, readPassphrase } from '../cli/context.js';
import { catchUp, type Schedule } from '../policy/trigger.js';
import { planRetention } from '../policy/retention.js';
import { openSources } from '../source/open-sources.js';
import type { AgentJobRecord, StateStore } from '../state/state-store.js';
import type { AgentConfig, PolicyConfig, ResourceConfig, VaultConfig } from './config.js';
import { JobQueue } from './job-queue.js';
import type { AgentStatus, Inventory, JobProgress, MetricsSnapshot, RunningJob, StatusProvider, VaultStatus } from './status.js';

export interface DaemonLog {
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

export interface DaemonDeps {
  state: StateStore;
  log: DaemonLog;
  agentId: string;
  version: string;
  clock?: Clock;
  inventory?: Inventory | null;
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
    for (const v of this.config.vaults.values()) this.vaultStatus.set(v.name, { name: v.name, location: displayLocation(v.url), backups: null, storedBytes: null });
    for (const { policy, resource } of this.assignments()) {
      const key = scheduleKey(policy.name, resource.name);
      const last = this.deps.state.lastFire(policy.name, resource.name);
      const { missed, next } = catchUp(policy.schedule, last, this.clock);
      if (missed) {
        this.deps.log.info('catching up a run missed while the agent was down', { policy: policy.name, resource: resource.name, missed: missed.toISOString() });
        this.fire(policy, resource, missed);
      } else if (last === undefined) {
        // First start: from now on, a run missed while the agent is down is caught up.
        this.deps.state.setLastFire(policy.name, resource.name, this.clock.now());
      }
      this.arm(key, policy.schedule, next, () => this.fire(policy, resource, this.clock.now()));
    }
    if (this.config.gc) {
      const gcSchedule = this.config.gc.schedule;
      for (const vault of this.config.vaults.values()) {
        this.arm(`gc/${vault.name}`, gcSchedule, gcSchedule.next(this.clock.now()), () => this.enqueueGc(vault));
      }
    }
    for (const v of this.config.vaults.values()) void this.openVault(v).then((vault) => this.refreshVault(v, vault), () => undefined);
    this.deps.log.info('agent started', {
      policies: [...this.config.policies.values()].filter((p) => p.enabled).length,
      resources: this.config.resources.size,
      vaults: this.config.vaults.size,
    });
  }

  /** Replaces the configuration (SIGHUP): schedules are re-armed; running jobs finish as they were. */
  reload(config: AgentConfig): void {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    this.nextRuns.clear();
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
    const policy = [...this.config.policies.values()].find((p) => p.enabled && p.vaults.includes(resource.vault));
    return this.enqueueBackup(resource, policy ?? null);
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
      controlPlane: { state: 'not-configured', url: null },
      jobs: [...this.running.values()].map((r) => r.job),
      resources: [...this.config.resources.values()].map((r) => {
        const history = this.deps.state.jobs('backup', r.name);
        const last = history[history.length - 1];
        const success = [...history].reverse().find((j) => j.status === 'ok');
        const policies = [...this.config.policies.values()].filter((p) => p.enabled && p.vaults.includes(r.vault));
        const next = policies
          .map((p) => this.nextRuns.get(scheduleKey(p.name, r.name)))
          .filter((d): d is Date => d !== undefined)
          .sort((a, b) => a.getTime() - b.getTime())[0];
        return {
          name: r.name,
          vault: r.vault,
          policy: policies[0]?.name ?? null,
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
    for (const policy of this.config.policies.values()) {
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
    this.deps.state.setLastFire(policy.name, resource.name, at);
    if (!this.enqueueBackup(resource, policy)) {
      this.deps.log.warn('skipped a scheduled backup: the last one of this resource is still queued or running', { policy: policy.name, resource: resource.name });
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

  private async backupJob(id: string, resource: ResourceConfig, policy: PolicyConfig | null): Promise<void> {
    const vaultConfig = this.config.vaults.get(resource.vault)!;
    const job: RunningJob = { id, kind: 'backup', resource: resource.name, vault: vaultConfig.name, policy: policy?.name ?? null, startedAt: this.clock.now().toISOString(), progress: null };
    const t0 = performance.now();
    this.running.set(id, { job, started: t0 });
    this.deps.log.info('backup started', { job: id, resource: resource.name, vault: vaultConfig.name, policy: policy?.name });
    try {
      const vault = await this.openVault(vaultConfig);
      const sources = await openSources(resource.disks);
      let result;
      try {
        result = await runBackup(vault, sources, {
          namePrefix: 'autobk',
          quiesce: resource.quiesce,
          requireAppConsistent: resource.requireAppConsistent,
          onProgress: (p) => (job.progress = progressOf(p, performance.now() - t0)),
        });
      } finally {
        for (const s of sources) await s.close().catch(() => undefined);
      }
      if (this.stopping) return;
      const m = result.manifest;
      this.record(job, { status: 'ok', backup: m.name, bytesRead: result.bytesRead, bytesStored: result.bytesStored, error: null });
      this.deps.log.info('backup done', { job: id, resource: resource.name, backup: m.name, kind: m.kind, bytesRead: result.bytesRead, bytesStored: result.bytesStored, consistency: m.consistency });
      for (const w of result.warnings) this.deps.log.warn(w, { job: id, resource: resource.name });
      if (policy) await this.prune(vault, policy, resourceKey(sources), resource);
      await this.refreshVault(vaultConfig, vault);
    } catch (err) {
      if (this.stopping) return;
      this.record(job, { status: 'failed', backup: null, bytesRead: job.progress?.bytesDone ?? 0, bytesStored: job.progress?.bytesStored ?? 0, error: (err as Error).message });
      this.deps.log.error('backup failed', { job: id, resource: resource.name, error: (err as Error).message });
    } finally {
      this.running.delete(id);
    }
  }

  /** Deletes the policy's own backups of this resource that its retention rule no longer keeps. */
  private async prune(vault: Vault, policy: PolicyConfig, resource: string, config: ResourceConfig): Promise<void> {
    const backups = (await vault.listBackups()).filter((m) => m.resource === resource);
    const plan = planRetention(backups, policy.retention, this.clock.now());
    for (const { id } of plan.prune) {
      const m = backups.find((b) => b.id === id)!;
      try {
        await deleteBackup(vault, m);
        this.deps.log.info('pruned a backup by retention', { policy: policy.name, resource: config.name, backup: m.name });
      } catch (err) {
        this.deps.log.warn('could not prune a backup', { backup: m.name, error: (err as Error).message });
      }
    }
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
      if (!this.stopping) this.record(job, { status: 'failed', backup: null, bytesRead: 0, bytesStored: 0, error: (err as Error).message });
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

  private record(job: RunningJob, r: Pick<AgentJobRecord, 'status' | 'backup' | 'bytesRead' | 'bytesStored' | 'error'>): void {
    const finishedAt = this.clock.now();
    const durationMs = finishedAt.getTime() - Date.parse(job.startedAt);
    this.deps.state.recordJob({ jobId: job.id, kind: job.kind, resource: job.resource, vault: job.vault, policy: job.policy, startedAt: job.startedAt, finishedAt: finishedAt.toISOString(), durationMs, ...r });
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
