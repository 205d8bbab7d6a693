import { setTimeout as sleep } from 'node:timers/promises';
import { CairnError } from '../../../shared/errors.js';
import { moRefXml, parseMoRef, SoapClient, VimFault, type MoRef, type SoapEndpoint } from './soap-client.js';
import { child, childrenNamed, childText, escapeXml, type XmlElement } from './xml.js';

/**
 * The vSphere methods Cairn's vmware source uses, over SoapClient: a session (Login/Logout), finding
 * a VM, reading its properties with the PropertyCollector, reconfiguring it (change tracking), its
 * snapshots (create, remove, wait for the task), QueryChangedDiskAreas, and reading datastore files.
 *
 * The session: vCenter ends a session idle for 30 minutes (by default), and a backup can spend hours
 * reading without a SOAP call; `keepAlive` asks the time now and then while a snapshot is held, and a
 * call refused with NotAuthenticated logs in again once (same credentials) and is retried, so the
 * snapshot can still be removed after the session was dropped.
 *
 * Faults are translated here, at the edge: InvalidLogin -> SOURCE_AUTH_FAILED, NotAuthenticated (after
 * the one new login) -> SOURCE_AUTH_FAILED saying the session ended,
 * NoPermission -> SOURCE_AUTH_FAILED naming the privilege, ManagedObjectNotFound -> NOT_FOUND; the rest
 * becomes SOURCE_UNREADABLE naming the method and the fault. Callers that act on particular faults
 * (QueryChangedDiskAreas on a reset tracker, a quiesce that failed) get the VimFault itself from the
 * methods documented to throw it.
 */

export interface VmDisk {
  /** Device key, stable for the life of the disk in the VM. */
  key: number;
  label: string;
  /** Datastore path of the disk's descriptor: `[DATASTORE] folder/name.vmdk`. */
  fileName: string;
  capacity: number;
  /** The backing's data object type, e.g. VirtualDiskFlatVer2BackingInfo, VirtualDiskRawDiskMappingVer1BackingInfo. */
  backing: string;
  /** persistent, independent_persistent, independent_nonpersistent, ... */
  diskMode: string | undefined;
  /** RDM only: physicalMode or virtualMode. */
  compatibilityMode: string | undefined;
  /** The changed-block tracking id of the disk in this configuration (`<cbt uuid>/<sequence>`), if tracked. */
  changeId: string | undefined;
}

export interface SnapshotNode {
  snapshot: MoRef;
  name: string;
  description: string;
  /** When the snapshot was made (ms since the epoch); NaN when the server did not say. */
  createTime: number;
  quiesced: boolean;
  children: SnapshotNode[];
}

export interface VmInfo {
  ref: MoRef;
  name: string;
  instanceUuid: string;
  changeTracking: boolean;
  /** runtime.powerState: poweredOn, poweredOff or suspended. */
  powerState: string;
  disks: VmDisk[];
  snapshots: SnapshotNode[];
}

export interface DiskChangeInfo {
  startOffset: number;
  length: number;
  areas: { start: number; length: number }[];
}

export interface Credentials {
  user: string;
  password: string;
}

interface ServiceContent {
  propertyCollector: MoRef;
  sessionManager: MoRef;
  searchIndex: MoRef;
  viewManager: MoRef;
  rootFolder: MoRef;
}

const SERVICE_INSTANCE: MoRef = { type: 'ServiceInstance', value: 'ServiceInstance' };

/** How often a held session is used while nothing else talks to vCenter (its default idle timeout is 30 min). */
const KEEPALIVE_MS = 10 * 60_000;

export class VsphereClient {
  private loggedIn = false;
  /** logout() was called: a session vCenter dropped is not logged in again (nor one that came back during logout). */
  private closed = false;
  private keepAliveTimer: NodeJS.Timeout | undefined;
  private reloginPending: Promise<void> | undefined;

  private constructor(
    readonly soap: SoapClient,
    private readonly content: ServiceContent,
    private readonly creds: Credentials,
  ) {}

  get what(): string {
    return this.soap.what;
  }

