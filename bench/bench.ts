/**
 * Cairn against restic on the same disk image: full backup, incremental backup after a 1 % change,
 * restore; and Cairn on a qcow2 copy of the image through NBD with a dirty bitmap (the CBT section)
 * beside restic's runs on the raw image. A program, not a test: it prints a table (ours beside the peer, ratio per row) and writes
 * the same numbers as JSON. It never fails because the machine was slow; it exits non-zero only when
 * a command fails or a restore is not bit-identical to the image it came from.
 *
 * Order of work, chosen so both tools see the image in the same state and page-cache warmth:
 *   build image -> hash (warms the cache) -> cairn full, restic full -> convert to qcow2 ->
 *   cairn CBT full -> start S3 server -> cairn S3 full, restic S3 full -> modify 1 % -> hash ->
 *   the same writes into the qcow2 -> qemu-img compare -> cairn incremental, restic incremental ->
 *   cairn CBT incremental -> cairn S3 incremental, restic S3 incremental -> stop S3 server ->
 *   cairn restore, restic restore -> compare hashes.
 * The export and NBD sections run on the latest backups before the restores; the files section
 * (file-system backups of a copy of a real tree, file-bench.ts) runs last, in a directory of its own.
 *
 * Progress goes to stderr; the results (header and table) go to stdout. See bench/README.md.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { CreateBucketCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { startFaultProxy, type FaultProxy, type RequestKind } from '../test/support/fault-proxy.js';
import { s3ServerAvailable, startS3Server, type S3Server } from '../test/support/s3-server.js';
import { mbPerSecond, runExportBench, type ExportBench } from './export-bench.js';
import { readTimeFile, runFileBench, type FileBench } from './file-bench.js';
import { runNbdBench, type NbdBench } from './nbd-bench.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** Granularity of the "is this part of the image in use" map and alignment of modified blocks. */
const ALIGN = 4 * KiB;
/** Size of each modified block. */
const CHANGE_BLOCK = 64 * KiB;
/** Share of the image size that is overwritten between full and incremental backup. */
const CHANGE_FRACTION = 0.01;
const SCAN_BUFFER = 8 * MiB;
const PASSPHRASE = 'bench-pass';
const TIME_BIN = '/usr/bin/time';
const IMAGE_UUID = 'c41a0b3e-5e7d-4f1a-9c2b-6d8e0f1a2b3c';
/** 2024-01-01T00:00:00Z, the creation time written into the image's superblock. */
const IMAGE_TIME = 1704067200;

/** Directories copied into the image, in this order, until the wanted used size is reached. */
const TREE_SOURCES = ['/usr/bin', '/usr/include', '/usr/share', '/usr/lib', '/usr/sbin', '/usr/libexec', '/opt'];

/** Every name the bench creates in the work directory; cleanup removes exactly these. */
const WORK_NAMES = {
  tree: 'tree',
  image: 'image.img',
  cairnVault: 'cairn-vault',
  cairnState: 'cairn-state',
  cairnRestore: 'restore.img',
  resticRepo: 'restic-repo',
  resticCache: 'restic-cache',
  resticRestore: 'restic-restore',
  cairnS3State: 'cairn-s3-state',
  resticS3Cache: 'restic-s3-cache',
  qcow2: 'image.qcow2',
  cairnCbtVault: 'cairn-cbt-vault',
  cairnCbtState: 'cairn-cbt-state',
  cbtPatterns: 'cbt-patterns',
  time: 'gnu-time',
  files: 'files',
} as const;
const DEFAULT_JSON_NAME = 'bench.json';
/** The files section: the tree it copies unless --files-src says otherwise, and how many files it edits. */
const DEFAULT_FILES_SRC = '/usr/lib';
const FILES_EDITS = 10;

type Tool = 'cairn' | 'restic';

interface Options {
  sizeBytes: number;
  usedBytes: number;
  dir: string | undefined;
  keep: boolean;
  tools: Tool[];
  chunkSize: string | undefined;
  skipRestore: boolean;
  jsonOut: string | undefined;
  seed: number;
  skipS3: boolean;
  skipCbt: boolean;
  skipExport: boolean;
  skipNbd: boolean;
  skipFiles: boolean;
  filesSrc: string;
}

class UsageError extends Error {
  override name = 'UsageError';
}

/** A step of the benchmark could not be carried out; the message says which command and why. */
class StepError extends Error {
  override name = 'StepError';
}

// ---------------------------------------------------------------------------------------------
// Command line

const USAGE = `usage: npm run bench -- [options]

  --size GiB          size of the disk image (default 6)
  --used GiB          bytes of real files put into it (default 3)
  --dir DIR           work directory (default: a new directory under ${os.tmpdir()})
  --keep              keep the image, vault, repository and restores afterwards
  --only TOOL         run only cairn or only restic
  --chunk-size SIZE   passed to \`cairn vault init --chunk-size\`
  --skip-restore      measure backups only
  --json-out FILE     where to write the results as JSON (default: <work>/${DEFAULT_JSON_NAME})
  --seed N            seed of the change pattern (default 1)
  --skip-s3           skip the S3 section (both tools backing up into a local Ceph radosgw)
  --skip-cbt          skip the CBT section (cairn on a qcow2 copy through NBD with a dirty bitmap)
  --skip-export       skip the export section (the latest backup exported as qcow2 and raw images into
                      the S3 server, beside restic dump piped into the same uploader)
  --skip-nbd          skip the NBD section (instant recovery: time to first byte and random 4 KiB read
                      latency of 'cairn serve-nbd' on the latest backup, beside restic dump's first byte)
  --skip-files        skip the files section (file-system backups of a copy of a real tree, full and
                      after ${FILES_EDITS} small edits)
  --files-src DIR     the tree the files section copies (default ${DEFAULT_FILES_SRC})
`;

function parseOptions(argv: string[]): Options | 'help' {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        size: { type: 'string', default: '6' },
        used: { type: 'string', default: '3' },
        dir: { type: 'string' },
        keep: { type: 'boolean', default: false },
        only: { type: 'string' },
        'chunk-size': { type: 'string' },
        'skip-restore': { type: 'boolean', default: false },
        'json-out': { type: 'string' },
        seed: { type: 'string', default: '1' },
        'skip-s3': { type: 'boolean', default: false },
        'skip-cbt': { type: 'boolean', default: false },
        'skip-export': { type: 'boolean', default: false },
        'skip-nbd': { type: 'boolean', default: false },
        'skip-files': { type: 'boolean', default: false },
        'files-src': { type: 'string', default: DEFAULT_FILES_SRC },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (values.help) return 'help';

  const sizeGiB = positiveNumber('--size', values.size);
  const usedGiB = positiveNumber('--used', values.used);
  // Whole MiB keeps every offset 4 KiB-aligned and gives mke2fs a size it takes as is.
  const sizeBytes = Math.round(sizeGiB * 1024) * MiB;
  const usedBytes = Math.round(usedGiB * GiB);
  if (sizeBytes < 64 * MiB) throw new UsageError(`--size ${values.size} is too small; use at least 0.0625 GiB`);
  // ext4 keeps a few percent for inode tables, journal and reserved blocks.
  if (usedBytes > sizeBytes * 0.85) {
    throw new UsageError(`--used ${values.used} GiB does not fit a ${values.size} GiB ext4 image; keep it below 85 % of --size`);
  }
  let tools: Tool[] = ['cairn', 'restic'];
  if (values.only !== undefined) {
    if (values.only !== 'cairn' && values.only !== 'restic') {
      throw new UsageError(`--only takes cairn or restic, not ${JSON.stringify(values.only)}`);
    }
    tools = [values.only];
  }
  const seed = Number(values.seed);
  if (!Number.isInteger(seed)) throw new UsageError(`--seed takes an integer, not ${JSON.stringify(values.seed)}`);
  return {
    sizeBytes,
    usedBytes,
    dir: values.dir === undefined ? undefined : path.resolve(values.dir),
    keep: values.keep,
    tools,
    chunkSize: values['chunk-size'],
    skipRestore: values['skip-restore'],
    jsonOut: values['json-out'] === undefined ? undefined : path.resolve(values['json-out']),
    seed,
    skipS3: values['skip-s3'],
    skipCbt: values['skip-cbt'],
    skipExport: values['skip-export'],
    skipNbd: values['skip-nbd'],
    skipFiles: values['skip-files'],
    filesSrc: path.resolve(values['files-src']),
  };
}

function positiveNumber(flag: string, text: string): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0) throw new UsageError(`${flag} takes a positive number of GiB, not ${JSON.stringify(text)}`);
  return n;
}

// ---------------------------------------------------------------------------------------------
// Processes

function log(message: string): void {
  process.stderr.write(`[bench] ${message}\n`);
}

interface Command {
  file: string;
  args: string[];
  cwd?: string;
  env?: NodeJS.ProcessEnv;
}

interface ProcessResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  wallMs: number;
}

/** Keeps the last `limit` bytes written to it. */
class TailBuffer {
  private chunks: Buffer[] = [];
  private length = 0;
  constructor(private readonly limit: number) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.length += chunk.length;
    while (this.length - this.chunks[0]!.length >= this.limit) this.length -= this.chunks.shift()!.length;
  }

  text(): string {
    const all = Buffer.concat(this.chunks);
    return all.subarray(Math.max(0, all.length - this.limit)).toString('utf8');
  }
}

let runningChild: ChildProcess | undefined;

/** Runs a command without a terminal, capturing its output; wall time runs from spawn to exit. */
function runProcess(cmd: Command): Promise<ProcessResult> {
  return new Promise((resolve, reject) => {
    const stdout = new TailBuffer(16 * MiB);
    const stderr = new TailBuffer(64 * KiB);
    const start = performance.now();
    let end = start;
    const child = spawn(cmd.file, cmd.args, { cwd: cmd.cwd, env: cmd.env, stdio: ['ignore', 'pipe', 'pipe'] });
    runningChild = child;
    child.stdout.on('data', (c: Buffer) => stdout.push(c));
    child.stderr.on('data', (c: Buffer) => stderr.push(c));
    child.on('exit', () => {
      end = performance.now();
    });
    child.on('error', (err) => {
      runningChild = undefined;
      reject(new StepError(`cannot start ${cmd.file}: ${err.message}`, { cause: err }));
    });
    child.on('close', (code, signal) => {
      runningChild = undefined;
      resolve({ code, signal, stdout: stdout.text(), stderr: stderr.text(), wallMs: end - start });
    });
  });
}

function commandLine(cmd: Command): string {
  const quote = (a: string): string => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);
  return [cmd.file, ...cmd.args].map(quote).join(' ');
}

function failure(what: string, cmd: Command, result: ProcessResult): StepError {
  const how = result.signal !== null ? `was killed by ${result.signal}` : `exited with status ${result.code}`;
  const stderr = result.stderr.trim();
  const stdout = result.stdout.trim();
  return new StepError(
    `${what} failed: ${commandLine(cmd)} ${how}` +
      (stderr ? `\n--- stderr ---\n${stderr}` : '') +
      (stdout ? `\n--- stdout ---\n${stdout.slice(-4000)}` : ''),
  );
}

