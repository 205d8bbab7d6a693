import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { describe, expect, inject } from 'vitest';
import { errorCatalogue, type ErrorCode } from '../shared/errors.js';
import type { RequestCounts } from '../shared/store/object-store.js';
import { parseS3Url } from '../shared/store/s3-url.js';
import type { S3Connection } from './support/s3-global-setup.js';

/** A disk of `cairn backup --json`. */
export interface BackupDiskJson {
  index: number;
  source: string;
  size: number;
  usedBytes: number;
  newChunks: number;
  newBytes: number;
  changeDetection: 'full' | 'compare' | 'bitmap';
  bytesRead: number;
  dirtyBytes?: number;
  changeToken?: string;
}

/** What `cairn backup --json` prints. */
export interface BackupJson {
  id: string;
  name: string;
  kind: 'full' | 'incremental';
  parent: string | null;
  vault: string;
  consistency: 'crash_consistent' | 'app_consistent';
  bytesRead: number;
  bytesStored: number;
  durationMs: number;
  changedChunks: number;
  recoveredPacks: number;
  startedAt: string;
  finishedAt: string;
  warnings: string[];
  disks: BackupDiskJson[];
  requests: RequestCounts;
}

/**
 * Helpers for the integration tests under test/: they run the real `cairn` CLI (bin/cairn.js, which
 * runs the compiled dist/) as a child process against real folders, so `npm run build` must have run.
 * The vault-core scenarios run against each VaultTarget: a local folder, and a bucket on the S3 server
 * that vitest's globalSetup starts (test/support/s3-global-setup.ts).
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

/**
 * scrypt cost of the vaults the tests make: 2^12 instead of the default 2^16, so that each CLI call
 * unlocks its vault in milliseconds rather than about 0.4 s (`vault init --kdf-log-n`, a user's
 * option too). A test that gives --kdf-log-n itself keeps its own.
 */
export const TEST_KDF_LOG_N = '12';

/**
 * Runs `node bin/cairn.js ...args` and captures its output and exit code (signals count as failures).
 * `vault init` makes a cheap key file (TEST_KDF_LOG_N) unless the test says otherwise.
 */
