import { describe, expect, it } from 'vitest';
import { isCairnError } from '../../../shared/errors.js';
import type { ByteRange } from '../block-source.js';
import type { ArrayDriver, ArraySnapshot, ArrayVolume, GroupSnapshot, SnapshotReader } from './array-driver.js';
import { ArrayGroup, snapshotPrefix, type ArrayVolumeSource } from './array-source.js';

/**
 * The generic half of the array seam against an array kept in memory: which snapshots a backup
 * creates, keeps and deletes, and what it plans to read. The real drivers (rbd, dorado) have their own tests.
 */
const BLOCK = 4096;
const VAULT = 'a1b2c3d4e5f6a7b8';

class MemoryArray implements ArrayDriver {
  readonly location = 'mem://array';
  readonly volumes = new Map<string, { volume: ArrayVolume; data: Buffer; snaps: Map<string, Buffer> }>();
  nextId = 1;
  closed = 0;
  failOpen = false;
  failClose = false;

  add(name: string, size: number): void {
    this.volumes.set(name, { volume: { id: name, name, size, uid: `uid-${name}` }, data: Buffer.alloc(size), snaps: new Map() });
  }
  listVolumes(): Promise<ArrayVolume[]> {
    return Promise.resolve([...this.volumes.values()].map((v) => v.volume));
  }
  findVolume(name: string): Promise<ArrayVolume> {
    const v = this.volumes.get(name);
    return v ? Promise.resolve(v.volume) : Promise.reject(new Error(`no volume ${name}`));
  }
  snapshotGroup(volumes: ArrayVolume[], name: string): Promise<GroupSnapshot> {
    for (const v of volumes) this.volumes.get(v.id)!.snaps.set(name, Buffer.from(this.volumes.get(v.id)!.data));
    return Promise.resolve({ snapshots: volumes.map(() => ({ id: name, name })), atomic: volumes.length === 1 });
  }
  listSnapshots(volume: ArrayVolume): Promise<ArraySnapshot[]> {
    return Promise.resolve([...this.volumes.get(volume.id)!.snaps.keys()].map((name) => ({ id: name, name })));
  }
  diff(volume: ArrayVolume, from: ArraySnapshot, to: ArraySnapshot): Promise<ByteRange[]> {
    const v = this.volumes.get(volume.id)!;
    const a = v.snaps.get(from.name)!;
    const b = v.snaps.get(to.name)!;
    const out: ByteRange[] = [];
    for (let o = 0; o < b.length; o += BLOCK) if (!a.subarray(o, o + BLOCK).equals(b.subarray(o, o + BLOCK))) out.push({ offset: o, length: BLOCK });
    return Promise.resolve(out);
  }
  allocated(volume: ArrayVolume, snapshot: ArraySnapshot): Promise<ByteRange[]> {
    const b = this.volumes.get(volume.id)!.snaps.get(snapshot.name)!;
    const out: ByteRange[] = [];
    for (let o = 0; o < b.length; o += BLOCK) if (b.subarray(o, o + BLOCK).some((x) => x !== 0)) out.push({ offset: o, length: BLOCK });
    return Promise.resolve(out);
  }
  openSnapshot(volume: ArrayVolume, snapshot: ArraySnapshot): Promise<SnapshotReader> {
    if (this.failOpen) return Promise.reject(new Error('cannot map the snapshot'));
    const b = this.volumes.get(volume.id)!.snaps.get(snapshot.name)!;
    return Promise.resolve({
      size: b.length,
      read: (buffer: Buffer, length: number, position: number) => Promise.resolve(b.copy(buffer, 0, position, Math.min(b.length, position + length))),
      close: () => (this.failClose ? Promise.reject(new Error('the array refused to unmap the snapshot')) : Promise.resolve()),
    });
  }
  deleteSnapshot(volume: ArrayVolume, snapshot: ArraySnapshot): Promise<void> {
    this.volumes.get(volume.id)!.snaps.delete(snapshot.name);
    return Promise.resolve();
  }
  close(): Promise<void> {
    this.closed++;
    return Promise.resolve();
  }
  snapshotNames(volume: string): string[] {
    return [...this.volumes.get(volume)!.snaps.keys()].sort();
  }
}

async function open(array: MemoryArray, names: string[]): Promise<ArrayVolumeSource[]> {
  return ArrayGroup.open(
    names.map((volume) => ({ location: array.location, volume, connect: () => Promise.resolve(array) })),
    new Map(),
  );
}