/** Runs a command that must succeed; not measured. */
async function runChecked(what: string, cmd: Command): Promise<ProcessResult> {
  const result = await runProcess(cmd);
  if (result.code !== 0) throw failure(what, cmd, result);
  return result;
}

/** What one run of a tool cost. */
interface Cost {
  wallMs: number;
  /** User plus system CPU time of the child, from GNU time; null if it reported nothing. */
  cpuMs: number | null;
  /** Peak resident set of the child, from GNU time; null if it reported nothing. */
  peakRssBytes: number | null;
}

interface Measurement extends Cost {
  stdout: string;
}

/** Runs a command under GNU time: wall time, CPU time and peak RSS of the child. Throws if it fails. */
async function runMeasured(what: string, cmd: Command, timeFile: string): Promise<Measurement> {
  const timed: Command = { ...cmd, file: TIME_BIN, args: ['-f', '%M %U %S', '-o', timeFile, cmd.file, ...cmd.args] };
  // Writeback left over from an earlier step must not be charged to this one.
  spawnSync('sync');
  const result = await runProcess(timed);
  if (result.code !== 0) throw failure(what, cmd, result);
  return { wallMs: result.wallMs, ...readTimeFile(timeFile), stdout: result.stdout };
}

/** Apparent size of a directory tree in bytes (`du -sb`); 0 if it does not exist. */
function apparentSize(dir: string): number {
  if (!fs.existsSync(dir)) return 0;
  const r = spawnSync('du', ['-sb', dir], { encoding: 'utf8' });
  if (r.status !== 0) throw new StepError(`du -sb ${dir} failed: ${r.error?.message ?? r.stderr.trim()}`);
  return Number(r.stdout.split('\t')[0]);
}

function allocatedSize(file: string): number {
  return fs.statSync(file).blocks * 512;
}

/**
 * The parent's environment without variables that would steer cairn or restic elsewhere (an AWS
 * profile, endpoint or session token of the caller would change the S3 runs).
 */
function childEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('CAIRN_') && !k.startsWith('RESTIC_') && !k.startsWith('AWS_')) env[k] = v;
  }
  return { ...env, ...extra };
}

function toolVersion(file: string, args: string[]): string | null {
  const r = spawnSync(file, args, { encoding: 'utf8' });
  if (r.error || r.status !== 0) return null;
  return r.stdout.trim().split('\n')[0] ?? '';
}

// ---------------------------------------------------------------------------------------------
// Seeded randomness: the change pattern must be the same on every run with the same seed.

/** mulberry32; small, fast and good enough to pick offsets and fill blocks that do not compress. */
class SeededRandom {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  nextUint32(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** Uniform integer in [0, n). */
  below(n: number): number {
    return Math.floor((this.nextUint32() / 2 ** 32) * n);
  }

  fill(buf: Buffer): void {
    const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.length >>> 2);
    for (let i = 0; i < words.length; i++) words[i] = this.nextUint32();
  }
}

// ---------------------------------------------------------------------------------------------
// The disk image

interface TreeInfo {
  /** Source directories copied, the last one possibly in part. */
  sources: string[];
  files: number;
  /** `du -sb` of the staged tree. */
  bytes: number;
}

/**
 * Copies real files from TREE_SOURCES into `staging` (keeping relative paths, modes and times)
 * until their sizes add up to `targetBytes`. Copies, not hard links: a hard link would change the
 * ctime of system files, which makes the host's own backup tool read them again.
 */
function stageTree(staging: string, targetBytes: number, skip: string): TreeInfo {
  const isRoot = process.getuid?.() === 0;
  let total = 0;
  let files = 0;
  const sources: string[] = [];

  const copyEntry = (src: string, dst: string, st: fs.Stats): void => {
    fs.copyFileSync(src, dst);
    fs.chmodSync(dst, st.mode & 0o7777);
    if (isRoot) fs.chownSync(dst, st.uid, st.gid);
    fs.utimesSync(dst, st.atime, st.mtime);
  };

  const walk = (srcDir: string, dstDir: string, dev: number): void => {
    let names: string[];
    try {
      names = fs.readdirSync(srcDir).sort();
    } catch {
      return; // unreadable directory: leave it out
    }
    for (const name of names) {
      if (total >= targetBytes) return;
      const src = path.join(srcDir, name);
      if (src === skip || src.startsWith(skip + path.sep)) continue;
      const dst = path.join(dstDir, name);
      let st: fs.Stats;
      try {
        st = fs.lstatSync(src);
      } catch {
        continue;
      }
      if (st.dev !== dev) continue; // another file system mounted inside
      try {
        if (st.isDirectory()) {
          fs.mkdirSync(dst);
          fs.chmodSync(dst, st.mode & 0o7777);
          walk(src, dst, dev);
        } else if (st.isSymbolicLink()) {
          fs.symlinkSync(fs.readlinkSync(src), dst);
        } else if (st.isFile()) {
          if (total + st.size > targetBytes * 1.01) continue; // one large file would overshoot
          fs.accessSync(src, fs.constants.R_OK);
          copyEntry(src, dst, st);
          total += st.size;
          files++;
        }
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOSPC') throw new StepError(`no space left copying ${src} to ${dst}`, { cause: err });
        // EACCES and friends: a file we may not read is simply not part of the tree.
      }
    }
  };

  for (const root of TREE_SOURCES) {
    if (total >= targetBytes) break;
    let st: fs.Stats;
    try {
      st = fs.statSync(root);
    } catch {
      continue;
    }
    if (!st.isDirectory()) continue;
    const dst = path.join(staging, root);
    fs.mkdirSync(dst, { recursive: true });
    walk(root, dst, st.dev);
    sources.push(total >= targetBytes ? `${root} (part)` : root);
  }
  if (total < targetBytes) {
    log(`only ${formatBytes(total)} of readable files found under ${TREE_SOURCES.join(', ')}; using that`);
  }
  return { sources, files, bytes: apparentSize(staging) };
}

async function buildImage(image: string, staging: string, options: Options, skip: string): Promise<TreeInfo> {
  log(`staging ${formatBytes(options.usedBytes)} of files from ${TREE_SOURCES.join(', ')} in ${staging}`);
  fs.mkdirSync(staging);
  const start = performance.now();
  const tree = stageTree(staging, options.usedBytes, skip);
  log(`staged ${tree.files} files, ${formatBytes(tree.bytes)} (du -sb) in ${formatSeconds(performance.now() - start)}; formatting ext4 image ${image}`);
  const fd = fs.openSync(image, 'wx');
  fs.ftruncateSync(fd, options.sizeBytes); // sparse
  fs.closeSync(fd);
  // Fixed UUID, hash seed and clock: the same tree gives the same block layout (only inode change
  // times and their checksums differ), so a seed changes the same places on every run.
  await runChecked('building the ext4 image', {
    file: 'mke2fs',
    args: [
      '-q', '-t', 'ext4', '-U', IMAGE_UUID, '-E', `hash_seed=${IMAGE_UUID}`,
      '-d', staging, '-F', image, `${options.sizeBytes / KiB}k`,
    ],
    env: { ...process.env, E2FSPROGS_FAKE_TIME: String(IMAGE_TIME) },
  });
  fs.rmSync(staging, { recursive: true, force: true });
  return tree;
}

interface ImageScan {
  sha256: string;
  /** Indexes of the ALIGN-sized blocks that hold a non-zero byte, ascending. */
  usedBlocks: Uint32Array | null;
}

/** Reads `fh` at `position` until `buf` is full or the file ends; returns the bytes read. */
async function readFull(fh: fsp.FileHandle, buf: Buffer, position: number): Promise<number> {
  let filled = 0;
  while (filled < buf.length) {
    const { bytesRead } = await fh.read(buf, filled, buf.length - filled, position + filled);
    if (bytesRead === 0) break;
    filled += bytesRead;
  }
  return filled;
}

/** sha256 of a file and, if asked, which 4 KiB blocks of it are not all zeros. */
async function scanFile(file: string, mapUsed: boolean): Promise<ImageScan> {
  const fh = await fsp.open(file, 'r');
  const hash = createHash('sha256');
  const buf = Buffer.allocUnsafe(SCAN_BUFFER);
  const zero = Buffer.alloc(ALIGN);
  let used = new Uint32Array(mapUsed ? 1 << 16 : 0);
  let usedCount = 0;
  let position = 0;
  try {
    for (;;) {
      const n = await readFull(fh, buf, position);
      if (n === 0) break;
      const chunk = buf.subarray(0, n);
      hash.update(chunk);
      if (mapUsed) {
        for (let off = 0; off < n; off += ALIGN) {
          const block = chunk.subarray(off, Math.min(off + ALIGN, n));
          if (block.equals(zero.subarray(0, block.length))) continue;
          if (usedCount === used.length) {
            const grown = new Uint32Array(used.length * 2);
            grown.set(used);
            used = grown;
          }
          used[usedCount++] = (position + off) / ALIGN;
        }
      }
      position += n;
      if (n < buf.length) break;
    }
  } finally {
    await fh.close();
  }
  return { sha256: hash.digest('hex'), usedBlocks: mapUsed ? used.slice(0, usedCount) : null };
}

interface ChangePlan {
  blocks: number;
  blockSize: number;
  bytesWritten: number;
  /** Byte offsets, in the order written. */
  offsets: number[];
}

/**
 * Overwrites CHANGE_FRACTION of the image with random bytes: CHANGE_BLOCK-sized blocks at
 * ALIGN-aligned offsets that start in a used (non-zero) part of the image, never overlapping each
 * other, chosen and filled from `random` so the same seed gives the same image.
 */
