import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { expectCliError, MiB, s3Target, Sandbox, sha256File, type BackupJson } from './helpers.js';
import { startFaultProxy, type FaultProxy } from './support/fault-proxy.js';
import { RbdPool } from './support/rbd-pool.js';

/**
 * Ceph RBD images backed up through the real CLI (`cairn backup rbd://...`): Cairn snapshots the
 * image, reads it through qemu's rbd driver and asks rbd for the changes since its previous snapshot.
 * The cluster is the one the test run starts for S3 (one monitor, one in-memory OSD); the vault is on
 * its S3 gateway, behind a proxy that can refuse uploads. Every backup is restored and compared with
 * `rbd export` of the snapshot it was made from.
 */

const OBJECT = 4 * MiB;
const cluster = new RbdPool(inject('ceph'), 'cairn-e2e');
const pool = cluster.name;
const { rbd, qemuIo, snapshots, exportSha, url } = cluster;

describe('cairn backup rbd://POOL/IMAGE', () => {
  let sb: Sandbox;
  let proxy: FaultProxy;
  let vault: string;

  beforeAll(async () => {
    cluster.create();
    cluster.createImage('vm1', '64M');
    cluster.createImage('vm2', '32M');
    sb = await Sandbox.create('rbd', { env: s3Target.env });
    proxy = await startFaultProxy(inject('s3').endpoint);
    vault = s3Target.url(await s3Target.newBucket(), 'vault', proxy.url);
    const init = await sb.cairn(['vault', 'init', vault]);
    expect(init.code, init.stderr).toBe(0);
  });

  afterAll(async () => {
    await proxy?.close();
    await s3Target.close();
    await sb?.cleanup();
    cluster.remove();
  });

  const backup = async (...sources: string[]): Promise<BackupJson> => sb.cairnJson<BackupJson>(['backup', ...sources, '--vault', vault, '--json']);

  async function expectRestore(backupId: string, image: string, snap: string, disk?: number): Promise<void> {
    const to = sb.path(`restored-${backupId}-${disk ?? 0}.img`);
    const args = ['restore', backupId, '--vault', vault, '--to', to, ...(disk === undefined ? [] : ['--disk', String(disk)])];
    const r = await sb.cairn(args);
    expect(r.code, r.stderr).toBe(0);
    expect(await sha256File(to), `restore of ${backupId} disk ${disk ?? 0}`).toBe(exportSha(image, snap));
  }

  // Steps of one chain, in order; each needs the ones before it.
  let full: BackupJson;
  let incr: BackupJson;
  let after: BackupJson;

  it('a full backup reads only the used objects and restores as rbd exports its snapshot', async () => {
    // Objects 0, 2, 7 and 15 hold data.
    qemuIo('vm1', 'write -P 0x01 0 1M', 'write -P 0x02 10M 64k', 'write -P 0x03 30M 2M', 'write -P 0x04 60M 4k');
    full = await backup(url('vm1'));
    const d1 = full.disks[0]!;
    expect(d1.source).toBe(`rbd://${pool}/vm1`);
    expect(d1.changeDetection).toBe('full');
    expect(d1.bytesRead).toBe(4 * OBJECT); // only the used objects, not 64 MiB
    expect(d1.changeToken).toMatch(new RegExp(`^cairn-[0-9a-f]{8}-${full.id}$`));
    expect(snapshots('vm1')).toEqual([d1.changeToken]);
    await expectRestore(full.id, 'vm1', d1.changeToken!);
  });

  it('an incremental reads what rbd diff reports and keeps only its own snapshot', async () => {
    // Objects 0 (rewritten), 7 (discarded) and 10 (new) change.
    qemuIo('vm1', 'write -P 0x11 1M 64k', 'discard 30M 2M', 'write -P 0x12 40M 8k');
    incr = await backup(url('vm1'));
    const d2 = incr.disks[0]!;
    expect(incr).toMatchObject({ kind: 'incremental', parent: full.id });
    expect(d2.changeDetection).toBe('bitmap');
    expect(d2.dirtyBytes).toBe(3 * OBJECT);
    expect(snapshots('vm1')).toEqual([d2.changeToken]); // the parent's snapshot is gone
    await expectRestore(incr.id, 'vm1', d2.changeToken!);
  });

  it('a failed backup removes its snapshot and keeps the parent\'s, which the next one diffs against', async () => {
    const parentToken = incr.disks[0]!.changeToken;
    // The vault refuses new packs: the backup fails after the capture.
    qemuIo('vm1', 'write -P 0x21 50M 64k');
    let refused = 0;
    proxy.setFaults((req) => (req.kind === 'PUT' && req.key.includes('packs/') && ++refused ? { type: 'status', status: 403, code: 'AccessDenied' } : undefined));
    const failed = await sb.cairn(['backup', url('vm1'), '--vault', vault, '--json']);
    proxy.setFaults(undefined);
    expect(failed.code, failed.stderr).not.toBe(0);
    expect(refused).toBeGreaterThan(0);
    expect(snapshots('vm1')).toEqual([parentToken]);

    // The failed run's change (object 12) is found by the next backup.
    after = await backup(url('vm1'));
    const d3 = after.disks[0]!;
    expect(after.parent).toBe(incr.id);
    expect(d3.changeDetection).toBe('bitmap');
    expect(d3.dirtyBytes).toBe(OBJECT);
    expect(snapshots('vm1')).toEqual([d3.changeToken]);
    await expectRestore(after.id, 'vm1', d3.changeToken!);
  });

  it("the parent's snapshot deleted by hand: the next backup compares every used object, with a warning", async () => {
    const token = after.disks[0]!.changeToken!;
    rbd('snap', 'rm', '--no-progress', '--pool', pool, '--image', 'vm1', '--snap', token);
    qemuIo('vm1', 'write -P 0x31 20M 4k');
    const lost = await backup(url('vm1'));
    const d4 = lost.disks[0]!;
    expect(d4.changeDetection).toBe('compare');
    expect(lost.warnings.join('\n')).toContain(`the parent's snapshot '${token}' is no longer on the array`);
    expect(snapshots('vm1')).toEqual([d4.changeToken]);
    await expectRestore(lost.id, 'vm1', d4.changeToken!);
  });

  it('two images of one pool in one backup: snapshotted one after the other, each restorable with --disk', async () => {
    // The pair is a chain of its own (backups chain by their set of sources), so both are read in full.
    qemuIo('vm2', 'write -P 0x41 0 64k', 'write -P 0x42 9M 64k');
    const both = await backup(url('vm1'), url('vm2'));
    expect(both.kind).toBe('full');
    expect(both.disks.map((d) => d.source)).toEqual([`rbd://${pool}/vm1`, `rbd://${pool}/vm2`]);
    // vm1: objects 0, 2, 5, 7 (truncated by the discard, still there), 10, 12 and 15; vm2: 0 and 2.
    expect(both.disks.map((d) => d.bytesRead)).toEqual([7 * OBJECT, 2 * OBJECT]);
    expect(both.warnings.join('\n')).toContain('snapshotted one after another');
    expect(snapshots('vm1')).toEqual([both.disks[0]!.changeToken]);
    expect(snapshots('vm2')).toEqual([both.disks[1]!.changeToken]);
    await expectRestore(both.id, 'vm1', both.disks[0]!.changeToken!, 0);
    await expectRestore(both.id, 'vm2', both.disks[1]!.changeToken!, 1);
  });

  it('a missing pool or image is NOT_FOUND saying what exists, a bad URL is USAGE', async () => {
    const noPool = await sb.cairn(['backup', url('vm1', 'no-such-pool'), '--vault', vault]);
    expectCliError(noPool, 'NOT_FOUND', "there is no pool 'no-such-pool'", pool, 'check the pool name');
    const noImage = await sb.cairn(['backup', url('vm9'), '--vault', vault]);
    expectCliError(noImage, 'NOT_FOUND', `there is no RBD image 'vm9' in rbd://${pool}`, 'vm1, vm2', 'rbd create');
    const bad = await sb.cairn(['backup', `rbd://${pool}`, '--vault', vault]);
    expectCliError(bad, 'USAGE', 'rbd://POOL/IMAGE');
  });
});