export function runCli(args: string[], opts: RunOptions = {}): Promise<CliResult> {
  if (args[0] === 'vault' && args[1] === 'init' && !args.includes('--kdf-log-n') && !args.includes('--help')) {
    args = [...args, '--kdf-log-n', TEST_KDF_LOG_N];
  }
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
  private constructor(
    readonly dir: string,
    /** Variables every `cairn` run of this sandbox gets (e.g. a VaultTarget's credentials). */
    readonly env: Record<string, string | undefined>,
  ) {}

  static async create(label: string, opts: { env?: Record<string, string | undefined> } = {}): Promise<Sandbox> {
    const dir = await mkdtemp(join(tmpdir(), `cairn-it-${label}-`));
    await mkdir(join(dir, 'state'));
    return new Sandbox(dir, { ...opts.env });
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
      env: { CAIRN_PASSPHRASE: PASSPHRASE, CAIRN_STATE_DIR: this.stateDir, ...this.env, ...opts.env },
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

/**
 * Calls `check` until it gives a value (a throw counts as "not yet"), and gives up after `timeoutMs`
 * with an error naming `what`, the last error seen and `context()` (say, a service's output).
 */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined>, timeoutMs: number, context: () => string = () => '', intervalMs = 200): Promise<T> {
  const until = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (err) {
      last = (err as Error).message;
    }
    if (Date.now() > until) throw new Error(`gave up waiting for ${what} after ${timeoutMs} ms${last ? ` (last error: ${last})` : ''}\n${context()}`);
    await new Promise((r) => setTimeout(r, intervalMs));
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

// ---- vault targets ------------------------------------------------------------------------

/**
 * Where a test's vault lives, so that one scenario runs against a local folder and against S3: the
 * tests create vaults, run the CLI and look at (or damage) the vault's objects only through this.
 * Object keys are relative to the vault root ('config', 'packs/ab/ab…', …) for both targets, so maps
 * of objects compare equal across targets.
 */
export interface VaultTarget {
  /** For test titles: 'local folder' or 'S3'. */
  readonly label: string;
  readonly kind: 'local' | 's3';
  /** Variables the CLI needs to reach the vault (give them to Sandbox.create). */
  readonly env: Record<string, string | undefined>;
  /** A new, empty vault location named `name` (a folder in the sandbox; a prefix in a fresh bucket). */
  location(sb: Sandbox, name: string): Promise<string>;
  /** A new location with `cairn vault init` run on it (exit 0 expected); returns the location. */
  init(sb: Sandbox, name: string, extra?: string[]): Promise<string>;
  /** The location as the CLI reports it (`vault` in backup --json): the absolute path, or s3://bucket/prefix/. */
  display(location: string): string;
  /**
   * Every object of the vault with its size, sorted by key. For a folder that includes LocalStore temp
   * files ('.tmp-…'), as listFiles does, so a comparison also catches a temp file left behind.
   */
  objects(location: string): Promise<Map<string, number>>;
  /** The objects under packs/ with their sizes. */
  packs(location: string): Promise<Map<string, number>>;
  /** Writes that never completed: LocalStore temp files, or unfinished S3 multipart uploads (as keys). */
  incomplete(location: string): Promise<string[]>;
  read(location: string, key: string): Promise<Buffer>;
  /** Replaces an object (or creates it). */
  write(location: string, key: string, data: Buffer): Promise<void>;
  remove(location: string, key: string): Promise<void>;
  /** Releases connections; call once after a file's tests (afterAll). */
  close(): Promise<void>;
}

function onlyPacks(all: Map<string, number>): Map<string, number> {
  return new Map([...all].filter(([k]) => k.startsWith('packs/')));
}

function sortedByKey(m: Map<string, number>): Map<string, number> {
  return new Map([...m.entries()].sort(([a], [b]) => (a < b ? -1 : 1)));
}

/** Vaults in folders of the sandbox; objects are files below the folder. */
export const localTarget: VaultTarget = {
  label: 'local folder',
  kind: 'local',
  env: {},
  async location(sb, name) {
    return resolve(sb.dir, name);
  },
  async init(sb, name, extra = []) {
    return sb.initVault(name, extra);
  },
  display: (location) => location,
  objects: (location) => listFiles(location),
  packs: (location) => packFiles(location),
  async incomplete(location) {
    return [...(await listFiles(location)).keys()].filter((k) => k.split('/').some((s) => s.startsWith('.tmp-')));
  },
  read: (location, key) => readFile(join(location, key)),
  write: (location, key, data) => writeFile(join(location, key), data),
  remove: (location, key) => rm(join(location, key)),
  async close() {},
};

/**
 * Vaults on the test run's S3 server (Ceph radosgw, started by test/support/s3-global-setup.ts): each
 * vault gets a fresh bucket, and lives under the prefix `name/` in it (so the prefix handling is
 * exercised too). The tests look at the bucket with their own S3 client, never through Cairn.
 */
export class S3Target implements VaultTarget {
  readonly label = 'S3';
  readonly kind = 's3' as const;
  private client?: S3Client;

  private get conn(): S3Connection {
    return inject('s3');
  }

  get env(): Record<string, string | undefined> {
    const s3 = this.conn;
    return {
      AWS_ACCESS_KEY_ID: s3.accessKeyId,
      AWS_SECRET_ACCESS_KEY: s3.secretAccessKey,
      AWS_REGION: s3.region,
      // Keep the CLI away from any shared AWS config of the machine.
      AWS_PROFILE: undefined,
      AWS_CONFIG_FILE: '/nonexistent',
      AWS_SHARED_CREDENTIALS_FILE: '/nonexistent',
    };
  }

  /** The tests' own client of the S3 server (the bucket's owner), for looking and tampering. */
  get s3(): S3Client {
    const c = this.conn;
    this.client ??= new S3Client({
      endpoint: c.endpoint,
      region: c.region,
      forcePathStyle: true,
      credentials: { accessKeyId: c.accessKeyId, secretAccessKey: c.secretAccessKey },
    });
    return this.client;
  }

  async location(_sb: Sandbox, name: string): Promise<string> {
    return this.url(await this.newBucket(), name);
  }

  /** A fresh, empty bucket (with Object Lock, which makes it versioned, when asked). */
  async newBucket(opts: { objectLock?: boolean } = {}): Promise<string> {
    const bucket = `v-${randomBytes(6).toString('hex')}`;
    await this.s3.send(new CreateBucketCommand({ Bucket: bucket, ObjectLockEnabledForBucket: opts.objectLock }));
    return bucket;
  }

  /** A vault URL for `prefix` in `bucket`, through `endpoint` (a proxy, say) or straight to the server. */
  url(bucket: string, prefix: string, endpoint = this.conn.endpoint): string {
    return `s3://${bucket}/${prefix}?endpoint=${encodeURIComponent(endpoint)}&path-style=true`;
  }

  async init(sb: Sandbox, name: string, extra: string[] = []): Promise<string> {
    const url = await this.location(sb, name);
    const args = ['vault', 'init', url, ...extra];
    expectOk(await sb.cairn(args), args);
    return url;
  }

  display(location: string): string {
    return parseS3Url(location).display;
  }

  async objects(location: string): Promise<Map<string, number>> {
    const { bucket, prefix } = parseS3Url(location);
    const out = new Map<string, number>();
    let token: string | undefined;
    do {
      const page = await this.s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
      for (const o of page.Contents ?? []) out.set(o.Key!.slice(prefix.length), o.Size ?? 0);
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return sortedByKey(out);
  }

  async packs(location: string): Promise<Map<string, number>> {
    return onlyPacks(await this.objects(location));
  }

  async incomplete(location: string): Promise<string[]> {
    const { bucket, prefix } = parseS3Url(location);
    const page = await this.s3.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: prefix }));
    return (page.Uploads ?? []).map((u) => u.Key!.slice(prefix.length));
  }

  async read(location: string, key: string): Promise<Buffer> {
    const { bucket, prefix } = parseS3Url(location);
    const res = await this.s3.send(new GetObjectCommand({ Bucket: bucket, Key: prefix + key }));
    return Buffer.from(await res.Body!.transformToByteArray());
  }

  async write(location: string, key: string, data: Buffer): Promise<void> {
    const { bucket, prefix } = parseS3Url(location);
    await this.s3.send(new PutObjectCommand({ Bucket: bucket, Key: prefix + key, Body: data, ContentLength: data.length }));
  }

  async remove(location: string, key: string): Promise<void> {
    const { bucket, prefix } = parseS3Url(location);
    await this.s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: prefix + key }));
  }

  async close(): Promise<void> {
    this.client?.destroy();
    this.client = undefined;
  }
}

