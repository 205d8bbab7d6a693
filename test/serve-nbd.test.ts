import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFile, readFile } from 'node:fs/promises';
import { connect, createServer, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  cliPath,
  expectCliError,
  expectOk,
  KiB,
  listFiles,
  makeImage,
  MiB,
  PASSPHRASE,
  s3Target,
  Sandbox,
  scanChunks,
  writeAt,
} from './helpers.js';

/**
 * Instant recovery: `cairn serve-nbd` exports backups over NBD, and real NBD clients use them:
 * qemu-img compare (bit for bit against the image as it was at each backup), nbdinfo (holes where
 * the zero chunks are), qemu-io (writes into an overlay), qemu-system-x86_64 (a VM's block device,
 * driven through QMP), and a raw socket for what no polite client does (vanishing mid-read,
 * garbage, forbidden writes).
 */

const CHUNK = 64 * KiB;

interface Tool {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a tool without blocking the event loop; a missing tool fails with what to install. */
function tool(command: string, args: string[]): Promise<Tool> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', (err) =>
      reject(new Error(`${command} cannot run (${err.message}): install qemu-utils, qemu-system-x86 and libnbd-bin`)),
    );
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

interface ExportJson {
  name: string;
  size: number;
  writable: boolean;
  default: boolean;
  url: string;
}

/** A running `cairn serve-nbd`. */
class Served {
  stderr = '';
  exitCode: number | null = null;
  private readonly exited: Promise<number>;

  constructor(
    readonly child: ChildProcess,
    readonly exports: ExportJson[],
  ) {
    this.exited = new Promise((r) => child.on('close', (code, signal) => r((this.exitCode = code ?? (signal ? 128 : -1)))));
  }

  url(name = 'disk0'): string {
    const e = this.exports.find((x) => x.name === name);
    if (!e) throw new Error(`no export ${name}`);
    return e.url;
  }

  get running(): boolean {
    return this.exitCode === null && this.child.exitCode === null;
  }

  async stop(): Promise<number> {
    if (this.running) this.child.kill('SIGTERM');
    return this.exited;
  }
}

