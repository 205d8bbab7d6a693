import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { open, readFile, realpath, readdir, writeFile, type FileHandle } from 'node:fs/promises';
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
 *
 * Snapshot names: the array's NAME of a Cairn snapshot is `cairn<hash>_<LUN ID>` (arraySnapshotName:
 * unique on the array, at most 31 characters, letters, digits and '_' only, which every firmware
 * takes); the Cairn name (`cairn-<vault>-<backup>`, the change token) is kept in its DESCRIPTION and
 * is the ArraySnapshot's `name`. A snapshot counts as Cairn's only when both agree, so the user's
 * snapshots are never listed, whatever their description says.
 */

export const DEFAULT_PORT = 8088;
export const DEFAULT_DEVICES = '/dev/disk/by-id';
const DEFAULT_DEVICE_TIMEOUT_S = 60;
const SECTOR = 512;
/** The shortest limit on object names among Dorado / OceanStor firmware (V3/V5: 1 to 31 characters). */
const MAX_NAME = 31;
/** Pause before the one retry of a failed unmap (the array answers "busy" for a moment). */
const UNMAP_RETRY_MS = 1000;
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

/**
 * The vStore is part of the location: LUNs of two vStores are two groups with their own logins.
 * The other connection parameters (connectionOf) must be the same for every LUN of one location;
 * the generic group refuses a URL that differs.
 */
export function parseDoradoUrl(url: string): ArrayVolumeUrl {
  const p = parseParts(url);
  const vstore = p.endpoint.vstore ? `/${encodeURIComponent(p.endpoint.vstore)}` : '';
  const location = `dorado://${hostPart(p.endpoint.host)}${p.endpoint.port === DEFAULT_PORT ? '' : `:${p.endpoint.port}`}${vstore}`;
  return {
    location,
    volume: p.lun,
    connection: Object.fromEntries(connectionOf(p)),
    connect: async () => {
      const password = await readPassword(p, url);
      const session = await DoradoSession.login({ ...p.endpoint, password });
      return new DoradoDriver(session, location, p);
    },
  };
}

/** The parameters a connection is made with, besides address and vStore (which make the location). */
function connectionOf(p: DoradoUrlParts): URLSearchParams {
  return new URLSearchParams({
    user: p.endpoint.user,
    'password-file': p.passwordFile ?? '',
    thumbprint: p.endpoint.thumbprint ?? '',
    host: p.arrayHost,
    devices: p.devices,
    'device-timeout': String(p.deviceTimeoutMs / 1000),
  });
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
  DESCRIPTION?: string;
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
  lunGroupName: string;
}

export class DoradoDriver implements ArrayDriver {
  private mapping: Promise<MappingPath> | undefined;
  /** Deletions under way, by snapshot ID: a second caller (an abort running twice) waits for the first. */
  private readonly deleting = new Map<string, Promise<void>>();
  private closed = false;

  constructor(
    private readonly session: DoradoSession,
    readonly location: string,
    private readonly parts: DoradoUrlParts,
  ) {}

  async listVolumes(): Promise<ArrayVolume[]> {
    return (await listAll<LunRecord>(this.session, '/lun')).map(toVolume);
  }

