import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import type { CephCluster } from './s3-server.js';

/**
 * A throw-away RBD pool on the test run's Ceph cluster (the one started for S3), with the tools the
 * RBD tests check Cairn against: the rbd tool itself, and qemu-io writing through qemu's rbd driver.
 */
export class RbdPool {
  readonly name: string;

  constructor(
    readonly ceph: CephCluster,
    prefix: string,
  ) {
    this.name = `${prefix}-${randomBytes(3).toString('hex')}`;
  }

  // Arrow properties, so that tests can take them apart: const { rbd, qemuIo } = pool.

  /** Creates and initialises the pool. */
  readonly create = (): void => {
    run('ceph', ['--conf', this.ceph.conf, 'osd', 'pool', 'create', this.name, '8']);
    this.rbd('pool', 'init', this.name);
  };

  /** Deletes the pool with every image in it. */
  readonly remove = (): void => {
    run('ceph', ['--conf', this.ceph.conf, 'osd', 'pool', 'rm', this.name, this.name, '--yes-i-really-really-mean-it']);
  };

  readonly rbd = (...args: string[]): Buffer => run('rbd', ['--conf', this.ceph.conf, '--id', this.ceph.id, ...args]);

  readonly createImage = (image: string, size: string, features?: string): void => {
    this.rbd('create', '--pool', this.name, '--image', image, '--size', size, ...(features ? ['--image-feature', features] : []));
  };

  /** Runs qemu-io commands ('write -P 0xab 1M 64k', 'discard ...') on the image's head. */
  readonly qemuIo = (image: string, ...commands: string[]): void => {
    run('qemu-io', ['-f', 'raw', `rbd:${this.name}/${image}:conf=${this.ceph.conf}:id=${this.ceph.id}`, ...commands.flatMap((c) => ['-c', c])]);
  };

  readonly snapshots = (image: string): string[] =>
    (JSON.parse(this.rbd('snap', 'ls', '--format', 'json', '--pool', this.name, '--image', image).toString()) as { name: string }[]).map((s) => s.name);

  /** sha256 of `rbd export` of a snapshot: what a restore must equal. */
  readonly exportSha = (image: string, snap: string): string =>
    createHash('sha256').update(this.rbd('export', '--pool', this.name, '--image', image, '--snap', snap, '--no-progress', '-')).digest('hex');

  /** `rbd://POOL/IMAGE` with this cluster's conf and client. */
  readonly url = (image: string, pool = this.name): string => `rbd://${pool}/${image}?conf=${encodeURIComponent(this.ceph.conf)}&id=${this.ceph.id}`;
}

export function run(command: string, args: string[]): Buffer {
  const r = spawnSync(command, args, { maxBuffer: 256 * 1024 * 1024 });
  if (r.error) throw new Error(`${command} cannot run (${r.error.message}); install ceph-common, qemu-utils and qemu-block-extra`);
  if (r.status !== 0) throw new Error(`${command} ${args.join(' ')} failed: ${r.stderr.toString()}`);
  return r.stdout;
}
