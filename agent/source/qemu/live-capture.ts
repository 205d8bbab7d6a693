import { createHash } from 'node:crypto';
import { mkdir, rm, stat } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CairnError, fromSystemError } from '../../../shared/errors.js';
import { QmpClient, QmpError } from './qmp-client.js';

/**
 * Point-in-time capture of disks in use, through QMP against qemu-storage-daemon (QEMU 7.2), the way
 * libvirt's pull-mode backup does it ("image fleecing", docs/interop/bitmaps.rst and the iotest
 * tests/image-fleecing):
 *
 *   export (read-only, NBD) --> fleecing overlay (qcow2 in scratchDir) --backing--> disk node
 *                                        ^ target                                     ^ file
 *   guest / VM export ------------> copy-before-write filter (inserted by the backup job)
 *
 * One `transaction` starts, for every disk of the server at once, a `blockdev-backup` job with
 * sync=none from the disk to its overlay: from then on the job's copy-before-write filter copies
 * old data into the overlay before a guest write lands, so the overlay (reading unchanged clusters
 * through its backing link) is the disk as it was at the transaction. The same transaction adds
 * `newBitmap` to every disk (the next backup's change token) and freezes a copy of `oldBitmap` on
 * the overlay (a disabled bitmap, merged from the disk's) that the export offers as the NBD meta
 * context `qemu:dirty-bitmap:OLDBITMAP`.
 *
 * Why blockdev-backup and not a copy-before-write filter with snapshot-access (both exist in 7.2):
 * the filter would have to be inserted above a node that a guest device or an export already uses,
 * and 7.2 has no QMP command to re-point an export (blockdev-replace came later; qom-set works only
 * for guest devices); blockdev-add is also no transaction action, so several disks could not be
 * caught at one instant. The backup job inserts its filter above every user itself, is a
 * transaction action, and, since the overlay's backing chain contains the source, serialises its
 * copies against reads of the overlay (block/copy-before-write.c), so the view never shows new data.
 *
 * Names: everything Cairn creates in the daemon for a disk is named from a hash of its node name
 * (node names are at most 31 characters): `cairn-fleece-<8 hex>` for the overlay node, its job and
 * its export, with `-f` for the overlay's file node, `-c` for the filter, `-create` for the
 * blockdev-create job; the overlay file is `<scratchDir>/cairn-fleece-<8 hex>.qcow2`. A capture
 * first removes such leftovers of a killed run, but only those of its own nodes, so captures of
 * other servers' disks on the same daemon may run at the same time. One capture per disk at a time.
 *
 * Risk to know: while a capture is open, a guest write that cannot be copied to the overlay (the
 * scratch file system is full) fails with an I/O error in the guest: QEMU 7.2's backup job keeps
 * the snapshot intact rather than the guest write. Size scratchDir for the writes of one backup.
 */

export interface LiveCaptureRequest {
  qmpSocket: string;
  /** Block node names (node-name in the daemon) of the disks of one server: captured in ONE transaction (consistency group). */
  nodes: string[];
  /** Bitmap to create now on every node (persistent if the node's format supports it, e.g. qcow2; else non-persistent): tracks writes from this point on; the next backup's change token. Must start with bitmapPrefix. */
  newBitmap: string;
  /** Bitmap created at the parent backup (the parent's change token); undefined: no parent. */
  oldBitmap?: string;
  /** Bitmaps whose names start with this prefix, other than oldBitmap, are leftovers of failed runs and are removed at capture (a newBitmap that exists already too: it must start now). Not empty. */
  bitmapPrefix: string;
  /** Folder for the fleecing overlays (temporary qcow2 files) and the NBD server's socket. Created if missing; the daemon must be able to write there. */
  scratchDir: string;
  /**
   * Unix socket of the NBD server the daemon runs already (its --nbd-server addr.path), if it runs
   * one: QMP in 7.2 cannot tell a server's address, and a daemon has at most one server. When the
   * daemon runs none, Cairn starts one on `<scratchDir>/cairn-fleece-nbd.sock` and stops it at teardown.
   */
  nbdSocket?: string;
  signal?: AbortSignal;
}

