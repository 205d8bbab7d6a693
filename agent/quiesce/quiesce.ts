import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, realpath } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Readable } from 'node:stream';
import { CairnError } from '../../shared/errors.js';
import { childEnv } from '../../shared/runtime/child-env.js';

/**
 * Quiesce for application-consistent backups: pre-freeze hooks (e.g. flush and lock a database), then
 * `fsfreeze -f` of the given mount points; the caller takes its snapshot; `thaw()` runs `fsfreeze -u`
 * (reverse order) and the post-thaw hooks.
 *
 * Invariants:
 * - quiesce() leaves nothing frozen when it reports crash_consistent or throws: it thaws what it froze.
 * - A frozen file system is thawed after freezeTimeoutMs even if this process hangs or dies: a detached
 *   bash watchdog reads a pipe from this process with that timeout, and thaws on timeout or end of file
 *   (the kernel closes the pipe when this process dies, however it dies).
 * - Only mount points are frozen. fsfreeze freezes whatever file system holds the directory it is given,
 *   so a directory that is not a mount point (a typo, an unmounted volume) would freeze its parent file
 *   system, often `/`; such a path is refused before anything is frozen.
 * - Post-thaw hooks run once, in thaw(), whenever quiesce() got past its option checks: a pre-freeze hook
 *   that failed half-way may have locked something that the post-thaw hook unlocks.
 * - Hook failures, freeze failures and a fired watchdog are warnings with crash_consistent, never
 *   exceptions: a backup without quiesce is still a backup.
 *
 * Times here are measured on the monotonic clock (performance.now), not through the Clock seam: they are
 * compared against a real timer in another process (the watchdog), which a fake clock could not move.
 */

export interface QuiesceOptions {
  /** Executables run before freezing (no shell; absolute or relative paths), in order. */
  preFreeze: string[];
  /** Executables run after thawing, in order; run whenever the pre-freeze phase started, even if it failed. */
  postThaw: string[];
  /** Time limit per hook (default 30 s): then its process group gets SIGTERM, 2 s later SIGKILL, and it counts as failed. */
  hookTimeoutMs?: number;
  /** Mount points to freeze with fsfreeze after the pre-freeze hooks succeeded. */
  freeze: string[];
  /** The longest a file system may stay frozen (default 60 s); a watchdog process thaws it after this even if this process hangs or dies. */
  freezeTimeoutMs?: number;
  /** Extra environment for the hooks (e.g. CAIRN_BACKUP_NAME); CAIRN_PHASE=pre-freeze|post-thaw is always set. */
  env?: Record<string, string>;
  log?: (message: string) => void;
}

export type Consistency = 'app_consistent' | 'crash_consistent';

export interface Quiesced {
  /** What quiesce achieved so far: app_consistent only when every pre-freeze hook and every freeze succeeded. */
  readonly achieved: Consistency;
  /** Warnings so far; thaw() adds its own. */
  readonly warnings: string[];
  /**
   * Thaws (fsfreeze -u, in reverse order), stops the watchdog, runs post-thaw hooks. Never throws;
   * idempotent (later calls return the first call's result). Returns the final consistency:
   * app_consistent only if achieved was, and the freeze was still held when thaw() was called (not
   * thawed early by the watchdog's timeout); post-thaw hooks do not change it (their failure is only a
   * warning). The warnings are all of them, quiesce()'s included.
   */
  thaw(): Promise<{ consistency: Consistency; warnings: string[] }>;
}

type HookPhase = 'pre-freeze' | 'post-thaw';

const DEFAULT_HOOK_TIMEOUT_MS = 30_000;
const DEFAULT_FREEZE_TIMEOUT_MS = 60_000;
/** Between SIGTERM and SIGKILL of a timed-out hook's process group. */
const HOOK_KILL_GRACE_MS = 2_000;
/** How much of a failed hook's stderr its warning quotes (the end, where the reason usually is). */
const STDERR_TAIL_BYTES = 2 * 1024;
/** How long to wait for a failed hook's stderr after it exited (a background child may hold it open). */
const STDERR_DRAIN_MS = 200;

