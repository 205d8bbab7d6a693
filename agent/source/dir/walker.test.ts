import { execFileSync } from 'node:child_process';
import { linkSync, lstatSync, mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ExcludeMatcher } from './exclude.js';
import { displayPath } from './path-bytes.js';
import { nativeWalkAvailable, walkTree, type WalkEntry } from './walker.js';

// Every behaviour holds for both listings: the native addon's (native/walk.c) and Node's calls.
describe.each([{ native: true }, { native: false }])('walkTree (native: $native)', ({ native }) => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'cairn-walk-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('yields entries in byte order of the whole path, not depth-first', () => {
    for (const d of ['a', 'a/b', 'c']) mkdirSync(join(dir, d));
    for (const f of ['a-b', 'a0', 'a/x', 'a/b/y', 'a/b-z', 'c/.h', 'Z']) writeFileSync(join(dir, f), f);
    symlinkSync('a', join(dir, 'link'));
    const paths = [...walkTree(dir, { native })].map((e) => e.path.toString());
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
    const entries = [...walkTree(dir, { native, excludes: ExcludeMatcher.compile(['skip/']) })];
    expect(entries.map((e) => displayPath(e.path))).toEqual(['', 'n\\xff\n', 'real', 'real/f', 'via']);
    const via = entries.find((e) => e.path.toString() === 'via')!;
    expect(via.type).toBe('symlink');
    expect(via.target!.toString()).toBe(join(dir, 'real'));
    expect(entries.find((e) => e.path.toString() === 'real/f')!.stat.size).toBe(1);
  });

  /** Walks `dir`/tree, calling `swap` once `at` is yielded: its children are lstat'ed, none listed yet. */
  function walkSwapping(swap: () => void, at = ''): WalkEntry[] {
    const out: WalkEntry[] = [];
    for (const e of walkTree(join(dir, 'tree'), { native })) {
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

  it('records a folder removed, or replaced by a file, between its lstat and its listing', () => {
    mkdirSync(join(dir, 'tree', 'gone'), { recursive: true });
    mkdirSync(join(dir, 'tree', 'now-a-file'));
    writeFileSync(join(dir, 'tree', 'now-a-file', 'own'), 'o');
    const entries = walkSwapping(() => {
      rmSync(join(dir, 'tree', 'gone'), { recursive: true });
      rmSync(join(dir, 'tree', 'now-a-file'), { recursive: true });
      writeFileSync(join(dir, 'tree', 'now-a-file'), 'f');
    });
    expect(entries.map((e) => [e.path.toString(), e.type, e.error])).toEqual([
      ['', 'dir', undefined],
      ['gone', 'dir', 'cannot be listed: ENOENT (no such file or directory)'],
      ['now-a-file', 'dir', 'changed during the walk: it is no longer a folder; its contents were not backed up'],
    ]);
  });

  it('keeps 64-bit inode numbers as bigints, and walks a root given as a symlink to a folder', () => {
    mkdirSync(join(dir, 'real'));
    writeFileSync(join(dir, 'real', 'f'), 'f');
    symlinkSync(join(dir, 'real'), join(dir, 'root-link'));
    const entries = [...walkTree(join(dir, 'root-link'), { native })];
    expect(entries.map((e) => e.path.toString())).toEqual(['', 'f']);
    expect(entries.every((e) => e.error === undefined)).toBe(true);
    expect(entries[1].stat.ino).toBe(lstatSync(join(dir, 'real', 'f'), { bigint: true }).ino);
    expect(typeof entries[0].stat.ino).toBe('bigint');
  });

  it('refuses a root that is not a folder', () => {
    writeFileSync(join(dir, 'file'), 'x');
    expect(() => [...walkTree(join(dir, 'file'), { native })]).toThrow(/not a directory/);
    expect(() => [...walkTree(join(dir, 'missing'), { native })]).toThrow(/ENOENT/);
  });
});