describe('array source', () => {
  it('keeps only the latest snapshot as the change token and plans the array diff', async () => {
    const array = new MemoryArray();
    array.add('lun0', 16 * BLOCK);
    array.add('lun1', 8 * BLOCK);
    array.volumes.get('lun0')!.data.fill(7, 2 * BLOCK, 3 * BLOCK);

    const [d0, d1] = await open(array, ['lun0', 'lun1']);
    expect(d0.name).toBe('mem://array/lun0');
    expect(d0.group).toBe(d1.group);
    const first = await d0.group.capture({ backupId: 'b1', vaultId: VAULT, parents: [undefined, undefined] });
    expect(first.warnings?.[0]).toMatch(/one after another/);
    const plan0 = await d0.plan(undefined);
    expect(plan0).toEqual({ method: 'full', ranges: [{ offset: 2 * BLOCK, length: BLOCK }], changeToken: `${snapshotPrefix(VAULT)}b1` });
    expect((await d1.plan(undefined)).ranges).toEqual([]);
    expect(await d0.group.commit()).toEqual([]);
    expect(array.snapshotNames('lun0')).toEqual([`${snapshotPrefix(VAULT)}b1`]);

    // Writes, then an incremental: only the written block, from the array's diff.
    array.volumes.get('lun0')!.data.fill(9, 5 * BLOCK, 5 * BLOCK + 10);
    const [e0] = await open(array, ['lun0']);
    const token = `${snapshotPrefix(VAULT)}b1`;
    await e0.group.capture({ backupId: 'b2', vaultId: VAULT, parents: [{ size: 16 * BLOCK, changeToken: token }] });
    expect(await e0.plan({ size: 16 * BLOCK, changeToken: token })).toEqual({
      method: 'bitmap',
      ranges: [{ offset: 5 * BLOCK, length: BLOCK }],
      dirtyBytes: BLOCK,
      changeToken: `${snapshotPrefix(VAULT)}b2`,
    });
    const buf = Buffer.alloc(BLOCK);
    expect(await e0.read(buf, BLOCK, 5 * BLOCK)).toBe(BLOCK);
    expect(buf[0]).toBe(9);
    await e0.group.commit();
    expect(array.snapshotNames('lun0')).toEqual([`${snapshotPrefix(VAULT)}b2`]);
  });

  it('deletes the new snapshot and keeps the parent when the backup fails', async () => {
    const array = new MemoryArray();
    array.add('lun0', 4 * BLOCK);
    const token = `${snapshotPrefix(VAULT)}b1`;
    array.volumes.get('lun0')!.snaps.set(token, Buffer.alloc(4 * BLOCK));
    const [d0] = await open(array, ['lun0']);
    await d0.group.capture({ backupId: 'b2', vaultId: VAULT, parents: [{ size: 4 * BLOCK, changeToken: token }] });
    expect(array.snapshotNames('lun0')).toEqual([token, `${snapshotPrefix(VAULT)}b2`].sort());
    await d0.group.abort();
    expect(array.snapshotNames('lun0')).toEqual([token]);

    // A capture that fails half-way (the snapshot cannot be opened) leaves nothing new either.
    array.failOpen = true;
    const [f0] = await open(array, ['lun0']);
    await expect(f0.group.capture({ backupId: 'b3', vaultId: VAULT, parents: [undefined] })).rejects.toThrow(/cannot map/);
    expect(array.snapshotNames('lun0')).toEqual([token]);
  });

  it('reports a reader that fails to close at commit, and aborts once when asked twice at once', async () => {
    const array = new MemoryArray();
    array.add('lun0', 4 * BLOCK);
    const [d0] = await open(array, ['lun0']);
    await d0.group.capture({ backupId: 'b1', vaultId: VAULT, parents: [undefined] });
    array.failClose = true;
    expect(await d0.group.commit()).toEqual(['mem://array/lun0: the array refused to unmap the snapshot']);
    expect(array.snapshotNames('lun0')).toEqual([`${snapshotPrefix(VAULT)}b1`]);

    array.failClose = false;
    const [e0] = await open(array, ['lun0']);
    await e0.group.capture({ backupId: 'b2', vaultId: VAULT, parents: [{ size: 4 * BLOCK, changeToken: `${snapshotPrefix(VAULT)}b1` }] });
    const closedBefore = array.closed;
    await Promise.all([e0.group.abort(), e0.group.abort(), e0.close()]);
    expect(array.closed).toBe(closedBefore + 1);
    expect(array.snapshotNames('lun0')).toEqual([`${snapshotPrefix(VAULT)}b1`]);
  });

  it('compares when the parent snapshot is gone, and leaves other vaults snapshots alone', async () => {
    const array = new MemoryArray();
    array.add('lun0', 4 * BLOCK);
    const other = 'cairn-ffffffff-20261120T000000Z-00000001';
    const stale = `${snapshotPrefix(VAULT)}20261124T000000Z-0000000a`; // a killed run's
    const running = `${snapshotPrefix(VAULT)}20261126T000000Z-0000000c`; // a backup that started later and still runs
    for (const name of [other, stale, running, 'users-own']) array.volumes.get('lun0')!.snaps.set(name, Buffer.alloc(4 * BLOCK));
    array.volumes.get('lun0')!.data.fill(1, 0, BLOCK);
    const [d0] = await open(array, ['lun0']);
    const id = '20261125T000000Z-0000000b';
    await d0.group.capture({ backupId: id, vaultId: VAULT, parents: [{ size: 4 * BLOCK, changeToken: `${snapshotPrefix(VAULT)}gone` }] });
    const plan = await d0.plan({ size: 4 * BLOCK, changeToken: `${snapshotPrefix(VAULT)}gone` });
    expect(plan.method).toBe('compare');
    expect(plan.ranges).toEqual([{ offset: 0, length: BLOCK }]);
    expect(plan.warning).toMatch(/no longer on the array/);
    await d0.group.commit();
    expect(array.snapshotNames('lun0')).toEqual([other, `${snapshotPrefix(VAULT)}${id}`, running, 'users-own'].sort());
  });

  it('refuses a volume given twice and closes the connection when a volume is missing', async () => {
    const array = new MemoryArray();
    array.add('lun0', BLOCK);
    await expect(open(array, ['lun0', 'lun0'])).rejects.toSatisfy((e) => isCairnError(e, 'USAGE'));
    expect(array.closed).toBe(1);
    await expect(open(array, ['nope'])).rejects.toThrow(/no volume nope/);
    expect(array.closed).toBe(2);
  });
});
