/**
 * A stand-in for a Huawei OceanStor Dorado array: an HTTPS server (self-signed certificate, port 0)
 * answering the part of the DeviceManager REST interface that Cairn's dorado driver uses, with the
 * LUNs' data in files the test writes to as a host would.
 *
 * What it follows, and where that comes from:
 * - Huawei's Cinder driver, cinder/volume/drivers/huawei/rest_client.py and constants.py
 *   (https://opendev.org/openstack/cinder): login `POST /deviceManager/rest/xxxxx/sessions`
 *   {username, password, scope:"0"} -> data {deviceid, iBaseToken, accountstate} and a session cookie;
 *   every other call under `/deviceManager/rest/<deviceid>/` with the cookie and the iBaseToken header;
 *   the envelope {"data":..., "error":{"code":0,"description":"0"}}; -401 for a call without a valid
 *   session; `GET /lun?filter=NAME::x`, `GET /lun/<id>`; snapshots `POST /snapshot`
 *   {TYPE:"27", NAME, PARENTTYPE:"11", PARENTID, DESCRIPTION} (created inactive),
 *   `POST /snapshot/activate` {SNAPSHOTLIST:[ids]} (a list activated together is how its
 *   create_group_snapshot makes consistency-group snapshots), `PUT /snapshot/stop` {ID},
 *   `DELETE /snapshot/<id>`; mapping through host group, lun group and mapping view:
 *   `POST /hostgroup` {TYPE:"14", NAME}, `POST /hostgroup/associate` {ID, ASSOCIATEOBJTYPE:"21",
 *   ASSOCIATEOBJID}, `GET /host/associate?TYPE=21&ASSOCIATEOBJTYPE=14&ASSOCIATEOBJID=`,
 *   `POST /lungroup` {NAME, APPTYPE, GROUPTYPE}, `POST /lungroup/associate` {ID, ASSOCIATEOBJTYPE
 *   (11 LUN, 27 snapshot), ASSOCIATEOBJID}, `GET /lungroup/associate?TYPE=256&ASSOCIATEOBJTYPE=&ASSOCIATEOBJID=`,
 *   `DELETE /lungroup/associate?ID=&ASSOCIATEOBJTYPE=&ASSOCIATEOBJID=`, `POST /mappingview` {NAME,
 *   TYPE:"245"}, `PUT /mappingview/create_associate` {ID, TYPE:"245", ASSOCIATEOBJTYPE (14, 256),
 *   ASSOCIATEOBJID}, `GET /mappingview/associate?TYPE=245&ASSOCIATEOBJTYPE=&ASSOCIATEOBJID=`;
 *   the snapshot's CAPACITY / USERCAPACITY in 512-byte sectors, as strings.
 * - Huawei's CSI driver eSDK_K8S_Plugin, storage/oceanstor/client/client.go, client_lun.go,
 *   client_lunsnapshot.go, client_mapping.go (https://github.com/Huawei/eSDK_K8S_Plugin): login body
 *   field `vstorename`, list paging `range=[0-100]`, error codes 1077987870 (wrong password),
 *   1077949071 (IP locked), 1077936859 (LUN does not exist), 1077937880 (snapshot does not exist),
 *   1077937891 (snapshot not activated), 1077948996 (object does not exist), 1077948993 (name exists),
 *   50331651 (parameter incorrect).
 * - open-eBackup (Huawei's backup software, src/AppPlugins/virtualization/.../oceanstor/ApiOperator.h
 *   and its test mocks): the snapshot object's fields (WWN, USERCAPACITY, SOURCELUNID, RUNNINGSTATUS
 *   43 active / 45 inactive, snapCgId, TYPE 27 as a number), and 1073793588 (system busy), used for injected faults;
 *   its StorageCommonErrorCode.java: 1077949103 (a name must have 1 to 31 characters), 1077949106
 *   (a name holds characters not allowed).
 *
 * Names: the fixture holds Cairn to the strictest firmware: a snapshot NAME has 1 to 31 characters
 * (letters, digits, '_', '-', '.') and is unique on the array, as Huawei's clients assume when they find a
 * snapshot by `filter=NAME::` alone (the CSI driver's GetLunSnapshotByName; Cinder's encode_name
 * hashes names to fit); DESCRIPTION (up to 255 characters here) is kept and shown as given.
 *
 * Not modelled: thin allocation, QoS, the snapshot consistency-group objects (protection groups), and
 * any changed-block call (the published interface has none that we could find; see agent/source/array/README.md).
 *
 * The data side: each LUN is a file in `dir/luns`; activating a snapshot copies it (the frozen copy);
 * a snapshot visible to `agentHost` (its lun group in a mapping view with a host group holding that
 * host) appears as the symlink `devices/wwn-0x<WWN>` to its frozen copy; unmapping removes the link,
 * deleting the snapshot removes the copy.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes, X509Certificate } from 'node:crypto';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { thumbprintsOf } from '../../shared/net/pinned-https.js';

export interface DoradoFixtureOptions {
  /** Folder for the certificate, LUN files and frozen copies (the caller removes it). */
  dir: string;
  /** Where mapped snapshots appear as wwn-0x<WWN> (the test's stand-in for /dev/disk/by-id). */
  devices: string;
  user: string;
  password: string;
  /** Host objects on the array; `agentHost` is the one whose initiators are "this machine". */
  hosts: string[];
  agentHost: string;
  luns: { name: string; size: number }[];
}

