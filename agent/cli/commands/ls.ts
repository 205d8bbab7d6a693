import { CairnError } from '../../../shared/errors.js';
import type { Manifest } from '../../../shared/vault/manifest.js';
import { readTree, type TreeEntry } from '../../../shared/vault/tree.js';
import type { Vault } from '../../../shared/vault/vault.js';
import { devNumbers } from '../../restore/file-metadata.js';
import { baseName, isAncestor, normalizeTreePath, pathNotFound, showPath } from '../../restore/tree-paths.js';
import { parse, vaultOptions } from '../args.js';
import { openVault } from '../context.js';
import { table } from '../format.js';

export const lsHelp = `Usage:
  cairn ls <id|name> --vault <vault> [PATH] [-l] [--json]

Lists what a file-system backup holds in the folder PATH (default: the backup's root), without
restoring anything; a file's PATH lists that one entry. Names that are not valid UTF-8, or hold
control characters, are shown with escapes: \\xNN for such a byte, \\\\ for a backslash.
  -l       long listing: mode, owner (uid gid), size, modification time, name, and
           '-> TARGET' for a symlink or '=> PATH' for a hard link (the path holding its data)
  --json   an array of {name, path, type, size, mode (octal text, e.g. "0755"), uid, gid,
           mtime (ISO 8601 UTC with nanoseconds), target, link, warning}; target, link and warning
           only when set. type is dir, file, symlink, hardlink, fifo, socket, chardev or blockdev`;

export async function lsCommand(argv: string[], out: (s: string) => void): Promise<number> {
  const { values, positionals } = parse('ls', argv, { ...vaultOptions, long: { type: 'boolean', short: 'l' } });
  if (values.help) return (out(lsHelp), 0);
  if (positionals.length < 1 || positionals.length > 2) {
    throw new CairnError('USAGE', `ls: give a backup id or name and at most one path; see 'cairn ls --help'`);
  }
  const dir = normalizeTreePath(positionals[1] ?? '', 'ls: path');
  const vault = await openVault(values, 'ls');
  const m = await vault.findBackup(positionals[0]);
  const entries = await listTree(vault, m, dir);
  if (values.json) {
    out(JSON.stringify(entries.map(entryJson)));
    return 0;
  }
  if (!values.long) {
    for (const e of entries) out(showPath(baseName(e.path)) + (e.type === 'dir' ? '/' : ''));
    return 0;
  }
  const rows = entries.map((e) => [
    modeString(e),
    String(e.uid),
    String(e.gid),
    String(e.type === 'file' || e.type === 'hardlink' ? e.size : e.type === 'chardev' || e.type === 'blockdev' ? devText(e.rdev ?? 0) : 0),
    isoNs(e.mtimeNs).replace('T', ' ').replace(/\.\d+Z$/, ''),
    showPath(baseName(e.path)) +
      (e.type === 'symlink' ? ` -> ${showPath(e.target ?? Buffer.alloc(0))}` : '') +
      (e.type === 'hardlink' && e.link ? ` => ${showPath(e.link)}` : '') +
      (e.warning ? `  (${e.warning})` : ''),
  ]);
  // The table pads every column; numbers read better right-aligned, so pad them here.
  for (const col of [1, 2, 3]) {
    const w = Math.max(0, ...rows.map((r) => r[col].length));
    for (const r of rows) r[col] = r[col].padStart(w);
  }
  const text = table(['', '', '', '', '', ''], rows).split('\n').slice(1).join('\n');
  if (text) out(text);
  return 0;
}

/**
 * The entries directly in the folder `dir` of the backup's tree (the entry itself when `dir` is not
 * a folder), in path order. NOT_FOUND naming the nearest existing parent when the tree lacks `dir`.
 */
export async function listTree(vault: Vault, m: Manifest, dir: Buffer): Promise<TreeEntry[]> {
  if (m.type !== 'filesystem' || !m.tree) {
    throw new CairnError('USAGE', `ls: backup ${m.name} is a disk backup; 'cairn ls' lists file-system backups (see 'cairn backups show ${m.name}')`);
  }
  let self: TreeEntry | undefined;
  let nearest: Buffer = Buffer.alloc(0);
  const children: TreeEntry[] = [];
  // Everything below `dir` sorts together, right after `dir/`: stop once past it.
  const prefix = dir.length ? Buffer.concat([dir, Buffer.from('/')]) : Buffer.alloc(0);
  const { index } = await vault.loadIndex({ includeCondemned: true });
  for await (const e of readTree(vault, index, m.tree)) {
    if (e.path.equals(dir)) self = e;
    else if (isAncestor(dir, e.path)) {
      if (e.path.indexOf(0x2f, prefix.length) < 0) children.push(e);
    } else if (isAncestor(e.path, dir)) nearest = e.path;
    else if (self && e.path.compare(prefix, 0, prefix.length, 0, Math.min(prefix.length, e.path.length)) > 0) break;
  }
  if (!self) throw pathNotFound(m.name, dir, nearest);
  return self.type === 'dir' ? children : [self];
}

function entryJson(e: TreeEntry): Record<string, unknown> {
  return {
    name: showPath(baseName(e.path)),
    path: showPath(e.path),
    type: e.type,
    size: e.size,
    mode: '0' + (e.mode & 0o7777).toString(8).padStart(3, '0'),
    uid: e.uid,
    gid: e.gid,
    mtime: isoNs(e.mtimeNs),
    ...(e.target ? { target: showPath(e.target) } : {}),
    ...(e.link ? { link: showPath(e.link) } : {}),
    ...(e.rdev !== undefined && (e.type === 'chardev' || e.type === 'blockdev') ? { rdev: e.rdev } : {}),
    ...(e.warning ? { warning: e.warning } : {}),
  };
}

/** Nanoseconds since the epoch as ISO 8601 UTC with nine fractional digits. */
export function isoNs(ns: bigint): string {
  let s = ns / 1_000_000_000n;
  let frac = ns - s * 1_000_000_000n;
  if (frac < 0n) {
    s -= 1n;
    frac += 1_000_000_000n;
  }
  return new Date(Number(s) * 1000).toISOString().replace(/\.\d+Z$/, `.${frac.toString().padStart(9, '0')}Z`);
}

const typeChar: Record<TreeEntry['type'], string> = {
  dir: 'd',
  file: '-',
  hardlink: '-',
  symlink: 'l',
  fifo: 'p',
  socket: 's',
  chardev: 'c',
  blockdev: 'b',
};

/** ls -l's mode column: type, then rwx for owner, group and others with setuid/setgid/sticky as s/S and t/T. */
export function modeString(e: Pick<TreeEntry, 'type' | 'mode'>): string {
  const m = e.mode;
  const bit = (mask: number, c: string) => (m & mask ? c : '-');
  const special = (x: number, flag: number, on: string) => (m & flag ? (m & x ? on : on.toUpperCase()) : m & x ? 'x' : '-');
  return (
    typeChar[e.type] +
    bit(0o400, 'r') + bit(0o200, 'w') + special(0o100, 0o4000, 's') +
    bit(0o040, 'r') + bit(0o020, 'w') + special(0o010, 0o2000, 's') +
    bit(0o004, 'r') + bit(0o002, 'w') + special(0o001, 0o1000, 't')
  );
}

function devText(rdev: number): string {
  return devNumbers(rdev).join(', ');
}
