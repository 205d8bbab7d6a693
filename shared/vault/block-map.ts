import { compress, decompress } from 'zstd-napi';
import { CairnError } from '../errors.js';
import { ID_BYTES, open, seal } from './crypto.js';

/**
 * Block maps (FORMAT.md, "Block maps"): the fixed index of one disk in one backup, like PBS's
 * `.fidx`: one 32-byte chunk id per chunk-size position, the zero id for an all-zero chunk (never
 * stored). Position i covers bytes [i*chunkSize, min((i+1)*chunkSize, diskSize)).
 */

export const BLOCK_MAP_MAGIC = Buffer.from('CRNBMAP1', 'ascii');
const HEADER_BYTES = BLOCK_MAP_MAGIC.length + 4 + 8 + 4;
export const ZERO_ID = Buffer.alloc(ID_BYTES);

export class BlockMap {
  readonly ids: Buffer;
  constructor(
    readonly chunkSize: number,
    readonly diskSize: number,
    ids?: Buffer,
  ) {
    const count = Math.ceil(diskSize / chunkSize);
    this.ids = ids ?? Buffer.alloc(count * ID_BYTES);
    if (this.ids.length !== count * ID_BYTES) {
      throw new CairnError('VAULT_CORRUPT', `block map has ${this.ids.length / ID_BYTES} ids, expected ${count}`);
    }
  }

  get count(): number {
    return this.ids.length / ID_BYTES;
  }

  /** A view (not a copy) of the id at position i. */
  id(i: number): Buffer {
    return this.ids.subarray(i * ID_BYTES, (i + 1) * ID_BYTES);
  }

  set(i: number, id: Buffer): void {
    id.copy(this.ids, i * ID_BYTES);
  }

  isZero(i: number): boolean {
    return this.id(i).equals(ZERO_ID);
  }

  /** Length in bytes of the chunk at position i (the last one may be short). */
  lengthAt(i: number): number {
    return Math.min(this.chunkSize, this.diskSize - i * this.chunkSize);
  }
}

export function blockMapKey(backupId: string, disk: number): string {
  return `blockmaps/${backupId}/${disk}`;
}

function aad(key: string): Buffer {
  return Buffer.from(`cairn/blockmap/v1/${key}`);
}

export function encodeBlockMap(encKey: Buffer, objectKey: string, map: BlockMap): Buffer {
  const header = Buffer.alloc(HEADER_BYTES);
  BLOCK_MAP_MAGIC.copy(header, 0);
  header.writeUInt32LE(map.chunkSize, 8);
  header.writeBigUInt64LE(BigInt(map.diskSize), 12);
  header.writeUInt32LE(map.count, 20);
  return seal(encKey, compress(Buffer.concat([header, map.ids]), { compressionLevel: 3 }), aad(objectKey));
}

export function decodeBlockMap(encKey: Buffer, objectKey: string, sealed: Buffer): BlockMap {
  const what = `block map ${objectKey}`;
  let plain: Buffer;
  try {
    plain = decompress(open(encKey, sealed, aad(objectKey), what));
  } catch (err) {
    if (err instanceof CairnError) throw err;
    throw new CairnError('VAULT_CORRUPT', `${what} does not decompress`, { cause: err });
  }
  if (!plain.subarray(0, 8).equals(BLOCK_MAP_MAGIC)) {
    throw new CairnError('VAULT_VERSION', `${what} has an unknown format; upgrade Cairn`);
  }
  const chunkSize = plain.readUInt32LE(8);
  const diskSize = Number(plain.readBigUInt64LE(12));
  const count = plain.readUInt32LE(20);
  const ids = plain.subarray(HEADER_BYTES);
  if (ids.length !== count * ID_BYTES) throw new CairnError('VAULT_CORRUPT', `${what} is truncated`);
  return new BlockMap(chunkSize, diskSize, ids);
}
