import { createHash, randomBytes } from 'node:crypto';
import { openSync, closeSync, readFileSync, writeSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { arraySnapshotName, parseDoradoUrl, wwidMatches } from '../agent/source/array/dorado-driver.js';
import { DoradoApiError, DoradoSession } from '../agent/source/array/dorado-rest.js';
import { isCairnError } from '../shared/errors.js';
import { parseThumbprint } from '../shared/net/pinned-https.js';
import { DoradoFixture } from './support/dorado-fixture.js';
import { expectCliError, KiB, MiB, Sandbox, type BackupJson } from './helpers.js';

/**
 * `cairn backup dorado://...` through the real CLI against an HTTPS stand-in of an OceanStor Dorado
 * array (test/support/dorado-fixture.ts): group snapshots activated together, snapshots mapped to the
 * agent's host and read from the device that appears, only the latest snapshot per LUN kept, nothing
 * left behind on failures and bad input. Dorado has no changed-block call, so incrementals compare.
 */
const CHUNK = 64 * KiB; // the vault's default chunk size
const USER = 'cairn-backup';
const PASSWORD = 'S3cret!pw';

let sb: Sandbox;
let array: DoradoFixture;
let vault: string;
let passwordFile: string;

function url(lun: string, params: Record<string, string | undefined> = {}): string {
  const q = new URLSearchParams();
  const all: Record<string, string | undefined> = {
    host: 'backup-proxy',
    'password-file': passwordFile,
    thumbprint: array.thumbprint,
    devices: sb.path('dev-by-id'),
    'device-timeout': '5',
    ...params,
  };
  for (const [k, v] of Object.entries(all)) if (v !== undefined) q.set(k, v);
  return `dorado://${USER}@127.0.0.1:${array.port}/${lun}?${q.toString()}`;
}

function sha(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** Writes `length` random bytes at `offset` of a LUN, as a host would. */
function write(lun: string, offset: number, length: number): void {
  const fd = openSync(array.lunFile(lun), 'r+');
  try {
    writeSync(fd, randomBytes(length), 0, length, offset);
  } finally {
    closeSync(fd);
  }
}

function allSnapshots(): string[] {
  return [...array.snapshots.values()].map((s) => `${s.parentId}:${s.name}`).sort();
}

/** Array names of snapshots as the fixture saw them: legal everywhere and unique on the array. */
function expectShortUniqueNames(): void {
  const names = [...array.snapshots.values()].map((s) => s.name);
  for (const n of names) expect(n).toMatch(/^cairn[0-9a-f]{12}_\d+$/);
  expect(Math.max(...names.map((n) => n.length))).toBeLessThanOrEqual(31);
  expect(new Set(names).size).toBe(names.length);
}

function logins(): number {
  return array.calls.filter((c) => c === 'POST /sessions').length;
}

/** Nothing of a backup run is left on the array: no mapping, no device, no session. */
function expectNothingLeft(): void {
  expect(array.mappedSnapshots()).toEqual([]);
  expect(array.deviceFiles()).toEqual([]);
  expect(array.sessions.size).toBe(0);
  expect(array.unexpected).toEqual([]);
}

async function backup(sources: string[], name: string): Promise<BackupJson> {
  return sb.cairnJson<BackupJson>(['backup', ...sources, '--vault', vault, '--name', name, '--json']);
}

let restores = 0;
async function restoreAll(backupName: string): Promise<string[]> {
  const to = sb.path(`restored-${backupName}-${++restores}`);
  const r = await sb.cairn(['restore', backupName, '--vault', vault, '--to', to]);
  expect(r.code, r.stderr).toBe(0);
  return [sha(join(to, 'disk-0.img')), sha(join(to, 'disk-1.img'))];
}

beforeAll(async () => {
  sb = await Sandbox.create('dorado');
  passwordFile = sb.path('dorado.pw');
  writeFileSync(passwordFile, `${PASSWORD}\n`, { mode: 0o600 });
  array = await DoradoFixture.start({
    dir: sb.path('array'),
    devices: sb.path('dev-by-id'),
    user: USER,
    password: PASSWORD,
    hosts: ['backup-proxy', 'db-server'],
    agentHost: 'backup-proxy',
    luns: [
      { name: 'db-data', size: 8 * MiB },
      { name: 'db-log', size: 4 * MiB },
    ],
  });
  vault = await sb.initVault('vault');
  write('db-data', 0, 3 * MiB);
  write('db-data', 6 * MiB, 512 * KiB);
  write('db-log', MiB, MiB);
});

afterAll(async () => {
  await array?.stop();
  await sb?.cleanup();
});

describe('dorado:// LUNs of an OceanStor Dorado array', () => {
  const tokens: string[] = [];
  const atSnapshot1: string[] = [];
  const atSnapshot2: string[] = [];

  it('refuses an untrusted certificate, then backs up two LUNs from one group snapshot with the certificate pinned', async () => {
    const before = allSnapshots();
    const untrusted = await sb.cairn(['backup', url('db-data', { thumbprint: undefined }), '--vault', vault]);
    expectCliError(untrusted, 'CERT_UNTRUSTED', array.thumbprint, 'thumbprint=');
    const wrongPin = await sb.cairn(['backup', url('db-data', { thumbprint: 'ab'.repeat(32) }), '--vault', vault]);
    expectCliError(wrongPin, 'CERT_UNTRUSTED', 'pinned thumbprint');
    expect(allSnapshots()).toEqual(before);
    expect(array.calls, 'nothing is sent to an untrusted server').toEqual([]);

    // The host keeps writing right after the snapshot: the backup must hold the data of the snapshot's instant.
    atSnapshot1.push(sha(array.lunFile('db-data')), sha(array.lunFile('db-log')));
    array.afterActivate = () => write('db-data', 7 * MiB, CHUNK);

    const b1 = await backup([url('db-data'), url('db-log')], 'b1');
    expect(b1).toMatchObject({ kind: 'full', consistency: 'crash_consistent', warnings: [] });
    expect(b1.disks.map((d) => d.changeDetection)).toEqual(['full', 'full']);
    expect(array.activations, 'both LUNs activated by one call (one instant)').toEqual([[array.snapshotsOf('db-data')[0].id, array.snapshotsOf('db-log')[0].id]]);
    for (const [i, lun] of ['db-data', 'db-log'].entries()) {
      // The change token is the Cairn name, kept in DESCRIPTION; NAME is the array's short one.
      expect(array.snapshotsOf(lun).map((s) => s.description)).toEqual([b1.disks[i].changeToken]);
      expect(array.snapshotsOf(lun).map((s) => s.name)).toEqual([arraySnapshotName(b1.disks[i].changeToken!, array.lunByName(lun).id)]);
      expect(b1.disks[i].changeToken).toMatch(/^cairn-[0-9a-f]{8}-/);
      tokens.push(b1.disks[i].changeToken!);
    }
    expectShortUniqueNames();
    expectNothingLeft();
    expect(sha(array.lunFile('db-data')), 'the LUN changed after the snapshot').not.toBe(atSnapshot1[0]);
    expect(await restoreAll('b1')).toEqual(atSnapshot1);
  });

  it('an incremental finds exactly the changed chunks by comparing, and only its snapshot stays on the array', async () => {
    write('db-data', 2 * CHUNK, CHUNK); // inside the data written before
    write('db-data', 5 * MiB, 2 * CHUNK); // in a hole
    write('db-log', 3 * MiB + CHUNK, 100); // part of one chunk
    atSnapshot2.push(sha(array.lunFile('db-data')), sha(array.lunFile('db-log')));

    const b2 = await backup([url('db-data'), url('db-log')], 'b2');
    expect(b2.kind).toBe('incremental');
    expect(b2.disks.map((d) => d.changeDetection)).toEqual(['compare', 'compare']);
    // db-data: 1 + 2 chunks written now, and the chunk the host wrote just after the first snapshot
    expect(b2.disks.map((d) => d.newChunks)).toEqual([4, 1]);
    expect(b2.warnings.join('\n')).toContain('the array cannot tell the difference between the snapshots');
    expect(array.activations.at(-1)).toHaveLength(2);
    for (const [i, lun] of ['db-data', 'db-log'].entries()) {
      expect(array.snapshotsOf(lun).map((s) => s.description), 'the parent snapshot is deleted after commit').toEqual([b2.disks[i].changeToken]);
      expect(b2.disks[i].changeToken).not.toBe(tokens[i]);
    }
    expectNothingLeft();
    expect(await restoreAll('b2')).toEqual(atSnapshot2);
    expect(await restoreAll('b1')).toEqual(atSnapshot1);
  });

  it('a read failure mid-backup (and a failing unmap) leaves no new snapshot and keeps the parent', async () => {
    const before = allSnapshots();
    array.faults.unreadableDevices = true;
    array.faults.failUnmap = 1;
    const r = await sb.cairn(['backup', url('db-data'), url('db-log'), '--vault', vault, '--name', 'b3']);
    array.faults.unreadableDevices = false;
    expectCliError(r, 'SOURCE_UNREADABLE', 'reading dorado://', 'db-data');
    expect(allSnapshots()).toEqual(before);
    expect(array.faults.failUnmap, 'the injected unmap failure was hit').toBe(0);
    expectNothingLeft();

    array.faults.failActivate = true;
    const r2 = await sb.cairn(['backup', url('db-data'), url('db-log'), '--vault', vault, '--name', 'b3']);
    expectCliError(r2, 'SOURCE_UNREADABLE', '1073793588');
    expect(allSnapshots()).toEqual(before);
    expectNothingLeft();

    // The chain goes on from the kept parent; the array ends the session midway (expiry): the driver logs in again.
    array.afterActivate = () => array.sessions.clear();
    const loginsBefore = logins();
    const b3 = await backup([url('db-data'), url('db-log')], 'b3');
    expect(logins() - loginsBefore, 'one login, and one more after the session ended').toBe(2);
    expect(b3.disks.map((d) => d.changeDetection)).toEqual(['compare', 'compare']);
    expect(b3.disks.map((d) => d.newChunks)).toEqual([0, 0]);
    expectNothingLeft();
  });

  it('opening the second LUN fails (its WWN is not hex digits): it is never mapped or read, no new snapshot stays on either LUN', async () => {
    const before = allSnapshots();
    const callsBefore = array.calls.length;
    array.faults.badWwnOf = 'db-log';
    const r = await sb.cairn(['backup', url('db-data'), url('db-log'), '--vault', vault, '--name', 'bad-wwn']);
    array.faults.badWwnOf = undefined;
    expectCliError(r, 'SOURCE_UNREADABLE', 'db-log', 'not 16 to 32 hex digits', 'not mapping or reading it');
    const run = array.calls.slice(callsBefore);
    expect(run.filter((c) => c === 'POST /lungroup/associate'), 'only db-data was mapped').toHaveLength(1);
    expect(allSnapshots(), 'the parents are kept, the new snapshots are gone').toEqual(before);
    expectNothingLeft();
  });

  it('an unmap that fails once is tried again; one that fails twice leaves a warning naming the mapping, and the next backup removes it', async () => {
    array.faults.failUnmap = 1;
    const b4 = await backup([url('db-data'), url('db-log')], 'b4');
    expect(array.faults.failUnmap).toBe(0);
    expect(b4.warnings.join('\n')).not.toContain('stays mapped');
    expectNothingLeft();

    array.faults.failUnmap = 2;
    const b5 = await backup([url('db-data'), url('db-log')], 'b5');
    expect(array.faults.failUnmap).toBe(0);
    const kept = array.snapshotsOf('db-data')[0];
    expect(kept.description).toBe(b5.disks[0].changeToken);
    expect(array.mappedSnapshots(), "db-data's new snapshot stays mapped").toEqual([kept.id]);
    expect(b5.warnings.join('\n')).toMatch(/snapshot cairn-\S+ of dorado:\/\/\S+\/db-data stays mapped to host 'backup-proxy' \(in the array's LUN group cairn-\d+\)/);
    expect(array.sessions.size).toBe(0);

    const b6 = await backup([url('db-data'), url('db-log')], 'b6');
    expect(b6.warnings.join('\n')).not.toMatch(/stays mapped|not deleted/);
    for (const [i, lun] of ['db-data', 'db-log'].entries()) expect(array.snapshotsOf(lun).map((s) => s.description)).toEqual([b6.disks[i].changeToken]);
    expectShortUniqueNames();
    expectNothingLeft();
  });

  it('the driver: an abort running twice at once, calls after logout fail at once without logging in again', async () => {
    const u = parseDoradoUrl(url('db-data'));
    const driver = await u.connect();
    const volume = await driver.findVolume(u.volume);
    const parents = array.snapshotsOf('db-data').map((s) => s.id);
    const { snapshots } = await driver.snapshotGroup([volume], 'cairn-0000abcd-direct');
    expect((await driver.listSnapshots(volume)).map((s) => s.name)).toContain('cairn-0000abcd-direct');
    const reader = await driver.openSnapshot(volume, snapshots[0]);
    expect(array.mappedSnapshots()).toEqual([snapshots[0].id]);

    const abort = async (): Promise<void> => {
      await reader.close();
      await driver.deleteSnapshot(volume, snapshots[0]);
      await driver.close();
    };
    await Promise.all([abort(), abort()]);
    expect(array.snapshotsOf('db-data').map((s) => s.id)).toEqual(parents);
    expectNothingLeft();

    const loginsBefore = logins();
    const late = await driver.listSnapshots(volume).catch((err: unknown) => err);
    expect(isCairnError(late, 'SOURCE_UNREADABLE') && (late as Error).message).toMatch(/session with the array was ended/);
    expect(logins(), 'no login after logout').toBe(loginsBefore);

    // A call on its way when the session ends: the array answers -401, and it does not log in again.
    const u2 = parseDoradoUrl(url('db-log'));
    const d2 = await u2.connect();
    const v2 = await d2.findVolume(u2.volume);
    const loginsBefore2 = logins();
    array.sessions.clear();
    const inFlight = d2.listSnapshots(v2).catch((err: unknown) => err);
    await d2.close();
    expect(((await inFlight) as Error).message).toMatch(/session with the array was ended/);
    expect(logins()).toBe(loginsBefore2);
    expectNothingLeft();
  });

  it('refused logins are SOURCE_AUTH_FAILED with what to do; the fixture holds names to 31 characters, unique on the array', async () => {
    const endpoint = { host: '127.0.0.1', port: array.port, user: USER, password: PASSWORD, thumbprint: parseThumbprint(array.thumbprint, 'test') };
    for (const [code, advice] of [
      [1077987870, 'check the user and password'],
      [1077949081, 'check the user and password'],
      [1077949061, 'check the user and password'],
      [1077949070, 'the account is locked: unlock it on the array or wait'],
      [1077987871, 'the account is locked: unlock it on the array or wait'],
    ] as const) {
      array.faults.loginError = code;
      const err = await DoradoSession.login(endpoint).catch((e: unknown) => e);
      array.faults.loginError = undefined;
      expect(isCairnError(err, 'SOURCE_AUTH_FAILED'), `code ${code}`).toBe(true);
      expect((err as Error).message).toContain(advice);
      expect((err as Error).message).toContain(String(code));
    }

    const session = await DoradoSession.login(endpoint);
    try {
      const create = (name: string, lun: string): Promise<unknown> =>
        session.post('/snapshot', { TYPE: '27', NAME: name, PARENTTYPE: '11', PARENTID: array.lunByName(lun).id, DESCRIPTION: 'test' });
      const code = (p: Promise<unknown>): Promise<number | undefined> => p.then(() => undefined, (e: unknown) => (e instanceof DoradoApiError ? e.arrayCode : -1));
      expect(await code(create('x'.repeat(32), 'db-data')), 'a 32-character name').toBe(1077949103);
      expect(await code(create('cairn/1234abcd x', 'db-data')), 'only letters, digits, _ - .').toBe(1077949106);
      const existing = array.snapshotsOf('db-log')[0].name;
      expect(await code(create(existing, 'db-data')), "another LUN's snapshot name").toBe(1077948993);
    } finally {
      await session.logout();
    }
    expect([...array.snapshots.values()].filter((s) => s.description === 'test'), 'nothing was created').toEqual([]);

    // The driver's names fit whatever the LUN ID; the identity check of a device compares WWNs as Linux shows them.
    for (const id of ['1', '65535', '4294967295']) expect(arraySnapshotName('cairn-0123abcd-01J9ZZZZZZZZZZZZZZZZZZZZZZ', id)).toMatch(new RegExp(`^cairn[0-9a-f]{8,12}_${id}$`));
    expect(arraySnapshotName('cairn-0123abcd-01J9ZZZZZZZZZZZZZZZZZZZZZZ', '4294967295').length).toBeLessThanOrEqual(31);
    const wwn = '64cf55b1009769b4b00000000000017';
    expect(wwidMatches(`naa.${wwn}\n`, wwn.toUpperCase())).toBe(true);
    expect(wwidMatches(`mpath-3${wwn}`, wwn)).toBe(true);
    expect(wwidMatches(`naa.${wwn.replace(/7$/, '8')}`, wwn)).toBe(false);
    expect(wwidMatches(`t10.HUAWEI  XSG1  ${wwn}`, wwn)).toBe(false);
  });

  it('bad input fails with the right code and leaves nothing behind', async () => {
    const before = allSnapshots();
    const wrongPw = sb.path('wrong.pw');
    writeFileSync(wrongPw, 'nope\n');
    expectCliError(await sb.cairn(['backup', url('db-data', { 'password-file': wrongPw }), '--vault', vault]), 'SOURCE_AUTH_FAILED', USER, '1077987870', 'check the user and password');
    // One connection serves every LUN of an array: a second URL with other parameters is refused.
    const mixed = await sb.cairn(['backup', url('db-data'), url('db-log', { host: 'db-server' }), '--vault', vault]);
    expectCliError(mixed, 'USAGE', "volume 'db-log'", 'other host than the first volume', 'give the same parameters in every URL of one array');
    expectCliError(await sb.cairn(['backup', url('db-nothing'), '--vault', vault]), 'NOT_FOUND', "no LUN named 'db-nothing'", 'db-data, db-log');
    expectCliError(await sb.cairn(['backup', url('db-data', { host: 'no-such-host' }), '--vault', vault]), 'NOT_FOUND', "no host named 'no-such-host'");
    const inUrl = url('db-data').replace(`${USER}@`, `${USER}:${PASSWORD}@`);
    const r = await sb.cairn(['backup', inUrl, '--vault', vault]);
    expectCliError(r, 'USAGE', 'password does not belong in the URL');
    expect(r.stderr).not.toContain(PASSWORD);
    expectCliError(await sb.cairn(['backup', url('db-data', { host: undefined }), '--vault', vault]), 'USAGE', 'host= is missing');
    expectCliError(await sb.cairn(['backup', `dorado://127.0.0.1:${array.port}/db-data?host=x`, '--vault', vault]), 'USAGE', 'no user name');
    expectCliError(await sb.cairn(['backup', url('db-data', { 'password-file': undefined }), '--vault', vault]), 'USAGE', 'CAIRN_DORADO_PASSWORD');
    expect(allSnapshots()).toEqual(before);
    expectNothingLeft();
  });
});
