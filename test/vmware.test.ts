import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, readdir, readFile, readlink, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseMoRef, type MoRef } from '../agent/source/vmware/soap-client.js';
import { VsphereClient, type VmInfo } from '../agent/source/vmware/vsphere-client.js';
import { child, childrenNamed, childText, escapeXml } from '../agent/source/vmware/xml.js';
import { cliPath, expectCliError, KiB, MiB, PASSPHRASE, Sandbox, scanChunks, sha256File, waitFor, writeAt, type BackupJson } from './helpers.js';
import { startVcsim, type Vcsim, type VcsimVm } from './support/vcsim.js';

/**
 * The `vmware` source end to end, through the real CLI, against a vCenter simulator (govmomi's vcsim
 * with changed-block tracking and data-true snapshots, test/fixtures/vcsim/main.go). The tests write
 * to the VMs' disks as a guest would (the live flat extents), compare every restore by sha256 with
 * the disk as it was at the snapshot, and check through the vSphere API what Cairn left on the VM.
 */

const GRANULE = 64 * KiB;

let sim: Vcsim;
let sb: Sandbox;
let vault: string;
let vaultId: string;
let api: VsphereClient;
let passwordFile: string;

function vsphereUrl(vm: string, params: Record<string, string> = {}, user = sim.user): string {
  const q = new URLSearchParams({ 'password-file': passwordFile, thumbprint: sim.thumbprint, ...params });
  return `vsphere://${user}@${sim.host}:${sim.port}/${vm}?${q.toString()}`;
}

async function vmInfo(vm: VcsimVm): Promise<VmInfo> {
  return api.vmInfo({ type: 'VirtualMachine', value: vm.moref });
}

async function setExtraConfig(vm: VcsimVm, key: string, value: string): Promise<void> {
  await api.reconfigure(
    { type: 'VirtualMachine', value: vm.moref },
    `<extraConfig><key>${escapeXml(key)}</key><value xsi:type="xsd:string">${escapeXml(value)}</value></extraConfig>`,
  );
}

function vmRef(vm: VcsimVm): MoRef {
  return { type: 'VirtualMachine', value: vm.moref };
}

/** Calls a vSphere method that returns a task, and waits for the task. */
async function runTask(method: string, self: MoRef, params = ''): Promise<void> {
  const task = parseMoRef(child(await api.invoke(method, self, params), 'returnval'))!;
  await waitFor(`${method} to finish`, async () => {
    const state = childText((await api.properties(task, ['info'])).get('info'), 'state');
    if (state === 'error') throw new Error(`${method} failed`);
    return state === 'success' ? true : undefined;
  }, 10_000, () => '', 50);
}

/** Ends every session on the simulator but the test's own (what vCenter does to an idle session). */
async function dropOtherSessions(): Promise<number> {
  const sm = { type: 'SessionManager', value: 'SessionManager' };
  const p = await api.properties(sm, ['sessionList', 'currentSession']);
  const mine = childText(p.get('currentSession'), 'key');
  const others = childrenNamed(p.get('sessionList'), 'UserSession').map((u) => childText(u, 'key')!).filter((k) => k !== mine);
  if (others.length > 0) await api.invoke('TerminateSession', sm, others.map((k) => `<sessionId>${k}</sessionId>`).join(''));
  return others.length;
}

/**
 * An NBD helper that serves the snapshot disk Cairn names, read-only, as nbdkit-vddk would: here the
 * frozen flat file in the simulator's datastore folder. It records its environment and pid in `log`
 * and waits for the file `hold` before serving. (Cairn gives a helper only an allow-listed
 * environment, so the script carries its own settings.)
 */
