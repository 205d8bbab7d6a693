import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { accessSync, constants as fsConstants, rmSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { createConnection, createServer, type AddressInfo, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join, resolve } from 'node:path';

/**
 * Starts a real Ceph RADOS Gateway (radosgw, Ceph 16.2 Pacific as packaged by Debian bookworm) as an
 * S3 server for tests and benchmarks: a throw-away single-node cluster (one monitor, one OSD with the
 * in-memory object store, one radosgw) whose config, data, logs, pid files and admin sockets all live
 * in one temporary directory. Nothing is read from or written to /etc/ceph, /var/lib/ceph, /var/log/ceph
 * or /run/ceph, no systemd is involved, and it needs no network beyond 127.0.0.1.
 *
 * Needs: apt-get install radosgw ceph-mon ceph-osd ceph-common
 *
 * Start-up (about 2 s) goes: monmaptool + ceph-mon --mkfs, start ceph-mon; then in parallel start
 * radosgw, and register (`ceph osd new`) + format (`ceph-osd --mkfs`) + start the OSD; wait for the S3
 * port to answer; create an S3 user with random keys (`radosgw-admin user create`).
 *
 * RGW behaviours the S3 backend must know about (measured on 16.2.15) are listed in the report that
 * came with this file; the important ones: `If-None-Match: *` on PutObject is enforced (412) only in
 * unversioned buckets, never in versioned / object-lock buckets, nor on CompleteMultipartUpload;
 * object-lock headers on CreateMultipartUpload are ignored (use the bucket's default retention or
 * PutObjectRetention after completing); CompleteMultipartUpload answers an empty ETag.
 */

export interface S3Server {
  /** e.g. 'http://127.0.0.1:PORT'; path-style only (no rgw dns name is configured). */
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** RGW accepts any SigV4 region name; 'us-east-1' keeps CreateBucket free of a LocationConstraint. */
  region: string;
  /**
   * The throw-away cluster itself, for tests of Ceph's other clients (rbd, rados): its ceph.conf and
   * the client to connect as. There is no cephx (auth none), so no keyring is needed.
   */
  ceph: CephCluster;
  /** Kills all daemons (SIGTERM, then SIGKILL) and removes the directory unless `keep`. Idempotent. */
  stop(): Promise<void>;
}

export interface CephCluster {
  /** Absolute path of the cluster's ceph.conf (pass it as --conf, or conf= in rbd:// URLs). */
  conf: string;
  /** Client id with all rights (without 'client.'). */
  id: string;
}

export interface S3ServerOptions {
  /**
   * Directory for the cluster (config, monitor store, logs, sockets). Created if missing and removed by
   * stop() unless `keep`. Default: a new directory under the OS temp dir. Keep it short: admin socket
   * paths inside it must fit in 107 bytes.
   */
  dir?: string;
  /**
   * Capacity of the OSD's in-memory store (memstore). It is a limit, not a reservation: RAM is used
   * for what is actually stored (the OSD's resident size grows by about twice the stored bytes). When
   * the store is full, writes do not fail but hang, so size it well above the largest data set you
   * will write (RGW metadata and deleted data not yet garbage-collected count too). At least 64 MiB;
   * default 4 GiB.
   */
  memoryBytes?: number;
  /** Leave the directory (and its logs) in place after stop() or a failed start. */
  keep?: boolean;
  /** Receives progress lines and whatever the daemons print to stdout/stderr. */
  log?: (line: string) => void;
}

const DEFAULT_MEMORY_BYTES = 4 * 1024 ** 3;
/** Whole start-up, first command to S3 user created. A normal start takes about 2 s. */
const START_TIMEOUT_MS = 60_000;
/**
 * How long a daemon gets after SIGTERM before SIGKILL. The OSD and the monitor exit within ~0.2 s;
 * radosgw's shutdown does not finish (see rgw exit timeout secs below). All data is in memory and
 * thrown away, so nothing is lost by killing.
 */
const STOP_GRACE_MS = 1_000;
const REQUIRED_BINARIES = ['ceph-mon', 'ceph-osd', 'radosgw', 'radosgw-admin', 'monmaptool', 'ceph'];
const INSTALL_HINT = 'apt-get install radosgw ceph-mon ceph-osd ceph-common';

/** True when every Ceph program the launcher runs (radosgw, ceph-mon, ceph-osd, and the ceph-common tools) is on PATH. */
export function s3ServerAvailable(): boolean {
  return REQUIRED_BINARIES.every((b) => findOnPath(b) !== undefined);
}

/** Our environment minus the variables the Ceph tools would take extra arguments or a config from. */
function cephEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env['CEPH_ARGS'];
  delete env['CEPH_CONF'];
  return env;
}