function modifyImage(image: string, sizeBytes: number, usedBlocks: Uint32Array, random: SeededRandom): ChangePlan {
  if (usedBlocks.length === 0) throw new StepError(`the image ${image} holds no data to modify`);
  const count = Math.max(1, Math.round((sizeBytes * CHANGE_FRACTION) / CHANGE_BLOCK));
  const totalBlocks = sizeBytes / ALIGN;
  const span = CHANGE_BLOCK / ALIGN;
  const taken = new Uint8Array(totalBlocks);
  const offsets: number[] = [];
  for (let attempts = 0; offsets.length < count; attempts++) {
    if (attempts > count * 1000) {
      throw new StepError(`could not place ${count} non-overlapping ${CHANGE_BLOCK}-byte blocks in the used part of ${image}`);
    }
    const first = Math.min(usedBlocks[random.below(usedBlocks.length)]!, totalBlocks - span);
    let free = true;
    for (let b = first; b < first + span && free; b++) free = taken[b] === 0;
    if (!free) continue;
    taken.fill(1, first, first + span);
    offsets.push(first * ALIGN);
  }

  const fd = fs.openSync(image, 'r+');
  try {
    const buf = Buffer.allocUnsafe(CHANGE_BLOCK);
    for (const offset of offsets) {
      random.fill(buf);
      let done = 0;
      while (done < buf.length) done += fs.writeSync(fd, buf, done, buf.length - done, offset + done);
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  return { blocks: count, blockSize: CHANGE_BLOCK, bytesWritten: count * CHANGE_BLOCK, offsets };
}

// ---------------------------------------------------------------------------------------------
// The two tools. Each implements the same three steps against its own repository.

interface BackupStep extends Cost {
  /**
   * Growth of the vault / repository, after minus before: apparent bytes of the directory (`du -sb`),
   * or the sum of the object sizes in the bucket for S3.
   */
  repoGrowthBytes: number;
  /** What the tool itself reported (cairn: --json object; restic: --json summary). */
  report: Record<string, unknown> | null;
}

interface RestoreStep extends Cost {
  apparentBytes: number;
  allocatedBytes: number;
  sha256: string;
  identical: boolean;
}

interface ToolRun {
  tool: Tool;
  version: string | null;
  full?: BackupStep;
  incremental?: BackupStep;
  restore?: RestoreStep;
  /** Set when a step failed; later steps of this tool are skipped. */
  error?: string;
}

/** Where a tool keeps its backups: a directory in the work directory, or a bucket on the S3 server. */
interface Place {
  kind: 'local' | 's3';
  /** The vault or repository as the tool takes it: a path, an s3:// URL or restic's s3:http://… */
  location: string;
  /** Environment added for the tool (S3 credentials). */
  env: Record<string, string>;
  /** Bytes the place holds now. */
  size(): Promise<number>;
}

function localPlace(dir: string): Place {
  return { kind: 'local', location: dir, env: {}, size: async () => apparentSize(dir) };
}

interface Subject {
  init(): Promise<void>;
  backup(step: 'full' | 'incremental'): Promise<BackupStep>;
  /** Restores the latest backup; returns the path of the restored image. */
  restore(): Promise<{ measurement: Measurement; file: string }>;
}

interface CairnBackupReport extends Record<string, unknown> {
  id: string;
  name: string;
  kind: string;
  bytesRead: number;
  bytesStored: number;
  durationMs: number;
}

/** Takes the one JSON object `cairn backup --json` prints; tolerates log lines around it. */
function parseCairnReport(stdout: string): CairnBackupReport {
  const trimmed = stdout.trim();
  const candidates = [trimmed, ...trimmed.split('\n').reverse().filter((l) => l.trim().startsWith('{'))];
  for (const text of candidates) {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      continue;
    }
    const r = value as Partial<CairnBackupReport>;
    if (
      r !== null &&
      typeof r === 'object' &&
      typeof r.id === 'string' &&
      typeof r.kind === 'string' &&
      typeof r.bytesRead === 'number' &&
      typeof r.bytesStored === 'number'
    ) {
      return r as CairnBackupReport;
    }
  }
  throw new StepError(
    `cairn backup --json printed no object with id, kind, bytesRead and bytesStored; stdout was:\n${trimmed.slice(-4000) || '(empty)'}`,
  );
}

/** Which of Cairn's runs a subject is: the raw image into a folder or a bucket, or the qcow2 copy (CBT). */
type CairnRole = 'local' | 's3' | 'cbt';

const CAIRN_ROLES: Record<CairnRole, { name: string; timeName: string; stateDir: string }> = {
  local: { name: 'cairn', timeName: 'cairn', stateDir: WORK_NAMES.cairnState },
  s3: { name: 'cairn S3', timeName: 'cairn-s3', stateDir: WORK_NAMES.cairnS3State },
  cbt: { name: 'cairn CBT', timeName: 'cairn-cbt', stateDir: WORK_NAMES.cairnCbtState },
};

function cairnSubject(
  work: string,
  repoRoot: string,
  image: string,
  options: Options,
  timeDir: string,
  place: Place,
  role: CairnRole = place.kind,
): Subject {
  const vault = place.location;
  const bin = path.join(repoRoot, 'bin', 'cairn.js');
  // Its own state per role: one vault's backups must not build on another vault's history.
  const { name, timeName, stateDir: stateName } = CAIRN_ROLES[role];
  const stateDir = path.join(work, stateName);
  const env = childEnv({ CAIRN_PASSPHRASE: PASSPHRASE, CAIRN_STATE_DIR: stateDir, ...place.env });
  const cairn = (args: string[]): Command => ({ file: process.execPath, args: [bin, ...args], cwd: repoRoot, env });
  let lastId: string | undefined;
  let lastKind: string | undefined;

  return {
    async init() {
      const args = ['vault', 'init', vault];
      if (options.chunkSize !== undefined) args.push('--chunk-size', options.chunkSize);
      await runChecked(`${name} vault init`, cairn(args));
    },
    async backup(step) {
      const before = await place.size();
      const m = await runMeasured(
        `${name} ${step} backup`,
        cairn(['backup', image, '--vault', vault, '--json']),
        path.join(timeDir, `${timeName}-${step}`),
      );
      const report = parseCairnReport(m.stdout);
      if (step === 'incremental' && report.kind !== 'incremental') {
        log(`warning: ${name}'s second backup is kind "${report.kind}", expected "incremental" (first was "${lastKind}")`);
      }
      lastId = report.id;
      lastKind = report.kind;
      const { wallMs, cpuMs, peakRssBytes } = m;
      return { wallMs, cpuMs, peakRssBytes, repoGrowthBytes: (await place.size()) - before, report };
    },
    async restore() {
      if (lastId === undefined) throw new StepError(`${name} restore: no backup id to restore`);
      const file = path.join(work, WORK_NAMES.cairnRestore);
      const m = await runMeasured(
        `${name} restore`,
        cairn(['restore', lastId, '--vault', vault, '--to', file]),
        path.join(timeDir, `${timeName}-restore`),
      );
      return { measurement: m, file };
    },
  };
}

function resticSubject(work: string, image: string, timeDir: string, place: Place): Subject {
  const cache = path.join(work, place.kind === 's3' ? WORK_NAMES.resticS3Cache : WORK_NAMES.resticCache);
  const common = ['--repo', place.location, '--cache-dir', cache, '-q'];
  const env = childEnv({ RESTIC_PASSWORD: PASSPHRASE, ...place.env });
  const restic = (args: string[]): Command => ({ file: 'restic', args: [...args, ...common], env });
  const name = place.kind === 's3' ? 'restic S3' : 'restic';
  const timeName = place.kind === 's3' ? 'restic-s3' : 'restic';

  return {
    async init() {
      await runChecked(`${name} init`, restic(['init']));
    },
    async backup(step) {
      const before = await place.size();
      const m = await runMeasured(
        `${name} ${step} backup`,
        restic(['backup', '--json', image]),
        path.join(timeDir, `${timeName}-${step}`),
      );
      let report: Record<string, unknown> | null = null;
      for (const line of m.stdout.split('\n')) {
        try {
          const v = JSON.parse(line) as Record<string, unknown>;
          if (v.message_type === 'summary') report = v;
        } catch {
          // not a JSON line
        }
      }
      const { wallMs, cpuMs, peakRssBytes } = m;
      return { wallMs, cpuMs, peakRssBytes, repoGrowthBytes: (await place.size()) - before, report };
    },
    async restore() {
      const target = path.join(work, WORK_NAMES.resticRestore);
      const m = await runMeasured(
        `${name} restore`,
        restic(['restore', 'latest', '--target', target]),
        path.join(timeDir, `${timeName}-restore`),
      );
      // restic restores a file under the target at its full original path.
      const file = path.join(target, image);
      if (!fs.existsSync(file)) throw new StepError(`${name} restore wrote no ${file}`);
      return { measurement: m, file };
    },
  };
}

/** Runs `fn` for a tool unless an earlier step of it failed; a failure is recorded, not thrown. */
async function step<R extends { tool: Tool; error?: string }>(run: R | undefined, what: string, fn: (run: R) => Promise<void>): Promise<void> {
  if (run === undefined || run.error !== undefined) return;
  log(`${run.tool}: ${what}`);
  try {
    await fn(run);
  } catch (err) {
    if (!(err instanceof StepError)) throw err;
    run.error = err.message;
    log(`${run.tool}: ${what} FAILED; skipping its remaining steps\n${err.message}`);
  }
}

/**
 * Restores start from the same memory state for both tools: dirty data written back and the page
 * cache dropped (needs root). Otherwise whichever tool restores first pays for reclaiming a page
 * cache full of the earlier steps' data, and the second gets the memory the first freed.
 */
let cacheDropped: boolean | undefined;
function dropPageCache(): void {
  spawnSync('sync');
  try {
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
    cacheDropped ??= true;
  } catch {
    cacheDropped = false;
  }
}

async function measureRestore(subject: Subject, expectedSha256: string, keep: boolean): Promise<RestoreStep> {
  dropPageCache();
  const { measurement, file } = await subject.restore();
  const st = fs.statSync(file);
  const { sha256 } = await scanFile(file, false);
  const result: RestoreStep = {
    wallMs: measurement.wallMs,
    cpuMs: measurement.cpuMs,
    peakRssBytes: measurement.peakRssBytes,
    apparentBytes: st.size,
    allocatedBytes: st.blocks * 512,
    sha256,
    identical: sha256 === expectedSha256,
  };
  // Two restored 6 GiB images on top of the original add up; drop each once it is checked.
  if (!keep) fs.rmSync(file, { force: true });
  return result;
}

// ---------------------------------------------------------------------------------------------
// S3: both tools back up into buckets on one local Ceph radosgw, behind one counting proxy.

const S3_BUCKETS: Record<Tool, string> = { cairn: 'cairn-bench', restic: 'restic-bench' };
/** Written once before any tool runs, so the first tool does not pay for RGW creating its data pool. */
const S3_WARMUP_BUCKET = 'bench-warmup';
const S3_WARMUP_OBJECTS = 8;
/** How many lines of the daemons' own output are kept to show when an S3 step fails. */
const S3_OUTPUT_LINES = 40;
const S3_INSTALL_HINT = 'apt-get install radosgw ceph-mon ceph-osd ceph-common';

type RequestCounts = Record<RequestKind, number>;

interface S3Bench {
  server: S3Server;
  /** The tools talk to the proxy, which counts every request by kind and forwards it to the server. */
  proxy: FaultProxy;
  /** Straight to the server (not counted): creates the buckets and lists them. */
  client: S3Client;
  memoryBytes: number;
  /** e.g. "16.2.15 pacific" */
  version: string | null;
  /** The last lines the daemons printed (startup notes, warnings); shown when an S3 step fails. */
  output: string[];
  /** Process ids of ceph-mon, ceph-osd and radosgw, to read their CPU time; empty without /proc. */
  daemonPids: number[];
}

interface S3BackupStep extends BackupStep {
  /** Requests the counting proxy forwarded during the step, by kind. */
  requests: RequestCounts;
  /** Request-body bytes the proxy received from the tool, and response-body bytes it sent back. */
  bytesSent: number;
  bytesReceived: number;
  /** What the tool counted itself (cairn's `requests` from --json; restic reports none). */
  toolRequests: Record<string, unknown> | null;
  /** Objects in the bucket and the sum of their sizes after the step (ListObjectsV2). */
  bucketObjects: number;
  bucketBytes: number;
  /** CPU time of the S3 server's daemons during the step (radosgw, OSD, monitor); null without /proc. */
  serverCpuMs: number | null;
  /** CPU time of the bench process during the step: nearly all of it is the counting proxy. */
  proxyCpuMs: number;
}

interface S3Run {
  tool: Tool;
  bucket: string;
  /** Requests of `cairn vault init` / `restic init`, not part of any row. */
  initRequests?: RequestCounts;
  full?: S3BackupStep;
  incremental?: S3BackupStep;
  error?: string;
}

function totalRequests(counts: RequestCounts | undefined): number | undefined {
  return counts === undefined ? undefined : Object.values(counts).reduce((a, b) => a + b, 0);
}

/**
 * Starts radosgw with room in RAM for what both tools store (each stores at most about the image's
 * allocated bytes, compressed; the incremental and RGW's own objects come on top), the counting
 * proxy in front of it, and one bucket per tool.
 */
async function startS3(tools: Tool[], imageAllocated: number): Promise<S3Bench> {
  const memoryBytes = Math.max(4 * GiB, Math.ceil((tools.length * imageAllocated * 1.5 + GiB) / MiB) * MiB);
  if (memoryBytes > os.totalmem() * 0.8) {
    log(`warning: the S3 server may hold up to ${formatBytes(memoryBytes)} in RAM; this machine has ${formatBytes(os.totalmem())}`);
  }
  log(`starting the S3 server (Ceph radosgw, in-memory store of ${formatBytes(memoryBytes)})`);
  // Progress lines go to the log; the daemons' own chatter only when something fails.
  const output: string[] = [];
  const server = await startS3Server({
    memoryBytes,
    log: (line) => {
      if (line.startsWith('[s3-server]')) {
        log(line);
        return;
      }
      output.push(line);
      if (output.length > S3_OUTPUT_LINES) output.shift();
    },
  });
  let proxy: FaultProxy | undefined;
  let client: S3Client | undefined;
  try {
    proxy = await startFaultProxy(server.endpoint);
    client = new S3Client({
      endpoint: server.endpoint,
      region: server.region,
      forcePathStyle: true,
      credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
    for (const tool of tools) await client.send(new CreateBucketCommand({ Bucket: S3_BUCKETS[tool] }));
    await client.send(new CreateBucketCommand({ Bucket: S3_WARMUP_BUCKET }));
    const body = Buffer.alloc(4 * MiB, 1);
    for (let i = 0; i < S3_WARMUP_OBJECTS; i++) {
      await client.send(new PutObjectCommand({ Bucket: S3_WARMUP_BUCKET, Key: `warmup-${i}`, Body: body }));
    }
    log(`S3 server ${server.endpoint}, counting proxy ${proxy.url}`);
    return { server, proxy, client, memoryBytes, version: radosgwVersion(), output, daemonPids: serverDaemonPids() };
  } catch (err) {
    client?.destroy();
    await proxy?.close();
    await server.stop();
    throw err;
  }
}

/** `radosgw --version`: "ceph version 16.2.15 (…) pacific (stable)" -> "16.2.15 pacific". */
function radosgwVersion(): string | null {
  const line = toolVersion('radosgw', ['--version']);
  const m = line === null ? null : /ceph version (\S+) \([^)]*\) (\w+)/.exec(line);
  return m === null ? line : `${m[1]} ${m[2]}`;
}

/** /proc/<pid>/stat counts CPU time in USER_HZ ticks, which Linux fixes at 100 per second. */
const PROC_TICKS_PER_SECOND = 100;

/** Name, parent and CPU time (user + system, all threads) of a process, from /proc; null if gone. */
function procStat(pid: number): { comm: string; ppid: number; cpuMs: number } | null {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // "pid (comm) state ppid ... utime stime ...": comm may hold spaces, so split after its ')'.
  const close = text.lastIndexOf(')');
  const fields = text.slice(close + 2).split(' ');
  const [ppid, utime, stime] = [fields[1], fields[11], fields[12]].map(Number);
  if (!Number.isFinite(ppid) || !Number.isFinite(utime) || !Number.isFinite(stime)) return null;
  return { comm: text.slice(text.indexOf('(') + 1, close), ppid: ppid!, cpuMs: ((utime! + stime!) * 1000) / PROC_TICKS_PER_SECOND };
}

/** The server's daemons are children of this process; finds them by name. */
function serverDaemonPids(): number[] {
  let names: string[];
  try {
    names = fs.readdirSync('/proc');
  } catch {
    return [];
  }
  return names
    .filter((n) => /^\d+$/.test(n))
    .map(Number)
    .filter((pid) => {
      const st = procStat(pid);
      return st !== null && st.ppid === process.pid && ['ceph-mon', 'ceph-osd', 'radosgw'].includes(st.comm);
    });
}

/** Summed CPU time of the daemons; null if there are none or one has gone. */
function serverCpuMs(pids: number[]): number | null {
  let total = 0;
  for (const pid of pids) {
    const st = procStat(pid);
    if (st === null) return null;
    total += st.cpuMs;
  }
  return pids.length > 0 ? total : null;
}

async function stopS3(s3: S3Bench): Promise<void> {
  s3.client.destroy();
  await s3.proxy.close();
  await s3.server.stop();
}

/** Objects in a bucket and the sum of their sizes (ListObjectsV2, every page). */
async function bucketContents(client: S3Client, bucket: string): Promise<{ objects: number; bytes: number }> {
  let objects = 0;
  let bytes = 0;
  let token: string | undefined;
  do {
    const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, ContinuationToken: token }));
    for (const o of page.Contents ?? []) {
      objects++;
      bytes += o.Size ?? 0;
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token !== undefined);
  return { objects, bytes };
}

