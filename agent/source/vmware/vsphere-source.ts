import { readFile, readlink } from 'node:fs/promises';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { CairnError, fromSystemError } from '../../../shared/errors.js';
import { onInterrupt } from '../../../shared/interrupt.js';
import type { BlockSource, ByteRange, CaptureContext, CaptureGroup, CaptureResult, ParentDisk, ReadPlan } from '../block-source.js';
import { HttpsDiskReader, NbdHelperReader, type DiskReader, type NbdHelperProcess } from './disk-readers.js';
import { VimFault, type MoRef } from './soap-client.js';
import { allSnapshots, translate, VsphereClient, type VmDisk, type VmInfo } from './vsphere-client.js';
import { isVsphereUrl, parseVsphereUrl, type VsphereUrl } from './vsphere-url.js';

export { isVsphereUrl };

/**
 * A VMware VM's disks as one consistency group (README.md has the design):
 *
 *   open: log in, find the VM, refuse disks that cannot be snapshotted or tracked ->
 *   capture: enable changed-block tracking if off, one snapshot of the VM (quiesced by VMware Tools
 *   when it can be), read each disk's changeId from the snapshot ->
 *   plan: QueryChangedDiskAreas since the parent's changeId ('*' for a full: areas in use) ->
 *   read: the snapshot's disk (datastore file access, or NBD from a helper) ->
 *   commit / abort: remove the snapshot, log out.
 *
 * The change token of a disk is its changeId at the snapshot. Nothing of Cairn's stays on the VM
 * between backups (changed-block tracking keeps the history), so the snapshot is removed whatever
 * happens: on commit, on abort, and when the sources are closed without either.
 */

/** Opens every virtual disk of the VM a `vsphere://` URL names, as one consistency group. */
export async function openVsphereDisks(url: string): Promise<BlockSource[]> {
  const u = parseVsphereUrl(url);
  const password = await readPassword(u);
  const client = await VsphereClient.login({ host: u.host, port: u.port, thumbprint: u.thumbprint }, { user: u.user, password });
  try {
    const vm = await client.findVm(u.vm);
    const info = await client.vmInfo(vm);
    checkDisks(info, client.what);
    const dcPath = u.transport === 'https' ? await client.datacenterPath(vm) : '';
    const group = new VsphereVmGroup(client, u, password, info, dcPath);
    return group.disks;
  } catch (err) {
    await client.logout();
    throw err;
  }
}

async function readPassword(u: VsphereUrl): Promise<string> {
  if (u.passwordFile !== undefined) {
    const text = await readFile(u.passwordFile, 'utf8').catch((err: unknown) => {
      throw fromSystemError(err, 'reading the vSphere password (password-file=)', u.passwordFile!);
    });
    const first = text.split(/\r?\n/)[0] ?? '';
    if (!first) throw new CairnError('USAGE', `${u.passwordFile} (password-file= of ${u.display}) is empty; put the password of ${u.user} on its first line`);
    return first;
  }
  const env = process.env['CAIRN_VSPHERE_PASSWORD'];
  if (env) return env;
  throw new CairnError('USAGE', `no password for ${u.user} on ${u.host}: add password-file=PATH to ${u.display} (a file with the password on its first line, mode 0600) or set CAIRN_VSPHERE_PASSWORD`);
}

/** SOURCE_UNSUPPORTED, before any snapshot is made, for a VM whose disks cannot all be snapshotted and tracked. */
function checkDisks(info: VmInfo, what: string): void {
  if (info.disks.length === 0) throw new CairnError('SOURCE_UNSUPPORTED', `virtual machine '${info.name}' (${info.ref.value}) on ${what} has no virtual disks to back up`);
  for (const d of info.disks) {
    const where = `disk '${d.label}' (${d.fileName}) of virtual machine '${info.name}' on ${what}`;
    if (d.diskMode?.startsWith('independent')) {
      throw new CairnError(
        'SOURCE_UNSUPPORTED',
        `${where} is ${d.diskMode}: independent disks are left out of snapshots and have no changed-block tracking; make it a dependent disk (Edit Settings > Disk Mode) to back it up with Cairn`,
      );
    }
    if (d.backing === 'VirtualDiskRawDiskMappingVer1BackingInfo' && d.compatibilityMode === 'physicalMode') {
      throw new CairnError('SOURCE_UNSUPPORTED', `${where} is a physical-mode raw device mapping, which cannot be snapshotted or tracked; back the LUN up on the storage array, or switch the RDM to virtual mode`);
    }
  }
}

