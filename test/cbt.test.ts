import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliPath, expectCliError, KiB, listFiles, makeImage, MiB, Sandbox, type BackupJson } from './helpers.js';

/**
 * Changed-block tracking end to end, through the real CLI against real QEMU tools: offline qcow2
 * images whose dirty bitmaps Cairn keeps (qemu-img bitmap + qemu-nbd), and NBD exports named by URL.
 * Every backup is restored and compared with the disk as it was (`qemu-img compare`).
 */

const DISK = 64 * MiB;
const GRANULE = 64 * KiB;

function run(command: string, args: string[]): string {
  const r = spawnSync(command, args, { encoding: 'utf8' });
  if (r.error) throw new Error(`${command} cannot run (${r.error.message}); install qemu-utils and libnbd-bin`);
  if (r.status !== 0) throw new Error(`${command} ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

function bitmaps(image: string): string[] {
  const info = JSON.parse(run('qemu-img', ['info', '--output=json', image])) as {
    'format-specific': { data: { bitmaps?: { name: string }[] } };
  };
  return (info['format-specific'].data.bitmaps ?? []).map((b) => b.name).sort();
}

/** Writes fresh random data at each offset (length GRANULE unless given) with qemu-io; returns the granule-rounded dirty bytes. */
async function scatteredWrites(sb: Sandbox, image: string, writes: { offset: number; length?: number }[]): Promise<number> {
  const dir = sb.path('patterns');
  await mkdir(dir, { recursive: true });
  const commands: string[] = [];
  const granules = new Set<number>();
  for (const [i, w] of writes.entries()) {
    const length = w.length ?? GRANULE;
    const file = join(dir, `p${i}`);
    await writeFile(file, randomBytes(length));
    commands.push('-c', `write -q -s ${file} ${w.offset} ${length}`);
    for (let g = Math.floor(w.offset / GRANULE); g * GRANULE < w.offset + length; g++) granules.add(g);
  }
  run('qemu-io', ['-f', 'qcow2', ...commands, image]);
  return granules.size * GRANULE;
}

/** Distinct granule-aligned offsets spread over the disk, from a fixed seed. */
function offsets(count: number, seed: number): number[] {
  const out = new Set<number>();
  let x = seed;
  while (out.size < count) {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    out.add((x % (DISK / GRANULE)) * GRANULE);
  }
  return [...out];
}

/** The guest view of an image now, as a raw file, to compare restores with. */
function snapshotRaw(image: string, to: string): string {
  run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', image, to]);
  return to;
}

async function expectRestoresTo(sb: Sandbox, vault: string, backup: string, expected: string): Promise<void> {
  const to = sb.path(`restored-${backup}.img`);
  const r = await sb.cairn(['restore', backup, '--vault', vault, '--to', to]);
  expect(r.code, r.stderr).toBe(0);
  const cmp = spawnSync('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'raw', to, expected], { encoding: 'utf8' });
  expect(cmp.status, `qemu-img compare ${to} ${expected}: ${cmp.stdout}${cmp.stderr}`).toBe(0);
}

async function backup(sb: Sandbox, vault: string, source: string, name: string): Promise<BackupJson> {
  return sb.cairnJson<BackupJson>(['backup', source, '--vault', vault, '--name', name, '--json']);
}

/** A raw image with data, text and holes, converted to qcow2 (only the data is allocated). */
async function makeQcow2(sb: Sandbox, name: string): Promise<string> {
  const raw = sb.path(`${name}.raw`);
  await makeImage(raw, [
    { kind: 'random', length: 12 * MiB },
    { kind: 'hole', length: 20 * MiB },
    { kind: 'text', length: 8 * MiB },
    { kind: 'hole', length: DISK - 40 * MiB },
  ]);
  const image = sb.path(`${name}.qcow2`);
  run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, image]);
  return image;
}

describe('offline qcow2 images: Cairn keeps one dirty bitmap per chain', () => {
  let sb: Sandbox;
  let vault: string;
  let image: string;
  const expected: { name: string; raw: string }[] = [];

  beforeAll(async () => {
    sb = await Sandbox.create('cbt-qcow2');
    vault = await sb.initVault('vault');
    image = await makeQcow2(sb, 'disk');
  });
  afterAll(async () => {
    await sb?.cleanup();
  });

  it('a full reads only allocated blocks; incrementals read only blocks written since the last backup', async () => {
    const full = await backup(sb, vault, image, 'b1');
    expected.push({ name: 'b1', raw: snapshotRaw(image, sb.path('b1.raw')) });
    expect(full).toMatchObject({ kind: 'full', consistency: 'crash_consistent', warnings: [] });
    expect(full.disks[0].changeDetection).toBe('full');
    expect(full.disks[0].bytesRead, 'allocated data only, not the 64 MiB disk').toBeLessThanOrEqual(21 * MiB);
    expect(full.disks[0].bytesRead).toBeGreaterThanOrEqual(20 * MiB);
    expect(full.disks[0].changeToken).toMatch(/^cairn-[0-9a-f]{8}-/);
    expect(bitmaps(image)).toEqual([full.disks[0].changeToken]);

    let parentToken = full.disks[0].changeToken;
    for (const [round, seed] of [[2, 7], [3, 99]] as const) {
      // Scattered 64 KiB writes, in data, text and holes, plus one small unaligned write.
      const dirty = await scatteredWrites(sb, image, [...offsets(24, seed).map((offset) => ({ offset })), { offset: 5 * MiB + 1000, length: 4096 }]);
      const incr = await backup(sb, vault, image, `b${round}`);
      expected.push({ name: `b${round}`, raw: snapshotRaw(image, sb.path(`b${round}.raw`)) });
      const d = incr.disks[0];
      expect(incr.kind).toBe('incremental');
      expect(d.changeDetection).toBe('bitmap');
      expect(d.dirtyBytes).toBe(dirty);
      expect(d.bytesRead, 'reads the dirty granules, rounded to 64 KiB chunks').toBeGreaterThanOrEqual(dirty);
      expect(d.bytesRead).toBeLessThanOrEqual(dirty * 1.05);
      expect(d.changeToken).not.toBe(parentToken);
      expect(bitmaps(image), 'only the latest tracking point is kept').toEqual([d.changeToken]);
      parentToken = d.changeToken;
    }
    for (const e of expected) await expectRestoresTo(sb, vault, e.name, e.raw);
  });

  it('a removed bitmap makes the next backup compare, with a warning kept in the backup', async () => {
    const [token] = bitmaps(image);
    run('qemu-img', ['bitmap', '--remove', image, token]);
    await scatteredWrites(sb, image, offsets(5, 1234).map((offset) => ({ offset })));
    const b = await backup(sb, vault, image, 'b-lost');
    const raw = snapshotRaw(image, sb.path('b-lost.raw'));
    expect(b.disks[0].changeDetection).toBe('compare');
    expect(b.warnings.join('\n')).toContain(`dirty bitmap '${token}' of the parent backup is missing`);
    const shown = await sb.cairnJson<{ warnings: string[] }>(['backups', 'show', 'b-lost', '--vault', vault, '--json']);
    expect(shown.warnings).toEqual(b.warnings);
    await expectRestoresTo(sb, vault, 'b-lost', raw);

    // The compare backup started a new bitmap, so the one after it is by bitmap again.
    const dirty = await scatteredWrites(sb, image, offsets(3, 555).map((offset) => ({ offset })));
    const next = await backup(sb, vault, image, 'b-after');
    expect(next.disks[0]).toMatchObject({ changeDetection: 'bitmap', dirtyBytes: dirty, bytesRead: dirty });
    await expectRestoresTo(sb, vault, 'b-after', snapshotRaw(image, sb.path('b-after.raw')));
  });

  it('a backup killed after the capture keeps the previous bitmap; the next one catches every change', async () => {
    const before = bitmaps(image);
    const dirty = await scatteredWrites(sb, image, offsets(6, 4242).map((offset) => ({ offset })));
    const tmp = sb.path('tmp');
    await mkdir(tmp, { recursive: true });
    const child = spawn(process.execPath, [cliPath, 'backup', image, '--vault', vault, '--name', 'killed'], {
      env: { ...process.env, CAIRN_PASSPHRASE: 'correct horse battery staple', CAIRN_STATE_DIR: sb.stateDir, TMPDIR: tmp },
      stdio: 'ignore',
    });
    // Killed the moment qemu-nbd serves the image: the new bitmap exists, nothing is committed.
    await waitFor(async () => (await readdir(tmp)).some((d) => existsSync(join(tmp, d, 'nbd.sock'))), 20_000);
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    expect(bitmaps(image).length, 'the killed run left its new bitmap beside the old one').toBe(2);

    const b = await sb.cairnJson<BackupJson>(['backup', image, '--vault', vault, '--name', 'b-recovered', '--json'], { env: { TMPDIR: tmp } });
    expect(b.disks[0]).toMatchObject({ changeDetection: 'bitmap', dirtyBytes: dirty });
    expect(bitmaps(image)).toEqual([b.disks[0].changeToken]);
    expect(before).not.toContain(b.disks[0].changeToken);
    await expectRestoresTo(sb, vault, 'b-recovered', snapshotRaw(image, sb.path('b-recovered.raw')));
    const list = await sb.cairnJson<{ name: string }[]>(['backups', 'list', '--vault', vault, '--json']);
    expect(list.map((m) => m.name)).not.toContain('killed');
  });
});

describe('NBD exports named by URL', () => {
  let sb: Sandbox;
  let vault: string;
  let image: string;
  let server: QemuNbd | undefined;

  beforeAll(async () => {
    sb = await Sandbox.create('cbt-nbd');
    vault = await sb.initVault('vault');
    image = await makeQcow2(sb, 'served');
    run('qemu-img', ['bitmap', '--add', image, 'b1']);
  });
  afterAll(async () => {
    await server?.stop();
    await sb?.cleanup();
  });

  it('full reads allocated extents; with the same user bitmap, incrementals read only dirty extents', async () => {
    server = await serve(sb, image, ['--bitmap=b1']);
    const url = (s: QemuNbd): string => `nbd+unix:///disk?socket=${s.socket}&bitmap=b1`;
    const full = await backup(sb, vault, url(server), 'n1');
    expect(full.disks[0]).toMatchObject({ changeDetection: 'full', changeToken: 'b1' });
    expect(full.disks[0].bytesRead).toBeLessThanOrEqual(21 * MiB);
    await server.stop();
    const expected1 = snapshotRaw(image, sb.path('n1.raw'));

    const dirty = await scatteredWrites(sb, image, offsets(10, 77).map((offset) => ({ offset })));
    server = await serve(sb, image, ['--bitmap=b1']);
    const incr = await backup(sb, vault, url(server), 'n2');
    expect(incr.disks[0]).toMatchObject({ changeDetection: 'bitmap', dirtyBytes: dirty, bytesRead: dirty });
    await server.stop();
    await expectRestoresTo(sb, vault, 'n1', expected1);
    await expectRestoresTo(sb, vault, 'n2', snapshotRaw(image, sb.path('n2.raw')));
  });

  it('without a bitmap an incremental reads every allocated block and compares', async () => {
    server = await serve(sb, image, []);
    const url = `nbd+unix:///disk?socket=${server.socket}`;
    await backup(sb, vault, url, 'p1');
    const again = await backup(sb, vault, url, 'p2');
    await server.stop();
    expect(again.disks[0].changeDetection).toBe('compare');
    expect(again.disks[0].bytesRead).toBe((await backupOf(sb, vault, 'p1')).disks[0].bytesRead);
    await expectRestoresTo(sb, vault, 'p2', snapshotRaw(image, sb.path('p2.raw')));
  });

  describe('bad sources: a clear error, exit 20, the vault untouched', () => {
    async function expectRefused(source: string, ...fragments: (string | RegExp)[]): Promise<void> {
      const before = await listFiles(vault);
      const r = await sb.cairn(['backup', source, '--vault', vault]);
      expectCliError(r, 'SOURCE_UNREADABLE', ...fragments);
      expect(await listFiles(vault)).toEqual(before);
    }

    it('a socket nobody listens on', async () => {
      await expectRefused(`nbd+unix:///disk?socket=${sb.path('nothing.sock')}`, sb.path('nothing.sock'));
    });

    it('an unknown export and a missing bitmap', async () => {
      server = await serve(sb, image, ['--bitmap=b1']);
      await expectRefused(`nbd+unix:///nope?socket=${server.socket}`, "'nope'");
      await expectRefused(`nbd+unix:///disk?socket=${server.socket}&bitmap=nope`, 'qemu:dirty-bitmap:nope');
      await server.stop();
    });

    it('a server that drops the connection in the middle of the reads', async () => {
      server = await serve(sb, image, []);
      const proxy = await cuttingProxy(server.socket, sb.path('cut.sock'), 4 * MiB);
      const manifests = async (): Promise<string[]> => [...(await listFiles(vault)).keys()].filter((k) => k.startsWith('backups/'));
      const before = await manifests();
      const r = await sb.cairn(['backup', `nbd+unix:///disk?socket=${sb.path('cut.sock')}`, '--vault', vault]);
      proxy.close();
      await server.stop();
      expectCliError(r, 'SOURCE_UNREADABLE', 'nbd+unix:///disk');
      expect(await manifests(), 'no backup was committed').toEqual(before);
      const verify = await sb.cairn(['vault', 'verify', '--vault', vault]);
      expect(verify.code, verify.stdout + verify.stderr).toBe(0);
    });
  });
});

