/**
 * Cairn against restic on a real folder (a program, not a test): a copy of a tree (default
 * /usr/lib), full backup, a few small edits, incremental backup; both tools on the same copy in the
 * same state, page cache warm for both (the copy is read again before every timed run). Prints a
 * table with the ratio per row (restic time / Cairn time: above 1 means Cairn is faster) and the
 * stored sizes.
 *
 *   npm run build && node dist/bench/file-bench.js [--src /usr/lib] [--dir /var/tmp/fb] [--edits 10] [--keep]
 *
 * As a module it is the "files" section of bench.ts: runFileBench measures and returns the numbers,
 * and prints nothing but progress through `log`.
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const FILE_BENCH_USAGE = 'usage: node dist/bench/file-bench.js [--src DIR (default /usr/lib)] [--dir WORK] [--edits N (default 10)] [--rounds N (default 3)] [--keep]\n';
/** Incremental rounds unless asked otherwise: one run of each tool varies by a second or more here. */
export const FILE_BENCH_ROUNDS = 3;
const PASSPHRASE = 'bench-pass';
const TIME_BIN = '/usr/bin/time';
/** Files at most this large are never edited: the edit lands in the middle of a file. */
const EDIT_MIN_SIZE = 4096;
const EDIT_BYTES = 16;
const STDERR_TAIL = 64 * 1024;

/** Every name runFileBench creates in its work directory. */
export const FILE_BENCH_NAMES = {
  tree: 'tree',
  vault: 'vault',
  state: 'state',
  resticRepo: 'restic-repo',
  resticCache: 'restic-cache',
  time: 'gnu-time',
} as const;

export type FileBenchTool = 'cairn' | 'restic';

export interface FileBenchOptions {
  /** The tree to copy (`cp -a`); it is only read. */
  src: string;
  /**
   * Work directory, created if missing; it must not hold any of FILE_BENCH_NAMES yet and must not
   * lie inside `src`. runFileBench leaves everything it made there; the caller removes it.
   */
  dir: string;
  /** How many files get one small in-place edit before each incremental backup. */
  edits: number;
  /**
   * Incremental rounds (FILE_BENCH_ROUNDS unless set): each edits `edits` files and backs up with
   * every tool, the tools taking turns to go first; the median round is reported.
   */
  rounds?: number;
  tools: FileBenchTool[];
  /** Progress lines; the results are only returned. */
  log: (s: string) => void;
}

/** What one backup run cost. */
export interface FileBackupCost {
  /** From spawning the process to its exit. */
  wallMs: number;
  /** User plus system CPU time of the child, from GNU time; null without it. */
  cpuMs: number | null;
  /** Peak resident set of the child, from GNU time; null without it. */
  peakRssBytes: number | null;
}

export interface FileBenchToolResult {
  full: FileBackupCost;
  /** The incremental of the median round by wall time. */
  incremental: FileBackupCost;
  /** Every round's incremental, in order. */
  incrementalRounds: FileBackupCost[];
  /** `du -sb` of the vault or repository after the full backup (init included). */
  storedFullBytes: number;
  /** What an incremental added to `du -sb`: the median of the rounds. */
  storedIncrementalBytes: number;
  storedIncrementalRounds: number[];
  /**
   * Files the median incremental read again, and files it took over from its parent unread. Cairn:
   * filesRead / filesReused of its --json; restic: files_new + files_changed / files_unmodified of
   * its summary. null when the tool did not report them.
   */
  incrementalFilesRead: number | null;
  incrementalFilesReused: number | null;
  /** What the tool reported for each backup: Cairn's --json object, restic's --json summary. */
  fullReport: Record<string, unknown> | null;
  incrementalReport: Record<string, unknown> | null;
}

export interface FileBench {
  src: string;
  /** Regular files in the copy, and its apparent size (`du -sb`), before the edits. */
  files: number;
  bytes: number;
  edits: number;
  /** Incremental rounds run. */
  rounds: number;
  /** Bytes overwritten in each edited file. */
  editBytes: number;
  cairn?: FileBenchToolResult;
  restic?: FileBenchToolResult;
}

/** A command of the file bench failed, or its work directory cannot be used; the message says which and why. */
export class FileBenchError extends Error {
  override name = 'FileBenchError';
}

interface Command {
  file: string;
  args: string[];
  env: NodeJS.ProcessEnv;
}

interface Measured extends FileBackupCost {
  stdout: string;
}