/** Starts `cairn serve-nbd … --json` in the sandbox and waits until it serves. */
async function startServer(sb: Sandbox, vault: string, args: string[], servers: Served[]): Promise<Served> {
  const child = spawn(process.execPath, [cliPath, 'serve-nbd', ...args, '--vault', vault, '--json'], {
    cwd: sb.dir,
    env: { ...cleanEnv(), CAIRN_PASSPHRASE: PASSPHRASE, CAIRN_STATE_DIR: sb.stateDir, ...definedOnly(sb.env) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const exports = await new Promise<ExportJson[]>((resolve, reject) => {
    child.stdout!.on('data', (d) => {
      stdout += d;
      const line = stdout.split('\n')[0];
      if (stdout.includes('\n')) resolve((JSON.parse(line) as { exports: ExportJson[] }).exports);
    });
    child.on('close', (code) => reject(new Error(`serve-nbd exited ${code} before serving\nstdout: ${stdout}\nstderr: ${stderr}`)));
  });
  const s = new Served(child, exports);
  child.stderr!.on('data', (d) => (s.stderr += d));
  servers.push(s);
  return s;
}

async function compare(expected: string, url: string): Promise<Tool> {
  return tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', expected, url]);
}

async function expectSame(expected: string, url: string): Promise<void> {
  const r = await compare(expected, url);
  expect(r.code, `${r.stdout}${r.stderr}`).toBe(0);
  expect(r.stdout).toContain('Images are identical');
}

describe('cairn serve-nbd', () => {
  let sb: Sandbox;
  let vault: string;
  const image = () => sb.path('disk.img');
  const second = () => sb.path('second.img');
  /** Backup ids, and copies of the images as they were at each. */
  const b: { id: string; at: string[] }[] = [];
  const servers: Served[] = [];

  const serve = (args: string[]): Promise<Served> => startServer(sb, vault, args, servers);

  beforeAll(async () => {
    sb = await Sandbox.create('serve-nbd');
    vault = await sb.initVault('vault');
    await makeImage(image(), [
      { kind: 'random', length: 2 * MiB },
      { kind: 'hole', length: 2 * MiB },
      { kind: 'text', length: MiB },
      { kind: 'zero', length: MiB },
      { kind: 'random', length: MiB + 12 * KiB },
      { kind: 'hole', length: MiB },
    ]);
    const backup = async (sources: string[]) => {
      const args = ['backup', ...sources, '--vault', vault, '--json'];
      const r = await sb.cairn(args);
      expectOk(r, args);
      const at: string[] = [];
      for (const [i, s] of sources.entries()) {
        const copy = sb.path(`at-${b.length}-${i}.img`);
        await copyFile(s, copy);
        at.push(copy);
      }
      b.push({ id: (JSON.parse(r.stdout) as { id: string }).id, at });
    };
    await backup([image()]);
    // Change it: new data over old data and over a hole, and a data area zeroed.
    await writeAt(image(), 512 * KiB, randomBytes(300 * KiB));
    await writeAt(image(), 3 * MiB, randomBytes(64 * KiB));
    await writeAt(image(), 5 * MiB, Buffer.alloc(256 * KiB, 'cairn '));
    await writeAt(image(), 7 * MiB, Buffer.alloc(128 * KiB));
    await backup([image()]);
    await makeImage(second(), [
      { kind: 'text', length: MiB },
      { kind: 'hole', length: MiB },
      { kind: 'random', length: 512 * KiB },
    ]);
    await backup([image(), second()]);
  });

  afterAll(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    await sb?.cleanup();
  });

  it('serves each backup exactly as the disk was, over a Unix socket and TCP', async () => {
    const first = await serve([b[0].id, '--listen', `unix:${sb.path('first.sock')}`]);
    expect(first.url()).toBe(`nbd+unix:///disk0?socket=${sb.path('first.sock')}`);
    expect(first.exports).toMatchObject([{ name: 'disk0', writable: false, default: true, size: (await readFile(b[0].at[0])).length }]);
    const later = await serve([b[1].id, '--listen', '127.0.0.1:0']);
    expect(later.url()).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/disk0$/);
    const results = await Promise.all([
      compare(b[0].at[0], first.url()),
      compare(b[1].at[0], later.url()),
      // The default export "" is disk 0.
      compare(b[0].at[0], `nbd+unix:///?socket=${sb.path('first.sock')}`),
      // And they really differ: the first backup is not the second.
      compare(b[1].at[0], first.url()),
    ]);
    for (const r of results.slice(0, 3)) expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(results[3].code, results[3].stdout).toBe(1);
    expect(results[3].stdout).toContain('Content mismatch at offset 524288');
    expect(await first.stop()).toBe(143);
    expect(await later.stop()).toBe(143);
    expect(first.stderr).toContain('stopped');
  });

  it('reports the zero chunks as holes (base:allocation) and reads them as zeros', async () => {
    const s = await serve([b[1].id, '--listen', `unix:${sb.path('map.sock')}`]);
    const map = await tool('nbdinfo', ['--map', '--json', s.url()]);
    expect(map.code, map.stderr).toBe(0);
    const got = (JSON.parse(map.stdout) as { offset: number; length: number; type: number }[]).map((e) => ({
      offset: e.offset,
      length: e.length,
      zero: e.type === 3,
    }));
    const { digests } = await scanChunks(b[1].at[0], CHUNK);
    const size = (await readFile(b[1].at[0])).length;
    const want: { offset: number; length: number; zero: boolean }[] = [];
    digests.forEach((d, p) => {
      const length = Math.min(CHUNK, size - p * CHUNK);
      const last = want[want.length - 1];
      if (last && last.zero === (d === 'zero')) last.length += length;
      else want.push({ offset: p * CHUNK, length, zero: d === 'zero' });
    });
    expect(got).toEqual(want);
    expect(got.filter((e) => e.zero).length).toBeGreaterThanOrEqual(3);
    // Only data, with types 0 (data) and 3 (hole|zero).
    expect(new Set((JSON.parse(map.stdout) as { type: number }[]).map((e) => e.type))).toEqual(new Set([0, 3]));
    await s.stop();
  });

  it('exports every disk of a backup; --disk picks the default export', async () => {
    const sock = sb.path('two.sock');
    const s = await serve([b[2].id, '--listen', `unix:${sock}`, '--disk', '1']);
    expect(s.exports.map((e) => [e.name, e.default])).toEqual([
      ['disk0', false],
      ['disk1', true],
    ]);
    const list = await tool('nbdinfo', ['--list', '--json', `nbd+unix:///?socket=${sock}`]);
    expect(list.code, list.stderr).toBe(0);
    expect((JSON.parse(list.stdout) as { exports: { 'export-name': string }[] }).exports.map((e) => e['export-name'])).toEqual(['disk0', 'disk1']);
    const [d0, d1, dflt] = await Promise.all([
      compare(b[2].at[0], s.url('disk0')),
      compare(b[2].at[1], s.url('disk1')),
      compare(b[2].at[1], `nbd+unix:///?socket=${sock}`),
    ]);
    for (const r of [d0, d1, dflt]) expect(r.code, r.stdout + r.stderr).toBe(0);
    const unknown = await tool('nbdinfo', [`nbd+unix:///disk7?socket=${sock}`]);
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toMatch(/No such file or directory for export: disk7/); // libnbd's words for NBD_REP_ERR_UNKNOWN
    await s.stop();
  });

  it('is read-only without --overlay: writes fail with EPERM and change nothing', async () => {
    const sock = sb.path('ro.sock');
    const s = await serve([b[0].id, '--listen', `unix:${sock}`]);
    const info = await tool('nbdinfo', ['--json', s.url()]);
    expect(JSON.parse(info.stdout).exports[0]).toMatchObject({ is_read_only: true, can_multi_conn: true, can_trim: false, can_zero: false });
    const io = await tool('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 0 4k', s.url()]);
    expect(io.code).not.toBe(0);
    // On the wire: NBD_CMD_WRITE answered with NBD_EPERM (simple reply, no structured replies asked).
    const c = await RawClient.open(sock, 'disk0');
    expect(await c.request(1, 0, 4096, Buffer.alloc(4096, 1))).toEqual({ error: 1 });
    expect(await c.request(6, 0, 4096)).toEqual({ error: 1 }); // WRITE_ZEROES
    c.close();
    await expectSame(b[0].at[0], s.url());
    await s.stop();
  });

  it('with --overlay, writes land in the overlay, reads combine it with the backup, and the vault is untouched', async () => {
    const before = await listFiles(vault);
    const overlay = sb.path('overlay.img');
    const sock = sb.path('ov.sock');
    const expected = sb.path('expected.img');
    await copyFile(b[1].at[0], expected);
    let s = await serve([b[1].id, '--listen', `unix:${sock}`, '--overlay', overlay]);
    expect(s.exports[0]).toMatchObject({ writable: true });
    const io = await tool('qemu-io', [
      '-f', 'raw',
      '-c', 'write -P 0xab 1M 64k', // whole chunk over backup data
      '-c', 'write -P 0xcd 100000 5000', // unaligned: the rest of its blocks come from the backup
      '-c', 'write -P 0xef 2600k 8k', // inside a hole of the backup
      '-c', 'write -z 6M 128k', // zeroes over data
      '-c', 'read -P 0xab 1M 64k',
      '-c', 'read -P 0xcd 100000 5000',
      '-c', 'read -P 0 6M 128k',
      s.url(),
    ]);
    expect(io.code, io.stdout + io.stderr).toBe(0);
    expect(io.stdout).not.toContain('Pattern verification failed');
    await writeAt(expected, MiB, Buffer.alloc(64 * KiB, 0xab));
    await writeAt(expected, 100000, Buffer.alloc(5000, 0xcd));
    await writeAt(expected, 2600 * KiB, Buffer.alloc(8 * KiB, 0xef));
    await writeAt(expected, 6 * MiB, Buffer.alloc(128 * KiB));
    // Everything else still reads from the backup.
    await expectSame(expected, s.url());
    const map = await tool('nbdinfo', ['--map', '--json', s.url()]);
    const extents = JSON.parse(map.stdout) as { offset: number; length: number; type: number }[];
    expect(extents.find((e) => e.offset <= 6 * MiB && e.offset + e.length >= 6 * MiB + 128 * KiB)?.type).toBe(3);
    expect(extents.find((e) => e.offset <= 2600 * KiB && e.offset + e.length > 2600 * KiB)?.type).toBe(0);
    expect(await s.stop()).toBe(143);

    // The overlay is kept, and a later serve of the same backup and disk continues with it.
    s = await serve([b[1].id, '--listen', `unix:${sock}`, '--overlay', overlay]);
    await expectSame(expected, s.url());
    // A second server on the same overlay is refused while the first runs.
    const busy = await sb.cairn(['serve-nbd', b[1].id, '--vault', vault, '--listen', `unix:${sb.path('other.sock')}`, '--overlay', overlay]);
    expectCliError(busy, 'BUSY', `overlay ${overlay} is in use by process`);
    await s.stop();
    // Another backup with this overlay is refused.
    const other = await sb.cairn(['serve-nbd', b[0].id, '--vault', vault, '--listen', `unix:${sock}`, '--overlay', overlay]);
    expectCliError(other, 'USAGE', `overlay ${overlay} belongs to disk 0 of backup ${b[1].id}`);

    // The backup itself never changed: same objects, and verify reads every chunk fine.
    expect(await listFiles(vault)).toEqual(before);
    const verify = await sb.cairn(['vault', 'verify', '--vault', vault, '--read-data']);
    expectOk(verify, ['vault', 'verify']);
  });

  it('serves a virtual machine (qemu-system-x86_64, block device driven through QMP)', async () => {
    const overlay = sb.path('vm-overlay.img');
    const sock = sb.path('vm.sock');
    const s = await serve([b[1].id, '--listen', `unix:${sock}`, '--overlay', overlay]);
    const qmpPath = sb.path('qmp.sock');
    // No bootable OS is needed to prove the VM's block layer uses the export: a machine without CPU
    // boards (-M none) with the export as a block node, read and written with qemu-io through QMP.
    const vm = spawn(
      'qemu-system-x86_64',
      [
        '-M', 'none', '-nodefaults', '-display', 'none',
        '-qmp', `unix:${qmpPath},server=on,wait=on`,
        '-blockdev', JSON.stringify({ driver: 'raw', 'node-name': 'disk', file: { driver: 'nbd', server: { type: 'unix', path: sock }, export: 'disk0' } }),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let vmOut = '';
    vm.stdout.on('data', (d) => (vmOut += d));
    vm.stderr.on('data', (d) => (vmOut += d));
    const vmExit = new Promise<number>((r) => vm.on('close', (code) => r(code ?? -1)));
    vm.on('error', () => undefined);
    try {
      const qmp = await Qmp.connect(qmpPath, () => vmOut);
      await qmp.execute('qmp_capabilities');
      const io = async (cmd: string): Promise<string> => {
        const mark = vmOut.length;
        await qmp.execute('human-monitor-command', { 'command-line': `qemu-io disk "${cmd}"` });
        return vmOut.slice(mark);
      };
      const head = (await readFile(b[1].at[0])).subarray(2 * MiB - 4096, 2 * MiB);
      // The VM reads backup data (the last 4 KiB of the random region, checked byte for byte below).
      expect(await io(`read -v ${2 * MiB - 16} 16`)).toContain(head.subarray(4080, 4096).toString('hex').replace(/(..)/g, '$1 ').trim().slice(0, 11));
      expect(await io('read -P 0 2560k 64k')).toMatch(/read 65536\/65536 bytes/);
      expect(await io('write -P 0x5a 4M 4k')).toMatch(/wrote 4096\/4096 bytes/);
      const back = await io('read -P 0x5a 4M 4k');
      expect(back).toMatch(/read 4096\/4096 bytes/);
      expect(back).not.toContain('Pattern verification failed');
      // The pattern check is real: a wrong pattern fails.
      expect(await io('read -P 0x11 4M 4k')).toContain('Pattern verification failed');
      await qmp.execute('quit');
      qmp.close();
    } finally {
      vm.kill();
    }
    await vmExit;
    // What the VM wrote is in the export for the next client too.
    const expected = sb.path('vm-expected.img');
    await copyFile(b[1].at[0], expected);
    await writeAt(expected, 4 * MiB, Buffer.alloc(4096, 0x5a));
    await expectSame(expected, s.url());
    await s.stop();
  });

  it('survives clients that vanish mid-read or send garbage, and keeps serving others', async () => {
    const sock = sb.path('rude.sock');
    const s = await serve([b[0].id, '--listen', `unix:${sock}`]);
    // Several big reads, then the client hangs up without reading the answers.
    for (let i = 0; i < 3; i++) {
      const c = await RawClient.open(sock, 'disk0');
      for (let h = 0; h < 8; h++) c.send(0, 0, 8 * MiB);
      c.destroy();
    }
    // Garbage instead of a handshake, and garbage instead of a request.
    const g = connect(sock);
    await new Promise((r) => g.once('connect', r));
    g.on('error', () => undefined).resume(); // read (and drop) the greeting, so the end is seen
    g.write(randomBytes(4096));
    await new Promise((r) => g.once('close', r));
    const c = await RawClient.open(sock, 'disk0');
    c.socket.write(randomBytes(64));
    await new Promise((r) => c.socket.once('close', r));
    // Requests out of bounds are refused without ending the connection.
    const ok = await RawClient.open(sock, 'disk0');
    const size = (await readFile(b[0].at[0])).length;
    expect(await ok.request(0, size - 10, 20)).toEqual({ error: 22 }); // past the end: EINVAL
    expect(await ok.request(0, 0, 64 * MiB)).toEqual({ error: 22 }); // above the maximum block size
    expect(await ok.request(9, 0, 4096)).toEqual({ error: 22 }); // unknown command
    const read = await ok.request(0, 4096, 4096);
    expect(read.error).toBe(0);
    expect(read.data!.equals((await readFile(b[0].at[0])).subarray(4096, 8192))).toBe(true);
    ok.close();
    expect(s.running).toBe(true);
    await expectSame(b[0].at[0], s.url());
    await s.stop();
  });

  it('fails with clear errors for an unknown backup, a taken address and a bad --listen', async () => {
    const anySock = `unix:${sb.path('err.sock')}`;
    expectCliError(await sb.cairn(['serve-nbd', 'no-such-backup', '--vault', vault, '--listen', anySock]), 'NOT_FOUND', "no backup named or with id 'no-such-backup'");
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', () => r()));
    const port = (taken.address() as { port: number }).port;
    try {
      expectCliError(await sb.cairn(['serve-nbd', b[0].id, '--vault', vault, '--listen', `127.0.0.1:${port}`]), 'BUSY', `127.0.0.1:${port}: the address is in use`);
    } finally {
      taken.close();
    }
    const sock = sb.path('taken.sock');
    const s = await serve([b[0].id, '--listen', `unix:${sock}`]);
    expectCliError(await sb.cairn(['serve-nbd', b[0].id, '--vault', vault, '--listen', `unix:${sock}`]), 'BUSY', 'another server listens on that socket');
    await s.stop();
    expectCliError(await sb.cairn(['serve-nbd', b[0].id, '--vault', vault, '--listen', 'localhost']), 'USAGE', "--listen 'localhost' is not an address");
    expectCliError(await sb.cairn(['serve-nbd', b[2].id, '--vault', vault, '--listen', anySock, '--overlay', sb.path('x.img')]), 'USAGE', 'say which one --overlay is for with --disk N');
    // Nothing is left behind by a failed start: no socket file, no overlay.
    expect(await listFiles(sb.dir).then((f) => [...f.keys()].filter((k) => k === 'err.sock' || k.startsWith('x.img')))).toEqual([]);
    const notOverlay = sb.path('plain.img');
    await makeImage(notOverlay, [{ kind: 'hole', length: MiB }]);
    expectCliError(
      await sb.cairn(['serve-nbd', b[0].id, '--vault', vault, '--listen', `unix:${sock}`, '--overlay', notOverlay]),
      'ALREADY_EXISTS',
      'is not a Cairn overlay',
    );
  });
});

describe('cairn serve-nbd from a vault in S3', () => {
  let sb: Sandbox;
  const servers: Served[] = [];

  beforeAll(async () => {
    sb = await Sandbox.create('serve-nbd-s3', { env: s3Target.env });
  });

  afterAll(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    await s3Target.close();
    await sb?.cleanup();
  });

  it('fetches chunks from the bucket on demand and serves the disk exactly', async () => {
    const vault = await s3Target.init(sb, 'nbd');
    const img = sb.path('disk.img');
    await makeImage(img, [
      { kind: 'text', length: MiB },
      { kind: 'hole', length: 3 * MiB },
      { kind: 'random', length: 2 * MiB + 4 * KiB },
    ]);
    const r = await sb.cairn(['backup', img, '--vault', vault, '--json']);
    expectOk(r);
    const before = await s3Target.objects(vault);
    const s = await startServer(sb, vault, [(JSON.parse(r.stdout) as { id: string }).id, '--listen', `unix:${sb.path('s3.sock')}`], servers);
    await expectSame(img, s.url());
    const map = await tool('nbdinfo', ['--map', '--json', s.url()]);
    expect((JSON.parse(map.stdout) as { offset: number; length: number; type: number }[]).map((e) => [e.offset, e.length, e.type])).toEqual([
      [0, MiB, 0],
      [MiB, 3 * MiB, 3],
      [4 * MiB, 2 * MiB + 4 * KiB, 0],
    ]);
    expect(await s.stop()).toBe(143);
    expect(await s3Target.objects(vault)).toEqual(before);
  });
});

function definedOnly(env: Record<string, string | undefined>): Record<string, string> {
  return Object.fromEntries(Object.entries(env).filter((e): e is [string, string] => e[1] !== undefined));
}

function cleanEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('CAIRN_') && !k.startsWith('XDG_')) env[k] = v;
  return env;
}

