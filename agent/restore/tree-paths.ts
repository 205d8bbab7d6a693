import { CairnError } from '../../shared/errors.js';

/**
 * Paths inside a backup's tree (shared/vault/tree.ts): raw bytes, '/'-separated, relative to the
 * backup's root, which is the empty path. What a user types (`--path`, `cairn ls ... PATH`) is
 * normalized to that form; what Cairn prints is made safe for a terminal by showPath.
 */

const SLASH = 0x2f;

/**
 * A user's path inside a backup as a tree path: leading, trailing and repeated slashes and '.'
 * parts dropped ('/etc//ssh/' -> 'etc/ssh'; '/' and '' -> the root). '..' is refused (USAGE).
 */
export function normalizeTreePath(text: string, what: string): Buffer {
  const parts = text.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw new CairnError('USAGE', `${what} '${text}' contains '..'; give a path inside the backup such as etc/ssh`);
  return Buffer.from(parts.join('/'));
}

/** True when `path` is `dir` or below it; every path is below the root (empty) dir. */
export function isAtOrBelow(path: Buffer, dir: Buffer): boolean {
  if (dir.length === 0) return true;
  if (path.length < dir.length || path.compare(dir, 0, dir.length, 0, dir.length) !== 0) return false;
  return path.length === dir.length || path[dir.length] === SLASH;
}

/** True when `dir` is a proper ancestor of `path` (the root is an ancestor of every non-empty path). */
export function isAncestor(dir: Buffer, path: Buffer): boolean {
  return path.length > dir.length && isAtOrBelow(path, dir);
}

/** The directory part of a tree path ('a/b' -> 'a', 'a' -> ''); the root has none (undefined). */
export function parentPath(path: Buffer): Buffer | undefined {
  if (path.length === 0) return undefined;
  const slash = path.lastIndexOf(SLASH);
  return slash < 0 ? Buffer.alloc(0) : path.subarray(0, slash);
}

/** The last part of a tree path ('a/b' -> 'b'); the root's name is empty. */
export function baseName(path: Buffer): Buffer {
  const slash = path.lastIndexOf(SLASH);
  return slash < 0 ? path : path.subarray(slash + 1);
}

/**
 * Raw name bytes as text safe to print: valid UTF-8 stays as it is; backslash, control characters
 * and every byte of an invalid UTF-8 sequence become escapes (\\, \n, \t, \xNN), so two different
 * names never print alike and nothing reaches a terminal as a control sequence.
 */
export function showPath(raw: Buffer): string {
  let out = '';
  let i = 0;
  while (i < raw.length) {
    const b = raw[i];
    if (b < 0x80) {
      if (b === 0x5c) out += '\\\\';
      else if (b === 0x0a) out += '\\n';
      else if (b === 0x09) out += '\\t';
      else if (b < 0x20 || b === 0x7f) out += `\\x${hex(b)}`;
      else out += String.fromCharCode(b);
      i++;
      continue;
    }
    const n = utf8Length(raw, i);
    if (n === 0) {
      out += `\\x${hex(b)}`;
      i++;
      continue;
    }
    const ch = raw.toString('utf8', i, i + n);
    const cp = ch.codePointAt(0)!;
    // C1 controls (U+0080..U+009F) are terminal controls too.
    if (cp >= 0x80 && cp <= 0x9f) for (let k = 0; k < n; k++) out += `\\x${hex(raw[i + k])}`;
    else out += ch;
    i += n;
  }
  return out;
}

function hex(b: number): string {
  return b.toString(16).padStart(2, '0');
}

/** Length of the valid UTF-8 sequence starting at `i` (no overlongs, surrogates or > U+10FFFF), or 0. */
function utf8Length(raw: Buffer, i: number): number {
  const b = raw[i];
  let n: number;
  let min: number;
  let cp: number;
  if (b >= 0xc2 && b <= 0xdf) [n, min, cp] = [2, 0x80, b & 0x1f];
  else if (b >= 0xe0 && b <= 0xef) [n, min, cp] = [3, 0x800, b & 0x0f];
  else if (b >= 0xf0 && b <= 0xf4) [n, min, cp] = [4, 0x10000, b & 0x07];
  else return 0;
  if (i + n > raw.length) return 0;
  for (let k = 1; k < n; k++) {
    const c = raw[i + k];
    if ((c & 0xc0) !== 0x80) return 0;
    cp = (cp << 6) | (c & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

/**
 * NOT_FOUND for a path a backup lacks, naming the nearest part of it that exists, so the user can
 * look there with `cairn ls`.
 */
export function pathNotFound(backupName: string, path: Buffer, nearest: Buffer): CairnError {
  const where = nearest.length === 0 ? 'the backup root' : `'${showPath(nearest)}'`;
  return new CairnError(
    'NOT_FOUND',
    `backup ${backupName} has no '${showPath(path)}'; the nearest existing parent is ${where} ` +
      `(see 'cairn ls ${backupName}${nearest.length ? ` ${showPath(nearest)}` : ''}')`,
  );
}