interface Lun {
  id: string;
  name: string;
  wwn: string;
  file: string;
}
interface Snapshot {
  id: string;
  name: string;
  description: string;
  parentId: string;
  wwn: string;
  sectors: number;
  active: boolean;
  timestamp: number;
  file: string;
}
interface Group {
  id: string;
  name: string;
  members: Set<string>; // "type:id"
}

export interface Faults {
  /** Fail this many of the next `DELETE /lungroup/associate` calls (array busy). */
  failUnmap: number;
  /** Fail the next `POST /snapshot/activate`. */
  failActivate: boolean;
  /** Mapped snapshots appear as a directory, so reading them fails. */
  unreadableDevices: boolean;
  /** Snapshots of this LUN (by name) show a WWN that is not hex digits. */
  badWwnOf: string | undefined;
  /** Every login is refused with this code (a locked account, ...). */
  loginError: number | undefined;
}

const CODE = {
  UNAUTHORIZED: -401,
  WRONG_PASSWORD: 1077987870,
  OBJECT_NOT_EXIST: 1077948996,
  LUN_NOT_EXIST: 1077936859,
  SNAPSHOT_NOT_EXIST: 1077937880,
  SNAPSHOT_NOT_ACTIVATED: 1077937891,
  NAME_EXISTS: 1077948993,
  PARAMETER_INCORRECT: 50331651,
  NAME_LENGTH: 1077949103,
  NAME_INVALID: 1077949106,
  BUSY: 1073793588,
};

const MAX_NAME = 31;
const MAX_DESCRIPTION = 255;

const SECTOR = 512;
const DEVICE_ID = '2102353GTD10L9000007';

export class DoradoFixture {
  readonly luns = new Map<string, Lun>();
  readonly snapshots = new Map<string, Snapshot>();
  readonly hosts = new Map<string, string>(); // id -> name
  readonly hostGroups = new Map<string, Group>();
  readonly lunGroups = new Map<string, Group>();
  readonly views = new Map<string, Group>();
  /** Every call as `METHOD /resource` (device and query left out), in order. */
  readonly calls: string[] = [];
  /** Calls the fixture does not implement (a test asserts there are none). */
  readonly unexpected: string[] = [];
  /** `POST /snapshot/activate` calls, with the IDs each activated. */
  readonly activations: string[][] = [];
  readonly faults: Faults = { failUnmap: 0, failActivate: false, unreadableDevices: false, badWwnOf: undefined, loginError: undefined };
  /** Called once after the next activation, before it is answered (a host writing just after the snapshot). */
  afterActivate: (() => void) | undefined;
  /** Live sessions (logins not yet logged out). */
  readonly sessions = new Set<string>();
  password: string;
  private nextId = 1;
  private server!: Server;
  port = 0;
  certificate!: X509Certificate;

  private constructor(private readonly opts: DoradoFixtureOptions) {
    this.password = opts.password;
  }