async function nbdHelper(label: string, hold: string): Promise<{ path: string; log: string }> {
  const log = sb.path(`${label}-log`);
  await mkdir(log, { recursive: true });
  const path = sb.path(`${label}.sh`);
  await writeFile(
    path,
    [
      '#!/bin/sh',
      'set -e',
      `log='${log}'`,
      `hold='${hold}'`,
      `datastore='${sim.datastoreDir}'`,
      'rel="${CAIRN_VSPHERE_FILE#\\[*\\] }"',
      'name=$(basename "$rel")',
      'echo $$ > "$log/$name.pid"',
      'env > "$log/$name.env.tmp"',
      'mv "$log/$name.env.tmp" "$log/$name.env"',
      'while [ ! -e "$hold" ]; do sleep 0.05; done',
      'exec qemu-nbd --read-only --format=raw --socket="$CAIRN_VSPHERE_SOCKET" "$datastore/${rel%.vmdk}-flat.vmdk"',
      '',
    ].join('\n'),
  );
  await chmod(path, 0o755);
  return { path, log };
}

/** The environment the first helper of `log` was started with, once it has written it. */
async function helperStarted(log: string): Promise<{ env: Record<string, string>; pid: number }> {
  const envFile = await waitFor('the NBD helper to start', async () => (await readdir(log)).find((f) => f.endsWith('.env')), 30_000, () => '', 50);
  const env = Object.fromEntries(
    (await readFile(`${log}/${envFile}`, 'utf8'))
      .split('\n')
      .filter((l) => l.includes('='))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  );
  const pid = Number(await readFile(`${log}/${envFile.replace(/\.env$/, '.pid')}`, 'utf8'));
  return { env, pid };
}

function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function setChangeTracking(vm: VcsimVm, on: boolean): Promise<void> {
  await api.reconfigure({ type: 'VirtualMachine', value: vm.moref }, `<changeTrackingEnabled>${on}</changeTrackingEnabled>`);
}

async function backup(url: string, name: string, env: Record<string, string> = {}): Promise<BackupJson> {
  return sb.cairnJson<BackupJson>(['backup', url, '--vault', vault, '--name', name, '--json'], { env });
}

/** Copies each disk's live flat file: the disk as the next snapshot will see it. */
async function freeze(vm: VcsimVm, label: string): Promise<string[]> {
  const out: string[] = [];
  for (const [i, d] of vm.disks.entries()) {
    const to = sb.path(`${vm.name}-${label}-disk${i}.img`);
    await copyFile(d.flat, to);
    out.push(to);
  }
  return out;
}

async function expectRestores(backupName: string, expected: string[]): Promise<void> {
  for (const [i, want] of expected.entries()) {
    const to = sb.path(`restored-${backupName}-${i}.img`);
    const r = await sb.cairn(['restore', backupName, '--vault', vault, '--to', to, '--disk', String(i)]);
    expect(r.code, r.stderr).toBe(0);
    expect(await sha256File(to), `disk ${i} of ${backupName}`).toBe(await sha256File(want));
  }
}

/** Random writes at the offsets given (offset, length); returns the bytes of the 64 KiB granules they touch. */
async function guestWrites(path: string, writes: [number, number][]): Promise<number> {
  const granules = new Set<number>();
  for (const [offset, length] of writes) {
    await writeAt(path, offset, randomBytes(length));
    for (let g = Math.floor(offset / GRANULE); g * GRANULE < offset + length; g++) granules.add(g);
  }
  return granules.size * GRANULE;
}

async function expectNoSnapshots(vm: VcsimVm): Promise<void> {
  expect((await vmInfo(vm)).snapshots, `snapshots left on ${vm.name}`).toEqual([]);
}

beforeAll(async () => {
  sim = await startVcsim();
  sb = await Sandbox.create('vmware');
  vault = sb.path('vault');
  vaultId = (await sb.cairnJson<{ id: string }>(['vault', 'init', vault, '--json'])).id;
  passwordFile = sb.path('vcenter.password');
  await writeFile(passwordFile, `${sim.password}\n`, { mode: 0o600 });
  api = await VsphereClient.login({ host: sim.host, port: sim.port, thumbprint: sim.thumbprint }, { user: sim.user, password: sim.password });
});

afterAll(async () => {
  await api?.logout();
  await sim?.stop();
  await sb?.cleanup();
});

