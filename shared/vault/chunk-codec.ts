import { Compressor, Decompressor } from 'zstd-napi';
import { CairnError } from '../errors.js';
import { ChunkHasher, open, sealParts } from './crypto.js';

/**
 * How one chunk is stored (FORMAT.md, "Chunk blobs"): the plaintext is compressed with zstd when that
 * makes it smaller, then sealed with AES-256-GCM using the chunk id as associated data. The codec and
 * lengths travel in pack headers and index entries, not inside the blob.
 */

export const enum Codec {
  Raw = 0,
  Zstd = 1,
}

export interface EncodedChunk {
  codec: Codec;
  /** nonce | ciphertext | tag, as parts to avoid a copy. */
  parts: Buffer[];
  length: number;
}

/** Encodes chunks; holds a zstd context, so use one per thread. */
export class ChunkEncoder {
  private readonly compressor = new Compressor();
  constructor(
    private readonly encryptionKey: Buffer,
    compressionLevel: number,
  ) {
    this.compressor.setParameters({ compressionLevel, checksumFlag: false, contentSizeFlag: true });
  }

  encode(id: Buffer, plaintext: Uint8Array): EncodedChunk {
    const data = Buffer.from(plaintext.buffer, plaintext.byteOffset, plaintext.byteLength);
    const compressed = this.compressor.compress(data);
    // Keep compression only when it saves at least 1/32 of the chunk; otherwise decoding costs more than it saves.
    const useZstd = compressed.length < data.length - (data.length >> 5);
    const parts = sealParts(this.encryptionKey, useZstd ? compressed : data, id);
    let length = 0;
    for (const p of parts) length += p.length;
    return { codec: useZstd ? Codec.Zstd : Codec.Raw, parts, length };
  }
}

/** Decodes and checks chunks; holds a zstd context, so use one per thread. */
export class ChunkDecoder {
  private readonly decompressor = new Decompressor();
  private readonly hasher: ChunkHasher;
  constructor(
    private readonly encryptionKey: Buffer,
    chunkIdKey: Buffer,
  ) {
    this.hasher = new ChunkHasher(chunkIdKey);
  }

  /**
   * Returns the plaintext of a chunk blob, after checking that it authenticates, decompresses to
   * rawLength bytes and hashes to `id`. Any failure is VAULT_CORRUPT naming `where`.
   */
  decode(id: Buffer, blob: Buffer, codec: number, rawLength: number, where: string): Buffer {
    const body = open(this.encryptionKey, blob, id, `chunk ${id.toString('hex')} in ${where}`);
    let plain: Buffer;
    if (codec === Codec.Raw) plain = body;
    else if (codec === Codec.Zstd) {
      try {
        plain = this.decompressor.decompress(body);
      } catch (err) {
        throw new CairnError('VAULT_CORRUPT', `chunk ${id.toString('hex')} in ${where} does not decompress`, {
          cause: err,
        });
      }
    } else throw new CairnError('VAULT_CORRUPT', `chunk ${id.toString('hex')} in ${where} has unknown codec ${codec}`);
    if (plain.length !== rawLength || !this.hasher.id(plain).equals(id)) {
      throw new CairnError('VAULT_CORRUPT', `chunk ${id.toString('hex')} in ${where} does not match its id`);
    }
    return plain;
  }
}
