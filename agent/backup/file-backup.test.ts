import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  appendFileSync,
  chmodSync,
  closeSync,
  cpSync,
  fstatSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readlinkSync,
  renameSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LocalStore } from '../../shared/store/local-store.js';
import { readTree, type TreeEntry } from '../../shared/vault/tree.js';
import { Vault } from '../../shared/vault/vault.js';
import { toEntryStat } from '../source/dir/walker.js';
import { notTheWalked, runFileBackup, TreePlace } from './file-backup.js';

/**
 * The check between a walk's lstat and the read of a file's data: a file replaced in place is
 * stored (as changed), one reached through a folder swapped for a symlink is not.
 */
describe('notTheWalked', () => {
  let dir: string;
  let root: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'cairn-walked-'));
    root = join(dir, 'tree');
    mkdirSync(join(root, 'sub'), { recursive: true });
    mkdirSync(join(dir, 'outside'));
    writeFileSync(join(root, 'sub', 'notes.txt'), 'inside the tree\n');
    writeFileSync(join(dir, 'outside', 'notes.txt'), 'SECRET outside the tree\n');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  /** Opens `rel` below the root as the backup does, and checks it against the walk's lstat `st`. */
  function check(rel: string, walked: ReturnType<typeof toEntryStat>, place = new TreePlace(root), between?: (fd: number) => void): string | undefined {
    const abs = Buffer.from(join(root, rel));
    const fd = openSync(abs, 'r');
    try {
      between?.(fd);
      return notTheWalked(walked, fstatSync(fd, { bigint: true }), fd, abs, place);
    } finally {
      closeSync(fd);
    }
  }

  it('accepts the walked file, and another one replaced in place (even if replaced again since)', () => {
    const walked = toEntryStat(lstatSync(join(root, 'sub', 'notes.txt'), { bigint: true }));
    expect(check('sub/notes.txt', walked)).toBeUndefined();
    // An atomic save: a new inode at the same path.
    writeFileSync(join(root, 'sub', '.new'), 'saved again\n');
    renameSync(join(root, 'sub', '.new'), join(root, 'sub', 'notes.txt'));
    expect(check('sub/notes.txt', walked)).toBeUndefined();
    // Saved once more while open: the kernel names it '... (deleted)', still at its path.
    expect(
      check('sub/notes.txt', walked, undefined, () => {
        writeFileSync(join(root, 'sub', '.new'), 'and again\n');
        renameSync(join(root, 'sub', '.new'), join(root, 'sub', 'notes.txt'));
      }),
    ).toBeUndefined();
  });

  it('refuses a file reached through a folder swapped for a symlink to outside the tree', () => {
    const walked = toEntryStat(lstatSync(join(root, 'sub', 'notes.txt'), { bigint: true }));
    renameSync(join(root, 'sub'), join(dir, 'moved'));
    symlinkSync(join(dir, 'outside'), join(root, 'sub'));
    expect(check('sub/notes.txt', walked)).toMatch(/^another file was at its path when read, not below the backed-up folder/);
  });

  it('follows a root that is itself a symlink to the folder', () => {
    symlinkSync(root, join(dir, 'via'));
    const viaRoot = join(dir, 'via');
    const walked = toEntryStat(lstatSync(join(viaRoot, 'sub', 'notes.txt'), { bigint: true }));
    writeFileSync(join(root, 'sub', '.new'), 'saved again\n');
    renameSync(join(root, 'sub', '.new'), join(root, 'sub', 'notes.txt'));
    const abs = Buffer.from(join(viaRoot, 'sub', 'notes.txt'));
    const fd = openSync(abs, 'r');
    try {
      expect(notTheWalked(walked, fstatSync(fd, { bigint: true }), fd, abs, new TreePlace(viaRoot))).toBeUndefined();
    } finally {
      closeSync(fd);
    }
  });

  it('refuses what is no longer a regular file', () => {
    const walked = toEntryStat(lstatSync(join(root, 'sub', 'notes.txt'), { bigint: true }));
    rmSync(join(root, 'sub', 'notes.txt'));
    mkdirSync(join(root, 'sub', 'notes.txt'));
    expect(check('sub/notes.txt', walked)).toBe('it is no longer a regular file');
  });
});

/**
 * An incremental finds most entries equal to its parent's by reading the parent's parts in place
 * (no object per entry); comparing every entry as objects must give the very same tree. Two copies
 * of one vault, one incremental each over the same changes, one way each.
 */
