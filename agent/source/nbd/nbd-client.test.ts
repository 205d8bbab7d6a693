/**
 * The NBD client against real servers: qemu-nbd (qemu-utils) over a Unix socket and over TCP, and
 * qemu-storage-daemon (qemu-system-common), all exporting one 64 MiB sparse qcow2 image with a
 * persistent dirty bitmap. Second opinions: `qemu-img convert -O raw` for the bytes, `nbdinfo --map`
 * (libnbd-bin) for the extents. Tests that need the server's view of our requests read qemu-nbd's
 * trace log (`-T nbd_receive_request`).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { accessSync, constants as fsConstants } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CairnError, isCairnError } from '../../../shared/errors.js';
import { unusedPort } from '../../../test/helpers.js';
import { NbdClient, type Extent } from './nbd-client.js';
import { NBD_FLAG_READ_ONLY, NBD_STATE_HOLE } from './nbd-protocol.js';
import { formatNbdUrl, parseNbdUrl, type NbdTarget } from './nbd-url.js';
import { failure } from '../../../test/support/caught.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const DISK_SIZE = 64 * MiB;
const GRANULARITY = 64 * KiB; // qemu-img bitmap --add default
const BITMAP_CONTEXT = 'qemu:dirty-bitmap:b1';
const CONTEXTS = ['base:allocation', BITMAP_CONTEXT];
/** Each test takes well under a second; a hung request should fail fast, not after the global 120 s. */
const TEST_TIMEOUT_MS = 20_000;

interface Write {
  offset: number;
  length: number;
  /** A byte pattern (qemu-io -P), random bytes (-s FILE) or write-zeroes (-z). */
  fill: number | 'random' | 'zeroes';
}

/** Written before the bitmap exists: allocated, but clean. */
const BEFORE_BITMAP: Write[] = [
  { offset: 1 * MiB, length: 64 * KiB, fill: 'random' },
  { offset: 20 * MiB, length: 2 * MiB, fill: 'random' },
  { offset: 30 * MiB, length: 1 * MiB, fill: 'zeroes' },
];
/** Written after: dirty, rounded out to the bitmap's 64 KiB granules. */
const AFTER_BITMAP: Write[] = [
  { offset: 10 * MiB + 4 * KiB, length: 3 * MiB, fill: 0xcd },
  { offset: 20 * MiB + 512 * KiB, length: 256 * KiB, fill: 'random' },
  { offset: 40 * MiB + 60 * KiB, length: 8 * KiB, fill: 'random' },
  { offset: 63 * MiB, length: 100 * KiB, fill: 0x11 },
];

const TOOLS: Record<string, string> = {
  'qemu-img': 'qemu-utils',
  'qemu-io': 'qemu-utils',
  'qemu-nbd': 'qemu-utils',
  'qemu-storage-daemon': 'qemu-system-common',
  nbdinfo: 'libnbd-bin',
};

let dir: string;
/** The qcow2 image every server exports. */
let image: string;
/** Its contents as `qemu-img convert -O raw` gives them, and their SHA-256. */
let expected: Buffer;
let expectedSha256: string;
const servers: Server[] = [];

beforeAll(async () => {
  requireTools();
  dir = await mkdtemp(join(tmpdir(), 'cairn-nbd-'));
  image = join(dir, 'disk.qcow2');
  run('qemu-img', ['create', '-q', '-f', 'qcow2', image, String(DISK_SIZE)]);
  await qemuIoWrites(BEFORE_BITMAP);
  run('qemu-img', ['bitmap', '--add', image, 'b1']);
  await qemuIoWrites(AFTER_BITMAP);
  const raw = join(dir, 'disk.raw');
  run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', image, raw]);
  expected = await readFile(raw);
  expectedSha256 = sha256(expected);
  await rm(raw);
});

