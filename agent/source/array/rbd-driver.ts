import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CairnError, type ErrorCode } from '../../../shared/errors.js';
import type { ByteRange } from '../block-source.js';
import { NbdClient } from '../nbd/nbd-client.js';
import { waitForExit } from '../qemu/qcow2-image.js';
import { runQemuTool } from '../qemu/qemu-tools.js';
import type { ArrayDriver, ArraySnapshot, ArrayVolume, GroupSnapshot, SnapshotReader } from './array-driver.js';
import type { ArrayVolumeUrl } from './array-source.js';
import { childEnv } from '../../../shared/runtime/child-env.js';

/**
 * Ceph RBD images, driven through the `rbd` tool (ceph-common) and read through qemu's rbd block
 * driver (qemu-block-extra) served by `qemu-nbd` on a private Unix socket: everything runs in user
 * space on librbd, so no rbd or nbd kernel module is needed.
 *
 * - Snapshots are plain image snapshots (`rbd snap create`), one image after the other: RBD's
 *   consistency-group snapshots need the images in an RBD group, and an image can be in only one,
 *   so Cairn would have to change the user's group membership. A backup of several images of one
 *   pool therefore reports `atomic: false` (and array-source.ts records a warning).
 * - Changes are `rbd diff --from-snap`; extents the later snapshot no longer has (discards) are
 *   reported with exists=false and count as changed. For images with the fast-diff feature the diff
 *   is asked `--whole-object`: librbd then compares the object maps of the two snapshots instead of
 *   listing every object of the image (200 GiB image on the test cluster: 0.14 s instead of 3.6 s)
 *   and reports whole objects (4 MiB by default) that changed. Without fast-diff librbd lists every
 *   object either way, and the exact extents are cheaper to read.
 * - Every rbd call is bounded: librados gives up connecting and on monitor and OSD operations after
 *   the URL's timeout, and the process is killed if it still runs well after that.
 */

/** Where the images live and how to reach the cluster. */
export interface RbdTarget {
  pool: string;
  /** RADOS namespace within the pool; '' for the default one. */
  namespace: string;
  /** ceph.conf; undefined: Ceph's own search ($CEPH_CONF, /etc/ceph/ceph.conf, ...). */
  conf?: string;
  /** Client id without 'client.' (default: Ceph's, i.e. admin). */
  id?: string;
  /** Keyring file; undefined: the one ceph.conf names, or Ceph's default locations. */
  keyring?: string;
  /** Seconds librados waits for the monitors (connecting, each request) before it gives up. */
  timeoutSeconds: number;
}

const DEFAULT_TIMEOUT_SECONDS = 30;
/** NBD reads of one batch go out at once as requests of this size (see NbdConnectOptions.requestSize). */
const REQUEST_SIZE = 64 * 1024;
const EXAMPLES = 'rbd://POOL/IMAGE or rbd://POOL/NAMESPACE/IMAGE, optionally with ?conf=/etc/ceph/ceph.conf&id=backup&keyring=PATH&timeout=SECONDS';

/**
 * `rbd://POOL[/NAMESPACE]/IMAGE[?conf=PATH&id=CLIENT&keyring=PATH&timeout=SECONDS]`, parts
 * percent-decoded. `id` may be given with or without 'client.'. `timeout` (default 30) bounds each
 * wait for the cluster. Anything else is USAGE. The location is `rbd://POOL[/NAMESPACE]`.
 */
