import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CairnError, fromSystemError } from '../../../shared/errors.js';
import { NbdClient } from '../nbd/nbd-client.js';
import type { MoRef, SoapClient } from './soap-client.js';
import { parseDatastorePath } from './vsphere-client.js';

/**
 * How the data of a snapshot's disk is read: over HTTPS datastore file access (the disk's
 * descriptor, then its flat extents with Range requests), or over NBD from a helper program that
 * serves the disk (nbdkit's VDDK plugin in production). Both read the frozen disk of the snapshot,
 * never the live one.
 */
export interface DiskReader {
  /** Reads up to `length` bytes at `position` into `buffer`; short only at the end of the disk. May run concurrently. */
  read(buffer: Buffer, length: number, position: number): Promise<number>;
  /** Must not throw. */
  close(): Promise<void>;
}

interface Extent {
  /** Byte offset of the extent in the virtual disk. */
  start: number;
  length: number;
  /** Datastore file access path of the extent file, undefined for a ZERO extent. */
  url: string | undefined;
  /** Byte offset of the extent's data in its file. */
  fileOffset: number;
}

const DESCRIPTOR_MAX = 64 * 1024;

/** datastore file access path for `[DS] folder/file` in datacenter `dcPath`. */
export function datastoreUrl(fileName: string, dcPath: string): string {
  const p = parseDatastorePath(fileName);
  if (!p) throw new CairnError('SOURCE_UNREADABLE', `'${fileName}' is not a datastore path ([DATASTORE] folder/file.vmdk)`);
  return `/folder/${p.path.split('/').map(encodeURIComponent).join('/')}?dcPath=${encodeURIComponent(dcPath)}&dsName=${encodeURIComponent(p.datastore)}`;
}

/**
 * Reads a flat virtual disk through datastore file access: the descriptor (`NAME.vmdk`) names the
 * extents (`RW <sectors> FLAT|VMFS "NAME-flat.vmdk" [offset]`), whose bytes are the disk's bytes.
 * Sparse and delta disks (vmfsSparse, seSparse, streamOptimized: what a VM's disk is while it has
 * older snapshots) cannot be read this way: SOURCE_UNSUPPORTED pointing to transport=nbd.
 */
export class HttpsDiskReader implements DiskReader {
  private constructor(
    private readonly soap: SoapClient,
    private readonly extents: Extent[],
  ) {}

  static async open(soap: SoapClient, fileName: string, dcPath: string, capacity: number): Promise<HttpsDiskReader> {
    const head = Buffer.alloc(DESCRIPTOR_MAX);
    const n = await soap.readDatastoreFile(datastoreUrl(fileName, dcPath), 0, head);
    const text = head.subarray(0, n).toString('latin1');
    if (!text.includes('# Disk DescriptorFile') && !/createType\s*=/.test(text)) {
      throw new CairnError('SOURCE_UNSUPPORTED', `${fileName} is not a virtual disk descriptor (a monolithic sparse disk?); back this VM up with transport=nbd`);
    }
    const createType = /createType\s*=\s*"([^"]*)"/.exec(text)?.[1] ?? '';
    const parentCid = /parentCID\s*=\s*(\w+)/.exec(text)?.[1] ?? 'ffffffff';
    if (!['vmfs', 'monolithicFlat', 'twoGbMaxExtentFlat', 'vmfsPreallocated', 'vmfsEagerZeroedThick', 'vmfsThin'].includes(createType) || parentCid.toLowerCase() !== 'ffffffff') {
      throw new CairnError(
        'SOURCE_UNSUPPORTED',
        `${fileName} is a ${createType || 'unknown'} disk${parentCid.toLowerCase() !== 'ffffffff' ? ' with a parent (the VM has older snapshots)' : ''}, which datastore file access cannot read as a whole; ` +
          'consolidate the VM\'s snapshots, or back it up with transport=nbd and a VDDK helper',
      );
    }
    const dir = fileName.slice(0, fileName.lastIndexOf('/') + 1) || fileName.replace(/\][^\]]*$/, '] ');
    const extents: Extent[] = [];
    let at = 0;
    for (const m of text.matchAll(/^\s*(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)(?:\s+"([^"]+)")?(?:\s+(\d+))?/gm)) {
      const length = Number(m[2]) * 512;
      const kind = m[3]!;
      if (kind === 'ZERO') extents.push({ start: at, length, url: undefined, fileOffset: 0 });
      else if (kind === 'FLAT' || kind === 'VMFS') {
        extents.push({ start: at, length, url: datastoreUrl(dir + m[4]!, dcPath), fileOffset: Number(m[5] ?? 0) * 512 });
      } else {
        throw new CairnError('SOURCE_UNSUPPORTED', `${fileName} has a ${kind} extent, which datastore file access cannot read; back this VM up with transport=nbd`);
      }
      at += length;
    }
    if (at < capacity) {
      throw new CairnError('SOURCE_UNREADABLE', `the extents of ${fileName} hold ${at} bytes, less than the disk's capacity of ${capacity} bytes`);
    }
    return new HttpsDiskReader(soap, extents);
  }

  async read(buffer: Buffer, length: number, position: number): Promise<number> {
    let done = 0;
    while (done < length) {
      const pos = position + done;
      const e = this.extents.find((x) => pos >= x.start && pos < x.start + x.length);
      if (!e) break;
      const n = Math.min(length - done, e.start + e.length - pos);
      const target = buffer.subarray(done, done + n);
      if (e.url === undefined) target.fill(0);
      else {
        const got = await this.soap.readDatastoreFile(e.url, e.fileOffset + pos - e.start, target);
        if (got < n) {
          throw new CairnError('SOURCE_UNREADABLE', `reading ${decodeURIComponent(e.url.split('?')[0]!)}: the file ended at ${e.fileOffset + pos - e.start + got} bytes, before the extent's end`);
        }
      }
      done += n;
    }
    return done;
  }

  async close(): Promise<void> {}
}

