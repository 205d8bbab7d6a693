import { randomBytes } from 'node:crypto';

import { compress } from 'zstd-napi';
import { describe, expect, it } from 'vitest';

import { BlockMap, blockMapKey, decodeBlockMap, encodeBlockMap, ZERO_ID } from './block-map.js';
import { ID_BYTES, seal } from './crypto.js';

const key = randomBytes(32);
const objectKey = blockMapKey('20261125T101500Z-3fa9c2d1', 0);

describe('block maps', () => {
  it('round-trip with a partial last chunk and zero positions', () => {
    const chunkSize = 16384;
    const map = new BlockMap(chunkSize, 3 * chunkSize + 100);
    expect(map.count).toBe(4);
    expect(map.lengthAt(0)).toBe(chunkSize);
    expect(map.lengthAt(3)).toBe(100);
    map.set(0, randomBytes(ID_BYTES));
    map.set(3, randomBytes(ID_BYTES));
    const back = decodeBlockMap(key, objectKey, encodeBlockMap(key, objectKey, map));
    expect(back.chunkSize).toBe(chunkSize);
    expect(back.diskSize).toBe(3 * chunkSize + 100);
    expect(back.count).toBe(4);
    expect(back.ids).toEqual(map.ids);
    expect(back.isZero(1) && back.isZero(2)).toBe(true);
    expect(back.isZero(0) || back.isZero(3)).toBe(false);
    expect(back.lengthAt(3)).toBe(100);
  });

  it('round-trip an empty disk and a disk of one short chunk', () => {
    for (const size of [0, 1]) {
      const map = new BlockMap(4096, size);
      if (size) map.set(0, randomBytes(ID_BYTES));
      const back = decodeBlockMap(key, objectKey, encodeBlockMap(key, objectKey, map));
      expect(back.count).toBe(size);
      expect(back.ids).toEqual(map.ids);
    }
  });

  it('hand out views, not copies, of ids', () => {
    const map = new BlockMap(4096, 8192);
    const id = randomBytes(ID_BYTES);
    map.set(1, id);
    expect(map.id(1)).toEqual(id);
    expect(map.id(0)).toEqual(ZERO_ID);
  });

  it('refuse a map stored under another key, or tampered, as VAULT_CORRUPT', () => {
    const map = new BlockMap(4096, 5 * 4096);
    const sealed = encodeBlockMap(key, objectKey, map);
    expect(() => decodeBlockMap(key, blockMapKey('20261125T101500Z-3fa9c2d1', 1), sealed)).toThrow(
      expect.objectContaining({ code: 'VAULT_CORRUPT' }),
    );
    const bad = Buffer.from(sealed);
    bad[bad.length - 20] ^= 1;
    expect(() => decodeBlockMap(key, objectKey, bad)).toThrow(expect.objectContaining({ code: 'VAULT_CORRUPT' }));
  });

  it('refuse a map whose id count does not match its header as VAULT_CORRUPT', () => {
    const header = Buffer.alloc(24);
    Buffer.from('CRNBMAP1').copy(header, 0);
    header.writeUInt32LE(4096, 8);
    header.writeBigUInt64LE(BigInt(3 * 4096), 12);
    header.writeUInt32LE(3, 20);
    const plain = Buffer.concat([header, Buffer.alloc(2 * ID_BYTES)]);
    const sealed = seal(key, compress(plain), Buffer.from(`cairn/blockmap/v1/${objectKey}`));
    expect(() => decodeBlockMap(key, objectKey, sealed)).toThrow(expect.objectContaining({ code: 'VAULT_CORRUPT' }));
    expect(() => new BlockMap(4096, 3 * 4096, Buffer.alloc(2 * ID_BYTES))).toThrow(expect.objectContaining({ code: 'VAULT_CORRUPT' }));
  });

  it('refuse a body that is not zstd as VAULT_CORRUPT and an unknown magic as VAULT_VERSION', () => {
    const aad = Buffer.from(`cairn/blockmap/v1/${objectKey}`);
    expect(() => decodeBlockMap(key, objectKey, seal(key, Buffer.from('not zstd at all'), aad))).toThrow(
      expect.objectContaining({ code: 'VAULT_CORRUPT' }),
    );
    const plain = Buffer.alloc(24);
    Buffer.from('CRNBMAP2').copy(plain, 0);
    expect(() => decodeBlockMap(key, objectKey, seal(key, compress(plain), aad))).toThrow(
      expect.objectContaining({ code: 'VAULT_VERSION' }),
    );
  });
});
