import { describe, expect, it } from 'vitest';
import { JobQueue } from './job-queue.js';

/** A job that runs until released, recording when it started and ended. */
function gate(log: string[], id: string): { run: () => Promise<void>; release: () => void } {
  let release!: () => void;
  const done = new Promise<void>((r) => (release = r));
  return {
    run: async () => {
      log.push(`start ${id}`);
      await done;
      log.push(`end ${id}`);
    },
    release: () => release(),
  };
}

const tick = (): Promise<void> => new Promise((r) => setTimeout(r, 0));

describe('JobQueue', () => {
  it('runs at most `concurrency` jobs, never two with one lock, and lets other locks pass a blocked one', async () => {
    const log: string[] = [];
    const q = new JobQueue(2);
    const a1 = gate(log, 'a1');
    const a2 = gate(log, 'a2');
    const b = gate(log, 'b');
    const c = gate(log, 'c');
    expect(q.enqueue({ id: 'a1', lock: 'a', run: a1.run })).toBe(true);
    expect(q.enqueue({ id: 'a2', lock: 'a', run: a2.run }), 'lock a is running').toBe(false);
    expect(q.enqueue({ id: 'b', lock: 'b', run: b.run })).toBe(true);
    expect(q.enqueue({ id: 'c', lock: 'c', run: c.run })).toBe(true);
    await tick();
    expect(log).toEqual(['start a1', 'start b']);
    expect(q.queued.map((j) => j.id)).toEqual(['c']);
    b.release();
    await tick();
    await tick();
    expect(log).toEqual(['start a1', 'start b', 'end b', 'start c']);
    expect(q.enqueue({ id: 'a3', lock: 'a', run: a2.run })).toBe(false);
    a1.release();
    c.release();
    await q.idle();
    expect(q.running).toEqual([]);
  });

  it('takes nothing after stop() and waits for the running jobs', async () => {
    const log: string[] = [];
    const q = new JobQueue(1);
    const a = gate(log, 'a');
    q.enqueue({ id: 'a', lock: 'a', run: a.run });
    q.enqueue({ id: 'b', lock: 'b', run: gate(log, 'b').run });
    await tick();
    const stopped = q.stop();
    expect(q.enqueue({ id: 'c', lock: 'c', run: gate(log, 'c').run })).toBe(false);
    a.release();
    await stopped;
    expect(log).toEqual(['start a', 'end a']);
  });

  it('a failing job frees its lock', async () => {
    const q = new JobQueue(1);
    q.enqueue({ id: 'x', lock: 'r', run: () => Promise.reject(new Error('boom')) });
    await q.idle();
    expect(q.enqueue({ id: 'y', lock: 'r', run: () => Promise.resolve() })).toBe(true);
    await q.idle();
  });
});

describe('JobQueue with wait', () => {
  it('queues a waiting job behind the one holding its lock, in order', async () => {
    const q = new JobQueue(2);
    const order: string[] = [];
    let release!: () => void;
    const first = new Promise<void>((r) => (release = r));
    expect(q.enqueue({ id: 'a1', lock: 'a', run: async () => (await first, void order.push('a1')) })).toBe(true);
    expect(q.enqueue({ id: 'a2', lock: 'a', run: async () => void order.push('a2') }, { wait: true })).toBe(true);
    expect(q.enqueue({ id: 'a3', lock: 'a', run: async () => void order.push('a3') }, { wait: true })).toBe(true);
    expect(q.enqueue({ id: 'a4', lock: 'a', run: async () => void order.push('a4') }), 'without wait a busy lock refuses').toBe(false);
    expect(q.running.map((j) => j.id)).toEqual(['a1']);
    release();
    await q.idle();
    expect(order).toEqual(['a1', 'a2', 'a3']);
  });
});
