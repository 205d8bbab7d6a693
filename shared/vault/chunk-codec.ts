import binding from 'zstd-napi/binding.js';
import { CairnError } from '../errors.js';
import { ChunkHasher, open, SEAL_OVERHEAD, sealInto } from './crypto.js';

/**
 * How one chunk is stored (FORMAT.md, "Chunks"): the plaintext is compressed with zstd when that
 * saves at least 1/32, then sealed with AES-256-GCM using the chunk id as associated data. The codec
 * and lengths travel in pack headers and index entries, not inside the blob. Both classes hold a
 * zstd context and a scratch buffer: use one instance per thread.
 */

export const enum Codec {
  Raw = 0,
  Zstd = 1,
}

export interface EncodedChunk {
  codec: Codec;
  /** Bytes written: nonce | ciphertext | tag. */
  length: number;
}

/**
 * zstd parameters used for a level, beyond the level's own table: level 3 (file data) with a 64k-entry
 * hash table, a 16k-entry chain table and matches from 4 bytes. Measured on 5 GB of /usr/lib in
 * 1 MiB chunks: 6 to 12% less compression time than plain level 3, and 0.08% more stored. Only the
 * compressor differs: any zstd frame decodes the same.
 */
const TUNED_LEVELS: ReadonlyMap<number, readonly [binding.CParameter, number][]> = new Map([
  [
    3,
    [
      [binding.CParameter.hashLog, 16],
      [binding.CParameter.chainLog, 14],
      [binding.CParameter.minMatch, 4],
    ],
  ],
]);

export class ChunkEncoder {
  private readonly cctx = new binding.CCtx();
  private scratch = Buffer.alloc(0);
  /** The level's parameters are set on the context (TUNED_LEVELS): compress2 uses them. */
  private readonly tuned: boolean;

  constructor(
    private readonly encryptionKey: Buffer,
    private readonly level: number,
  ) {
    const tuning = TUNED_LEVELS.get(level);
    this.tuned = tuning !== undefined;
    if (tuning) {
      this.cctx.setParameter(binding.CParameter.compressionLevel, level);
      for (const [param, value] of tuning) this.cctx.setParameter(param, value);
    }
  }

  /** The most bytes encodeInto may write for a chunk of `length` bytes. */
  static bound(length: number): number {
    return length + SEAL_OVERHEAD;
  }

  /** Encodes a chunk into a buffer of its own (tests and one-off blobs; the workers use encodeInto). */
  encode(id: Buffer, plaintext: Uint8Array): { codec: Codec; blob: Buffer } {
    const out = Buffer.allocUnsafe(ChunkEncoder.bound(plaintext.length));
    const enc = this.encodeInto(id, plaintext, out, 0);
    return { codec: enc.codec, blob: out.subarray(0, enc.length) };
  }

  /** Encodes a chunk into `out` at `at` (room for bound(plaintext.length) is the caller's part). */
  encodeInto(id: Buffer, plaintext: Uint8Array, out: Buffer, at: number): EncodedChunk {
    const data = Buffer.from(plaintext.buffer, plaintext.byteOffset, plaintext.byteLength);
    const bound = binding.compressBound(data.length);
    if (this.scratch.length < bound) this.scratch = Buffer.allocUnsafeSlow(bound);
    const n = this.tuned ? this.cctx.compress2(this.scratch, data) : this.cctx.compress(this.scratch, data, this.level);
    const useZstd = n < data.length - (data.length >> 5);
    const length = sealInto(this.encryptionKey, useZstd ? this.scratch.subarray(0, n) : data, id, out, at);
    return { codec: useZstd ? Codec.Zstd : Codec.Raw, length };
  }
}

export class ChunkDecoder {
  private readonly dctx = new binding.DCtx();
  private readonly hasher: ChunkHasher;
  private scratch = Buffer.alloc(0);
  /** Decrypted (still compressed) bodies; reused, so no chunk costs fresh pages (crypto.ts, CIPHER_PIECE). */
  private cipherScratch = Buffer.alloc(0);

  constructor(
    private readonly encryptionKey: Buffer,
    chunkIdKey: Buffer,
  ) {
    this.hasher = new ChunkHasher(chunkIdKey);
  }

  /**
   * Returns the plaintext of a chunk blob after checking that it authenticates, decompresses to
   * exactly rawLength bytes and hashes to `id`; any failure is VAULT_CORRUPT naming `where`. With
   * `into` (at least rawLength + 1 bytes) the plaintext is placed there; otherwise the result may be
   * a view of a scratch buffer, valid until the next call.
   */
  decode(id: Buffer, blob: Buffer, codec: number, rawLength: number, where: string, into?: Buffer): Buffer {
    const what = `chunk ${id.toString('hex')} in ${where}`;
    let plain: Buffer;
    if (codec === Codec.Raw) {
      // Straight into `into` when it has room; without it the result must outlive the next call (callers cache it).
      const direct = into !== undefined && into.length >= blob.length - SEAL_OVERHEAD;
      const body = open(this.encryptionKey, blob, id, what, direct ? into : undefined);
      if (!direct && into) {
        // `into` is at least rawLength + 1 bytes (the contract): a longer body is not this chunk.
        throw new CairnError('VAULT_CORRUPT', `${what} is longer (${body.length} bytes) than its index says (${rawLength})`);
      }
      plain = body;
    } else if (codec === Codec.Zstd) {
      if (this.cipherScratch.length < blob.length) this.cipherScratch = Buffer.allocUnsafeSlow(Math.max(blob.length, 64 * 1024));
      const body = open(this.encryptionKey, blob, id, what, this.cipherScratch);
      let out = into;
      if (!out || out.length < rawLength + 1) {
        if (this.scratch.length < rawLength + 1) this.scratch = Buffer.allocUnsafeSlow(Math.max(rawLength + 1, 64 * 1024 + 1));
        out = this.scratch;
      }
      let n: number;
      try {
        // One spare byte: a frame that decompresses to more than rawLength is caught below.
        n = this.dctx.decompress(out.subarray(0, rawLength + 1), body);
      } catch (err) {
        throw new CairnError('VAULT_CORRUPT', `${what} does not decompress`, { cause: err });
      }
      plain = out.subarray(0, n);
    } else throw new CairnError('VAULT_CORRUPT', `${what} has unknown codec ${codec}`);
    if (plain.length !== rawLength || !this.hasher.id(plain).equals(id)) {
      throw new CairnError('VAULT_CORRUPT', `${what} does not match its id`);
    }
    return plain;
  }
}