function findOnPath(name: string): string | undefined {
  for (const d of (process.env['PATH'] ?? '').split(delimiter)) {
    if (!d) continue;
    const p = join(d, name);
    try {
      accessSync(p, fsConstants.X_OK);
      return p;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------
// Child-process bookkeeping. Daemons must not outlive this Node process:
// - process.on('exit') SIGKILLs every child still running (thrown errors, process.exit(), normal end);
// - a watchdog shell per server, in its own session, reads the daemons' pids on its stdin and
//   SIGKILLs them when that pipe closes, which the kernel does however this process dies (SIGTERM,
//   SIGKILL, crash) - cases where no 'exit' event runs;
// - the daemons stay in our process group, so a Ctrl-C in a terminal reaches them directly too.

/**
 * Collects pids ("-pid" forgets one) until stdin closes, then SIGKILLs those still listed and removes
 * the directory given as $1 (if any). stop() SIGKILLs the watchdog itself once it has done the job.
 */
const WATCHDOG_SCRIPT = `pids=
while read -r p; do
  case $p in
    -*) rest=; for q in $pids; do [ "$q" = "\${p#-}" ] || rest="$rest $q"; done; pids=$rest ;;
    *) pids="$pids $p" ;;
  esac
done
[ -z "$pids" ] || kill -9 $pids 2>/dev/null
[ -z "$1" ] || { sleep 1; rm -rf -- "$1"; }
exit 0`;

const liveChildren = new Set<ChildProcess>();
const dirsToRemoveOnExit = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const c of liveChildren) {
      try {
        c.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
    for (const d of dirsToRemoveOnExit) {
      try {
        rmSync(d, { recursive: true, force: true });
      } catch {
        // best effort
      }
    }
  });
}

interface Daemon {
  name: string;
  child: ChildProcess;
  logFile: string;
  /** Resolves when the process has exited; `exit` then describes how. */
  exited: Promise<void>;
  exit?: string;
  /** Last lines it printed on stdout/stderr. */
  output: string[];
}

/** Keeps the last `max` lines written to a stream, and forwards each to `log`. */
function captureLines(stream: NodeJS.ReadableStream | null, sink: string[], prefix: string, log?: (line: string) => void, max = 50): void {
  if (!stream) return;
  let partial = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      if (!line) continue;
      sink.push(line);
      if (sink.length > max) sink.shift();
      log?.(`${prefix}${line}`);
    }
  });
}

async function tail(file: string, lines = 40): Promise<string> {
  try {
    const text = await readFile(file, 'utf8');
    return text.split('\n').filter((l) => l.trim() !== '').slice(-lines).join('\n');
  } catch {
    return `(no log at ${file})`;
  }
}

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a short-lived command to completion; rejects with its output if it fails or overruns `timeoutMs`. */
function run(cmd: string, args: string[], timeoutMs: number, logFile?: string): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: cephEnv() });
    liveChildren.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      liveChildren.delete(child);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      liveChildren.delete(child);
      if (code === 0) {
        resolvePromise({ code, stdout, stderr });
        return;
      }
      const how = signal ? `was killed by ${signal}${signal === 'SIGKILL' ? ` (timeout ${timeoutMs} ms?)` : ''}` : `exited with code ${code}`;
      void (logFile ? tail(logFile) : Promise.resolve('')).then((logTail) =>
        reject(
          new Error(
            `${cmd} ${args.join(' ')} ${how}\n--- stdout ---\n${stdout.trim()}\n--- stderr ---\n${stderr.trim()}` +
              (logFile ? `\n--- tail of ${logFile} ---\n${logTail}` : ''),
          ),
        ),
      );
    });
  });
}