export interface CapturedDisk {
  node: string;
  /** Unix socket of the daemon's NBD server and the export name of this node's point-in-time view (read-only). */
  socket: string;
  exportName: string;
  size: number;
  /** NBD meta context with changes since oldBitmap ('qemu:dirty-bitmap:NAME'), or undefined if there was no oldBitmap or it is missing, inconsistent or disabled on this node. */
  dirtyContext: string | undefined;
  /** Why dirtyContext is undefined although oldBitmap was given, e.g. "bitmap cairn-x is missing on node disk0". */
  warning?: string;
}

/** commit and abort connect to the QMP socket again (a monitor serves one client at a time, so a capture does not hold it); if the daemon cannot be reached they throw and may be retried, and the next capture of these nodes removes what is left. */
export interface LiveCapture {
  disks: CapturedDisk[];
  /** After the backup is committed: remove exports, cancel the fleecing jobs, delete fleecing nodes and files, remove oldBitmap; newBitmap stays (it is the next change token). Idempotent. */
  commit(): Promise<void>;
  /** On failure: the same teardown, but remove newBitmap and keep oldBitmap, so the next backup still sees every change since the parent. Idempotent. */
  abort(): Promise<void>;
}

const NAME_PREFIX = 'cairn-fleece-';
const NBD_SOCKET_NAME = `${NAME_PREFIX}nbd.sock`;
/** sun_path holds 108 bytes with the terminating NUL. */
const MAX_UNIX_PATH = 107;
/** Limit for the daemon to finish a job or close an export Cairn waits for. */
const WAIT_TIMEOUT_MS = 30_000;
const POLL_INTERVAL_MS = 5;

/** The names of what Cairn creates in the daemon for one disk. */
interface FleeceNames {
  node: string;
  overlay: string;
  overlayFile: string;
  filter: string;
  job: string;
  createJob: string;
  exportId: string;
  exportName: string;
  file: string;
}

interface DirtyBitmapInfo {
  /** Absent for the anonymous bitmaps of jobs (a backup job's copy-before-write filter keeps one). */
  name?: string;
  recording: boolean;
  busy: boolean;
  persistent: boolean;
  granularity: number;
  count: number;
  inconsistent?: boolean;
}

interface BlockNodeInfo {
  'node-name'?: string;
  drv: string;
  ro: boolean;
  image: { 'virtual-size': number; 'format-specific'?: { type: string; data?: { compat?: string } } };
  'dirty-bitmaps'?: DirtyBitmapInfo[];
}

interface ExportInfo {
  id: string;
  type: string;
  'node-name': string;
  'shutting-down': boolean;
}

interface JobInfo {
  id: string;
  type: string;
  status: string;
}

/** How the captured views are served, and whether Cairn owns the server. */
interface NbdServer {
  socket: string;
  startedByCairn: boolean;
}

/**
 * Captures `req.nodes` at one instant and exports their point-in-time views over NBD. On failure
 * everything created so far is removed again (newBitmap too) and the error is thrown.
 */
