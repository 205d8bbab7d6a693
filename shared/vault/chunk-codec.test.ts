import { randomBytes } from 'node:crypto';

import { describe, expect, it } from 'vitest';

import { ChunkDecoder, ChunkEncoder, Codec } from './chunk-codec.js';
import { ChunkHasher, SEAL_OVERHEAD } from './crypto.js';

const encKey = randomBytes(32);
const idKey = randomBytes(32);
const hasher = new ChunkHasher(idKey);
const encoder = new ChunkEncoder(encKey, 3);
const decoder = new ChunkDecoder(encKey, idKey);

function encode(plain: Buffer) {
  const id = hasher.id(plain);
  const enc = encoder.encode(id, plain);
  const blob = enc.blob;
  expect(blob.length).toBeLessThanOrEqual(ChunkEncoder.bound(plain.length));
  return { id, blob, codec: enc.codec };
}

const compressible = Buffer.alloc(65536, 'cairn compresses this line well. ');
const random = randomBytes(65536);

describe('chunk codec', () => {
  it('compresses compressible data with zstd and decodes it back', () => {
    const { id, blob, codec } = encode(compressible);
    expect(codec).toBe(Codec.Zstd);
    expect(blob.length).toBeLessThan(compressible.length / 10);
    expect(decoder.decode(id, blob, codec, compressible.length, 'test')).toEqual(compressible);
  });

  it('decodes what every level writes, the tuned level 3 among them, across sizes and mixed data', () => {
    // Text-like data with repeats at many distances, and a binary stretch: matches of 4 bytes and up.
    const words = Array.from({ length: 3000 }, (_, i) => `w${(i * 7919) % 1201}`).join(' ');
    const mixed = Buffer.concat([Buffer.from(words), randomBytes(5000), Buffer.from(words.split('').reverse().join(''))]);
    for (const level of [1, 2, 3, 4]) {
      const enc = new ChunkEncoder(encKey, level);
      for (const plain of [mixed, mixed.subarray(0, 700), Buffer.concat([mixed, mixed, mixed])]) {
        const id = hasher.id(plain);
        const { blob, codec } = enc.encode(id, plain);
        expect(codec, `level ${level}`).toBe(Codec.Zstd);
        expect(decoder.decode(id, blob, codec, plain.length, 'test')).toEqual(plain);
      }
    }
  });

  it('stores random data raw (sealed only) and decodes it back', () => {
    const { id, blob, codec } = encode(random);
    expect(codec).toBe(Codec.Raw);
    expect(blob.length).toBe(random.length + SEAL_OVERHEAD);
    expect(decoder.decode(id, blob, codec, random.length, 'test')).toEqual(random);
  });

  it('handles near-empty chunks: one byte, a short tail, and zero bytes', () => {
    for (const plain of [Buffer.from([7]), randomBytes(100), Buffer.alloc(0)]) {
      const { id, blob, codec } = encode(plain);
      expect(codec).toBe(Codec.Raw);
      expect(decoder.decode(id, blob, codec, plain.length, 'test')).toEqual(plain);
    }
  });

  it('keeps zstd only when it saves at least 1/32 of the chunk', () => {
    // Half random, half zeros compresses by about half: zstd. 31/32 random, 1/32 repeated is not worth it.
    const half = Buffer.concat([randomBytes(32768), Buffer.alloc(32768)]);
    expect(encode(half).codec).toBe(Codec.Zstd);
    const barely = Buffer.concat([randomBytes(65536 - 1024), Buffer.alloc(1024, 1)]);
    expect(encode(barely).codec).toBe(Codec.Raw);
  });

  it('seals and opens chunks larger than one cipher piece, into a given buffer or a fresh one', () => {
    // 200 KiB + 1: four 64 KiB cipher pieces and a one-byte one.
    for (const plain of [randomBytes(200 * 1024 + 1), Buffer.alloc(200 * 1024 + 1, 'cairn ')]) {
      const { id, blob, codec } = encode(plain);
      expect(codec).toBe(plain[0] === 0x63 ? Codec.Zstd : Codec.Raw);
      const roomy = Buffer.alloc(plain.length + 1, 0xee);
      const direct = decoder.decode(id, blob, codec, plain.length, 'pack p', roomy);
      expect(direct.equals(plain)).toBe(true);
      expect(direct.buffer).toBe(roomy.buffer);
      // Exactly the plaintext's length (less than the contract's rawLength + 1): still decoded right.
      const tight = Buffer.alloc(plain.length, 0xee);
      expect(decoder.decode(id, blob, codec, plain.length, 'pack p', tight).equals(plain)).toBe(true);
      expect(decoder.decode(id, blob, codec, plain.length, 'pack p').equals(plain)).toBe(true);
    }
  });

  it('refuses a tampered blob decoded into a buffer, and what it wrote there is not returned', () => {
    const plain = randomBytes(100 * 1024);
    const { id, blob, codec } = encode(plain);
    blob[blob.length - SEAL_OVERHEAD - 5] ^= 1;
    const into = Buffer.alloc(plain.length + 1);
    expect(() => decoder.decode(id, blob, codec, plain.length, 'pack p', into)).toThrow(expect.objectContaining({ code: 'VAULT_CORRUPT' }));
  });

  it('refuses a raw chunk longer than its index says, decoded into a buffer sized by the index', () => {
    const plain = randomBytes(100 * 1024);
    const { id, blob, codec } = encode(plain);
    expect(codec).toBe(Codec.Raw);
    const into = Buffer.alloc(plain.length - 10 + 1);
    expect(() => decoder.decode(id, blob, codec, plain.length - 10, 'pack p', into)).toThrow(
      expect.objectContaining({ code: 'VAULT_CORRUPT', message: expect.stringContaining('is longer') }),
    );
  });

  it('returns a raw chunk decoded without a buffer that stays valid after the next decode', () => {
    const a = encode(randomBytes(70 * 1024));
    const b = encode(randomBytes(70 * 1024));
    const first = decoder.decode(a.id, a.blob, a.codec, 70 * 1024, 'pack p');
    const copy = Buffer.from(first);
    decoder.decode(b.id, b.blob, b.codec, 70 * 1024, 'pack p');
    expect(first.equals(copy)).toBe(true);
  });

  it('refuses a tampered blob with VAULT_CORRUPT naming the chunk and place', () => {
    for (const plain of [compressible, random]) {
      const { id, blob, codec } = encode(plain);
      for (const at of [0, 13, blob.length >> 1, blob.length - 1]) {
        const bad = Buffer.from(blob);
        bad[at] ^= 0x80;
        expect(() => decoder.decode(id, bad, codec, plain.length, 'pack p1')).toThrow(
          expect.objectContaining({ code: 'VAULT_CORRUPT', message: expect.stringContaining(`chunk ${id.toString('hex')} in pack p1`) }),
        );
      }
      expect(() => decoder.decode(id, blob.subarray(0, 20), codec, plain.length, 'x')).toThrow(
        expect.objectContaining({ code: 'VAULT_CORRUPT' }),
      );
    }
  });

  it('refuses a blob decoded under another id with VAULT_CORRUPT', () => {
    const { blob, codec } = encode(compressible);
    const other = hasher.id(random);
    expect(() => decoder.decode(other, blob, codec, compressible.length, 'x')).toThrow(expect.objectContaining({ code: 'VAULT_CORRUPT' }));
  });

  it('refuses a blob whose id does not match its plaintext (a wrong id key) with VAULT_CORRUPT', () => {
    const plain = randomBytes(4096);
    const wrongId = new ChunkHasher(randomBytes(32)).id(plain);
    const blob = encoder.encode(wrongId, plain).blob;
    expect(() => decoder.decode(wrongId, blob, Codec.Raw, plain.length, 'x')).toThrow(
      expect.objectContaining({ code: 'VAULT_CORRUPT', message: expect.stringContaining('does not match its id') }),
    );
  });

  it('refuses a wrong raw length, a wrong codec and an unknown codec with VAULT_CORRUPT', () => {
    const z = encode(compressible);
    expect(() => decoder.decode(z.id, z.blob, z.codec, compressible.length - 1, 'x')).toThrow(expect.objectContaining({ code: 'VAULT_CORRUPT' }));
    expect(() => decoder.decode(z.id, z.blob, Codec.Raw, compressible.length, 'x')).toThrow(expect.objectContaining({ code: 'VAULT_CORRUPT' }));
    const r = encode(random);
    expect(() => decoder.decode(r.id, r.blob, Codec.Zstd, random.length, 'x')).toThrow(expect.objectContaining({ code: 'VAULT_CORRUPT' }));
    expect(() => decoder.decode(r.id, r.blob, 7, random.length, 'x')).toThrow(
      expect.objectContaining({ code: 'VAULT_CORRUPT', message: expect.stringContaining('unknown codec 7') }),
    );
  });

  it('refuses a blob sealed with another encryption key with VAULT_CORRUPT', () => {
    const { id, blob, codec } = encode(random);
    const stranger = new ChunkDecoder(randomBytes(32), idKey);
    expect(() => stranger.decode(id, blob, codec, random.length, 'x')).toThrow(expect.objectContaining({ code: 'VAULT_CORRUPT' }));
  });
});