describe('vmware source (vcsim)', () => {
  it('full then incremental over HTTPS: enables CBT, quiesced snapshot removed, only allocated then changed areas read, restores identical', async () => {
    const vm = sim.vm('DC0_H0_VM0');
    expect((await vmInfo(vm)).changeTracking).toBe(false);
    const [d0, d1] = vm.disks;
    await writeAt(d0!.flat, 1 * MiB, randomBytes(3 * MiB));
    await writeAt(d0!.flat, 9 * MiB, Buffer.alloc(2 * MiB, 'a compressible line of guest text\n'));
    await writeAt(d1!.flat, 20 * MiB, randomBytes(2 * MiB + 123));
    const first = await freeze(vm, 'first');

    const full = await backup(vsphereUrl(vm.name), 'vm0-full');
    expect(full.kind).toBe('full');
    expect(full.consistency).toBe('app_consistent');
    expect(full.warnings.join('\n')).toContain('changed block tracking was off');
    for (const [i, d] of full.disks.entries()) {
      expect(d.source).toBe(`vsphere://${sim.host}:${sim.port}/${vm.instanceUuid}/${vm.disks[i]!.key}`);
      expect(d.changeDetection).toBe('full');
      expect(d.changeToken).toMatch(/^[0-9a-f]{2}( [0-9a-f]{2}){7}-[0-9a-f]{2}( [0-9a-f]{2}){7}\/\d+$/);
      const scan = await scanChunks(first[i]!, 64 * KiB);
      // Only the areas holding data were read (changeId "*"), never the whole disk.
      expect(d.bytesRead).toBeGreaterThanOrEqual(scan.usedBytes);
      expect(d.bytesRead).toBeLessThan(d.size / 2);
    }
    const info = await vmInfo(vm);
    expect(info.changeTracking).toBe(true);
    expect(info.snapshots).toEqual([]);
    await expectRestores('vm0-full', first);

    // The guest writes; the incremental (VM named by instance UUID this time: same disks, same chain) reads only that.
    const dirty0 = await guestWrites(d0!.flat, [
      [0, 4 * KiB],
      [5 * MiB + 100, 200 * KiB],
      [GRANULE - 10, 20],
    ]);
    const dirty1 = await guestWrites(d1!.flat, [[23 * MiB, 64 * KiB]]);
    const second = await freeze(vm, 'second');
    // The guest writes again after the snapshot was made, before Cairn reads: not in the backup.
    const readsGo = sb.path('vm0-reads-go');
    await setExtraConfig(vm, 'vcsim.read.holdUntil', readsGo);
    const incrRun = backup(vsphereUrl(vm.instanceUuid), 'vm0-incr');
    await waitFor('the snapshot of vm0-incr', async () => ((await vmInfo(vm)).snapshots.length > 0 ? true : undefined), 30_000, () => '', 50);
    await writeAt(d0!.flat, 2 * MiB, randomBytes(64 * KiB));
    await writeFile(readsGo, '');
    const incr = await incrRun;
    await setExtraConfig(vm, 'vcsim.read.holdUntil', '');
    expect(incr.kind).toBe('incremental');
    expect(incr.consistency).toBe('app_consistent');
    expect(incr.disks.map((d) => d.changeDetection)).toEqual(['bitmap', 'bitmap']);
    expect(incr.disks.map((d) => d.dirtyBytes)).toEqual([dirty0, dirty1]);
    expect(incr.bytesRead).toBeLessThan(full.bytesRead);
    await expectNoSnapshots(vm);

    expect(await sha256File(d0!.flat)).not.toBe(await sha256File(second[0]!));
    await expectRestores('vm0-incr', second);

    // Tracking reset (off and on: a new cbt uuid): the next backup reads every used block and compares, with a warning.
    await setChangeTracking(vm, false);
    await setChangeTracking(vm, true);
    const third = await freeze(vm, 'third');
    const reset = await backup(vsphereUrl(vm.moref), 'vm0-reset');
    expect(reset.kind).toBe('incremental');
    expect(reset.disks.map((d) => d.changeDetection)).toEqual(['compare', 'compare']);
    expect(reset.warnings.join('\n')).toMatch(/changed block tracking of the disk was reset/);
    for (const d of reset.disks) expect(d.bytesRead).toBeLessThan(d.size / 2);
    await expectNoSnapshots(vm);
    await expectRestores('vm0-reset', third);
  });

  it('transport=nbd: a helper serves each snapshot disk with qemu-nbd; the quiesced snapshot exists only during the backup', async () => {
    const vm = sim.vm('DC0_H0_VM1');
    const [d0, d1] = vm.disks;
    await writeAt(d0!.flat, 3 * MiB, randomBytes(5 * MiB));
    await writeAt(d1!.flat, 0, randomBytes(1 * MiB));
    const first = await freeze(vm, 'first');
    const hold = sb.path('helper-go');
    const helper = await nbdHelper('nbd-helper', hold);
    const url = vsphereUrl(vm.moref, { transport: 'nbd', 'nbd-helper': helper.path });

    const backupRun = sb.cairn(['backup', url, '--vault', vault, '--name', 'vm1-full', '--json'], { env: { AWS_SECRET_ACCESS_KEY: 'not-for-helpers' } });
    // While the helper waits: the VM has Cairn's snapshot, quiesced, and the helper was told about it.
    const { env: told } = await helperStarted(helper.log);
    const during = await vmInfo(vm);
    expect(during.snapshots).toHaveLength(1);
    expect(during.snapshots[0]!.name).toMatch(/^cairn-[0-9a-f]{8}-/);
    expect(during.snapshots[0]!.quiesced).toBe(true);
    expect(told['CAIRN_VSPHERE_SNAPSHOT']).toBe(during.snapshots[0]!.snapshot.value);
    expect(told['CAIRN_VSPHERE_VM']).toBe(vm.moref);
    expect(told['CAIRN_VSPHERE_SERVER']).toBe(sim.host);
    expect(told['CAIRN_VSPHERE_USER']).toBe(sim.user);
    expect(told['CAIRN_VSPHERE_FILE']).toMatch(/^\[LocalDS_0\] DC0_H0_VM1\/disk[12]-\d+\.vmdk$/);
    expect(existsSync(told['CAIRN_VSPHERE_PASSWORD_FILE']!)).toBe(true);
    // Only an allow-listed environment: no vault passphrase, no cloud credentials.
    expect(told['PATH']).toBeTruthy();
    expect(Object.keys(told).filter((k) => k === 'CAIRN_PASSPHRASE' || k.startsWith('AWS_') || k === 'CAIRN_VSPHERE_PASSWORD')).toEqual([]);
    // The guest writes after the snapshot: not in this backup (the next one has it).
    const late = await guestWrites(d0!.flat, [[4 * MiB, 256 * KiB]]);
    // vCenter drops Cairn's session (idle timeout): Cairn logs in again for the calls still to come and removes its snapshot.
    expect(await dropOtherSessions()).toBeGreaterThan(0);
    await writeFile(hold, '');
    const r = await backupRun;
    expect(r.code, r.stderr).toBe(0);
    const full = JSON.parse(r.stdout) as BackupJson;
    expect(full.consistency).toBe('app_consistent');
    expect(full.disks.map((d) => d.changeDetection)).toEqual(['full', 'full']);
    await expectNoSnapshots(vm);
    await expectRestores('vm1-full', first);
    expect(await sha256File(d0!.flat)).not.toBe(await sha256File(first[0]!));

    const dirty = await guestWrites(d1!.flat, [[7 * MiB, 300 * KiB]]);
    const second = await freeze(vm, 'second');
    const incr = await backup(url, 'vm1-incr');
    expect(incr.disks.map((d) => d.changeDetection)).toEqual(['bitmap', 'bitmap']);
    expect(incr.disks.map((d) => d.dirtyBytes)).toEqual([late, dirty]);
    await expectNoSnapshots(vm);
    await expectRestores('vm1-incr', second);
  });

  it('quiescing fails: crash-consistent with a warning (quiesce=auto), QUIESCE_FAILED and no snapshot left (quiesce=require)', async () => {
    const vm = sim.vm('DC0_H0_VM2');
    await writeAt(vm.disks[0]!.flat, 0, randomBytes(1 * MiB));
    const first = await freeze(vm, 'first');
    await setExtraConfig(vm, 'vcsim.quiesce.fail', 'true');
    const crash = await backup(vsphereUrl(vm.name), 'vm2-crash');
    expect(crash.consistency).toBe('crash_consistent');
    expect(crash.warnings.join('\n')).toMatch(/quiescing the guest with VMware Tools failed \(ApplicationQuiesceFault.*crash-consistent/);
    await expectNoSnapshots(vm);
    await expectRestores('vm2-crash', first);

    const required = await sb.cairn(['backup', vsphereUrl(vm.name, { quiesce: 'require' }), '--vault', vault, '--name', 'vm2-required']);
    expectCliError(required, 'QUIESCE_FAILED', 'ApplicationQuiesceFault', 'quiesce=require');
    await expectNoSnapshots(vm);

    // VMware Tools not running: vSphere ignores quiesce and makes an unquiesced snapshot, which Cairn removes again.
    await setExtraConfig(vm, 'vcsim.quiesce.fail', 'false');
    await setExtraConfig(vm, 'SET.guest.toolsRunningStatus', 'guestToolsNotRunning');
    const noTools = await sb.cairn(['backup', vsphereUrl(vm.name, { quiesce: 'require' }), '--vault', vault, '--name', 'vm2-notools']);
    expectCliError(noTools, 'QUIESCE_FAILED', 'VMware Tools did not quiesce');
    await expectNoSnapshots(vm);
    const off = await backup(vsphereUrl(vm.name, { quiesce: 'off' }), 'vm2-off');
    expect(off.consistency).toBe('crash_consistent');
    await setExtraConfig(vm, 'SET.guest.toolsRunningStatus', 'guestToolsRunning');

    // A snapshot that fails for another reason (a full datastore) is not a quiesce failure: no crash-consistent retry.
    await setExtraConfig(vm, 'vcsim.snapshot.fault', 'NoDiskSpace');
    const full = await sb.cairn(['backup', vsphereUrl(vm.name), '--vault', vault, '--name', 'vm2-nospace']);
    expectCliError(full, 'SOURCE_UNREADABLE', 'NoDiskSpace', 'free space');
    expect(full.stderr).not.toContain('crash-consistent');
    await setExtraConfig(vm, 'vcsim.snapshot.fault', '');
    await expectNoSnapshots(vm);
  });

  it('a powered-off VM: its disks are consistent as they are, so quiesce=require succeeds, app-consistent, with no warning', async () => {
    const vm = sim.vm('DC0_H0_VM2');
    await runTask('PowerOffVM_Task', vmRef(vm));
    expect((await vmInfo(vm)).powerState).toBe('poweredOff');
    await writeAt(vm.disks[1]!.flat, 5 * MiB, randomBytes(1 * MiB));
    const disks = await freeze(vm, 'off');
    const r = await backup(vsphereUrl(vm.name, { quiesce: 'require' }), 'vm2-poweredoff');
    expect(r.consistency).toBe('app_consistent');
    expect(r.warnings).toEqual([]);
    await expectNoSnapshots(vm);
    const to = sb.path('restored-vm2-poweredoff-1.img');
    expect((await sb.cairn(['restore', 'vm2-poweredoff', '--vault', vault, '--to', to, '--disk', '1'])).code).toBe(0);
    expect(await sha256File(to)).toBe(await sha256File(disks[1]!));

    // Suspended: vSphere cannot quiesce it, so quiesce=require refuses and leaves nothing behind.
    await runTask('PowerOnVM_Task', vmRef(vm));
    await runTask('SuspendVM_Task', vmRef(vm));
    expect((await vmInfo(vm)).powerState).toBe('suspended');
    const refused = await sb.cairn(['backup', vsphereUrl(vm.name, { quiesce: 'require' }), '--vault', vault]);
    expectCliError(refused, 'QUIESCE_FAILED', 'the VM is suspended', 'Resume or power off the VM');
    await expectNoSnapshots(vm);
    const suspended = await backup(vsphereUrl(vm.name), 'vm2-suspended');
    expect(suspended.consistency).toBe('crash_consistent');
    expect(suspended.warnings.join('\n')).toContain('the VM is suspended');
    await expectNoSnapshots(vm);
  });

  it('a read failure mid-backup fails the backup with SOURCE_UNREADABLE and removes the snapshot', async () => {
    const vm = sim.vm('DC0_C0_RP0_VM0');
    await writeAt(vm.disks[0]!.flat, 0, randomBytes(12 * MiB));
    await setExtraConfig(vm, 'vcsim.read.failAfterBytes', String(4 * MiB));
    const r = await sb.cairn(['backup', vsphereUrl(vm.name), '--vault', vault, '--name', 'vm3-broken']);
    expectCliError(r, 'SOURCE_UNREADABLE', 'HTTP 500', 'DC0_C0_RP0_VM0/disk1-');
    await expectNoSnapshots(vm);
    const list = await sb.cairn(['backups', 'list', '--vault', vault, '--json']);
    expect(list.stdout).not.toContain('vm3-broken');
  });

  it('bad input: exact errors, and nothing left on the VMs', async () => {
    const vm = sim.vm('DC0_C0_RP0_VM1');
    const run = (url: string, env: Record<string, string> = {}) => sb.cairn(['backup', url, '--vault', vault], { env });

    const badPassword = sb.path('wrong.password');
    await writeFile(badPassword, 'not-the-password\n');
    expectCliError(await run(vsphereUrl(vm.name, { 'password-file': badPassword })), 'SOURCE_AUTH_FAILED', 'InvalidLogin', sim.user);

    const colons = sim.thumbprint.toUpperCase().match(/../g)!.join(':');
    const noPin = `vsphere://${sim.user}@${sim.host}:${sim.port}/${vm.name}?password-file=${encodeURIComponent(passwordFile)}`;
    expectCliError(await run(noPin), 'CERT_UNTRUSTED', colons, 'thumbprint=');
    expectCliError(await run(vsphereUrl(vm.name, { thumbprint: 'ab'.repeat(32) })), 'CERT_UNTRUSTED', 'does not have the pinned thumbprint', colons);
    // The same server, pinned by its SHA-1 as vSphere shows it, and the password from the environment.
    const sha1 = /SHA-1 ([0-9A-F:]{59})/.exec((await run(noPin)).stderr)![1]!;
    const ok = await sb.cairnJson<BackupJson>(['backup', `${noPin.replace(/\?.*/, '')}?thumbprint=${sha1}`, '--vault', vault, '--json'], { env: { CAIRN_VSPHERE_PASSWORD: sim.password } });
    expect(ok.disks).toHaveLength(2);

    expectCliError(await run(vsphereUrl('no-such-vm')), 'NOT_FOUND', "no virtual machine named 'no-such-vm'");
    expectCliError(await run(vsphereUrl('vm-9999')), 'NOT_FOUND', 'vm-9999');
    expectCliError(await run(vsphereUrl('00000000-0000-0000-0000-000000000000')), 'NOT_FOUND', 'instance UUID');
    expectCliError(await run(`vsphere://${sim.user}:secret@${sim.host}:${sim.port}/${vm.name}`), 'USAGE', 'password-file=');

    const independent = sim.vm('DC0_C0_RP0_VM2');
    expect(independent.disks[1]!.diskMode).toBe('independent_persistent');
    expectCliError(await run(vsphereUrl(independent.name)), 'SOURCE_UNSUPPORTED', 'independent_persistent', 'disk2.vmdk');
    const after = await vmInfo(independent);
    expect(after.snapshots).toEqual([]);
    expect(after.changeTracking).toBe(false);
    await expectNoSnapshots(vm);
  });

  it('leftover snapshots of this vault: a dead backup\'s is removed with a warning, a running one\'s is left alone', async () => {
    const vm = sim.vm('DC0_C0_RP0_VM1');
    const boot = (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
    const dead = await new Promise<number>((resolve) => {
      const c = spawn('true');
      c.once('exit', () => resolve(c.pid!));
    });
    const prefix = `cairn-${vaultId.slice(0, 8)}-`;
    const stat = await readFile('/proc/self/stat', 'utf8');
    const myStart = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]!;
    const myNs = await readlink('/proc/self/ns/pid');
    const owner = (pid: number, start = myStart, ns = myNs) =>
      `Cairn backup x; removed when the backup ends; owner host=${hostname()} pid=${pid} start=${start} ns=${ns} boot=${boot} backup=x`;
    const leftover = (name: string, description: string) =>
      runTask('CreateSnapshot_Task', vmRef(vm), `<name>${name}</name><description>${escapeXml(description)}</description><memory>false</memory><quiesce>false</quiesce>`);
    await leftover(`${prefix}killed`, owner(dead));
    await leftover(`${prefix}running`, owner(process.pid));
    // The pid now names a process started later than the snapshot's maker: the maker is gone.
    await leftover(`${prefix}reused`, owner(process.pid, '1'));
    // Made in another pid namespace (a container sharing the host name): its pids say nothing here.
    await leftover(`${prefix}container`, owner(dead, myStart, 'pid:[1]'));
    await leftover('cairn-00000000-other-vault', owner(dead));

    const r = await backup(vsphereUrl(vm.name), 'vm4-sweep');
    const warnings = r.warnings.join('\n');
    expect(warnings).toContain(`removed snapshot '${prefix}killed'`);
    expect(warnings).toContain(`process ${dead} on this host`);
    expect(warnings).toMatch(new RegExp(`snapshot '${prefix}running' .*another backup of this vault seems to be running`));
    expect(warnings).toContain(`removed snapshot '${prefix}reused'`);
    expect(warnings).toMatch(new RegExp(`snapshot '${prefix}container' .*another backup of this vault seems to be running`));
    expect(warnings).not.toContain('other-vault');
    const left = (await vmInfo(vm)).snapshots;
    const names = (nodes: VmInfo['snapshots']): string[] => nodes.flatMap((n) => [n.name, ...names(n.children)]);
    expect(names(left).sort()).toEqual(['cairn-00000000-other-vault', `${prefix}container`, `${prefix}running`].sort());
    const all = (nodes: VmInfo['snapshots']): VmInfo['snapshots'] => nodes.flatMap((n) => [n, ...all(n.children)]);
    for (const n of all(left)) await api.removeSnapshot(n.snapshot);
    await expectNoSnapshots(vm);
  });

  it('Ctrl-C while the snapshot\'s helper starts: the snapshot is removed, the helper stopped and its password file gone', async () => {
    const vm = sim.vm('DC0_H0_VM1');
    const helper = await nbdHelper('sigint-helper', sb.path('never'));
    // The password from the environment: Cairn writes it to a private file for the helper.
    const url = `vsphere://${sim.user}@${sim.host}:${sim.port}/${vm.name}?${new URLSearchParams({ thumbprint: sim.thumbprint, transport: 'nbd', 'nbd-helper': helper.path }).toString()}`;
    const cli = spawn(process.execPath, [cliPath, 'backup', url, '--vault', vault], {
      cwd: sb.dir,
      env: { PATH: process.env['PATH'], CAIRN_PASSPHRASE: PASSPHRASE, CAIRN_STATE_DIR: sb.stateDir, CAIRN_VSPHERE_PASSWORD: sim.password },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    cli.stderr!.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    const exited = new Promise<number | null>((resolve) => cli.once('exit', (code) => resolve(code)));
    const { env, pid } = await helperStarted(helper.log);
    expect(running(pid)).toBe(true);
    expect(existsSync(env['CAIRN_VSPHERE_PASSWORD_FILE']!)).toBe(true);
    expect((await vmInfo(vm)).snapshots).toHaveLength(1);
    cli.kill('SIGINT');
    expect(await exited, stderr).toBe(130);
    await expectNoSnapshots(vm);
    expect(running(pid)).toBe(false);
    expect(existsSync(env['CAIRN_VSPHERE_PASSWORD_FILE']!)).toBe(false);
    expect(existsSync(env['CAIRN_VSPHERE_SOCKET']!.replace(/\/nbd\.sock$/, ''))).toBe(false);
  });
});
