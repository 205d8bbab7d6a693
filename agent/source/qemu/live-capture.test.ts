/**
 * Live capture against a real qemu-storage-daemon: two 64 MiB disks (disk0 qcow2, disk1 raw) opened
 * as block nodes, a QMP monitor for Cairn and a second one for the tests' own queries (a monitor
 * serves one client at a time), and a writable NBD export of each disk standing in for the VM, so a
 * test can write while a capture is open (qemu-io over NBD). Captured views are read with NbdClient.
 * A second daemon without an NBD server shows Cairn starting (and stopping) its own.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { accessSync, constants as fsConstants } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server as NetServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CairnError } from '../../../shared/errors.js';
import { NbdClient, type Extent } from '../nbd/nbd-client.js';
import { captureLive, type CapturedDisk, type LiveCaptureRequest } from './live-capture.js';
import { QmpClient, QmpError } from './qmp-client.js';
import { failure } from '../../../test/support/caught.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const DISK_SIZE = 64 * MiB;
/** Each test takes well under a second; a hang should fail fast, not after the global 120 s. */
const TEST_TIMEOUT_MS = 20_000;
const PREFIX = 'cairn-';

const TOOLS: Record<string, string> = {
  'qemu-img': 'qemu-utils',
  'qemu-io': 'qemu-utils',
  'qemu-storage-daemon': 'qemu-system-common',
};

interface Write {
  offset: number;
  length: number;
  pattern: number;
}

/** What the "VM" has written before any capture. */
const INITIAL: Record<string, Write[]> = {
  disk0: [
    { offset: 0, length: 1 * MiB, pattern: 0x11 },
    { offset: 10 * MiB, length: 4 * MiB, pattern: 0x22 },
    { offset: 40 * MiB, length: 1 * MiB, pattern: 0x33 },
  ],
  disk1: [
    { offset: 5 * MiB, length: 1 * MiB, pattern: 0x44 },
    { offset: 32 * MiB, length: 2 * MiB, pattern: 0x55 },
  ],
};

/** Written while a capture is open: unaligned, across granule boundaries, up to the disk's end. */
function laterWrites(pattern: number): Record<string, Write[]> {
  return {
    disk0: [
      { offset: 10 * MiB + 4 * KiB, length: 3 * MiB, pattern },
      { offset: 40 * MiB + 60 * KiB, length: 8 * KiB, pattern },
      { offset: DISK_SIZE - 100 * KiB, length: 100 * KiB, pattern },
    ],
    disk1: [
      { offset: 5 * MiB, length: 64 * KiB, pattern },
      { offset: 33 * MiB - KiB, length: 2 * KiB, pattern },
    ],
  };
}

interface Daemon {
  /** Cairn's monitor. */
  qmpSocket: string;
  /** The tests' own monitor, connected for the whole suite. */
  inspect: QmpClient;
  /** The "VM"'s NBD server (exports vm0, vm1), if started with one. */
  vmSocket: string | undefined;
  scratchDir: string;
}

let dir: string;
const children: ChildProcess[] = [];
const inspectors: QmpClient[] = [];

beforeAll(async () => {
  requireTools();
  dir = await mkdtemp(join(tmpdir(), 'cairn-live-'));
});

