import { CairnError } from '../../../shared/errors.js';
import type { BlockSource, ByteRange, CaptureContext, CaptureGroup, CaptureResult, ParentDisk, ReadPlan } from '../block-source.js';
import type { ArrayDriver, ArraySnapshot, ArrayVolume, SnapshotReader } from './array-driver.js';

/** A volume as the user names it: which array (driver connection) and which volume on it. */
export interface ArrayVolumeUrl {
  /** Canonical address of the array; volumes with the same location are captured together. */
  location: string;
  /** The volume's name or id on the array. */
  volume: string;
  /**
   * What the connection is made with besides the location (user, credentials file, options). One
   * connection serves every volume of a location, so URLs of one location must agree on these.
   */
  connection?: Record<string, string>;
  /** Logs in to the array (called once per location and backup). */
  connect(): Promise<ArrayDriver>;
}

/** Prefix of the snapshots Cairn makes for one vault's chain: other vaults' snapshots are left alone. */
export function snapshotPrefix(vaultId: string): string {
  return `cairn-${vaultId.slice(0, 8)}-`;
}

/**
 * The volumes of one array in one backup, captured together with the array's snapshots. The
 * snapshot of a committed backup stays on the array as the change token of the next backup, which
 * asks the array for the difference between the two; the parent's snapshot is deleted only after the
 * new backup's manifest is written, and the new one when the backup fails, so no change is missed.
 */
export class ArrayGroup implements CaptureGroup {
  readonly disks: ArrayVolumeSource[] = [];
  private created: ArraySnapshot[] = [];
  /** Snapshots to delete once the backup is committed: the parents' and stale ones of this vault. */
  private superseded: { volume: ArrayVolume; snapshot: ArraySnapshot }[] = [];
  private aborting: Promise<void> | undefined;

  private constructor(
    readonly driver: ArrayDriver,
    readonly connection: Record<string, string>,
  ) {}

  /**
   * Opens each named volume, grouping them by array. On failure every connection made so far is closed.
   */
  static async open(urls: ArrayVolumeUrl[], groups: Map<string, ArrayGroup>): Promise<ArrayVolumeSource[]> {
    const out: ArrayVolumeSource[] = [];
    try {
      await ArrayGroup.openInto(urls, groups, out);
      return out;
    } catch (err) {
      for (const d of out) await d.close().catch(() => undefined);
      throw err;
    }
  }

  private static async openInto(urls: ArrayVolumeUrl[], groups: Map<string, ArrayGroup>, out: ArrayVolumeSource[]): Promise<void> {
    for (const u of urls) {
      let group = groups.get(u.location);
      if (!group) groups.set(u.location, (group = new ArrayGroup(await u.connect(), u.connection ?? {})));
      else sameConnection(group.connection, u);
      const volume = await group.driver.findVolume(u.volume).catch(async (err: unknown) => {
        if (group.disks.length === 0) {
          groups.delete(u.location);
          await group.driver.close();
        }
        throw err;
      });
      if (group.disks.some((d) => d.volume.id === volume.id)) {
        throw new CairnError('USAGE', `volume ${volume.name} of ${u.location} is given twice; name each volume once`);
      }
      const disk = new ArrayVolumeSource(`${u.location}/${volume.name}`, volume, group);
      group.disks.push(disk);
      out.push(disk);
    }
  }

  async capture(ctx: CaptureContext): Promise<CaptureResult> {
    const prefix = snapshotPrefix(ctx.vaultId);
    const volumes = this.disks.map((d) => d.volume);
    const taken = await this.driver.snapshotGroup(volumes, prefix + ctx.backupId);
    this.created = taken.snapshots;
    const warnings: string[] = [];
    if (!taken.atomic && volumes.length > 1) {
      warnings.push(`${this.driver.location}: the volumes were snapshotted one after another, not at one instant (the array has no consistency-group snapshot for them)`);
    }
    try {
      for (const [i, disk] of this.disks.entries()) {
        const token = ctx.parents[i]?.changeToken;
        // Cairn's earlier snapshots of this volume and vault: the parent's, and those of killed runs.
        // Names end in the backup id, which starts with its time, so they sort by age; a newer one
        // belongs to a backup that started after this one and is still running: it is left alone.
        const newName = this.created[i].name;
        const mine = (await this.driver.listSnapshots(disk.volume)).filter((s) => s.name.startsWith(prefix) && s.id !== this.created[i].id);
        const parent = token === undefined ? undefined : mine.find((s) => s.name === token);
        const older = mine.filter((s) => s.name < newName);
        this.superseded.push(...older.map((snapshot) => ({ volume: disk.volume, snapshot })));
        const why =
          token === undefined
            ? undefined
            : !parent
              ? `the parent's snapshot '${token}' is no longer on the array`
              : undefined;
        await disk.attach(await this.driver.openSnapshot(disk.volume, this.created[i]), this.created[i], parent, why);
      }
    } catch (err) {
      await this.abort();
      throw err;
    }
    return { warnings };
  }