  /** A LUN by name or ID. */
  async findVolume(lunName: string): Promise<ArrayVolume> {
    if (/^\d+$/.test(lunName)) {
      const byId = await this.session.get<LunRecord>(`/lun/${lunName}`).catch((err: unknown) => {
        if (isArrayCode(err, DoradoCode.LUN_NOT_EXIST, DoradoCode.OBJECT_NOT_EXIST)) return undefined;
        throw err;
      });
      if (byId) return toVolume(byId);
    }
    const found = (await this.session.get<LunRecord[] | undefined>(`/lun?${exact('NAME', lunName)}`)) ?? [];
    const lun = found.find((l) => l.NAME === lunName);
    if (lun) return toVolume(lun);
    const names = (await this.listVolumes()).map((v) => v.name);
    throw new CairnError(
      'NOT_FOUND',
      `${this.location} has no LUN named '${lunName}'` +
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
          NAME: arraySnapshotName(name, v.id),
          PARENTTYPE: TYPE.LUN,
          PARENTID: v.id,
          // Huawei's Cinder driver keeps its own id of a snapshot here the same way (its NAME is a hash).
          DESCRIPTION: name,
        });
        created.push({ id: s.ID, name });
      }
      await this.session.post('/snapshot/activate', { SNAPSHOTLIST: created.map((s) => s.id) });
      return { snapshots: created, atomic: true };
    } catch (err) {
      for (const [i, s] of created.entries()) await this.deleteSnapshot(volumes[i], s).catch(() => undefined);
      throw err;
    }
  }

  /** Cairn's snapshots of the volume, named by their Cairn name; the user's are left out. */
  async listSnapshots(volume: ArrayVolume): Promise<ArraySnapshot[]> {
    const all = await listAll<SnapshotRecord>(this.session, `/snapshot?${exact('PARENTID', volume.id)}`);
    return all.filter((s) => s.PARENTID === volume.id && isCairnSnapshot(s)).map((s) => ({ id: s.ID, name: s.DESCRIPTION! }));
  }

  diff(): Promise<ByteRange[] | undefined> {
    return Promise.resolve(undefined);
  }

  allocated(): Promise<ByteRange[] | undefined> {
    return Promise.resolve(undefined);
  }

  /**
   * Maps the snapshot to `host=` and opens its device. The reader's close() unmaps it (trying twice)
   * and throws SOURCE_UNREADABLE naming the mapping when it stays; it may be called more than once.
   */
  async openSnapshot(volume: ArrayVolume, snapshot: ArraySnapshot): Promise<SnapshotReader> {
    const snap = await this.session.get<SnapshotRecord>(`/snapshot/${snapshot.id}`);
    const what = `snapshot ${snapshot.name} of ${this.location}/${volume.name}`;
    // The WWN becomes part of a path: only hex digits, as SCSI shows them, get that far.
    if (typeof snap.WWN !== 'string' || !/^[0-9a-f]{16,32}$/i.test(snap.WWN)) {
      throw new CairnError('SOURCE_UNREADABLE', `${what}: the array gives its WWN as ${JSON.stringify(snap.WWN)}, not 16 to 32 hex digits; not mapping or reading it`);
    }
    const wwn = snap.WWN.toLowerCase();
    const size = Number(snap.USERCAPACITY) * SECTOR;
    const device = join(this.parts.devices, `wwn-0x${wwn}`);
    const mapping = await this.mappingPath();
    await this.session.post('/lungroup/associate', { ID: mapping.lunGroupId, ASSOCIATEOBJTYPE: TYPE.SNAPSHOT, ASSOCIATEOBJID: snapshot.id });
    let fh: FileHandle;
    try {
      fh = await this.waitForDevice(device, wwn, what);
    } catch (err) {
      await this.unmap(snapshot.id).catch(() => undefined);
      throw err;
    }
    const where = `${this.location}/${volume.name}@${snapshot.name} (${device})`;
    let closing: Promise<void> | undefined;
    const close = async (): Promise<void> => {
      await fh.close().catch(() => undefined);
      if (this.isSystemDevices()) await forgetScsiDevices(wwn);
      await this.unmap(snapshot.id).catch(async () => {
        await new Promise((r) => setTimeout(r, UNMAP_RETRY_MS));
        await this.unmap(snapshot.id);
      }).catch((err: unknown) => {
        throw new CairnError(
          'SOURCE_UNREADABLE',
          `${what} stays mapped to host '${this.parts.arrayHost}' (in the array's LUN group ${mapping.lunGroupName}): unmapping it failed twice (${(err as Error).message}); ` +
            'the next backup of this LUN removes it, or remove the snapshot from that LUN group on the array',
          { cause: err },
        );
      });
    };
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
      close: () => (closing ??= close()),
    };
  }

  /** Unmaps the snapshot if it is mapped, stops and deletes it; gone already is fine. Concurrent calls for one snapshot share the work. */
  deleteSnapshot(_volume: ArrayVolume, snapshot: ArraySnapshot): Promise<void> {
    let deleting = this.deleting.get(snapshot.id);
    if (!deleting) {
      deleting = this.delete(snapshot.id).finally(() => this.deleting.delete(snapshot.id));
      this.deleting.set(snapshot.id, deleting);
    }
    return deleting;
  }

  private async delete(id: string): Promise<void> {
    const gone = (err: unknown): undefined => {
      if (isArrayCode(err, DoradoCode.SNAPSHOT_NOT_EXIST, DoradoCode.OBJECT_NOT_EXIST)) return undefined;
      throw err;
    };
    await this.unmap(id).catch(gone);
    await this.session.put('/snapshot/stop', { ID: id }).catch((err: unknown) => (isArrayCode(err, DoradoCode.SNAPSHOT_NOT_ACTIVATED) ? undefined : gone(err)));
    await this.session.delete(`/snapshot/${id}`).catch(gone);
  }

  /** Logs out; calls still under way then fail at once instead of logging in again. Safe to call more than once, also concurrently. */
  async close(): Promise<void> {
    this.closed = true;
    await this.session.logout();
  }

  /** Removes the snapshot from every lun group it is in (no mapping left behind). */
  private async unmap(snapshotId: string): Promise<void> {
    const groups = (await this.session.get<Named[] | undefined>(`/lungroup/associate?TYPE=${TYPE.LUNGROUP}&ASSOCIATEOBJTYPE=${TYPE.SNAPSHOT}&ASSOCIATEOBJID=${snapshotId}`)) ?? [];
    for (const g of groups) {
      await this.session.delete(`/lungroup/associate?ID=${g.ID}&ASSOCIATEOBJTYPE=${TYPE.SNAPSHOT}&ASSOCIATEOBJID=${snapshotId}`).catch((err: unknown) => {
        // Not (or no longer) in the group: someone else unmapped it meanwhile.
        if (!isArrayCode(err, DoradoCode.OBJECT_NOT_EXIST)) throw err;
      });
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
    return { lunGroupId, lunGroupName: name };
  }

  private isSystemDevices(): boolean {
    return this.parts.devices === DEFAULT_DEVICES;
  }

  /**
   * Opens the device once it appears (asking the SCSI layer to rescan when it is this machine's);
   * SOURCE_UNREADABLE after the timeout. For this machine's devices, only a device whose SCSI
   * identity (sysfs wwid, or the multipath map's uuid) is the snapshot's WWN is opened.
   */
  private async waitForDevice(device: string, wwn: string, what: string): Promise<FileHandle> {
    const until = Date.now() + this.parts.deviceTimeoutMs;
    let rescanned = 0;
    for (;;) {
      if (this.closed) throw new CairnError('SOURCE_UNREADABLE', `${what}: stopped waiting for ${device}: the session with the array was ended (the backup is being stopped)`);
      const target = await realpath(device).catch((err: unknown) => {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw fromSystemError(err, `opening ${what}`, device);
        return undefined;
      });
      if (target !== undefined) {
        if (this.isSystemDevices()) await checkDeviceIdentity(target, wwn, device, what);
        return await open(target, constants.O_RDONLY).catch((err: unknown) => {
          throw fromSystemError(err, `opening ${what}`, device);
        });
      }
      if (this.isSystemDevices() && Date.now() - rescanned > 5000) {
        rescanned = Date.now();
        await rescanScsiHosts();
      }
      if (Date.now() > until) {
        throw new CairnError(
          'SOURCE_UNREADABLE',
          `${what} was mapped to the array's host object '${this.parts.arrayHost}' (host= in the URL) but ${device} did not appear within ${this.parts.deviceTimeoutMs / 1000} s; ` +
            "check that this machine's initiators belong to that host object and are logged in to the array (iscsiadm -m session, or the FC zoning)" +
            (this.isSystemDevices() ? '; Cairn asks the SCSI hosts to rescan, which needs root (CAP_SYS_ADMIN): run it as root or rescan yourself (rescan-scsi-bus.sh)' : '') +
            ', or raise device-timeout=',
        );
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/**
 * The array's NAME for Cairn's snapshot `cairnName` of LUN `lunId`: `cairn<hash of cairnName>_<LUN ID>`.
 * Unique on the array (a LUN ID is, and so is the Cairn name per LUN), at most 31 characters, and
 * made only of letters, digits and '_', which every firmware accepts in a name.
 */
export function arraySnapshotName(cairnName: string, lunId: string): string {
  const hashLength = Math.min(12, MAX_NAME - 'cairn_'.length - lunId.length);
  return `cairn${createHash('sha256').update(cairnName).digest('hex').slice(0, hashLength)}_${lunId}`;
}

/** Made by Cairn: its DESCRIPTION holds a Cairn name that its NAME is derived from. */
function isCairnSnapshot(s: SnapshotRecord): boolean {
  return typeof s.DESCRIPTION === 'string' && s.DESCRIPTION.startsWith('cairn-') && s.NAME === arraySnapshotName(s.DESCRIPTION, s.PARENTID);
}

/**
 * Whether a SCSI identity as Linux shows it is the LUN with this WWN: `/sys/block/sdX/device/wwid`
 * ("naa.<WWN>") or a multipath map's `/sys/block/dm-N/dm/uuid` ("mpath-3<WWN>", 3 being the NAA
 * designator type scsi_id puts in front).
 */
export function wwidMatches(wwid: string, wwn: string): boolean {
  let id = wwid.trim().toLowerCase();
  if (id.startsWith('mpath-')) id = id.slice('mpath-'.length + 1);
  else if (id.startsWith('naa.')) id = id.slice('naa.'.length);
  return id === wwn.toLowerCase();
}

/** SOURCE_UNREADABLE unless the block device `target` (what the by-id link resolves to) has the SCSI identity `wwn`. */
async function checkDeviceIdentity(target: string, wwn: string, link: string, what: string): Promise<void> {
  const dev = basename(target);
  const idFile = /^dm-\d+$/.test(dev) ? join('/sys/block', dev, 'dm', 'uuid') : join('/sys/block', dev, 'device', 'wwid');
  const id = await readFile(idFile, 'utf8').catch(() => undefined);
  if (id === undefined || !wwidMatches(id, wwn)) {
    throw new CairnError(
      'SOURCE_UNREADABLE',
      `${what}: ${link} leads to ${target}, whose SCSI identity ${id === undefined ? `cannot be read (${idFile})` : `is ${id.trim()}`}, not the snapshot's WWN ${wwn}; ` +
        'not reading it (a stale udev link?); check the links in that folder (udevadm trigger) and run the backup again',
    );
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

/**
 * Removes every SCSI device of this machine with the SCSI identity `wwn` (with multipath, one per
 * path) before its LUN is unmapped, so no stale device stays; best effort. Multipath maps (dm-N) over
 * them are left to multipathd.
 */
async function forgetScsiDevices(wwn: string): Promise<void> {
  const devices = (await readdir('/sys/block').catch(() => [] as string[])).filter((d) => /^sd[a-z]+$/.test(d));
  for (const dev of devices) {
    const id = await readFile(join('/sys/block', dev, 'device', 'wwid'), 'utf8').catch(() => '');
    if (wwidMatches(id, wwn)) await writeFile(join('/sys/block', dev, 'device', 'delete'), '1').catch(() => undefined);
  }
}