/** A Cairn snapshot older than this is removed by the next backup of its vault, whoever made it. */
const STALE_SNAPSHOT_MS = 24 * 3600_000;
/**
 * How long abort() waits for a capture still running. The engine has waited 2 s already on Ctrl-C,
 * and the CLI exits 3 s after the signal.
 */
const CAPTURE_SETTLE_MS = 500;

/** Backups this process is making right now: a snapshot this process made for another one is a leftover. */
const backupsInProgress = new Set<string>();

/**
 * Who makes a snapshot, written into its description so that a later backup can tell a dead backup's
 * snapshot from a running one's. A process is named by its pid within its pid namespace and boot,
 * with its start time (a pid is reused; containers on one host share hostname and boot id).
 */
interface SnapshotOwner {
  host: string;
  pid: number;
  /** Start time of the process (/proc/PID/stat field 22, clock ticks since boot). */
  start: string;
  /** /proc/self/ns/pid, e.g. pid:[4026531836]. */
  ns: string;
  /** /proc/sys/kernel/random/boot_id. */
  boot: string;
  /** The backup the snapshot is for. */
  backup: string;
}

async function processStart(pid: number | 'self'): Promise<string | undefined> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  // Field 22, counted after the command name (which is in parentheses and may hold spaces).
  return stat?.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
}

async function thisProcess(backup: string): Promise<SnapshotOwner | undefined> {
  const [boot, ns, start] = await Promise.all([
    readFile('/proc/sys/kernel/random/boot_id', 'utf8').then((t) => t.trim(), () => undefined),
    readlink('/proc/self/ns/pid').catch(() => undefined),
    processStart('self'),
  ]);
  return boot && ns && start ? { host: hostname(), pid: process.pid, start, ns, boot, backup } : undefined;
}

function ownerText(o: SnapshotOwner | undefined): string {
  return o ? `owner host=${o.host} pid=${o.pid} start=${o.start} ns=${o.ns} boot=${o.boot} backup=${o.backup}` : 'owner unknown';
}

function parseOwner(description: string): SnapshotOwner | undefined {
  const m = /owner host=(\S+) pid=(\d+) start=(\d+) ns=(\S+) boot=(\S+) backup=(\S+)/.exec(description);
  return m ? { host: m[1]!, pid: Number(m[2]), start: m[3]!, ns: m[4]!, boot: m[5]!, backup: m[6]! } : undefined;
}

/**
 * True when the snapshot's maker is known to be gone: it ran on this host, in this boot and pid
 * namespace, and its process has ended (the pid is gone or now names a process started later), or it
 * is this very process, which is no longer making that backup.
 */
async function ownerGone(owner: SnapshotOwner | undefined, me: SnapshotOwner | undefined): Promise<boolean> {
  if (!owner || !me || owner.host !== me.host || owner.boot !== me.boot || owner.ns !== me.ns) return false;
  if (owner.pid === me.pid && owner.start === me.start) return !backupsInProgress.has(owner.backup);
  const start = await processStart(owner.pid);
  return start === undefined || start !== owner.start;
}

/** Faults of a quiesced snapshot that mean the quiescing failed (retry without it), not the snapshot. */
function isQuiesceFault(err: VimFault): boolean {
  if (err.faultType === 'ApplicationQuiesceFault') return true;
  // A quiesce that timed out: vSphere reports it as Timedout (or a generic fault) whose message names the quiescing.
  return ['Timedout', 'SystemError', 'SnapshotFault'].includes(err.faultType) && /quiesc/i.test(err.text);
}

class VsphereVmGroup implements CaptureGroup {
  readonly disks: VsphereDiskSource[];
  /** NBD helpers running or starting (transport=nbd). */
  private readonly helpers = new Set<NbdHelperProcess>();
  private snapshot: MoRef | undefined;
  private capturing: Promise<unknown> | undefined;
  /** abort() or commit() was called: a capture still running stops at its next step. */
  private ending = false;
  private finishing: Promise<void> = Promise.resolve();
  private backupId: string | undefined;