  async commit(): Promise<string[]> {
    const warnings = await this.detach();
    for (const { volume, snapshot } of this.superseded) {
      await this.driver.deleteSnapshot(volume, snapshot).catch((err: Error) => {
        warnings.push(`${this.driver.location}/${volume.name}: snapshot ${snapshot.name} was not deleted (${err.message}); the next backup deletes it`);
      });
    }
    this.superseded = [];
    this.created = [];
    await this.driver.close();
    return warnings;
  }

  /** Safe to call more than once and concurrently (an interrupt and the engine's cleanup). */
  abort(): Promise<void> {
    this.aborting ??= (async () => {
      await this.detach();
      const created = this.created;
      this.created = [];
      this.superseded = [];
      for (const [i, snapshot] of created.entries()) {
        await this.driver.deleteSnapshot(this.disks[i].volume, snapshot).catch(() => undefined);
      }
      await this.driver.close();
    })().finally(() => {
      this.aborting = undefined;
    });
    return this.aborting;
  }

  /** Closes every reader; what failed (an unmap the array refused) comes back as warnings. */
  private async detach(): Promise<string[]> {
    const warnings: string[] = [];
    for (const d of this.disks) {
      await d.detach().catch((err: Error) => {
        warnings.push(`${d.name}: ${err.message}`);
      });
    }
    return warnings;
  }
}

/** One volume of an ArrayGroup; readable once the group is captured. */
export class ArrayVolumeSource implements BlockSource {
  private reader: SnapshotReader | undefined;
  private snapshot: ArraySnapshot | undefined;
  private parentSnapshot: ArraySnapshot | undefined;
  private trackerLost: string | undefined;

  constructor(
    readonly name: string,
    readonly volume: ArrayVolume,
    readonly group: ArrayGroup,
  ) {}

  get size(): number {
    return this.reader?.size ?? this.volume.size;
  }

  /** @internal called by the group's capture */
  async attach(reader: SnapshotReader, snapshot: ArraySnapshot, parent: ArraySnapshot | undefined, trackerLost: string | undefined): Promise<void> {
    await this.detach().catch(() => undefined);
    this.reader = reader;
    this.snapshot = snapshot;
    this.parentSnapshot = parent;
    this.trackerLost = trackerLost;
  }

  /** @internal closes the reader; throws what closing it threw */
  async detach(): Promise<void> {
    const r = this.reader;
    this.reader = undefined;
    await r?.close();
  }

  async plan(parent: ParentDisk | undefined): Promise<ReadPlan> {
    const snapshot = this.captured();
    const driver = this.group.driver;
    const changeToken = snapshot.name;
    if (parent && this.parentSnapshot) {
      const why =
        parent.size !== this.size
          ? `the volume's size changed from ${parent.size} to ${this.size} bytes`
          : parent.changeToken !== this.parentSnapshot.name
            ? `the parent backup was not made from snapshot '${this.parentSnapshot.name}'`
            : undefined;
      const changed = why === undefined ? await driver.diff(this.volume, this.parentSnapshot, snapshot) : undefined;
      if (changed) return { method: 'bitmap', ranges: changed, dirtyBytes: sum(changed), changeToken };
      const reason = why ?? 'the array cannot tell the difference between the snapshots';
      return { method: 'compare', ...(await this.allocated()), warning: `changed blocks not used: ${reason}; read every used block and compared`, changeToken };
    }
    const lost = parent && this.trackerLost ? { warning: `changed blocks not used: ${this.trackerLost}; read every used block and compared` } : {};
    return { method: parent ? 'compare' : 'full', ...(await this.allocated()), ...lost, changeToken };
  }

  read(buffer: Buffer, length: number, position: number): Promise<number> {
    if (!this.reader) throw new CairnError('INTERNAL', `${this.name} is read before it was captured`);
    return this.reader.read(buffer, length, position);
  }

  async close(): Promise<void> {
    // A capture still open here was neither committed nor aborted (the engine never got to it).
    if (this.group.disks[0] === this) await this.group.abort();
  }

  private async allocated(): Promise<{ ranges?: ByteRange[] }> {
    const ranges = await this.group.driver.allocated(this.volume, this.captured());
    return ranges ? { ranges } : {};
  }

  private captured(): ArraySnapshot {
    if (!this.snapshot) throw new CairnError('INTERNAL', `${this.name} is planned before it was captured`);
    return this.snapshot;
  }
}

/** USAGE when a volume's URL names its array's connection differently from the first URL of that array. */
function sameConnection(first: Record<string, string>, u: ArrayVolumeUrl): void {
  const given = u.connection ?? {};
  const keys = [...new Set([...Object.keys(first), ...Object.keys(given)])].filter((k) => first[k] !== given[k]);
  if (keys.length === 0) return;
  throw new CairnError(
    'USAGE',
    `volume '${u.volume}' of ${u.location} is given with other ${keys.join(', ')} than the first volume of that array; ` +
      'one connection serves every volume of an array, so give the same parameters in every URL of one array',
  );
}

function sum(ranges: ByteRange[]): number {
  return ranges.reduce((n, r) => n + r.length, 0);
}