/** What the NBD helper is told about the disk to serve (as environment variables, see README.md). */
export interface NbdHelperJob {
  helper: string;
  host: string;
  port: number;
  thumbprint: string | undefined;
  user: string;
  /** The password file to hand on; undefined: the password is written to a private temp file. */
  passwordFile: string | undefined;
  password: string;
  vm: MoRef;
  snapshot: MoRef;
  /** The snapshot's disk: `[DATASTORE] folder/name.vmdk`. */
  fileName: string;
  capacity: number;
}

const HELPER_START_MS = 60_000;
/** How long a helper has after SIGTERM before SIGKILL: a read-only NBD server has nothing to flush. */
const HELPER_STOP_MS = 300;

/** Variables of Cairn's environment a helper gets; nothing else (no passphrase, no cloud credentials). */
const HELPER_ENV = /^(PATH|HOME|LANG|LC_[A-Z_]+|TZ|TMPDIR|LD_LIBRARY_PATH|CAIRN_VSPHERE_[A-Z0-9_]+)$/;

/**
 * One helper process and its private temp folder (its socket, the password file). Tracked from the
 * moment the folder exists, so a backup interrupted while the helper starts still stops it and removes
 * the folder. `stop` is idempotent and never throws.
 */
export class NbdHelperProcess {
  child: ChildProcess | undefined;
  private stopping: Promise<void> | undefined;

  constructor(readonly dir: string) {}

  get stopped(): boolean {
    return this.stopping !== undefined;
  }

  /** SIGTERM, SIGKILL shortly after, then the temp folder goes. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const c = this.child;
      if (c && c.pid !== undefined && c.exitCode === null && c.signalCode === null) {
        const gone = new Promise((resolve) => c.once('exit', resolve));
        c.kill('SIGTERM');
        const timer = setTimeout(() => c.kill('SIGKILL'), HELPER_STOP_MS);
        await Promise.race([gone, sleep(HELPER_STOP_MS + 1000, undefined, { ref: false })]);
        clearTimeout(timer);
      }
      await rm(this.dir, { recursive: true, force: true }).catch(() => undefined);
    })();
    return this.stopping;
  }
}

/** The helper's environment: the allowed part of Cairn's, and the job (README.md lists the variables). */
export function helperEnv(job: NbdHelperJob, passwordFile: string, socket: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (HELPER_ENV.test(k) && k !== 'CAIRN_VSPHERE_PASSWORD') env[k] = v;
  return {
    ...env,
    CAIRN_VSPHERE_SERVER: job.host,
    CAIRN_VSPHERE_PORT: String(job.port),
    CAIRN_VSPHERE_USER: job.user,
    CAIRN_VSPHERE_PASSWORD_FILE: passwordFile,
    CAIRN_VSPHERE_VM: job.vm.value,
    CAIRN_VSPHERE_SNAPSHOT: job.snapshot.value,
    CAIRN_VSPHERE_FILE: job.fileName,
    CAIRN_VSPHERE_SOCKET: socket,
    ...(job.thumbprint ? { CAIRN_VSPHERE_THUMBPRINT: job.thumbprint.match(/../g)!.join(':').toUpperCase() } : {}),
  };
}

/**
 * Runs the helper for one disk (it must serve the disk read-only over NBD on the Unix socket it is
 * given, default export) and reads from it with Cairn's NBD client; closing stops the helper. The
 * helper is in `helpers` from before it is spawned until it is stopped, so its owner can stop every
 * helper at once, including one still starting.
 */
export class NbdHelperReader implements DiskReader {
  private constructor(
    private readonly client: NbdClient,
    private readonly helper: NbdHelperProcess,
    private readonly helpers: Set<NbdHelperProcess>,
  ) {}

