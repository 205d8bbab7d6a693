import { randomBytes } from 'node:crypto';

import { describe, expect, it } from 'vitest';

import { ID_BYTES, seal } from './crypto.js';
import { decodeIndex, encodeIndex, indexKey, INDEX_MAGIC, type IndexedPack } from './index-file.js';

const key = randomBytes(32);
const indexId = randomBytes(16).toString('hex');

function pack(count: number): IndexedPack {
  return {
    packId: randomBytes(16).toString('hex'),
    entries: Array.from({ length: count }, (_, i) => ({
      id: randomBytes(ID_BYTES),
      offset: i * 1000,
      length: 900 + i,
      rawLength: 65536,
      codec: i % 2,
    })),
  };
}

describe('index objects', () => {
  it('round-trip several packs, including one with no entries', () => {
    const packs = [pack(3), pack(0), pack(50)];
    expect(decodeIndex(key, indexId, encodeIndex(key, indexId, packs))).toEqual(packs);
  });

  it('round-trip an index naming no pack', () => {
    expect(decodeIndex(key, indexId, encodeIndex(key, indexId, []))).toEqual([]);
  });

  it('refuse an index object stored under another id (AAD) as VAULT_CORRUPT', () => {
    const sealed = encodeIndex(key, indexId, [pack(2)]);
    expect(() => decodeIndex(key, randomBytes(16).toString('hex'), sealed)).toThrow(expect.objectContaining({ code: 'VAULT_CORRUPT' }));
  });

  it('refuse a tampered or truncated index object as VAULT_CORRUPT', () => {
    const sealed = encodeIndex(key, indexId, [pack(2)]);
    const bad = Buffer.from(sealed);
    bad[20] ^= 0x40;
    expect(() => decodeIndex(key, indexId, bad)).toThrow(expect.objectContaining({ code: 'VAULT_CORRUPT' }));
    expect(() => decodeIndex(key, indexId, sealed.subarray(0, 10))).toThrow(expect.objectContaining({ code: 'VAULT_CORRUPT' }));
  });

  it('refuse a plaintext whose counts run past its end as VAULT_CORRUPT', () => {
    const plain = Buffer.alloc(INDEX_MAGIC.length + 4 + 16 + 4);
    INDEX_MAGIC.copy(plain, 0);
    plain.writeUInt32LE(1, 8);
    plain.writeUInt32LE(3, 8 + 4 + 16); // three entries, none present
    const sealed = seal(key, plain, Buffer.from(`cairn/index/v1/${indexId}`));
    expect(() => decodeIndex(key, indexId, sealed)).toThrow(expect.objectContaining({ code: 'VAULT_CORRUPT' }));
    const twoPacks = Buffer.from(plain.subarray(0, 12));
    twoPacks.writeUInt32LE(2, 8);
    expect(() => decodeIndex(key, indexId, seal(key, twoPacks, Buffer.from(`cairn/index/v1/${indexId}`)))).toThrow(
      expect.objectContaining({ code: 'VAULT_CORRUPT' }),
    );
  });

  it('refuse an unknown magic with VAULT_VERSION', () => {
    const plain = Buffer.alloc(12);
    Buffer.from('CRNIDX02').copy(plain, 0);
    const sealed = seal(key, plain, Buffer.from(`cairn/index/v1/${indexId}`));
    expect(() => decodeIndex(key, indexId, sealed)).toThrow(expect.objectContaining({ code: 'VAULT_VERSION' }));
  });

  it('live under index/<id>', () => {
    expect(indexKey(indexId)).toBe(`index/${indexId}`);
  });
});