  /** Connects and logs in. SOURCE_AUTH_FAILED for refused credentials, CERT_UNTRUSTED for an untrusted certificate. */
  static async login(endpoint: SoapEndpoint, creds: Credentials): Promise<VsphereClient> {
    const soap = new SoapClient(endpoint);
    try {
      const res = await soap.call('RetrieveServiceContent', SERVICE_INSTANCE).catch((err: unknown) => {
        throw translate(err, soap.what, 'RetrieveServiceContent');
      });
      const rv = child(res, 'returnval');
      const ref = (name: string): MoRef => {
        const r = parseMoRef(child(rv, name));
        if (!r) throw new CairnError('SOURCE_UNREADABLE', `${soap.what} has no ${name} in its service content; is this vCenter or ESXi?`);
        return r;
      };
      const content = { propertyCollector: ref('propertyCollector'), sessionManager: ref('sessionManager'), searchIndex: ref('searchIndex'), viewManager: ref('viewManager'), rootFolder: ref('rootFolder') };
      const client = new VsphereClient(soap, content, creds);
      await client.sessionLogin();
      return client;
    } catch (err) {
      soap.close();
      throw err;
    }
  }

  private async sessionLogin(): Promise<void> {
    const { user, password } = this.creds;
    await this.soap.call('Login', this.content.sessionManager, `<userName>${escapeXml(user)}</userName><password>${escapeXml(password)}</password>`).catch((err: unknown) => {
      if (err instanceof VimFault && err.faultType === 'InvalidLogin') {
        throw new CairnError('SOURCE_AUTH_FAILED', `${this.what} refused the login of '${user}' (InvalidLogin): check the user name and the password in password-file= or CAIRN_VSPHERE_PASSWORD`);
      }
      throw translate(err, this.what, 'Login');
    });
    this.loggedIn = true;
    if (this.closed) await this.logout(); // logout() ran while this Login was under way
  }

  /**
   * Keeps the session from expiring while `on` (CurrentTime every 10 minutes; failures are ignored, the
   * next call logs in again). Idempotent; logout stops it.
   */
  keepAlive(on: boolean): void {
    if (!on || !this.loggedIn) {
      clearInterval(this.keepAliveTimer);
      this.keepAliveTimer = undefined;
      return;
    }
    this.keepAliveTimer ??= setInterval(() => void this.call('CurrentTime', SERVICE_INSTANCE).catch(() => undefined), KEEPALIVE_MS).unref();
  }

  /** Ends the session and closes the connections. Never throws. */
  async logout(): Promise<void> {
    this.closed = true;
    this.keepAlive(false);
    if (this.loggedIn) {
      this.loggedIn = false;
      await this.soap.call('Logout', this.content.sessionManager).catch(() => undefined);
    }
    this.soap.close();
  }

  /** The VM by managed object id (vm-NN), instance UUID or name; NOT_FOUND saying how it was looked for. */
  async findVm(spec: string): Promise<MoRef> {
    if (/^vm-\d+$/.test(spec)) {
      const ref = { type: 'VirtualMachine', value: spec };
      const props = await this.properties(ref, ['name']).catch((err: unknown) => {
        if (err instanceof CairnError && err.code === 'NOT_FOUND') throw new CairnError('NOT_FOUND', `${this.what} has no virtual machine with id ${spec}`);
        throw err;
      });
      if (!props.has('name')) throw new CairnError('NOT_FOUND', `${this.what} has no virtual machine with id ${spec}`);
      return ref;
    }
    if (/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(spec)) {
      const res = await this.invoke('FindByUuid', this.content.searchIndex, `<uuid>${escapeXml(spec.toLowerCase())}</uuid><vmSearch>true</vmSearch><instanceUuid>true</instanceUuid>`);
      const ref = parseMoRef(child(res, 'returnval'));
      if (!ref) throw new CairnError('NOT_FOUND', `${this.what} has no virtual machine with instance UUID ${spec}`);
      return ref;
    }
    const matches = (await this.listVms()).filter((v) => v.name === spec);
    if (matches.length === 0) {
      throw new CairnError('NOT_FOUND', `${this.what} has no virtual machine named '${spec}' that ${this.creds.user} can see; name it by its name, its id (vm-NN) or its instance UUID`);
    }
    if (matches.length > 1) {
      throw new CairnError('USAGE', `${this.what} has ${matches.length} virtual machines named '${spec}' (${matches.map((m) => m.ref.value).join(', ')}); name the one to back up by its id (vm-NN) or instance UUID`);
    }
    return matches[0]!.ref;
  }

