import { lstatSync, mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ExcludeMatcher } from './exclude.js';
import { displayPath } from './path-bytes.js';
import { walkTree, type WalkEntry } from './walker.js';

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

  /** Walks `dir`/tree, calling `swap` once `at` is yielded: its children are lstat'ed, none listed yet. */
  function walkSwapping(swap: () => void, at = ''): WalkEntry[] {
    const out: WalkEntry[] = [];
    for (const e of walkTree(join(dir, 'tree'))) {
      out.push(e);
      if (e.path.toString() === at) swap();
    }
    return out;
  }

  it('does not follow a folder swapped for a symlink between its lstat and its listing', () => {
    mkdirSync(join(dir, 'outside'));
    writeFileSync(join(dir, 'outside', 'secret'), 's');
    mkdirSync(join(dir, 'tree'));
    mkdirSync(join(dir, 'tree', 'd'));
    writeFileSync(join(dir, 'tree', 'd', 'own'), 'o');
    writeFileSync(join(dir, 'tree', 'e'), 'e');
    const recorded = lstatSync(join(dir, 'tree', 'd'), { bigint: true });
    const entries = walkSwapping(() => {
      renameSync(join(dir, 'tree', 'd'), join(dir, 'd-away'));
      symlinkSync(join(dir, 'outside'), join(dir, 'tree', 'd'));
    });
    expect(entries.map((e) => e.path.toString())).toEqual(['', 'd', 'e']);
    const d = entries[1];
    expect(d.type).toBe('dir');
    expect(d.stat.ino).toBe(recorded.ino);
    expect(d.error).toMatch(/^changed during the walk: /);
  });

  it('does not list another folder put in the place of one between its lstat and its listing', () => {
    mkdirSync(join(dir, 'tree'));
    mkdirSync(join(dir, 'tree', 'd'));
    writeFileSync(join(dir, 'tree', 'd', 'own'), 'o');
    mkdirSync(join(dir, 'tree', 'f'));
    writeFileSync(join(dir, 'tree', 'f', 'kept'), 'k');
    const entries = walkSwapping(() => {
      renameSync(join(dir, 'tree', 'd'), join(dir, 'd-away'));
      mkdirSync(join(dir, 'tree', 'd'));
      writeFileSync(join(dir, 'tree', 'd', 'planted'), 'p');
    });
    expect(entries.map((e) => e.path.toString())).toEqual(['', 'd', 'f', 'f/kept']);
    expect(entries[1].error).toMatch(/^changed during the walk: another folder took its place/);
    expect(entries[2].error).toBeUndefined();
  });

  it('does not leave the tree when a folder above the one to list is swapped for a symlink', () => {
    mkdirSync(join(dir, 'outside', 'b'), { recursive: true });
    writeFileSync(join(dir, 'outside', 'b', 'secret'), 's');
    mkdirSync(join(dir, 'tree', 'a', 'b'), { recursive: true });
    writeFileSync(join(dir, 'tree', 'a', 'b', 'own'), 'o');
    const entries = walkSwapping(() => {
      renameSync(join(dir, 'tree', 'a'), join(dir, 'a-away'));
      symlinkSync(join(dir, 'outside'), join(dir, 'tree', 'a'));
    }, 'a');
    expect(entries.map((e) => e.path.toString())).toEqual(['', 'a', 'a/b']);
    expect(entries[2].error).toMatch(/^changed during the walk: /);
  });

  it('keeps 64-bit inode numbers as bigints, and walks a root given as a symlink to a folder', () => {
    mkdirSync(join(dir, 'real'));
    writeFileSync(join(dir, 'real', 'f'), 'f');
    symlinkSync(join(dir, 'real'), join(dir, 'root-link'));
    const entries = [...walkTree(join(dir, 'root-link'))];
    expect(entries.map((e) => e.path.toString())).toEqual(['', 'f']);
    expect(entries.every((e) => e.error === undefined)).toBe(true);
    expect(entries[1].stat.ino).toBe(lstatSync(join(dir, 'real', 'f'), { bigint: true }).ino);
    expect(typeof entries[0].stat.ino).toBe('bigint');
  });

  it('refuses a root that is not a folder', () => {
    writeFileSync(join(dir, 'file'), 'x');
    expect(() => [...walkTree(join(dir, 'file'))]).toThrow(/not a directory/);
    expect(() => [...walkTree(join(dir, 'missing'))]).toThrow(/ENOENT/);
  });
});