export async function captureLive(req: LiveCaptureRequest): Promise<LiveCapture> {
  checkRequest(req);
  req.signal?.throwIfAborted();
  await mkdir(req.scratchDir, { recursive: true }).catch((err: unknown) => {
    throw fromSystemError(err, 'creating the scratch folder for fleecing overlays', req.scratchDir);
  });
  const names = req.nodes.map((node) => fleeceNames(node, req.scratchDir));
  const qmp = await QmpClient.connect(req.qmpSocket);
  let server: NbdServer | undefined;
  try {
    const infos = await readNodes(qmp, req.nodes);
    // Before anything is removed, so that a daemon Cairn cannot serve from loses nothing.
    server = await startNbdServer(qmp, req);
    await removeFleecing(qmp, names);
    await removeBitmaps(qmp, req.nodes, (b) => b.startsWith(req.bitmapPrefix) && b !== req.oldBitmap);
    req.signal?.throwIfAborted();

    for (const n of names) await createOverlay(qmp, n, infos.get(n.node)!.image['virtual-size']);
    req.signal?.throwIfAborted();

    const disks: CapturedDisk[] = [];
    const actions: unknown[] = [];
    for (const n of names) {
      const info = infos.get(n.node)!;
      actions.push(action('block-dirty-bitmap-add', { node: n.node, name: req.newBitmap, persistent: canPersistBitmaps(info) }));
      const old = req.oldBitmap === undefined ? undefined : usableBitmap(info, n.node, req.oldBitmap);
      if (old?.bitmap) {
        actions.push(
          action('block-dirty-bitmap-add', { node: n.overlay, name: req.oldBitmap, granularity: old.bitmap.granularity, disabled: true }),
          action('block-dirty-bitmap-merge', { node: n.overlay, target: req.oldBitmap, bitmaps: [{ node: n.node, name: req.oldBitmap }] }),
        );
      }
      actions.push(action('blockdev-backup', { 'job-id': n.job, device: n.node, target: n.overlay, sync: 'none', 'filter-node-name': n.filter }));
      disks.push({
        node: n.node,
        socket: server.socket,
        exportName: n.exportName,
        size: info.image['virtual-size'],
        dirtyContext: old?.bitmap ? `qemu:dirty-bitmap:${req.oldBitmap}` : undefined,
        ...(old?.warning === undefined ? {} : { warning: old.warning }),
      });
    }
    await qmp.execute('transaction', { actions });

    for (const [i, n] of names.entries()) {
      await qmp.execute('block-export-add', {
        type: 'nbd',
        id: n.exportId,
        'node-name': n.overlay,
        name: n.exportName,
        description: `Cairn: point-in-time view of ${n.node}`,
        writable: false,
        bitmaps: disks[i]!.dirtyContext === undefined ? [] : [req.oldBitmap!],
      });
    }
    req.signal?.throwIfAborted();
    return openCapture(req, names, disks, server);
  } catch (err) {
    // Best effort: what stays behind is removed by the next capture of these nodes.
    await tearDown(qmp, req, names, server, 'abort').catch(() => undefined);
    throw err;
  } finally {
    await qmp.close();
  }
}

function openCapture(req: LiveCaptureRequest, names: FleeceNames[], disks: CapturedDisk[], server: NbdServer): LiveCapture {
  let settled = false;
  let running: Promise<void> | undefined;
  // The first of commit/abort to succeed decides; later calls do nothing. A failed one may be retried.
  const finish = (outcome: 'commit' | 'abort'): Promise<void> => {
    if (settled) return Promise.resolve();
    running ??= (async () => {
      const qmp = await QmpClient.connect(req.qmpSocket);
      try {
        await tearDown(qmp, req, names, server, outcome);
        settled = true;
      } finally {
        running = undefined;
        await qmp.close();
      }
    })();
    return running;
  };
  return { disks, commit: () => finish('commit'), abort: () => finish('abort') };
}

/**
 * Removes exports, jobs, overlay nodes and files of `names`, stops the NBD server if Cairn started
 * it and no other NBD export remains, then removes oldBitmap (commit) or newBitmap (abort).
 */
async function tearDown(
  qmp: QmpClient,
  req: LiveCaptureRequest,
  names: FleeceNames[],
  server: NbdServer | undefined,
  outcome: 'commit' | 'abort',
): Promise<void> {
  await removeFleecing(qmp, names);
  if (server?.startedByCairn) {
    const exports = await qmp.execute<ExportInfo[]>('query-block-exports');
    if (!exports.some((e) => e.type === 'nbd')) {
      await qmp.execute('nbd-server-stop');
      await rm(server.socket, { force: true });
    }
  }
  const doomed = outcome === 'commit' ? req.oldBitmap : req.newBitmap;
  if (doomed !== undefined) await removeBitmaps(qmp, req.nodes, (b) => b === doomed);
}

function checkRequest(req: LiveCaptureRequest): void {
  const bad = (why: string): CairnError => new CairnError('USAGE', `live capture through ${req.qmpSocket}: ${why}`);
  if (req.nodes.length === 0) throw bad('no block nodes given');
  const twice = req.nodes.find((n, i) => req.nodes.indexOf(n) !== i);
  if (twice !== undefined) throw bad(`node ${twice} is given twice`);
  if (req.bitmapPrefix === '') throw bad('the bitmap prefix is empty, so every bitmap would count as a leftover');
  if (!req.newBitmap.startsWith(req.bitmapPrefix)) {
    throw bad(`the new bitmap ${req.newBitmap} does not start with the prefix ${req.bitmapPrefix}, so a failed run's bitmap could never be cleaned up`);
  }
  if (req.newBitmap === req.oldBitmap) throw bad(`the new and the old bitmap are both ${req.newBitmap}`);
  const socket = join(req.scratchDir, NBD_SOCKET_NAME);
  if (Buffer.byteLength(socket) > MAX_UNIX_PATH) throw bad(`the scratch folder's path is too long for a Unix socket (${socket}); use a shorter one`);
}