/** A minimal NBD client speaking the wire protocol directly: fixed newstyle, NBD_OPT_GO, simple replies. */
class RawClient {
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  private handle = 0n;

  private constructor(readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      for (const w of this.waiters.splice(0)) w();
    });
    socket.on('error', () => undefined);
  }

  static async open(path: string, name: string): Promise<RawClient> {
    const socket = connect(path);
    await new Promise((r) => socket.once('connect', r));
    const c = new RawClient(socket);
    await c.take(18); // NBDMAGIC, IHAVEOPT, handshake flags
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(3); // FIXED_NEWSTYLE | NO_ZEROES
    const n = Buffer.from(name);
    const opt = Buffer.alloc(16 + 4 + n.length + 2);
    opt.writeBigUInt64BE(0x49484156454f5054n, 0);
    opt.writeUInt32BE(7, 8); // NBD_OPT_GO
    opt.writeUInt32BE(4 + n.length + 2, 12);
    opt.writeUInt32BE(n.length, 16);
    n.copy(opt, 20);
    socket.write(Buffer.concat([flags, opt]));
    for (;;) {
      const head = await c.take(20);
      const type = head.readUInt32BE(12);
      await c.take(head.readUInt32BE(16));
      if (type === 1) return c; // NBD_REP_ACK
      if (type >= 0x80000000) throw new Error(`NBD_OPT_GO failed: 0x${type.toString(16)}`);
    }
  }

  send(type: number, offset: number, length: number, data?: Buffer): bigint {
    const h = ++this.handle;
    const req = Buffer.alloc(28);
    req.writeUInt32BE(0x25609513, 0);
    req.writeUInt16BE(type, 6);
    req.writeBigUInt64BE(h, 8);
    req.writeBigUInt64BE(BigInt(offset), 16);
    req.writeUInt32BE(length, 24);
    this.socket.write(data ? Buffer.concat([req, data]) : req);
    return h;
  }

  /** One request, answered by a simple reply (with data for a successful read). */
  async request(type: number, offset: number, length: number, data?: Buffer): Promise<{ error: number; data?: Buffer }> {
    const h = this.send(type, offset, length, data);
    const head = await this.take(16);
    expect(head.readUInt32BE(0)).toBe(0x67446698);
    expect(head.readBigUInt64BE(8)).toBe(h);
    const error = head.readUInt32BE(4);
    if (error === 0 && type === 0) return { error, data: await this.take(length) };
    return { error };
  }

  close(): void {
    const disc = Buffer.alloc(28);
    disc.writeUInt32BE(0x25609513, 0);
    disc.writeUInt16BE(2, 6);
    this.socket.end(disc);
  }

  destroy(): void {
    this.socket.destroy();
  }

  private async take(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.socket.destroyed) throw new Error('connection closed');
      await new Promise<void>((r) => {
        this.waiters.push(r);
        this.socket.once('close', () => r());
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
}

/** A QMP connection (QEMU Machine Protocol: one JSON object per line). */
class Qmp {
  private buf = '';
  private waiters: (() => void)[] = [];

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      this.buf += d;
      for (const w of this.waiters.splice(0)) w();
    });
  }

  static async connect(path: string, log: () => string): Promise<Qmp> {
    for (let i = 0; i < 100; i++) {
      const socket = connect(path);
      const ok = await new Promise<boolean>((r) => {
        socket.once('connect', () => r(true));
        socket.once('error', () => r(false));
      });
      if (ok) {
        const q = new Qmp(socket);
        await q.message(); // greeting
        return q;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`QEMU did not open its QMP socket: ${log()}`);
  }

  async execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    this.socket.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
    for (;;) {
      const m = (await this.message()) as { return?: unknown; error?: { desc: string } };
      if (m.error) throw new Error(`QMP ${command} failed: ${m.error.desc}`);
      if ('return' in m) return m.return;
    }
  }

  close(): void {
    this.socket.destroy();
  }

  private async message(): Promise<unknown> {
    for (;;) {
      const nl = this.buf.indexOf('\n');
      if (nl >= 0) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        return JSON.parse(line);
      }
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }
}