afterAll(async () => {
  for (const q of inspectors) await q.close();
  for (const c of children) c.kill('SIGKILL');
  await Promise.all(children.map((c) => (c.exitCode !== null || c.signalCode !== null ? undefined : new Promise((r) => c.once('exit', r)))));
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('captureLive with a VM writing through the daemon', { timeout: TEST_TIMEOUT_MS }, () => {
  let d: Daemon;
  const request = (r: Partial<LiveCaptureRequest> & { newBitmap: string }): LiveCaptureRequest => ({
    qmpSocket: d.qmpSocket,
    nodes: ['disk0', 'disk1'],
    bitmapPrefix: PREFIX,
    scratchDir: d.scratchDir,
    nbdSocket: d.vmSocket,
    ...r,
  });

  beforeAll(async () => {
    d = await startDaemon('vm', [
      { node: 'disk0', format: 'qcow2' },
      { node: 'disk1', format: 'raw' },
    ]);
    for (const [disk, writes] of Object.entries(INITIAL)) vmWrite(d, disk, writes);
  });

  it('captures both disks in one transaction: writes after the capture stay out of the view', async () => {
    const before = { disk0: await liveSha256(d, 'disk0'), disk1: await liveSha256(d, 'disk1') };
    const capture = await captureLive(request({ newBitmap: 'cairn-a1' }));
    expect(capture.disks).toEqual([
      { node: 'disk0', socket: d.vmSocket, exportName: 'cairn-fleece-disk0', size: DISK_SIZE, dirtyContext: undefined },
      { node: 'disk1', socket: d.vmSocket, exportName: 'cairn-fleece-disk1', size: DISK_SIZE, dirtyContext: undefined },
    ]);
    // One fleecing job per disk, running side by side.
    expect((await d.inspect.execute<{ device: string }[]>('query-block-jobs')).length).toBe(2);

    const later = laterWrites(0xab);
    for (const [disk, writes] of Object.entries(later)) vmWrite(d, disk, writes);

    for (const disk of capture.disks) {
      const node = disk.node as 'disk0' | 'disk1';
      expect(sha256(await readView(disk)), `${node}: the view is the disk at capture time`).toBe(before[node]);
      for (const w of later[node]!) {
        // Buffers compared with equals(): toEqual walks megabytes element by element (seconds).
        expect((await liveRead(d, node, w.offset, w.length)).equals(Buffer.alloc(w.length, w.pattern)), `${node}: the VM's write landed`).toBe(true);
      }
      // The new bitmap counts exactly the granules written since the capture.
      const bitmap = await bitmapInfo(d, node, 'cairn-a1');
      expect(bitmap).toMatchObject({ recording: true, persistent: node === 'disk0' });
      expect(bitmap!.count).toBe(granuleBytes(later[node]!, bitmap!.granularity));
    }
    await capture.commit();
    await expectNoFleecing(d);
    expect(await bitmapNames(d, 'disk0')).toEqual(['cairn-a1']);
  });

  it('reports at the next capture exactly the ranges written between the two captures', async () => {
    await (await captureLive(request({ newBitmap: 'cairn-b1' }))).commit();
    const between = laterWrites(0xcd);
    for (const [disk, writes] of Object.entries(between)) vmWrite(d, disk, writes);

    const capture = await captureLive(request({ newBitmap: 'cairn-b2', oldBitmap: 'cairn-b1' }));
    for (const disk of capture.disks) {
      expect(disk.dirtyContext).toBe('qemu:dirty-bitmap:cairn-b1');
      expect(disk.warning).toBeUndefined();
      const granularity = (await bitmapInfo(d, disk.node, 'cairn-b2'))!.granularity;
      const client = await NbdClient.connect({ unix: disk.socket }, { exportName: disk.exportName, metaContexts: [disk.dirtyContext!] });
      try {
        const dirty = merge((await client.blockStatus(0, disk.size, disk.dirtyContext!)).filter((e) => e.flags & 1));
        expect(dirty, disk.node).toEqual(roundToGranules(between[disk.node]!, granularity));
        for (const r of dirty) expect((await client.read(r.offset, r.length)).equals(await liveRead(d, disk.node, r.offset, r.length))).toBe(true);
      } finally {
        await client.close();
      }
    }
    await capture.commit();
    expect(await bitmapNames(d, 'disk0')).toEqual(['cairn-b2']);
    expect(await bitmapNames(d, 'disk1')).toEqual(['cairn-b2']);
  });

  it('commit removes oldBitmap and keeps newBitmap; abort removes newBitmap and keeps oldBitmap', async () => {
    await (await captureLive(request({ newBitmap: 'cairn-c1' }))).commit();

    const failed = await captureLive(request({ newBitmap: 'cairn-c2', oldBitmap: 'cairn-c1' }));
    expect(await bitmapNames(d, 'disk0')).toEqual(['cairn-c1', 'cairn-c2']);
    vmWrite(d, 'disk0', [{ offset: 2 * MiB, length: 4 * KiB, pattern: 0x01 }]);
    await failed.abort();
    await expectNoFleecing(d);
    expect(await bitmapNames(d, 'disk0')).toEqual(['cairn-c1']);
    expect(await bitmapNames(d, 'disk1')).toEqual(['cairn-c1']);
    await failed.abort(); // idempotent
    await failed.commit(); // the first outcome stands: c1 stays
    expect(await bitmapNames(d, 'disk0')).toEqual(['cairn-c1']);
    expect((await bitmapInfo(d, 'disk0', 'cairn-c1'))!.count, 'c1 still holds the write made during the failed run').toBeGreaterThan(0);

    const next = await captureLive(request({ newBitmap: 'cairn-c3', oldBitmap: 'cairn-c1' }));
    await next.commit();
    await next.commit(); // idempotent
    await next.abort(); // no effect after commit
    await expectNoFleecing(d);
    expect(await bitmapNames(d, 'disk0')).toEqual(['cairn-c3']);
    expect(await bitmapNames(d, 'disk1')).toEqual(['cairn-c3']);
  });

  it('gives no dirty context, and says why, when oldBitmap is missing', async () => {
    const capture = await captureLive(request({ newBitmap: 'cairn-d1', oldBitmap: 'cairn-gone' }));
    expect(capture.disks.map((disk) => [disk.dirtyContext, disk.warning])).toEqual([
      [undefined, 'bitmap cairn-gone is missing on node disk0'],
      [undefined, 'bitmap cairn-gone is missing on node disk1'],
    ]);
    await capture.abort();
    await expectNoFleecing(d);
  });

  it("cleans up a killed run's exports, jobs, nodes, files and bitmap at the next capture", async () => {
    await (await captureLive(request({ newBitmap: 'cairn-e1' }))).commit();
    // The run that is killed: neither commit nor abort.
    await captureLive(request({ newBitmap: 'cairn-e2', oldBitmap: 'cairn-e1' }));
    const write = { offset: 20 * MiB, length: 64 * KiB, pattern: 0x5a };
    vmWrite(d, 'disk1', [write]);

    const capture = await captureLive(request({ newBitmap: 'cairn-e3', oldBitmap: 'cairn-e1' }));
    expect(await bitmapNames(d, 'disk0')).toEqual(['cairn-e1', 'cairn-e3']);
    expect((await d.inspect.execute<{ id: string }[]>('query-block-exports')).map((e) => e.id).sort()).toEqual([
      ...fleeceIds(2),
      'vm0',
      'vm1',
    ]);
    expect((await d.inspect.execute<{ id: string }[]>('query-jobs')).map((j) => j.id).sort()).toEqual(fleeceIds(2));
    expect((await fleeceNodes(d)).length).toBe(2 * 3); // overlay, its file node and the job's filter, per disk
    expect((await readdir(d.scratchDir)).filter((f) => f.endsWith('.qcow2')).length).toBe(2);
    const disk1 = capture.disks[1]!;
    const client = await NbdClient.connect({ unix: disk1.socket }, { exportName: disk1.exportName, metaContexts: [disk1.dirtyContext!] });
    const dirty = merge((await client.blockStatus(0, DISK_SIZE, disk1.dirtyContext!)).filter((e) => e.flags & 1));
    await client.close();
    expect(dirty).toEqual(roundToGranules([write], (await bitmapInfo(d, 'disk1', 'cairn-e1'))!.granularity));

    await capture.commit();
    await expectNoFleecing(d);
    expect(await bitmapNames(d, 'disk1')).toEqual(['cairn-e3']);
  });

  it('fails clearly on an unknown node and changes nothing', async () => {
    const before = await bitmapNames(d, 'disk0');
    const err = await failure(captureLive(request({ nodes: ['disk0', 'disk9'], newBitmap: 'cairn-f1' })));
    expect(err.code).toBe('SOURCE_UNREADABLE');
    expect(err.message).toContain(`qemu-storage-daemon at ${d.qmpSocket} has no block node named disk9`);
    expect(err.message).toContain('its nodes: disk0, disk0-file, disk1, disk1-file');
    expect(await bitmapNames(d, 'disk0')).toEqual(before);
    await expectNoFleecing(d);
  });

  it('fails clearly when the daemon serves NBD already and the socket is not given, and rolls back', async () => {
    const before = await bitmapNames(d, 'disk0');
    const err = await failure(captureLive(request({ newBitmap: 'cairn-g1', nbdSocket: undefined })));
    expect(err.message).toContain(`qemu-storage-daemon at ${d.qmpSocket} runs an NBD server already, and QMP cannot tell its address`);
    expect(await bitmapNames(d, 'disk0')).toEqual(before);
    await expectNoFleecing(d);
  });

  it('fails clearly when the QMP socket is missing', async () => {
    const missing = join(dir, 'no-such-daemon.sock');
    const err = await failure(captureLive(request({ qmpSocket: missing, newBitmap: 'cairn-h1' })));
    expect(err.code).toBe('SOURCE_UNREADABLE');
    expect(err.message).toContain(`cannot connect to QMP socket ${missing}: no such socket; is qemu-storage-daemon running with --chardev socket,`);
  });
});

describe('captureLive on a daemon without an NBD server', { timeout: TEST_TIMEOUT_MS }, () => {
  let d: Daemon;
  let image: Buffer;

  beforeAll(async () => {
    d = await startDaemon('plain', [{ node: 'disk0', format: 'qcow2' }]);
    image = await readFile(join(d.scratchDir, '..', 'disk0.raw-copy'));
  });

  it('starts a server in scratchDir, reuses it after a killed run and stops it at teardown', async () => {
    const request: LiveCaptureRequest = { qmpSocket: d.qmpSocket, nodes: ['disk0'], newBitmap: 'cairn-p1', bitmapPrefix: PREFIX, scratchDir: d.scratchDir };
    const own = join(d.scratchDir, 'cairn-fleece-nbd.sock');
    await captureLive(request); // killed
    const capture = await captureLive({ ...request, newBitmap: 'cairn-p2' });
    expect(capture.disks[0]!.socket).toBe(own);
    expect((await readView(capture.disks[0]!)).equals(image)).toBe(true);
    await capture.commit();
    await expectNoFleecing(d);
    expect(await stat(own).then(() => true, () => false), 'the socket is gone with the server').toBe(false);
    expect(await bitmapNames(d, 'disk0')).toEqual(['cairn-p2']);

    const again = await captureLive({ ...request, newBitmap: 'cairn-p3', oldBitmap: 'cairn-p2' });
    expect(again.disks[0]).toMatchObject({ socket: own, dirtyContext: 'qemu:dirty-bitmap:cairn-p2' });
    await again.abort();
    expect(await bitmapNames(d, 'disk0')).toEqual(['cairn-p2']);
    expect(await stat(own).then(() => true, () => false)).toBe(false);
  });
});

describe('QmpClient', { timeout: TEST_TIMEOUT_MS }, () => {
  let d: Daemon;

  beforeAll(async () => {
    d = await startDaemon('qmp', [{ node: 'disk0', format: 'raw' }]);
  });

  it("names the socket, the command and QEMU's reason when a command fails, and stays usable", async () => {
    const qmp = await QmpClient.connect(d.qmpSocket);
    try {
      expect(qmp.greeting.version.qemu.major).toBeGreaterThanOrEqual(7);
      const err = await failure(qmp.execute('blockdev-del', { 'node-name': 'nope' }));
      expect(err).toBeInstanceOf(QmpError);
      expect(err.code).toBe('SOURCE_UNREADABLE');
      expect(err.message).toBe(`QMP command blockdev-del on ${d.qmpSocket} failed: Failed to find node with node-name='nope'`);
      const [a, b] = await Promise.all([qmp.execute<{ qemu: object }>('query-version'), qmp.execute<unknown[]>('query-block-jobs')]);
      expect(a.qemu).toBeDefined();
      expect(b).toEqual([]);
    } finally {
      await qmp.close();
    }
  });

  it('says when nothing listens on the socket', async () => {
    const path = join(dir, 'not-a-socket');
    await writeFile(path, '');
    const err = await failure(QmpClient.connect(path));
    expect(err.message).toContain(`cannot connect to QMP socket ${path}: nothing listens there`);
  });

  it('times out without a greeting, and without a reply', async () => {
    const silent = await fakeQmp('silent.sock', () => undefined);
    const noGreeting = await failure(QmpClient.connect(silent.path, { timeoutMs: 200 }));
    expect(noGreeting.message).toContain('accepted the connection but sent no greeting within 0.2 s');

    const slow = await fakeQmp('slow.sock', (command, reply) => {
      if (command === 'qmp_capabilities') reply({ return: {} });
    });
    const qmp = await QmpClient.connect(slow.path, { timeoutMs: 200 });
    const err = await failure(qmp.execute('query-version'));
    expect(err.message).toBe(`QMP command query-version on ${slow.path} got no reply within 0.2 s; the connection was closed`);
    expect((await failure(qmp.execute('query-version'))).message, 'later commands fail the same way').toBe(err.message);
    await qmp.close();
    await Promise.all([silent.close(), slow.close()]);
  });

  it('fails pending and later commands when the connection drops, and keeps events aside', async () => {
    const fake = await fakeQmp('drop.sock', (command, reply, socket) => {
      if (command === 'qmp_capabilities') {
        socket.write('{"event": "JOB_STATUS_CHANGE", "data": {"id": "j", "status": "created"}, "timestamp": {"seconds": 1, "microseconds": 2}}\r\n');
        reply({ return: {} });
      } else socket.destroy();
    });
    const qmp = await QmpClient.connect(fake.path);
    expect(qmp.events).toEqual([{ event: 'JOB_STATUS_CHANGE', data: { id: 'j', status: 'created' }, timestamp: { seconds: 1, microseconds: 2 } }]);
    const err = await failure(qmp.execute('query-version'));
    expect(err.message).toContain(`the QMP connection to ${fake.path} was lost while waiting for the reply to query-version`);
    expect((await failure(qmp.execute('query-block-jobs'))).message).toBe(err.message);
    await qmp.close();
    await fake.close();
  });
});

// ---- the daemon ------------------------------------------------------------------------------

async function startDaemon(name: string, disks: { node: string; format: 'qcow2' | 'raw' }[]): Promise<Daemon> {
  const home = join(dir, name);
  const scratchDir = join(home, 'scratch');
  await mkdir(scratchDir, { recursive: true });
  const withVm = name === 'vm';
  const args = ['--pidfile', join(home, 'pid')];
  for (const [i, monitor] of ['cairn', 'inspect'].entries()) {
    args.push('--chardev', `socket,id=mon${i},path=${join(home, `${monitor}.sock`)},server=on,wait=off`, '--monitor', `chardev=mon${i}`);
  }
  for (const [i, disk] of disks.entries()) {
    const file = join(home, `${disk.node}.${disk.format}`);
    run('qemu-img', ['create', '-q', '-f', disk.format, file, String(DISK_SIZE)]);
    if (!withVm) {
      // Without a VM to write, the disk gets its contents up front; the test compares with a raw copy.
      run('qemu-io', ['-f', disk.format, '-c', `write -P 0x${(0x61 + i).toString(16)} ${3 * MiB} ${2 * MiB}`, file]);
      run('qemu-img', ['convert', '-f', disk.format, '-O', 'raw', file, join(home, `${disk.node}.raw-copy`)]);
    }
    args.push('--blockdev', `driver=file,node-name=${disk.node}-file,filename=${file}`);
    args.push('--blockdev', `driver=${disk.format},node-name=${disk.node},file=${disk.node}-file`);
  }
  const vmSocket = withVm ? join(home, 'vm.sock') : undefined;
  if (vmSocket) {
    args.push('--nbd-server', `addr.type=unix,addr.path=${vmSocket}`);
    for (const [i, disk] of disks.entries()) args.push('--export', `type=nbd,id=vm${i},node-name=${disk.node},name=vm${i},writable=on`);
  }

  const child = spawn('qemu-storage-daemon', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  children.push(child);
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const deadline = Date.now() + 10_000;
  while (!(await readFile(join(home, 'pid'), 'utf8').then((s) => s.trim() !== '', () => false))) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`qemu-storage-daemon ${args.join(' ')} exited: ${stderr}`);
    if (Date.now() > deadline) throw new Error(`qemu-storage-daemon did not start within 10 s: ${stderr}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  const inspect = await QmpClient.connect(join(home, 'inspect.sock'));
  inspectors.push(inspect);
  return { qmpSocket: join(home, 'cairn.sock'), inspect, vmSocket, scratchDir };
}

/** The "VM" writes: qemu-io through the writable NBD export of the disk. */
function vmWrite(d: Daemon, node: string, writes: Write[]): void {
  const commands = writes.flatMap((w) => ['-c', `write -P 0x${w.pattern.toString(16)} ${w.offset} ${w.length}`]);
  run('qemu-io', ['-f', 'raw', ...commands, `nbd+unix:///${vmExport(node)}?socket=${d.vmSocket}`]);
}

function vmExport(node: string): string {
  return `vm${node.slice('disk'.length)}`;
}

async function liveSha256(d: Daemon, node: string): Promise<string> {
  const client = await NbdClient.connect({ unix: d.vmSocket! }, { exportName: vmExport(node) });
  try {
    return sha256(await client.read(0, client.size));
  } finally {
    await client.close();
  }
}

async function liveRead(d: Daemon, node: string, offset: number, length: number): Promise<Buffer> {
  const client = await NbdClient.connect({ unix: d.vmSocket! }, { exportName: vmExport(node) });
  try {
    return await client.read(offset, length);
  } finally {
    await client.close();
  }
}

async function readView(disk: CapturedDisk): Promise<Buffer> {
  const client = await NbdClient.connect({ unix: disk.socket }, { exportName: disk.exportName });
  try {
    expect(client.size).toBe(disk.size);
    return await client.read(0, disk.size);
  } finally {
    await client.close();
  }
}

interface BitmapInfo {
  name?: string;
  recording: boolean;
  persistent: boolean;
  granularity: number;
  count: number;
}

async function nodes(d: Daemon): Promise<{ 'node-name': string; 'dirty-bitmaps'?: BitmapInfo[] }[]> {
  return d.inspect.execute('query-named-block-nodes', { flat: true });
}

async function bitmapInfo(d: Daemon, node: string, name: string): Promise<BitmapInfo | undefined> {
  return (await nodes(d)).find((n) => n['node-name'] === node)?.['dirty-bitmaps']?.find((b) => b.name === name);
}

async function bitmapNames(d: Daemon, node: string): Promise<string[]> {
  const bitmaps = (await nodes(d)).find((n) => n['node-name'] === node)?.['dirty-bitmaps'] ?? [];
  // Unnamed bitmaps belong to jobs (the fleecing job's copy-before-write filter keeps one).
  return bitmaps.flatMap((b) => (b.name === undefined ? [] : [b.name])).sort();
}

async function fleeceNodes(d: Daemon): Promise<string[]> {
  return (await nodes(d)).map((n) => n['node-name']).filter((n) => n.startsWith('cairn-fleece-'));
}

/** The ids of the fleecing exports or jobs of disk0..disk{count-1}, sorted. */
function fleeceIds(count: number): string[] {
  return Array.from({ length: count }, (_, i) => `cairn-fleece-${createHash('sha256').update(`disk${i}`).digest('hex').slice(0, 8)}`).sort();
}

async function expectNoFleecing(d: Daemon): Promise<void> {
  const exports = await d.inspect.execute<{ id: string }[]>('query-block-exports');
  expect(exports.map((e) => e.id).filter((id) => id.startsWith('cairn-'))).toEqual([]);
  expect(await d.inspect.execute('query-jobs')).toEqual([]);
  expect(await fleeceNodes(d)).toEqual([]);
  expect((await readdir(d.scratchDir)).filter((f) => f.endsWith('.qcow2'))).toEqual([]);
}

// ---- a fake QMP server for the failures a real daemon does not show on demand ----------------

async function fakeQmp(
  name: string,
  onCommand: (command: string, reply: (message: object) => void, socket: Socket) => void,
): Promise<{ path: string; close: () => Promise<void> }> {
  const path = join(dir, name);
  const sockets = new Set<Socket>();
  const server: NetServer = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    if (name !== 'silent.sock') socket.write('{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}\r\n');
    let text = '';
    socket.on('data', (chunk: Buffer) => {
      text += chunk.toString();
      for (let end = text.indexOf('\n'); end >= 0; end = text.indexOf('\n')) {
        const message = JSON.parse(text.slice(0, end)) as { execute: string; id?: unknown };
        text = text.slice(end + 1);
        onCommand(message.execute, (reply) => socket.write(JSON.stringify({ ...reply, id: message.id }) + '\r\n'), socket);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return {
    path,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

// ---- helpers ----------------------------------------------------------------------------------

function requireTools(): void {
  const onPath = (bin: string): boolean =>
    (process.env.PATH ?? '').split(delimiter).some((d) => {
      try {
        accessSync(join(d, bin), fsConstants.X_OK);
        return true;
      } catch {
        return false;
      }
    });
  const missing = Object.keys(TOOLS).filter((bin) => !onPath(bin));
  if (missing.length > 0) {
    const packages = [...new Set(missing.map((bin) => TOOLS[bin]))].join(' ');
    throw new Error(`the live capture tests need ${missing.join(', ')}: apt-get install ${packages}`);
  }
}

function run(command: string, args: string[]): string {
  try {
    return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${command} ${args.join(' ')} failed: ${e.stderr || e.message}`);
  }
}

/** The written ranges rounded out to whole granules, merged. */
function roundToGranules(writes: Write[], granularity: number): { offset: number; length: number }[] {
  return merge(
    writes.map((w) => {
      const from = Math.floor(w.offset / granularity) * granularity;
      return { offset: from, length: Math.ceil((w.offset + w.length) / granularity) * granularity - from, flags: 1 };
    }),
  );
}

function granuleBytes(writes: Write[], granularity: number): number {
  return roundToGranules(writes, granularity).reduce((sum, r) => sum + r.length, 0);
}

/** Sorted, overlapping or adjacent ranges joined; flags dropped. */
function merge(extents: Extent[]): { offset: number; length: number }[] {
  const out: { offset: number; length: number }[] = [];
  for (const e of [...extents].sort((a, b) => a.offset - b.offset)) {
    const last = out[out.length - 1];
    if (last && last.offset + last.length >= e.offset) last.length = Math.max(last.offset + last.length, e.offset + e.length) - last.offset;
    else out.push({ offset: e.offset, length: e.length });
  }
  return out;
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}