/**
 * Runs the pre-freeze hooks, then freezes the mount points. Throws only a USAGE error for bad options
 * (before anything ran) or, for a bug, an INTERNAL error after thawing and running the post-thaw hooks.
 * The caller must call thaw() on the result, whatever `achieved` says.
 */
export async function quiesce(opts: QuiesceOptions): Promise<Quiesced> {
  const session = new QuiesceSession(
    opts,
    checkTimeout(opts.hookTimeoutMs, DEFAULT_HOOK_TIMEOUT_MS, 'hookTimeoutMs'),
    checkTimeout(opts.freezeTimeoutMs, DEFAULT_FREEZE_TIMEOUT_MS, 'freezeTimeoutMs'),
  );
  try {
    await session.start();
  } catch (err) {
    await session.thaw();
    throw new CairnError('INTERNAL', `quiesce failed unexpectedly (nothing is left frozen): ${describeError(err)}`, { cause: err });
  }
  return session;
}

class QuiesceSession implements Quiesced {
  achieved: Consistency = 'crash_consistent';
  readonly warnings: string[] = [];
  /** Mount points frozen by this session and not yet thawed, in freeze order. */
  private frozen: string[] = [];
  private watchdog: ThawWatchdog | undefined;
  private thawed: Promise<{ consistency: Consistency; warnings: string[] }> | undefined;
  private readonly log: (message: string) => void;

  constructor(
    private readonly opts: QuiesceOptions,
    private readonly hookTimeoutMs: number,
    private readonly freezeTimeoutMs: number,
  ) {
    this.log = opts.log ?? (() => undefined);
  }

  async start(): Promise<void> {
    if (this.opts.preFreeze.length === 0 && this.opts.freeze.length === 0) {
      this.warn('nothing to quiesce: no pre-freeze hooks and no mount points to freeze');
      return;
    }
    for (const hook of this.opts.preFreeze) {
      const failure = await this.runPhaseHook(hook, 'pre-freeze');
      if (failure !== undefined) {
        this.warn(`${failure}; nothing was frozen, the backup is crash-consistent`);
        return;
      }
    }
    if (this.opts.freeze.length > 0 && !(await this.freezeAll())) return;
    this.achieved = 'app_consistent';
  }

  thaw(): Promise<{ consistency: Consistency; warnings: string[] }> {
    this.thawed ??= this.finish();
    return this.thawed;
  }

  private async finish(): Promise<{ consistency: Consistency; warnings: string[] }> {
    let consistency = this.achieved;
    try {
      const watchdog = this.watchdog;
      if (this.frozen.length > 0 && watchdog !== undefined) {
        const heldMs = watchdog.elapsedMs();
        const late = watchdog.expired();
        const { notFrozen } = await this.unfreezeAll();
        const timeout = `the freeze timeout of ${seconds(this.freezeTimeoutMs)} s`;
        if (notFrozen.length > 0) {
          consistency = 'crash_consistent';
          this.warn(
            `${notFrozen.join(', ')} ${notFrozen.length > 1 ? 'were' : 'was'} no longer frozen at thaw, ${seconds(heldMs)} s after the freeze began: ` +
              `the thaw watchdog had thawed ${notFrozen.length > 1 ? 'them' : 'it'} after ${timeout}; the backup is crash-consistent`,
          );
        } else if (late) {
          consistency = 'crash_consistent';
          this.warn(
            `thaw came ${seconds(heldMs)} s after the freeze began, past ${timeout}: ` +
              'the snapshot may postdate the watchdog\'s thaw, so the backup counts as crash-consistent',
          );
        }
      }
    } catch (err) {
      consistency = 'crash_consistent';
      this.warn(`thawing failed unexpectedly: ${describeError(err)}`);
    }
    for (const hook of this.opts.postThaw) {
      const failure = await this.runPhaseHook(hook, 'post-thaw');
      if (failure !== undefined) this.warn(failure);
    }
    return { consistency, warnings: [...this.warnings] };
  }

