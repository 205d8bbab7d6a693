import { closeSync, fstatSync, lstatSync, mkdirSync, mkdtempSync, openSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { toEntryStat } from '../source/dir/walker.js';
import { notTheWalked, TreePlace } from './file-backup.js';

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
