/**
 * quiesce against the real things: two 32 MiB ext4 images mounted over loop devices, a ramfs (which
 * cannot be frozen), fsfreeze, shell-script hooks and the bash thaw watchdog. Needs root and loop
 * devices, as CI runs. Whether a file system is frozen is probed by `touch`: on a frozen one it blocks
 * (in uninterruptible sleep, so it finishes only after the thaw). Every test sets a short freeze timeout
 * so that a bug cannot keep a file system frozen for long.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, realpath, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { isCairnError } from '../../shared/errors.js';
import { quiesce, type Quiesced } from './quiesce.js';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, '..', '..');
/** The compiled module, for the test that runs quiesce in a child process and kills it. */
const compiledModule = join(repoRoot, 'dist', 'agent', 'quiesce', 'quiesce.js');
/** A write that has not finished after this long is taken to be blocked by a freeze. */
const PROBE_MS = 400;
/** Short enough that a bug cannot freeze anything for long, long enough for every check in a test. */
const FREEZE_TIMEOUT_MS = 10_000;

let dir: string;
let mountA: string;
let mountB: string;
/** A ramfs: a mount point that fsfreeze refuses (Operation not supported). */
let mountRam: string;
/** A plain directory on the temp file system: not a mount point. */
let plainDir: string;
/** Hook scripts and their output, outside the mounts so that they never block on a freeze. */
let hooks: string;
const mounted: string[] = [];
let probes = 0;

beforeAll(async () => {
  requireRootAndTools();
  dir = await realpath(await mkdtemp(join(tmpdir(), 'cairn-quiesce-')));
  mountA = join(dir, 'mnt-a');
  mountB = join(dir, 'mnt-b');
  mountRam = join(dir, 'mnt-ram');
  plainDir = join(dir, 'plain');
  hooks = join(dir, 'hooks');
  for (const d of [mountA, mountB, mountRam, plainDir, hooks]) await mkdir(d);
  for (const [name, mount] of [
    ['a.img', mountA],
    ['b.img', mountB],
  ]) {
    const image = join(dir, name);
    execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', image, '32M'], { stdio: 'ignore' });
    execFileSync('mount', ['-o', 'loop', image, mount]);
    mounted.push(mount);
  }
  execFileSync('mount', ['-t', 'ramfs', 'cairn-quiesce-test', mountRam]);
  mounted.push(mountRam);
});

afterAll(async () => {
  for (const mount of mounted) await unmount(mount);
  if (dir) await rm(dir, { recursive: true, force: true });
});

// A failed assertion must not leave a file system frozen for the next test (or blocked probes behind).
afterEach(() => {
  for (const mount of [mountA, mountB]) thawQuietly(mount);
});

