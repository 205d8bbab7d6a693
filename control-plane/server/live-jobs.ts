import type { JobProgressMessage, RunningJobSummary } from '../../shared/protocol/messages.js';

/** The job kinds a heartbeat's `jobs` can name (shared/protocol RunningJobSummary.kind). */
const HEARTBEAT_KINDS: ReadonlySet<string> = new Set<RunningJobSummary['kind']>(['backup', 'prune', 'gc']);

/** A job an agent is running now, as its latest `job-progress` or heartbeat told. */
export interface LiveJob {
  agentId: string;
  jobId: string;
  /** null: a policy started it (or only a heartbeat named it). */
  commandId: string | null;
  kind: NonNullable<JobProgressMessage['kind']> | null;
  resource: string | null;
  vault: string | null;
  /** 0-100; null when only a heartbeat named it without a percentage. */
  percent: number | null;
  bytesDone: number | null;
  bytesTotal: number | null;
  rateBytesPerSecond: number | null;
  updatedAt: string;
}

/**
 * The jobs agents connected to this instance run now: memory only, never stored (job-progress is
 * best effort). An entry goes when its job-result arrives, when its agent disconnects, or when a
 * heartbeat of its agent no longer lists it (only for the kinds a heartbeat can list). Several instances sharing a catalog each know only
 * their own agents' jobs.
 */
export class LiveJobs {
  private readonly byAgent = new Map<string, Map<string, LiveJob>>();

  /** Records a `job-progress`; fields it leaves out keep what was known. */
  progress(agentId: string, message: JobProgressMessage, at: string): void {
    const jobs = this.jobsOf(agentId);
    const old = jobs.get(message.jobId);
    jobs.set(message.jobId, {
      agentId,
      jobId: message.jobId,
      commandId: message.commandId !== undefined ? message.commandId : (old?.commandId ?? null),
      kind: message.kind ?? old?.kind ?? null,
      resource: message.resource !== undefined ? message.resource : (old?.resource ?? null),
      vault: message.vault ?? old?.vault ?? null,
      percent: message.percent,
      bytesDone: message.bytesDone,
      bytesTotal: message.bytesTotal,
      rateBytesPerSecond: message.rateBytesPerSecond,
      updatedAt: at,
    });
  }

  /**
   * Makes the agent's jobs of the kinds a heartbeat lists (backup, prune, gc) those of the heartbeat:
   * unlisted ones of those kinds go, new ones come with what it says. Jobs of kinds a heartbeat
   * cannot list (restore, verify, delete) stay until their job-result or the agent's disconnect; a
   * job whose kind is unknown (job-progress without one) goes when unlisted, as before.
   */
  heartbeat(agentId: string, running: RunningJobSummary[], at: string): void {
    const jobs = this.jobsOf(agentId);
    const listed = new Set(running.map((j) => j.id));
    for (const [id, job] of [...jobs]) {
      if (!listed.has(id) && (job.kind === null || HEARTBEAT_KINDS.has(job.kind))) jobs.delete(id);
    }
    for (const job of running) {
      const old = jobs.get(job.id);
      if (old !== undefined) {
        if (job.percent !== null) jobs.set(job.id, { ...old, percent: job.percent, updatedAt: at });
        continue;
      }
      jobs.set(job.id, {
        agentId,
        jobId: job.id,
        commandId: null,
        kind: job.kind,
        resource: job.resource,
        vault: null,
        percent: job.percent,
        bytesDone: null,
        bytesTotal: null,
        rateBytesPerSecond: null,
        updatedAt: at,
      });
    }
    if (jobs.size === 0) this.byAgent.delete(agentId);
  }

  /** The job ended (its job-result arrived). */
  finished(agentId: string, jobId: string): void {
    const jobs = this.byAgent.get(agentId);
    jobs?.delete(jobId);
    if (jobs?.size === 0) this.byAgent.delete(agentId);
  }

  /** The agent's connection closed: what it ran is unknown from now on. */
  forget(agentId: string): void {
    this.byAgent.delete(agentId);
  }

  /** Every live job, by agent then job id. */
  list(): LiveJob[] {
    return [...this.byAgent.values()]
      .flatMap((jobs) => [...jobs.values()])
      .sort((a, b) => (a.agentId === b.agentId ? cmp(a.jobId, b.jobId) : cmp(a.agentId, b.agentId)))
      .map((job) => ({ ...job }));
  }

  /** The live job that runs `commandId`, if any. */
  forCommand(commandId: string): LiveJob | undefined {
    for (const jobs of this.byAgent.values()) for (const job of jobs.values()) if (job.commandId === commandId) return { ...job };
    return undefined;
  }

  private jobsOf(agentId: string): Map<string, LiveJob> {
    let jobs = this.byAgent.get(agentId);
    if (jobs === undefined) this.byAgent.set(agentId, (jobs = new Map()));
    return jobs;
  }
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