  constructor(
    readonly client: VsphereClient,
    readonly url: VsphereUrl,
    private readonly password: string,
    readonly info: VmInfo,
    private readonly dcPath: string,
  ) {
    this.disks = info.disks.map((d) => new VsphereDiskSource(`vsphere://${url.host}${url.port === 443 ? '' : `:${url.port}`}/${info.instanceUuid}/${d.key}`, d, this));
  }

  private get vmName(): string {
    return `virtual machine '${this.info.name}' (${this.info.ref.value}) on ${this.client.what}`;
  }

  capture(ctx: CaptureContext): Promise<CaptureResult> {
    const run = this.captureOnce(ctx);
    this.capturing = run.catch(() => undefined);
    return run;
  }

  private async captureOnce(ctx: CaptureContext): Promise<CaptureResult> {
    // Ctrl-C: stop at the next step, and stop helpers at once (one still starting would hold the capture
    // up for a minute), whether the engine calls abort() now or after the capture has settled.
    const unregister = onInterrupt(() => {
      this.ending = true;
      return this.stopHelpers();
    });
    try {
      return await this.takeSnapshot(ctx);
    } catch (err) {
      await this.finish((e) => warnNow(this.leftSnapshot(e)));
      throw err;
    } finally {
      unregister();
    }
  }

  /** Throws once the group is being ended, so that a capture interrupted by abort() starts nothing new. */
  private checkNotEnding(): void {
    if (this.ending) throw new CairnError('SOURCE_UNREADABLE', `${this.vmName}: the backup was stopped while the snapshot was being made`);
  }

  private async takeSnapshot(ctx: CaptureContext): Promise<CaptureResult> {
    const warnings: string[] = [];
    const vm = this.info.ref;
    this.client.keepAlive(true);
    if (!this.info.changeTracking) {
      await this.client.reconfigure(vm, '<changeTrackingEnabled>true</changeTrackingEnabled>');
      warnings.push(`${this.vmName}: changed block tracking was off; Cairn turned it on, so later backups read only changed blocks`);
    }
    const prefix = `cairn-${ctx.vaultId.slice(0, 8)}-`;
    this.backupId = ctx.backupId;
    backupsInProgress.add(ctx.backupId);
    const me = await thisProcess(ctx.backupId);
    await this.sweep(prefix, me, warnings);
    this.checkNotEnding();

    const name = prefix + ctx.backupId;
    const description = `Cairn backup ${ctx.backupId}; removed when the backup ends; ${ownerText(me)}`;
    let consistency: 'app_consistent' | 'crash_consistent' = 'crash_consistent';
    // The power state now, not when the VM was opened: the vault's index may have taken a while to load.
    const power = (await this.client.vmInfo(vm)).powerState;
    if (power === 'poweredOff') {
      // Nothing runs in the guest: the disks are as consistent as they get (vSphere would ignore quiesce anyway).
      consistency = 'app_consistent';
    } else if (power === 'suspended') {
      // vSphere cannot quiesce a suspended guest; its disks are as they were when it was suspended,
      // its memory (which the backup does not hold) belongs with them.
      const why = 'the VM is suspended, so VMware Tools cannot quiesce it; its disks are backed up as they are, without its memory state';
      if (this.url.quiesce === 'require') {
        throw new CairnError('QUIESCE_FAILED', `${this.vmName}: ${why}; no backup was made (quiesce=require). Resume or power off the VM, or use quiesce=auto`);
      }
      if (this.url.quiesce !== 'off') warnings.push(`${this.vmName}: ${why}; the backup is crash-consistent`);
    } else if (this.url.quiesce !== 'off') {
      let why: string | undefined;
      try {
        this.snapshot = await this.client.createSnapshot(vm, name, description, true);
        const node = allSnapshots((await this.client.vmInfo(vm)).snapshots).find((s) => s.snapshot.value === this.snapshot!.value);
        if (node?.quiesced) consistency = 'app_consistent';
        else {
          why = 'VMware Tools did not quiesce the guest (they are not running or not installed), so vSphere took an unquiesced snapshot';
          if (this.url.quiesce === 'require') await this.removeSnapshot();
        }
      } catch (err) {
        if (!(err instanceof VimFault)) throw err;
        if (!isQuiesceFault(err)) throw this.snapshotFailed(err);
        why = `quiescing the guest with VMware Tools failed (${err.faultType}${err.text && err.text !== err.faultType ? `: ${err.text}` : ''})`;
      }
      if (why !== undefined) {
        if (this.url.quiesce === 'require') {
          throw new CairnError('QUIESCE_FAILED', `${this.vmName}: ${why}; no backup was made (quiesce=require). Start VMware Tools in the guest and check its quiescing (VSS writers), or use quiesce=auto`);
        }
        warnings.push(`${this.vmName}: ${why}; the backup is crash-consistent`);
      }
    }
    this.checkNotEnding();
    if (!this.snapshot) {
      this.snapshot = await this.client.createSnapshot(vm, name, description, false).catch((err: unknown) => {
        throw err instanceof VimFault ? this.snapshotFailed(err) : err;
      });
    }
    this.checkNotEnding();
    const frozen = await this.client.snapshotDisks(this.snapshot);
    for (const disk of this.disks) {
      const d = frozen.find((f) => f.key === disk.disk.key);
      if (!d) throw new CairnError('SOURCE_UNREADABLE', `${this.vmName}: the snapshot has no disk with key ${disk.disk.key} ('${disk.disk.label}'); was the disk removed?`);
      this.checkNotEnding();
      await disk.attach(d, this.snapshot, await this.openReader(d, this.snapshot));
    }
    this.checkNotEnding();
    return { consistency, warnings };
  }