describe('quiesce', () => {
  it('runs the pre-freeze hook, freezes both file systems until thaw(), then runs the post-thaw hook', async () => {
    const marker = join(hooks, 'happy.log');
    const hook = await script('record.sh', 'echo "$CAIRN_PHASE $CAIRN_BACKUP_NAME" >> "$MARKER"');
    const logs: string[] = [];
    const q = await quiesce({
      preFreeze: [hook],
      postThaw: [hook],
      freeze: [mountA, mountB],
      freezeTimeoutMs: FREEZE_TIMEOUT_MS,
      env: { MARKER: marker, CAIRN_BACKUP_NAME: 'nightly' },
      log: (m) => logs.push(m),
    });
    let result;
    try {
      expect(q.achieved).toBe('app_consistent');
      expect(q.warnings).toEqual([]);
      expect(await lines(marker)).toEqual(['pre-freeze nightly']);
      expect(await Promise.all([isFrozen(mountA), isFrozen(mountB)])).toEqual([true, true]);
      expect(watchdogsFor(mountA)).toHaveLength(1);
    } finally {
      result = await q.thaw();
    }
    expect(result).toEqual({ consistency: 'app_consistent', warnings: [] });
    expect(await Promise.all([isFrozen(mountA), isFrozen(mountB)])).toEqual([false, false]);
    expect(await lines(marker)).toEqual(['pre-freeze nightly', 'post-thaw nightly']);
    expect(logs.filter((m) => /^(froze|thawed) /.test(m))).toEqual([`froze ${mountA}`, `froze ${mountB}`, `thawed ${mountB}`, `thawed ${mountA}`]);
    await expectEventually(() => watchdogsFor(mountA).length === 0, 'the watchdog exits after thaw()');
  });

  it('does not freeze when a pre-freeze hook fails, names its exit code and stderr, and still runs post-thaw', async () => {
    const marker = join(hooks, 'failing.log');
    const record = await script('record-failing.sh', 'echo "$CAIRN_PHASE" >> "$MARKER"');
    // 5000 bytes of noise, then the reason: the warning keeps the end.
    const failing = await script('failing.sh', "head -c 5000 /dev/zero | tr '\\0' x >&2; echo >&2; echo 'database refused to flush' >&2; exit 3");
    const q = await quiesce({
      preFreeze: [failing, record],
      postThaw: [record],
      freeze: [mountA, mountB],
      freezeTimeoutMs: FREEZE_TIMEOUT_MS,
      env: { MARKER: marker },
    });
    expect(q.achieved).toBe('crash_consistent');
    expect(q.warnings).toHaveLength(1);
    expect(q.warnings[0]).toContain(`pre-freeze hook ${failing} failed with exit code 3; stderr: `);
    expect(q.warnings[0]).toContain('database refused to flush');
    expect(q.warnings[0].length).toBeLessThan(2300);
    expect(q.warnings[0].length).toBeGreaterThan(2000);
    expect(await Promise.all([isFrozen(mountA), isFrozen(mountB)])).toEqual([false, false]);
    expect(watchdogsFor(mountA)).toEqual([]);
    const result = await q.thaw();
    expect(result.consistency).toBe('crash_consistent');
    expect(result.warnings).toEqual(q.warnings);
    // The second pre-freeze hook never ran; post-thaw did.
    expect(await lines(marker)).toEqual(['post-thaw']);
  });

  it('reports a hook that cannot run', async () => {
    const q = await quiesce({ preFreeze: ['./no-such-hook.sh'], postThaw: ['./no-such-hook.sh'], freeze: [mountA] });
    expect(q.achieved).toBe('crash_consistent');
    expect(q.warnings[0]).toMatch(/^pre-freeze hook \.\/no-such-hook\.sh cannot run: ENOENT /);
    expect(await isFrozen(mountA)).toBe(false);
    const result = await q.thaw();
    expect(result.warnings[1]).toMatch(/^post-thaw hook \.\/no-such-hook\.sh cannot run: ENOENT /);
  });

  it('kills the process group of a hook that hangs past its time limit, and freezes nothing', async () => {
    const pids = join(hooks, 'hanging.pids');
    // The hook and a child of it (same process group): both must go.
    const hanging = await script('hanging.sh', 'echo $$ > "$PIDS"; sleep 600 & echo $! >> "$PIDS"; echo "waiting for the lock" >&2; wait');
    const started = Date.now();
    const q = await quiesce({ preFreeze: [hanging], postThaw: [], freeze: [mountA], hookTimeoutMs: 500, env: { PIDS: pids } });
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(500);
    expect(took).toBeLessThan(2000); // sh dies of SIGTERM; no need to wait for SIGKILL
    expect(q.achieved).toBe('crash_consistent');
    expect(q.warnings[0]).toBe(
      `pre-freeze hook ${hanging} timed out after 0.5 s; stderr: waiting for the lock; nothing was frozen, the backup is crash-consistent`,
    );
    const [hookPid, sleepPid] = (await lines(pids)).map(Number);
    await expectEventually(() => isGone(hookPid) && isGone(sleepPid), 'the hook and its child are gone');
    expect(await isFrozen(mountA)).toBe(false);
    expect((await q.thaw()).consistency).toBe('crash_consistent');
  });

  it('kills a hook that ignores SIGTERM with SIGKILL 2 s later', async () => {
    const pids = join(hooks, 'stubborn.pids');
    // SIG_IGN is inherited across exec, so the sleep ignores SIGTERM as well.
    const stubborn = await script('stubborn.sh', `trap '' TERM; echo $$ > "$PIDS"; sleep 600 & echo $! >> "$PIDS"; while :; do wait; done`);
    const started = Date.now();
    const q = await quiesce({ preFreeze: [], postThaw: [stubborn], freeze: [mountA], hookTimeoutMs: 300, freezeTimeoutMs: FREEZE_TIMEOUT_MS, env: { PIDS: pids } });
    expect(q.achieved).toBe('app_consistent');
    const result = await q.thaw();
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(2300);
    expect(took).toBeLessThan(4000);
    // A post-thaw failure is a warning only.
    expect(result).toEqual({ consistency: 'app_consistent', warnings: [`post-thaw hook ${stubborn} timed out after 0.3 s`] });
    const [hookPid, sleepPid] = (await lines(pids)).map(Number);
    await expectEventually(() => isGone(hookPid) && isGone(sleepPid), 'the hook and its child are gone');
    expect(await isFrozen(mountA)).toBe(false);
  });

  it('refuses a directory that is not a mount point before freezing anything', async () => {
    const logs: string[] = [];
    const q = await quiesce({ preFreeze: [], postThaw: [], freeze: [mountA, plainDir], freezeTimeoutMs: 2_000, log: (m) => logs.push(m) });
    expect(q.achieved).toBe('crash_consistent');
    expect(q.warnings).toEqual([
      `cannot freeze ${plainDir}: not a mount point (fsfreeze would freeze the file system that holds it); nothing was frozen, the backup is crash-consistent`,
    ]);
    expect(logs.filter((m) => m.startsWith('froze '))).toEqual([]);
    expect(await isFrozen(mountA)).toBe(false);
    expect((await q.thaw()).consistency).toBe('crash_consistent');
  });

  it('thaws what it froze when fsfreeze fails on a later mount point', async () => {
    const logs: string[] = [];
    const q = await quiesce({ preFreeze: [], postThaw: [], freeze: [mountA, mountB, mountRam], freezeTimeoutMs: FREEZE_TIMEOUT_MS, log: (m) => logs.push(m) });
    expect(q.achieved).toBe('crash_consistent');
    expect(q.warnings).toHaveLength(1);
    expect(q.warnings[0]).toMatch(
      new RegExp(`^cannot freeze ${mountRam}: .*Operation not supported; thawed ${mountA}, ${mountB} again, the backup is crash-consistent$`),
    );
    expect(logs.filter((m) => /^(froze|thawed) /.test(m))).toEqual([`froze ${mountA}`, `froze ${mountB}`, `thawed ${mountB}`, `thawed ${mountA}`]);
    expect(await Promise.all([isFrozen(mountA), isFrozen(mountB)])).toEqual([false, false]);
    await expectEventually(() => watchdogsFor(mountA).length === 0, 'the watchdog exits');
    expect((await q.thaw()).consistency).toBe('crash_consistent');
  });

  it('is thawed by the watchdog after the freeze timeout, and thaw() then reports crash_consistent', async () => {
    const started = Date.now();
    const q = await quiesce({ preFreeze: [], postThaw: [], freeze: [mountA, mountB], freezeTimeoutMs: 800 });
    expect(q.achieved).toBe('app_consistent');
    expect(await isFrozen(mountA)).toBe(true);
    await sleep(1_500 - (Date.now() - started));
    expect(await Promise.all([isFrozen(mountA), isFrozen(mountB)])).toEqual([false, false]);
    const result = await q.thaw();
    expect(result.consistency).toBe('crash_consistent');
    expect(result.warnings).toHaveLength(1);
    expect(result.warnings[0]).toMatch(
      new RegExp(`^${mountB}, ${mountA} were no longer frozen at thaw, [\\d.]+ s after the freeze began: the thaw watchdog had thawed them after the freeze timeout of 0.8 s`),
    );
  });

  it('is thawed by the watchdog when the process that froze dies', async () => {
    requireFreshBuild();
    const child = spawn(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `import { quiesce } from ${JSON.stringify(pathToFileURL(compiledModule).href)};
         const q = await quiesce({ preFreeze: [], postThaw: [], freeze: process.argv.slice(1), freezeTimeoutMs: 120000 });
         console.log(q.achieved, ...q.warnings);
         setInterval(() => {}, 1 << 30);`,
        mountA,
        mountB,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    try {
      const said = await firstLine(child.stdout, child.stderr);
      expect(said).toBe('app_consistent');
      expect(await Promise.all([isFrozen(mountA), isFrozen(mountB)])).toEqual([true, true]);
      child.kill('SIGKILL');
      const killed = Date.now();
      // A write blocked by the freeze finishes once the watchdog has thawed.
      expect(await Promise.all([writeFinishes(mountA, 1_000), writeFinishes(mountB, 1_000)])).toEqual([true, true]);
      expect(Date.now() - killed).toBeLessThan(1_000);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('is thawed by the watchdog when it is told to stop, as systemd stops every process of the unit', async () => {
    const q = await quiesce({ preFreeze: [], postThaw: [], freeze: [mountA, mountB], freezeTimeoutMs: FREEZE_TIMEOUT_MS });
    expect(await Promise.all([isFrozen(mountA), isFrozen(mountB)])).toEqual([true, true]);
    const watchdogs = watchdogsFor(mountA);
    expect(watchdogs).toHaveLength(1);
    process.kill(watchdogs[0]!, 'SIGTERM');
    expect(await Promise.all([writeFinishes(mountA, 1_000), writeFinishes(mountB, 1_000)])).toEqual([true, true]);
    await expectEventually(() => isGone(watchdogs[0]!), 'the watchdog exits after thawing');
    const result = await q.thaw();
    expect(result.consistency).toBe('crash_consistent');
  });

  it('thaw() is idempotent and never throws', async () => {
    const marker = join(hooks, 'idempotent.log');
    const record = await script('record-idempotent.sh', 'echo "$CAIRN_PHASE" >> "$MARKER"');
    const failing = await script('failing-post.sh', 'echo "could not unlock" >&2; exit 1');
    const q: Quiesced = await quiesce({
      preFreeze: [record],
      postThaw: [record, './no-such-post-hook', failing],
      freeze: [mountA],
      freezeTimeoutMs: FREEZE_TIMEOUT_MS,
      env: { MARKER: marker },
    });
    expect(q.achieved).toBe('app_consistent');
    const [first, second] = await Promise.all([q.thaw(), q.thaw()]);
    const third = await q.thaw();
    expect(second).toEqual(first);
    expect(third).toEqual(first);
    expect(first.consistency).toBe('app_consistent');
    expect(first.warnings).toHaveLength(2);
    expect(first.warnings[0]).toMatch(/^post-thaw hook \.\/no-such-post-hook cannot run: ENOENT /);
    expect(first.warnings[1]).toBe(`post-thaw hook ${failing} failed with exit code 1; stderr: could not unlock`);
    expect(await lines(marker)).toEqual(['pre-freeze', 'post-thaw']);
    expect(await isFrozen(mountA)).toBe(false);
  });

  it('refuses bad time limits before running anything', async () => {
    const marker = join(hooks, 'refused.log');
    const record = await script('record-refused.sh', 'echo "$CAIRN_PHASE" >> "$MARKER"');
    for (const limits of [{ hookTimeoutMs: 0 }, { freezeTimeoutMs: Number.NaN }, { freezeTimeoutMs: -5 }]) {
      const err = await quiesce({ preFreeze: [record], postThaw: [record], freeze: [mountA], env: { MARKER: marker }, ...limits }).catch((e: unknown) => e);
      expect(isCairnError(err, 'USAGE')).toBe(true);
    }
    expect(existsSync(marker)).toBe(false);
  });
});

function requireRootAndTools(): void {
  if (process.getuid?.() !== 0) throw new Error('the quiesce tests mount loop devices and run fsfreeze: run them as root');
  for (const [tool, pkg] of [
    ['mke2fs', 'e2fsprogs'],
    ['fsfreeze', 'util-linux'],
    ['mount', 'mount'],
    ['bash', 'bash'],
  ]) {
    try {
      execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    } catch {
      throw new Error(`the quiesce tests need ${tool}: apt-get install ${pkg}`);
    }
  }
}

/** The test spawns the compiled module (`npm test` builds it first); a stale build would test old code. */
function requireFreshBuild(): void {
  const source = join(here, 'quiesce.ts');
  if (!existsSync(compiledModule) || statSync(compiledModule).mtimeMs < statSync(source).mtimeMs) {
    throw new Error(`${compiledModule} is missing or older than ${source}: run \`npm run build\` (tsc -p tsconfig.json) first`);
  }
}

async function script(name: string, body: string): Promise<string> {
  const path = join(hooks, name);
  await writeFile(path, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  return path;
}

async function lines(path: string): Promise<string[]> {
  if (!existsSync(path)) return [];
  return (await readFile(path, 'utf8')).split('\n').filter((l) => l !== '');
}

/** Starts `touch` of a new file in `mount` and says whether it finished within `ms` (if not, it finishes after the thaw). */
function writeFinishes(mount: string, ms: number): Promise<boolean> {
  return new Promise((done) => {
    const probe = spawn('touch', [join(mount, `probe-${++probes}`)], { stdio: 'ignore' });
    const timer = setTimeout(() => done(false), ms);
    probe.once('exit', () => {
      clearTimeout(timer);
      done(true);
    });
  });
}

async function isFrozen(mount: string): Promise<boolean> {
  return !(await writeFinishes(mount, PROBE_MS));
}

/** Watchdog processes (bash, argv[0] cairn-thaw-watchdog) that would thaw `mount`. */
function watchdogsFor(mount: string): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (argv.includes('cairn-thaw-watchdog') && argv.includes(mount)) found.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return found;
}

/** Gone, or a zombie waiting for whoever adopted it to reap it: either way it runs no more. */
function isGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return true;
  }
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').startsWith('Z');
  } catch {
    return true;
  }
}

async function expectEventually(condition: () => boolean, what: string, withinMs = 2_000): Promise<void> {
  const deadline = Date.now() + withinMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`not within ${withinMs} ms: ${what}`);
    await sleep(50);
  }
}

