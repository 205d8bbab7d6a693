import { spawn } from 'node:child_process';
import { createPrivateKey, generateKeyPair, X509Certificate, type KeyObject } from 'node:crypto';
import { chmod, mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { isIP } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';

import { hexId, randomIdSource, systemClock, type Clock, type IdSource } from '../../shared/clock.js';
import { CairnError, fromSystemError } from '../../shared/errors.js';

/**
 * The control plane's TLS identity (README.md in this folder has the trust model).
 *
 * Files in the PKI folder (mode 0700, keys 0600, certificates 0644):
 *   ca.key, ca.crt          the control plane's own CA: EC P-256, 10 years, CA:TRUE, keyCertSign.
 *                           Made once and never replaced: every enrolled agent pins its fingerprint.
 *   server.key, server.crt  the WSS server's key and certificate, signed by the CA: EC P-256, at most
 *                           825 days, a subjectAltName per requested host name and IP, serverAuth.
 *                           Disposable: re-issued (with a new key) whenever it does not fit any more.
 *
 * Contracts:
 * - Each file appears whole or not at all (written to a `.tmp-` file, fsynced, renamed). A pair is
 *   renamed key first, certificate second; a certificate is only trusted after its key is checked
 *   against it, so a crash between the two renames costs a re-issue, never a wrong key.
 * - One process per folder: leftover `.tmp-` files are removed at each start.
 * - Nothing is written when everything loaded fits, so a read-only folder works once it is set up.
 */

export const CA_VALIDITY_DAYS = 3650;
export const SERVER_VALIDITY_DAYS = 825;
/** A server certificate with less than this left is re-issued at start. */
export const REISSUE_BEFORE_MS = 30 * 24 * 3600_000;

const DAY_MS = 24 * 3600_000;
const tempPrefix = '.tmp-';
const files = { caKey: 'ca.key', caCert: 'ca.crt', serverKey: 'server.key', serverCert: 'server.crt' } as const;

/** What a TLS server and the enrollment tokens need. */
export interface Pki {
  caCertPem: string;
  /** SHA-256 of the CA certificate (DER), lower-case hex without colons: what agents pin. */
  caFingerprint: string;
  /** The server certificate (a given one may be followed by intermediates). */
  serverCertPem: string;
  serverKeyPem: string;
}

export interface EnsuredPki extends Pki {
  /** What this start did, for the log: made the CA and server certificate, loaded both, or re-issued the server one. */
  action: 'created' | 'loaded' | 'reissued';
  /** Why the server certificate was re-issued (for action 'reissued'). */
  reason?: string;
}

export interface PkiNames {
  /** DNS names agents use to reach the control plane (lower-cased; no wildcards). */
  hostnames: string[];
  /** IPv4 / IPv6 addresses agents use to reach the control plane. */
  ips: string[];
}

export interface PkiDeps {
  clock?: Clock;
  ids?: IdSource;
  /** The openssl program (default `openssl` on PATH). */
  openssl?: string;
  /** Test hook: validity of a newly issued server certificate in days (default 825). */
  serverValidityDays?: number;
}

/**
 * Loads the CA and server certificate from `dir`, creating what is missing: at first start the CA
 * and a server certificate, later only a server certificate that lacks a requested name, expires
 * within 30 days, is damaged or does not match its key. The CA is never replaced; a CA certificate
 * without its key, or a damaged one, is an error (replacing it would cut off every enrolled agent).
 */
export async function ensurePki(dir: string, names: PkiNames, deps: PkiDeps = {}): Promise<EnsuredPki> {
  const folder = resolve(dir);
  const wanted = checkNames(names);
  const ctx: Context = {
    folder,
    clock: deps.clock ?? systemClock,
    ids: deps.ids ?? randomIdSource,
    openssl: deps.openssl ?? 'openssl',
    serverDays: deps.serverValidityDays ?? SERVER_VALIDITY_DAYS,
  };
  await prepareFolder(folder);

  let action: EnsuredPki['action'] = 'loaded';
  let ca = await loadCa(folder);
  if (ca === undefined) {
    ca = await createCa(ctx);
    action = 'created';
  }

  let reason: string | undefined;
  let server = action === 'created' ? undefined : await loadServer(folder, ca, wanted, ctx.clock.now());
  if (server !== undefined && 'unfit' in server) {
    reason = server.unfit;
    server = undefined;
  }
  if (server === undefined) {
    server = await issueServer(ctx, ca, wanted);
    if (action === 'loaded') action = 'reissued';
  }
  return {
    caCertPem: ca.certPem,
    caFingerprint: fingerprintOf(ca.cert),
    serverCertPem: server.certPem,
    serverKeyPem: server.keyPem,
    action,
    ...(reason === undefined ? {} : { reason }),
  };
}

export interface GivenPkiFiles {
  /** The server certificate in PEM, optionally followed by intermediate CA certificates. */
  certFile: string;
  /** Its private key in PEM, not encrypted. */
  keyFile: string;
  /** The CA agents pin (the first certificate in the file): the issuer of the chain's last certificate. */
  caFile: string;
}

/**
 * Uses certificate files the operator made instead of the control plane's own CA. Checks that the key
 * belongs to the certificate, that the chain leads to the CA and that nothing has expired; any
 * mismatch is a USAGE error naming the file. The files are not copied or changed.
 */
export async function loadGivenPki(given: GivenPkiFiles, deps: { clock?: Clock } = {}): Promise<Pki> {
  const now = (deps.clock ?? systemClock).now();
  const [certText, keyText, caText] = await Promise.all([
    readGiven(given.certFile, 'TLS certificate'),
    readGiven(given.keyFile, 'TLS key'),
    readGiven(given.caFile, 'CA certificate'),
  ]);

  const chain = pemCertificates(certText).map((pem) => parseGiven(pem, given.certFile));
  if (chain.length === 0) throw usage(given.certFile, 'holds no PEM certificate (-----BEGIN CERTIFICATE-----)');
  const caPems = pemCertificates(caText);
  if (caPems.length === 0) throw usage(given.caFile, 'holds no PEM certificate (-----BEGIN CERTIFICATE-----)');
  const caPem = caPems[0]!;
  const ca = parseGiven(caPem, given.caFile);
  if (!ca.ca) throw usage(given.caFile, 'is not a CA certificate (its basicConstraints lack CA:TRUE)');

  let key: KeyObject;
  try {
    key = createPrivateKey(keyText);
  } catch (err) {
    throw usage(given.keyFile, 'is not a private key in PEM without a passphrase', err);
  }
  const leaf = chain[0]!;
  if (!leaf.checkPrivateKey(key)) throw usage(given.keyFile, `does not belong to the certificate in ${given.certFile}`);

  for (let i = 0; i < chain.length; i++) {
    const cert = chain[i]!;
    const issuer = chain[i + 1];
    if (issuer !== undefined && !signedBy(cert, issuer)) {
      throw usage(given.certFile, `certificate ${i + 1} (${cert.subject}) is not signed by certificate ${i + 2}; put the chain in order, server certificate first`);
    }
    if (issuer === undefined && fingerprintOf(cert) !== fingerprintOf(ca) && !signedBy(cert, ca)) {
      throw usage(given.certFile, `is not issued by the CA in ${given.caFile} (${ca.subject})`);
    }
  }
  for (const [cert, file] of [...chain.map((c) => [c, given.certFile] as const), [ca, given.caFile] as const]) {
    if (validTo(cert).getTime() <= now.getTime()) throw usage(file, `holds a certificate that expired on ${validTo(cert).toISOString()} (${cert.subject})`);
  }
  return { caCertPem: caPem, caFingerprint: fingerprintOf(ca), serverCertPem: certText, serverKeyPem: keyText };
}

/** SHA-256 of a certificate (DER), lower-case hex without colons. */
export function fingerprintOf(cert: X509Certificate): string {
  return cert.fingerprint256.replaceAll(':', '').toLowerCase();
}

// ---------------------------------------------------------------------------------------------

interface Context {
  folder: string;
  clock: Clock;
  ids: IdSource;
  openssl: string;
  serverDays: number;
}

interface Loaded {
  cert: X509Certificate;
  certPem: string;
  keyPem: string;
}

const hostnamePattern = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

function checkNames(names: PkiNames): PkiNames {
  const hostnames = [...new Set(names.hostnames.map((h) => h.trim().toLowerCase().replace(/\.$/, '')))];
  const ips = [...new Set(names.ips.map((ip) => ip.trim()))];
  for (const h of hostnames) {
    if (isIP(h)) throw new CairnError('USAGE', `"${h}" is an IP address: give it as an IP, not as a host name, for the server certificate`);
    if (!hostnamePattern.test(h)) {
      throw new CairnError('USAGE', `"${h}" is not a valid host name for the server certificate (letters, digits, hyphens and dots; no wildcards)`);
    }
  }
  for (const ip of ips) {
    if (!isIP(ip)) throw new CairnError('USAGE', `"${ip}" is not an IPv4 or IPv6 address for the server certificate`);
  }
  if (hostnames.length + ips.length === 0) {
    throw new CairnError('USAGE', 'the server certificate needs at least one host name or IP address that agents use to reach the control plane');
  }
  return { hostnames, ips };
}

async function prepareFolder(folder: string): Promise<void> {
  try {
    await makeFolder(folder);
    const info = await stat(folder);
    if (!info.isDirectory()) throw new CairnError('USAGE', `the PKI folder ${folder} is not a folder`);
    // Keys live here: nobody but the owner may list or enter it.
    if ((info.mode & 0o077) !== 0) await chmod(folder, 0o700);
    for (const name of await readdir(folder)) {
      if (name.startsWith(tempPrefix)) await rm(join(folder, name), { force: true });
    }
  } catch (err) {
    throw fromSystemError(err, 'prepare the PKI folder', folder);
  }
}

/**
 * mkdir -p, one level at a time: a recursive mkdir reports ENOENT for a parent it could not make
 * on a read-only file system, where the user needs to read "permission denied".
 */
async function makeFolder(folder: string, mode = 0o700): Promise<void> {
  try {
    await mkdir(folder, { mode });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return;
    if (code !== 'ENOENT' || dirname(folder) === folder) throw err;
    await makeFolder(dirname(folder), 0o755);
    await mkdir(folder, { mode }).catch((again: NodeJS.ErrnoException) => {
      if (again.code !== 'EEXIST') throw again;
    });
  }
}

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw fromSystemError(err, 'read', path);
  }
}