  /**
   * Removes Cairn snapshots of this vault whose backup is known to be over: made on this host in this
   * boot by a process that is gone, or older than a day. Any other is another backup's that may still
   * be running (vault leases do not exclude each other): left alone, with a warning.
   */
  private async sweep(prefix: string, me: SnapshotOwner | undefined, warnings: string[]): Promise<void> {
    for (const s of allSnapshots(this.info.snapshots).filter((x) => x.name.startsWith(prefix))) {
      const owner = parseOwner(s.description);
      const age = Date.now() - s.createTime;
      const gone = await ownerGone(owner, me);
      const made = `${owner ? `made by process ${owner.pid} on ${owner.host}` : 'made by an unknown process'}${Number.isNaN(s.createTime) ? '' : ` at ${new Date(s.createTime).toISOString()}`}`;
      if (!gone && !(age > STALE_SNAPSHOT_MS)) {
        warnings.push(`${this.vmName}: snapshot '${s.name}' (${made}) is on the VM: another backup of this vault seems to be running, so it was left alone; if none is, remove it in vSphere (a later backup removes it once it is a day old)`);
        continue;
      }
      const why = gone ? `its backup (process ${owner!.pid} on this host) is over` : 'it is more than a day old';
      await this.client.removeSnapshot(s.snapshot).then(
        () => warnings.push(`${this.vmName}: removed snapshot '${s.name}' (${made}) left by an interrupted backup: ${why}`),
        (err: Error) => warnings.push(`${this.vmName}: snapshot '${s.name}' (${made}) left by an interrupted backup was not removed (${err.message})`),
      );
    }
  }

  /** A snapshot vSphere would not make, as an error saying why (a quiesce failure is not handled here). */
  private snapshotFailed(err: VimFault): unknown {
    const t = translate(err, this.client.what, 'CreateSnapshot_Task');
    if (t instanceof CairnError && t.code !== 'SOURCE_UNREADABLE') return t;
    const fault = `${err.faultType}${err.text && err.text !== err.faultType ? `: ${err.text}` : ''}`;
    if (['TooManySnapshotLevels', 'SnapshotDisabled', 'SnapshotIncompatibleDeviceInVm', 'NotSupported', 'MemorySnapshotOnIndependentDisk'].includes(err.faultType)) {
      return new CairnError(
        'SOURCE_UNSUPPORTED',
        `${this.vmName}: vSphere cannot snapshot this VM (${fault}); remove or consolidate its older snapshots, or the device that prevents snapshots (passthrough, shared bus, fault tolerance), then back it up again`,
        { cause: err },
      );
    }
    return new CairnError(
      'SOURCE_UNREADABLE',
      `${this.vmName}: vSphere could not make the snapshot (${fault}); no backup was made. Check the free space of the VM's datastore and the task's events in vSphere`,
      { cause: err },
    );
  }

