import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkServerIdentity, connect, createServer, type PeerCertificate, type Server } from 'node:tls';
import { promisify } from 'node:util';

import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';

import { ManualClock } from '../../shared/clock.js';
import { CairnError, isCairnError, type ErrorCode } from '../../shared/errors.js';
import { ensurePki, fingerprintOf, loadGivenPki, type EnsuredPki } from './certificates.js';

const run = promisify(execFile);
const DAY = 24 * 3600_000;
const names = { hostnames: ['cairn.example.test', 'localhost'], ips: ['127.0.0.1', '::1'] };

async function rejection(promise: Promise<unknown>, code: ErrorCode): Promise<CairnError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(isCairnError(err, code), `expected a CairnError ${code}, got ${String(err)}`).toBe(true);
  return err as CairnError;
}

async function modeOf(path: string): Promise<number> {
  return (await stat(path)).mode & 0o777;
}

async function opensslText(pem: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-pki-text-'));
  try {
    await writeFile(join(dir, 'c.pem'), pem);
    return (await run('openssl', ['x509', '-in', join(dir, 'c.pem'), '-noout', '-text'])).stdout;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Identity of each file (inode, mtime, bytes), to prove that a call rewrote nothing. */
async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const name of (await readdir(dir)).sort()) {
    const info = await stat(join(dir, name));
    out[name] = `${info.ino}:${info.mtimeMs}:${(await readFile(join(dir, name))).toString('base64')}`;
  }
  return out;
}

function daysBetween(from: Date, to: Date): number {
  return Math.round((to.getTime() - from.getTime()) / DAY);
}

/** Mounts a tmpfs with the given options on dir; false when this process may not mount. */
async function mountTmpfs(dir: string, options: string): Promise<boolean> {
  try {
    await run('mount', ['-t', 'tmpfs', '-o', options, 'tmpfs', dir]);
    return true;
  } catch {
    return false;
  }
}

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'cairn-pki-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

let counter = 0;
function freshDir(): string {
  return join(root, `pki-${++counter}`, 'nested');
}