describe('walkTree: native listing against Node calls', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'cairn-walk-native-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  /** Both walks of `root`, after one that sets the folders' access times (relatime), so they see the same. */
  function bothWalks(root: string, excludes?: ExcludeMatcher): { native: WalkEntry[]; js: WalkEntry[] } {
    for (const _ of walkTree(root, { native: false, excludes })) void _;
    return { native: [...walkTree(root, { native: true, excludes })], js: [...walkTree(root, { native: false, excludes })] };
  }

  /** A tree with every kind of entry the walk records below `dir`/tree. */
  function makeTree(): string {
    const root = join(dir, 'tree');
    const at = (...parts: (string | Buffer)[]): Buffer => Buffer.concat([Buffer.from(root), ...parts.flatMap((p) => [Buffer.from('/'), Buffer.from(p)])]);
    mkdirSync(join(root, 'a', 'b', 'c'), { recursive: true });
    mkdirSync(join(root, 'empty-dir'));
    writeFileSync(join(root, 'file'), 'data');
    writeFileSync(join(root, 'empty'), '');
    writeFileSync(join(root, 'a', 'b', 'c', 'deep'), 'x'.repeat(5000));
    writeFileSync(join(root, 'a', 'x.tmp'), 't');
    writeFileSync(join(root, 'a', 'keep.tmp'), 'k');
    linkSync(join(root, 'file'), join(root, 'a', 'hard'));
    symlinkSync('file', join(root, 'link'));
    symlinkSync('missing/target', join(root, 'dangling'));
    symlinkSync('t'.repeat(4000), join(root, 'long-link')); // longer than the addon's first buffer
    symlinkSync(join(root, 'a'), join(root, 'dir-link'));
    execFileSync('mkfifo', [join(root, 'fifo')]);
    writeFileSync(at(Buffer.from([0x6e, 0xff, 0xfe])), 'not UTF-8');
    writeFileSync(at('new\nline'), 'nl');
    writeFileSync(at('ünï cödé \\ spaced'), 'u');
    writeFileSync(at('n'.repeat(255)), 'longest name');
    writeFileSync(at('a-b'), 'sorts between a and a/');
    // Times beyond 64-bit nanoseconds (year 2286) and before 1970.
    writeFileSync(join(root, 'far-future'), 'f');
    utimesSync(join(root, 'far-future'), 1e10, 1e10);
    writeFileSync(join(root, 'old'), 'o');
    execFileSync('touch', ['-h', '-d', '1960-01-01T00:00:00.25Z', join(root, 'old')]);
    // A folder larger than the addon's first buffer (64 KiB): 600 records of over 300 bytes.
    mkdirSync(join(root, 'big'));
    for (let i = 0; i < 600; i++) writeFileSync(join(root, 'big', `${String(i).padStart(4, '0')}-${'n'.repeat(200)}`), '');
    return root;
  }

  it('is available: the addon is built (binding.gyp; npm install builds it)', () => {
    expect(nativeWalkAvailable()).toBe(true);
  });

  it('gives the same entries, stat fields, targets and order as Node calls for every kind of entry', () => {
    const root = makeTree();
    const { native, js } = bothWalks(root);
    expect(native).toStrictEqual(js);
    expect(native.length).toBe(624);
    const byPath = new Map(native.map((e) => [e.path.toString('latin1'), e]));
    expect(new Set(native.map((e) => e.type))).toEqual(new Set(['dir', 'file', 'symlink', 'fifo']));
    expect(byPath.get('long-link')!.target!.toString()).toBe('t'.repeat(4000));
    expect(byPath.get('dangling')!.target!.toString()).toBe('missing/target');
    expect(byPath.get('a/hard')!.stat.nlink).toBe(2);
    expect(byPath.get('a/hard')!.stat.ino).toBe(byPath.get('file')!.stat.ino);
    expect(byPath.get('far-future')!.stat.mtimeNs).toBe(10n ** 19n);
    expect(byPath.get('old')!.stat.mtimeNs).toBe(-315619200n * 10n ** 9n + 250_000_000n);
    expect(byPath.get('n\xff\xfe')!.abs).toEqual(Buffer.concat([Buffer.from(`${root}/n`), Buffer.from([0xff, 0xfe])]));
    expect(byPath.get('a/b/c/deep')!.stat.size).toBe(5000);
  });

  it('excludes the same entries, and does not enter excluded folders', () => {
    const root = makeTree();
    const excludes = ExcludeMatcher.compile(['*.tmp', '!keep.tmp', 'big/', '/a/b/c', 'new*', '*link']);
    const { native, js } = bothWalks(root, excludes);
    expect(native).toStrictEqual(js);
    const paths = native.map((e) => e.path.toString('latin1'));
    expect(paths).toContain('a/keep.tmp');
    expect(paths).toContain('a/b');
    for (const gone of ['new\nline', 'a/x.tmp', 'big', 'big/0000-' + 'n'.repeat(200), 'a/b/c', 'a/b/c/deep', 'link', 'long-link', 'dir-link']) expect(paths).not.toContain(gone);
  });

  it('records device nodes and mount points (in /dev) as Node calls do', () => {
    // /dev/null and /dev/zero are character devices everywhere; /dev/pts and /dev/shm are mounts.
    const excludes = ExcludeMatcher.compile(['/*', '!/null', '!/zero', '!/pts', '!/shm']);
    const { native, js } = bothWalks('/dev', excludes);
    expect(native).toStrictEqual(js);
    const devNull = native.find((e) => e.path.toString() === 'null')!;
    expect(devNull.type).toBe('chardev');
    expect(devNull.stat.rdev).toBe(Number(lstatSync('/dev/null', { bigint: true }).rdev));
    expect(native.some((e) => e.mountPoint)).toBe(true);
  });
});