  private openReader(d: VmDisk, snapshot: MoRef): Promise<DiskReader> {
    if (this.url.transport === 'https') return HttpsDiskReader.open(this.client.soap, d.fileName, this.dcPath, d.capacity);
    return NbdHelperReader.start(
      {
        helper: this.url.nbdHelper!,
        host: this.url.host,
        port: this.url.port,
        thumbprint: this.url.thumbprint,
        user: this.url.user,
        passwordFile: this.url.passwordFile,
        password: this.password,
        vm: this.info.ref,
        snapshot,
        fileName: d.fileName,
        capacity: d.capacity,
      },
      this.helpers,
      () => this.ending,
    );
  }

  async commit(): Promise<string[]> {
    const warnings: string[] = [];
    await this.finish((err) => warnings.push(this.leftSnapshot(err)));
    return warnings;
  }

  /**
   * Safe while capture() runs (Ctrl-C): helpers are stopped at once (one still starting would hold the
   * capture up), the capture is given CAPTURE_SETTLE_MS to stop at its next step, then whatever it made
   * is removed. A snapshot that could not be removed is reported on stderr; it says who made it, so
   * the next backup of the vault removes it.
   */
  async abort(): Promise<void> {
    this.ending = true;
    await this.stopHelpers();
    if (this.capturing) await Promise.race([this.capturing, sleep(CAPTURE_SETTLE_MS, undefined, { ref: false })]);
    await this.finish((err) => warnNow(this.leftSnapshot(err)));
  }

  private leftSnapshot(err: Error): string {
    return `${this.vmName}: snapshot ${this.snapshot?.value} was not removed (${err.message}); remove it in vSphere, the next backup of this vault also removes it`;
  }

  /** Stops the helpers running or starting now; one that registers meanwhile sees `ending` and does not start. */
  private async stopHelpers(): Promise<void> {
    const stopping = [...this.helpers];
    await Promise.all(stopping.map((h) => h.stop()));
    for (const h of stopping) this.helpers.delete(h);
  }

  /**
   * Closes the readers and helpers, removes the snapshot, logs out. Calls run one after another, and a
   * later one cleans up what a capture still under way made after the earlier one; never throws.
   */
  private finish(onRemoveError: (err: Error) => void): Promise<void> {
    this.ending = true;
    this.finishing = this.finishing.then(async () => {
      await Promise.all(this.disks.map((d) => d.detach()));
      await this.stopHelpers();
      await this.removeSnapshot().catch(onRemoveError);
      await this.client.logout();
      if (this.backupId !== undefined) backupsInProgress.delete(this.backupId);
    });
    return this.finishing;
  }

  private async removeSnapshot(): Promise<void> {
    const s = this.snapshot;
    if (!s) return;
    await this.client.removeSnapshot(s);
    this.snapshot = undefined;
  }
}

/** A warning that cannot be stored in a backup (abort has no result): the user sees it on stderr. */
function warnNow(message: string): void {
  process.stderr.write(`cairn: warning: ${message}\n`);
}

/** One disk of a VM; readable once its group is captured. */
class VsphereDiskSource implements BlockSource {
  private frozen: VmDisk | undefined;
  private snapshot: MoRef | undefined;
  private reader: DiskReader | undefined;

  constructor(
    readonly name: string,
    readonly disk: VmDisk,
    readonly group: VsphereVmGroup,
  ) {}

  get size(): number {
    return this.frozen?.capacity ?? this.disk.capacity;
  }

  /** @internal called by the group's capture */
  async attach(frozen: VmDisk, snapshot: MoRef, reader: DiskReader): Promise<void> {
    await this.detach();
    this.frozen = frozen;
    this.snapshot = snapshot;
    this.reader = reader;
  }

  /** @internal */
  async detach(): Promise<void> {
    const r = this.reader;
    this.reader = undefined;
    await r?.close().catch(() => undefined);
  }