export function parseRbdUrl(url: string): ArrayVolumeUrl {
  const bad = (why: string): CairnError => new CairnError('USAGE', `invalid RBD URL '${url}': ${why}; use ${EXAMPLES}`);
  const m = /^rbd:\/\/([^?#]*)(?:\?([^#]*))?$/i.exec(url);
  if (!m) throw bad(url.includes('#') ? 'a URL fragment (#...) has no meaning here' : 'not an rbd:// URL');
  const parts = m[1]!.split('/').map((p) => decode(p, bad));
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => p === '')) {
    throw bad('give the pool and the image (and a namespace between them, if any), each non-empty');
  }
  const [pool, namespace, image] = parts.length === 3 ? (parts as [string, string, string]) : [parts[0]!, '', parts[1]!];
  if (/[@]/.test(image)) throw bad(`'${image}' is not an image name (to back up a snapshot, name the image; Cairn takes its own)`);
  const target: RbdTarget = { pool, namespace, timeoutSeconds: DEFAULT_TIMEOUT_SECONDS };
  for (const part of m[2] ? m[2].split('&') : []) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const key = decode(eq < 0 ? part : part.slice(0, eq), bad);
    const value = eq < 0 ? '' : decode(part.slice(eq + 1), bad);
    if (value === '') throw bad(`'${key}' needs a value`);
    if (key === 'conf') target.conf = value;
    else if (key === 'keyring') target.keyring = value;
    else if (key === 'id') target.id = value.replace(/^client\./, '');
    else if (key === 'timeout') {
      const s = Number(value);
      if (!(Number.isInteger(s) && s >= 1 && s <= 3600)) throw bad(`timeout must be a whole number of seconds from 1 to 3600, not '${value}'`);
      target.timeoutSeconds = s;
    } else throw bad(`unknown parameter '${key}'`);
  }
  const driver = new RbdDriver(target);
  const connection = { conf: target.conf ?? '', id: target.id ?? '', keyring: target.keyring ?? '', timeout: String(target.timeoutSeconds) };
  return { location: driver.location, volume: image, connection, connect: async () => driver };
}

function decode(part: string, bad: (why: string) => CairnError): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw bad(`'${part}' is not valid percent-encoding`);
  }
}

interface ImageInfo {
  name: string;
  id: string;
  size: number;
  features?: string[];
}

interface DiffExtent {
  offset: number;
  length: number;
  exists: string | boolean;
}

/** execFile's error: `code` is the exit status (rbd exits with the errno), or 'ENOENT' when the tool is missing. */
type ExecError = Error & { code?: number | string; killed?: boolean };

/** How long an rbd call may run before it is killed: bounded librados waits plus work proportional to the image ('long': diff, listing). */
type Duration = 'short' | 'long';

export class RbdDriver implements ArrayDriver {
  readonly location: string;
  /** Per image name: whether diffs can use its object map (fast-diff). */
  private readonly fastDiff = new Map<string, boolean>();

  constructor(readonly target: RbdTarget) {
    this.location = `rbd://${target.pool}${target.namespace ? `/${target.namespace}` : ''}`;
  }

  async listVolumes(): Promise<ArrayVolume[]> {
    const out: ArrayVolume[] = [];
    for (const name of await this.imageNames()) out.push(await this.findVolume(name));
    return out;
  }

  async findVolume(nameOrId: string): Promise<ArrayVolume> {
    let info: ImageInfo;
    try {
      info = await this.info(['--image', nameOrId], `opening image ${nameOrId}`);
    } catch (err) {
      if (!(err instanceof CairnError && err.code === 'NOT_FOUND')) throw err;
      const names = await this.imageNames();
      // Not a name: perhaps the image id (as `rbd info` shows it).
      info = await this.info(['--image-id', nameOrId], `opening image id ${nameOrId}`).catch((byId: unknown) => {
        if (!(byId instanceof CairnError && byId.code === 'NOT_FOUND')) throw byId;
        const there = names.length ? `images there: ${names.join(', ')}` : 'the pool has no images';
        throw new CairnError('NOT_FOUND', `there is no RBD image '${nameOrId}' in ${this.location} (${there}); check the image name, or create it with rbd create`, {
          cause: err,
        });
      });
    }
    this.fastDiff.set(info.name, (info.features ?? []).includes('fast-diff'));
    return { id: info.name, name: info.name, size: info.size, uid: info.id };
  }

  async snapshotGroup(volumes: ArrayVolume[], name: string): Promise<GroupSnapshot> {
    const made: ArrayVolume[] = [];
    const snapshots: ArraySnapshot[] = [];
    try {
      for (const v of volumes) {
        made.push(v);
        await this.rbd(['snap', 'create', '--no-progress', ...this.image(v), '--snap', name], `creating snapshot ${name} of ${this.where(v)}`);
        const snapshot = (await this.listSnapshots(v)).find((s) => s.name === name);
        if (!snapshot) throw new CairnError('SOURCE_UNREADABLE', `snapshot ${name} of ${this.where(v)} was created but is not listed; check the image with rbd snap ls`);
        snapshots.push(snapshot);
      }
    } catch (err) {
      // The name is this backup's own, so a snapshot of that name is ours even if rbd failed (or was
      // killed) after making it.
      for (const v of made) await this.deleteSnapshot(v, { id: '', name }).catch(() => undefined);
      throw err;
    }
    return { snapshots, atomic: volumes.length <= 1 };
  }