/** A StepError for a failed S3 call made by the bench itself (not by a tool). */
async function s3Call<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw new StepError(`${what} failed: ${(err as Error).message}`, { cause: err });
  }
}

function s3Place(s3: S3Bench, tool: Tool): Place {
  const bucket = S3_BUCKETS[tool];
  const env = {
    AWS_ACCESS_KEY_ID: s3.server.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.server.secretAccessKey,
    AWS_REGION: s3.server.region,
  };
  const size = async (): Promise<number> =>
    (await s3Call(`listing bucket ${bucket}`, () => bucketContents(s3.client, bucket))).bytes;
  // Cairn takes the endpoint as a parameter; restic (minio-go) uses path-style for an IP address.
  const location =
    tool === 'cairn'
      ? `s3://${bucket}?endpoint=${encodeURIComponent(s3.proxy.url)}&path-style=true`
      : `s3:${s3.proxy.url}/${bucket}`;
  return { kind: 's3', location, env, size };
}

/** Runs one backup of a tool into its bucket and counts the requests it made on the way. */
async function measureS3Backup(s3: S3Bench, subject: Subject, tool: Tool, kind: 'full' | 'incremental'): Promise<S3BackupStep> {
  s3.proxy.resetCounts();
  const serverBefore = serverCpuMs(s3.daemonPids);
  const benchBefore = process.cpuUsage();
  const backup = await subject.backup(kind);
  const bench = process.cpuUsage(benchBefore);
  const serverAfter = serverCpuMs(s3.daemonPids);
  // Copies: resetCounts() zeroes the proxy's object in place.
  const requests = { ...s3.proxy.counts };
  const { bytesIn, bytesOut } = s3.proxy;
  const contents = await s3Call(`listing bucket ${S3_BUCKETS[tool]}`, () => bucketContents(s3.client, S3_BUCKETS[tool]));
  const own = backup.report?.requests;
  return {
    ...backup,
    requests,
    bytesSent: bytesIn,
    bytesReceived: bytesOut,
    toolRequests: own !== null && typeof own === 'object' ? (own as Record<string, unknown>) : null,
    bucketObjects: contents.objects,
    bucketBytes: contents.bytes,
    serverCpuMs: serverBefore !== null && serverAfter !== null ? Math.round(serverAfter - serverBefore) : null,
    proxyCpuMs: Math.round((bench.user + bench.system) / 1000),
  };
}

// ---------------------------------------------------------------------------------------------
// CBT: Cairn backs up a qcow2 copy of the image through qemu-nbd, with a dirty bitmap for the
// incremental, and is compared with restic's runs on the raw image (restic is not run again).

const QEMU_TOOLS = ['qemu-img', 'qemu-io', 'qemu-nbd'] as const;
const QEMU_INSTALL_HINT = 'apt-get install qemu-utils';

/** The goals of the CBT issue, checked against the measured numbers (they never change the exit code). */
const CBT_TARGETS = {
  /** restic incremental wall time / Cairn CBT incremental wall time, at least. */
  incrementalSpeedup: 15,
  /** Cairn CBT incremental vault growth / restic incremental repository growth, at most. */
  growthShare: 0.25,
  /** restic full wall time / Cairn CBT full wall time, at least. */
  fullSpeedup: 2,
};

interface CbtBackupStep extends BackupStep {
  /** From Cairn's --json: disks[0].changeDetection ('full' | 'compare' | 'bitmap'), bytesRead, dirtyBytes. */
  changeDetection: string | null;
  diskBytesRead: number | null;
  dirtyBytes: number | null;
}

interface CbtRun {
  tool: 'cairn';
  qemuVersion: string | null;
  /** The qcow2 made by `qemu-img convert` from the unmodified image; untimed. */
  qcow2?: { allocatedBytes: number; convertMs: number };
  full?: CbtBackupStep;
  /** The change plan written into the qcow2 with one qemu-io run, then checked with qemu-img compare; untimed. */
  change?: { writes: number; bytesWritten: number; writeMs: number; compareMs: number; identical: boolean };
  incremental?: CbtBackupStep;
  /** Set when a step failed (the qcow2 not matching the modified image counts as failed). */
  error?: string;
}

interface CbtTarget {
  what: string;
  /** speedup: restic / cairn wall time, at least `goal`; share: cairn / restic growth, at most `goal`. */
  kind: 'speedup' | 'share';
  goal: number;
  /** null when a side was not measured. */
  value: number | null;
  /** For the speedups: restic / cairn CPU time, less sensitive to a busy machine than wall time. */
  cpuValue: number | null;
  met: boolean | null;
}

/** The first qemu tool the CBT section needs that does not run, if any. */
function missingQemuTool(): string | undefined {
  return QEMU_TOOLS.find((tool) => spawnSync(tool, ['--version']).error !== undefined);
}

/** `qemu-img --version`: "qemu-img version 7.2.22 (Debian …)" -> "7.2.22". */
function qemuVersion(): string | null {
  const line = toolVersion('qemu-img', ['--version']);
  const m = line === null ? null : /version (\S+)/.exec(line);
  return m === null ? line : m[1]!;
}