  async plan(parent: ParentDisk | undefined): Promise<ReadPlan> {
    const frozen = this.frozen;
    if (!frozen || !this.snapshot) throw new CairnError('INTERNAL', `${this.name} is planned before it was captured`);
    const changeId = frozen.changeId;
    const token = changeId === undefined ? {} : { changeToken: changeId };
    if (changeId === undefined) {
      // vSphere gives no changeId while tracking is not active on the disk (yet): read it all.
      return { method: parent ? 'compare' : 'full', ...(parent ? { warning: 'changed blocks not used: the disk has no change id at the snapshot (changed block tracking is not active on it yet); read the whole disk and compared' } : {}) };
    }
    if (parent) {
      const why =
        parent.size !== this.size
          ? `the disk's size changed from ${parent.size} to ${this.size} bytes`
          : parent.changeToken === undefined
            ? 'the parent backup has no change id'
            : cbtId(parent.changeToken) !== cbtId(changeId)
              ? `changed block tracking of the disk was reset since the parent backup (change id ${parent.changeToken} is not in the disk's history, now ${changeId})`
              : cbtSequence(changeId) <= cbtSequence(parent.changeToken)
                ? `the disk's change id went back from ${parent.changeToken} to ${changeId} since the parent backup (was the VM reverted to an older snapshot?)`
                : undefined;
      if (why === undefined) {
        try {
          const ranges = await this.changedAreas(parent.changeToken!);
          return { method: 'bitmap', ranges, dirtyBytes: ranges.reduce((n, r) => n + r.length, 0), ...token };
        } catch (err) {
          if (!(err instanceof VimFault)) throw err;
          return { method: 'compare', ...(await this.allocated()), warning: `changed blocks not used: vSphere refused the parent's change id ${parent.changeToken} (${err.faultType}: changed block tracking was reset); read every used block and compared`, ...token };
        }
      }
      return { method: 'compare', ...(await this.allocated()), warning: `changed blocks not used: ${why}; read every used block and compared`, ...token };
    }
    return { method: 'full', ...(await this.allocated()), ...token };
  }

  read(buffer: Buffer, length: number, position: number): Promise<number> {
    if (!this.reader) throw new CairnError('INTERNAL', `${this.name} is read before it was captured`);
    return this.reader.read(buffer, length, position);
  }

  async close(): Promise<void> {
    // A capture still open here was neither committed nor aborted (the engine never got to it).
    if (this.group.disks[0] === this) await this.group.abort();
  }

  /** Areas in use at the snapshot (changeId '*'); undefined (read everything) when vSphere cannot tell. */
  private async allocated(): Promise<{ ranges?: ByteRange[] }> {
    try {
      return { ranges: await this.changedAreas('*') };
    } catch (err) {
      if (err instanceof VimFault) return {};
      throw err;
    }
  }

  /** QueryChangedDiskAreas over the whole disk, page by page; throws the VimFault of a refused changeId. */
  private async changedAreas(changeId: string): Promise<ByteRange[]> {
    const client = this.group.client;
    const out: ByteRange[] = [];
    for (let offset = 0; offset < this.size; ) {
      const page = await client.queryChangedDiskAreas(this.group.info.ref, this.snapshot!, this.disk.key, offset, changeId).catch((err: unknown) => {
        if (err instanceof VimFault && (err.faultType === 'FileFault' || err.faultType === 'InvalidArgument' || err.faultType === 'NotFound')) throw err;
        throw translate(err, client.what, 'QueryChangedDiskAreas');
      });
      for (const a of page.areas) {
        const start = Math.max(a.start, 0);
        const end = Math.min(a.start + a.length, this.size);
        if (end <= start) continue;
        const last = out[out.length - 1];
        if (last && start < last.offset + last.length) throw new CairnError('SOURCE_UNREADABLE', `${client.what}: QueryChangedDiskAreas answered overlapping or unsorted areas for ${this.name}`);
        if (last && last.offset + last.length === start) last.length += end - start;
        else out.push({ offset: start, length: end - start });
      }
      const next = page.startOffset + page.length;
      if (!(next > offset)) throw new CairnError('SOURCE_UNREADABLE', `${client.what}: QueryChangedDiskAreas made no progress at offset ${offset} of ${this.name}`);
      offset = next;
    }
    return out;
  }
}

/** The tracker's identity in a changeId (`<uuid>/<sequence>`): it changes when tracking is reset. */
function cbtId(changeId: string): string {
  const slash = changeId.lastIndexOf('/');
  return slash < 0 ? changeId : changeId.slice(0, slash);
}

/** The sequence number in a changeId (`<uuid>/<sequence>`); it grows with every snapshot of the tracked disk. */
function cbtSequence(changeId: string): number {
  const slash = changeId.lastIndexOf('/');
  return slash < 0 ? NaN : Number(changeId.slice(slash + 1));
}
