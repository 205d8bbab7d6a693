import { createCipheriv, createDecipheriv, randomBytes, randomFillSync, scrypt as scryptCb } from 'node:crypto';
import { Blake3Hasher } from '@napi-rs/blake-hash';
import { CairnError } from '../errors.js';
import { copyInto } from './bytes.js';

/**
 * Cryptographic primitives of the vault format (see FORMAT.md, "Encryption").
 * - seal/open: AES-256-GCM, 12-byte random nonce, 16-byte tag; layout nonce | ciphertext | tag.
 *   Associated data binds a ciphertext to its purpose and name, so objects cannot be swapped.
 * - chunk ids: keyed BLAKE3 of the plaintext (the key is part of the master key, so ids reveal
 *   nothing about content to someone without the key).
 */

export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;
export const SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES;
export const ID_BYTES = 32;

/** The secret of a vault: 32 bytes AES key + 32 bytes chunk-id key. Never stored unwrapped. */
export interface MasterKey {
  encryption: Buffer;
  chunkId: Buffer;
}

export function newMasterKey(): MasterKey {
  return { encryption: randomBytes(32), chunkId: randomBytes(32) };
}

export function masterKeyToBytes(key: MasterKey): Buffer {
  return Buffer.concat([key.encryption, key.chunkId]);
}

export function masterKeyFromBytes(raw: Buffer): MasterKey {
  if (raw.length !== 64) throw new CairnError('VAULT_CORRUPT', 'master key has the wrong length');
  return { encryption: Buffer.from(raw.subarray(0, 32)), chunkId: Buffer.from(raw.subarray(32, 64)) };
}

// Nonces come from a pool refilled from the CSPRNG 512 at a time: one call per chunk costs more
// than the encryption of a small chunk. Each nonce is copied out, so no two seals share one.
const noncePool = Buffer.alloc(NONCE_BYTES * 512);
let nonceAt = noncePool.length;

function freshNonce(): Buffer {
  if (nonceAt === noncePool.length) {
    randomFillSync(noncePool);
    nonceAt = 0;
  }
  const nonce = Buffer.from(noncePool.subarray(nonceAt, nonceAt + NONCE_BYTES));
  nonceAt += NONCE_BYTES;
  return nonce;
}

/** Encrypts parts (concatenated) into nonce | ciphertext | tag as a list of buffers (no extra copy). */
export function sealParts(key: Buffer, plaintext: Buffer | Buffer[], aad: Buffer): Buffer[] {
  const nonce = freshNonce();
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(aad);
  const parts = [nonce];
  for (const p of Array.isArray(plaintext) ? plaintext : [plaintext]) parts.push(cipher.update(p));
  const fin = cipher.final();
  if (fin.length) parts.push(fin);
  parts.push(cipher.getAuthTag());
  return parts;
}

/**
 * Pieces of at most this many bytes go through the cipher at a time. Each update returns a new
 * buffer; above glibc's mmap threshold (128 KiB) every one would be fresh pages from the kernel,
 * and a page fault costs more than encrypting the page (measured: AES-256-GCM of 1 MiB chunks at
 * about 0.3-1.5 GB/s in one update, 1.8-2.7 GB/s in 64 KiB pieces, in a worker thread).
 */
const CIPHER_PIECE = 64 * 1024;

/**
 * seal() written straight into `out` at `at` (nonce | ciphertext | tag, SEAL_OVERHEAD bytes more
 * than the plaintext); returns the bytes written. `out` must have room; nothing else is allocated
 * beyond the cipher's pieces.
 */
export function sealInto(key: Buffer, plaintext: Uint8Array, aad: Buffer, out: Buffer, at: number): number {
  if (at + plaintext.length + SEAL_OVERHEAD > out.length) {
    throw new CairnError('INTERNAL', `no room for a sealed blob of ${plaintext.length + SEAL_OVERHEAD} bytes at ${at} of ${out.length}`);
  }
  const nonce = freshNonce();
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(aad);
  let w = at + copyInto(nonce, out, at);
  for (let p = 0; p < plaintext.length; p += CIPHER_PIECE) {
    w += copyInto(cipher.update(plaintext.subarray(p, Math.min(p + CIPHER_PIECE, plaintext.length))), out, w);
  }
  w += copyInto(cipher.final(), out, w);
  w += copyInto(cipher.getAuthTag(), out, w);
  return w - at;
}

export function seal(key: Buffer, plaintext: Buffer | Buffer[], aad: Buffer): Buffer {
  return Buffer.concat(sealParts(key, plaintext, aad));
}

/**
 * Decrypts and authenticates; throws VAULT_CORRUPT naming `what` if the data was altered. With
 * `into` (at least the ciphertext's length) the plaintext is written there in pieces (see
 * CIPHER_PIECE) and the result is a view of it; it must not be trusted before this returns.
 */
export function open(key: Buffer, sealed: Buffer, aad: Buffer, what: string, into?: Buffer): Buffer {
  if (sealed.length < SEAL_OVERHEAD) {
    throw new CairnError('VAULT_CORRUPT', `${what} is truncated (${sealed.length} bytes)`);
  }
  const nonce = sealed.subarray(0, NONCE_BYTES);
  const tag = sealed.subarray(sealed.length - TAG_BYTES);
  const decipher = createDecipheriv('aes-256-gcm', key, nonce);
  decipher.setAAD(aad);
  decipher.setAuthTag(tag);
  const cipherText = sealed.subarray(NONCE_BYTES, sealed.length - TAG_BYTES);
  let body: Buffer;
  if (into && into.length >= cipherText.length) {
    let w = 0;
    for (let p = 0; p < cipherText.length; p += CIPHER_PIECE) {
      w += copyInto(decipher.update(cipherText.subarray(p, Math.min(p + CIPHER_PIECE, cipherText.length))), into, w);
    }
    body = into.subarray(0, w);
  } else body = decipher.update(cipherText);
  try {
    decipher.final();
  } catch (err) {
    throw new CairnError('VAULT_CORRUPT', `${what} failed authentication: it was damaged or altered`, { cause: err });
  }
  return body;
}

/** Computes chunk ids. One instance per thread; not safe to share across concurrent calls. */
export class ChunkHasher {
  private readonly hasher: Blake3Hasher;
  constructor(chunkIdKey: Buffer) {
    this.hasher = Blake3Hasher.newKeyed(chunkIdKey);
  }
  id(data: Uint8Array): Buffer {
    this.hasher.reset();
    this.hasher.update(Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    return this.hasher.digestBuffer();
  }
}

export interface ScryptParams {
  N: number;
  r: number;
  p: number;
}

/** Default key-derivation cost: about 0.1-0.3 s and 64 MiB on a current core. */
export const defaultScrypt: ScryptParams = { N: 1 << 16, r: 8, p: 1 };

export function deriveKeyFromPassphrase(passphrase: string, salt: Buffer, params: ScryptParams): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scryptCb(
      passphrase.normalize('NFC'),
      salt,
      32,
      { N: params.N, r: params.r, p: params.p, maxmem: 256 * params.N * params.r + (1 << 20) },
      (err, key) => (err ? reject(err) : resolve(key)),
    );
  });
}