  /** Freezes every mount point, or none: on any failure it thaws what it froze and returns false. */
  private async freezeAll(): Promise<boolean> {
    let mounts: string[];
    try {
      mounts = await resolveMountPoints(this.opts.freeze);
    } catch (err) {
      this.warn(`${describeError(err)}; nothing was frozen, the backup is crash-consistent`);
      return false;
    }
    try {
      this.watchdog = await startThawWatchdog(mounts, this.freezeTimeoutMs);
    } catch (err) {
      this.warn(`cannot start the thaw watchdog (bash): ${describeError(err)}; nothing was frozen, the backup is crash-consistent`);
      return false;
    }
    for (const mount of mounts) {
      if (this.watchdog.expired()) break;
      const failure = await fsfreeze('--freeze', mount);
      if (failure !== undefined) {
        const undo = this.frozen.length > 0 ? `thawed ${this.frozen.join(', ')} again` : 'nothing was frozen';
        this.warn(`cannot freeze ${mount}: ${failure}; ${undo}, the backup is crash-consistent`);
        await this.unfreezeAll();
        return false;
      }
      this.frozen.push(mount);
      this.log(`froze ${mount}`);
    }
    if (this.watchdog.expired()) {
      this.warn(`freezing took longer than the freeze timeout of ${seconds(this.freezeTimeoutMs)} s; thawed again, the backup is crash-consistent`);
      await this.unfreezeAll();
      return false;
    }
    return true;
  }

  /**
   * Thaws what this session froze, newest first, then stops the watchdog. `notFrozen` lists the mount
   * points that were no longer frozen (the watchdog thawed them). If a thaw fails otherwise, the
   * watchdog is told nothing and so thaws everything at once itself.
   */
  private async unfreezeAll(): Promise<{ notFrozen: string[] }> {
    const notFrozen: string[] = [];
    let failed = false;
    for (const mount of [...this.frozen].reverse()) {
      const failure = await fsfreeze('--unfreeze', mount);
      if (failure === undefined) {
        this.log(`thawed ${mount}`);
      } else if (/Invalid argument/.test(failure)) {
        notFrozen.push(mount);
      } else {
        failed = true;
        this.warn(`cannot thaw ${mount}: ${failure}; the thaw watchdog retries now (or run: fsfreeze -u ${mount})`);
      }
    }
    this.frozen = [];
    this.watchdog?.stop(!failed);
    return { notFrozen };
  }

  private async runPhaseHook(hook: string, phase: HookPhase): Promise<string | undefined> {
    this.log(`${phase} hook ${hook}`);
    const env = childEnv({ ...this.opts.env, CAIRN_PHASE: phase });
    return runHook(hook, phase, env, this.hookTimeoutMs);
  }

  private warn(message: string): void {
    this.warnings.push(message);
    this.log(`warning: ${message}`);
  }
}

/**
 * Runs one hook without a shell in its own process group, stdin ignored. Resolves with undefined when it
 * exited 0, else with a message naming the hook, what went wrong and the end of its stderr. Never rejects.
 * After `timeoutMs` the group gets SIGTERM and, 2 s later, SIGKILL; the promise settles when the hook
 * itself has exited.
 */