function damaged(path: string, what: string, folder: string, cause?: unknown): CairnError {
  return new CairnError(
    'INTERNAL',
    `${path} ${what}. Restore the PKI folder ${folder} from a backup; deleting it makes a new CA, and then every agent must enroll again`,
    cause === undefined ? {} : { cause },
  );
}

/** The CA, or undefined when there is none yet (no ca.crt: a ca.key alone is a crashed first start). */
async function loadCa(folder: string): Promise<Loaded | undefined> {
  const certPath = join(folder, files.caCert);
  const keyPath = join(folder, files.caKey);
  const certPem = await readOptional(certPath);
  if (certPem === undefined) return undefined;
  const keyPem = await readOptional(keyPath);
  if (keyPem === undefined) {
    throw new CairnError(
      'NOT_FOUND',
      `${keyPath} is missing but ${certPath} exists, so the control plane cannot sign server certificates. ` +
        `Restore ${files.caKey} from a backup; deleting ${certPath} makes a new CA, and then every agent must enroll again`,
    );
  }
  let cert: X509Certificate;
  let key: KeyObject;
  try {
    cert = new X509Certificate(certPem);
  } catch (err) {
    throw damaged(certPath, 'is not a readable certificate', folder, err);
  }
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    throw damaged(keyPath, 'is not a readable private key', folder, err);
  }
  if (!cert.ca) throw damaged(certPath, 'is not a CA certificate', folder);
  if (!cert.checkPrivateKey(key)) throw damaged(keyPath, `does not belong to ${certPath}`, folder);
  return { cert, certPem, keyPem };
}