  /** `ending`: the backup is being stopped; a helper not spawned yet is not. */
  static async start(job: NbdHelperJob, helpers: Set<NbdHelperProcess>, ending: () => boolean = () => false): Promise<NbdHelperReader> {
    const what = `the NBD helper ${job.helper} for ${job.fileName}`;
    const helper = new NbdHelperProcess(await mkdtemp(join(tmpdir(), 'cairn-vsphere-nbd-')));
    helpers.add(helper);
    const fail = async (err: unknown): Promise<never> => {
      await helper.stop();
      helpers.delete(helper);
      throw err;
    };
    const socket = join(helper.dir, 'nbd.sock');
    let passwordFile = job.passwordFile;
    if (passwordFile === undefined) {
      passwordFile = join(helper.dir, 'password');
      await writeFile(passwordFile, job.password, { mode: 0o600 }).catch((err: unknown) => fail(fromSystemError(err, `writing the password file for ${what}`, passwordFile!)));
    }
    if (helper.stopped || ending()) return fail(new CairnError('SOURCE_UNREADABLE', `${what} was not started: the backup is being stopped`));
    const child = spawn(job.helper, [], { env: helperEnv(job, passwordFile, socket), stdio: ['ignore', 'ignore', 'pipe'] });
    helper.child = child;
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString('utf8')).slice(-2000)));
    let exited: string | undefined;
    let spawnError: Error | undefined;
    child.on('error', (err) => (spawnError = err));
    child.on('exit', (code, signal) => (exited = signal ? `was killed by ${signal}` : `exited with status ${code}`));
    const until = Date.now() + HELPER_START_MS;
    while (!existsSync(socket)) {
      if (helper.stopped) return fail(new CairnError('SOURCE_UNREADABLE', `${what} was stopped before it served the disk: the backup is being stopped`));
      if (spawnError) return fail(new CairnError('SOURCE_UNREADABLE', `cannot run ${what}: ${spawnError.message}; check nbd-helper= in the vsphere:// URL`, { cause: spawnError }));
      if (exited) return fail(new CairnError('SOURCE_UNREADABLE', `${what} ${exited} before serving the disk${stderr.trim() ? `: ${stderr.trim()}` : ''}`));
      if (Date.now() > until) return fail(new CairnError('SOURCE_UNREADABLE', `${what} did not create its socket within ${HELPER_START_MS / 1000} s`));
      await sleep(50);
    }
    let client: NbdClient | undefined;
    for (let attempt = 0; !client; attempt++) {
      try {
        client = await NbdClient.connect({ unix: socket }, { exportName: '', requestSize: 64 * 1024 });
      } catch (err) {
        if (attempt >= 20 || exited || helper.stopped) return fail(err instanceof CairnError ? err : new CairnError('SOURCE_UNREADABLE', `${what}: ${(err as Error).message}`));
        await sleep(100);
      }
    }
    if (client.size < job.capacity) {
      await client.close();
      return fail(new CairnError('SOURCE_UNREADABLE', `${what} serves ${client.size} bytes, less than the disk's capacity of ${job.capacity} bytes`));
    }
    return new NbdHelperReader(client, helper, helpers);
  }

  async read(buffer: Buffer, length: number, position: number): Promise<number> {
    const n = Math.max(0, Math.min(length, this.client.size - position));
    if (n > 0) await this.client.readInto(buffer.subarray(0, n), position);
    return n;
  }

  async close(): Promise<void> {
    await this.client.close().catch(() => undefined);
    await this.helper.stop();
    this.helpers.delete(this.helper);
  }
}