function fleeceNames(node: string, scratchDir: string): FleeceNames {
  const base = NAME_PREFIX + createHash('sha256').update(node).digest('hex').slice(0, 8);
  return {
    node,
    overlay: base,
    overlayFile: `${base}-f`,
    filter: `${base}-c`,
    job: base,
    createJob: `${base}-create`,
    exportId: base,
    exportName: NAME_PREFIX + node,
    file: join(scratchDir, `${base}.qcow2`),
  };
}

/** The nodes' descriptions; fails naming the nodes the daemon does not have. */
async function readNodes(qmp: QmpClient, nodes: string[]): Promise<Map<string, BlockNodeInfo>> {
  const all = await qmp.execute<BlockNodeInfo[]>('query-named-block-nodes', { flat: true });
  const byName = new Map(all.filter((n) => n['node-name'] !== undefined).map((n) => [n['node-name']!, n]));
  const missing = nodes.filter((n) => !byName.has(n));
  if (missing.length > 0) {
    const known = [...byName.keys()].filter((n) => !n.startsWith(NAME_PREFIX) && !n.startsWith('#')).sort();
    throw new CairnError(
      'SOURCE_UNREADABLE',
      `qemu-storage-daemon at ${qmp.socketPath} has no block node named ${missing.join(', ')} (its nodes: ${known.join(', ') || 'none'}); give the node-name of each disk's top node`,
    );
  }
  return new Map(nodes.map((n) => [n, byName.get(n)!]));
}

/** Persistent bitmaps need a writable qcow2 v3 image; other nodes get bitmaps that live until the daemon exits. */
function canPersistBitmaps(info: BlockNodeInfo): boolean {
  return info.drv === 'qcow2' && !info.ro && info.image['format-specific']?.data?.compat !== '0.10';
}

function usableBitmap(info: BlockNodeInfo, node: string, name: string): { bitmap?: DirtyBitmapInfo; warning?: string } {
  const bitmap = info['dirty-bitmaps']?.find((b) => b.name === name);
  if (!bitmap) return { warning: `bitmap ${name} is missing on node ${node}` };
  if (bitmap.inconsistent) return { warning: `bitmap ${name} on node ${node} is inconsistent (the daemon stopped without saving it)` };
  if (!bitmap.recording) return { warning: `bitmap ${name} on node ${node} is disabled, so it may have missed writes` };
  return { bitmap };
}

function action(type: string, data: Record<string, unknown>): unknown {
  return { type, data };
}

async function removeBitmaps(qmp: QmpClient, nodes: string[], doomed: (name: string) => boolean): Promise<void> {
  const infos = await readNodes(qmp, nodes);
  for (const [node, info] of infos) {
    for (const b of info['dirty-bitmaps'] ?? []) {
      if (b.name !== undefined && doomed(b.name)) await qmp.execute('block-dirty-bitmap-remove', { node, name: b.name });
    }
  }
}

/**
 * A blank qcow2 of the disk's size whose backing is the disk node, as the fleecing docs do; the
 * daemon creates the file itself (blockdev-create), so it owns it and Cairn needs no qemu-img.
 */
async function createOverlay(qmp: QmpClient, n: FleeceNames, size: number): Promise<void> {
  await runCreateJob(qmp, n.createJob, { driver: 'file', filename: n.file, size: 0 });
  await qmp.execute('blockdev-add', { driver: 'file', 'node-name': n.overlayFile, filename: n.file });
  await runCreateJob(qmp, n.createJob, { driver: 'qcow2', file: n.overlayFile, size });
  await qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': n.overlay, file: n.overlayFile, backing: n.node });
}

