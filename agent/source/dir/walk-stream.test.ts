import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ExcludeMatcher } from './exclude.js';
import { WalkStream } from './walk-stream.js';
import { walkTree, type WalkEntry } from './walker.js';

/** What a consumer of either walk sees of an entry. */
function view(e: WalkEntry): unknown {
  // Not atime: listing a folder may update it (relatime), and the two walks list each folder once.
  const { atimeNs: _, ...stat } = e.stat;
  return { path: e.path.toString('latin1'), abs: e.abs.toString('latin1'), type: e.type, stat, target: e.target?.toString('latin1'), error: e.error, mountPoint: e.mountPoint };
}

async function collect(stream: WalkStream): Promise<WalkEntry[]> {
  const out: WalkEntry[] = [];
  try {
    await stream.first();
    for await (const e of stream) out.push(e);
  } finally {
    await stream.close();
  }
  return out;
}

describe('WalkStream (the walk in a worker thread)', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'cairn-walkstream-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('yields exactly what walkTree yields, field by field, across many batches', async () => {
    // 3 000 entries: six batches of 512, and batches of 7 with 2 in flight (the worker waits often).
    for (let d = 0; d < 30; d++) {
      mkdirSync(join(dir, `d${d}`));
      for (let f = 0; f < 99; f++) writeFileSync(join(dir, `d${d}`, `f${f}`), 'x'.repeat(f));
    }
    symlinkSync('d1/f1', join(dir, 'link'));
    execFileSync('mkfifo', [join(dir, 'fifo')]);
    writeFileSync(Buffer.concat([Buffer.from(dir + '/'), Buffer.from([0x6e, 0xff, 0x0a])]), 'odd');
    mkdirSync(join(dir, 'skip'));
    writeFileSync(join(dir, 'skip', 'x'), 'x');
    const expected = [...walkTree(dir, { excludes: ExcludeMatcher.compile(['skip/']) })].map(view);
    const got = (await collect(new WalkStream(dir, { excludes: ['skip/'] }))).map(view);
    expect(got.length).toBe(1 + 30 * 100 + 3);
    expect(got).toEqual(expected);
    expect((await collect(new WalkStream(dir, { excludes: ['skip/'], batchEntries: 7, credits: 2 }))).map(view)).toEqual(expected);
  });

  it('is an empty-bodied walk of an empty folder, and fails on a missing or non-folder root before yielding', async () => {
    expect((await collect(new WalkStream(dir, { excludes: [] }))).map((e) => e.path.toString())).toEqual(['']);
    await expect(collect(new WalkStream(join(dir, 'missing'), { excludes: [] }))).rejects.toMatchObject({ code: 'NOT_FOUND' });
    writeFileSync(join(dir, 'file'), 'x');
    await expect(collect(new WalkStream(join(dir, 'file'), { excludes: [] }))).rejects.toMatchObject({ code: 'USAGE' });
  });

  it('stops its worker when closed early, even while the worker waits for the reader', async () => {
    for (let f = 0; f < 200; f++) writeFileSync(join(dir, `f${f}`), '');
    const stream = new WalkStream(dir, { excludes: [], batchEntries: 10, credits: 3 });
    await stream.first();
    let n = 0;
    for await (const _ of stream) if (++n === 10) break;
    // The worker is now blocked with all its batches posted; close must end it.
    await new Promise((r) => setTimeout(r, 200));
    const t0 = performance.now();
    await stream.close();
    expect(performance.now() - t0).toBeLessThan(5000);
    // Closed: reading on is an error, never an end that looks like the whole tree.
    await expect(
      (async () => {
        for await (const _ of stream) void _;
      })(),
    ).rejects.toMatchObject({ code: 'INTERNAL', message: expect.stringContaining('closed before its end') });
  });
});