/** One tool's runs: init, and a backup of the tree that reports what it did. */
interface Subject {
  store: string;
  init: Command;
  backup: Command;
  /** The tool's report in a backup's stdout, and from it the files read and reused (null if absent). */
  parse(stdout: string): { report: Record<string, unknown> | null; filesRead: number | null; filesReused: number | null };
}

/**
 * Copies `src`, backs it up with each tool, edits `edits` files in place, backs it up again, and
 * returns the times and stored sizes. Throws FileBenchError when a command fails (nothing is
 * returned then); the work directory keeps what was made so far.
 */
export async function runFileBench(opts: FileBenchOptions): Promise<FileBench> {
  const src = path.resolve(opts.src);
  const dir = path.resolve(opts.dir);
  if (!Number.isInteger(opts.edits) || opts.edits < 0) throw new FileBenchError(`edits must be a whole number >= 0, not ${opts.edits}`);
  const rounds = opts.rounds ?? FILE_BENCH_ROUNDS;
  if (!Number.isInteger(rounds) || rounds < 1) throw new FileBenchError(`rounds must be a whole number >= 1, not ${rounds}`);
  if (!fs.statSync(src, { throwIfNoEntry: false })?.isDirectory()) throw new FileBenchError(`${src} is not a directory`);
  const fromSrc = path.relative(src, dir);
  const outside = fromSrc === '..' || fromSrc.startsWith(`..${path.sep}`) || path.isAbsolute(fromSrc);
  if (!outside) {
    throw new FileBenchError(`the work directory ${dir} lies inside ${src}, which would copy it into itself; choose another one`);
  }
  fs.mkdirSync(dir, { recursive: true });
  const leftovers = Object.values(FILE_BENCH_NAMES).filter((n) => fs.existsSync(path.join(dir, n)));
  if (leftovers.length > 0) {
    throw new FileBenchError(`${dir} holds ${leftovers.join(', ')} from an earlier run; remove them or choose another directory`);
  }
  const at = (name: keyof typeof FILE_BENCH_NAMES): string => path.join(dir, FILE_BENCH_NAMES[name]);
  const tree = at('tree');
  const timeDir = at('time');
  fs.mkdirSync(timeDir);

  await runChecked(opts.log, `copying ${src}`, { file: 'cp', args: ['-a', src, tree], env: process.env });
  opts.log('reading the copy once (page cache)');
  await readTree(tree);
  const bytes = apparentSize(tree);
  const files = regularFiles(tree).length;

  const env = childEnv({
    CAIRN_PASSPHRASE: PASSPHRASE,
    CAIRN_STATE_DIR: at('state'),
    RESTIC_PASSWORD: PASSPHRASE,
    RESTIC_CACHE_DIR: at('resticCache'),
  });
  const subjects: Partial<Record<FileBenchTool, Subject>> = {};
  if (opts.tools.includes('cairn')) subjects.cairn = cairnSubject(tree, at('vault'), env);
  if (opts.tools.includes('restic')) subjects.restic = resticSubject(tree, at('resticRepo'), env);
  const each = async (fn: (tool: FileBenchTool, s: Subject) => Promise<void>): Promise<void> => {
    for (const tool of ['cairn', 'restic'] as const) {
      const s = subjects[tool];
      if (s !== undefined) await fn(tool, s);
    }
  };

  await each(async (tool, s) => {
    await runChecked(opts.log, `${tool} init`, s.init);
  });
  const full: Partial<Record<FileBenchTool, { cost: Measured; stored: number }>> = {};
  await each(async (tool, s) => {
    const cost = await runMeasured(opts.log, `${tool} full backup`, s.backup, path.join(timeDir, `${tool}-full`), tree);
    full[tool] = { cost, stored: apparentSize(s.store) };
  });
  const incs: Partial<Record<FileBenchTool, { cost: Measured; stored: number }[]>> = {};
  for (let round = 1; round <= rounds; round++) {
    opts.log(`round ${round} of ${rounds}: editing ${opts.edits} files (${EDIT_BYTES} bytes each)`);
    edit(tree, opts.edits);
    // Taking turns: whichever goes second finds the edited files' metadata warmer.
    const order: FileBenchTool[] = round % 2 === 1 ? ['cairn', 'restic'] : ['restic', 'cairn'];
    for (const tool of order) {
      const s = subjects[tool];
      if (s === undefined) continue;
      const before = apparentSize(s.store);
      const cost = await runMeasured(opts.log, `${tool} incremental backup`, s.backup, path.join(timeDir, `${tool}-incremental-${round}`), tree);
      (incs[tool] ??= []).push({ cost, stored: apparentSize(s.store) - before });
    }
  }
  const out: FileBench = { src, files, bytes, edits: opts.edits, rounds, editBytes: EDIT_BYTES };
  await each(async (tool, s) => {
    const runs = incs[tool]!;
    const mid = [...runs].sort((a, b) => a.cost.wallMs - b.cost.wallMs)[Math.floor(runs.length / 2)];
    const stored = runs.map((r) => r.stored);
    const before = full[tool]!;
    const inc = s.parse(mid.cost.stdout);
    out[tool] = {
      full: costOf(before.cost),
      incremental: costOf(mid.cost),
      incrementalRounds: runs.map((r) => costOf(r.cost)),
      storedFullBytes: before.stored,
      storedIncrementalBytes: [...stored].sort((a, b) => a - b)[Math.floor(stored.length / 2)],
      storedIncrementalRounds: stored,
      incrementalFilesRead: inc.filesRead,
      incrementalFilesReused: inc.filesReused,
      fullReport: s.parse(before.cost.stdout).report,
      incrementalReport: inc.report,
    };
  });
  return out;
}