  async listSnapshots(volume: ArrayVolume): Promise<ArraySnapshot[]> {
    const out = await this.rbd(['snap', 'ls', '--format', 'json', ...this.image(volume)], `listing the snapshots of ${this.where(volume)}`);
    return parseJson<{ id: number; name: string }[]>(out, 'rbd snap ls').map((s) => ({ id: String(s.id), name: s.name }));
  }

  async diff(volume: ArrayVolume, from: ArraySnapshot, to: ArraySnapshot): Promise<ByteRange[]> {
    const args = ['diff', '--format', 'json', ...this.image(volume), '--snap', to.name, '--from-snap', from.name, ...(await this.granularity(volume))];
    const extents = await this.extents(args, `comparing snapshots ${from.name} and ${to.name} of ${this.where(volume)}`);
    return merge(extents);
  }

  async allocated(volume: ArrayVolume, snapshot: ArraySnapshot): Promise<ByteRange[]> {
    const args = ['diff', '--format', 'json', ...this.image(volume), '--snap', snapshot.name, ...(await this.granularity(volume))];
    const extents = await this.extents(args, `listing the used extents of ${this.where(volume)}@${snapshot.name}`);
    return merge(extents.filter((e) => e.exists === true || e.exists === 'true'));
  }

  async openSnapshot(volume: ArrayVolume, snapshot: ArraySnapshot): Promise<SnapshotReader> {
    return RbdSnapshotReader.open(this.target, volume.id, snapshot.name, `${this.where(volume)}@${snapshot.name}`);
  }

  async deleteSnapshot(volume: ArrayVolume, snapshot: ArraySnapshot): Promise<void> {
    try {
      await this.rbd(['snap', 'rm', '--no-progress', ...this.image(volume), '--snap', snapshot.name], `deleting snapshot ${snapshot.name} of ${this.where(volume)}`);
    } catch (err) {
      if (!(err instanceof CairnError && err.code === 'NOT_FOUND')) throw err;
    }
  }

  async close(): Promise<void> {
    // Every call is its own rbd process: there is no session to end.
  }

  /** Names of the images in the pool (namespace); NOT_FOUND naming what exists when the pool or namespace does not. */
  private async imageNames(): Promise<string[]> {
    try {
      const out = await this.rbd(['ls', '--format', 'json', ...this.poolArgs()], `listing the images of ${this.location}`, 'long');
      return parseJson<string[]>(out, 'rbd ls').sort();
    } catch (err) {
      if (!(err instanceof CairnError && err.code === 'NOT_FOUND')) throw err;
      const { pool, namespace } = this.target;
      // One name a line (rados lspools has no JSON output).
      const pools = (await this.run('rados', ['lspools'], 'listing the pools')).split('\n').filter(Boolean);
      if (!pools.includes(pool)) {
        throw new CairnError('NOT_FOUND', `there is no pool '${pool}' in the Ceph cluster (pools: ${pools.join(', ') || 'none'}); check the pool name in the URL, or the cluster (conf=)`, {
          cause: err,
        });
      }
      const listed = await this.rbd(['namespace', 'ls', '--format', 'json', '--pool', pool], `listing the namespaces of pool ${pool}`);
      const namespaces = parseJson<{ name: string }[]>(listed, 'rbd namespace ls').map((n) => n.name);
      throw new CairnError(
        'NOT_FOUND',
        `there is no namespace '${namespace}' in pool '${pool}' (namespaces: ${namespaces.join(', ') || 'none'}); check the URL (rbd://POOL/NAMESPACE/IMAGE)`,
        { cause: err },
      );
    }
  }

  private async info(select: string[], what: string): Promise<ImageInfo> {
    const out = await this.rbd(['info', '--format', 'json', ...this.poolArgs(), ...select], what);
    return parseJson<ImageInfo>(out, 'rbd info');
  }

  private async granularity(volume: ArrayVolume): Promise<string[]> {
    if (!this.fastDiff.has(volume.id)) await this.findVolume(volume.id);
    return this.fastDiff.get(volume.id) ? ['--whole-object'] : [];
  }

  private async extents(args: string[], what: string): Promise<DiffExtent[]> {
    return parseJson<DiffExtent[]>(await this.rbd(args, what, 'long'), 'rbd diff');
  }