async function convertToQcow2(raw: string, qcow2: string): Promise<{ allocatedBytes: number; convertMs: number }> {
  const start = performance.now();
  await runChecked('converting the image to qcow2', {
    file: 'qemu-img',
    args: ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2],
  });
  return { allocatedBytes: allocatedSize(qcow2), convertMs: performance.now() - start };
}

/**
 * Writes the blocks the change plan wrote into the raw image into the qcow2 as well: the same
 * offsets, and the bytes read back from the modified raw image, each block through its own pattern
 * file, all in one qemu-io run (which opens the image once, so its dirty bitmap records the writes).
 */
async function writeChangesToQcow2(raw: string, qcow2: string, changes: ChangePlan, patternDir: string): Promise<number> {
  fs.mkdirSync(patternDir);
  const commands: string[] = [];
  const buf = Buffer.allocUnsafe(changes.blockSize);
  const fd = fs.openSync(raw, 'r');
  try {
    for (const offset of changes.offsets) {
      let filled = 0;
      while (filled < buf.length) {
        const n = fs.readSync(fd, buf, filled, buf.length - filled, offset + filled);
        if (n === 0) throw new StepError(`${raw} ends before the changed block at ${offset}`);
        filled += n;
      }
      // Relative names: qemu-io splits its commands at spaces, and the work directory may hold some.
      const file = `${offset}.bin`;
      fs.writeFileSync(path.join(patternDir, file), buf);
      commands.push('-c', `write -q -s ${file} ${offset} ${changes.blockSize}`);
    }
  } finally {
    fs.closeSync(fd);
  }
  const start = performance.now();
  await runChecked('writing the change into the qcow2', {
    file: 'qemu-io',
    args: ['-f', 'qcow2', ...commands, qcow2],
    cwd: patternDir,
  });
  return performance.now() - start;
}

/** `qemu-img compare` of the qcow2's guest view with the raw image: null if identical, else what differs. */
async function compareQcow2(qcow2: string, raw: string): Promise<string | null> {
  const cmd: Command = { file: 'qemu-img', args: ['compare', '-f', 'qcow2', '-F', 'raw', qcow2, raw] };
  const result = await runProcess(cmd);
  if (result.code === 0) return null;
  // 1 means the images differ; anything else is an error of qemu-img itself.
  if (result.code === 1) return `${commandLine(cmd)} says: ${result.stdout.trim() || 'the images differ'}`;
  throw failure('comparing the qcow2 with the raw image', cmd, result);
}

/** Adds what Cairn reported about the (only) disk to a backup step. */
function cbtBackupStep(backup: BackupStep): CbtBackupStep {
  const disks = backup.report?.disks;
  const disk = Array.isArray(disks) && typeof disks[0] === 'object' ? (disks[0] as Record<string, unknown>) : null;
  const detection = disk?.changeDetection;
  return {
    ...backup,
    changeDetection: typeof detection === 'string' ? detection : null,
    diskBytesRead: reportField(disk, 'bytesRead'),
    dirtyBytes: reportField(disk, 'dirtyBytes'),
  };
}

function cbtTargets(cbt: CbtRun | undefined, restic: ToolRun | undefined): CbtTarget[] {
  const ratio = (num: number | null | undefined, den: number | null | undefined): number | null =>
    typeof num === 'number' && typeof den === 'number' && den > 0 ? num / den : null;
  const speedup = (what: string, goal: number, c: BackupStep | undefined, r: BackupStep | undefined): CbtTarget => {
    const value = ratio(r?.wallMs, c?.wallMs);
    return { what, kind: 'speedup', goal, value, cpuValue: ratio(r?.cpuMs, c?.cpuMs), met: value === null ? null : value >= goal };
  };
  const t = CBT_TARGETS;
  const growth = ratio(cbt?.incremental?.repoGrowthBytes, restic?.incremental?.repoGrowthBytes);
  return [
    speedup('CBT incremental vs restic incremental', t.incrementalSpeedup, cbt?.incremental, restic?.incremental),
    {
      what: 'CBT vault growth (1%) vs restic',
      kind: 'share',
      goal: t.growthShare,
      value: growth,
      cpuValue: null,
      met: growth === null ? null : growth <= t.growthShare,
    },
    speedup('CBT full vs restic full', t.fullSpeedup, cbt?.full, restic?.full),
  ];
}

function formatTarget(t: CbtTarget): string {
  const goal = t.kind === 'speedup' ? `at least ${t.goal}x faster` : `at most ${t.goal.toFixed(2)}x of restic's`;
  if (t.value === null || t.met === null) return `${t.what}: not measured (goal ${goal})`;
  const value =
    t.kind === 'speedup'
      ? `${t.value.toFixed(1)}x faster` + (t.cpuValue === null ? '' : `, ${t.cpuValue.toFixed(1)}x less CPU`)
      : `${t.value.toFixed(2)}x of restic's`;
  return `${t.what}: ${t.met ? 'met' : 'MISSED'} (${value}; goal ${goal})`;
}

// ---------------------------------------------------------------------------------------------
// Report

function formatBytes(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1000 && u < units.length - 1) {
    v /= 1000;
    u++;
  }
  const digits = u === 0 || Math.abs(v) >= 100 ? 0 : 1;
  return `${v.toFixed(digits)} ${units[u]}`;
}

function formatSeconds(ms: number): string {
  const s = ms / 1000;
  return `${s.toFixed(s >= 1 ? 1 : 2)} s`;
}

/** 'latency': milliseconds shown as ms (short NBD reads); 'ms' is shown in seconds. */
type Unit = 'ms' | 'latency' | 'bytes' | 'count' | 'bool' | 'MB/s';

type Value = number | boolean | null;

interface Row {
  step: string;
  unit: Unit;
  cairn: Value;
  restic: Value;
  /** cairn / restic for numeric rows where both are known and restic is not zero. */
  ratio: number | null;
}

function row(step: string, unit: Unit, cairn: Value | undefined, restic: Value | undefined): Row {
  const c = cairn ?? null;
  const r = restic ?? null;
  const ratio = typeof c === 'number' && typeof r === 'number' && r !== 0 ? c / r : null;
  return { step, unit, cairn: c, restic: r, ratio };
}

function buildRows(
  cairn: ToolRun | undefined,
  restic: ToolRun | undefined,
  s3Cairn: S3Run | undefined,
  s3Restic: S3Run | undefined,
): Row[] {
  const rows: Row[] = [
    row('full backup', 'ms', cairn?.full?.wallMs, restic?.full?.wallMs),
    row('incremental backup', 'ms', cairn?.incremental?.wallMs, restic?.incremental?.wallMs),
    row('vault growth (full)', 'bytes', cairn?.full?.repoGrowthBytes, restic?.full?.repoGrowthBytes),
    row('vault growth (1%)', 'bytes', cairn?.incremental?.repoGrowthBytes, restic?.incremental?.repoGrowthBytes),
  ];
  if (cairn?.restore !== undefined || restic?.restore !== undefined) {
    rows.push(
      row('restore', 'ms', cairn?.restore?.wallMs, restic?.restore?.wallMs),
      row('restore allocated', 'bytes', cairn?.restore?.allocatedBytes, restic?.restore?.allocatedBytes),
      row('restore identical', 'bool', cairn?.restore?.identical, restic?.restore?.identical),
    );
  }
  rows.push(
    row('CPU full', 'ms', cairn?.full?.cpuMs, restic?.full?.cpuMs),
    row('CPU incremental', 'ms', cairn?.incremental?.cpuMs, restic?.incremental?.cpuMs),
  );
  if (cairn?.restore !== undefined || restic?.restore !== undefined) {
    rows.push(row('CPU restore', 'ms', cairn?.restore?.cpuMs, restic?.restore?.cpuMs));
  }
  rows.push(
    row('peak RSS full', 'bytes', cairn?.full?.peakRssBytes, restic?.full?.peakRssBytes),
    row('peak RSS incremental', 'bytes', cairn?.incremental?.peakRssBytes, restic?.incremental?.peakRssBytes),
  );
  if (cairn?.restore !== undefined || restic?.restore !== undefined) {
    rows.push(row('peak RSS restore', 'bytes', cairn?.restore?.peakRssBytes, restic?.restore?.peakRssBytes));
  }
  if (s3Cairn !== undefined || s3Restic !== undefined) {
    const c = s3Cairn;
    const r = s3Restic;
    rows.push(
      row('S3 full backup', 'ms', c?.full?.wallMs, r?.full?.wallMs),
      row('S3 requests (full)', 'count', totalRequests(c?.full?.requests), totalRequests(r?.full?.requests)),
      row('S3 PUT requests (full)', 'count', c?.full?.requests.PUT, r?.full?.requests.PUT),
      row('S3 bytes stored (full)', 'bytes', c?.full?.bucketBytes, r?.full?.bucketBytes),
      row('S3 incremental backup', 'ms', c?.incremental?.wallMs, r?.incremental?.wallMs),
      row('S3 requests (1%)', 'count', totalRequests(c?.incremental?.requests), totalRequests(r?.incremental?.requests)),
      row('S3 PUT requests (1%)', 'count', c?.incremental?.requests.PUT, r?.incremental?.requests.PUT),
      row('S3 bytes added (1%)', 'bytes', c?.incremental?.repoGrowthBytes, r?.incremental?.repoGrowthBytes),
    );
  }
  return rows;
}

/**
 * The CBT block: Cairn on the qcow2 (through NBD, dirty bitmap for the incremental) in the cairn
 * column, restic's runs on the raw image from the main block in the restic column.
 */
function buildCbtRows(cbt: CbtRun, restic: ToolRun | undefined): Row[] {
  const read = (step: BackupStep | undefined, key: string): number | null => reportField(step?.report, key);
  return [
    row('CBT full backup', 'ms', cbt.full?.wallMs, restic?.full?.wallMs),
    row('CBT incremental backup', 'ms', cbt.incremental?.wallMs, restic?.incremental?.wallMs),
    row('CBT bytes read (full)', 'bytes', read(cbt.full, 'bytesRead'), read(restic?.full, 'total_bytes_processed')),
    row('CBT bytes read (1%)', 'bytes', read(cbt.incremental, 'bytesRead'), read(restic?.incremental, 'total_bytes_processed')),
    row('CBT vault growth (full)', 'bytes', cbt.full?.repoGrowthBytes, restic?.full?.repoGrowthBytes),
    row('CBT vault growth (1%)', 'bytes', cbt.incremental?.repoGrowthBytes, restic?.incremental?.repoGrowthBytes),
    row('CBT CPU full', 'ms', cbt.full?.cpuMs, restic?.full?.cpuMs),
    row('CBT CPU incremental', 'ms', cbt.incremental?.cpuMs, restic?.incremental?.cpuMs),
    row('CBT peak RSS full', 'bytes', cbt.full?.peakRssBytes, restic?.full?.peakRssBytes),
    row('CBT peak RSS incremental', 'bytes', cbt.incremental?.peakRssBytes, restic?.incremental?.peakRssBytes),
  ];
}