/** The server certificate if it fits, `{ unfit }` saying why not, or undefined when there is none. */
async function loadServer(folder: string, ca: Loaded, wanted: PkiNames, now: Date): Promise<Loaded | { unfit: string } | undefined> {
  const certPem = await readOptional(join(folder, files.serverCert));
  const keyPem = await readOptional(join(folder, files.serverKey));
  if (certPem === undefined || keyPem === undefined) return undefined;
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
    if (!cert.checkPrivateKey(createPrivateKey(keyPem))) return { unfit: `${files.serverKey} does not belong to ${files.serverCert}` };
  } catch {
    return { unfit: `${files.serverCert} or ${files.serverKey} is damaged` };
  }
  if (!signedBy(cert, ca.cert)) return { unfit: `${files.serverCert} is not signed by ${files.caCert}` };
  for (const h of wanted.hostnames) {
    if (cert.checkHost(h, { subject: 'never', wildcards: false }) === undefined) return { unfit: `it lacks the host name ${h}` };
  }
  for (const ip of wanted.ips) {
    if (cert.checkIP(ip) === undefined) return { unfit: `it lacks the IP address ${ip}` };
  }
  const expires = validTo(cert);
  if (expires.getTime() - now.getTime() < REISSUE_BEFORE_MS) return { unfit: `it expires on ${expires.toISOString()}` };
  return { cert, certPem, keyPem };
}