export const s3Target = new S3Target();

/** The targets every vault-core scenario runs against. */
export const vaultTargets: readonly VaultTarget[] = [localTarget, s3Target];

/**
 * Declares the describe block once per vault target, titled `title (local folder)` and `title (S3)`;
 * `fn` gets the target.
 */
export function describeForTargets(title: string, fn: (target: VaultTarget) => void): void {
  for (const t of vaultTargets) describe(`${title} (${t.label})`, () => fn(t));
}

/** Inverts every bit of the byte at `offset` of a vault object (read, flip, write back); returns the old byte. */
export async function flipObjectByte(target: VaultTarget, location: string, key: string, offset: number): Promise<number> {
  const data = await target.read(location, key);
  if (offset >= data.length) throw new Error(`flipObjectByte: ${key} has no byte at ${offset}`);
  const old = data[offset];
  data[offset] = old ^ 0xff;
  await target.write(location, key, data);
  return old;
}

/** A loopback TCP port nobody listens on (bound, then released): for a test server to bind, or as an unreachable endpoint. */
export function unusedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
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

/** Runs the CLI as another user (setpriv), with only the given Cairn variables. */
export function runAs(uid: number, args: string[], env: Record<string, string>): Promise<CliResult> {
  const base: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('CAIRN_') && !k.startsWith('XDG_')) base[k] = v;
  return new Promise((resolveRun, reject) => {
    const child = spawn('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', process.execPath, cliPath, ...args], {
      env: { ...base, HOME: '/nonexistent', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', (e) => reject(new Error(`setpriv cannot run (${e.message}); install util-linux`)));
    child.on('close', (code) => resolveRun({ code: code ?? -1, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() }));
  });
}
