import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { isCairnError } from '../../../shared/errors.js';
import { ExcludeMatcher, readExcludeFile } from './exclude.js';

const ex = (patterns: string[], path: string | Buffer, isDir = false): boolean =>
  ExcludeMatcher.compile(patterns).excludes(typeof path === 'string' ? Buffer.from(path) : path, isDir);

describe('exclude patterns', () => {
  it('matches a name without a slash at any depth', () => {
    expect(ex(['*.tmp'], 'a.tmp')).toBe(true);
    expect(ex(['*.tmp'], 'x/y/a.tmp')).toBe(true);
    expect(ex(['*.tmp'], 'x/a.tmp/y')).toBe(false); // the entry below is not matched; its folder is, when walked
    expect(ex(['*.tmp'], 'a.tmpx')).toBe(false);
    expect(ex(['?.c'], 'a.c')).toBe(true);
    expect(ex(['?.c'], 'ab.c')).toBe(false);
    expect(ex(['[ab].c'], 'b.c')).toBe(true);
    expect(ex(['[!ab].c'], 'b.c')).toBe(false);
  });

  it('anchors patterns with a slash at the root, and keeps `*` within one name', () => {
    expect(ex(['/build'], 'build', true)).toBe(true);
    expect(ex(['/build'], 'src/build', true)).toBe(false);
    expect(ex(['docs/*.pdf'], 'docs/a.pdf')).toBe(true);
    expect(ex(['docs/*.pdf'], 'docs/x/a.pdf')).toBe(false);
    expect(ex(['docs/*.pdf'], 'x/docs/a.pdf')).toBe(false);
  });

  it('matches directories only with a trailing slash', () => {
    expect(ex(['cache/'], 'cache', true)).toBe(true);
    expect(ex(['cache/'], 'a/b/cache', true)).toBe(true);
    expect(ex(['cache/'], 'cache', false)).toBe(false);
  });

  it('understands ** and negation (the last match wins)', () => {
    expect(ex(['**/node_modules'], 'node_modules', true)).toBe(true);
    expect(ex(['**/node_modules'], 'a/b/node_modules', true)).toBe(true);
    expect(ex(['logs/**'], 'logs/a/b')).toBe(true);
    expect(ex(['logs/**'], 'logs', true)).toBe(false);
    expect(ex(['a/**/b'], 'a/b')).toBe(true);
    expect(ex(['a/**/b'], 'a/x/y/b')).toBe(true);
    expect(ex(['a/**/b'], 'a/x/y/c')).toBe(false);
    expect(ex(['*.log', '!keep.log'], 'keep.log')).toBe(false);
    expect(ex(['*.log', '!keep.log'], 'other.log')).toBe(true);
    expect(ex(['*.log', '!keep.log', 'keep.*'], 'keep.log')).toBe(true);
  });

  it('compares raw bytes: UTF-8 patterns, names that are not UTF-8, escapes', () => {
    expect(ex(['ünï*'], 'x/ünïcode')).toBe(true);
    expect(ex(['*.bin'], Buffer.from([0x61, 0xff, 0x2e, 0x62, 0x69, 0x6e]))).toBe(true);
    expect(ex(['\\*star'], '*star')).toBe(true);
    expect(ex(['\\*star'], 'xstar')).toBe(false);
    expect(ex(['a.b'], 'axb')).toBe(false);
  });

  it('refuses patterns that cannot be compiled', () => {
    for (const p of ['[abc', '/', '!']) {
      let err: unknown;
      try {
        ExcludeMatcher.compile([p]);
      } catch (e) {
        err = e;
      }
      expect(isCairnError(err, 'USAGE'), p).toBe(true);
    }
  });

  it('reads pattern files: comments and blank lines skipped', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cairn-exclude-'));
    try {
      await writeFile(join(dir, 'x'), '# comment\n*.tmp\n\n  \ncache/\r\n/abs  \n');
      expect(await readExcludeFile(join(dir, 'x'))).toEqual(['*.tmp', 'cache/', '/abs']);
      await expect(readExcludeFile(join(dir, 'missing'))).rejects.toMatchObject({ code: 'NOT_FOUND' });
    } finally {
      await rm(dir, { recursive: true });
    }
  });
});
