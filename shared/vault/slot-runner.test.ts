import { describe, expect, it } from 'vitest';
import { SlotRunner } from './slot-runner.js';

const tick = () => new Promise((r) => setTimeout(r, 1));

describe('SlotRunner', () => {
  it('runs at most `slots` tasks at once, each in a slot no other running task holds', async () => {
    const runner = new SlotRunner(3);
    const held = new Set<number>();
    let running = 0;
    let peak = 0;
    for (let i = 0; i < 20; i++) {
      const slot = (await runner.acquire())!;
      runner.start(slot, async () => {
        expect(held.has(slot)).toBe(false);
        held.add(slot);
        peak = Math.max(peak, ++running);
        await tick();
        running--;
        held.delete(slot);
      });
    }
    await runner.drain();
    expect(peak).toBe(3);
  });

  it('stops handing out slots after a failure and rethrows it from drain', async () => {
    const runner = new SlotRunner(2);
    let started = 0;
    for (let i = 0; i < 10; i++) {
      const slot = await runner.acquire();
      if (slot === undefined) break;
      started++;
      runner.start(slot, async () => {
        await tick();
        if (i === 1) throw new Error('boom');
      });
    }
    await expect(runner.drain()).rejects.toThrow('boom');
    expect(started).toBeLessThan(10);
  });
});
