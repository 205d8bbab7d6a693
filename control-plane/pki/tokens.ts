import { createHash, scrypt, timingSafeEqual } from 'node:crypto';

import { hexId, randomIdSource, type Clock, type IdSource } from '../../shared/clock.js';
import { CairnError } from '../../shared/errors.js';
import {
  fingerprintPattern,
  formatEnrollmentToken,
  normaliseControlPlaneUrl,
} from '../../shared/protocol/enrollment-token.js';

export {
  ENROLLMENT_TOKEN_PREFIX,
  parseEnrollmentToken,
  type EnrollmentToken,
} from '../../shared/protocol/enrollment-token.js';

/**
 * Secrets the control plane hands out, and how it checks them without keeping them (README.md in
 * this folder has the trust model):
 *
 * - Enrollment token: made by an admin, pasted into an agent once; its format (and the agent's
 *   parser) is in shared/protocol/enrollment-token.ts. The control plane stores id, secretHash,
 *   expiresAt and a used flag, never the secret.
 * - Agent credential: `agt_` + 16 hex and a 32-byte secret, given to an agent at registration and
 *   presented at every connection; stored as secretHash.
 * - Admin API token: `cairn-admin.` + 32 random bytes (base64url); stored as a salted scrypt hash,
 *   because unlike the others it may be chosen, copied and pasted by people.
 *
 * A secret's hash is SHA-256 of its text as handed out (lower-case hex); a 32-byte random secret needs
 * no salt or stretching. Every comparison of a presented secret is constant-time.
 */

export const ADMIN_TOKEN_PREFIX = 'cairn-admin.';
export const SECRET_BYTES = 32;
/** scrypt cost of admin tokens: 32 MiB of memory and tens of milliseconds per check. */
export const ADMIN_SCRYPT = { N: 2 ** 15, r: 8, p: 1 } as const;

const hashPattern = /^[0-9a-f]{64}$/;
/** Longer presented secrets are wrong without hashing them. */
const MAX_PRESENTED = 1024;

// --- enrollment tokens ----------------------------------------------------------------------

/** What the control plane keeps of an enrollment token. */
export interface StoredEnrollmentToken {
  id: string;
  secretHash: string;
  expiresAt: Date;
  /** Set (by the store, atomically with registering the agent) when the token has been used. */
  used: boolean;
}

export interface NewEnrollmentToken {
  /** The text to give the admin; shown once, never stored. */
  token: string;
  id: string;
  secretHash: string;
  expiresAt: Date;
}

export function createEnrollmentToken(options: {
  url: string;
  caFingerprint: string;
  ttlMs: number;
  clock: Clock;
  ids?: IdSource;
}): NewEnrollmentToken {
  const ids = options.ids ?? randomIdSource;
  const url = normaliseControlPlaneUrl(options.url);
  if (url === undefined) throw new CairnError('USAGE', `the control plane address "${options.url}" is not a wss://host:port URL`);
  if (!fingerprintPattern.test(options.caFingerprint)) {
    throw new CairnError('USAGE', 'the CA fingerprint must be 64 lower-case hex digits (SHA-256)');
  }
  if (!Number.isSafeInteger(options.ttlMs) || options.ttlMs <= 0) {
    throw new CairnError('USAGE', `an enrollment token's lifetime must be a positive number of milliseconds, not ${options.ttlMs}`);
  }
  const id = 'enr_' + hexId(ids, 8);
  const secret = ids.bytes(SECRET_BYTES).toString('base64url');
  const expiresAt = new Date(options.clock.now().getTime() + options.ttlMs);
  const token = formatEnrollmentToken({ url, caFingerprint: options.caFingerprint, id, secret, expiresAt });
  return { token, id, secretHash: hashSecret(secret), expiresAt };
}

export type EnrollmentCheck = 'ok' | 'expired' | 'reused' | 'wrong';

/**
 * Checks a secret an agent presents for a stored enrollment token. The secret is checked first, so
 * someone without it learns nothing about the token's state; a right secret of a used token is
 * 'reused' (worth an alert: the token was copied), of an unused one past its expiry 'expired'.
 * The caller marks the token used, atomically, when it acts on 'ok'.
 */
