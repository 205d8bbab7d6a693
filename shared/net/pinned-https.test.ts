import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, get, type Agent, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isCairnError } from '../errors.js';
import { isTlsTrustError, parseThumbprint, thumbprintsOf, trustedAgent, untrustedCertificate } from './pinned-https.js';

/** A real HTTPS server with a self-signed certificate, as vCenter and arrays ship them. */
let server: Server;
let port: number;
let cert: X509Certificate;
let requests = 0;
const dir = mkdtempSync(join(tmpdir(), 'cairn-pin-'));

beforeAll(async () => {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', '/CN=array.example',
    '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' });
  const pem = readFileSync(join(dir, 'cert.pem'));
  cert = new X509Certificate(pem);
  server = createServer({ key: readFileSync(join(dir, 'key.pem')), cert: pem }, (_req, res) => {
    requests++;
    res.end('hello');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
});

afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
  rmSync(dir, { recursive: true, force: true });
});

function fetchWith(agent: Agent): Promise<string> {
  return new Promise((resolve, reject) => {
    get({ host: '127.0.0.1', port, path: '/', agent }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

describe('pinned HTTPS', () => {
  it('refuses a self-signed certificate by default and names its thumbprints', async () => {
    const agent = trustedAgent({ what: 'the test array' });
    const err = await fetchWith(agent).catch((e: unknown) => e);
    agent.destroy();
    expect(isTlsTrustError(err)).toBe(true);
    const translated = await untrustedCertificate(err, '127.0.0.1', port, 'the test array', 'thumbprint=...');
    expect(translated.code).toBe('CERT_UNTRUSTED');
    expect(translated.message).toContain(thumbprintsOf(cert.raw).sha256);
    expect(translated.message).toContain('thumbprint=...');
  });

  it('trusts exactly the pinned certificate, by SHA-1 or SHA-256, and sends nothing to another', async () => {
    const prints = thumbprintsOf(cert.raw);
    for (const pin of [prints.sha1, prints.sha256.toLowerCase().replaceAll(':', '')]) {
      const agent = trustedAgent({ what: 'the test array', thumbprint: parseThumbprint(pin, 'thumbprint=') });
      expect(await fetchWith(agent)).toBe('hello');
      agent.destroy();
    }
    const before = requests;
    const wrong = trustedAgent({ what: 'the test array', thumbprint: 'ab'.repeat(32) });
    const err = await fetchWith(wrong).catch((e: unknown) => e);
    wrong.destroy();
    expect(isCairnError(err, 'CERT_UNTRUSTED')).toBe(true);
    expect((err as Error).message).toContain(prints.sha256);
    expect(requests).toBe(before);
  });

  it('gives up on a server that accepts the connection but never answers the handshake', async () => {
    const { createServer: createTcpServer } = await import('node:net');
    const mute = createTcpServer(() => undefined);
    await new Promise<void>((resolve) => mute.listen(0, '127.0.0.1', resolve));
    const mutePort = (mute.address() as AddressInfo).port;
    const agent = trustedAgent({ what: 'the mute array', thumbprint: 'ab'.repeat(32), handshakeTimeoutMs: 300 });
    const err = await new Promise((resolve) => get({ host: '127.0.0.1', port: mutePort, path: '/', agent }).on('error', resolve));
    agent.destroy();
    mute.close();
    expect(isCairnError(err, 'SOURCE_UNREADABLE')).toBe(true);
    expect((err as Error).message).toMatch(/TLS handshake within 0.3 s/);
  });

  it('rejects what is not a thumbprint', () => {
    expect(() => parseThumbprint('12:34', 'thumbprint=')).toThrow(/not a certificate thumbprint/);
    expect(parseThumbprint('AB:'.repeat(19) + 'AB', 'x')).toBe('ab'.repeat(20));
  });
});