function runHook(hook: string, phase: HookPhase, env: NodeJS.ProcessEnv, timeoutMs: number): Promise<string | undefined> {
  const name = `${phase} hook ${hook}`;
  return new Promise((settle) => {
    let child: ChildProcess;
    try {
      child = spawn(hook, [], { detached: true, stdio: ['ignore', 'ignore', 'pipe'], env });
    } catch (err) {
      settle(`${name} cannot run: ${describeError(err)}`);
      return;
    }
    const stderr = child.stderr as Readable;
    const tail = new TailBuffer(STDERR_TAIL_BYTES);
    stderr.on('data', (chunk: Buffer) => tail.push(chunk));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      signalGroup(child, 'SIGTERM');
      setTimeout(() => signalGroup(child, 'SIGKILL'), HOOK_KILL_GRACE_MS).unref();
    }, timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      stderr.destroy();
      settle(`${name} cannot run: ${describeError(err)}`);
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      const outcome = timedOut
        ? `timed out after ${seconds(timeoutMs)} s`
        : code === 0
          ? undefined
          : code !== null
            ? `failed with exit code ${code}`
            : `was killed by ${signal}`;
      if (outcome === undefined) {
        stderr.destroy();
        settle(undefined);
        return;
      }
      void drained(stderr, STDERR_DRAIN_MS).then(() => {
        const text = tail.text().trim();
        settle(`${name} ${outcome}${text ? `; stderr: ${text}` : ''}`);
      });
    });
  });
}

/**
 * The thaw watchdog: `$1` is the timeout in seconds, the rest are the mount points. Asked to stop
 * (SIGTERM, SIGINT, SIGHUP) it thaws first: systemd stops every process left in the agent's unit
 * with SIGTERM, also after the agent itself died, and a frozen file system must not outlive that.
 */
const WATCHDOG_SCRIPT =
  'timeout=$1; shift; trap \'for m in "$@"; do fsfreeze -u "$m" 2>/dev/null; done; exit 0\' TERM INT HUP; ' +
  'if read -r -t "$timeout" line && [ "$line" = thawed ]; then exit 0; fi; for m in "$@"; do fsfreeze -u "$m" 2>/dev/null; done';

export interface ThawWatchdog {
  readonly pid: number;
  /** Milliseconds since the watchdog's timer started. */
  elapsedMs(): number;
  /** True once the deadline has passed or the watchdog has exited on its own: it thaws, or has thawed, the mount points. */
  expired(): boolean;
  /** Ends the watchdog: with `thawed` it exits without touching anything, else it thaws the mount points at once. Idempotent. */
  stop(thawed: boolean): void;
}

/**
 * Starts a detached bash process (own session, so a signal to this process's group does not reach it)
 * that thaws `mounts` after `timeoutMs`, or as soon as the pipe from this process ends: when stop() is
 * called, or when this process dies. Neither the process nor the pipe keep this process alive.
 * Resolves once bash runs; rejects if it cannot start.
 */
export function startThawWatchdog(mounts: string[], timeoutMs: number): Promise<ThawWatchdog> {
  return new Promise((started, failed) => {
    const child = spawn('bash', ['-c', WATCHDOG_SCRIPT, 'cairn-thaw-watchdog', (timeoutMs / 1000).toFixed(3), ...mounts], {
      detached: true,
      stdio: ['pipe', 'ignore', 'ignore'],
      env: childEnv(),
    });
    const stdin = child.stdin as Socket;
    // Writing after it exited (it fired, or was killed) fails with EPIPE; then there is nothing to tell it.
    stdin.on('error', () => undefined);
    child.once('error', failed);
    child.once('spawn', () => {
      const startedAt = performance.now();
      let exited = false;
      let stopped = false;
      child.once('exit', () => {
        exited = true;
      });
      child.unref();
      stdin.unref();
      started({
        pid: child.pid as number,
        elapsedMs: () => performance.now() - startedAt,
        expired: () => (exited && !stopped) || performance.now() - startedAt >= timeoutMs,
        stop(thawed: boolean) {
          if (stopped) return;
          stopped = true;
          if (thawed) stdin.end('thawed\n');
          else stdin.end();
        },
      });
    });
  });
}

