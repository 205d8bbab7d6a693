/**
 * The agent's job queue: at most `concurrency` jobs at once and never two on one resource (a job's
 * `lock`). A job waiting for its lock does not hold back jobs behind it on other resources. A lock
 * that is queued or running already refuses a second job (a schedule firing while the last run is
 * still going adds nothing), unless it is enqueued with `wait` (a control-plane command): then it
 * queues behind the job holding its lock. After `stop()` nothing new starts; running jobs finish or
 * are cancelled by their owner.
 */
export interface Job {
  id: string;
  /** Jobs with the same lock never run at once (the resource name, or `vault:<name>` for gc). */
  lock: string;
  run(): Promise<void>;
}

export class JobQueue {
  private readonly waiting: Job[] = [];
  private readonly active = new Map<string, { job: Job; done: Promise<void> }>();
  private stopped = false;

  constructor(private readonly concurrency: number) {}

  get running(): Job[] {
    return [...this.active.values()].map((a) => a.job);
  }

  get queued(): Job[] {
    return [...this.waiting];
  }

  /**
   * Adds a job; false (and nothing added) when the queue stopped, or when its lock is queued or
   * running and `wait` is not set. With `wait` it runs after the jobs holding or waiting for its lock.
   */
  enqueue(job: Job, opts: { wait?: boolean } = {}): boolean {
    if (this.stopped) return false;
    if (!opts.wait && (this.active.has(job.lock) || this.waiting.some((j) => j.lock === job.lock))) return false;
    this.waiting.push(job);
    this.pump();
    return true;
  }

  /** Takes no more work; resolves when the running jobs have settled. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.waiting.length = 0;
    await Promise.all([...this.active.values()].map((a) => a.done));
  }

  /** Resolves when nothing is running or queued. */
  async idle(): Promise<void> {
    while (this.active.size > 0 || this.waiting.length > 0) {
      await Promise.race([...this.active.values()].map((a) => a.done));
    }
  }

  private pump(): void {
    for (let i = 0; i < this.waiting.length && this.active.size < this.concurrency && !this.stopped; ) {
      const job = this.waiting[i];
      if (this.active.has(job.lock) || this.waiting.slice(0, i).some((j) => j.lock === job.lock)) {
        i++;
        continue;
      }
      this.waiting.splice(i, 1);
      const done = job
        .run()
        .catch(() => undefined)
        .finally(() => {
          this.active.delete(job.lock);
          this.pump();
        });
      this.active.set(job.lock, { job, done });
    }
  }
}