  static async start(opts: DoradoFixtureOptions): Promise<DoradoFixture> {
    const f = new DoradoFixture(opts);
    for (const d of ['luns', 'snaps']) mkdirSync(join(opts.dir, d), { recursive: true });
    mkdirSync(opts.devices, { recursive: true });
    for (const name of opts.hosts) f.hosts.set(f.id(), name);
    for (const { name, size } of opts.luns) {
      const id = f.id();
      const file = join(opts.dir, 'luns', `${id}.img`);
      writeFileSync(file, '');
      truncateSync(file, size);
      f.luns.set(id, { id, name, wwn: wwn('a', id), file });
    }
    const key = join(opts.dir, 'key.pem');
    const cert = join(opts.dir, 'cert.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', '/CN=dorado.example', '-keyout', key, '-out', cert], { stdio: 'ignore' });
    f.certificate = new X509Certificate(readFileSync(cert));
    f.server = createServer({ key: readFileSync(key), cert: readFileSync(cert) }, (req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (d: Buffer) => parts.push(d));
      req.on('end', () => {
        let reply: { status: number; body: unknown; cookie?: string };
        try {
          reply = f.handle(req.method ?? 'GET', req.url ?? '/', req.headers, Buffer.concat(parts).toString('utf8'));
        } catch (err) {
          reply = { status: 500, body: { error: { code: -1, description: (err as Error).message } } };
        }
        const headers: Record<string, string> = { 'Content-Type': 'application/json;charset=UTF-8' };
        if (reply.cookie) headers['Set-Cookie'] = `session=ismsession=${reply.cookie}; Path=/; Secure; HttpOnly`;
        res.writeHead(reply.status, headers);
        res.end(JSON.stringify(reply.body));
      });
    });
    await new Promise<void>((resolve) => f.server.listen(0, '127.0.0.1', resolve));
    f.port = (f.server.address() as AddressInfo).port;
    return f;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }

  /** SHA-256 thumbprint of the certificate, as thumbprint= takes it. */
  get thumbprint(): string {
    return thumbprintsOf(this.certificate.raw).sha256;
  }

  lunByName(name: string): Lun {
    const l = [...this.luns.values()].find((x) => x.name === name);
    if (!l) throw new Error(`no LUN ${name}`);
    return l;
  }

  /** The file holding a LUN's data (write to it as a host would). */
  lunFile(name: string): string {
    return this.lunByName(name).file;
  }

  snapshotsOf(lunName: string): Snapshot[] {
    const id = this.lunByName(lunName).id;
    return [...this.snapshots.values()].filter((s) => s.parentId === id);
  }

  /** Snapshots in any lun group (mapped or on their way to be). */
  mappedSnapshots(): string[] {
    return [...this.snapshots.keys()].filter((id) => [...this.lunGroups.values()].some((g) => g.members.has(`27:${id}`)));
  }

  deviceFiles(): string[] {
    return readdirSync(this.opts.devices).filter((n) => n.startsWith('wwn-0x'));
  }

  private id(): string {
    return String(this.nextId++);
  }

  // ---- REST -----------------------------------------------------------------------------

  private handle(method: string, rawUrl: string, headers: NodeJS.Dict<string | string[]>, text: string): { status: number; body: unknown; cookie?: string } {
    const url = new URL(rawUrl, 'https://array');
    const m = /^\/deviceManager\/rest\/([^/]+)(\/.*)$/.exec(url.pathname);
    if (!m) return this.notImplemented(method, url.pathname);
    const [, device, path] = m;
    const resource = path.toLowerCase();
    const body = text ? (JSON.parse(text) as Record<string, unknown>) : {};
    this.calls.push(`${method} ${resource.replace(/\/\d+$/, '/{id}')}`);
    if (device === 'xxxxx' && resource === '/sessions' && method === 'POST') return this.login(body);
    const cookie = String(headers.cookie ?? '');
    const session = /session=ismsession=([0-9a-f]+)/.exec(cookie)?.[1];
    if (device !== DEVICE_ID || !session || !this.sessions.has(session) || headers.ibasetoken !== tokenOf(session)) {
      return fail(CODE.UNAUTHORIZED, 'unauthorized');
    }
    const q = url.searchParams;
    const route = `${method} ${resource.replace(/\/\d+$/, '/{id}')}`;
    const id = /\/(\d+)$/.exec(resource)?.[1] ?? '';
    switch (route) {
      case 'DELETE /sessions':
        this.sessions.delete(session);
        return ok({});
      case 'GET /lun':
        return ok(page(q, filtered(q, [...this.luns.values()].map((l) => this.lunRecord(l)))));
      case 'GET /lun/{id}': {
        const l = this.luns.get(id);
        return l ? ok(this.lunRecord(l)) : fail(CODE.LUN_NOT_EXIST, 'The LUN does not exist.');
      }
      case 'POST /snapshot':
        return this.createSnapshot(body);
      case 'GET /snapshot':
        return ok(page(q, filtered(q, [...this.snapshots.values()].map((s) => this.snapshotRecord(s)))));
      case 'GET /snapshot/{id}': {
        const s = this.snapshots.get(id);
        return s ? ok(this.snapshotRecord(s)) : fail(CODE.SNAPSHOT_NOT_EXIST, 'The snapshot does not exist.');
      }
      case 'POST /snapshot/activate':
        return this.activate(body);
      case 'PUT /snapshot/stop': {
        const s = this.snapshots.get(String(body.ID));
        if (!s) return fail(CODE.SNAPSHOT_NOT_EXIST, 'The snapshot does not exist.');
        if (!s.active) return fail(CODE.SNAPSHOT_NOT_ACTIVATED, 'The snapshot is not activated.');
        s.active = false;
        this.syncDevices();
        return ok({});
      }
      case 'DELETE /snapshot/{id}': {
        const s = this.snapshots.get(id);
        if (!s) return fail(CODE.SNAPSHOT_NOT_EXIST, 'The snapshot does not exist.');
        this.snapshots.delete(id);
        for (const g of this.lunGroups.values()) g.members.delete(`27:${id}`);
        rmSync(s.file, { force: true });
        this.syncDevices();
        return ok({});
      }
      case 'GET /host':
        return ok(page(q, filtered(q, [...this.hosts].map(([hid, name]) => ({ ID: hid, NAME: name, TYPE: 21, OPERATIONSYSTEM: '0', ISADD2HOSTGROUP: String(this.groupsHolding(this.hostGroups, `21:${hid}`).length > 0) })))));
      case 'GET /hostgroup':
        return ok(page(q, filtered(q, [...this.hostGroups.values()].map((g) => ({ ID: g.id, NAME: g.name, TYPE: 14 })))));
      case 'POST /hostgroup':
        return this.createGroup(this.hostGroups, body, 14);
      case 'POST /hostgroup/associate':
        return this.associate(this.hostGroups, body, ['21']);
      case 'GET /host/associate': {
        const g = this.hostGroups.get(q.get('ASSOCIATEOBJID') ?? '');
        if (!g || q.get('ASSOCIATEOBJTYPE') !== '14') return fail(CODE.OBJECT_NOT_EXIST, 'The object does not exist.');
        return ok([...g.members].map((k) => k.split(':')[1]).map((hid) => ({ ID: hid, NAME: this.hosts.get(hid), TYPE: 21 })));
      }
      case 'GET /lungroup':
        return ok(page(q, filtered(q, [...this.lunGroups.values()].map((g) => ({ ID: g.id, NAME: g.name, TYPE: 256, APPTYPE: '0' })))));
      case 'POST /lungroup':
        return this.createGroup(this.lunGroups, body, 256);
      case 'POST /lungroup/associate':
        return this.associate(this.lunGroups, body, ['11', '27']);
      case 'GET /lungroup/associate': {
        const key = `${q.get('ASSOCIATEOBJTYPE')}:${q.get('ASSOCIATEOBJID')}`;
        return ok(this.groupsHolding(this.lunGroups, key).map((g) => ({ ID: g.id, NAME: g.name, TYPE: 256 })));
      }
      case 'DELETE /lungroup/associate': {
        if (this.faults.failUnmap > 0) {
          this.faults.failUnmap--;
          return fail(CODE.BUSY, 'The system is busy.');
        }
        const g = this.lunGroups.get(q.get('ID') ?? '');
        const key = `${q.get('ASSOCIATEOBJTYPE')}:${q.get('ASSOCIATEOBJID')}`;
        if (!g || !g.members.delete(key)) return fail(CODE.OBJECT_NOT_EXIST, 'The object does not exist.');
        this.syncDevices();
        return ok({});
      }
      case 'GET /mappingview':
        return ok(page(q, filtered(q, [...this.views.values()].map((g) => ({ ID: g.id, NAME: g.name, TYPE: 245 })))));
      case 'POST /mappingview':
        return this.createGroup(this.views, body, 245);
      case 'PUT /mappingview/create_associate':
        return this.associate(this.views, body, ['14', '256']);
      case 'GET /mappingview/associate': {
        const key = `${q.get('ASSOCIATEOBJTYPE')}:${q.get('ASSOCIATEOBJID')}`;
        return ok(this.groupsHolding(this.views, key).map((g) => ({ ID: g.id, NAME: g.name, TYPE: 245 })));
      }
      default:
        return this.notImplemented(method, path);
    }
  }

  private notImplemented(method: string, path: string): { status: number; body: unknown } {
    this.unexpected.push(`${method} ${path}`);
    return { status: 404, body: { error: { code: CODE.PARAMETER_INCORRECT, description: 'not implemented by the test fixture' } } };
  }

  private login(body: Record<string, unknown>): { status: number; body: unknown; cookie?: string } {
    if (this.faults.loginError !== undefined) return fail(this.faults.loginError, 'The login was refused.');
    if (body.username !== this.opts.user || body.password !== this.password || body.scope !== '0') {
      return fail(CODE.WRONG_PASSWORD, 'The user name or password is incorrect.');
    }
    const session = randomBytes(16).toString('hex');
    this.sessions.add(session);
    return { status: 200, cookie: session, body: { data: { deviceid: DEVICE_ID, iBaseToken: tokenOf(session), accountstate: 1, level: 2, username: this.opts.user, lockScreenInterval: '0', pwdchangetime: '0', usergroup: '' }, error: { code: 0, description: '0' } } };
  }

  private createSnapshot(body: Record<string, unknown>): { status: number; body: unknown } {
    const name = String(body.NAME ?? '');
    const description = String(body.DESCRIPTION ?? '');
    const lun = this.luns.get(String(body.PARENTID));
    if (String(body.PARENTTYPE) !== '11' || !lun) return fail(CODE.LUN_NOT_EXIST, 'The LUN does not exist.');
    if (name.length < 1 || name.length > MAX_NAME) return fail(CODE.NAME_LENGTH, `The name must contain 1 to ${MAX_NAME} characters.`);
    if (!/^[A-Za-z0-9_.-]+$/.test(name)) return fail(CODE.NAME_INVALID, 'The name contains invalid characters.');
    if (description.length > MAX_DESCRIPTION) return fail(CODE.PARAMETER_INCORRECT, 'The entered parameter is incorrect.');
    if ([...this.snapshots.values()].some((s) => s.name === name)) return fail(CODE.NAME_EXISTS, 'The name already exists.');
    const id = this.id();
    const s: Snapshot = { id, name, description, parentId: lun.id, wwn: wwn('b', id), sectors: 0, active: false, timestamp: Math.floor(Date.now() / 1000), file: join(this.opts.dir, 'snaps', `${id}.img`) };
    this.snapshots.set(id, s);
    return ok(this.snapshotRecord(s));
  }

  private activate(body: Record<string, unknown>): { status: number; body: unknown } {
    const ids = (body.SNAPSHOTLIST as unknown[] | undefined)?.map(String) ?? [];
    if (this.faults.failActivate) {
      this.faults.failActivate = false;
      return fail(CODE.BUSY, 'The system is busy.');
    }
    const snaps = ids.map((i) => this.snapshots.get(i));
    if (ids.length === 0 || snaps.some((s) => !s)) return fail(CODE.SNAPSHOT_NOT_EXIST, 'The snapshot does not exist.');
    // One instant: every copy is made before anything else is served.
    for (const s of snaps as Snapshot[]) {
      const lun = this.luns.get(s.parentId)!;
      copyFileSync(lun.file, s.file);
      s.sectors = Math.ceil(statSync(s.file).size / SECTOR);
      s.active = true;
    }
    this.activations.push(ids);
    const hook = this.afterActivate;
    this.afterActivate = undefined;
    hook?.();
    return ok({});
  }

  private createGroup(groups: Map<string, Group>, body: Record<string, unknown>, type: number): { status: number; body: unknown } {
    const name = String(body.NAME ?? '');
    if (!name) return fail(CODE.PARAMETER_INCORRECT, 'The entered parameter is incorrect.');
    if ([...groups.values()].some((g) => g.name === name)) return fail(CODE.NAME_EXISTS, 'The name already exists.');
    const g = { id: this.id(), name, members: new Set<string>() };
    groups.set(g.id, g);
    return ok({ ID: g.id, NAME: name, TYPE: type });
  }

  private associate(groups: Map<string, Group>, body: Record<string, unknown>, types: string[]): { status: number; body: unknown } {
    const g = groups.get(String(body.ID));
    const type = String(body.ASSOCIATEOBJTYPE);
    const id = String(body.ASSOCIATEOBJID);
    const exists =
      type === '21' ? this.hosts.has(id) : type === '11' ? this.luns.has(id) : type === '27' ? this.snapshots.has(id) : type === '14' ? this.hostGroups.has(id) : type === '256' ? this.lunGroups.has(id) : false;
    if (!g || !types.includes(type) || !exists) return fail(CODE.OBJECT_NOT_EXIST, 'The object does not exist.');
    g.members.add(`${type}:${id}`);
    this.syncDevices();
    return ok({});
  }

  private groupsHolding(groups: Map<string, Group>, key: string): Group[] {
    return [...groups.values()].filter((g) => g.members.has(key));
  }

  /** Makes the devices folder show exactly the active snapshots mapped to the agent's host. */
  private syncDevices(): void {
    const hostId = [...this.hosts].find(([, n]) => n === this.opts.agentHost)?.[0];
    const visible = new Map<string, Snapshot>();
    for (const s of this.snapshots.values()) {
      if (!s.active || hostId === undefined) continue;
      const seen = this.groupsHolding(this.lunGroups, `27:${s.id}`).some((lg) =>
        this.groupsHolding(this.views, `256:${lg.id}`).some((v) => [...v.members].some((k) => k.startsWith('14:') && this.hostGroups.get(k.slice(3))?.members.has(`21:${hostId}`))),
      );
      if (seen) visible.set(`wwn-0x${s.wwn}`, s);
    }
    for (const name of this.deviceFiles()) if (!visible.has(name)) rmSync(join(this.opts.devices, name), { recursive: true, force: true });
    const present = new Set(this.deviceFiles());
    for (const [name, s] of visible) {
      if (present.has(name)) continue;
      if (this.faults.unreadableDevices) mkdirSync(join(this.opts.devices, name));
      else symlinkSync(s.file, join(this.opts.devices, name));
    }
  }

  private lunRecord(l: Lun): Record<string, unknown> {
    const size = statSync(l.file).size;
    return {
      ID: l.id, NAME: l.name, TYPE: 11, WWN: l.wwn, CAPACITY: String(size / SECTOR), SECTORSIZE: String(SECTOR), ALLOCTYPE: '1',
      HEALTHSTATUS: '1', RUNNINGSTATUS: '27', PARENTID: '0', PARENTNAME: 'StoragePool001', DESCRIPTION: '', vstoreId: '0', vstoreName: 'System_vStore',
      SNAPSHOTIDS: JSON.stringify([...this.snapshots.values()].filter((s) => s.parentId === l.id).map((s) => s.id)),
    };
  }

  private snapshotRecord(s: Snapshot): Record<string, unknown> {
    const lun = this.luns.get(s.parentId);
    const sectors = s.active ? s.sectors : lun ? statSync(lun.file).size / SECTOR : 0;
    return {
      ID: s.id, NAME: s.name, TYPE: 27, DESCRIPTION: s.description, PARENTID: s.parentId, PARENTNAME: lun?.name ?? '', PARENTTYPE: 11,
      SOURCELUNID: s.parentId, SOURCELUNNAME: lun?.name ?? '', SOURCELUNCAPACITY: String(sectors), USERCAPACITY: String(sectors),
      WWN: this.faults.badWwnOf !== undefined && this.faults.badWwnOf === lun?.name ? `../../${s.wwn}` : s.wwn, HEALTHSTATUS: '1', RUNNINGSTATUS: s.active ? '43' : '45', TIMESTAMP: String(s.timestamp),
      EXPOSEDTOINITIATOR: String(this.mappedSnapshots().includes(s.id)), snapCgId: '4294967295', snapCgName: '--', vstoreId: '0',
    };
  }
}

function tokenOf(session: string): string {
  return session.split('').reverse().join('');
}

/** A 16-byte NAA-6 WWN as Dorado shows it (32 lower-case hex digits), unique per object. */
function wwn(kind: string, id: string): string {
  return `64cf55b1009769b4${kind}${id.padStart(15, '0')}`;
}

function ok(data: unknown): { status: number; body: unknown } {
  return { status: 200, body: { data, error: { code: 0, description: '0' } } };
}

function fail(code: number, description: string): { status: number; body: unknown } {
  return { status: 200, body: { data: {}, error: { code, description, suggestion: '' } } };
}

/** `filter=FIELD::value` (exact) on the records' fields. */
function filtered(q: URLSearchParams, records: Record<string, unknown>[]): Record<string, unknown>[] {
  const f = q.get('filter');
  if (!f) return records;
  const [field, value] = f.split('::');
  return records.filter((r) => String(r[field]) === value);
}

/** `range=[from-to]`: records from..to-1. */
function page(q: URLSearchParams, records: Record<string, unknown>[]): Record<string, unknown>[] {
  const m = /^\[(\d+)-(\d+)\]$/.exec(q.get('range') ?? '');
  return m ? records.slice(Number(m[1]), Number(m[2])) : records;
}