export function verifyEnrollmentSecret(stored: StoredEnrollmentToken, presentedSecret: string, now: Date): EnrollmentCheck {
  if (!secretMatches(stored.secretHash, presentedSecret)) return 'wrong';
  if (stored.used) return 'reused';
  if (now.getTime() >= stored.expiresAt.getTime()) return 'expired';
  return 'ok';
}

// --- agent credentials ----------------------------------------------------------------------

export interface AgentCredential {
  agentId: string;
  /** Given to the agent once, at registration; never stored by the control plane. */
  secret: string;
  secretHash: string;
}

export function issueAgentCredential(ids: IdSource = randomIdSource): AgentCredential {
  const agentId = 'agt_' + hexId(ids, 8);
  const secret = ids.bytes(SECRET_BYTES).toString('base64url');
  return { agentId, secret, secretHash: hashSecret(secret) };
}

/** True when `presented` is the secret whose hash is stored; constant-time. */
export function verifyAgentCredential(storedHash: string, presented: string): boolean {
  return secretMatches(storedHash, presented);
}

// --- admin API tokens -----------------------------------------------------------------------

export interface AdminToken {
  /** Shown to the admin once, never stored. */
  token: string;
  /** `scrypt$N$r$p$salt$hash`, salt and hash base64url. */
  hash: string;
}

export async function createAdminToken(ids: IdSource = randomIdSource): Promise<AdminToken> {
  const token = ADMIN_TOKEN_PREFIX + ids.bytes(SECRET_BYTES).toString('base64url');
  const salt = ids.bytes(16);
  const { N, r, p } = ADMIN_SCRYPT;
  const hash = await scryptAsync(token, salt, 32, N, r, p);
  return { token, hash: ['scrypt', N, r, p, salt.toString('base64url'), hash.toString('base64url')].join('$') };
}

/** True when `presented` is the admin token whose hash is `stored`; constant-time in the hash. */
export async function verifyAdminToken(stored: string, presented: string): Promise<boolean> {
  const parts = stored.split('$');
  const [kind, nText, rText, pText, saltText, hashText] = parts;
  const N = Number(nText);
  const r = Number(rText);
  const p = Number(pText);
  const salt = Buffer.from(saltText ?? '', 'base64url');
  const expected = Buffer.from(hashText ?? '', 'base64url');
  const valid =
    parts.length === 6 && kind === 'scrypt' &&
    Number.isInteger(N) && N >= 2 && N <= 2 ** 20 && (N & (N - 1)) === 0 &&
    Number.isInteger(r) && r >= 1 && r <= 32 && Number.isInteger(p) && p >= 1 && p <= 16 &&
    salt.length >= 8 && expected.length >= 16;
  if (!valid) throw new CairnError('INTERNAL', 'a stored admin token hash is damaged (expected scrypt$N$r$p$salt$hash)');

  if (!presented.startsWith(ADMIN_TOKEN_PREFIX) || presented.length > MAX_PRESENTED) return false;
  const actual = await scryptAsync(presented, salt, expected.length, N, r, p);
  return timingSafeEqual(actual, expected);
}

// --------------------------------------------------------------------------------------------

/** SHA-256 of a secret's text, lower-case hex: what the control plane stores of a random secret. */
export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

function secretMatches(storedHash: string, presented: string): boolean {
  if (!hashPattern.test(storedHash)) throw new CairnError('INTERNAL', 'a stored secret hash is damaged (expected 64 hex digits)');
  if (presented.length > MAX_PRESENTED) return false;
  return timingSafeEqual(Buffer.from(hashSecret(presented), 'hex'), Buffer.from(storedHash, 'hex'));
}

function scryptAsync(password: string, salt: Buffer, keylen: number, N: number, r: number, p: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password, salt, keylen, { N, r, p, maxmem: 128 * N * r * p + 16 * 1024 * 1024 }, (err, key) =>
      err ? reject(new CairnError('INTERNAL', `scrypt failed: ${err.message}`, { cause: err })) : resolve(key),
    );
  });
}