describe('disks in use by a running qemu-storage-daemon (QMP)', () => {
  let sb: Sandbox;
  let vault: string;
  let daemon: ChildProcess | undefined;
  let qmp: string;
  let vm: string;
  const nodes = ['disk0', 'disk1'];
  const urls = (): string[] => nodes.map((n) => `qmp+unix:///${n}?socket=${qmp}&nbd=${vm}`);

  /** The guest's view of a disk now, read through the VM's NBD export. */
  function snapshot(node: string, to: string): string {
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', `nbd+unix:///${node}?socket=${vm}`, to]);
    return to;
  }

  /** The "VM" writes fresh random data through its writable NBD export; returns the dirty bytes. */
  async function vmWrites(node: string, writes: { offset: number }[], tag: string): Promise<number> {
    const commands: string[] = [];
    for (const [i, w] of writes.entries()) {
      const file = sb.path(`vm-${tag}-${node}-${i}`);
      await writeFile(file, randomBytes(GRANULE));
      commands.push('-c', `write -q -s ${file} ${w.offset} ${GRANULE}`);
    }
    run('qemu-io', ['-f', 'raw', ...commands, `nbd+unix:///${node}?socket=${vm}`]);
    return writes.length * GRANULE;
  }

  beforeAll(async () => {
    sb = await Sandbox.create('cbt-live');
    vault = await sb.initVault('vault');
    const disk0 = await makeQcow2(sb, 'disk0');
    const disk1 = sb.path('disk1.raw');
    await makeImage(disk1, [{ kind: 'text', length: 4 * MiB }, { kind: 'hole', length: 28 * MiB }]);
    qmp = sb.path('qmp.sock');
    vm = sb.path('vm.sock');
    const args = [
      '--chardev', `socket,id=mon0,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=mon0',
      '--blockdev', `driver=file,node-name=disk0-file,filename=${disk0}`, '--blockdev', 'driver=qcow2,node-name=disk0,file=disk0-file',
      '--blockdev', `driver=file,node-name=disk1-file,filename=${disk1}`, '--blockdev', 'driver=raw,node-name=disk1,file=disk1-file',
      '--nbd-server', `addr.type=unix,addr.path=${vm}`,
      '--export', 'type=nbd,id=vm0,node-name=disk0,name=disk0,writable=on',
      '--export', 'type=nbd,id=vm1,node-name=disk1,name=disk1,writable=on',
    ];
    const child = spawn('qemu-storage-daemon', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    daemon = child;
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    await waitFor(() => {
      if (child.exitCode !== null) throw new Error(`qemu-storage-daemon exited: ${stderr}`);
      return existsSync(qmp) && existsSync(vm);
    }, 10_000);
  });
  afterAll(async () => {
    if (daemon && daemon.exitCode === null) {
      daemon.kill('SIGTERM');
      await new Promise((r) => daemon!.once('exit', r));
    }
    await sb?.cleanup();
  });

  it('captures both disks at one point in time; writes during the backup stay out of it and are caught by the next', async () => {
    const full = await sb.cairnJson<BackupJson>(['backup', ...urls(), '--vault', vault, '--name', 'l1', '--json']);
    expect(full.disks.map((d) => d.changeDetection)).toEqual(['full', 'full']);
    const expected = new Map<string, string[]>([['l1', nodes.map((n) => snapshot(n, sb.path(`l1-${n}.raw`)))]]);

    const dirty0 = await vmWrites('disk0', offsets(12, 31).map((offset) => ({ offset })), 'a');
    const dirty1 = await vmWrites('disk1', [{ offset: 0 }, { offset: 20 * MiB }], 'a');
    expected.set('l2', nodes.map((n) => snapshot(n, sb.path(`l2-${n}.raw`))));
    // The post-thaw hook runs after the capture and before any read: the "VM" writes to both disks
    // while the backup is in progress.
    const during = sb.path('during.sh');
    const hookWrites = offsets(6, 8080);
    const commands = hookWrites.map((o) => `-c 'write -q -P 0x5a ${o} ${GRANULE}'`).join(' ');
    await writeFile(during, `#!/bin/sh\nset -e\nqemu-io -f raw ${commands} 'nbd+unix:///disk0?socket=${vm}'\nqemu-io -f raw -c 'write -q -P 0x5b 0 ${GRANULE}' 'nbd+unix:///disk1?socket=${vm}'\n`);
    spawnSync('chmod', ['+x', during]);
    const incr = await sb.cairnJson<BackupJson>(['backup', ...urls(), '--vault', vault, '--name', 'l2', '--json', '--post-thaw', during]);
    expect(incr.disks.map((d) => d.changeDetection)).toEqual(['bitmap', 'bitmap']);
    expect(incr.disks.map((d) => d.dirtyBytes)).toEqual([dirty0, dirty1]);
    expect(incr.disks[0].bytesRead).toBe(dirty0);

    expected.set('l3', nodes.map((n) => snapshot(n, sb.path(`l3-${n}.raw`))));
    const next = await sb.cairnJson<BackupJson>(['backup', ...urls(), '--vault', vault, '--name', 'l3', '--json']);
    expect(next.disks.map((d) => d.changeDetection)).toEqual(['bitmap', 'bitmap']);
    expect(next.disks.map((d) => d.dirtyBytes), 'the writes made during l2 are in l3').toEqual([hookWrites.length * GRANULE, GRANULE]);

    for (const [name, raws] of expected) {
      const to = sb.path(`restored-${name}`);
      expect((await sb.cairn(['restore', name, '--vault', vault, '--to', to])).code).toBe(0);
      for (const [i, raw] of raws.entries()) {
        const cmp = spawnSync('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'raw', join(to, `disk-${i}.img`), raw], { encoding: 'utf8' });
        expect(cmp.status, `${name} disk ${i}: ${cmp.stdout}${cmp.stderr}`).toBe(0);
      }
    }
  });

  it('an unknown block node is a clear error and leaves the vault as it was', async () => {
    const before = await listFiles(vault);
    const r = await sb.cairn(['backup', `qmp+unix:///nope?socket=${qmp}&nbd=${vm}`, '--vault', vault]);
    expectCliError(r, 'SOURCE_UNREADABLE', 'nope');
    expect(await listFiles(vault)).toEqual(before);
  });
});

async function backupOf(sb: Sandbox, vault: string, name: string): Promise<BackupJson> {
  return sb.cairnJson<BackupJson>(['backups', 'show', name, '--vault', vault, '--json']);
}

interface QemuNbd {
  socket: string;
  stop(): Promise<void>;
}

/** qemu-nbd serving `image` read-only as export 'disk' on a Unix socket (the same path each time), for any number of connections. */
async function serve(sb: Sandbox, image: string, args: string[]): Promise<QemuNbd> {
  const socket = sb.path('nbd.sock');
  const child: ChildProcess = spawn(
    'qemu-nbd',
    [`--socket=${socket}`, '--export-name=disk', '--read-only', '--format=qcow2', '--shared=0', '--persistent', ...args, image],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  await waitFor(async () => {
    if (child.exitCode !== null) throw new Error(`qemu-nbd exited: ${stderr}`);
    return existsSync(socket);
  }, 10_000);
  return {
    socket,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    },
  };
}

/** A Unix-socket proxy to `target` that cuts both sides once `limit` bytes came from the server. */
async function cuttingProxy(target: string, path: string, limit: number): Promise<Server> {
  const server = createServer((client: Socket) => {
    const upstream = createConnection({ path: target });
    let passed = 0;
    client.pipe(upstream);
    upstream.on('data', (d: Buffer) => {
      passed += d.length;
      if (passed > limit) {
        client.destroy();
        upstream.destroy();
      } else client.write(d);
    });
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return server;
}

async function waitFor(check: () => Promise<boolean> | boolean, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`gave up waiting after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
