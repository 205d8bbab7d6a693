/**
 * Runs asynchronous tasks at most `slots` at a time, each owning a slot index (a shared buffer, a
 * read-ahead position) from start to end. The first failure stops new tasks: `acquire` then
 * returns undefined, and `drain` waits for the running ones and rethrows it.
 */
export class SlotRunner {
  private readonly free: number[];
  private readonly running = new Set<Promise<void>>();
  private failure: unknown;

  constructor(slots: number) {
    this.free = Array.from({ length: slots }, (_, i) => slots - 1 - i);
  }

  /** Waits for a free slot and takes it; undefined once a task has failed. */
  async acquire(): Promise<number | undefined> {
    while (this.free.length === 0) await Promise.race(this.running);
    if (this.failure !== undefined) return undefined;
    return this.free.pop();
  }

  /** Runs `task` in a slot taken with acquire; the slot is freed when it settles. */
  start(slot: number, task: () => Promise<void>): void {
    const run: Promise<void> = task()
      .catch((err) => {
        this.failure ??= err;
      })
      .finally(() => {
        this.running.delete(run);
        this.free.push(slot);
      });
    this.running.add(run);
  }

  /** Waits for every started task; rethrows the first failure. */
  async drain(): Promise<void> {
    await Promise.all(this.running);
    if (this.failure !== undefined) throw this.failure;
  }
}