async function createCa(ctx: Context): Promise<Loaded> {
  const keyPem = await newKeyPem();
  const keyTemp = await writeTemp(ctx, keyPem, 0o600);
  const config = await writeTemp(
    ctx,
    [
      '[req]',
      'distinguished_name = dn',
      'prompt = no',
      'x509_extensions = ca_ext',
      '[dn]',
      // A per-installation name, so operators can tell two control planes' CAs apart.
      `CN = Cairn control plane CA ${hexId(ctx.ids, 4)}`,
      '[ca_ext]',
      'basicConstraints = critical, CA:TRUE',
      'keyUsage = critical, keyCertSign, cRLSign',
      'subjectKeyIdentifier = hash',
      '',
    ].join('\n'),
    0o600,
  );
  try {
    const certPem = await openssl(ctx, [
      'req', '-new', '-x509', '-config', config, '-key', keyTemp, '-sha256',
      '-days', String(CA_VALIDITY_DAYS), '-set_serial', serial(ctx.ids),
    ]);
    const certTemp = await writeTemp(ctx, certPem, 0o644);
    await publish(ctx.folder, keyTemp, files.caKey);
    await publish(ctx.folder, certTemp, files.caCert);
    return { cert: new X509Certificate(certPem), certPem, keyPem };
  } finally {
    await rm(config, { force: true });
    await rm(keyTemp, { force: true });
  }
}

async function issueServer(ctx: Context, ca: Loaded, wanted: PkiNames): Promise<Loaded> {
  const now = ctx.clock.now();
  // The server certificate never outlives the CA: agents would reject it after that anyway.
  const caDaysLeft = Math.floor((validTo(ca.cert).getTime() - now.getTime()) / DAY_MS);
  const days = Math.max(1, Math.min(ctx.serverDays, caDaysLeft));
  const altNames = [...wanted.hostnames.map((h) => `DNS:${h}`), ...wanted.ips.map((ip) => `IP:${ip}`)].join(', ');

  const keyPem = await newKeyPem();
  const keyTemp = await writeTemp(ctx, keyPem, 0o600);
  const config = await writeTemp(
    ctx,
    [
      '[req]',
      'distinguished_name = dn',
      'prompt = no',
      '[dn]',
      // Clients match names against the subjectAltName only; the CN is for people.
      'CN = Cairn control plane',
      '[server_ext]',
      'basicConstraints = critical, CA:FALSE',
      'keyUsage = critical, digitalSignature',
      'extendedKeyUsage = serverAuth',
      `subjectAltName = ${altNames}`,
      'subjectKeyIdentifier = hash',
      'authorityKeyIdentifier = keyid',
      '',
    ].join('\n'),
    0o600,
  );
  try {
    const csr = await openssl(ctx, ['req', '-new', '-config', config, '-key', keyTemp]);
    const certPem = await openssl(
      ctx,
      [
        'x509', '-req', '-CA', join(ctx.folder, files.caCert), '-CAkey', join(ctx.folder, files.caKey),
        '-set_serial', serial(ctx.ids), '-days', String(days), '-sha256',
        '-extfile', config, '-extensions', 'server_ext',
      ],
      csr,
    );
    const certTemp = await writeTemp(ctx, certPem, 0o644);
    await publish(ctx.folder, keyTemp, files.serverKey);
    await publish(ctx.folder, certTemp, files.serverCert);
    return { cert: new X509Certificate(certPem), certPem, keyPem };
  } finally {
    await rm(config, { force: true });
    await rm(keyTemp, { force: true });
  }
}

