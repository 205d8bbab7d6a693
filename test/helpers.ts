import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import { errorCatalogue, type ErrorCode } from '../shared/errors.js';

/**
 * Helpers for the integration tests under test/: they run the real `cairn` CLI (bin/cairn.js, which
 * runs the compiled dist/) as a child process against real folders, so `npm run build` must have run.
 */

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const cliPath = join(repoRoot, 'bin', 'cairn.js');
export const KiB = 1024;
export const MiB = 1024 * 1024;
export const PASSPHRASE = 'correct horse battery staple';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** Variables to set; a value of undefined removes the variable. */
  env?: Record<string, string | undefined>;
  cwd?: string;
}

/** Runs `node bin/cairn.js ...args` and captures its output and exit code (signals count as failures). */
export function runCli(args: string[], opts: RunOptions = {}): Promise<CliResult> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    // The tests decide every Cairn setting themselves; CAIRN_DEBUG would add stack traces.
    if (v !== undefined && !k.startsWith('CAIRN_') && !k.startsWith('XDG_')) env[k] = v;
  }
  for (const [k, v] of Object.entries(opts.env ?? {})) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [cliPath, ...args], { cwd: opts.cwd ?? repoRoot, env, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      resolvePromise({
        code: code ?? (signal ? 128 : -1),
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8') + (signal ? `\n[killed by ${signal}]` : ''),
      });
    });
  });
}

/**
 * A private temp folder for one test (under os.tmpdir()) with its own CAIRN_STATE_DIR, and a `cairn`
 * runner that uses it and the test passphrase. `cleanup` removes everything.
 */
export class Sandbox {
  private constructor(readonly dir: string) {}

  static async create(label: string): Promise<Sandbox> {
    const dir = await mkdtemp(join(tmpdir(), `cairn-it-${label}-`));
    await mkdir(join(dir, 'state'));
    return new Sandbox(dir);
  }

  path(...parts: string[]): string {
    return join(this.dir, ...parts);
  }

  get stateDir(): string {
    return join(this.dir, 'state');
  }

  cairn(args: string[], opts: RunOptions = {}): Promise<CliResult> {
    return runCli(args, {
      cwd: opts.cwd ?? this.dir,
      env: { CAIRN_PASSPHRASE: PASSPHRASE, CAIRN_STATE_DIR: this.stateDir, ...opts.env },
    });
  }

  /** Runs cairn, expects exit code 0 and returns the parsed JSON of stdout (pass --json yourself). */
  async cairnJson<T = Record<string, unknown>>(args: string[], opts: RunOptions = {}): Promise<T> {
    const r = await this.cairn(args, opts);
    expectOk(r, args);
    try {
      return JSON.parse(r.stdout) as T;
    } catch {
      throw new Error(`cairn ${args.join(' ')} printed no JSON on stdout: ${JSON.stringify(r.stdout)}`);
    }
  }

  /** Creates a vault in `dir` (relative to the sandbox unless absolute) and returns its absolute path. */
  async initVault(dir: string, extra: string[] = []): Promise<string> {
    const vault = resolve(this.dir, dir);
    expectOk(await this.cairn(['vault', 'init', vault, ...extra]), ['vault', 'init', vault, ...extra]);
    return vault;
  }

  async cleanup(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true });
  }
}

export function expectOk(r: CliResult, args: string[] = []): void {
  if (r.code !== 0) {
    throw new Error(`cairn ${args.join(' ')} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  }
}

export function exitCode(code: ErrorCode): number {
  return errorCatalogue[code].exit;
}

/**
 * Asserts a failed command: the exit code of `code`, exactly one line on stderr starting with
 * `cairn: error:` that contains every fragment, and no stack trace.
 */
export function expectCliError(r: CliResult, code: ErrorCode, ...fragments: (string | RegExp)[]): void {
  const context = `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
  expect(r.code, context).toBe(exitCode(code));
  expect(r.stderr, context).toMatch(/^cairn: error: [^\n]+\n$/);
  expect(r.stderr, context).not.toContain('    at ');
  expect(r.stdout, context).not.toContain('    at ');
  for (const f of fragments) {
    if (typeof f === 'string') expect(r.stderr, context).toContain(f);
    else expect(r.stderr, context).toMatch(f);
  }
}

// ---- images --------------------------------------------------------------------------------

/**
 * A region of a generated image: `random` (incompressible), `text` (compressible log lines),
 * `zero` (zeros actually written, so allocated on disk) or `hole` (never written: sparse).
 */
export type RegionKind = 'random' | 'text' | 'zero' | 'hole';
export interface Region {
  kind: RegionKind;
  length: number;
}

const textLine = 'Nov 25 10:00:00 host cairn-it[4242]: a compressible log line with some words in it\n';

/** Bytes for `kind` (a hole has none). */
function regionBytes(kind: RegionKind, length: number, salt: string): Buffer {
  if (kind === 'random') return randomBytes(length);
  if (kind === 'zero') return Buffer.alloc(length);
  return Buffer.alloc(length, `${salt} ${textLine}`);
}

/** Writes a new image laid out as `regions` in order; returns its size. Holes are never written. */
export async function makeImage(path: string, regions: Region[]): Promise<number> {
  const size = regions.reduce((s, r) => s + r.length, 0);
  const fh = await open(path, 'wx');
  try {
    await fh.truncate(size);
    let at = 0;
    for (const [i, r] of regions.entries()) {
      if (r.kind !== 'hole') {
        for (let done = 0; done < r.length; done += 4 * MiB) {
          const n = Math.min(4 * MiB, r.length - done);
          await writeFully(fh, regionBytes(r.kind, n, `region-${i}`), at + done);
        }
      }
      at += r.length;
    }
  } finally {
    await fh.close();
  }
  return size;
}

/** Writes `data` at `offset` of an existing file (the file grows if needed). */
export async function writeAt(path: string, offset: number, data: Buffer): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await writeFully(fh, data, offset);
  } finally {
    await fh.close();
  }
}

