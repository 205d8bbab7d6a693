import { systemClock, type Clock } from '../clock.js';
import { CairnError } from '../errors.js';

/**
 * The enrollment token's format, read by the agent and written by the control plane (which keeps
 * how it makes and checks the secret in control-plane/pki/tokens.ts; its README has the trust model):
 *
 * `cairn-enroll.v1.<base64url(JSON {u, f, i, s, e})>`. u: the control plane's wss:// URL; f: its CA
 * fingerprint (SHA-256, lower-case hex); i: token id (`enr_` + 16 hex); s: one-time secret (32 random
 * bytes, base64url); e: expiry (ms since 1970). The token is not signed: the agent relies on the CA
 * fingerprint, the control plane on the secret.
 */

export const ENROLLMENT_TOKEN_PREFIX = 'cairn-enroll.v1.';

const enrollmentIdPattern = /^enr_[0-9a-f]{16}$/;
export const fingerprintPattern = /^[0-9a-f]{64}$/;
const secretPattern = /^[A-Za-z0-9_-]{43}$/;

/** What an agent reads from an enrollment token. */
export interface EnrollmentToken {
  /** The control plane's address, `wss://host:port` (with a path when the control plane gave one). */
  url: string;
  /** SHA-256 of the control plane's CA certificate, lower-case hex: the only CA the agent trusts. */
  caFingerprint: string;
  id: string;
  /** The one-time secret, base64url; the agent presents it with the id when it registers. */
  secret: string;
  expiresAt: Date;
}

/**
 * Writes a token's text. The caller has checked the fields (a URL through `normaliseControlPlaneUrl`,
 * a fingerprint against `fingerprintPattern`); what this writes, `parseEnrollmentToken` reads.
 */
export function formatEnrollmentToken(token: EnrollmentToken): string {
  const payload = { u: token.url, f: token.caFingerprint, i: token.id, s: token.secret, e: token.expiresAt.getTime() };
  return ENROLLMENT_TOKEN_PREFIX + Buffer.from(JSON.stringify(payload), 'utf8').toString('base64url');
}

/**
 * Reads an enrollment token on the agent. Surrounding white space is ignored (tokens get pasted).
 * Throws USAGE when the text is not a Cairn enrollment token, is damaged (cut short, changed) or has
 * expired by `clock`. The token carries no signature: the agent relies on the CA fingerprint in it,
 * and the control plane on the secret, so a changed token fails at connection or registration.
 */
export function parseEnrollmentToken(text: string, clock: Clock = systemClock): EnrollmentToken {
  const trimmed = text.trim();
  if (!trimmed.startsWith(ENROLLMENT_TOKEN_PREFIX)) {
    if (/^cairn-enroll\.v\d+\./.test(trimmed)) {
      throw new CairnError('USAGE', 'this enrollment token was made by a newer Cairn control plane; update the agent');
    }
    throw new CairnError('USAGE', `this is not a Cairn enrollment token (one starts with "${ENROLLMENT_TOKEN_PREFIX}"); copy it from the control plane again`);
  }
  const damaged = (why: string): CairnError =>
    new CairnError('USAGE', `the enrollment token is damaged (${why}); copy the whole token from the control plane again`);

  const body = trimmed.slice(ENROLLMENT_TOKEN_PREFIX.length);
  if (!/^[A-Za-z0-9_-]+$/.test(body)) throw damaged('it has characters a token does not contain');
  const bytes = Buffer.from(body, 'base64url');
  // base64url decoding ignores stray trailing bits; only the exact encoding is a token.
  if (bytes.toString('base64url') !== body) throw damaged('it is cut short');
  let payload: unknown;
  try {
    payload = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw damaged('it is cut short or changed');
  }
  if (typeof payload !== 'object' || payload === null) throw damaged('it holds no token fields');
  const { u, f, i, s, e } = payload as Record<string, unknown>;
  const url = typeof u === 'string' ? normaliseControlPlaneUrl(u) : undefined;
  if (url === undefined) throw damaged('no valid wss:// address');
  if (typeof f !== 'string' || !fingerprintPattern.test(f)) throw damaged('no valid CA fingerprint');
  if (typeof i !== 'string' || !enrollmentIdPattern.test(i)) throw damaged('no valid token id');
  if (typeof s !== 'string' || !secretPattern.test(s)) throw damaged('no valid secret');
  if (typeof e !== 'number' || !Number.isSafeInteger(e) || e <= 0) throw damaged('no valid expiry');

  const expiresAt = new Date(e);
  if (clock.now().getTime() >= e) {
    throw new CairnError('USAGE', `the enrollment token ${i} expired at ${expiresAt.toISOString()}; create a new one on the control plane`);
  }
  return { url, caFingerprint: f, id: i, secret: s, expiresAt };
}

/** The URL normalised when it is wss://host[:port] with nothing after the path '/', else undefined. */
export function normaliseControlPlaneUrl(text: string): string | undefined {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return undefined;
  }
  if (url.protocol !== 'wss:' || url.hostname === '' || url.username !== '' || url.password !== '') return undefined;
  if (url.search !== '' || url.hash !== '') return undefined;
  return url.pathname === '/' ? `wss://${url.host}` : `wss://${url.host}${url.pathname}`;
}
