import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ExcludeMatcher } from './exclude.js';
import { displayPath } from './path-bytes.js';
import { walkTree } from './walker.js';

describe('walkTree', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'cairn-walk-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('yields entries in byte order of the whole path, not depth-first', () => {
    for (const d of ['a', 'a/b', 'c']) mkdirSync(join(dir, d));
    for (const f of ['a-b', 'a0', 'a/x', 'a/b/y', 'a/b-z', 'c/.h', 'Z']) writeFileSync(join(dir, f), f);
    symlinkSync('a', join(dir, 'link'));
    const paths = [...walkTree(dir)].map((e) => e.path.toString());
    expect(paths).toEqual(['', 'Z', 'a', 'a-b', 'a/b', 'a/b-z', 'a/b/y', 'a/x', 'a0', 'c', 'c/.h', 'link']);
    const sorted = [...paths].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
    expect(paths).toEqual(sorted);
  });

  it('does not follow symlinks, keeps raw-byte names, and leaves out excluded paths without entering them', () => {
    mkdirSync(join(dir, 'real'));
    writeFileSync(join(dir, 'real', 'f'), 'f');
    symlinkSync(join(dir, 'real'), join(dir, 'via'));
    const odd = Buffer.concat([Buffer.from(dir + '/'), Buffer.from([0x6e, 0xff, 0x0a])]);
    writeFileSync(odd, 'odd');
    mkdirSync(join(dir, 'skip'));
    writeFileSync(join(dir, 'skip', 'inside'), 'x');
    const entries = [...walkTree(dir, { excludes: ExcludeMatcher.compile(['skip/']) })];
    expect(entries.map((e) => displayPath(e.path))).toEqual(['', 'n\\xff\n', 'real', 'real/f', 'via']);
    const via = entries.find((e) => e.path.toString() === 'via')!;
    expect(via.type).toBe('symlink');
    expect(via.target!.toString()).toBe(join(dir, 'real'));
    expect(entries.find((e) => e.path.toString() === 'real/f')!.stat.size).toBe(1);
  });

  it('refuses a root that is not a folder', () => {
    writeFileSync(join(dir, 'file'), 'x');
    expect(() => [...walkTree(join(dir, 'file'))]).toThrow(/not a directory/);
    expect(() => [...walkTree(join(dir, 'missing'))]).toThrow(/ENOENT/);
  });
});
