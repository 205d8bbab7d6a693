import { createHash, randomBytes } from 'node:crypto';
import { openSync, closeSync, readFileSync, writeSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DoradoFixture } from './support/dorado-fixture.js';
import { expectCliError, KiB, MiB, Sandbox } from './helpers.js';

/**
 * `cairn backup dorado://...` through the real CLI against an HTTPS stand-in of an OceanStor Dorado
 * array (test/support/dorado-fixture.ts): group snapshots activated together, snapshots mapped to the
 * agent's host and read from the device that appears, only the latest snapshot per LUN kept, nothing
 * left behind on failures and bad input. Dorado has no changed-block call, so incrementals compare.
 */
const CHUNK = 64 * KiB; // the vault's default chunk size
const USER = 'cairn-backup';
const PASSWORD = 'S3cret!pw';

interface DiskJson {
  changeDetection: string;
  changeToken?: string;
  newChunks: number;
  bytesRead: number;
}
interface BackupJson {
  id: string;
  kind: string;
  consistency: string;
  warnings: string[];
  disks: DiskJson[];
}

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
      expect(array.snapshotsOf(lun).map((s) => s.name)).toEqual([b1.disks[i].changeToken]);
      expect(b1.disks[i].changeToken).toMatch(/^cairn-[0-9a-f]{8}-/);
      tokens.push(b1.disks[i].changeToken!);
    }
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
      expect(array.snapshotsOf(lun).map((s) => s.name), 'the parent snapshot is deleted after commit').toEqual([b2.disks[i].changeToken]);
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
    const logins = (): number => array.calls.filter((c) => c === 'POST /sessions').length;
    const loginsBefore = logins();
    const b3 = await backup([url('db-data'), url('db-log')], 'b3');
    expect(logins() - loginsBefore, 'one login, and one more after the session ended').toBe(2);
    expect(b3.disks.map((d) => d.changeDetection)).toEqual(['compare', 'compare']);
    expect(b3.disks.map((d) => d.newChunks)).toEqual([0, 0]);
    expectNothingLeft();
  });

  it('bad input fails with the right code and leaves nothing behind', async () => {
    const before = allSnapshots();
    const wrongPw = sb.path('wrong.pw');
    writeFileSync(wrongPw, 'nope\n');
    expectCliError(await sb.cairn(['backup', url('db-data', { 'password-file': wrongPw }), '--vault', vault]), 'SOURCE_AUTH_FAILED', USER, '1077987870');
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
