import { CairnError } from '../errors.js';
import { open, seal } from './crypto.js';
import { decodeEntries, encodeEntries, ENTRY_BYTES, PACK_ID_BYTES, type PackEntry } from './pack.js';

/**
 * Index objects (FORMAT.md, "Index objects"): `index/<32 hex>`, sealed, listing for each pack the
 * entries of its header. An index object is written only after every pack it names is stored.
 */

export const INDEX_MAGIC = Buffer.from('CRNIDX01', 'ascii');

export interface IndexedPack {
  packId: string;
  entries: PackEntry[];
}

export function indexKey(indexId: string): string {
  return `index/${indexId}`;
}

function aad(indexId: string): Buffer {
  return Buffer.from(`cairn/index/v1/${indexId}`);
}

export function encodeIndex(key: Buffer, indexId: string, packs: IndexedPack[]): Buffer {
  let size = INDEX_MAGIC.length + 4;
  for (const p of packs) size += PACK_ID_BYTES + 4 + p.entries.length * ENTRY_BYTES;
  const plain = Buffer.alloc(size);
  INDEX_MAGIC.copy(plain, 0);
  let at = INDEX_MAGIC.length;
  plain.writeUInt32LE(packs.length, at);
  at += 4;
  for (const p of packs) {
    Buffer.from(p.packId, 'hex').copy(plain, at);
    at += PACK_ID_BYTES;
    plain.writeUInt32LE(p.entries.length, at);
    at = encodeEntries(p.entries, plain, at + 4);
  }
  return seal(key, plain, aad(indexId));
}

/**
 * A pack's entries as they are stored: `count` records of ENTRY_BYTES (pack.ts, encodeEntries)
 * starting at `at` in `body`. Lets a reader of many entries skip an object per entry.
 */
export interface EncodedEntries {
  body: Buffer;
  at: number;
  count: number;
}

export interface EncodedIndexedPack {
  packId: string;
  entries: EncodedEntries;
}

export function decodeIndex(key: Buffer, indexId: string, sealed: Buffer): IndexedPack[] {
  const what = `index object ${indexId}`;
  return decodeIndexEncoded(key, indexId, sealed).map((p) => ({
    packId: p.packId,
    entries: decodeEntries(p.entries.body, p.entries.at, p.entries.count, what),
  }));
}

/** As decodeIndex, with each pack's entries left encoded (views of the decrypted body, which is not reused). */
export function decodeIndexEncoded(key: Buffer, indexId: string, sealed: Buffer): EncodedIndexedPack[] {
  const what = `index object ${indexId}`;
  const plain = open(key, sealed, aad(indexId), what);
  if (!plain.subarray(0, INDEX_MAGIC.length).equals(INDEX_MAGIC)) {
    throw new CairnError('VAULT_VERSION', `${what} has an unknown format; upgrade Cairn`);
  }
  let at = INDEX_MAGIC.length;
  if (at + 4 > plain.length) throw new CairnError('VAULT_CORRUPT', `${what} is truncated`);
  const packCount = plain.readUInt32LE(at);
  at += 4;
  const packs: EncodedIndexedPack[] = [];
  for (let i = 0; i < packCount; i++) {
    if (at + PACK_ID_BYTES + 4 > plain.length) throw new CairnError('VAULT_CORRUPT', `${what} is truncated`);
    const packId = plain.subarray(at, at + PACK_ID_BYTES).toString('hex');
    const count = plain.readUInt32LE(at + PACK_ID_BYTES);
    at += PACK_ID_BYTES + 4;
    if (at + count * ENTRY_BYTES > plain.length) throw new CairnError('VAULT_CORRUPT', `${what} is truncated`);
    packs.push({ packId, entries: { body: plain, at, count } });
    at += count * ENTRY_BYTES;
  }
  return packs;
}
