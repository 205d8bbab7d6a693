import { CairnError } from '../errors.js';
import { ID_BYTES, open, seal } from './crypto.js';

/**
 * Packs (FORMAT.md, "Packs"): many chunk blobs in one object, then a sealed header listing them,
 * then a 4-byte little-endian header length and the 8-byte magic "CRNPACK1". A reader finds the
 * header from the end, so a pack can be written as a stream and read back with two ranged gets.
 */

export const PACK_MAGIC = Buffer.from('CRNPACK1', 'ascii');
export const PACK_TRAILER_BYTES = 4 + PACK_MAGIC.length;
export const PACK_ID_BYTES = 16;
/** id(32) offset(u32) length(u32) rawLength(u32) codec(u8) */
export const ENTRY_BYTES = ID_BYTES + 4 + 4 + 4 + 1;
/** Where each field of an entry starts, from the entry's first byte (the id is at 0). */
export const ENTRY_AT = { offset: ID_BYTES, length: ID_BYTES + 4, rawLength: ID_BYTES + 8, codec: ID_BYTES + 12 } as const;

export interface PackEntry {
  id: Buffer;
  offset: number;
  length: number;
  rawLength: number;
  codec: number;
}

export function packKey(packId: string): string {
  return `packs/${packId.slice(0, 2)}/${packId}`;
}

export function packIdFromKey(key: string): string | undefined {
  const m = /^packs\/[0-9a-f]{2}\/([0-9a-f]{32})$/.exec(key);
  return m ? m[1] : undefined;
}

export function encodeEntries(entries: PackEntry[], into: Buffer, at: number): number {
  for (const e of entries) {
    e.id.copy(into, at);
    into.writeUInt32LE(e.offset, at + ENTRY_AT.offset);
    into.writeUInt32LE(e.length, at + ENTRY_AT.length);
    into.writeUInt32LE(e.rawLength, at + ENTRY_AT.rawLength);
    into.writeUInt8(e.codec, at + ENTRY_AT.codec);
    at += ENTRY_BYTES;
  }
  return at;
}

/** Entries of a header or index object; their ids are views of `buf` (not copied: an index holds many), so `buf` must not be reused. */
export function decodeEntries(buf: Buffer, at: number, count: number, what: string): PackEntry[] {
  if (at + count * ENTRY_BYTES > buf.length) throw new CairnError('VAULT_CORRUPT', `${what} is truncated`);
  const out: PackEntry[] = new Array(count);
  for (let i = 0; i < count; i++) {
    out[i] = {
      id: buf.subarray(at, at + ID_BYTES),
      offset: buf.readUInt32LE(at + ENTRY_AT.offset),
      length: buf.readUInt32LE(at + ENTRY_AT.length),
      rawLength: buf.readUInt32LE(at + ENTRY_AT.rawLength),
      codec: buf.readUInt8(at + ENTRY_AT.codec),
    };
    at += ENTRY_BYTES;
  }
  return out;
}

function headerAad(packId: string): Buffer {
  return Buffer.from(`cairn/pack-header/v1/${packId}`);
}

/** Builds the tail of a pack (sealed header, length, magic) for blobs already laid out. */
export function packTail(key: Buffer, packId: string, entries: PackEntry[]): Buffer {
  const plain = Buffer.alloc(1 + 4 + entries.length * ENTRY_BYTES);
  plain.writeUInt8(1, 0);
  plain.writeUInt32LE(entries.length, 1);
  encodeEntries(entries, plain, 5);
  const sealed = seal(key, plain, headerAad(packId));
  const trailer = Buffer.alloc(PACK_TRAILER_BYTES);
  trailer.writeUInt32LE(sealed.length, 0);
  PACK_MAGIC.copy(trailer, 4);
  return Buffer.concat([sealed, trailer]);
}

/** Parses the last bytes of a pack: returns the sealed header's length, or throws VAULT_CORRUPT. */
export function parseTrailer(trailer: Buffer, packId: string): number {
  if (trailer.length !== PACK_TRAILER_BYTES || !trailer.subarray(4).equals(PACK_MAGIC)) {
    throw new CairnError('VAULT_CORRUPT', `pack ${packId} has no valid trailer`);
  }
  return trailer.readUInt32LE(0);
}

export function openPackHeader(key: Buffer, packId: string, sealed: Buffer): PackEntry[] {
  const plain = open(key, sealed, headerAad(packId), `header of pack ${packId}`);
  if (plain.readUInt8(0) !== 1) {
    throw new CairnError('VAULT_VERSION', `pack ${packId} has header version ${plain.readUInt8(0)}; upgrade Cairn`);
  }
  return decodeEntries(plain, 5, plain.readUInt32LE(1), `header of pack ${packId}`);
}