async function runCreateJob(qmp: QmpClient, id: string, options: Record<string, unknown>): Promise<void> {
  await qmp.execute('blockdev-create', { 'job-id': id, options });
  let job: (JobInfo & { error?: string }) | undefined;
  await waitUntil(qmp, `blockdev-create job ${id} to finish`, async () => {
    job = (await qmp.execute<(JobInfo & { error?: string })[]>('query-jobs')).find((j) => j.id === id);
    return job === undefined || job.status === 'concluded';
  });
  if (job) await qmp.execute('job-dismiss', { id });
  if (job?.error !== undefined) {
    throw new CairnError('SOURCE_UNREADABLE', `creating ${String(options.driver)} fleecing overlay for ${id} through ${qmp.socketPath} failed: ${job.error}`);
  }
}

/** Removes exports, jobs, nodes and files Cairn created for `names`; what is absent is skipped. */
async function removeFleecing(qmp: QmpClient, names: FleeceNames[]): Promise<void> {
  const exportIds = new Set(names.map((n) => n.exportId));
  const ours = <T extends { id: string }>(items: T[], ids: Set<string>): T[] => items.filter((i) => ids.has(i.id));
  for (const e of ours(await qmp.execute<ExportInfo[]>('query-block-exports'), exportIds)) {
    if (!e['shutting-down']) await qmp.execute('block-export-del', { id: e.id, mode: 'hard' });
  }
  await waitUntil(qmp, 'the fleecing exports to close', async () => ours(await qmp.execute<ExportInfo[]>('query-block-exports'), exportIds).length === 0);

  const jobIds = new Set(names.flatMap((n) => [n.job, n.createJob]));
  await waitUntil(qmp, 'the fleecing jobs to end', async () => {
    const jobs = ours(await qmp.execute<JobInfo[]>('query-jobs'), jobIds);
    for (const j of jobs) {
      if (j.status === 'concluded') await qmp.execute('job-dismiss', { id: j.id });
      else if (j.type === 'backup' && ['running', 'paused', 'ready', 'standby'].includes(j.status)) await qmp.execute('job-cancel', { id: j.id });
    }
    return jobs.length === 0;
  });

  const present = new Set((await qmp.execute<BlockNodeInfo[]>('query-named-block-nodes', { flat: true })).map((n) => n['node-name']));
  for (const n of names) {
    if (present.has(n.overlay)) await qmp.execute('blockdev-del', { 'node-name': n.overlay });
    if (present.has(n.overlayFile)) await qmp.execute('blockdev-del', { 'node-name': n.overlayFile });
    await rm(n.file, { force: true }).catch((err: unknown) => {
      throw fromSystemError(err, 'removing a fleecing overlay', n.file);
    });
  }
}

/**
 * Starts the daemon's NBD server on a socket in scratchDir, or uses the one it runs: the socket the
 * caller names, or Cairn's own socket left by a killed run (only if something still listens there).
 */
async function startNbdServer(qmp: QmpClient, req: LiveCaptureRequest): Promise<NbdServer> {
  const own = join(req.scratchDir, NBD_SOCKET_NAME);
  try {
    await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: own } } });
    return { socket: own, startedByCairn: true };
  } catch (err) {
    if (!(err instanceof QmpError && /already running/i.test(err.desc))) throw err;
  }
  if (req.nbdSocket !== undefined) return { socket: req.nbdSocket, startedByCairn: false };
  if (await listening(own)) return { socket: own, startedByCairn: true };
  throw new CairnError(
    'SOURCE_UNREADABLE',
    `qemu-storage-daemon at ${req.qmpSocket} runs an NBD server already, and QMP cannot tell its address; give its Unix socket (the --nbd-server addr.path) as the NBD socket of the capture`,
  );
}

async function listening(socket: string): Promise<boolean> {
  const isSocket = await stat(socket).then((s) => s.isSocket(), () => false);
  if (!isSocket) return false;
  return new Promise((resolve) => {
    const probe = createConnection({ path: socket });
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

async function waitUntil(qmp: QmpClient, what: string, done: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + WAIT_TIMEOUT_MS;
  while (!(await done())) {
    if (Date.now() > deadline) {
      throw new CairnError('SOURCE_UNREADABLE', `waited ${WAIT_TIMEOUT_MS / 1000} s for ${what} on ${qmp.socketPath} in vain`, { retryable: true });
    }
    await sleep(POLL_INTERVAL_MS);
  }
}