async function writeFully(fh: Awaited<ReturnType<typeof open>>, data: Buffer, position: number): Promise<void> {
  for (let done = 0; done < data.length; ) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

/** Inverts every bit of the byte at `offset`; returns the byte's old value. */
export async function flipByte(path: string, offset: number): Promise<number> {
  const fh = await open(path, 'r+');
  try {
    const b = Buffer.alloc(1);
    const { bytesRead } = await fh.read(b, 0, 1, offset);
    if (bytesRead !== 1) throw new Error(`flipByte: ${path} has no byte at ${offset}`);
    const old = b[0];
    b[0] = old ^ 0xff;
    await fh.write(b, 0, 1, offset);
    return old;
  } finally {
    await fh.close();
  }
}

export function sha256File(path: string): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    const h = createHash('sha256');
    createReadStream(path, { highWaterMark: 4 * MiB })
      .on('data', (d) => h.update(d))
      .on('end', () => resolvePromise(h.digest('hex')))
      .on('error', reject);
  });
}

/** Bytes the file system allocated to a file (st_blocks * 512). */
export async function allocatedBytes(path: string): Promise<number> {
  return (await stat(path)).blocks * 512;
}

/**
 * What a backup with this chunk size must find in the image: the bytes in chunks that are not
 * all zero (the manifest's usedBytes), and per position the sha256 of the chunk or 'zero'.
 */
export async function scanChunks(path: string, chunkSize: number): Promise<{ usedBytes: number; digests: string[] }> {
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const buf = Buffer.alloc(chunkSize);
    const zero = Buffer.alloc(chunkSize);
    const digests: string[] = [];
    let usedBytes = 0;
    for (let at = 0; at < size; at += chunkSize) {
      const n = Math.min(chunkSize, size - at);
      let got = 0;
      while (got < n) {
        const { bytesRead } = await fh.read(buf, got, n - got, at + got);
        if (bytesRead === 0) throw new Error(`scanChunks: ${path} ended early`);
        got += bytesRead;
      }
      const chunk = buf.subarray(0, n);
      if (chunk.equals(zero.subarray(0, n))) digests.push('zero');
      else {
        usedBytes += n;
        digests.push(createHash('sha256').update(chunk).digest('hex'));
      }
    }
    return { usedBytes, digests };
  } finally {
    await fh.close();
  }
}

/** Number of positions whose content differs between two scans of the same-size image. */
export function changedChunks(before: string[], after: string[]): number {
  let n = 0;
  for (let i = 0; i < Math.max(before.length, after.length); i++) if (before[i] !== after[i]) n++;
  return n;
}

// ---- vault contents ------------------------------------------------------------------------

/** Every file below `dir` (relative path, '/'-separated) with its size, including temp files. */
export async function listFiles(dir: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const walk = async (folder: string): Promise<void> => {
    for (const e of await readdir(folder, { withFileTypes: true })) {
      const p = join(folder, e.name);
      if (e.isDirectory()) await walk(p);
      else out.set(relative(dir, p).split('\\').join('/'), (await stat(p)).size);
    }
  };
  await walk(dir);
  return new Map([...out.entries()].sort(([a], [b]) => (a < b ? -1 : 1)));
}

/** Files under `<vault>/packs/` with their sizes. */
export async function packFiles(vault: string): Promise<Map<string, number>> {
  const all = await listFiles(vault);
  return new Map([...all].filter(([k]) => k.startsWith('packs/')));
}

export function sum(values: Iterable<number>): number {
  let s = 0;
  for (const v of values) s += v;
  return s;
}

/** Pack keys present in `after` but not in `before`. */
export function newKeys(before: Map<string, number>, after: Map<string, number>): string[] {
  return [...after.keys()].filter((k) => !before.has(k)).sort();
}

// ---- mounts --------------------------------------------------------------------------------

/** Runs mount/umount; throws with a message saying what the test needs when it fails. */
export function mountCommand(args: string[]): void {
  const r = spawnSync(args[0], args.slice(1), { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    throw new Error(
      `'${args.join(' ')}' failed (${r.error?.message ?? (r.stderr.trim() || `exit ${r.status}`)}): ` +
        `this test mounts tmpfs file systems and needs to run as root with CAP_SYS_ADMIN ` +
        `(e.g. a privileged container), and the mount/umount tools (util-linux)`,
    );
  }
}
