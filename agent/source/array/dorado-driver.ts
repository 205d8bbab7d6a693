import { constants } from 'node:fs';
import { open, readFile, readlink, realpath, readdir, writeFile, type FileHandle } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { CairnError, fromSystemError } from '../../../shared/errors.js';
import { parseThumbprint } from '../../../shared/net/pinned-https.js';
import type { ByteRange } from '../block-source.js';
import type { ArrayDriver, ArraySnapshot, ArrayVolume, GroupSnapshot, SnapshotReader } from './array-driver.js';
import type { ArrayVolumeUrl } from './array-source.js';
import { DoradoCode, DoradoSession, exact, isArrayCode, listAll, type DoradoEndpoint } from './dorado-rest.js';

/**
 * Huawei OceanStor Dorado, through its REST interface (dorado-rest.ts):
 *
 *   dorado://USER@HOST[:PORT]/LUN?host=ARRAY_HOST[&password-file=PATH][&thumbprint=HEX][&vstore=NAME]
 *     [&devices=DIR][&device-timeout=SECONDS]
 *
 * LUN is a LUN's name or ID. The password comes from password-file= or CAIRN_DORADO_PASSWORD, never
 * from the URL. A backup snapshots its LUNs (several LUNs of one array: created inactive, then
 * activated by one call, which the array does at one instant) and reads each snapshot from this
 * machine: the snapshot is mapped to the array's host object `host=` (this machine's initiators),
 * appears as the SCSI device `DIR/wwn-0x<WWN>` (default /dev/disk/by-id) and is read with
 * positional reads; it is unmapped when read. The array's published REST interface has no call that
 * lists the blocks changed between two snapshots, so `diff` and `allocated` answer undefined and an
 * incremental reads the snapshot and compares it with the parent (changeDetection 'compare').
 */

export const DEFAULT_PORT = 8088;
export const DEFAULT_DEVICES = '/dev/disk/by-id';
const DEFAULT_DEVICE_TIMEOUT_S = 60;
const SECTOR = 512;
/** Object types of the REST interface. */
const TYPE = { LUN: '11', HOST: '21', HOSTGROUP: '14', SNAPSHOT: '27', LUNGROUP: '256', MAPPINGVIEW: '245' } as const;

interface DoradoUrlParts {
  endpoint: Omit<DoradoEndpoint, 'password'>;
  passwordFile?: string;
  lun: string;
  arrayHost: string;
  devices: string;
  deviceTimeoutMs: number;
}

export function parseDoradoUrl(url: string): ArrayVolumeUrl {
  const p = parseParts(url);
  const location = `dorado://${hostPart(p.endpoint.host)}${p.endpoint.port === DEFAULT_PORT ? '' : `:${p.endpoint.port}`}`;
  return {
    location,
    volume: p.lun,
    connect: async () => {
      const password = await readPassword(p, url);
      const session = await DoradoSession.login({ ...p.endpoint, password });
      return new DoradoDriver(session, location, p);
    },
  };
}

const PARAMS = new Set(['password-file', 'thumbprint', 'host', 'vstore', 'devices', 'device-timeout']);

function parseParts(url: string): DoradoUrlParts {
  const usage = (what: string): CairnError =>
    new CairnError('USAGE', `'${redact(url)}': ${what}; use dorado://USER@HOST[:PORT]/LUN?host=ARRAY_HOST[&password-file=PATH][&thumbprint=HEX][&vstore=NAME][&devices=DIR]`);
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw usage('not a URL');
  }
  if (u.protocol !== 'dorado:') throw usage('not a dorado:// URL');
  if (u.password) throw usage('a password does not belong in the URL (it would show in process lists and logs); give password-file=PATH or set CAIRN_DORADO_PASSWORD');
  if (!u.username) throw usage('no user name');
  if (!u.hostname) throw usage('no array address');
  const path = u.pathname.replace(/^\/+/, '');
  if (!path || path.includes('/')) throw usage('name exactly one LUN (by name or ID) after the address');
  for (const key of u.searchParams.keys()) if (!PARAMS.has(key)) throw usage(`unknown parameter '${key}'`);
  const arrayHost = u.searchParams.get('host');
  if (!arrayHost) throw usage("host= is missing: name the array's host object holding this machine's initiators, so that snapshots can be mapped here and read");
  const port = u.port ? Number(u.port) : DEFAULT_PORT;
  const timeoutText = u.searchParams.get('device-timeout');
  const timeout = timeoutText === null ? DEFAULT_DEVICE_TIMEOUT_S : Number(timeoutText);
  if (!(timeout > 0)) throw usage(`device-timeout='${timeoutText}' is not a number of seconds`);
  const thumbprint = u.searchParams.get('thumbprint');
  const vstore = u.searchParams.get('vstore');
  const passwordFile = u.searchParams.get('password-file');
  return {
    endpoint: {
      host: u.hostname.replace(/^\[|\]$/g, ''),
      port,
      user: decodeURIComponent(u.username),
      ...(thumbprint !== null ? { thumbprint: parseThumbprint(thumbprint, `${redact(url)}: thumbprint=`) } : {}),
      ...(vstore ? { vstore } : {}),
    },
    ...(passwordFile ? { passwordFile } : {}),
    lun: decodeURIComponent(path),
    arrayHost,
    devices: resolve(u.searchParams.get('devices') ?? DEFAULT_DEVICES),
    deviceTimeoutMs: timeout * 1000,
  };
}