function formatCell(unit: Unit, v: Value): string {
  if (v === null) return '-';
  if (typeof v === 'boolean') return v ? 'yes' : 'NO';
  if (unit === 'count') return String(v);
  if (unit === 'MB/s') return `${v.toFixed(0)} MB/s`;
  if (unit === 'latency') return `${v.toFixed(2)} ms`;
  return unit === 'ms' ? formatSeconds(v) : formatBytes(v);
}

function formatRatio(r: Row): string {
  if (r.ratio === null) return '-';
  const x = (v: number): string => `${v.toFixed(v >= 10 ? 1 : 2)}x`;
  if (r.unit !== 'ms' || r.ratio === 0) return x(r.ratio);
  const [less, more] = /\bCPU\b/.test(r.step) ? ['less', 'more'] : ['faster', 'slower'];
  return r.ratio <= 1
    ? `${x(r.ratio)}  (${(1 / r.ratio).toFixed(1)}x ${less})`
    : `${x(r.ratio)}  (${r.ratio.toFixed(1)}x ${more})`;
}

/** `stepWidth`: width of the first column, the same for every table of one report. */
/**
 * Export rows: cairn's qcow2 and raw exports and restic dump piped into the same uploader (raw),
 * all of the latest backup into the same S3 server. MB/s of the disk's logical size, and of the
 * bytes the object holds (what went over the wire). restic has no qcow2: its column stays empty there.
 */
function buildExportRows(e: ExportBench): Row[] {
  const ok = (r: ExportBench['cairnRaw']) => (r === undefined || r.error !== undefined ? undefined : r);
  const [q, c, r] = [ok(e.cairnQcow2), ok(e.cairnRaw), ok(e.resticRaw)];
  const disk = (x: typeof q) => (x === undefined ? undefined : mbPerSecond(x.diskBytes, x.wallMs));
  const wire = (x: typeof q) => (x === undefined ? undefined : mbPerSecond(x.objectBytes, x.wallMs));
  return [
    row('export qcow2', 'ms', q?.wallMs, undefined),
    row('export qcow2 disk rate', 'MB/s', disk(q), undefined),
    row('export qcow2 wire rate', 'MB/s', wire(q), undefined),
    row('export qcow2 object', 'bytes', q?.objectBytes, undefined),
    row('export raw', 'ms', c?.wallMs, r?.wallMs),
    row('export raw disk rate', 'MB/s', disk(c), disk(r)),
    row('export raw object', 'bytes', c?.objectBytes, r?.objectBytes),
  ];
}

/**
 * NBD rows: time to first byte (cairn: start of serve-nbd to the first 4 KiB read; restic: start of
 * restic dump to its first byte), then cairn alone: connect + first read, random 4 KiB read latency.
 */
function buildNbdRows(n: NbdBench): Row[] {
  return [
    row('nbd time to first byte', 'ms', n.firstByteMs, n.resticFirstByteMs),
    row('nbd server ready', 'ms', n.readyMs, undefined),
    row('nbd connect+first 4K', 'latency', n.connectReadMs, undefined),
    row('nbd 4K read p50 cold', 'latency', n.cold?.p50Ms, undefined),
    row('nbd 4K read p99 cold', 'latency', n.cold?.p99Ms, undefined),
    row('nbd 4K read p50 warm', 'latency', n.warm?.p50Ms, undefined),
    row('nbd 4K read p99 warm', 'latency', n.warm?.p99Ms, undefined),
  ];
}

/**
 * Files rows: a copy of a real tree backed up by both tools, full and incremental after a few small
 * edits (see file-bench.ts; the header line says how many). Their `ratio` is cairn / restic like
 * every row's; the table shows it inverted for times (see formatSpeedRatio).
 */
function buildFilesRows(f: FileBench): Row[] {
  const c = f.cairn;
  const r = f.restic;
  const rate = (t: FileBench['cairn']) => (t === undefined ? undefined : mbPerSecond(f.bytes, t.full.wallMs));
  return [
    row('files full backup', 'ms', c?.full.wallMs, r?.full.wallMs),
    row('files incremental', 'ms', c?.incremental.wallMs, r?.incremental.wallMs),
    row('files full rate', 'MB/s', rate(c), rate(r)),
    row('files CPU full', 'ms', c?.full.cpuMs, r?.full.cpuMs),
    row('files CPU incremental', 'ms', c?.incremental.cpuMs, r?.incremental.cpuMs),
    row('files peak RSS full', 'bytes', c?.full.peakRssBytes, r?.full.peakRssBytes),
    row('files peak RSS incr.', 'bytes', c?.incremental.peakRssBytes, r?.incremental.peakRssBytes),
    row('files stored (full)', 'bytes', c?.storedFullBytes, r?.storedFullBytes),
    row('files stored (incr.)', 'bytes', c?.storedIncrementalBytes, r?.storedIncrementalBytes),
    row('files read (incr.)', 'count', c?.incrementalFilesRead, r?.incrementalFilesRead),
    row('files reused (incr.)', 'count', c?.incrementalFilesReused, r?.incrementalFilesReused),
  ];
}

/**
 * The last column of the files table: for times restic / cairn (how many times faster Cairn is, or
 * how many times less CPU it used), for rates and sizes cairn / restic as in the other tables.
 */
function formatSpeedRatio(r: Row): string {
  if (r.ratio === null) return '-';
  const x = (v: number): string => `${v.toFixed(v >= 10 ? 1 : 2)}x`;
  if (r.unit !== 'ms') return x(r.ratio);
  return r.ratio === 0 ? '-' : x(1 / r.ratio);
}

function renderTable(
  rows: Row[],
  stepWidth: number,
  columns = ['step', 'cairn', 'restic', 'cairn/restic'],
  ratioCell: (r: Row) => string = formatRatio,
): string {
  const lines = [columns];
  for (const r of rows) lines.push([r.step, formatCell(r.unit, r.cairn), formatCell(r.unit, r.restic), ratioCell(r)]);
  const widths = [stepWidth, 12, 12];
  const line = (cols: string[]): string =>
    cols.map((c, i) => (i < widths.length ? c.padEnd(widths[i]!) : c)).join('').trimEnd();
  return lines.map(line).join('\n');
}

function reportField(report: Record<string, unknown> | null | undefined, key: string): number | null {
  const v = report?.[key];
  return typeof v === 'number' ? v : null;
}

// ---------------------------------------------------------------------------------------------
// Main

interface Preflight {
  resticVersion: string | null;
}

function preflight(options: Options, repoRoot: string): Preflight {
  const missing: string[] = [];
  if (!fs.existsSync(TIME_BIN)) missing.push(`${TIME_BIN} (GNU time) is missing; install it with: apt-get install time`);
  if (spawnSync('mke2fs', ['-V']).error) missing.push('mke2fs is missing; install it with: apt-get install e2fsprogs');
  if (spawnSync('du', ['--version']).error) missing.push('du is missing; install coreutils');
  let resticVersion: string | null = null;
  if (options.tools.includes('restic')) {
    resticVersion = toolVersion('restic', ['version']);
    if (resticVersion === null) {
      missing.push('restic is missing or does not run; install it with: apt-get install restic (or run with --only cairn)');
    }
  }
  if (options.tools.includes('cairn')) {
    const bin = path.join(repoRoot, 'bin', 'cairn.js');
    if (!fs.existsSync(bin)) missing.push(`the cairn CLI ${bin} does not exist yet; build it, or run with --only restic`);
  }
  if (missing.length > 0) throw new StepError(`cannot run the benchmark:\n  ${missing.join('\n  ')}`);
  return { resticVersion };
}