  /** Every VM the user can see, with its name. */
  async listVms(): Promise<{ ref: MoRef; name: string }[]> {
    const view = parseMoRef(
      child(
        await this.invoke('CreateContainerView', this.content.viewManager, `${moRefXml('container', this.content.rootFolder)}<type>VirtualMachine</type><recursive>true</recursive>`),
        'returnval',
      ),
    )!;
    try {
      const spec =
        '<specSet><propSet><type>VirtualMachine</type><pathSet>name</pathSet></propSet>' +
        `<objectSet>${moRefXml('obj', view)}<skip>true</skip><selectSet xsi:type="TraversalSpec"><name>view</name><type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet></specSet>`;
      const out: { ref: MoRef; name: string }[] = [];
      let res = child(await this.invoke('RetrievePropertiesEx', this.content.propertyCollector, `${spec}<options/>`), 'returnval');
      for (;;) {
        for (const o of childrenNamed(res, 'objects')) {
          const name = childrenNamed(o, 'propSet').find((p) => childText(p, 'name') === 'name');
          out.push({ ref: parseMoRef(child(o, 'obj'))!, name: child(name, 'val')?.text ?? '' });
        }
        const token = childText(res, 'token');
        if (!token) break;
        res = child(await this.invoke('ContinueRetrievePropertiesEx', this.content.propertyCollector, `<token>${escapeXml(token)}</token>`), 'returnval');
      }
      return out;
    } finally {
      await this.call('DestroyView', view).catch(() => undefined);
    }
  }

  /** Values of `paths` of one object (paths that are unset are missing from the map). NOT_FOUND when the object does not exist. */
  async properties(obj: MoRef, paths: string[]): Promise<Map<string, XmlElement>> {
    const spec =
      `<specSet><propSet><type>${escapeXml(obj.type)}</type>${paths.map((p) => `<pathSet>${escapeXml(p)}</pathSet>`).join('')}</propSet>` +
      `<objectSet>${moRefXml('obj', obj)}<skip>false</skip></objectSet></specSet><options/>`;
    let res = await this.invoke('RetrievePropertiesEx', this.content.propertyCollector, spec);
    // A property collector may answer a dropped session per property (missingSet) instead of with a fault.
    const notAuthenticated = (r: XmlElement): boolean =>
      childrenNamed(child(r, 'returnval'), 'objects').some((o) => childrenNamed(o, 'missingSet').some((m) => child(child(m, 'fault'), 'fault')?.type === 'NotAuthenticated'));
    if (notAuthenticated(res) && !this.closed) {
      await this.relogin();
      res = await this.invoke('RetrievePropertiesEx', this.content.propertyCollector, spec);
    }
    const out = new Map<string, XmlElement>();
    for (const o of childrenNamed(child(res, 'returnval'), 'objects')) {
      for (const p of childrenNamed(o, 'propSet')) {
        const val = child(p, 'val');
        if (val) out.set(childText(p, 'name') ?? '', val);
      }
      for (const missing of childrenNamed(o, 'missingSet')) {
        const fault = child(child(missing, 'fault'), 'fault');
        if (fault?.type === 'ManagedObjectNotFound') throw new CairnError('NOT_FOUND', `${obj.type} ${obj.value} does not exist on ${this.what}`);
        if (fault?.type === 'NotAuthenticated') throw translate(new VimFault('RetrievePropertiesEx', 'NotAuthenticated', '', fault), this.what, 'RetrievePropertiesEx');
      }
    }
    return out;
  }

  async vmInfo(vm: MoRef): Promise<VmInfo> {
    const p = await this.properties(vm, ['name', 'config.instanceUuid', 'config.changeTrackingEnabled', 'config.hardware.device', 'runtime.powerState', 'snapshot']);
    if (!p.has('name')) throw new CairnError('NOT_FOUND', `virtual machine ${vm.value} does not exist on ${this.what}`);
    return {
      ref: vm,
      name: p.get('name')!.text,
      instanceUuid: p.get('config.instanceUuid')?.text.trim() ?? '',
      changeTracking: p.get('config.changeTrackingEnabled')?.text.trim() === 'true',
      powerState: p.get('runtime.powerState')?.text.trim() ?? 'poweredOn',
      disks: parseDisks(p.get('config.hardware.device')),
      snapshots: childrenNamed(p.get('snapshot'), 'rootSnapshotList').map(parseSnapshotTree),
    };
  }

  /** The VM's disks as a snapshot of it has them (the frozen files and their changeIds). */
  async snapshotDisks(snapshot: MoRef): Promise<VmDisk[]> {
    const p = await this.properties(snapshot, ['config.hardware.device']);
    return parseDisks(p.get('config.hardware.device'));
  }

  /** ReconfigVM_Task with the VirtualMachineConfigSpec `specXml` (its inner XML), waited for. */
  async reconfigure(vm: MoRef, specXml: string): Promise<void> {
    await this.waitTask(await this.invokeTask('ReconfigVM_Task', vm, `<spec>${specXml}</spec>`), 'ReconfigVM_Task');
  }

