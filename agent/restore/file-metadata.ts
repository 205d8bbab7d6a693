import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { lutimes, rename, unlink } from 'node:fs/promises';
import { arch } from 'node:os';
import { join } from 'node:path';
import { CairnError } from '../../shared/errors.js';
import { showPath } from './tree-paths.js';

/**
 * The parts of a restore that Node's fs cannot do itself, done with the system's tools in batches
 * (one process for many paths, never one per file):
 * - extended attributes: `setfattr --restore=-` (Debian/Ubuntu package `attr`), fed getfattr's dump format;
 * - nanosecond times: Node's utimes keeps microseconds only, so times go through utimensat(2)
 *   called from `perl` (part of every Debian/Ubuntu base system); without perl, or on a CPU whose
 *   syscall number we do not know, Node's lutimes sets them to the microsecond and one warning says so;
 * - fifos and device nodes: `mkfifo` / `mknod`, made under an ASCII name in the restore folder and
 *   renamed into place, since a child's arguments cannot carry names that are not UTF-8.
 * Paths are absolute, raw bytes.
 */

export interface Xattrs {
  path: Buffer;
  xattrs: [string, Buffer][];
}

/** Namespaces restored: user.* always; trusted.* and security.* only as root (the kernel refuses them otherwise). */
function xattrAllowed(name: string, root: boolean): 'ok' | 'needs-root' | 'namespace' {
  if (name.startsWith('user.')) return 'ok';
  if (name.startsWith('trusted.') || name.startsWith('security.')) return root ? 'ok' : 'needs-root';
  return 'namespace';
}

/** getfattr's escape for names: every byte that is not printable ASCII, and '\' and '=', as \ooo. */
function dumpQuote(raw: Buffer): string {
  let out = '';
  for (const b of raw) {
    out += b <= 0x20 || b >= 0x7f || b === 0x5c || b === 0x3d ? `\\${b.toString(8).padStart(3, '0')}` : String.fromCharCode(b);
  }
  return out;
}

/**
 * Sets the extended attributes of many paths with one `setfattr` (symlinks themselves, not their
 * targets). Returns warnings: attributes skipped (namespace, not root) and paths setfattr refused.
 */
export async function restoreXattrs(items: Xattrs[], root: boolean): Promise<string[]> {
  const warnings: string[] = [];
  const skipped = { 'needs-root': new Set<string>(), namespace: new Set<string>() };
  const lines: string[] = [];
  for (const it of items) {
    const keep: string[] = [];
    for (const [name, value] of it.xattrs) {
      const ok = xattrAllowed(name, root);
      if (ok !== 'ok') {
        skipped[ok].add(name);
        continue;
      }
      keep.push(`${dumpQuote(Buffer.from(name))}=${value.length ? `0s${value.toString('base64')}` : '""'}`);
    }
    if (keep.length) lines.push(`# file: ${dumpQuote(it.path)}`, ...keep, '');
  }
  if (skipped['needs-root'].size) {
    warnings.push(`extended attributes ${[...skipped['needs-root']].sort().join(', ')} not restored: trusted.* and security.* need root`);
  }
  if (skipped.namespace.size) {
    warnings.push(`extended attributes ${[...skipped.namespace].sort().join(', ')} not restored: only user.*, trusted.* and security.* are`);
  }
  if (lines.length === 0) return warnings;
  let r;
  try {
    r = await run('setfattr', ['-h', '--restore=-'], Buffer.from(lines.join('\n') + '\n'), '');
  } catch (err) {
    // Found only after the data is restored: say so rather than fail the whole restore.
    warnings.push(`extended attributes not restored: ${(err as Error).message}; install the attr package (setfattr) and restore again with --force`);
    return warnings;
  }
  for (const line of r.stderr.toString('utf8').split('\n')) if (line.trim()) warnings.push(`extended attributes: ${line.trim()}`);
  return warnings;
}

export interface Times {
  path: Buffer;
  atimeNs: bigint;
  mtimeNs: bigint;
}

/** utimensat(2) syscall numbers by Node's arch() name. */
const UTIMENSAT: Record<string, number> = { x64: 280, arm64: 88, riscv64: 88, loong64: 88, ia32: 320, arm: 348, ppc64: 304, s390x: 271 };
const AT_SYMLINK_NOFOLLOW = 0x100;

// One record per line: "asec ansec msec mnsec path\0"; prints "error\tpath\0" for each path it could not set.
const PERL_UTIMENSAT = `
binmode STDIN; binmode STDOUT; $/ = "\\0"; my $nr = shift(@ARGV) + 0;
while (defined(my $r = <STDIN>)) {
  chop $r; my ($as, $an, $ms, $mn, $p) = split / /, $r, 5;
  if (syscall($nr, -100, $p, pack("q4", $as, $an, $ms, $mn), ${AT_SYMLINK_NOFOLLOW}) != 0) { print "$!\\t$p\\0"; }
}`;