async function main(): Promise<number> {
  let options: Options | 'help';
  try {
    options = parseOptions(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`bench: ${err.message}\n\n${USAGE}`);
    return 2;
  }
  if (options === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  const opts = options;

  // dist/bench/bench.js -> repository root
  const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
  const { resticVersion } = preflight(opts, repoRoot);

  let createdWork = false;
  let work: string;
  if (opts.dir !== undefined) {
    createdWork = !fs.existsSync(opts.dir);
    fs.mkdirSync(opts.dir, { recursive: true });
    work = opts.dir;
    const leftovers = Object.values(WORK_NAMES).filter((n) => fs.existsSync(path.join(work, n)));
    if (leftovers.length > 0) {
      throw new StepError(`${work} holds ${leftovers.join(', ')} from an earlier run; remove them or choose another --dir`);
    }
  } else {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-bench-'));
    createdWork = true;
  }
  const jsonOut = opts.jsonOut ?? path.join(work, DEFAULT_JSON_NAME);

  const cleanup = (): void => {
    if (opts.keep) return;
    for (const name of Object.values(WORK_NAMES)) fs.rmSync(path.join(work, name), { recursive: true, force: true });
    if (createdWork && fs.readdirSync(work).length === 0) fs.rmdirSync(work);
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    runningChild?.kill(signal);
    log(`${signal}: cleaning up ${work}`);
    cleanup();
    process.exit(128 + (os.constants.signals[signal] ?? 1));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    return await runBenchmark(opts, repoRoot, work, jsonOut, resticVersion);
  } finally {
    cleanup();
    if (opts.keep) log(`kept everything in ${work}`);
  }
}

async function runBenchmark(
  opts: Options,
  repoRoot: string,
  work: string,
  jsonOut: string,
  resticVersion: string | null,
): Promise<number> {
  const image = path.join(work, WORK_NAMES.image);
  const timeDir = path.join(work, WORK_NAMES.time);
  fs.mkdirSync(timeDir);
  log(`work directory ${work}`);
  const loadStart = os.loadavg()[0]!;
  if (loadStart > os.cpus().length / 2) {
    log(`warning: load average ${loadStart.toFixed(1)} on ${os.cpus().length} cpus; other work will skew the times`);
  }

  const buildStart = performance.now();
  const tree = await buildImage(image, path.join(work, WORK_NAMES.tree), opts, work);
  const imageAllocated = allocatedSize(image);
  log(`image built in ${formatSeconds(performance.now() - buildStart)}: ${formatBytes(opts.sizeBytes)}, ${formatBytes(imageAllocated)} allocated`);

  // Untimed; also brings the whole image into the page cache before either tool reads it.
  log('hashing the image and mapping its used blocks');
  const original = await scanFile(image, true);

  const subjects: Partial<Record<Tool, Subject>> = {};
  const runs: Partial<Record<Tool, ToolRun>> = {};
  if (opts.tools.includes('cairn')) {
    subjects.cairn = cairnSubject(work, repoRoot, image, opts, timeDir, localPlace(path.join(work, WORK_NAMES.cairnVault)));
    runs.cairn = { tool: 'cairn', version: null };
  }
  if (opts.tools.includes('restic')) {
    subjects.restic = resticSubject(work, image, timeDir, localPlace(path.join(work, WORK_NAMES.resticRepo)));
    runs.restic = { tool: 'restic', version: resticVersion };
  }
  const each = async (what: string, fn: (subject: Subject, run: ToolRun) => Promise<void>): Promise<void> => {
    for (const tool of ['cairn', 'restic'] as const) {
      const subject = subjects[tool];
      if (subject !== undefined) await step(runs[tool], what, (run) => fn(subject, run));
    }
  };

  await each('init', (s) => s.init());
  await each('full backup', async (s, run) => {
    run.full = await s.backup('full');
  });

  // CBT: a qcow2 copy of the unmodified image, backed up through NBD into a vault of its own. It
  // runs before the S3 server starts, so that server's daemons do not share the CPUs with it.
  const qcow2 = path.join(work, WORK_NAMES.qcow2);
  let cbt: CbtRun | undefined;
  let cbtSubject: Subject | undefined;
  /** Why the CBT section did not run. */
  let cbtNote: string | undefined;
  if (opts.skipCbt) {
    cbtNote = 'skipped (--skip-cbt)';
  } else if (!opts.tools.includes('cairn')) {
    cbtNote = 'skipped (--only restic)';
  } else {
    const missing = missingQemuTool();
    if (missing !== undefined) {
      cbtNote = `skipped: ${missing} not found (${QEMU_INSTALL_HINT})`;
    } else {
      cbt = { tool: 'cairn', qemuVersion: qemuVersion() };
      const vault = localPlace(path.join(work, WORK_NAMES.cairnCbtVault));
      cbtSubject = cairnSubject(work, repoRoot, qcow2, opts, timeDir, vault, 'cbt');
    }
  }
  if (cbtNote !== undefined) log(`cbt ${cbtNote}`);
  const cbtStep = (what: string, fn: (run: CbtRun, subject: Subject) => Promise<void>): Promise<void> =>
    step(cbt, what, (run) => fn(run, cbtSubject!));
  await cbtStep('CBT: converting the image to qcow2 (untimed)', async (run) => {
    run.qcow2 = await convertToQcow2(image, qcow2);
    log(`cairn: ${WORK_NAMES.qcow2} converted in ${formatSeconds(run.qcow2.convertMs)}, ${formatBytes(run.qcow2.allocatedBytes)} allocated`);
  });
  await cbtStep('CBT vault init', (_run, s) => s.init());
  await cbtStep('CBT full backup (qcow2 through NBD)', async (run, s) => {
    run.full = cbtBackupStep(await s.backup('full'));
  });

  // S3: the same image into buckets on one local server, between the local full and incremental
  // backups so the image is in the same state for both; the server is stopped before the restores.
  let s3: S3Bench | undefined;
  /** Why the S3 section did not run (skipped, or the server did not start). */
  let s3Note: string | undefined;
  let s3Failed = false;
  const s3Subjects: Partial<Record<Tool, Subject>> = {};
  const s3Runs: Partial<Record<Tool, S3Run>> = {};
  if (opts.skipS3) {
    s3Note = 'skipped (--skip-s3)';
  } else if (!s3ServerAvailable()) {
    s3Note = `skipped: Ceph radosgw is not installed (${S3_INSTALL_HINT})`;
    log(`S3 section ${s3Note}`);
  } else {
    try {
      s3 = await startS3(opts.tools, imageAllocated);
    } catch (err) {
      s3Failed = true;
      s3Note = `FAILED: the S3 server did not start: ${(err as Error).message}`;
      log(`S3 section ${s3Note}`);
    }
  }
  const eachS3 = async (what: string, fn: (subject: Subject, run: S3Run, s3: S3Bench) => Promise<void>): Promise<void> => {
    if (s3 === undefined) return;
    const server = s3;
    for (const tool of ['cairn', 'restic'] as const) {
      const subject = s3Subjects[tool];
      const run = s3Runs[tool];
      if (subject === undefined || run === undefined || run.error !== undefined) continue;
      await step(run, what, (r) => fn(subject, r, server));
      if (run.error !== undefined && server.output.length > 0) {
        log(`last lines of the S3 server's daemons:\n${server.output.join('\n')}`);
      }
    }
  };

  let changes: ChangePlan;
  let modified: ImageScan;
  let exportBench: ExportBench | undefined;
  /** Why the export section did not run. */
  let exportNote: string | undefined;
  try {
    if (s3 !== undefined) {
      if (opts.tools.includes('cairn')) {
        s3Subjects.cairn = cairnSubject(work, repoRoot, image, opts, timeDir, s3Place(s3, 'cairn'));
        s3Runs.cairn = { tool: 'cairn', bucket: S3_BUCKETS.cairn };
      }
      if (opts.tools.includes('restic')) {
        s3Subjects.restic = resticSubject(work, image, timeDir, s3Place(s3, 'restic'));
        s3Runs.restic = { tool: 'restic', bucket: S3_BUCKETS.restic };
      }
    }
    await eachS3('S3 init', async (s, run, server) => {
      server.proxy.resetCounts();
      await s.init();
      run.initRequests = { ...server.proxy.counts };
    });
    await eachS3('S3 full backup', async (s, run, server) => {
      run.full = await measureS3Backup(server, s, run.tool, 'full');
    });

    log(`modifying ${CHANGE_FRACTION * 100} % of the image (seed ${opts.seed})`);
    changes = modifyImage(image, opts.sizeBytes, original.usedBlocks!, new SeededRandom(opts.seed));
    modified = await scanFile(image, false);
    const plan = changes;
    await cbtStep('CBT: the same writes into the qcow2 (qemu-io), then qemu-img compare (untimed)', async (run) => {
      const patterns = path.join(work, WORK_NAMES.cbtPatterns);
      const writeMs = await writeChangesToQcow2(image, qcow2, plan, patterns);
      if (!opts.keep) fs.rmSync(patterns, { recursive: true, force: true });
      const start = performance.now();
      const difference = await compareQcow2(qcow2, image);
      const compareMs = performance.now() - start;
      run.change = { writes: plan.offsets.length, bytesWritten: plan.bytesWritten, writeMs, compareMs, identical: difference === null };
      if (difference !== null) throw new StepError(`the qcow2 is NOT identical to the modified raw image: ${difference}`);
      log(`cairn: ${plan.offsets.length} writes in ${formatSeconds(writeMs)}; qcow2 identical to the raw image (compare ${formatSeconds(compareMs)})`);
    });

    await each('incremental backup', async (s, run) => {
      run.incremental = await s.backup('incremental');
    });
    await cbtStep('CBT incremental backup (dirty bitmap)', async (run, s) => {
      run.incremental = cbtBackupStep(await s.backup('incremental'));
      if (run.incremental.changeDetection !== 'bitmap') {
        log(`WARNING: the CBT incremental found changes by '${run.incremental.changeDetection}', not by the dirty bitmap`);
      }
    });
    await eachS3('S3 incremental backup', async (s, run, server) => {
      run.incremental = await measureS3Backup(server, s, run.tool, 'incremental');
    });
  } finally {
    if (s3 !== undefined) {
      log('stopping the S3 server');
      await stopS3(s3);
    }
  }
  // Export: the latest backups (of the modified image) as images into an S3 server of the
  // section's own, started once the backup section's server is gone (see export-bench.ts).
  // Both sections read the latest backup of each tool: Cairn's by id, restic's latest snapshot.
  const cairnId = runs.cairn?.incremental?.report?.id;
  const latestCairn =
    typeof cairnId === 'string'
      ? {
          file: process.execPath,
          args: [path.join(repoRoot, 'bin', 'cairn.js')],
          env: childEnv({ CAIRN_PASSPHRASE: PASSPHRASE, CAIRN_STATE_DIR: path.join(work, WORK_NAMES.cairnState) }),
          vault: path.join(work, WORK_NAMES.cairnVault),
          backupId: cairnId,
        }
      : undefined;
  const latestRestic =
    runs.restic?.incremental !== undefined
      ? {
          args: ['--repo', path.join(work, WORK_NAMES.resticRepo), '--cache-dir', path.join(work, WORK_NAMES.resticCache), '-q'],
          env: childEnv({ RESTIC_PASSWORD: PASSPHRASE }),
          imagePath: image,
        }
      : undefined;
  if (opts.skipExport) exportNote = 'skipped (--skip-export)';
  else if (!s3ServerAvailable()) exportNote = `skipped: Ceph radosgw is not installed (${S3_INSTALL_HINT})`;
  else {
    try {
      exportBench = await runExportBench(
        {
          cairn: latestCairn,
          restic: latestRestic,
          log,
        },
        opts.sizeBytes,
      );
    } catch (err) {
      exportNote = `FAILED: ${(err as Error).message.split('\n')[0]}`;
      log(`export section ${exportNote}`);
    }
  }
  // NBD: instant recovery of the same backup (see nbd-bench.ts).
  let nbdBench: NbdBench | undefined;
  const nbdNote = opts.skipNbd ? 'skipped (--skip-nbd)' : undefined;
  if (!opts.skipNbd) {
    nbdBench = await runNbdBench({
      cairn: latestCairn,
      restic: latestRestic,
      socket: path.join(work, 'nbd.sock'),
      seed: opts.seed,
      log,
    });
  }
  if (!opts.skipRestore) {
    await each('restore', async (s, run) => {
      run.restore = await measureRestore(s, modified.sha256, opts.keep);
      if (!run.restore.identical) {
        log(`${run.tool}: restored image differs from the source (sha256 ${run.restore.sha256}, expected ${modified.sha256})`);
      }
    });
  }
  // Files: file-system backups of a copy of a real tree (see file-bench.ts), last, so its copy
  // does not share the page cache with the image's steps; its work directory goes right after.
  let filesBench: FileBench | undefined;
  /** Why the files section did not run, or how it failed. */
  let filesNote: string | undefined;
  let filesFailed = false;
  if (opts.skipFiles) filesNote = 'skipped (--skip-files)';
  else if (!fs.statSync(opts.filesSrc, { throwIfNoEntry: false })?.isDirectory()) {
    filesNote = `skipped: ${opts.filesSrc} is not a directory (choose another with --files-src)`;
    log(`files ${filesNote}`);
  } else {
    const filesDir = path.join(work, WORK_NAMES.files);
    try {
      filesBench = await runFileBench({
        src: opts.filesSrc,
        dir: filesDir,
        edits: FILES_EDITS,
        tools: opts.tools,
        log: (s) => log(`files: ${s}`),
      });
    } catch (err) {
      filesFailed = true;
      filesNote = `FAILED: ${(err as Error).message.split('\n')[0]}`;
      log(`files section failed:\n${(err as Error).message}`);
    } finally {
      if (!opts.keep) fs.rmSync(filesDir, { recursive: true, force: true });
    }
  }

  const rows = buildRows(runs.cairn, runs.restic, s3Runs.cairn, s3Runs.restic);
  const cbtRows = cbt === undefined ? [] : buildCbtRows(cbt, runs.restic);
  const targets = cbt === undefined ? [] : cbtTargets(cbt, runs.restic);
  const cbtNotBitmap = cbt?.incremental !== undefined && cbt.incremental.changeDetection !== 'bitmap';
  const loadEnd = os.loadavg()[0]!;
  const header = [
    `cairn bench  ${new Date().toISOString()}  node ${process.version}  ${resticVersion ?? 'restic not run'}  ${os.cpus().length} cpus  ${formatBytes(os.totalmem())} RAM`,
    `load         1-minute load average ${loadStart.toFixed(1)} at start, ${loadEnd.toFixed(1)} at end`,
    `image        ${(opts.sizeBytes / GiB).toFixed(2)} GiB (${opts.sizeBytes} bytes) ext4, ${formatBytes(imageAllocated)} allocated`,
    `used         ${formatBytes(tree.bytes)} (${tree.bytes} bytes, du -sb) in ${tree.files} files from ${tree.sources.join(', ')}`,
    `changed      ${changes.blocks} blocks x ${changes.blockSize / KiB} KiB at 4 KiB-aligned offsets = ${formatBytes(changes.bytesWritten)} (seed ${opts.seed})`,
  ];
  if (cacheDropped !== undefined) {
    header.push(
      cacheDropped
        ? 'restores    page cache dropped before each (both tools read their store cold)'
        : 'restores    page cache NOT dropped (not root): the first tool to restore pays for reclaim',
    );
  }
  if (runs.cairn !== undefined) {
    const c = runs.cairn;
    const f = c.full?.report;
    const i = c.incremental?.report;
    const fmt = (v: number | null): string => (v === null ? '-' : formatBytes(v));
    header.push(
      `cairn        full: read ${fmt(reportField(f, 'bytesRead'))}, stored ${fmt(reportField(f, 'bytesStored'))}; ` +
        `incremental (${String(i?.kind ?? '-')}): read ${fmt(reportField(i, 'bytesRead'))}, stored ${fmt(reportField(i, 'bytesStored'))}` +
        (opts.chunkSize !== undefined ? `; chunk size ${opts.chunkSize}` : ''),
    );
  }
  if (runs.restic !== undefined) {
    const r = runs.restic;
    const fmt = (v: number | null): string => (v === null ? '-' : formatBytes(v));
    header.push(
      `restic       full: added ${fmt(reportField(r.full?.report, 'data_added'))}; incremental: added ${fmt(reportField(r.incremental?.report, 'data_added'))}`,
    );
  }
  if (s3 !== undefined) {
    header.push(
      `s3           Ceph radosgw (${s3.version ?? 'version unknown'}), data in RAM (memstore, ${formatBytes(s3.memoryBytes)}), ` +
        'requests counted by one forwarding proxy',
    );
    for (const r of Object.values(s3Runs)) {
      const kinds = (c: RequestCounts | undefined): string =>
        c === undefined
          ? '-'
          : `${totalRequests(c)} requests (${Object.entries(c).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`).join(', ') || 'none'})`;
      const cpu = (st: S3BackupStep): string =>
        `server CPU ${st.serverCpuMs === null ? '-' : formatSeconds(st.serverCpuMs)}, proxy CPU ${formatSeconds(st.proxyCpuMs)}`;
      const full = r.full === undefined ? '-' : `${kinds(r.full.requests)}, ${r.full.bucketObjects} objects, ${cpu(r.full)}`;
      header.push(`s3 ${r.tool.padEnd(10)}full: ${full}; incremental: ${kinds(r.incremental?.requests)}`);
    }
  } else if (s3Note !== undefined) {
    header.push(`s3           ${s3Note.split('\n')[0]}`);
  }
  if (cbt !== undefined) {
    const fmt = (v: number | null | undefined): string => (v === null || v === undefined ? '-' : formatBytes(v));
    const q = cbt.qcow2;
    const ch = cbt.change;
    header.push(
      `cbt          qemu ${cbt.qemuVersion ?? 'version unknown'}; ${WORK_NAMES.qcow2} ${q === undefined ? '-' : `${fmt(q.allocatedBytes)} allocated`} ` +
        `(qemu-img convert, untimed); change: ` +
        (ch === undefined
          ? '-'
          : `${ch.writes} qemu-io writes, qemu-img compare ${ch.identical ? 'identical' : 'DIFFERENT'}`),
      `cbt cairn    full (${cbt.full?.changeDetection ?? '-'}): read ${fmt(reportField(cbt.full?.report, 'bytesRead'))}, ` +
        `stored ${fmt(reportField(cbt.full?.report, 'bytesStored'))}; incremental (${cbt.incremental?.changeDetection ?? '-'}): ` +
        `read ${fmt(reportField(cbt.incremental?.report, 'bytesRead'))}, dirty ${fmt(cbt.incremental?.dirtyBytes)}, ` +
        `stored ${fmt(reportField(cbt.incremental?.report, 'bytesStored'))}`,
    );
  } else if (cbtNote !== undefined) {
    header.push(`cbt          ${cbtNote}`);
  }
  if (filesBench !== undefined) {
    const f = filesBench;
    header.push(
      `files        copy of ${f.src}: ${f.files} files, ${formatBytes(f.bytes)} (${f.bytes} bytes, du -sb); ` +
        `${f.edits} files edited (${f.editBytes} bytes each) before each of ${f.rounds} incrementals (the median is shown)`,
    );
  }
  const failures: { label: string; error: string }[] = [
    ...Object.values(runs).map((r) => ({ label: r.tool, error: r.error })),
    ...Object.values(s3Runs).map((r) => ({ label: `${r.tool} S3`, error: r.error })),
    ...(cbt === undefined ? [] : [{ label: 'cairn CBT', error: cbt.error }]),
  ].filter((f): f is { label: string; error: string } => f.error !== undefined);
  const mismatches = Object.values(runs).filter((r) => r.restore !== undefined && !r.restore.identical);

  const filesRows = filesBench === undefined ? [] : buildFilesRows(filesBench);
  const stepWidth = Math.max(24, ...[...rows, ...cbtRows, ...filesRows].map((r) => r.step.length + 2));
  process.stdout.write(`${header.join('\n')}\n\n${renderTable(rows, stepWidth)}\n`);
  if (cbt !== undefined) {
    const table = renderTable(cbtRows, stepWidth, ['CBT: qcow2 via NBD', 'cairn', 'restic raw', 'cairn/restic']);
    process.stdout.write(`\n${table}\n${targets.map((t) => `target: ${formatTarget(t)}`).join('\n')}\n`);
    if (cbtNotBitmap) {
      process.stdout.write(
        `\nWARNING: the CBT incremental found changes by '${cbt.incremental!.changeDetection}', not by the dirty bitmap; ` +
          'its rows do not measure changed-block tracking\n',
      );
    }
  }
  const exportRows = exportBench === undefined ? [] : buildExportRows(exportBench);
  if (exportRows.length > 0) {
    process.stdout.write(`\n${renderTable(exportRows, stepWidth, ['export to S3', 'cairn', 'restic dump', 'cairn/restic'])}\n`);
    for (const r of [exportBench?.cairnQcow2, exportBench?.cairnRaw, exportBench?.resticRaw]) if (r?.error) process.stdout.write(`export FAILED: ${r.error.split('\n')[0]}\n`);
  } else if (exportNote !== undefined) {
    process.stdout.write(`\nexport       ${exportNote}\n`);
  }
  const nbdRows = nbdBench === undefined ? [] : buildNbdRows(nbdBench);
  if (nbdRows.length > 0) {
    process.stdout.write(`\n${renderTable(nbdRows, stepWidth, ['NBD instant recovery', 'cairn', 'restic dump', 'cairn/restic'])}\n`);
    process.stdout.write('restic has no block export (restic mount is FUSE, file level): only its dump-to-first-byte is shown\n');
    if (nbdBench?.error) process.stdout.write(`nbd FAILED: ${nbdBench.error.split('\n')[0]}\n`);
  } else if (nbdNote !== undefined) {
    process.stdout.write(`\nnbd          ${nbdNote}\n`);
  }
  if (filesRows.length > 0) {
    const columns = ['file-system backup', 'cairn', 'restic', 'restic/cairn time, cairn/restic size'];
    process.stdout.write(`\n${renderTable(filesRows, stepWidth, columns, formatSpeedRatio)}\n`);
  } else if (filesNote !== undefined) {
    process.stdout.write(`\nfiles        ${filesNote}\n`);
  }
  for (const f of failures) {
    process.stdout.write(`\n${f.label} FAILED: ${f.error.split('\n')[0]}\n`);
    log(`${f.label} failed:\n${f.error}`);
  }
  if (s3Failed) process.stdout.write(`\nS3 section ${s3Note!.split('\n')[0]}\n`);
  for (const r of mismatches) process.stdout.write(`\n${r.tool} restore is NOT identical to the modified image\n`);

  const result = {
    date: new Date().toISOString(),
    host: {
      node: process.version,
      platform: `${os.platform()} ${os.release()}`,
      cpus: os.cpus().length,
      memoryBytes: os.totalmem(),
      loadAverage: { start: loadStart, end: loadEnd },
    },
    options: {
      sizeBytes: opts.sizeBytes,
      usedBytes: opts.usedBytes,
      tools: opts.tools,
      chunkSize: opts.chunkSize ?? null,
      skipRestore: opts.skipRestore,
      seed: opts.seed,
      skipS3: opts.skipS3,
      skipCbt: opts.skipCbt,
      skipExport: opts.skipExport,
      skipNbd: opts.skipNbd,
      skipFiles: opts.skipFiles,
      filesSrc: opts.filesSrc,
    },
    image: {
      sizeBytes: opts.sizeBytes,
      allocatedBytes: imageAllocated,
      tree,
      sha256: original.sha256,
      modifiedSha256: modified.sha256,
      changes: { blocks: changes.blocks, blockSize: changes.blockSize, bytesWritten: changes.bytesWritten },
    },
    runs,
    s3: {
      server: s3 === undefined ? null : { radosgw: s3.version, memoryBytes: s3.memoryBytes, buckets: S3_BUCKETS },
      note: s3Note ?? null,
      runs: s3Runs,
    },
    cbt: {
      note: cbtNote ?? null,
      qcow2: cbt === undefined ? null : WORK_NAMES.qcow2,
      run: cbt ?? null,
      targets,
    },
    export: { note: exportNote ?? null, runs: exportBench ?? null },
    nbd: { note: nbdNote ?? null, run: nbdBench ?? null },
    files: { note: filesNote ?? null, run: filesBench ?? null },
    rows: [...rows, ...cbtRows, ...exportRows, ...nbdRows, ...filesRows],
  };
  fs.writeFileSync(jsonOut, `${JSON.stringify(result, null, 2)}\n`);
  process.stdout.write(`\nresults as JSON: ${jsonOut}\n`);

  return failures.length > 0 || mismatches.length > 0 || s3Failed || filesFailed ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof StepError || err instanceof UsageError) {
      process.stderr.write(`bench: ${err.message}\n`);
    } else {
      process.stderr.write(`bench: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    }
    process.exitCode = 1;
  },
);
