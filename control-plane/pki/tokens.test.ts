import { createHash } from 'node:crypto';

import { describe, expect, it } from 'vitest';

import { ManualClock, type IdSource } from '../../shared/clock.js';
import { isCairnError } from '../../shared/errors.js';
import {
  createAdminToken,
  createEnrollmentToken,
  ENROLLMENT_TOKEN_PREFIX,
  issueAgentCredential,
  parseEnrollmentToken,
  verifyAdminToken,
  verifyAgentCredential,
  verifyEnrollmentSecret,
  type StoredEnrollmentToken,
} from './tokens.js';

const HOUR = 3600_000;
const fingerprint = 'ab'.repeat(32);

/** Deterministic "random" bytes: a counter, so every call gives new bytes. */
function countingIds(): IdSource {
  let next = 0;
  return {
    bytes: (n) => {
      const out = Buffer.alloc(n);
      for (let i = 0; i < n; i++) out[i] = next++ & 0xff;
      return out;
    },
  };
}

function usageMessage(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(isCairnError(err, 'USAGE'), `expected a CairnError USAGE, got ${String(err)}`).toBe(true);
    return (err as Error).message;
  }
  throw new Error('expected a USAGE error');
}

function enrollment(clock = new ManualClock(Date.parse('2026-03-01T10:00:00Z'))) {
  const made = createEnrollmentToken({ url: 'wss://cp.example.test:8443', caFingerprint: fingerprint, ttlMs: HOUR, clock, ids: countingIds() });
  const stored: StoredEnrollmentToken = { id: made.id, secretHash: made.secretHash, expiresAt: made.expiresAt, used: false };
  return { made, stored, clock };
}

/** Re-encodes a token's payload after changing it. */
function edit(token: string, change: (payload: Record<string, unknown>) => void): string {
  const payload = JSON.parse(Buffer.from(token.slice(ENROLLMENT_TOKEN_PREFIX.length), 'base64url').toString('utf8'));
  change(payload);
  return ENROLLMENT_TOKEN_PREFIX + Buffer.from(JSON.stringify(payload)).toString('base64url');
}

describe('enrollment tokens', () => {
  it('round-trips: the agent reads the address, fingerprint, id and secret; the control plane accepts the secret once', () => {
    const { made, stored, clock } = enrollment();
    expect(made.token.startsWith('cairn-enroll.v1.')).toBe(true);
    expect(made.id).toMatch(/^enr_[0-9a-f]{16}$/);
    expect(made.expiresAt.toISOString()).toBe('2026-03-01T11:00:00.000Z');

    const parsed = parseEnrollmentToken(`  ${made.token}\n`, clock);
    expect(parsed).toEqual({ url: 'wss://cp.example.test:8443', caFingerprint: fingerprint, id: made.id, secret: parsed.secret, expiresAt: made.expiresAt });
    expect(Buffer.from(parsed.secret, 'base64url')).toHaveLength(32);
    // The control plane keeps only the SHA-256 of the secret.
    expect(made.secretHash).toBe(createHash('sha256').update(parsed.secret).digest('hex'));
    expect(JSON.stringify(stored)).not.toContain(parsed.secret);

    expect(verifyEnrollmentSecret(stored, parsed.secret, clock.now())).toBe('ok');
  });

  it('is deterministic for the same clock and id source, and differs per id source state', () => {
    const one = enrollment().made;
    const two = enrollment().made;
    expect(two.token).toBe(one.token);
    const ids = countingIds();
    const clock = new ManualClock(0);
    const a = createEnrollmentToken({ url: 'wss://cp:1', caFingerprint: fingerprint, ttlMs: HOUR, clock, ids });
    const b = createEnrollmentToken({ url: 'wss://cp:1', caFingerprint: fingerprint, ttlMs: HOUR, clock, ids });
    expect(a.id).not.toBe(b.id);
    expect(a.secretHash).not.toBe(b.secretHash);
  });

  it('is expired for the agent and for the control plane at its expiry', () => {
    const { made, stored, clock } = enrollment();
    const { secret } = parseEnrollmentToken(made.token, clock);
    clock.advance(HOUR - 1);
    expect(verifyEnrollmentSecret(stored, secret, clock.now())).toBe('ok');
    clock.advance(1);
    expect(verifyEnrollmentSecret(stored, secret, clock.now())).toBe('expired');
    const message = usageMessage(() => parseEnrollmentToken(made.token, clock));
    expect(message).toContain('expired at 2026-03-01T11:00:00.000Z');
    expect(message).toContain('create a new one');
  });

  it('is reused once the store has marked it used, even before expiry', () => {
    const { made, stored, clock } = enrollment();
    const { secret } = parseEnrollmentToken(made.token, clock);
    expect(verifyEnrollmentSecret({ ...stored, used: true }, secret, clock.now())).toBe('reused');
    clock.advance(2 * HOUR);
    expect(verifyEnrollmentSecret({ ...stored, used: true }, secret, clock.now())).toBe('reused');
  });

  it('is wrong for another secret, and says nothing else to someone without the secret', () => {
    const { made, stored, clock } = enrollment();
    const { secret } = parseEnrollmentToken(made.token, clock);
    const other = Buffer.alloc(32, 7).toString('base64url');
    expect(verifyEnrollmentSecret(stored, other, clock.now())).toBe('wrong');
    expect(verifyEnrollmentSecret({ ...stored, used: true }, other, clock.now())).toBe('wrong');
    expect(verifyEnrollmentSecret(stored, other, new Date(clock.ms + 2 * HOUR))).toBe('wrong');
    expect(verifyEnrollmentSecret(stored, secret.slice(0, -1), clock.now())).toBe('wrong');
    expect(verifyEnrollmentSecret(stored, '', clock.now())).toBe('wrong');
    expect(verifyEnrollmentSecret(stored, 'x'.repeat(100_000), clock.now())).toBe('wrong');
  });

  it('a token with a changed secret parses but its secret is wrong', () => {
    const { made, stored, clock } = enrollment();
    const forged = edit(made.token, (p) => {
      p.s = Buffer.alloc(32, 1).toString('base64url');
    });
    const parsed = parseEnrollmentToken(forged, clock);
    expect(verifyEnrollmentSecret(stored, parsed.secret, clock.now())).toBe('wrong');
  });

  it('reports damaged tokens clearly', () => {
    const { made, clock } = enrollment();
    const body = made.token.slice(ENROLLMENT_TOKEN_PREFIX.length);
    const damaged = [
      made.token.slice(0, -10), // cut short
      made.token.slice(0, -1), // cut by one character
      ENROLLMENT_TOKEN_PREFIX + body.slice(0, 20) + '!' + body.slice(21), // a character no token has
      ENROLLMENT_TOKEN_PREFIX + 'A' + body.slice(1), // a changed first character
      ENROLLMENT_TOKEN_PREFIX,
      edit(made.token, (p) => void (p.f = 'AB'.repeat(32))),
      edit(made.token, (p) => void (p.u = 'https://cp.example.test')),
      edit(made.token, (p) => void (p.i = 'agt_0011223344556677')),
      edit(made.token, (p) => void delete p.s),
      edit(made.token, (p) => void (p.e = '2026-03-01')),
    ];
    for (const text of damaged) {
      expect(usageMessage(() => parseEnrollmentToken(text, clock)), text).toContain('the enrollment token is damaged');
    }
  });

  it('tells other text and newer token versions apart', () => {
    expect(usageMessage(() => parseEnrollmentToken('cairn-admin.abc'))).toContain('not a Cairn enrollment token');
    expect(usageMessage(() => parseEnrollmentToken(''))).toContain('not a Cairn enrollment token');
    expect(usageMessage(() => parseEnrollmentToken('cairn-enroll.v2.eyJ9'))).toContain('newer Cairn control plane');
  });

  it('refuses to make a token for a non-wss address, a bad fingerprint or a bad lifetime', () => {
    const clock = new ManualClock(0);
    const make = (url: string, caFingerprint: string, ttlMs: number) => () => createEnrollmentToken({ url, caFingerprint, ttlMs, clock });
    expect(usageMessage(make('ws://cp:80', fingerprint, HOUR))).toContain('wss://');
    expect(usageMessage(make('wss://cp:443', 'AB:CD', HOUR))).toContain('fingerprint');
    expect(usageMessage(make('wss://cp:443', fingerprint, 0))).toContain('lifetime');
  });
});

