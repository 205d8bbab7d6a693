import { createHash, X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import type { DetailedPeerCertificate, TLSSocket } from 'node:tls';

import { CairnError } from '../../shared/errors.js';

/**
 * Trusting exactly one CA, named by its SHA-256 fingerprint (from an enrollment token or the stored
 * control-plane.json): no system roots, no other CA, whatever the TLS library would accept.
 */

/** SHA-256 of a certificate's DER, lower-case hex: the fingerprint enrollment tokens carry. */
export function fingerprintOf(cert: X509Certificate): string {
  return createHash('sha256').update(cert.raw).digest('hex');
}

export interface PinnedServer {
  /** The CA the chain ends in, the one whose fingerprint was pinned. */
  ca: X509Certificate;
  leaf: X509Certificate;
}

/**
 * Checks the certificate chain `socket` received against the pinned CA: some certificate after the
 * leaf has the pinned fingerprint, each certificate from the leaf up to it is signed by the next and
 * valid at `now` (intermediates must be CAs), and the leaf names `host` (DNS name or IP address).
 * Works on a socket opened with `rejectUnauthorized: false`; the caller sends nothing before this
 * returns. Throws USAGE naming `url` when the server is not the one pinned.
 */
export function checkPinnedServer(socket: TLSSocket, pin: { caFingerprint: string; host: string; url: string; now: Date }): PinnedServer {
  const notOurs = (why: string): CairnError =>
    new CairnError('USAGE', `the server at ${pin.url} is not the control plane this token was made by (${why}); check the address, or create a new token on the control plane`);
  const chain = peerChain(socket.getPeerCertificate(true));
  if (chain.length === 0) throw notOurs('it sent no certificate');
  const caIndex = chain.findIndex((cert, i) => i > 0 && fingerprintOf(cert) === pin.caFingerprint);
  if (caIndex < 0) throw notOurs(`its certificate chain holds no CA with fingerprint ${pin.caFingerprint.slice(0, 16)}...`);
  const ca = chain[caIndex]!;
  const leaf = chain[0]!;
  const now = pin.now.getTime();
  for (let i = 0; i <= caIndex; i++) {
    const cert = chain[i]!;
    if (now < Date.parse(cert.validFrom) || now > Date.parse(cert.validTo)) {
      throw notOurs(`certificate "${cert.subject.replaceAll('\n', ', ')}" is valid only from ${cert.validFrom} to ${cert.validTo}; check this machine's clock`);
    }
    if (i > 0 && !cert.ca) throw notOurs(`certificate "${cert.subject.replaceAll('\n', ', ')}" signs another but is no CA`);
    if (i < caIndex) {
      const issuer = chain[i + 1]!;
      if (!cert.checkIssued(issuer) || !cert.verify(issuer.publicKey)) throw notOurs('its certificate is not signed by the pinned CA');
    }
  }
  const named = isIP(pin.host) !== 0 ? leaf.checkIP(pin.host) : leaf.checkHost(pin.host);
  if (named === undefined) throw notOurs(`its certificate is not made out to ${pin.host}`);
  return { ca, leaf };
}

/** The chain as the peer sent it, leaf first; stops at a self-signed certificate or a loop. */
function peerChain(peer: DetailedPeerCertificate | undefined): X509Certificate[] {
  const out: X509Certificate[] = [];
  const seen = new Set<DetailedPeerCertificate>();
  let cert = peer;
  while (cert !== undefined && cert.raw !== undefined && !seen.has(cert) && out.length < 16) {
    seen.add(cert);
    out.push(new X509Certificate(cert.raw));
    cert = cert.issuerCertificate;
  }
  return out;
}

/** The host part of a URL as TLS and checkHost/checkIP want it (IPv6 without brackets). */
export function hostOf(url: URL): string {
  return url.hostname.replace(/^\[(.*)\]$/, '$1');
}