  private poolArgs(): string[] {
    return ['--pool', this.target.pool, ...(this.target.namespace ? ['--namespace', this.target.namespace] : [])];
  }

  private image(volume: ArrayVolume): string[] {
    return [...this.poolArgs(), '--image', volume.id];
  }

  private where(volume: ArrayVolume): string {
    return `${this.location}/${volume.name}`;
  }

  private rbd(args: string[], what: string, duration: Duration = 'short'): Promise<string> {
    return this.run('rbd', args, what, duration);
  }

  /** Runs rbd or rados with the cluster options; returns stdout, or throws a CairnError that says what to check. */
  private run(tool: 'rbd' | 'rados', args: string[], what: string, duration: Duration = 'short'): Promise<string> {
    const t = this.target;
    const s = t.timeoutSeconds;
    const cluster = [
      ...(t.conf ? ['--conf', t.conf] : []),
      ...(t.id ? ['--id', t.id] : []),
      ...(t.keyring ? ['--keyring', t.keyring] : []),
      ...Object.entries(librados(s)).map(([k, v]) => `--${k}=${v}`),
    ];
    // librados bounds each wait; this catches whatever else could hang (a listing of a huge image may legitimately take long).
    const killAfterMs = (duration === 'long' ? 3600 : 6 * s + 30) * 1000;
    return new Promise((resolve, reject) => {
      execFile(tool, [...cluster, ...args], { timeout: killAfterMs, maxBuffer: 256 * 1024 * 1024, env: childEnv() }, (err, stdout, stderr) => {
        if (!err) return resolve(stdout);
        reject(this.translate(tool, err as ExecError, stderr, what, killAfterMs));
      });
    });
  }

  private translate(tool: string, err: ExecError, stderr: string, what: string, killAfterMs: number): CairnError {
    const t = this.target;
    const conf = t.conf ? `the Ceph config ${t.conf}` : "Ceph's default config (/etc/ceph/ceph.conf)";
    const client = `client.${t.id ?? 'admin'}`;
    const fail = (code: ErrorCode, message: string): CairnError => new CairnError(code, message, { cause: err });
    if (err.code === 'ENOENT') return fail('SOURCE_UNREADABLE', `${what}: the ${tool} tool is not installed; install the Debian package ceph-common`);
    if (err.killed) {
      return fail('SOURCE_UNREADABLE', `${what}: ${tool} got no answer from the Ceph cluster within ${killAfterMs / 1000} s; check that the cluster of ${conf} is healthy (ceph -s)`);
    }
    const said = rbdSaid(stderr) || err.message;
    if (/unable to open config file|parse error|error parsing config/i.test(stderr)) {
      return fail('SOURCE_UNREADABLE', `${what}: ${tool} cannot read ${conf}: ${said}; check the conf= path of the URL`);
    }
    if (/couldn't connect to the cluster|error connecting to the cluster/i.test(stderr)) {
      if (err.code === 110 || /timed out/i.test(stderr)) {
        return fail(
          'SOURCE_UNREADABLE',
          `${what}: cannot reach the Ceph cluster of ${conf} within ${t.timeoutSeconds} s (${said}); check that the monitors in its mon_host are up and reachable from here`,
        );
      }
      return fail(
        'SOURCE_AUTH_FAILED',
        `${what}: the Ceph cluster of ${conf} refused ${client} (${said}); check the client name (id=), its keyring (keyring=) and that its caps allow rbd on the pool (e.g. 'profile rbd pool=${t.pool}')`,
      );
    }
    if (err.code === 2 || /\(2\) No such file or directory|does not exist/.test(stderr)) return fail('NOT_FOUND', `${what}: ${said}`);
    if (/\((1|13)\) (Operation not permitted|Permission denied)/.test(stderr)) {
      return fail('SOURCE_AUTH_FAILED', `${what}: ${client} is not allowed to (${said}); check its caps (e.g. 'profile rbd pool=${t.pool}')`);
    }
    return fail('SOURCE_UNREADABLE', `${what}: ${tool} failed: ${said}`);
  }
}

/** Librados options bounding every wait for the cluster (also given to qemu's rbd driver). */
function librados(timeoutSeconds: number): Record<string, string> {
  return {
    client_mount_timeout: String(timeoutSeconds),
    rados_mon_op_timeout: String(timeoutSeconds),
    // A read of a degraded placement group can wait for peering; give it more than a monitor call.
    rados_osd_op_timeout: String(4 * timeoutSeconds),
  };
}