describe('incremental backups compare in place as they would as objects', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'cairn-in-place-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('gives the same tree, part for part, after edits, renames, deletions, mode, link and attribute changes', async () => {
    const root = join(dir, 'tree');
    const file = (rel: string, data: Buffer | string) => {
      mkdirSync(join(root, rel, '..'), { recursive: true });
      writeFileSync(join(root, rel), data);
    };
    for (let d = 0; d < 30; d++) for (let f = 0; f < 60; f++) file(`d${d}/f${f}.txt`, `file ${d}/${f}\n`.repeat(f));
    file('big/blob.bin', randomBytes(3 << 20));
    file('big/also.bin', randomBytes(100_000));
    file('links/target.txt', 'target\n');
    symlinkSync('target.txt', join(root, 'links', 'rel'));
    symlinkSync('x'.repeat(300), join(root, 'links', 'long'));
    linkSync(join(root, 'links', 'target.txt'), join(root, 'links', 'hard'));
    execFileSync('mkfifo', [join(root, 'links', 'fifo')]);
    execFileSync('setfattr', ['-n', 'user.colour', '-v', 'blue', join(root, 'd3', 'f5.txt')]);
    writeFileSync(join(root, 'empty'), '');
    // Unchanged files at the end of the tree: its last part, with new entries after it below.
    for (let f = 0; f < 150; f++) file(`y/${String(f).padStart(3, '0')}.txt`, `last ${f}\n`);

    // An hour ahead: no entry is in the parent's racy window, so unchanged files are reused.
    const now = Date.now() + 3600_000;
    const clock = { now: () => new Date(now) };
    const first = join(dir, 'vault-a');
    const a = await Vault.init(new LocalStore(first), 'pass', { kdfLogN: 12 }, { clock });
    await runFileBackup(a, root, { workers: 1 });

    appendFileSync(join(root, 'd1', 'f3.txt'), 'more\n');
    const big = openSync(join(root, 'big', 'blob.bin'), 'r+');
    writeSync(big, randomBytes(16), 0, 16, 1 << 20);
    closeSync(big);
    chmodSync(join(root, 'd2', 'f7.txt'), 0o600);
    utimesSync(join(root, 'd4', 'f9.txt'), new Date('2024-01-01'), new Date('2024-01-01'));
    rmSync(join(root, 'd5', 'f11.txt'));
    renameSync(join(root, 'd6', 'f12.txt'), join(root, 'd6', 'renamed.txt'));
    rmSync(join(root, 'links', 'rel'));
    symlinkSync('elsewhere.txt', join(root, 'links', 'rel'));
    execFileSync('setfattr', ['-n', 'user.size', '-v', 'large', join(root, 'd7', 'f1.txt')]);
    file('new/one.txt', 'one\n');
    file('zz/after.txt', 'after the last part\n');
    rmSync(join(root, 'd11'), { recursive: true });

    // Reading a link moves its atime once (relatime), which the later of the two backups would see.
    for (const link of ['rel', 'long']) readlinkSync(join(root, 'links', link));

    const second = join(dir, 'vault-b');
    cpSync(first, second, { recursive: true });
    const b = await Vault.open(new LocalStore(second), 'pass', { clock });
    const inPlace = await runFileBackup(a, root, { workers: 1 });
    const asObjects = await runFileBackup(b, root, { workers: 1, compareInPlace: false });

    expect(inPlace.manifest.kind).toBe('incremental');
    expect(inPlace.tree).toEqual(asObjects.tree);
    expect(inPlace.tree.partCount).toBeGreaterThan(8);
    expect([inPlace.filesRead, inPlace.filesReused]).toEqual([asObjects.filesRead, asObjects.filesReused]);
    // Read: f3 (appended), blob.bin (edited), f7 (mode: its ctime), f9 (mtime), renamed.txt (a new
    // path), f1 (an attribute: its ctime), new/one.txt, zz/after.txt; hard-linked target.txt and
    // its link are compared as objects (both ways alike).
    expect(inPlace.filesRead).toBe(8);
    expect(inPlace.filesReused).toBeGreaterThan(1600);
    const entries: TreeEntry[] = [];
    for await (const e of readTree(a, (await a.loadIndex()).index, inPlace.tree)) entries.push(e);
    expect(entries.find((e) => e.path.toString() === 'links/rel')?.target?.toString()).toBe('elsewhere.txt');
    expect(entries.find((e) => e.path.toString() === 'd7/f1.txt')?.xattrs?.map(([n]) => n)).toEqual(['user.size']);
    expect(entries.find((e) => e.path.toString() === 'd3/f5.txt')?.xattrs?.map(([n]) => n)).toEqual(['user.colour']);
    expect(entries.some((e) => e.path.toString().startsWith('d11'))).toBe(false);
  });
});
