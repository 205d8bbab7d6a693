import { readFile } from 'node:fs/promises';
import { CairnError } from '../../../shared/errors.js';

/**
 * Exclude patterns, gitignore-like, matched against paths relative to the backup's root (raw
 * bytes; a pattern's UTF-8 bytes match a name's bytes):
 * - `*.tmp`      no slash: the name at any depth (`*` and `?` never match '/', `[...]` a byte class);
 * - `cache/`     a trailing slash: directories only;
 * - `/build`     a leading slash, or a slash inside (`docs/*.pdf`): anchored at the root;
 * - `**`         any number of directories: `**\/node_modules`, `logs/**`, `a/**\/b`;
 * - `!pattern`   includes again what an earlier pattern excluded (the last matching pattern decides);
 * - `\` escapes the next character; blank lines and lines starting with `#` (in a file) are ignored.
 * An excluded directory is not entered, so nothing below it can be included again.
 */
export class ExcludeMatcher {
  private constructor(private readonly rules: Rule[]) {}

  static readonly none = new ExcludeMatcher([]);

  /** Compiles patterns; USAGE naming the pattern when one cannot be compiled. */
  static compile(patterns: readonly string[]): ExcludeMatcher {
    return new ExcludeMatcher(patterns.flatMap((p) => (p === '' ? [] : [compileRule(p)])));
  }

  get empty(): boolean {
    return this.rules.length === 0;
  }

  /** Whether the entry at `path` (relative, '/'-separated, no leading slash) is excluded. */
  excludes(path: Buffer, isDir: boolean): boolean {
    if (this.rules.length === 0) return false;
    const text = path.toString('latin1');
    let excluded = false;
    for (const r of this.rules) {
      if (r.dirOnly && !isDir) continue;
      if (r.negate === !excluded) continue; // cannot change the outcome
      if (r.regex.test(text)) excluded = !r.negate;
    }
    return excluded;
  }
}

interface Rule {
  regex: RegExp;
  negate: boolean;
  dirOnly: boolean;
}

/** Reads patterns from a file, one a line (`#` comments, blank lines ignored); NOT_FOUND/USAGE naming the file. */
export async function readExcludeFile(path: string): Promise<string[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new CairnError(code === 'ENOENT' ? 'NOT_FOUND' : 'USAGE', `--exclude-file ${path} cannot be read (${code ?? (err as Error).message})`);
  }
  return text
    .split('\n')
    .map((l) => l.replace(/\r$/, ''))
    .filter((l) => l.trim() !== '' && !l.startsWith('#'))
    .map((l) => l.replace(/(?<!\\)\s+$/, ''));
}

function compileRule(pattern: string): Rule {
  let p = pattern;
  let negate = false;
  if (p.startsWith('!')) {
    negate = true;
    p = p.slice(1);
  } else if (p.startsWith('\\!') || p.startsWith('\\#')) {
    p = p.slice(1);
  }
  let dirOnly = false;
  if (p.endsWith('/') && !p.endsWith('\\/')) {
    dirOnly = true;
    p = p.replace(/\/+$/, '');
  }
  const anchored = p.includes('/');
  p = p.replace(/^\/+/, '');
  if (p === '') throw new CairnError('USAGE', `exclude pattern '${pattern}' matches nothing; give a name or glob such as '*.tmp' or 'cache/'`);
  // Work on the UTF-8 bytes of the pattern, as latin1 characters, so it compares with raw names byte for byte.
  const src = Buffer.from(p, 'utf8').toString('latin1');
  let re = '';
  for (let i = 0; i < src.length; i++) {
    const c = src[i];
    if (c === '\\') {
      i++;
      if (i < src.length) re += escapeRegex(src[i]);
    } else if (c === '*') {
      if (src[i + 1] === '*') {
        const atStart = i === 0 || src[i - 1] === '/';
        const atEnd = i + 2 === src.length || src[i + 2] === '/';
        if (atStart && atEnd) {
          i += 2;
          if (i >= src.length) re += '.*'; // trailing `**`: everything below
          else re += '(?:[^/]*/)*'; // `**/`: zero or more directories (skips the slash)
          continue;
        }
        i++;
        re += '[^/]*';
      } else re += '[^/]*';
    } else if (c === '?') re += '[^/]';
    else if (c === '[') {
      const end = src.indexOf(']', i + 2);
      if (end < 0) throw new CairnError('USAGE', `exclude pattern '${pattern}' has '[' without a closing ']'`);
      let body = src.slice(i + 1, end);
      if (body.startsWith('!')) body = '^' + body.slice(1);
      re += '[' + body.replace(/\\/g, '\\\\') + ']';
      i = end;
    } else re += escapeRegex(c);
  }
  const prefix = anchored ? '^' : '(?:^|/)';
  try {
    return { regex: new RegExp(`${prefix}${re}$`, 's'), negate, dirOnly };
  } catch (err) {
    throw new CairnError('USAGE', `exclude pattern '${pattern}' is not valid: ${(err as Error).message}`);
  }
}

function escapeRegex(c: string): string {
  return /[.*+?^${}()|[\]\\/]/.test(c) ? `\\${c}` : c;
}