const generateKeyPairAsync = promisify(generateKeyPair);

async function newKeyPem(): Promise<string> {
  const { privateKey } = await generateKeyPairAsync('ec', { namedCurve: 'P-256' });
  return privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
}

/** A positive 128-bit serial number in openssl's hex notation. */
function serial(ids: IdSource): string {
  const raw = ids.bytes(16);
  raw[0] = (raw[0]! & 0x7f) | 0x01;
  return '0x' + raw.toString('hex');
}

/** Writes a durable temp file in the folder with the given mode; returns its path. */
async function writeTemp(ctx: Context, text: string, mode: number): Promise<string> {
  const path = join(ctx.folder, tempPrefix + hexId(ctx.ids, 8));
  try {
    const handle = await open(path, 'wx', mode);
    try {
      await handle.writeFile(text);
      await handle.sync();
    } finally {
      await handle.close();
    }
    return path;
  } catch (err) {
    await rm(path, { force: true });
    throw fromSystemError(err, 'write to the PKI folder', ctx.folder);
  }
}

async function publish(folder: string, temp: string, name: string): Promise<void> {
  try {
    await rename(temp, join(folder, name));
    const handle = await open(folder, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch (err) {
    throw fromSystemError(err, `write ${name}`, folder);
  }
}

/** Runs openssl with the arguments (and optional stdin); resolves to its stdout. */
function openssl(ctx: Context, args: string[], input?: string): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(ctx.openssl, args, { stdio: ['pipe', 'pipe', 'pipe'], timeout: 60_000 });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.stdin.on('error', () => {}); // an early exit is reported below
    child.on('error', (cause: NodeJS.ErrnoException) => {
      reject(
        cause.code === 'ENOENT'
          ? new CairnError(
              'INTERNAL',
              `the openssl program (${ctx.openssl}) was not found; the control plane needs it to make its certificates: ` +
                'install the Debian package openssl (apt-get install openssl)',
              { cause },
            )
          : new CairnError('INTERNAL', `cannot run ${ctx.openssl}: ${cause.message}`, { cause }),
      );
    });
    child.on('close', (code, signal) => {
      if (code === 0) return resolvePromise(Buffer.concat(out).toString('utf8'));
      const detail = Buffer.concat(err).toString('utf8').trim().split('\n').slice(0, 5).join('; ');
      reject(new CairnError('INTERNAL', `openssl ${args[0]} failed (${signal ?? `exit ${code}`}) in ${ctx.folder}: ${detail}`));
    });
    child.stdin.end(input ?? '');
  });
}

function signedBy(cert: X509Certificate, issuer: X509Certificate): boolean {
  return cert.checkIssued(issuer) && cert.verify(issuer.publicKey);
}

function validTo(cert: X509Certificate): Date {
  return new Date(cert.validTo);
}

function pemCertificates(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)?.map((pem) => pem + '\n') ?? [];
}

function parseGiven(pem: string, file: string): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch (err) {
    throw usage(file, 'holds a damaged certificate', err);
  }
}

async function readGiven(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'EISDIR') {
      throw new CairnError('USAGE', `the ${what} file ${path} ${code === 'ENOENT' ? 'does not exist' : 'is a folder'}`, { cause: err });
    }
    throw fromSystemError(err, `read the ${what} file`, path);
  }
}

function usage(file: string, what: string, cause?: unknown): CairnError {
  return new CairnError('USAGE', `${file} ${what}`, cause === undefined ? {} : { cause });
}