/** Runs `fsfreeze ACTION mount`; resolves with undefined on success, else with its error message. Never rejects. */
function fsfreeze(action: '--freeze' | '--unfreeze', mount: string): Promise<string | undefined> {
  return new Promise((settle) => {
    // LC_ALL=C: the caller reads "Invalid argument" (not frozen) out of the message.
    const child = spawn('fsfreeze', [action, mount], { stdio: ['ignore', 'ignore', 'pipe'], env: childEnv({ LC_ALL: 'C' }) });
    const stderr: Buffer[] = [];
    (child.stderr as Readable).on('data', (chunk: Buffer) => stderr.push(chunk));
    child.once('error', (err) => settle(`fsfreeze cannot run: ${describeError(err)} (it comes with util-linux)`));
    child.once('close', (code, signal) => {
      if (code === 0) settle(undefined);
      else settle(Buffer.concat(stderr).toString('utf8').trim() || (code !== null ? `fsfreeze exited with code ${code}` : `fsfreeze was killed by ${signal}`));
    });
  });
}

/**
 * Resolves each path (relative to the working directory, symlinks followed) to a mount point listed in
 * /proc/self/mountinfo and drops repeats of one file system (freezing it twice would fail). Throws a
 * USAGE error naming the first path that is not a mount point.
 */
async function resolveMountPoints(paths: string[]): Promise<string[]> {
  const devices = new Map<string, string>(); // mount point -> major:minor of its file system
  for (const line of (await readFile('/proc/self/mountinfo', 'utf8')).split('\n')) {
    const fields = line.split(' ');
    if (fields.length > 4) devices.set(unescapeMountinfo(fields[4]), fields[2]);
  }
  const mounts: string[] = [];
  const seen = new Set<string>();
  for (const path of paths) {
    let real: string;
    try {
      real = await realpath(resolve(path));
    } catch (err) {
      throw new CairnError('USAGE', `cannot freeze ${path}: ${describeError(err)}`, { cause: err });
    }
    const device = devices.get(real);
    if (device === undefined) {
      throw new CairnError('USAGE', `cannot freeze ${path}: not a mount point (fsfreeze would freeze the file system that holds it)`);
    }
    if (seen.has(device)) continue;
    seen.add(device);
    mounts.push(real);
  }
  return mounts;
}

/** mountinfo writes space, tab, newline and backslash in paths as octal escapes (\040). */
function unescapeMountinfo(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

/** Sends a signal to the process group a detached child leads; a group that is gone already is fine. */
function signalGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // ESRCH: every process of the group has exited.
  }
}

/** Resolves when the stream has closed, or after `ms`, destroying it then. */
function drained(stream: Readable, ms: number): Promise<void> {
  if (stream.closed) return Promise.resolve();
  return new Promise((done) => {
    const timer = setTimeout(() => {
      stream.destroy();
      done();
    }, ms);
    stream.once('close', () => {
      clearTimeout(timer);
      done();
    });
  });
}

/** Keeps the last `limit` bytes pushed into it. */
class TailBuffer {
  private chunks: Buffer[] = [];
  private size = 0;

  constructor(private readonly limit: number) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.chunks.length > 1 && this.size - this.chunks[0].length >= this.limit) {
      this.size -= this.chunks[0].length;
      this.chunks.shift();
    }
  }

  text(): string {
    const all = Buffer.concat(this.chunks);
    return all.subarray(Math.max(0, all.length - this.limit)).toString('utf8');
  }
}

function checkTimeout(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value <= 0) {
    throw new CairnError('USAGE', `quiesce: ${name} must be a positive number of milliseconds, not ${value}`);
  }
  return value;
}

function seconds(ms: number): string {
  return String(Math.round(ms) / 1000);
}

function describeError(err: unknown): string {
  if (err instanceof CairnError) return err.message;
  const sys = err as NodeJS.ErrnoException | undefined;
  if (sys?.code && sys.message) return `${sys.code} (${sys.message})`;
  return sys?.message ?? String(err);
}