function costOf(m: Measured): FileBackupCost {
  return { wallMs: m.wallMs, cpuMs: m.cpuMs, peakRssBytes: m.peakRssBytes };
}

function cairnSubject(tree: string, vault: string, env: NodeJS.ProcessEnv): Subject {
  // dist/bench/file-bench.js -> bin/cairn.js of the repository
  const cli = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/cairn.js');
  return {
    store: vault,
    init: { file: process.execPath, args: [cli, 'vault', 'init', vault], env },
    backup: { file: process.execPath, args: [cli, 'backup', `dir://${tree}`, '--vault', vault, '--json'], env },
    parse(stdout) {
      const report = lastJsonLine(stdout, (v) => typeof v.id === 'string' && typeof v.kind === 'string');
      return { report, filesRead: numberField(report, 'filesRead'), filesReused: numberField(report, 'filesReused') };
    },
  };
}

function resticSubject(tree: string, repo: string, env: NodeJS.ProcessEnv): Subject {
  return {
    store: repo,
    init: { file: 'restic', args: ['init', '-r', repo, '-q'], env },
    backup: { file: 'restic', args: ['-r', repo, 'backup', tree, '-q', '--json'], env },
    parse(stdout) {
      const report = lastJsonLine(stdout, (v) => v.message_type === 'summary');
      const added = [numberField(report, 'files_new'), numberField(report, 'files_changed')];
      return {
        report,
        filesRead: added[0] === null || added[1] === null ? null : added[0] + added[1],
        filesReused: numberField(report, 'files_unmodified'),
      };
    },
  };
}

/** The last line of `stdout` that is a JSON object `accept` takes; null if there is none. */
function lastJsonLine(stdout: string, accept: (v: Record<string, unknown>) => boolean): Record<string, unknown> | null {
  for (const line of stdout.trim().split('\n').reverse()) {
    if (!line.trim().startsWith('{')) continue;
    try {
      const v = JSON.parse(line) as unknown;
      if (v !== null && typeof v === 'object' && accept(v as Record<string, unknown>)) return v as Record<string, unknown>;
    } catch {
      // not a JSON line
    }
  }
  return null;
}

function numberField(report: Record<string, unknown> | null, key: string): number | null {
  const v = report?.[key];
  return typeof v === 'number' ? v : null;
}

/**
 * The parent's environment without variables that would steer cairn or restic elsewhere (a
 * RESTIC_REPOSITORY or an AWS profile of the caller), plus `extra`.
 */
function childEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('CAIRN_') && !k.startsWith('RESTIC_') && !k.startsWith('AWS_')) env[k] = v;
  }
  return { ...env, ...extra };
}