afterAll(async () => {
  for (const s of servers) s.kill();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('parseNbdUrl', () => {
  it('reads Unix-socket URLs with an export, a bitmap, or the empty default export', () => {
    expect(parseNbdUrl('nbd+unix:///disk0?socket=/run/vm/disk.sock&bitmap=b1')).toEqual({
      target: { unix: '/run/vm/disk.sock' },
      exportName: 'disk0',
      bitmap: 'b1',
      display: 'nbd+unix:///disk0?socket=/run/vm/disk.sock',
    });
    expect(parseNbdUrl('nbd+unix:///?socket=/tmp/s.sock')).toMatchObject({ target: { unix: '/tmp/s.sock' }, exportName: '', bitmap: undefined });
    expect(parseNbdUrl('nbd+unix://?socket=/tmp/s.sock').exportName).toBe('');
  });

  it('reads TCP URLs, with the default port 10809, IPv6 literals and %-escapes', () => {
    expect(parseNbdUrl('nbd://backup-host:10900/disk0?bitmap=b1')).toEqual({
      target: { host: 'backup-host', port: 10900 },
      exportName: 'disk0',
      bitmap: 'b1',
      display: 'nbd://backup-host:10900/disk0',
    });
    expect(parseNbdUrl('nbd://example.com/disk').target).toEqual({ host: 'example.com', port: 10809 });
    expect(parseNbdUrl('nbd://example.com').exportName).toBe('');
    expect(parseNbdUrl('nbd://example.com//disk').exportName).toBe('/disk');
    const spaced = parseNbdUrl('nbd://[::1]:10810/hello%20world');
    expect(spaced).toMatchObject({ target: { host: '::1', port: 10810 }, exportName: 'hello world' });
    expect(spaced.display).toBe('nbd://[::1]:10810/hello%20world');
    expect(parseNbdUrl(spaced.display)).toMatchObject({ target: spaced.target, exportName: spaced.exportName });
  });

  it.each([
    ['disk0', 'not a URL'],
    ['http://host/disk', "unknown scheme 'http:'"],
    ['nbds://host/disk', 'TLS'],
    ['nbd+unix:///disk0', "'socket=PATH' is missing"],
    ['nbd+unix://host/disk0?socket=/tmp/s', 'has no host'],
    ['nbd://host/disk0?socket=/tmp/s', 'belongs to nbd+unix'],
    ['nbd:///disk0', 'the host is missing'],
    ['nbd://host:99999/disk0', 'port 99999'],
    ['nbd://host/disk0?bitmap=b1&color=red', "unknown query parameter 'color'"],
    ['nbd://host/disk0?bitmap=', 'needs the name'],
    ['nbd://host/disk0?bitmap=a&bitmap=b', 'given twice'],
    ['nbd://host/disk%zz', 'bad %-escape'],
  ])('refuses %s with a usage error', (url, why) => {
    let err: unknown;
    try {
      parseNbdUrl(url);
    } catch (e) {
      err = e;
    }
    expect(isCairnError(err, 'USAGE')).toBe(true);
    expect((err as CairnError).message).toContain(`'${url}'`);
    expect((err as CairnError).message).toContain(why);
  });
});

const serverKinds: { title: string; start: () => Promise<Server> }[] = [
  { title: 'qemu-nbd over a Unix socket', start: () => startQemuNbd('unix', ['-B', 'b1']) },
  { title: 'qemu-nbd over TCP', start: () => startQemuNbd('tcp', ['-B', 'b1']) },
  { title: 'qemu-storage-daemon over a Unix socket', start: () => startStorageDaemon() },
];

describe.each(serverKinds)('NbdClient and $title', { timeout: TEST_TIMEOUT_MS }, ({ start }) => {
  let server: Server;
  let client: NbdClient;

  beforeAll(async () => {
    server = await start();
    client = await NbdClient.connect(server.target, { exportName: 'disk0', metaContexts: CONTEXTS });
  });
  afterAll(async () => {
    await client?.close();
  });

  it('learns size, flags, block sizes and meta contexts in the handshake', () => {
    expect(client.url).toBe(server.url);
    expect(client.size).toBe(DISK_SIZE);
    expect(client.transmissionFlags & NBD_FLAG_READ_ONLY).toBe(NBD_FLAG_READ_ONLY);
    expect(client.structuredReplies).toBe(true);
    expect(client.blockSize).toEqual({ minimum: 1, preferred: 4096, maximum: 32 * MiB });
    expect(client.maxPayload).toBe(32 * MiB);
    expect([...client.metaContexts.keys()].sort()).toEqual([...CONTEXTS].sort());
  });

  it('reads the whole disk byte-identical to qemu-img convert, holes as zeros', async () => {
    const all = await client.read(0, DISK_SIZE); // two requests: the maximum payload is 32 MiB
    expect(sha256(all)).toBe(expectedSha256);
    // Mostly hole, with data at 1 MiB: holes must be zeroed in the caller's buffer, not skipped.
    const buffer = Buffer.alloc(4 * MiB, 0xee);
    await client.readInto(buffer, 0);
    expect(buffer.equals(expected.subarray(0, 4 * MiB))).toBe(true);
  });

  it('pipelines 64 concurrent reads of random ranges on one connection', async () => {
    const random = seededRandom(7);
    const ranges = Array.from({ length: 64 }, () => {
      const length = 1 + Math.floor(random() * MiB);
      return { offset: Math.floor(random() * (DISK_SIZE - length)), length };
    });
    const reads = ranges.map((r) => client.read(r.offset, r.length));
    expect(client.requestsInFlight).toBe(64); // all on the wire before the first reply
    const results = await Promise.all(reads);
    const wrong = ranges.filter((r, i) => !results[i]!.equals(expected.subarray(r.offset, r.offset + r.length)));
    expect(wrong).toEqual([]);
    expect(client.requestsInFlight).toBe(0);
  });

  it('reports base:allocation extents as nbdinfo --map does', async () => {
    const extents = await client.blockStatus(0, DISK_SIZE, 'base:allocation');
    expect(extents).toEqual(nbdinfoMap(server.url));
    expectCover(extents, 0, DISK_SIZE);
    for (const w of [...BEFORE_BITMAP, ...AFTER_BITMAP].filter((w) => w.fill !== 'zeroes')) {
      const holes = extents.filter((e) => e.flags & NBD_STATE_HOLE && e.offset < w.offset + w.length && w.offset < e.offset + e.length);
      expect(holes, `written bytes ${w.offset}..${w.offset + w.length} reported as a hole`).toEqual([]);
    }
  });

  it('reports dirty extents as nbdinfo does, exactly the granules written since the bitmap was added', async () => {
    const extents = await client.blockStatus(0, DISK_SIZE, BITMAP_CONTEXT);
    expect(extents).toEqual(nbdinfoMap(server.url, BITMAP_CONTEXT));
    expectCover(extents, 0, DISK_SIZE);
    const dirty = extents.filter((e) => e.flags & 1).map(({ offset, length }) => ({ offset, length }));
    expect(dirty).toEqual(roundToGranules(AFTER_BITMAP));
  });

  it('clips block status of an unaligned sub-range to exactly that range', async () => {
    const offset = 10 * MiB - 1000;
    const length = 12 * MiB + 777;
    for (const context of CONTEXTS) {
      const extents = await client.blockStatus(offset, length, context);
      expectCover(extents, offset, length);
      expect(extents).toEqual(clip(nbdinfoMap(server.url, context === 'base:allocation' ? undefined : context), offset, length));
    }
  });
});

describe('NbdClient with block size constraints (qemu-nbd over blkdebug: 4 KiB alignment, 1 MiB maximum)', { timeout: TEST_TIMEOUT_MS }, () => {
  it('aligns every request, splits reads at the maximum payload and ends with NBD_CMD_DISC', async () => {
    const trace = join(dir, 'blkdebug-trace.log');
    const events = join(dir, 'trace-events');
    await writeFile(events, 'nbd_receive_request\nnbd_co_receive_align_compliance\n');
    const server = await startQemuNbd('unix', ['-T', `events=${events},file=${trace}`], {
      image: { imageOpts: `driver=blkdebug,align=4096,max-transfer=${MiB},image.driver=qcow2,image.file.driver=file,image.file.filename=${image}` },
    });
    const client = await NbdClient.connect(server.target, { exportName: 'disk0', metaContexts: ['base:allocation'] });
    expect(client.blockSize).toEqual({ minimum: 4096, preferred: 4096, maximum: MiB });
    expect(client.maxPayload).toBe(MiB);

    const ranges = [
      { offset: 1 * MiB + 100, length: 3 * MiB }, // unaligned at both ends, four requests
      { offset: 20 * MiB + 4095, length: 2 },
      { offset: DISK_SIZE - 5000, length: 5000 },
      { offset: 0, length: 8 * MiB },
    ];
    const results = await Promise.all(ranges.map((r) => client.read(r.offset, r.length)));
    ranges.forEach((r, i) => expect(results[i]!.equals(expected.subarray(r.offset, r.offset + r.length))).toBe(true));
    const status = await client.blockStatus(100, 5 * MiB, 'base:allocation');
    await client.close();

    const requests = (await readFile(trace, 'utf8')).split('\n').filter((l) => l.startsWith('nbd_receive_request') || l.includes('compliance'));
    expect(requests.filter((l) => l.includes('non-compliant'))).toEqual([]);
    const parsed = requests.map((l) => {
      const m = /\.type = 0x(\w+), from = (\d+), len = (\d+)/.exec(l);
      if (!m) throw new Error(`cannot read trace line: ${l}`);
      return { type: parseInt(m[1]!, 16), from: Number(m[2]), len: Number(m[3]) };
    });
    const reads = parsed.filter((r) => r.type === 0);
    expect(reads.length).toBe(4 + 1 + 1 + 8);
    for (const r of reads) {
      expect(r.from % 4096, `read at ${r.from}`).toBe(0);
      expect(r.len % 4096, `read of ${r.len}`).toBe(0);
      expect(r.len).toBeLessThanOrEqual(MiB);
    }
    expect(parsed.filter((r) => r.type === 7)).toEqual([{ type: 7, from: 0, len: 5 * MiB + 4096 }]);
    expect(parsed[parsed.length - 1]).toEqual({ type: 2, from: 0, len: 0 });
    expect(status).toEqual(clip(nbdinfoMap(server.url), 100, 5 * MiB)); // after the trace: nbdinfo's requests land there too
  });

  it('sends reads as requests of requestSize, rounded down to the minimum block size', async () => {
    const trace = join(dir, 'request-size-trace.log');
    const events = join(dir, 'request-size-events');
    await writeFile(events, 'nbd_receive_request\n');
    const server = await startQemuNbd('unix', ['-T', `events=${events},file=${trace}`], {
      image: { imageOpts: `driver=blkdebug,align=4096,image.driver=qcow2,image.file.driver=file,image.file.filename=${image}` },
    });
    const client = await NbdClient.connect(server.target, { exportName: 'disk0', requestSize: 64 * 1024 + 100 });
    expect(client.requestSize).toBe(64 * 1024);
    const data = await client.read(2 * MiB, MiB);
    await client.close();
    expect(data.equals(expected.subarray(2 * MiB, 3 * MiB))).toBe(true);
    const reads = (await readFile(trace, 'utf8'))
      .split('\n')
      .map((l) => /\.type = 0x0, from = (\d+), len = (\d+)/.exec(l))
      .filter((m) => m !== null)
      .map((m) => ({ from: Number(m[1]), len: Number(m[2]) }));
    expect(reads.map((r) => r.len)).toEqual(new Array(16).fill(64 * 1024));
    expect(reads.map((r) => r.from).sort((a, b) => a - b)).toEqual(Array.from({ length: 16 }, (_, i) => 2 * MiB + i * 64 * 1024));
  });
});

describe('NbdClient on an 8 GiB sparse disk (offsets beyond 32 bits, block status in several requests)', { timeout: TEST_TIMEOUT_MS }, () => {
  it('reads above 4 GiB and joins the extents of several block status replies as nbdinfo reports them', async () => {
    const big = join(dir, 'big.qcow2');
    const boundary = 4 * 1024 * MiB - 64 * KiB; // data across 4 GiB, where one status request must end
    run('qemu-img', ['create', '-q', '-f', 'qcow2', big, '8G']);
    run('qemu-img', ['bitmap', '--add', big, 'b1']);
    run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x11 ${boundary} 128k`, '-c', `write -P 0x22 ${6 * 1024 * MiB} 64k`, big]);
    const trace = join(dir, 'big-trace.log');
    const server = await startQemuNbd('unix', ['-B', 'b1', '-T', `enable=nbd_receive_request,file=${trace}`], { image: big, exportName: 'big' });
    const client = await NbdClient.connect(server.target, { exportName: 'big', metaContexts: CONTEXTS });
    expect(client.size).toBe(8 * 1024 * MiB);

    const across = await client.read(boundary - 4096, 128 * KiB + 8192);
    expect(across.equals(Buffer.concat([Buffer.alloc(4096), Buffer.alloc(128 * KiB, 0x11), Buffer.alloc(4096)]))).toBe(true);
    expect((await client.read(6 * 1024 * MiB + 1000, 10)).equals(Buffer.alloc(10, 0x22))).toBe(true);

    const allocation = await client.blockStatus(0, client.size, 'base:allocation');
    const dirty = await client.blockStatus(0, client.size, BITMAP_CONTEXT);
    await client.close();
    const statusRequests = (await readFile(trace, 'utf8')).split('\n').filter((l) => l.includes('.type = 0x7'));
    expect(statusRequests.length).toBeGreaterThanOrEqual(4); // the 32-bit length field forces 2+ per context

    const size = 8 * 1024 * MiB;
    expectCover(allocation, 0, size);
    expect(allocation).toEqual(clip(nbdinfoMap(server.url), 0, size));
    expect(dirty).toEqual(clip(nbdinfoMap(server.url, BITMAP_CONTEXT), 0, size));
    expect(dirty.filter((e) => e.flags & 1)).toEqual([
      { offset: boundary, length: 128 * KiB, flags: 1 },
      { offset: 6 * 1024 * MiB, length: 64 * KiB, flags: 1 },
    ]);
  });
});

describe('NbdClient errors', { timeout: TEST_TIMEOUT_MS }, () => {
  it('fails only the request the server answers with an error chunk (qcow2 metadata read error injected)', async () => {
    // blkdebug under qcow2 fails the first L2 table load once: qemu-nbd answers NBD_REPLY_TYPE_ERROR.
    const imageOpts = `driver=qcow2,file.driver=blkdebug,file.image.driver=file,file.image.filename=${image},file.inject-error.0.event=l2_load,file.inject-error.0.errno=5,file.inject-error.0.once=on`;
    const statusFirst = await startQemuNbd('unix', [], { image: { imageOpts } });
    const a = await NbdClient.connect(statusFirst.target, { exportName: 'disk0', metaContexts: ['base:allocation'] });
    const statusError = await failure(a.blockStatus(0, 2 * MiB, 'base:allocation'));
    expect(statusError.code).toBe('SOURCE_UNREADABLE');
    expect(statusError.message).toContain(`NBD server failed getting base:allocation of 2097152 bytes at offset 0 of ${statusFirst.url} with EIO`);
    expect(statusError.message).toContain("can't get block status"); // the server's own words
    expect((await a.read(1 * MiB, 64 * KiB)).equals(expected.subarray(1 * MiB, 1 * MiB + 64 * KiB))).toBe(true);
    expect(await a.blockStatus(0, DISK_SIZE, 'base:allocation')).toEqual(nbdinfoMap(statusFirst.url));
    await a.close();

    const readFirst = await startQemuNbd('unix', [], { image: { imageOpts } });
    const b = await NbdClient.connect(readFirst.target, { exportName: 'disk0' });
    const readError = await failure(b.read(1 * MiB, 4096));
    expect(readError.message).toContain(`NBD server failed reading 4096 bytes at offset ${1 * MiB} of ${readFirst.url} with EIO`);
    expect((await b.read(1 * MiB, 4096)).equals(expected.subarray(1 * MiB, 1 * MiB + 4096))).toBe(true);
    await b.close();
  });

  it('names an unknown export, with and without meta contexts', async () => {
    const server = await startQemuNbd('unix', ['-B', 'b1']);
    for (const metaContexts of [[], CONTEXTS]) {
      const err = await failure(NbdClient.connect(server.target, { exportName: 'nope', metaContexts }));
      expect(err.code).toBe('SOURCE_UNREADABLE');
      expect(err.message).toContain(`has no export 'nope'`);
      expect(err.message).toContain(formatNbdUrl(server.target, 'nope'));
      expect(err.message).toContain(`nbdinfo --list '${formatNbdUrl(server.target, '')}'`);
    }
    // The refusal ends the session softly; the server still serves the next client.
    const client = await NbdClient.connect(server.target, { exportName: 'disk0' });
    expect(client.size).toBe(DISK_SIZE);
    await client.close();
  });

  it('names a meta context the export lacks (bitmap not exported, or a wrong name)', async () => {
    const without = await startQemuNbd('unix', []);
    const err = await failure(NbdClient.connect(without.target, { exportName: 'disk0', metaContexts: CONTEXTS }));
    expect(err.code).toBe('SOURCE_UNREADABLE');
    expect(err.message).toContain(`export 'disk0' on ${without.url} has no meta context ${BITMAP_CONTEXT}`);
    expect(err.message).toContain('qemu-img info');

    const withB1 = await startQemuNbd('unix', ['-B', 'b1']);
    const wrong = await failure(NbdClient.connect(withB1.target, { exportName: 'disk0', metaContexts: ['qemu:dirty-bitmap:b2'] }));
    expect(wrong.message).toContain(`has no meta context qemu:dirty-bitmap:b2`);
  });

  it('says it cannot connect when the socket is missing, stale, or the port is closed', async () => {
    const missing = join(dir, 'missing.sock');
    const noSocket = await failure(NbdClient.connect({ unix: missing }, { exportName: 'disk0' }));
    expect(noSocket.code).toBe('SOURCE_UNREADABLE');
    expect(noSocket.message).toContain(`cannot connect to nbd+unix:///disk0?socket=${missing}`);
    expect(noSocket.message).toContain('there is no socket');

    const server = await startQemuNbd('unix', []);
    server.kill(); // leaves its socket file behind
    await server.exited;
    const stale = await failure(NbdClient.connect(server.target, { exportName: 'disk0' }));
    expect(stale.message).toContain(`cannot connect to ${server.url}`);
    expect(stale.message).toContain('connection refused');

    const port = await unusedPort();
    const closed = await failure(NbdClient.connect({ host: '127.0.0.1', port }, { exportName: 'disk0' }));
    expect(closed.message).toContain(`cannot connect to nbd://127.0.0.1:${port}/disk0`);
    expect(closed.message).toContain('connection refused');
  });

  it('gives up on a handshake that does not come (qemu-nbd busy with its one client)', async () => {
    const server = await startQemuNbd('unix', [], { shared: 1 });
    const first = await NbdClient.connect(server.target, { exportName: 'disk0' });
    const started = Date.now();
    const err = await failure(NbdClient.connect(server.target, { exportName: 'disk0', connectTimeoutMs: 300 }));
    expect(Date.now() - started).toBeLessThan(3000);
    expect(err.message).toContain('did not finish the handshake within 0.3 s');
    expect(err.message).toContain('--shared');
    await first.close();
  });

  it.each(['unix', 'tcp'] as const)('rejects every pending read with SOURCE_UNREADABLE when qemu-nbd is killed (%s)', async (via) => {
    const server = await startQemuNbd(via, []);
    const client = await NbdClient.connect(server.target, { exportName: 'disk0' });
    expect((await client.read(1 * MiB, 4096)).equals(expected.subarray(1 * MiB, 1 * MiB + 4096))).toBe(true);

    server.signal('SIGSTOP'); // the reads below stay pending until the kill
    const offsets = Array.from({ length: 16 }, (_, i) => i * 4 * MiB + 12345);
    const reads = offsets.map((o) => failure(client.read(o, MiB)));
    expect(client.requestsInFlight).toBe(16);
    server.kill();

    const errors = await Promise.all(reads);
    errors.forEach((err, i) => {
      expect(err.code).toBe('SOURCE_UNREADABLE');
      expect(err.message).toContain(`lost the connection to the NBD server while reading 1048576 bytes at offset ${offsets[i]} of ${server.url}`);
      expect(err.message).toContain('still runs');
    });
    const later = await failure(client.read(0, 512));
    expect(later.code).toBe('SOURCE_UNREADABLE');
    expect(later.message).toContain('the connection was lost earlier');
    await client.close();
  });

  it('close() lets pending reads finish, then refuses new ones', async () => {
    const server = await startQemuNbd('unix', []);
    const client = await NbdClient.connect(server.target, { exportName: 'disk0' });
    server.signal('SIGSTOP');
    const reads = [client.read(20 * MiB, MiB), client.read(10 * MiB, 2 * MiB)];
    let closed = false;
    const closing = client.close().then(() => (closed = true));
    const refused = await failure(client.read(0, 512));
    expect(refused.message).toContain('the NBD client was closed');
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(closed).toBe(false);
    server.signal('SIGCONT');
    await closing;
    const [a, b] = await Promise.all(reads);
    expect(a!.equals(expected.subarray(20 * MiB, 21 * MiB))).toBe(true);
    expect(b!.equals(expected.subarray(10 * MiB, 12 * MiB))).toBe(true);
  });

  it('aborting the signal rejects pending reads with its reason', async () => {
    const server = await startQemuNbd('unix', []);
    const controller = new AbortController();
    const client = await NbdClient.connect(server.target, { exportName: 'disk0', signal: controller.signal });
    server.signal('SIGSTOP');
    const pending = client.read(0, MiB).catch((e: unknown) => e);
    const reason = new Error('backup cancelled');
    controller.abort(reason);
    expect(await pending).toBe(reason);
    expect(await client.read(0, 512).catch((e: unknown) => e)).toBe(reason);
    await client.close();
    server.kill();
    await expect(NbdClient.connect(server.target, { exportName: 'disk0', signal: controller.signal })).rejects.toBe(reason);
  });

  it('reads with simple replies when structured replies are not asked for', async () => {
    const server = await startQemuNbd('unix', ['-B', 'b1']);
    const client = await NbdClient.connect(server.target, { exportName: 'disk0', structuredReplies: false });
    expect(client.structuredReplies).toBe(false);
    const ranges = [
      { offset: 0, length: DISK_SIZE },
      { offset: 20 * MiB + 100, length: 3 * MiB },
    ];
    const [all, part] = await Promise.all(ranges.map((r) => client.read(r.offset, r.length)));
    expect(sha256(all!)).toBe(expectedSha256);
    expect(part!.equals(expected.subarray(20 * MiB + 100, 23 * MiB + 100))).toBe(true);
    await client.close();

    const err = await failure(NbdClient.connect(server.target, { exportName: 'disk0', structuredReplies: false, metaContexts: CONTEXTS }));
    expect(err.message).toContain('block status (metaContexts) needs structured replies');
  });

  it('opens the default export of nbd+unix:///?socket=', async () => {
    const server = await startQemuNbd('unix', [], { exportName: '' });
    const url = parseNbdUrl(`nbd+unix:///?socket=${(server.target as { unix: string }).unix}`);
    const client = await NbdClient.connect(url.target, { exportName: url.exportName });
    expect(client.url).toBe(url.display);
    expect(sha256(await client.read(0, DISK_SIZE))).toBe(expectedSha256);
    await client.close();
  });
});

// ---- servers ----------------------------------------------------------------------------------

interface Server {
  target: NbdTarget;
  /** URL of export disk0 (or of the export the server was started with). */
  url: string;
  signal(signal: NodeJS.Signals): void;
  /** SIGKILL; the exported image is only read, so nothing is lost. */
  kill(): void;
  exited: Promise<void>;
}

interface QemuNbdOptions {
  /** Default 16 clients at once; qemu-nbd's own default is 1. */
  shared?: number;
  /** Default 'disk0'; '' starts qemu-nbd without --export-name (the default export). */
  exportName?: string;
  /** A qcow2 image (default: the shared test image), or --image-opts options. */
  image?: string | { imageOpts: string };
}

async function startQemuNbd(via: 'unix' | 'tcp', args: string[], opts: QemuNbdOptions = {}): Promise<Server> {
  const exportName = opts.exportName ?? 'disk0';
  const listen = await listenOn(via, 'qemu-nbd');
  const address = 'unix' in listen ? [`--socket=${listen.unix}`] : ['--bind=127.0.0.1', `--port=${listen.port}`];
  const source = opts.image ?? image;
  const imageArgs = typeof source === 'string' ? ['--format=qcow2', source] : ['--image-opts', source.imageOpts];
  const shared = `--shared=${opts.shared ?? 16}`;
  const nameArgs = exportName === '' ? [] : [`--export-name=${exportName}`];
  return spawnServer('qemu-nbd', [...address, ...nameArgs, '--persistent', '--read-only', shared, ...args, ...imageArgs], listen, exportName);
}

async function startStorageDaemon(): Promise<Server> {
  const listen = await listenOn('unix', 'qsd');
  return spawnServer(
    'qemu-storage-daemon',
    [
      '--blockdev',
      `driver=file,node-name=file0,filename=${image},read-only=on`,
      '--blockdev',
      'driver=qcow2,node-name=fmt0,file=file0,read-only=on',
      '--nbd-server',
      `addr.type=unix,addr.path=${(listen as { unix: string }).unix}`,
      '--export',
      'type=nbd,id=exp0,node-name=fmt0,name=disk0,bitmaps.0=b1',
    ],
    listen,
    'disk0',
  );
}

let serverCount = 0;

async function listenOn(via: 'unix' | 'tcp', prefix: string): Promise<NbdTarget> {
  serverCount++;
  return via === 'unix' ? { unix: join(dir, `${prefix}-${serverCount}.sock`) } : { host: '127.0.0.1', port: await unusedPort() };
}

/** Starts a server that writes its pid file once it listens (qemu-nbd and qemu-storage-daemon do). */
async function spawnServer(command: string, args: string[], target: NbdTarget, exportName: string): Promise<Server> {
  const pidFile = join(dir, `server-${serverCount}.pid`);
  const pidOption = command === 'qemu-nbd' ? `--pid-file=${pidFile}` : '--pidfile';
  const child: ChildProcess = spawn(command, command === 'qemu-nbd' ? [pidOption, ...args] : [pidOption, pidFile, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const server: Server = {
    target,
    url: formatNbdUrl(target, exportName),
    signal: (signal) => child.kill(signal),
    kill: () => child.kill('SIGKILL'),
    exited,
  };
  servers.push(server);
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${command} ${args.join(' ')} exited: ${stderr}`);
    if (await readFile(pidFile, 'utf8').then((s) => s.trim() !== '', () => false)) return server;
    if (Date.now() > deadline) throw new Error(`${command} did not start within 10 s: ${stderr}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
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
    throw new Error(`the NBD tests need ${missing.join(', ')}: apt-get install ${packages}`);
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

async function qemuIoWrites(writes: Write[]): Promise<void> {
  const commands: string[] = [];
  for (const [i, w] of writes.entries()) {
    if (w.fill === 'zeroes') commands.push('-c', `write -z ${w.offset} ${w.length}`);
    else if (typeof w.fill === 'number') commands.push('-c', `write -P 0x${w.fill.toString(16)} ${w.offset} ${w.length}`);
    else {
      const source = join(dir, `random-${w.offset}-${i}`);
      await writeFile(source, randomBytes(w.length));
      commands.push('-c', `write -s ${source} ${w.offset} ${w.length}`);
    }
  }
  run('qemu-io', ['-f', 'qcow2', ...commands, image]);
}

/** `nbdinfo --map` (base:allocation) or `--map=CONTEXT`, adjacent extents of equal flags merged. */
function nbdinfoMap(url: string, context?: string): Extent[] {
  const out = run('nbdinfo', [context ? `--map=${context}` : '--map', '--json', url]);
  const extents = (JSON.parse(out) as { offset: number; length: number; type: number }[]).map((e) => ({
    offset: e.offset,
    length: e.length,
    flags: e.type,
  }));
  return clip(extents, 0, Infinity);
}

/** The extents cut to [offset, offset + length), adjacent ones with equal flags merged. */
function clip(extents: Extent[], offset: number, length: number): Extent[] {
  const out: Extent[] = [];
  for (const e of extents) {
    const from = Math.max(e.offset, offset);
    const to = Math.min(e.offset + e.length, offset + length);
    if (to <= from) continue;
    const last = out[out.length - 1];
    if (last && last.flags === e.flags && last.offset + last.length === from) last.length += to - from;
    else out.push({ offset: from, length: to - from, flags: e.flags });
  }
  return out;
}

function expectCover(extents: Extent[], offset: number, length: number): void {
  let at = offset;
  for (const e of extents) {
    expect(e.offset, 'extents are contiguous').toBe(at);
    expect(e.length).toBeGreaterThan(0);
    at += e.length;
  }
  expect(at, 'extents end at the end of the range').toBe(offset + length);
}

/** The written ranges rounded out to whole bitmap granules, merged. */
function roundToGranules(writes: Write[]): { offset: number; length: number }[] {
  const ranges = writes
    .map((w) => ({ from: Math.floor(w.offset / GRANULARITY) * GRANULARITY, to: Math.ceil((w.offset + w.length) / GRANULARITY) * GRANULARITY }))
    .sort((a, b) => a.from - b.from);
  const out: { offset: number; length: number }[] = [];
  for (const r of ranges) {
    const last = out[out.length - 1];
    if (last && last.offset + last.length >= r.from) last.length = Math.max(last.offset + last.length, r.to) - last.offset;
    else out.push({ offset: r.from, length: r.to - r.from });
  }
  return out;
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Deterministic numbers in [0, 1) (mulberry32), so a failing range can be reproduced. */
function seededRandom(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
