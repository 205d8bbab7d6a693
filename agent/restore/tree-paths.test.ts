import { describe, expect, it } from 'vitest';
import { isCairnError } from '../../shared/errors.js';
import { baseName, isAncestor, isAtOrBelow, normalizeTreePath, parentPath, pathNotFound, showPath } from './tree-paths.js';

const b = (s: string, enc: BufferEncoding = 'utf8') => Buffer.from(s, enc);

describe('tree paths', () => {
  it('normalizes what a user types', () => {
    expect(normalizeTreePath('/etc//ssh/', 'p').toString()).toBe('etc/ssh');
    expect(normalizeTreePath('./a/./b', 'p').toString()).toBe('a/b');
    expect(normalizeTreePath('/', 'p').length).toBe(0);
    expect(normalizeTreePath('', 'p').length).toBe(0);
    expect(() => normalizeTreePath('a/../b', '--path')).toThrow(/--path 'a\/\.\.\/b' contains '\.\.'/);
  });

  it('knows what is at or below a folder, bytewise', () => {
    expect(isAtOrBelow(b('a/b'), b('a'))).toBe(true);
    expect(isAtOrBelow(b('a'), b('a'))).toBe(true);
    expect(isAtOrBelow(b('ab'), b('a'))).toBe(false);
    expect(isAtOrBelow(b('a-b/c'), b('a'))).toBe(false);
    expect(isAtOrBelow(b('x'), b(''))).toBe(true);
    expect(isAncestor(b(''), b('x'))).toBe(true);
    expect(isAncestor(b('a'), b('a'))).toBe(false);
    expect(isAncestor(b('a'), b('a/b/c'))).toBe(true);
    expect(parentPath(b('a/b/c'))!.toString()).toBe('a/b');
    expect(parentPath(b('a'))!.length).toBe(0);
    expect(parentPath(b(''))).toBeUndefined();
    expect(baseName(b('a/b/c')).toString()).toBe('c');
  });

  it('shows raw names safely: invalid UTF-8, controls and backslashes escaped, valid UTF-8 kept', () => {
    expect(showPath(b('plain/name.txt'))).toBe('plain/name.txt');
    expect(showPath(b('caf\xe9', 'latin1'))).toBe('caf\\xe9');
    expect(showPath(b('café'))).toBe('café');
    expect(showPath(b('new\nline\ttab'))).toBe('new\\nline\\ttab');
    expect(showPath(b('back\\slash'))).toBe('back\\\\slash');
    expect(showPath(b('esc\x1b[0m'))).toBe('esc\\x1b[0m');
    // Overlong encoding, lone surrogate, truncated sequence, C1 control.
    expect(showPath(Buffer.from([0xc0, 0xaf]))).toBe('\\xc0\\xaf');
    expect(showPath(Buffer.from([0xed, 0xa0, 0x80]))).toBe('\\xed\\xa0\\x80');
    expect(showPath(Buffer.from([0x61, 0xe2, 0x82]))).toBe('a\\xe2\\x82');
    expect(showPath(Buffer.from([0xc2, 0x9b]))).toBe('\\xc2\\x9b');
    expect(showPath(b('😀'))).toBe('😀');
    // Different names never show alike.
    expect(showPath(b('\\xe9'))).not.toBe(showPath(b('\xe9', 'latin1')));
  });

  it('says NOT_FOUND with the nearest existing parent', () => {
    const e = pathNotFound('files-1', b('a/b/c'), b('a'));
    expect(isCairnError(e, 'NOT_FOUND')).toBe(true);
    expect(e.message).toBe("backup files-1 has no 'a/b/c'; the nearest existing parent is 'a' (see 'cairn ls files-1 a')");
    expect(pathNotFound('x', b('q'), b('')).message).toContain('the backup root');
  });
});