function firstLine(stdout: NodeJS.ReadableStream, stderr: NodeJS.ReadableStream, withinMs = 10_000): Promise<string> {
  return new Promise((done, fail) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => fail(new Error(`the child printed no line within ${withinMs} ms; stderr: ${err}`)), withinMs);
    stderr.on('data', (d: Buffer) => (err += d.toString()));
    stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const end = out.indexOf('\n');
      if (end >= 0) {
        clearTimeout(timer);
        done(out.slice(0, end));
      }
    });
    stdout.once('end', () => fail(new Error(`the child exited without a line; stderr: ${err}`)));
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((done) => setTimeout(done, Math.max(0, ms)));
}

function thawQuietly(mount: string): void {
  try {
    execFileSync('fsfreeze', ['--unfreeze', mount], { stdio: 'ignore' });
  } catch {
    // not frozen
  }
}

async function unmount(mount: string): Promise<void> {
  thawQuietly(mount);
  // A probe that was blocked by a freeze may still be finishing its write.
  for (let attempt = 0; attempt < 20; attempt++) {
    try {
      execFileSync('umount', [mount], { stdio: 'ignore' });
      return;
    } catch {
      await sleep(100);
    }
  }
  try {
    execFileSync('umount', ['-l', mount], { stdio: 'ignore' });
  } catch {
    // left for the operator; rm below skips what it cannot remove
  }
}