  /**
   * CreateSnapshot_Task (disk only, no memory), waited for; returns the snapshot. A failed task throws its
   * VimFault (ApplicationQuiesceFault, ...), so the caller can retry without quiescing.
   */
  async createSnapshot(vm: MoRef, name: string, description: string, quiesce: boolean): Promise<MoRef> {
    const task = await this.invokeTask(
      'CreateSnapshot_Task',
      vm,
      `<name>${escapeXml(name)}</name><description>${escapeXml(description)}</description><memory>false</memory><quiesce>${quiesce}</quiesce>`,
    );
    const result = await this.waitTask(task, 'CreateSnapshot_Task', true);
    const ref = parseMoRef(result);
    if (!ref) throw new CairnError('SOURCE_UNREADABLE', `${this.what}: CreateSnapshot_Task succeeded but named no snapshot`);
    return ref;
  }

  /** RemoveSnapshot_Task (consolidating, children kept), waited for. */
  async removeSnapshot(snapshot: MoRef): Promise<void> {
    await this.waitTask(await this.invokeTask('RemoveSnapshot_Task', snapshot, '<removeChildren>false</removeChildren><consolidate>true</consolidate>'), 'RemoveSnapshot_Task');
  }

  /**
   * One page of QueryChangedDiskAreas: the areas of disk `deviceKey` at `snapshot` changed since
   * `changeId` ('*': areas in use), from `startOffset` on. Throws the VimFault when vSphere refuses
   * the changeId (FileFault, InvalidArgument: tracking was reset).
   */
  async queryChangedDiskAreas(vm: MoRef, snapshot: MoRef, deviceKey: number, startOffset: number, changeId: string): Promise<DiskChangeInfo> {
    const res = await this.call(
      'QueryChangedDiskAreas',
      vm,
      `${moRefXml('snapshot', snapshot)}<deviceKey>${deviceKey}</deviceKey><startOffset>${startOffset}</startOffset><changeId>${escapeXml(changeId)}</changeId>`,
    );
    const rv = child(res, 'returnval');
    return {
      startOffset: Number(childText(rv, 'startOffset')),
      length: Number(childText(rv, 'length')),
      areas: childrenNamed(rv, 'changedArea').map((a) => ({ start: Number(childText(a, 'start')), length: Number(childText(a, 'length')) })),
    };
  }

  /**
   * The inventory path of the VM's datacenter (folders and name), as dcPath= of datastore file access
   * wants it. A VM in a vApp has no parent folder: its parentVApp leads up (through resource pools and
   * its cluster or host) to the datacenter.
   */
  async datacenterPath(vm: MoRef): Promise<string> {
    const names: string[] = [];
    let at: MoRef | undefined = vm;
    let inDatacenter = false;
    while (at && at.value !== this.content.rootFolder.value) {
      const p = await this.properties(at, at.type === 'VirtualMachine' ? ['parent', 'parentVApp', 'name'] : ['parent', 'name']);
      if (at.type === 'Datacenter') inDatacenter = true;
      if (inDatacenter) names.unshift(p.get('name')?.text ?? '');
      at = parseMoRef(p.get('parent') ?? p.get('parentVApp'));
    }
    if (!inDatacenter) throw new CairnError('SOURCE_UNREADABLE', `virtual machine ${vm.value} on ${this.what} is in no datacenter`);
    return names.join('/');
  }

  /** Calls a method, translating faults (see the class comment). */
  async invoke(method: string, self: MoRef, params = ''): Promise<XmlElement> {
    return this.call(method, self, params).catch((err: unknown) => {
      throw translate(err, this.what, method);
    });
  }

  /**
   * soap.call, except that a session vCenter dropped (NotAuthenticated) is logged in again once and
   * the call retried; faults are thrown as VimFault.
   */
  private async call(method: string, self: MoRef, params = ''): Promise<XmlElement> {
    try {
      return await this.soap.call(method, self, params);
    } catch (err) {
      if (!(err instanceof VimFault && err.faultType === 'NotAuthenticated' && !this.closed)) throw err;
      await this.relogin().catch(() => {
        throw err;
      });
      return this.soap.call(method, self, params);
    }
  }

  /** One new Login for calls that found the session gone at the same time. */
  private relogin(): Promise<void> {
    if (this.closed) return Promise.reject(new CairnError('SOURCE_UNREADABLE', `${this.what}: the session was ended`));
    this.loggedIn = false;
    this.reloginPending ??= this.sessionLogin().finally(() => (this.reloginPending = undefined));
    return this.reloginPending;
  }