/** Asks the kernel for `count` distinct free TCP ports on 127.0.0.1 (bound together, then released). */
async function freePorts(count: number): Promise<number[]> {
  const servers: Server[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const s = createServer();
      servers.push(s);
      await new Promise<void>((res, rej) => {
        s.once('error', rej);
        s.listen(0, '127.0.0.1', () => res());
      });
    }
    return servers.map((s) => (s.address() as AddressInfo).port);
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((res) => s.close(() => res()))));
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function tcpAccepts(port: number): Promise<boolean> {
  return new Promise((res) => {
    const sock = createConnection({ host: '127.0.0.1', port });
    sock.once('connect', () => {
      sock.destroy();
      res(true);
    });
    sock.once('error', () => res(false));
  });
}

/** Any HTTP answer counts (RGW answers an anonymous GET / with 200 and an empty bucket list). */
function httpAnswers(port: number): Promise<boolean> {
  return new Promise((res) => {
    const req = request({ host: '127.0.0.1', port, path: '/', method: 'GET', timeout: 1000, agent: false }, (resp) => {
      resp.resume();
      res(true);
    });
    req.once('timeout', () => req.destroy());
    req.once('error', () => res(false));
    req.end();
  });
}

function randomString(length: number, alphabet: string): string {
  const bytes = randomBytes(length);
  let s = '';
  for (let i = 0; i < length; i++) s += alphabet[bytes[i]! % alphabet.length];
  return s;
}

function cephConf(o: { dir: string; fsid: string; monPort: number; rgwPort: number; memoryBytes: number }): string {
  const d = o.dir;
  return `# Generated by test/support/s3-server.ts: a throw-away single-node cluster for tests.
[global]
fsid = ${o.fsid}
# Monitor on loopback, messenger v2 only (no need for the legacy v1 port).
mon host = v2:127.0.0.1:${o.monPort}
public addr = 127.0.0.1
ms bind msgr1 = false
# No cephx: nothing to generate or distribute, and every daemon is local.
auth cluster required = none
auth service required = none
auth client required = none
# Everything a daemon writes stays in this directory (the defaults point at /var/run/ceph,
# /var/log/ceph, /var/lib/ceph and /etc/ceph).
run dir = ${d}/run
admin socket = ${d}/run/$name.asok
pid file = ${d}/run/$name.pid
log file = ${d}/log/$name.log
mon cluster log file = default=${d}/log/$cluster.$channel.log cluster=${d}/log/$cluster.log
crash dir = ${d}/crash
keyring = ${d}/keyring
mon data = ${d}/mon/$id
osd data = ${d}/osd/$id
rgw data = ${d}/rgw/$id
# One OSD, so pools keep one copy and CRUSH places it per OSD rather than per host.
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
# RGW creates 7 pools; 8 placement groups each is plenty for one OSD and quick to create.
# There is no mgr, so no autoscaler either.
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool delete = true
# The monitor would shut itself down when its file system has less than 5 % free space; the temp
# directory's file system is not ours to judge.
mon data avail crit = 0
mon data avail warn = 0
# The monitor batches map changes for 1 s by default; RGW's start-up creates pools one after another
# and waits for each, so that batching alone cost about 5 s.
paxos propose interval = 0.01
paxos min wait = 0.001
# Data lives in RAM (memstore); this is its capacity, not a reservation.
osd objectstore = memstore
memstore device bytes = ${o.memoryBytes}

[client]
# RGW starts before the OSD is up. Its first operations then wait for an OSD map in which their
# placement group has an OSD; the client only re-asks the monitor for maps on this tick (default 5 s).
objecter tick interval = 0.2
# radosgw defaults to requiring an encrypted ("secure") monitor connection, which only cephx can
# provide; with auth none the connection must be allowed to use plain crc mode.
ms mon client mode = crc secure

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:${o.rgwPort}
rgw enable usage log = false
# After SIGTERM/SIGINT radosgw gives its shutdown this long (default 120 s) before it exits anyway;
# here the shutdown did not finish within 30 s. stop() SIGKILLs it after a second regardless; this
# covers a Ctrl-C in a terminal.
rgw exit timeout secs = 1
# The tail of a deleted object (data past its first 4 MiB, and multipart parts) is freed by RGW's
# garbage collector, by default only after 2 h and in hourly runs: too long to keep it in RAM.
rgw gc obj min wait = 60
rgw gc processor period = 60
`;
}