/** Runs a command to its end; stdout is kept whole, stderr's last 64 KiB. */
function runProcess(cmd: Command): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; wallMs: number }> {
  return new Promise((resolve, reject) => {
    const stdout: Buffer[] = [];
    let stderr = '';
    const start = performance.now();
    let end = start;
    const child = spawn(cmd.file, cmd.args, { env: cmd.env, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.on('data', (c: Buffer) => stdout.push(c));
    child.stderr.on('data', (c: Buffer) => {
      stderr = (stderr + c.toString('utf8')).slice(-STDERR_TAIL);
    });
    child.on('exit', () => {
      end = performance.now();
    });
    child.on('error', (err) => reject(new FileBenchError(`cannot start ${cmd.file}: ${err.message}`, { cause: err })));
    child.on('close', (code, signal) => resolve({ code, signal, stdout: Buffer.concat(stdout).toString('utf8'), stderr, wallMs: end - start }));
  });
}

/** Runs a command that must succeed; not measured. */
async function runChecked(log: (s: string) => void, what: string, cmd: Command): Promise<void> {
  log(what);
  const r = await runProcess(cmd);
  if (r.code !== 0) throw failed(what, cmd, r);
}

/**
 * Runs a command that must succeed under GNU time (when /usr/bin/time exists): wall time, CPU time
 * and peak RSS of the child. A `sync` first, untimed, so writeback left by the previous step is not
 * charged to this one.
 */
/**
 * Runs a timed backup of `tree`, after reading the tree again (its metadata and data back in the
 * page cache: this machine pages out memory left untouched for a minute or so, and whichever tool
 * ran second would otherwise find the tree warmed by the first) and syncing (no writeback of an
 * earlier run's data during this one).
 */
async function runMeasured(log: (s: string) => void, what: string, cmd: Command, timeFile: string, tree: string): Promise<Measured> {
  log(what);
  await readTree(tree);
  spawnSync('sync');
  const timed = fs.existsSync(TIME_BIN);
  const run: Command = timed ? { ...cmd, file: TIME_BIN, args: ['-f', '%M %U %S', '-o', timeFile, cmd.file, ...cmd.args] } : cmd;
  const r = await runProcess(run);
  if (r.code !== 0) throw failed(what, cmd, r);
  return { wallMs: r.wallMs, ...(timed ? readTimeFile(timeFile) : { cpuMs: null, peakRssBytes: null }), stdout: r.stdout };
}

function failed(what: string, cmd: Command, r: { code: number | null; signal: NodeJS.Signals | null; stderr: string }): FileBenchError {
  const how = r.signal !== null ? `was killed by ${r.signal}` : `exited with status ${r.code}`;
  const stderr = r.stderr.trim();
  return new FileBenchError(`${what} failed: ${[cmd.file, ...cmd.args].join(' ')} ${how}${stderr ? `\n--- stderr ---\n${stderr}` : ''}`);
}

/**
 * Parses GNU time's `%M %U %S` line: peak RSS in KiB, user and system seconds (the last line: on
 * failure GNU time puts "Command exited with non-zero status N" before it).
 */
export function readTimeFile(timeFile: string): { cpuMs: number | null; peakRssBytes: number | null } {
  let text: string;
  try {
    text = fs.readFileSync(timeFile, 'utf8');
  } catch {
    return { cpuMs: null, peakRssBytes: null };
  }
  const lines = text.trim().split('\n');
  const [kib, user, sys] = (lines[lines.length - 1] ?? '').split(' ').map(Number);
  const known = (v: number | undefined): v is number => v !== undefined && Number.isFinite(v);
  return {
    peakRssBytes: known(kib) ? kib * 1024 : null,
    cpuMs: known(user) && known(sys) ? (user + sys) * 1000 : null,
  };
}

/**
 * Reads every file of the tree once (tar into a pipe that is drained: GNU tar skips reading file
 * contents when its archive is /dev/null itself).
 */
async function readTree(tree: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const child = spawn('tar', ['-cf', '-', '-C', path.dirname(tree), path.basename(tree)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stdout.resume();
    child.stderr.on('data', (c: Buffer) => {
      stderr = (stderr + c.toString('utf8')).slice(-STDERR_TAIL);
    });
    child.on('error', (err) => reject(new FileBenchError(`cannot start tar: ${err.message}`, { cause: err })));
    child.on('close', (code) =>
      code === 0 ? resolve() : reject(new FileBenchError(`reading ${tree} with tar failed (status ${code}): ${stderr.trim()}`)),
    );
  });
}

/** Apparent size of a directory tree in bytes (`du -sb`). */
function apparentSize(dir: string): number {
  const r = spawnSync('du', ['-sb', dir], { encoding: 'utf8' });
  if (r.error || r.status !== 0) throw new FileBenchError(`du -sb ${dir} failed: ${r.error?.message ?? r.stderr.trim()}`);
  return Number(r.stdout.split('\t')[0]);
}

/** Regular files under `dir` (symbolic links not followed), with their sizes. */
function regularFiles(dir: string): { path: string; size: number }[] {
  const out: { path: string; size: number }[] = [];
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) out.push({ path: p, size: fs.statSync(p).size });
    }
  };
  walk(dir);
  return out;
}

