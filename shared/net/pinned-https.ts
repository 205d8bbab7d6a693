import { createHash } from 'node:crypto';
import { Agent, type AgentOptions, type RequestOptions } from 'node:https';
import type { Duplex } from 'node:stream';
import { connect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { CairnError } from '../errors.js';

/**
 * HTTPS to management servers that often carry self-signed certificates (vCenter, ESXi, storage
 * arrays). A server is trusted when its chain verifies against the system CAs (plus
 * NODE_EXTRA_CA_CERTS), or when its leaf certificate has the thumbprint the user pinned, as vSphere
 * and array admins are used to (SHA-1 as vSphere shows it, or SHA-256). Nothing is sent to a server
 * before its certificate passed: a pinned connection is handed to the HTTP client only after the check.
 */

/** Normalises a pinned thumbprint (hex, colons optional, any case) to lower-case hex; USAGE naming `where` when it is not one. */
export function parseThumbprint(text: string, where: string): string {
  const hex = text.replaceAll(':', '').toLowerCase();
  if (!/^([0-9a-f]{40}|[0-9a-f]{64})$/.test(hex)) {
    throw new CairnError('USAGE', `${where}: '${text}' is not a certificate thumbprint; give the SHA-1 (40 hex digits) or SHA-256 (64) of the server's certificate, colons allowed`);
  }
  return hex;
}

export interface Thumbprints {
  sha1: string;
  sha256: string;
}

/** Thumbprints of a DER certificate, colon-separated upper-case hex as vSphere and openssl show them. */
export function thumbprintsOf(der: Buffer): Thumbprints {
  const hex = (algo: string): string => createHash(algo).update(der).digest('hex').toUpperCase().match(/../g)!.join(':');
  return { sha1: hex('sha1'), sha256: hex('sha256') };
}

function matches(der: Buffer, pinned: string): boolean {
  const algo = pinned.length === 40 ? 'sha1' : 'sha256';
  return createHash(algo).update(der).digest('hex') === pinned;
}

export interface TrustOptions {
  /** Normalised thumbprint (parseThumbprint): trust exactly this leaf certificate, whatever signed it. */
  thumbprint?: string;
  /** What the server is, for messages ('vCenter vc01.example:443'). */
  what: string;
  /** A pinned connection fails (SOURCE_UNREADABLE, retryable) when connect and TLS handshake take longer (default 30 s). */
  handshakeTimeoutMs?: number;
}

/**
 * An https.Agent (keep-alive) that trusts the server as described above. A refused certificate fails
 * the request with CERT_UNTRUSTED, saying which thumbprints the server showed so the user can check and pin it.
 */
export function trustedAgent(trust: TrustOptions, options: AgentOptions = {}): Agent {
  if (trust.thumbprint === undefined) return new Agent({ keepAlive: true, ...options });
  const pinned = trust.thumbprint;
  const handshakeMs = trust.handshakeTimeoutMs ?? 30_000;
  class PinnedAgent extends Agent {
    override createConnection(opts: RequestOptions, done?: (err: Error | null, socket: Duplex) => void): Duplex | undefined {
      const socket = connect({ ...(opts as ConnectionOptions), rejectUnauthorized: false });
      let settled = false;
      // Node's request timeout starts only once the socket is handed over, which is after the check.
      const timer = setTimeout(() => {
        finish(new CairnError('SOURCE_UNREADABLE', `${trust.what} did not complete a TLS handshake within ${handshakeMs / 1000} s; check the address and port`, { retryable: true }));
      }, handshakeMs);
      const finish = (err: Error | null): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) socket.destroy();
        done?.(err, socket);
      };
      socket.once('secureConnect', () => {
        const der = socket.getPeerCertificate().raw;
        if (der && matches(der, pinned)) finish(null);
        else {
          const seen = der ? thumbprintsOf(der) : undefined;
          finish(
            new CairnError(
              'CERT_UNTRUSTED',
              `the certificate of ${trust.what} does not have the pinned thumbprint ${pinned}` +
                (seen ? ` (it shows SHA-256 ${seen.sha256}, SHA-1 ${seen.sha1})` : '') +
                '; check that this is the right server, then pin its thumbprint',
            ),
          );
        }
      });
      socket.once('error', (err) => finish(err));
      return undefined;
    }
  }
  return new PinnedAgent({ keepAlive: true, ...options });
}

const TLS_TRUST_ERRORS = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'CERT_UNTRUSTED',
]);

/** True for Node's errors about a certificate the system CAs do not vouch for. */
export function isTlsTrustError(err: unknown): boolean {
  return TLS_TRUST_ERRORS.has((err as NodeJS.ErrnoException)?.code ?? '');
}

/**
 * CERT_UNTRUSTED for a request to `host:port` that failed on the certificate (isTlsTrustError):
 * fetches the certificate once more, without sending anything, to show its thumbprints.
 */
export async function untrustedCertificate(err: unknown, host: string, port: number, what: string, pinHint: string): Promise<CairnError> {
  const seen = await peekCertificate(host, port).catch(() => undefined);
  return new CairnError(
    'CERT_UNTRUSTED',
    `the certificate of ${what} is not trusted (${(err as NodeJS.ErrnoException).code}): ` +
      (seen ? `it shows SHA-256 thumbprint ${seen.sha256} (SHA-1 ${seen.sha1}); ` : '') +
      `if that is the right server, pin it with ${pinHint}, or add its CA to NODE_EXTRA_CA_CERTS`,
    { cause: err },
  );
}

function peekCertificate(host: string, port: number): Promise<Thumbprints> {
  return new Promise((resolve, reject) => {
    const socket: TLSSocket = connect({ host, port, servername: isIpLike(host) ? undefined : host, rejectUnauthorized: false, timeout: 10_000 });
    socket.once('secureConnect', () => {
      const der = socket.getPeerCertificate().raw;
      socket.destroy();
      if (der) resolve(thumbprintsOf(der));
      else reject(new Error('no certificate'));
    });
    socket.once('timeout', () => socket.destroy(new Error('timed out')));
    socket.once('error', reject);
  });
}

function isIpLike(host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(':');
}