/** Starts the cluster and returns once the S3 endpoint answers and the S3 user exists. */
export async function startS3Server(opts: S3ServerOptions = {}): Promise<S3Server> {
  if (!s3ServerAvailable()) {
    const missing = REQUIRED_BINARIES.filter((b) => findOnPath(b) === undefined);
    throw new Error(`Ceph RADOS Gateway not installed (missing on PATH: ${missing.join(', ')}); run: ${INSTALL_HINT}`);
  }
  const memoryBytes = Math.floor(opts.memoryBytes ?? DEFAULT_MEMORY_BYTES);
  if (!(memoryBytes >= 64 * 1024 ** 2)) throw new RangeError(`memoryBytes must be at least 64 MiB, got ${opts.memoryBytes}`);
  installExitHook();
  const log = opts.log;
  const t0 = Date.now();
  const deadline = t0 + START_TIMEOUT_MS;
  const step = (what: string) => log?.(`[s3-server] ${what} (${Date.now() - t0} ms)`);

  let dir: string;
  if (opts.dir) {
    dir = resolve(opts.dir);
    await mkdir(dir, { recursive: true });
  } else {
    dir = await mkdtemp(join(tmpdir(), 'cairn-rgw-'));
  }
  if (!opts.keep) dirsToRemoveOnExit.add(dir);
  const conf = join(dir, 'ceph.conf');
  const logDir = join(dir, 'log');
  for (const sub of ['run', 'log', 'crash', 'mon', 'osd/0', 'rgw/rgw.a']) await mkdir(join(dir, sub), { recursive: true });

  const daemons: Daemon[] = [];
  let stopping: Promise<void> | undefined;

  // Its own session (detached), so that a Ctrl-C to our process group leaves it to do its job.
  const watchdog = spawn('sh', ['-c', WATCHDOG_SCRIPT, 'cairn-rgw-watchdog', opts.keep ? '' : dir], {
    stdio: ['pipe', 'ignore', 'ignore'],
    detached: true,
  });
  watchdog.on('error', () => undefined); // without sh the exit hook still covers most cases
  watchdog.stdin?.on('error', () => undefined); // EPIPE if it died
  watchdog.unref();
  (watchdog.stdin as unknown as { unref?: () => void } | null)?.unref?.();
  const tellWatchdog = (line: string) => {
    if (watchdog.stdin?.writable) watchdog.stdin.write(`${line}\n`);
  };

  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      // radosgw and the OSD first: on SIGTERM the OSD tells the monitor it is going down and waits
      // (up to 5 s) for the answer, so the monitor must still be there.
      await Promise.all(daemons.filter((d) => d.name !== 'mon').map(terminate));
      await Promise.all(daemons.filter((d) => d.name === 'mon').map(terminate));
      watchdog.kill('SIGKILL'); // nothing left for it to do
      if (!opts.keep) {
        await rm(dir, { recursive: true, force: true });
        dirsToRemoveOnExit.delete(dir);
      }
    })();
    return stopping;
  };

  const startDaemon = (name: string, cmd: string, args: string[], logName: string): Daemon => {
    // -f: stay in the foreground (we own the process) but log to the log file, not the terminal.
    const child = spawn(cmd, ['--conf', conf, '-f', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: cephEnv() });
    liveChildren.add(child);
    if (child.pid !== undefined) tellWatchdog(String(child.pid));
    const d: Daemon = { name, child, logFile: join(logDir, `${logName}.log`), output: [], exited: Promise.resolve() };
    captureLines(child.stdout, d.output, `[${name}] `, log);
    captureLines(child.stderr, d.output, `[${name}] `, log);
    d.exited = new Promise<void>((res) => {
      child.once('error', (e) => {
        d.exit ??= `could not start: ${e.message}`;
        liveChildren.delete(child);
        res();
      });
      child.once('exit', (code, signal) => {
        d.exit = signal ? `killed by ${signal}` : `exited with code ${code}`;
        liveChildren.delete(child);
        if (child.pid !== undefined) tellWatchdog(`-${child.pid}`);
        res();
      });
    });
    // A caller that forgets stop() should not hang on these handles: the exit hook kills the daemons.
    child.unref();
    for (const s of [child.stdout, child.stderr]) (s as unknown as { unref?: () => void } | null)?.unref?.();
    daemons.push(d);
    return d;
  };

  /** Error for a daemon that died or did not become ready: its exit status, output and log tail. */
  const daemonError = async (d: Daemon, what: string): Promise<Error> =>
    new Error(
      `${what}: ${d.name} ${d.exit ?? 'is still running'}` +
        (d.output.length ? `\n--- ${d.name} output ---\n${d.output.slice(-20).join('\n')}` : '') +
        `\n--- tail of ${d.logFile} ---\n${await tail(d.logFile)}` +
        (opts.keep ? '' : `\n(logs are removed with ${dir}; pass keep: true to keep them)`),
    );

  /** Polls `check` until true; fails early if one of `watch` dies, or at the deadline. */
  const waitFor = async (what: string, check: () => Promise<boolean>, watch: Daemon[]): Promise<void> => {
    for (;;) {
      if (await check()) return;
      const dead = watch.find((d) => d.exit !== undefined);
      if (dead) throw await daemonError(dead, `${what} failed`);
      if (Date.now() > deadline) throw await daemonError(watch[watch.length - 1]!, `${what} timed out after ${START_TIMEOUT_MS} ms`);
      await sleep(20);
    }
  };

  try {
    const [monPort, rgwPort] = (await freePorts(2)) as [number, number];
    const fsid = randomUUID();
    const osdUuid = randomUUID();
    const accessKeyId = randomString(20, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789');
    const secretAccessKey = randomString(40, 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789');
    await writeFile(conf, cephConf({ dir, fsid, monPort, rgwPort, memoryBytes }));
    const remaining = () => Math.max(1000, deadline - Date.now());

    // Monitor: initial monmap with the one monitor, its store, then the daemon.
    const monmap = join(dir, 'monmap');
    await run('monmaptool', ['--create', '--fsid', fsid, '--addv', 'a', `[v2:127.0.0.1:${monPort}]`, monmap], remaining());
    await run('ceph-mon', ['--conf', conf, '--mkfs', '-i', 'a', '--monmap', monmap], remaining(), join(logDir, 'mon.a.log'));
    const mon = startDaemon('mon', 'ceph-mon', ['-i', 'a'], 'mon.a');
    // Clients that connect before the monitor listens retry only every 3 s, so wait for the port.
    await waitFor('ceph-mon start', () => tcpAccepts(monPort), [mon]);
    step(`ceph-mon listening on 127.0.0.1:${monPort}`);

    // radosgw can start right away: it creates its pools and waits for the OSD by itself.
    const rgw = startDaemon('radosgw', 'radosgw', ['-n', 'client.rgw.a'], 'client.rgw.a');

    // OSD: register its id with the monitor while formatting the store (mkfs needs no monitor with
    // --no-mon-config), then start it.
    const [osdNew] = await Promise.all([
      run(
        'ceph',
        ['--conf', conf, '--connect-timeout', String(Math.ceil(remaining() / 1000)), 'osd', 'new', osdUuid],
        remaining(),
        join(logDir, 'client.admin.log'),
      ),
      run('ceph-osd', ['--conf', conf, '--no-mon-config', '--mkfs', '-i', '0', '--osd-uuid', osdUuid], remaining(), join(logDir, 'osd.0.log')),
    ]);
    if (osdNew.stdout.trim() !== '0') throw new Error(`ceph osd new returned id '${osdNew.stdout.trim()}', expected 0`);
    const osd = startDaemon('osd', 'ceph-osd', ['-i', '0'], 'osd.0');
    step('ceph-osd started');

    await waitFor('radosgw start', () => httpAnswers(rgwPort), [mon, osd, rgw]);
    step(`radosgw answering on 127.0.0.1:${rgwPort}`);

    await run(
      'radosgw-admin',
      ['--conf', conf, 'user', 'create', '--uid', 'cairn', '--display-name', 'cairn', '--access-key', accessKeyId, '--secret-key', secretAccessKey],
      remaining(),
      join(logDir, 'client.admin.log'),
    );
    step('S3 user created; ready');

    return { endpoint: `http://127.0.0.1:${rgwPort}`, accessKeyId, secretAccessKey, region: 'us-east-1', ceph: { conf, id: 'admin' }, stop };
  } catch (e) {
    await stop().catch(() => undefined);
    throw e;
  }
}

/** SIGTERM, then SIGKILL after STOP_GRACE_MS; resolves once the process is gone. */
async function terminate(d: Daemon): Promise<void> {
  if (d.exit !== undefined) return;
  // Hold the event loop open until the exit is seen (the handle is unref'd while the daemon runs).
  d.child.ref();
  d.child.kill('SIGTERM');
  const timer = setTimeout(() => d.child.kill('SIGKILL'), STOP_GRACE_MS);
  await d.exited;
  clearTimeout(timer);
}