/** Overwrites 16 random bytes in the middle of `count` files larger than 4 KiB, picked evenly in path order. */
function edit(tree: string, count: number): void {
  if (count === 0) return;
  const files = regularFiles(tree)
    .filter((f) => f.size > EDIT_MIN_SIZE)
    .map((f) => f.path)
    .sort();
  if (files.length === 0) throw new FileBenchError(`${tree} holds no file larger than ${EDIT_MIN_SIZE} bytes to edit`);
  for (let i = 0; i < count; i++) {
    const p = files[Math.floor(((i + 0.5) * files.length) / count)]!;
    const fd = fs.openSync(p, 'r+');
    try {
      fs.writeSync(fd, randomBytes(EDIT_BYTES), 0, EDIT_BYTES, Math.floor(fs.fstatSync(fd).size / 2));
    } finally {
      fs.closeSync(fd);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The program

/** The table the program prints: times in seconds with restic/Cairn, throughput, stored sizes. */
function printTable(b: FileBench): void {
  const c = b.cairn!;
  const r = b.restic!;
  const MB = 1e6;
  const rows: [string, number, number][] = [
    ['full backup (s)', c.full.wallMs, r.full.wallMs],
    [`incremental after ${b.edits} edits (s, median of ${b.rounds})`, c.incremental.wallMs, r.incremental.wallMs],
  ];
  const rate = (ms: number): string => `${(b.bytes / MB / (ms / 1000)).toFixed(0)}, ${(b.files / (ms / 1000)).toFixed(0)}`;
  console.log(`tree: ${b.src}, ${b.files} files, ${(b.bytes / MB).toFixed(0)} MB; ${os.cpus().length} cores`);
  console.log('| row | Cairn | restic | restic/Cairn |');
  console.log('|---|---|---|---|');
  for (const [name, cm, rm] of rows) console.log(`| ${name} | ${(cm / 1000).toFixed(2)} | ${(rm / 1000).toFixed(2)} | ${(rm / cm).toFixed(2)}x |`);
  console.log(`| full: MB/s, files/s | ${rate(c.full.wallMs)} | ${rate(r.full.wallMs)} | |`);
  console.log(`| stored after full (MB) | ${(c.storedFullBytes / MB).toFixed(0)} | ${(r.storedFullBytes / MB).toFixed(0)} | |`);
  console.log(`| stored by incremental (MB, median) | ${(c.storedIncrementalBytes / MB).toFixed(2)} | ${(r.storedIncrementalBytes / MB).toFixed(2)} | |`);
  const each = (t: FileBenchToolResult) => t.incrementalRounds.map((x) => (x.wallMs / 1000).toFixed(2)).join(', ');
  const kb = (t: FileBenchToolResult) => t.storedIncrementalRounds.map((x) => (x / 1000).toFixed(0)).join(', ');
  console.log(`incremental rounds (s): Cairn ${each(c)}; restic ${each(r)}`);
  console.log(`stored by each incremental (kB): Cairn ${kb(c)}; restic ${kb(r)}`);
  const bytesRead = numberField(c.incrementalReport, 'bytesRead');
  console.log(
    `Cairn incremental: ${c.incrementalFilesRead ?? '-'} files read, ${c.incrementalFilesReused ?? '-'} reused, ` +
      `${bytesRead === null ? '-' : (bytesRead / MB).toFixed(1)} MB read`,
  );
}

async function main(): Promise<void> {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        src: { type: 'string', default: '/usr/lib' },
        dir: { type: 'string' },
        edits: { type: 'string', default: '10' },
        rounds: { type: 'string', default: String(FILE_BENCH_ROUNDS) },
        keep: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }));
  } catch (err) {
    process.stderr.write(`file-bench: ${(err as Error).message}\n${FILE_BENCH_USAGE}`);
    process.exit(2);
  }
  if (values.help) {
    process.stdout.write(FILE_BENCH_USAGE);
    return;
  }
  const work = values.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-file-bench-'));
  try {
    const result = await runFileBench({
      src: values.src!,
      dir: work,
      edits: Number(values.edits),
      rounds: Number(values.rounds),
      tools: ['cairn', 'restic'],
      log: (s) => process.stderr.write(`${s}...\n`),
    });
    printTable(result);
  } catch (err) {
    process.stderr.write(`${err instanceof FileBenchError ? err.message : err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  } finally {
    // A directory given with --dir is left as it is, as is everything with --keep.
    if (!values.keep && values.dir === undefined) fs.rmSync(work, { recursive: true, force: true });
  }
}

/** True when this file is the program node was started with, not a module imported by another. */
function isMain(): boolean {
  const entry = process.argv[1];
  if (entry === undefined) return false;
  try {
    return fs.realpathSync(entry) === fs.realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMain()) await main();