/** The meaningful lines of a Ceph tool's stderr: its own 'rbd: ...' lines, else the last log lines without their timestamps. */
function rbdSaid(stderr: string): string {
  const lines = stderr
    .split('\n')
    .map((l) => l.replace(/^\S+T\S+\s+[0-9a-f]+\s+-?\d+\s+/, '').trim())
    .filter((l) => l !== '' && !/keyring|disabling cephx|AuthRegistry|% complete/.test(l));
  const own = lines.filter((l) => /^(rbd|rados):/.test(l));
  return [...new Set(own.length ? own : lines.slice(-2))].join('; ');
}

function parseJson<T>(text: string, what: string): T {
  try {
    return JSON.parse(text) as T;
  } catch (err) {
    throw new CairnError('SOURCE_UNREADABLE', `${what} printed output that is not JSON: ${JSON.stringify(text.slice(0, 200))}`, { cause: err });
  }
}

/** Sorted, non-overlapping ranges covering the extents. */
function merge(extents: ByteRange[]): ByteRange[] {
  const sorted = extents.map((e) => ({ offset: e.offset, length: e.length })).filter((e) => e.length > 0).sort((a, b) => a.offset - b.offset);
  const out: ByteRange[] = [];
  for (const e of sorted) {
    const last = out[out.length - 1];
    if (last && e.offset <= last.offset + last.length) last.length = Math.max(last.length, e.offset + e.length - last.offset);
    else out.push(e);
  }
  return out;
}

/**
 * One snapshot served read-only by its own qemu-nbd (qemu's rbd driver) on a socket in a private
 * temp folder. qemu-nbd serves the one connection and exits when it ends, so a killed agent
 * leaves no server; close() makes sure it is gone and removes the folder.
 */
class RbdSnapshotReader implements SnapshotReader {
  private constructor(
    private readonly client: NbdClient,
    private readonly dir: string,
    private readonly pid: number,
  ) {}

  get size(): number {
    return this.client.size;
  }

  static async open(target: RbdTarget, image: string, snapshot: string, display: string): Promise<RbdSnapshotReader> {
    const dir = await mkdtemp(join(tmpdir(), 'cairn-rbd-'));
    const socket = join(dir, 'nbd.sock');
    const pidFile = join(dir, 'qemu-nbd.pid');
    const keyvalues = Object.entries({ ...(target.keyring ? { keyring: target.keyring } : {}), ...librados(target.timeoutSeconds) }).flat();
    const rbd = {
      driver: 'rbd',
      pool: target.pool,
      ...(target.namespace ? { namespace: target.namespace } : {}),
      image,
      snapshot,
      ...(target.conf ? { conf: target.conf } : {}),
      ...(target.id ? { user: target.id } : {}),
      // qemu's own spelling of extra librados options (what `rbd:...:key=value` turns into).
      '=keyvalue-pairs': JSON.stringify(keyvalues),
    };
    const spec = { driver: 'raw', file: rbd };
    let pid = 0;
    try {
      await runQemuTool(
        'qemu-nbd',
        ['--fork', `--pid-file=${pidFile}`, `--socket=${socket}`, '--export-name=cairn', '--read-only', `json:${JSON.stringify(spec)}`],
        `serving ${display} over NBD (qemu's rbd driver, Debian package qemu-block-extra)`,
        (8 * target.timeoutSeconds + 30) * 1000,
      );
      pid = Number((await readFile(pidFile, 'utf8')).trim());
      const client = await NbdClient.connect({ unix: socket }, { exportName: 'cairn', requestSize: REQUEST_SIZE });
      return new RbdSnapshotReader(client, dir, pid);
    } catch (err) {
      if (pid > 0) {
        try {
          process.kill(pid, 'SIGTERM');
        } catch {
          // gone already
        }
        await waitForExit(pid);
      }
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  async read(buffer: Buffer, length: number, position: number): Promise<number> {
    const n = Math.max(0, Math.min(length, this.size - position));
    if (n > 0) await this.client.readInto(buffer.subarray(0, n), position);
    return n;
  }

  async close(): Promise<void> {
    await this.client.close().catch(() => undefined);
    await waitForExit(this.pid);
    await rm(this.dir, { recursive: true, force: true });
  }
}