function split(ns: bigint): [bigint, bigint] {
  let s = ns / 1_000_000_000n;
  let n = ns - s * 1_000_000_000n;
  if (n < 0n) {
    s -= 1n;
    n += 1_000_000_000n;
  }
  return [s, n];
}

/**
 * Sets atime and mtime of each path (of a symlink itself, never its target) to the nanosecond, in
 * the order given: a caller lists directories after their contents. Returns warnings.
 */
export async function restoreTimes(items: Times[]): Promise<string[]> {
  if (items.length === 0) return [];
  const nr = process.platform === 'linux' ? UTIMENSAT[arch()] : undefined;
  if (nr !== undefined) {
    const parts: Buffer[] = [];
    for (const it of items) {
      const [as, an] = split(it.atimeNs);
      const [ms, mn] = split(it.mtimeNs);
      parts.push(Buffer.from(`${as} ${an} ${ms} ${mn} `), it.path, Buffer.from([0]));
    }
    let r: { stdout: Buffer; stderr: Buffer } | undefined;
    try {
      r = await run('perl', ['-e', PERL_UTIMENSAT, String(nr)], Buffer.concat(parts), '');
    } catch {
      // No perl, or it failed as a whole: Node's microseconds below.
    }
    if (r) {
      const warnings: string[] = [];
      for (const rec of splitNul(r.stdout)) {
        const tab = rec.indexOf(0x09);
        warnings.push(`times of ${showPath(rec.subarray(tab + 1))} not restored: ${rec.subarray(0, tab).toString('utf8')}`);
      }
      return warnings;
    }
  }
  // Microseconds: Node rounds toward zero to the microsecond; half a microsecond more lands exactly on it.
  const seconds = (ns: bigint) => {
    const [s, n] = split(ns);
    return Number(s) + (Number(n / 1000n) + 0.5) / 1e6;
  };
  const warnings = ['times restored to the microsecond: perl is not installed (or this CPU is unknown), so nanoseconds were dropped'];
  for (const it of items) {
    try {
      await lutimes(it.path, seconds(it.atimeNs), seconds(it.mtimeNs));
    } catch (err) {
      warnings.push(`times of ${showPath(it.path)} not restored: ${(err as Error).message}`);
    }
  }
  return warnings;
}

function splitNul(buf: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  for (let nul = buf.indexOf(0); nul >= 0; nul = buf.indexOf(0, at)) {
    out.push(buf.subarray(at, nul));
    at = nul + 1;
  }
  return out;
}

/** Linux dev_t -> major, minor (glibc's encoding). */
export function devNumbers(rdev: number): [number, number] {
  const hi = Math.floor(rdev / 2 ** 32);
  const lo = rdev % 2 ** 32;
  const major = ((lo >>> 8) & 0xfff) | ((hi & ~0xfff) >>> 0);
  const minor = (lo & 0xff) | ((lo >>> 12) & ~0xff);
  return [major >>> 0, minor >>> 0];
}

/**
 * Makes a fifo or a device node at `path` (raw bytes, absolute): made as `<scratch>/.cairn-node-<random>`
 * (scratch: an ASCII folder on the same file system) and renamed into place.
 */
export async function makeNode(scratch: string, path: Buffer, type: 'fifo' | 'chardev' | 'blockdev', rdev = 0): Promise<void> {
  const tmp = join(scratch, `.cairn-node-${randomBytes(6).toString('hex')}`);
  const args =
    type === 'fifo'
      ? ['mkfifo', ['-m', '600', '--', tmp]]
      : ['mknod', ['-m', '600', '--', tmp, type === 'chardev' ? 'c' : 'b', ...devNumbers(rdev).map(String)]];
  await run(args[0] as string, args[1] as string[], Buffer.alloc(0), 'install coreutils');
  try {
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
}

/** Runs a tool with `input` on stdin; NOT_FOUND when it is not installed, INTERNAL when it fails (for mkfifo/mknod). */
function run(cmd: string, args: string[], input: Buffer, install: string): Promise<{ stdout: Buffer; stderr: Buffer }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.stdin.on('error', () => undefined);
    child.on('error', (e: NodeJS.ErrnoException) => {
      reject(
        e.code === 'ENOENT'
          ? new CairnError('NOT_FOUND', `${cmd} is not installed${install ? `; ${install}` : ''}`)
          : new CairnError('INTERNAL', `${cmd} could not be started: ${e.message}`, { cause: e }),
      );
    });
    child.on('close', (code) => {
      const stdout = Buffer.concat(out);
      const stderr = Buffer.concat(err);
      // setfattr reports per path and goes on; the others must succeed.
      if (code !== 0 && cmd !== 'setfattr') {
        reject(new CairnError('TARGET_UNWRITABLE', `${cmd} ${args.join(' ')} failed: ${stderr.toString('utf8').trim() || `exit ${code}`}`));
      } else resolve({ stdout, stderr });
    });
    child.stdin.end(input);
  });
}