function hostPart(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

function redact(url: string): string {
  return url.replace(/^(dorado:\/\/[^:@/]*):[^@/]*@/i, '$1:***@');
}

async function readPassword(p: DoradoUrlParts, url: string): Promise<string> {
  if (p.passwordFile) {
    const text = await readFile(p.passwordFile, 'utf8').catch((err: unknown) => {
      throw fromSystemError(err, `${redact(url)}: reading password-file=`, p.passwordFile!);
    });
    return text.replace(/\r?\n$/, '');
  }
  const env = process.env.CAIRN_DORADO_PASSWORD;
  if (env) return env;
  throw new CairnError('USAGE', `${redact(url)}: no password for user '${p.endpoint.user}'; give password-file=PATH in the URL or set CAIRN_DORADO_PASSWORD`);
}

interface LunRecord {
  ID: string;
  NAME: string;
  CAPACITY: string;
  WWN: string;
}
interface SnapshotRecord {
  ID: string;
  NAME: string;
  PARENTID: string;
  WWN: string;
  USERCAPACITY: string;
  RUNNINGSTATUS?: string;
}
interface Named {
  ID: string;
  NAME: string;
}

/** Where this agent's snapshots are mapped: lun group -> mapping view <- host group <- host. */
interface MappingPath {
  lunGroupId: string;
}

export class DoradoDriver implements ArrayDriver {
  private mapping: Promise<MappingPath> | undefined;

  constructor(
    private readonly session: DoradoSession,
    readonly location: string,
    private readonly parts: DoradoUrlParts,
  ) {}

  async listVolumes(): Promise<ArrayVolume[]> {
    return (await listAll<LunRecord>(this.session, '/lun')).map(toVolume);
  }

  async findVolume(nameOrId: string): Promise<ArrayVolume> {
    if (/^\d+$/.test(nameOrId)) {
      const byId = await this.session.get<LunRecord>(`/lun/${nameOrId}`).catch((err: unknown) => {
        if (isArrayCode(err, DoradoCode.LUN_NOT_EXIST, DoradoCode.OBJECT_NOT_EXIST)) return undefined;
        throw err;
      });
      if (byId) return toVolume(byId);
    }
    const found = (await this.session.get<LunRecord[] | undefined>(`/lun?${exact('NAME', nameOrId)}`)) ?? [];
    const lun = found.find((l) => l.NAME === nameOrId);
    if (lun) return toVolume(lun);
    const names = (await this.listVolumes()).map((v) => v.name);
    throw new CairnError(
      'NOT_FOUND',
      `${this.location} has no LUN named '${nameOrId}'` +
        (names.length ? ` (LUNs this user sees: ${names.slice(0, 20).join(', ')}${names.length > 20 ? ', ...' : ''})` : ' (this user sees no LUN; check the vStore)'),
    );
  }

  /**
   * Creates one inactive snapshot per LUN and activates them with one call: the array activates
   * the snapshots of one SNAPSHOTLIST at the same point in time (what Huawei's Cinder driver
   * relies on for its consistency-group snapshots). On failure the snapshots made are deleted.
   */
  async snapshotGroup(volumes: ArrayVolume[], name: string): Promise<GroupSnapshot> {
    const created: ArraySnapshot[] = [];
    try {
      for (const v of volumes) {
        const s = await this.session.post<SnapshotRecord>('/snapshot', {
          TYPE: TYPE.SNAPSHOT,
          NAME: name,
          PARENTTYPE: TYPE.LUN,
          PARENTID: v.id,
          DESCRIPTION: 'Cairn backup snapshot; deleted by the next backup of its chain',
        });
        created.push({ id: s.ID, name: s.NAME });
      }
      await this.session.post('/snapshot/activate', { SNAPSHOTLIST: created.map((s) => s.id) });
      return { snapshots: created, atomic: true };
    } catch (err) {
      for (const [i, s] of created.entries()) await this.deleteSnapshot(volumes[i], s).catch(() => undefined);
      throw err;
    }
  }

  async listSnapshots(volume: ArrayVolume): Promise<ArraySnapshot[]> {
    const all = await listAll<SnapshotRecord>(this.session, `/snapshot?${exact('PARENTID', volume.id)}`);
    return all.filter((s) => s.PARENTID === volume.id).map((s) => ({ id: s.ID, name: s.NAME }));
  }

  diff(): Promise<ByteRange[] | undefined> {
    return Promise.resolve(undefined);
  }

  allocated(): Promise<ByteRange[] | undefined> {
    return Promise.resolve(undefined);
  }

  async openSnapshot(volume: ArrayVolume, snapshot: ArraySnapshot): Promise<SnapshotReader> {
    const snap = await this.session.get<SnapshotRecord>(`/snapshot/${snapshot.id}`);
    const size = Number(snap.USERCAPACITY) * SECTOR;
    const device = join(this.parts.devices, `wwn-0x${snap.WWN.toLowerCase()}`);
    const { lunGroupId } = await this.mappingPath();
    await this.session.post('/lungroup/associate', { ID: lunGroupId, ASSOCIATEOBJTYPE: TYPE.SNAPSHOT, ASSOCIATEOBJID: snapshot.id });
    let fh: FileHandle;
    try {
      fh = await this.waitForDevice(device, snapshot, volume);
    } catch (err) {
      await this.unmap(snapshot.id).catch(() => undefined);
      throw err;
    }
    const where = `${this.location}/${volume.name}@${snapshot.name} (${device})`;
    let closed = false;
    return {
      size,
      read: async (buffer, length, position) => {
        try {
          let done = 0;
          while (done < length) {
            const { bytesRead } = await fh.read(buffer, done, length - done, position + done);
            if (bytesRead === 0) break;
            done += bytesRead;
          }
          return done;
        } catch (err) {
          throw new CairnError('SOURCE_UNREADABLE', `reading ${where} at ${position} failed: ${(err as Error).message}`, { cause: err });
        }
      },
      close: async () => {
        if (closed) return;
        closed = true;
        await fh.close().catch(() => undefined);
        if (this.isSystemDevices()) await forgetScsiDevice(device);
        await this.unmap(snapshot.id);
      },
    };
  }

  /** Unmaps the snapshot if it is mapped, stops and deletes it; gone already is fine. */
  async deleteSnapshot(_volume: ArrayVolume, snapshot: ArraySnapshot): Promise<void> {
    const gone = (err: unknown): undefined => {
      if (isArrayCode(err, DoradoCode.SNAPSHOT_NOT_EXIST, DoradoCode.OBJECT_NOT_EXIST)) return undefined;
      throw err;
    };
    await this.unmap(snapshot.id).catch(gone);
    await this.session.put('/snapshot/stop', { ID: snapshot.id }).catch((err: unknown) => (isArrayCode(err, DoradoCode.SNAPSHOT_NOT_ACTIVATED) ? undefined : gone(err)));
    await this.session.delete(`/snapshot/${snapshot.id}`).catch(gone);
  }

  async close(): Promise<void> {
    await this.session.logout();
  }

  /** Removes the snapshot from every lun group it is in (no mapping left behind). */
  private async unmap(snapshotId: string): Promise<void> {
    const groups = (await this.session.get<Named[] | undefined>(`/lungroup/associate?TYPE=${TYPE.LUNGROUP}&ASSOCIATEOBJTYPE=${TYPE.SNAPSHOT}&ASSOCIATEOBJID=${snapshotId}`)) ?? [];
    for (const g of groups) {
      await this.session.delete(`/lungroup/associate?ID=${g.ID}&ASSOCIATEOBJTYPE=${TYPE.SNAPSHOT}&ASSOCIATEOBJID=${snapshotId}`);
    }
  }

  /**
   * Cairn's mapping to `host=`, made on first use and kept: host group, lun group and mapping view
   * named `cairn-<host ID>`; the host joins the host group. Snapshots are mapped by joining the lun group.
   */
  private mappingPath(): Promise<MappingPath> {
    this.mapping ??= this.makeMappingPath().catch((err: unknown) => {
      this.mapping = undefined;
      throw err;
    });
    return this.mapping;
  }

  private async makeMappingPath(): Promise<MappingPath> {
    const s = this.session;
    const hostName = this.parts.arrayHost;
    const host = ((await s.get<Named[] | undefined>(`/host?${exact('NAME', hostName)}`)) ?? []).find((h) => h.NAME === hostName);
    if (!host) {
      throw new CairnError('NOT_FOUND', `${this.location} has no host named '${hostName}' (host= in the URL); create it with this machine's iSCSI or FC initiators`);
    }
    const name = `cairn-${host.ID}`;
    const byName = async (resource: string, create: Record<string, unknown>): Promise<string> => {
      const found = ((await s.get<Named[] | undefined>(`/${resource}?${exact('NAME', name)}`)) ?? []).find((o) => o.NAME === name);
      if (found) return found.ID;
      return (await s.post<Named>(`/${resource}`, { NAME: name, ...create })).ID;
    };
    const hostGroupId = await byName('hostgroup', { TYPE: TYPE.HOSTGROUP });
    const inGroup = (await s.get<Named[] | undefined>(`/host/associate?TYPE=${TYPE.HOST}&ASSOCIATEOBJTYPE=${TYPE.HOSTGROUP}&ASSOCIATEOBJID=${hostGroupId}`)) ?? [];
    if (!inGroup.some((h) => h.ID === host.ID)) {
      await s.post('/hostgroup/associate', { ID: hostGroupId, ASSOCIATEOBJTYPE: TYPE.HOST, ASSOCIATEOBJID: host.ID });
    }
    const lunGroupId = await byName('lungroup', { APPTYPE: '0', GROUPTYPE: '0' });
    const viewId = await byName('mappingview', { TYPE: TYPE.MAPPINGVIEW });
    for (const [type, id] of [[TYPE.HOSTGROUP, hostGroupId], [TYPE.LUNGROUP, lunGroupId]] as const) {
      const views = (await s.get<Named[] | undefined>(`/mappingview/associate?TYPE=${TYPE.MAPPINGVIEW}&ASSOCIATEOBJTYPE=${type}&ASSOCIATEOBJID=${id}`)) ?? [];
      if (!views.some((v) => v.ID === viewId)) {
        await s.put('/mappingview/create_associate', { ID: viewId, TYPE: TYPE.MAPPINGVIEW, ASSOCIATEOBJTYPE: type, ASSOCIATEOBJID: id });
      }
    }
    return { lunGroupId };
  }

  private isSystemDevices(): boolean {
    return this.parts.devices === DEFAULT_DEVICES;
  }

  /** Opens the device once it appears (asking the SCSI layer to rescan when it is this machine's); SOURCE_UNREADABLE after the timeout. */
  private async waitForDevice(device: string, snapshot: ArraySnapshot, volume: ArrayVolume): Promise<FileHandle> {
    const until = Date.now() + this.parts.deviceTimeoutMs;
    let rescanned = 0;
    for (;;) {
      try {
        return await open(device, constants.O_RDONLY);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw fromSystemError(err, `opening snapshot ${snapshot.name} of ${volume.name}`, device);
      }
      if (this.isSystemDevices() && Date.now() - rescanned > 5000) {
        rescanned = Date.now();
        await rescanScsiHosts();
      }
      if (Date.now() > until) {
        throw new CairnError(
          'SOURCE_UNREADABLE',
          `snapshot ${snapshot.name} of ${this.location}/${volume.name} was mapped to host '${this.parts.arrayHost}' but ${device} did not appear within ${this.parts.deviceTimeoutMs / 1000} s; ` +
            "check that this machine's initiators belong to that host and are logged in to the array (iscsiadm -m session, or the FC zoning), or raise device-timeout=",
        );
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

function toVolume(l: LunRecord): ArrayVolume {
  return { id: l.ID, name: l.NAME, size: Number(l.CAPACITY) * SECTOR, uid: l.WWN };
}

/** Asks every SCSI host of this machine to look for new LUNs (as rescan-scsi-bus does); best effort. */
async function rescanScsiHosts(): Promise<void> {
  const hosts = await readdir('/sys/class/scsi_host').catch(() => [] as string[]);
  for (const h of hosts) await writeFile(join('/sys/class/scsi_host', h, 'scan'), '- - -').catch(() => undefined);
}

/** Removes this machine's SCSI device behind a by-id link before its LUN is unmapped, so no stale device stays; best effort. */
async function forgetScsiDevice(link: string): Promise<void> {
  const target = await readlink(link).then(() => realpath(link)).catch(() => undefined);
  if (target) await writeFile(join('/sys/block', basename(target), 'device', 'delete'), '1').catch(() => undefined);
}
