import { readFile } from 'node:fs/promises';
import { CairnError, fromSystemError } from '../../../shared/errors.js';
import type { BlockSource, ByteRange, CaptureContext, CaptureGroup, CaptureResult, ParentDisk, ReadPlan } from '../block-source.js';
import { HttpsDiskReader, NbdHelperReader, type DiskReader } from './disk-readers.js';
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

class VsphereVmGroup implements CaptureGroup {
  readonly disks: VsphereDiskSource[];
  private snapshot: MoRef | undefined;
  private finished = false;

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

  async capture(ctx: CaptureContext): Promise<CaptureResult> {
    const warnings: string[] = [];
    const vm = this.info.ref;
    if (!this.info.changeTracking) {
      await this.client.reconfigure(vm, '<changeTrackingEnabled>true</changeTrackingEnabled>');
      warnings.push(`${this.vmName}: changed block tracking was off; Cairn turned it on, so later backups read only changed blocks`);
    }
    // Snapshots of this vault's chain left by a backup that was killed: the vault's lease says none is running.
    const prefix = `cairn-${ctx.vaultId.slice(0, 8)}-`;
    for (const stale of allSnapshots(this.info.snapshots).filter((s) => s.name.startsWith(prefix))) {
      await this.client.removeSnapshot(stale.snapshot).then(
        () => warnings.push(`${this.vmName}: removed snapshot '${stale.name}' left by an interrupted backup`),
        (err: Error) => warnings.push(`${this.vmName}: snapshot '${stale.name}' left by an interrupted backup was not removed (${err.message})`),
      );
    }

    const name = prefix + ctx.backupId;
    const description = `Cairn backup ${ctx.backupId}; removed when the backup ends`;
    let consistency: 'app_consistent' | 'crash_consistent' = 'crash_consistent';
    if (this.url.quiesce !== 'off') {
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
        why = `quiescing the guest with VMware Tools failed (${err.faultType}${err.text && err.text !== err.faultType ? `: ${err.text}` : ''})`;
      }
      if (why !== undefined) {
        if (this.url.quiesce === 'require') {
          throw new CairnError('QUIESCE_FAILED', `${this.vmName}: ${why}; no backup was made (quiesce=require). Start VMware Tools in the guest and check its quiescing (VSS writers), or use quiesce=auto`);
        }
        warnings.push(`${this.vmName}: ${why}; the backup is crash-consistent`);
      }
    }
    if (!this.snapshot) {
      this.snapshot = await this.client.createSnapshot(vm, name, description, false).catch((err: unknown) => {
        throw translate(err, this.client.what, 'CreateSnapshot_Task');
      });
    }
    try {
      const frozen = await this.client.snapshotDisks(this.snapshot);
      for (const disk of this.disks) {
        const d = frozen.find((f) => f.key === disk.disk.key);
        if (!d) throw new CairnError('SOURCE_UNREADABLE', `${this.vmName}: the snapshot has no disk with key ${disk.disk.key} ('${disk.disk.label}'); was the disk removed?`);
        await disk.attach(d, this.snapshot, await this.openReader(d, this.snapshot));
      }
    } catch (err) {
      await this.abort();
      throw err;
    }
    return { consistency, warnings };
  }

  private openReader(d: VmDisk, snapshot: MoRef): Promise<DiskReader> {
    if (this.url.transport === 'https') return HttpsDiskReader.open(this.client.soap, d.fileName, this.dcPath, d.capacity);
    return NbdHelperReader.start({
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
    });
  }

  async commit(): Promise<string[]> {
    const warnings: string[] = [];
    await this.finish((err) => warnings.push(`${this.vmName}: snapshot ${this.snapshot?.value} was not removed (${err.message}); remove it in vSphere, the next backup of this vault also removes it`));
    return warnings;
  }

  async abort(): Promise<void> {
    await this.finish(() => undefined);
  }

  /** Closes the readers, removes the snapshot, logs out. Once; never throws. */
  private async finish(onRemoveError: (err: Error) => void): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    for (const d of this.disks) await d.detach();
    await this.removeSnapshot().catch(onRemoveError);
    await this.client.logout();
  }

  private async removeSnapshot(): Promise<void> {
    const s = this.snapshot;
    if (!s) return;
    await this.client.removeSnapshot(s);
    this.snapshot = undefined;
  }
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