  private async invokeTask(method: string, self: MoRef, params: string): Promise<MoRef> {
    const task = parseMoRef(child(await this.invoke(method, self, params), 'returnval'));
    if (!task) throw new CairnError('SOURCE_UNREADABLE', `${this.what}: ${method} returned no task`);
    return task;
  }

  /** Polls the task until it ends; returns its result. A failed task throws its fault translated, or as VimFault when `rawFault`. */
  private async waitTask(task: MoRef, method: string, rawFault = false): Promise<XmlElement | undefined> {
    for (let delay = 50; ; delay = Math.min(delay * 2, 1000)) {
      const info = (await this.properties(task, ['info'])).get('info');
      const state = childText(info, 'state');
      if (state === 'success') return child(info, 'result');
      if (state === 'error') {
        const error = child(info, 'error');
        const fault = new VimFault(method, child(error, 'fault')?.type ?? 'SystemError', childText(error, 'localizedMessage') ?? '', child(error, 'fault'));
        throw rawFault ? fault : translate(fault, this.what, method);
      }
      await sleep(delay);
    }
  }
}

/** Maps a fault to a CairnError (see the class comment); CairnErrors pass through. */
export function translate(err: unknown, what: string, method: string): unknown {
  if (!(err instanceof VimFault)) return err;
  switch (err.faultType) {
    case 'InvalidLogin':
      return new CairnError('SOURCE_AUTH_FAILED', `${what}: ${method} was refused (InvalidLogin): check the user name and the password`, { cause: err });
    case 'NotAuthenticated':
      return new CairnError('SOURCE_AUTH_FAILED', `${what}: ${method} was refused (${err.faultType}): the session ended (vCenter ends sessions idle for 30 minutes, or an administrator ended it) and logging in again failed`, { cause: err });
    case 'NoPermission':
      return new CairnError(
        'SOURCE_AUTH_FAILED',
        `${what}: ${method} needs a privilege the user lacks (${childText(err.detail, 'privilegeId') ?? 'NoPermission'}); give the backup user the VM snapshot, configuration (change tracking) and datastore browse privileges`,
        { cause: err },
      );
    case 'ManagedObjectNotFound':
      return new CairnError('NOT_FOUND', `${what}: ${method}: the object does not exist (any more)`, { cause: err });
    default:
      return new CairnError('SOURCE_UNREADABLE', `${what}: ${method} failed: ${err.faultType}${err.text ? ` (${err.text})` : ''}`, { cause: err });
  }
}

function parseDisks(devices: XmlElement | undefined): VmDisk[] {
  const out: VmDisk[] = [];
  for (const d of devices?.children ?? []) {
    if (d.type !== 'VirtualDisk') continue;
    const backing = child(d, 'backing');
    const kb = childText(d, 'capacityInKB');
    const bytes = childText(d, 'capacityInBytes');
    out.push({
      key: Number(childText(d, 'key')),
      label: childText(child(d, 'deviceInfo'), 'label') ?? `disk ${childText(d, 'key')}`,
      fileName: childText(backing, 'fileName') ?? '',
      capacity: bytes !== undefined && Number(bytes) > 0 ? Number(bytes) : Number(kb ?? 0) * 1024,
      backing: backing?.type ?? 'unknown',
      diskMode: childText(backing, 'diskMode'),
      compatibilityMode: childText(backing, 'compatibilityMode'),
      changeId: childText(backing, 'changeId') || undefined,
    });
  }
  return out;
}

function parseSnapshotTree(el: XmlElement): SnapshotNode {
  return {
    snapshot: parseMoRef(child(el, 'snapshot'))!,
    name: childText(el, 'name') ?? '',
    description: childText(el, 'description') ?? '',
    createTime: Date.parse(childText(el, 'createTime') ?? ''),
    quiesced: childText(el, 'quiesced') === 'true',
    children: childrenNamed(el, 'childSnapshotList').map(parseSnapshotTree),
  };
}

/** Every snapshot in the trees, depth first. */
export function allSnapshots(trees: SnapshotNode[]): SnapshotNode[] {
  return trees.flatMap((t) => [t, ...allSnapshots(t.children)]);
}

/** `[DATASTORE] folder/file` -> its parts; undefined when the path is not in that form. */
export function parseDatastorePath(path: string): { datastore: string; path: string } | undefined {
  const m = /^\[([^\]]+)\]\s*(.*)$/.exec(path);
  return m ? { datastore: m[1]!, path: m[2]! } : undefined;
}