describe('ensurePki at first start', () => {
  let dir: string;
  let pki: EnsuredPki;
  let server: Server;
  let port: number;

  beforeAll(async () => {
    dir = freshDir();
    pki = await ensurePki(dir, names);
    server = createServer({ cert: pki.serverCertPem, key: pki.serverKeyPem }, (socket) => socket.end('hello'));
    await new Promise<void>((resolve) => server.listen(0, '::', resolve));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
  });

  it('creates the CA and server files with private modes and no temp files', async () => {
    expect(pki.action).toBe('created');
    expect(await readdir(dir)).toEqual(['ca.crt', 'ca.key', 'server.crt', 'server.key']);
    expect(await modeOf(dir)).toBe(0o700);
    expect(await modeOf(join(dir, 'ca.key'))).toBe(0o600);
    expect(await modeOf(join(dir, 'server.key'))).toBe(0o600);
    expect(await modeOf(join(dir, 'ca.crt'))).toBe(0o644);
    expect(await modeOf(join(dir, 'server.crt'))).toBe(0o644);
    expect(await readFile(join(dir, 'ca.crt'), 'utf8')).toBe(pki.caCertPem);
    expect(await readFile(join(dir, 'server.key'), 'utf8')).toBe(pki.serverKeyPem);
  });

  it('makes an EC P-256 CA for 10 years with CA:TRUE and keyCertSign', async () => {
    const ca = new X509Certificate(pki.caCertPem);
    expect(ca.ca).toBe(true);
    expect(ca.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(daysBetween(new Date(ca.validFrom), new Date(ca.validTo))).toBe(3650);
    const text = await opensslText(pki.caCertPem);
    expect(text).toMatch(/Basic Constraints: critical\s+CA:TRUE/);
    expect(text).toMatch(/Key Usage: critical\s+Certificate Sign/);
  });

  it('makes a server certificate for 825 days with every name and serverAuth, signed by the CA', async () => {
    const ca = new X509Certificate(pki.caCertPem);
    const cert = new X509Certificate(pki.serverCertPem);
    expect(cert.ca).toBe(false);
    expect(cert.checkIssued(ca) && cert.verify(ca.publicKey)).toBe(true);
    expect(cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(daysBetween(new Date(cert.validFrom), new Date(cert.validTo))).toBe(825);
    expect(cert.subjectAltName).toBe('DNS:cairn.example.test, DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1');
    const text = await opensslText(pki.serverCertPem);
    expect(text).toMatch(/Extended Key Usage:\s+TLS Web Server Authentication\n/);
  });

  it('gives the CA fingerprint as X509Certificate.fingerprint256 in lower-case hex without colons', () => {
    const expected = new X509Certificate(pki.caCertPem).fingerprint256.replaceAll(':', '').toLowerCase();
    expect(pki.caFingerprint).toBe(expected);
    expect(pki.caFingerprint).toMatch(/^[0-9a-f]{64}$/);
  });

  /** Connects trusting only the CA; resolves to the peer certificate, rejects with the TLS error. */
  function tlsConnect(options: { host: string; servername?: string; ca: string }): Promise<PeerCertificate> {
    return new Promise((resolve, reject) => {
      const socket = connect({ port, ...options, checkServerIdentity }, () => {
        const peer = socket.getPeerCertificate();
        socket.on('data', () => {});
        socket.on('end', () => resolve(peer));
      });
      socket.on('error', reject);
    });
  }

  it('serves TLS that a client trusting only the CA accepts, for every host name and IP', async () => {
    for (const hostname of names.hostnames) {
      const peer = await tlsConnect({ host: '127.0.0.1', servername: hostname, ca: pki.caCertPem });
      expect(checkServerIdentity(hostname, peer)).toBeUndefined();
    }
    for (const ip of names.ips) {
      const peer = await tlsConnect({ host: ip, ca: pki.caCertPem });
      expect(checkServerIdentity(ip, peer)).toBeUndefined();
    }
  });

  it('is refused for a name it does not carry and by a client trusting another CA', async () => {
    await expect(tlsConnect({ host: '127.0.0.1', servername: 'other.example.test', ca: pki.caCertPem })).rejects.toMatchObject({
      code: 'ERR_TLS_CERT_ALTNAME_INVALID',
    });
    const other = await ensurePki(freshDir(), { hostnames: ['localhost'], ips: [] });
    expect(other.caFingerprint).not.toBe(pki.caFingerprint);
    await expect(tlsConnect({ host: '127.0.0.1', servername: 'localhost', ca: other.caCertPem })).rejects.toMatchObject({
      code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
    });
  });
});

describe('ensurePki at later starts', () => {
  let dir: string;
  beforeEach(() => {
    dir = freshDir();
  });

  it('loads the files it made and rewrites nothing', async () => {
    const first = await ensurePki(dir, names);
    const before = await snapshot(dir);
    const second = await ensurePki(dir, { hostnames: ['LOCALHOST'], ips: ['::1'] }); // a subset, another spelling
    expect(second.action).toBe('loaded');
    expect(second.caFingerprint).toBe(first.caFingerprint);
    expect(second.serverCertPem).toBe(first.serverCertPem);
    expect(second.serverKeyPem).toBe(first.serverKeyPem);
    expect(await snapshot(dir)).toEqual(before);
  });

  it('re-issues the server certificate for a new host name and keeps the CA', async () => {
    const first = await ensurePki(dir, names);
    const caKey = await readFile(join(dir, 'ca.key'), 'utf8');
    const second = await ensurePki(dir, { hostnames: [...names.hostnames, 'backup.example.test'], ips: names.ips });
    expect(second.action).toBe('reissued');
    expect(second.reason).toContain('backup.example.test');
    expect(second.caCertPem).toBe(first.caCertPem);
    expect(second.caFingerprint).toBe(first.caFingerprint);
    expect(await readFile(join(dir, 'ca.key'), 'utf8')).toBe(caKey);
    expect(second.serverKeyPem).not.toBe(first.serverKeyPem);
    const cert = new X509Certificate(second.serverCertPem);
    expect(cert.checkHost('backup.example.test', { subject: 'never' })).toBe('backup.example.test');
    expect(cert.verify(new X509Certificate(first.caCertPem).publicKey)).toBe(true);
    expect(await readFile(join(dir, 'server.crt'), 'utf8')).toBe(second.serverCertPem);
    expect(await modeOf(join(dir, 'server.key'))).toBe(0o600);
    expect((await ensurePki(dir, { hostnames: ['backup.example.test'], ips: [] })).action).toBe('loaded');
  });

  it('re-issues a server certificate that expires within 30 days', async () => {
    const first = await ensurePki(dir, names, { serverValidityDays: 1 });
    const cert = new X509Certificate(first.serverCertPem);
    expect(daysBetween(new Date(cert.validFrom), new Date(cert.validTo))).toBe(1);
    const second = await ensurePki(dir, names);
    expect(second.action).toBe('reissued');
    expect(second.reason).toMatch(/expires on/);
    expect(second.caFingerprint).toBe(first.caFingerprint);
    const renewed = new X509Certificate(second.serverCertPem);
    expect(daysBetween(new Date(renewed.validFrom), new Date(renewed.validTo))).toBe(825);
  });

  it('re-issues when the clock says the certificate is near its end', async () => {
    const first = await ensurePki(dir, names);
    const validTo = new Date(new X509Certificate(first.serverCertPem).validTo).getTime();
    expect((await ensurePki(dir, names, { clock: new ManualClock(validTo - 31 * DAY) })).action).toBe('loaded');
    const late = await ensurePki(dir, names, { clock: new ManualClock(validTo - 29 * DAY) });
    expect(late.action).toBe('reissued');
    expect(late.caFingerprint).toBe(first.caFingerprint);
  });

  it('re-issues a server certificate whose key is missing or does not match', async () => {
    const first = await ensurePki(dir, names);
    await rm(join(dir, 'server.key'));
    const second = await ensurePki(dir, names);
    expect(second.action).toBe('reissued');
    expect(await readdir(dir)).toEqual(['ca.crt', 'ca.key', 'server.crt', 'server.key']);
    // A crash between the two renames of a re-issue leaves the new key beside the old certificate.
    await writeFile(join(dir, 'server.crt'), first.serverCertPem);
    const third = await ensurePki(dir, names);
    expect(third.action).toBe('reissued');
    expect(third.reason).toContain('does not belong');
    expect(third.caFingerprint).toBe(first.caFingerprint);
  });

  it('removes leftover temp files and makes a new CA when a first start died before ca.crt', async () => {
    await mkdir(dir, { recursive: true, mode: 0o755 });
    await writeFile(join(dir, '.tmp-0011223344556677'), 'half a key');
    await writeFile(join(dir, 'ca.key'), 'a key without a certificate', { mode: 0o600 });
    const pki = await ensurePki(dir, names);
    expect(pki.action).toBe('created');
    expect(await readdir(dir)).toEqual(['ca.crt', 'ca.key', 'server.crt', 'server.key']);
    expect(await modeOf(dir)).toBe(0o700);
  });

  it('never replaces a CA whose key is missing or damaged', async () => {
    await ensurePki(dir, names);
    const caCert = await readFile(join(dir, 'ca.crt'), 'utf8');
    await rm(join(dir, 'ca.key'));
    const err = await rejection(ensurePki(dir, names), 'NOT_FOUND');
    expect(err.message).toContain(join(dir, 'ca.key'));
    expect(err.message).toContain('every agent must enroll again');
    await writeFile(join(dir, 'ca.key'), 'garbage');
    expect((await rejection(ensurePki(dir, names), 'INTERNAL')).message).toContain('not a readable private key');
    expect(await readFile(join(dir, 'ca.crt'), 'utf8')).toBe(caCert);
  });
});

describe('ensurePki errors', () => {
  it('says to install openssl when it is missing', async () => {
    const err = await rejection(ensurePki(freshDir(), names, { openssl: '/nonexistent/openssl' }), 'INTERNAL');
    expect(err.message).toContain('install the Debian package openssl');
  });

  it('rejects host names and IPs a certificate cannot carry', async () => {
    const dir = freshDir();
    expect((await rejection(ensurePki(dir, { hostnames: ['*.example.test'], ips: [] }), 'USAGE')).message).toContain('*.example.test');
    expect((await rejection(ensurePki(dir, { hostnames: ['10.0.0.1'], ips: [] }), 'USAGE')).message).toContain('as an IP');
    expect((await rejection(ensurePki(dir, { hostnames: [], ips: ['10.0.0.300'] }), 'USAGE')).message).toContain('10.0.0.300');
    expect((await rejection(ensurePki(dir, { hostnames: ['bad host'], ips: [] }), 'USAGE')).message).toContain('bad host');
    await rejection(ensurePki(dir, { hostnames: [], ips: [] }), 'USAGE');
  });

  it('fails with PERMISSION_DENIED on a folder it may not write', async () => {
    // Root ignores mode bits, so as root a read-only tmpfs stands in for a folder we may not write.
    const parent = join(root, `readonly-${++counter}`);
    await mkdir(parent);
    let restore: () => Promise<unknown>;
    if (process.getuid?.() !== 0) {
      await chmod(parent, 0o555);
      restore = () => chmod(parent, 0o755);
    } else if (await mountTmpfs(parent, 'ro,size=1m')) {
      restore = () => run('umount', [parent]);
    } else {
      throw new Error('cannot make a read-only folder as root without mount: run as another user or with CAP_SYS_ADMIN');
    }
    try {
      const err = await rejection(ensurePki(join(parent, 'pki'), names), 'PERMISSION_DENIED');
      expect(err.message).toContain(join(parent, 'pki'));
      expect(err.message).toContain('permission denied');
    } finally {
      await restore();
    }
  });
});

describe('loadGivenPki', () => {
  let aDir: string;
  let a: EnsuredPki;
  let b: EnsuredPki;
  let files: string;
  const path = (name: string): string => join(files, name);

  beforeAll(async () => {
    aDir = freshDir();
    a = await ensurePki(aDir, names);
    b = await ensurePki(freshDir(), names);
    files = join(root, 'given');
    await mkdir(files);
    await writeFile(path('server.crt'), a.serverCertPem);
    await writeFile(path('server.key'), a.serverKeyPem);
    await writeFile(path('ca.crt'), a.caCertPem);
    await writeFile(path('other-ca.crt'), b.caCertPem);
    await writeFile(path('other.key'), b.serverKeyPem);
    await writeFile(path('garbage'), 'not a certificate');
  });

  it('loads a matching certificate, key and CA', async () => {
    const given = await loadGivenPki({ certFile: path('server.crt'), keyFile: path('server.key'), caFile: path('ca.crt') });
    expect(given).toEqual({ caCertPem: a.caCertPem, caFingerprint: a.caFingerprint, serverCertPem: a.serverCertPem, serverKeyPem: a.serverKeyPem });
  });

  it('loads a chain through an intermediate CA', async () => {
    // intermediate CA signed by a's CA (openssl), server certificate signed by the intermediate.
    const dir = join(root, 'chain');
    await mkdir(dir);
    const caDir = join(dir, 'ca');
    await mkdir(caDir);
    await writeFile(join(caDir, 'ca.crt'), a.caCertPem);
    const aKey = join(aDir, 'ca.key');
    await writeFile(
      join(dir, 'ext.cnf'),
      '[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = intermediate\n' +
        '[int]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign\n' +
        '[leaf]\nbasicConstraints = CA:FALSE\nsubjectAltName = DNS:localhost\nextendedKeyUsage = serverAuth\n',
    );
    const sh = async (cmd: string): Promise<void> => void (await run('sh', ['-c', cmd], { cwd: dir }));
    await sh('openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out int.key 2>/dev/null');
    await sh(`openssl req -new -key int.key -config ext.cnf | openssl x509 -req -CA ca/ca.crt -CAkey ${aKey} -set_serial 7 -days 30 -extfile ext.cnf -extensions int -out int.crt 2>/dev/null`);
    await sh('openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out leaf.key 2>/dev/null');
    await sh('openssl req -new -key leaf.key -config ext.cnf | openssl x509 -req -CA int.crt -CAkey int.key -set_serial 8 -days 30 -extfile ext.cnf -extensions leaf -out leaf.crt 2>/dev/null');
    await sh('cat leaf.crt int.crt > chain.crt && cat int.crt leaf.crt > reversed.crt');

    const given = await loadGivenPki({ certFile: join(dir, 'chain.crt'), keyFile: join(dir, 'leaf.key'), caFile: path('ca.crt') });
    expect(given.caFingerprint).toBe(a.caFingerprint);
    expect(given.serverCertPem).toBe(await readFile(join(dir, 'chain.crt'), 'utf8'));
    const err = await rejection(loadGivenPki({ certFile: join(dir, 'reversed.crt'), keyFile: join(dir, 'leaf.key'), caFile: path('ca.crt') }), 'USAGE');
    expect(err.message).toContain('does not belong');
  });

  it('rejects bad given files with USAGE naming the file', async () => {
    const cases: Array<[Parameters<typeof loadGivenPki>[0], string]> = [
      [{ certFile: path('server.crt'), keyFile: path('other.key'), caFile: path('ca.crt') }, 'does not belong'],
      [{ certFile: path('server.crt'), keyFile: path('server.key'), caFile: path('other-ca.crt') }, 'is not issued by the CA'],
      [{ certFile: path('missing.crt'), keyFile: path('server.key'), caFile: path('ca.crt') }, 'does not exist'],
      [{ certFile: path('garbage'), keyFile: path('server.key'), caFile: path('ca.crt') }, 'holds no PEM certificate'],
      [{ certFile: path('server.crt'), keyFile: path('garbage'), caFile: path('ca.crt') }, 'not a private key'],
      [{ certFile: path('server.crt'), keyFile: path('server.key'), caFile: path('server.crt') }, 'not a CA certificate'],
    ];
    for (const [given, message] of cases) {
      const err = await rejection(loadGivenPki(given), 'USAGE');
      expect(err.message).toContain(message);
    }
  });

  it('rejects an expired certificate', async () => {
    const validTo = new Date(new X509Certificate(a.serverCertPem).validTo).getTime();
    const given = { certFile: path('server.crt'), keyFile: path('server.key'), caFile: path('ca.crt') };
    const err = await rejection(loadGivenPki(given, { clock: new ManualClock(validTo + 1000) }), 'USAGE');
    expect(err.message).toContain('expired');
  });
});

describe('fingerprintOf', () => {
  it('matches openssl x509 -fingerprint -sha256', async () => {
    const pki = await ensurePki(freshDir(), { hostnames: ['localhost'], ips: [] });
    const dir = await mkdtemp(join(tmpdir(), 'cairn-pki-fp-'));
    try {
      await writeFile(join(dir, 'ca.crt'), pki.caCertPem);
      const { stdout } = await run('openssl', ['x509', '-in', join(dir, 'ca.crt'), '-noout', '-fingerprint', '-sha256']);
      expect(stdout.trim().split('=')[1]!.replaceAll(':', '').toLowerCase()).toBe(fingerprintOf(new X509Certificate(pki.caCertPem)));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