describe('agent credentials', () => {
  it('issues agt_ + 16 hex and a 32-byte secret stored only as its hash, and verifies it', () => {
    const cred = issueAgentCredential(countingIds());
    expect(cred.agentId).toBe('agt_0001020304050607');
    expect(Buffer.from(cred.secret, 'base64url')).toHaveLength(32);
    expect(cred.secretHash).toMatch(/^[0-9a-f]{64}$/);
    expect(cred.secretHash).not.toContain(cred.secret);
    expect(verifyAgentCredential(cred.secretHash, cred.secret)).toBe(true);
    expect(verifyAgentCredential(cred.secretHash, cred.secret + 'x')).toBe(false);
    expect(verifyAgentCredential(cred.secretHash, issueAgentCredential().secret)).toBe(false);
    expect(verifyAgentCredential(cred.secretHash, '')).toBe(false);
  });

  it('gives each agent its own id and secret', () => {
    const a = issueAgentCredential();
    const b = issueAgentCredential();
    expect(a.agentId).not.toBe(b.agentId);
    expect(a.secret).not.toBe(b.secret);
  });

  it('treats a damaged stored hash as an internal error, not as a wrong secret', () => {
    expect(() => verifyAgentCredential('nothex', 'x')).toThrow(/stored secret hash is damaged/);
  });
});

describe('admin tokens', () => {
  it('stores scrypt$N$r$p$salt$hash and verifies the token, rejecting others', async () => {
    const { token, hash } = await createAdminToken(countingIds());
    expect(token).toMatch(/^cairn-admin\.[A-Za-z0-9_-]{43}$/);
    const parts = hash.split('$');
    expect(parts.slice(0, 4)).toEqual(['scrypt', '32768', '8', '1']);
    expect(Buffer.from(parts[4]!, 'base64url')).toHaveLength(16);
    expect(Buffer.from(parts[5]!, 'base64url')).toHaveLength(32);
    expect(hash).not.toContain(token.slice('cairn-admin.'.length));

    expect(await verifyAdminToken(hash, token)).toBe(true);
    expect(await verifyAdminToken(hash, token.slice(0, -1) + (token.endsWith('A') ? 'B' : 'A'))).toBe(false);
    expect(await verifyAdminToken(hash, token.slice('cairn-admin.'.length))).toBe(false);
    expect(await verifyAdminToken(hash, '')).toBe(false);
  });

  it('salts each hash, so the same token never hashes the same twice', async () => {
    const ids = countingIds();
    const a = await createAdminToken(ids);
    const b = await createAdminToken(ids);
    expect(a.hash.split('$')[4]).not.toBe(b.hash.split('$')[4]);
    expect(await verifyAdminToken(a.hash, b.token)).toBe(false);
  });

  it('treats a damaged stored hash as an internal error', async () => {
    await expect(verifyAdminToken('sha256$abc', 'cairn-admin.x')).rejects.toThrow(/admin token hash is damaged/);
    await expect(verifyAdminToken('scrypt$1000$8$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA', 'cairn-admin.x')).rejects.toThrow(/damaged/);
  });
});
