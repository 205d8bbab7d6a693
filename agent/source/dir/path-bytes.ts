/**
 * Paths of a file-system backup are raw bytes (names need not be UTF-8). Tree order is the byte
 * order of the whole relative path ('/'-separated), which is not the order of a depth-first walk:
 * `a-b` (0x2d) sorts between the directory `a` and its children `a/...` (0x2f).
 */

const SLASH = 0x2f;

/** `dir/name`, or `name` under the root (empty path). */
export function joinPath(dir: Buffer, name: Buffer): Buffer {
  if (dir.length === 0) return name;
  const out = Buffer.allocUnsafe(dir.length + 1 + name.length);
  dir.copy(out, 0);
  out[dir.length] = SLASH;
  name.copy(out, dir.length + 1);
  return out;
}

/** A path for people and JSON: UTF-8 where it is valid, other bytes as `\xNN` (and `\` as `\\`). */
export function displayPath(path: Buffer): string {
  const text = path.toString('utf8');
  if (!text.includes('\ufffd') && !text.includes('\\')) return text;
  let out = '';
  for (let i = 0; i < path.length; ) {
    const len = utf8Length(path, i);
    if (len === 0) {
      out += `\\x${path[i].toString(16).padStart(2, '0')}`;
      i++;
    } else {
      const ch = path.subarray(i, i + len).toString('utf8');
      out += ch === '\\' ? '\\\\' : ch;
      i += len;
    }
  }
  return out;
}

/** Length of the valid UTF-8 sequence starting at `i`, or 0 when the byte there starts none. */
function utf8Length(b: Buffer, i: number): number {
  const c = b[i];
  if (c < 0x80) return 1;
  const len = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
  if (len === 0 || i + len > b.length) return 0;
  for (let k = 1; k < len; k++) if ((b[i + k] & 0xc0) !== 0x80) return 0;
  const s = b.subarray(i, i + len).toString('utf8');
  return s.includes('\ufffd') ? 0 : len;
}
