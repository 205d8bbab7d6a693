import { CairnError } from '../errors.js';
import { hexId } from '../clock.js';
import type { ChunkIndex, ChunkLocation } from './chunk-index.js';
import type { IndexedPack } from './index-file.js';
import { packKey, packTail, type PackEntry } from './pack.js';
import type { Vault } from './vault.js';
import { copyInto } from './bytes.js';
import { alignedBuffer } from '../fs/aligned-memory.js';

/**
 * Collects encoded chunk blobs into packs and uploads them, a bounded number at a time. After every
 * `indexEvery` stored packs, and on flush, it writes an index object naming them: an index object
 * never names a pack that is not stored yet (FORMAT.md, "Write order").
 */
export class PackWriter {
  private packId = '';
  private buffer: Buffer | undefined;
  private readonly spareBuffers: Buffer[] = [];
  private entries: PackEntry[] = [];
  private size = 0;
  private readonly uploads = new Set<Promise<void>>();
  private unindexed: IndexedPack[] = [];
  private indexing: Promise<void> = Promise.resolve();
  private failure: unknown;
  /** Bytes of packs and index objects written so far. */
  bytesWritten = 0;

  constructor(
    private readonly vault: Vault,
    private readonly index: ChunkIndex,
    private readonly maxUploads = vault.uploadConcurrency,
    private readonly indexEvery = 8,
  ) {}

  /**
   * Copies a chunk blob into the current pack and records its location in the index at once. The
   * caller may reuse `blob` as soon as this returns. Pack buffers are reused once uploaded, so the
   * writer's memory is (maxUploads + 1) packs whatever the amount of data.
   */
  add(id: Buffer, blob: Buffer, codec: number, rawLength: number): ChunkLocation {
    this.throwIfFailed();
    if (this.size > 0 && this.size + blob.length > this.vault.config.packSize) this.seal();
    if (this.size === 0) {
      this.packId = hexId(this.vault.ids, 16);
      this.buffer = this.spareBuffers.pop();
      const need = Math.max(this.vault.config.packSize, blob.length);
      // Page-aligned: a local vault writes packs with O_DIRECT (shared/fs/aligned-memory.ts).
      if (!this.buffer || this.buffer.length < need) this.buffer = alignedBuffer(need);
    }
    const loc: ChunkLocation = { packId: this.packId, offset: this.size, length: blob.length, rawLength, codec };
    copyInto(blob, this.buffer!, this.size); // from a batch slot (shared memory): see bytes.ts
    this.entries.push({ id: Buffer.from(id), offset: this.size, length: blob.length, rawLength, codec });
    this.size += blob.length;
    this.index.add(id, loc);
    return loc;
  }

  /** Resolves when fewer than maxUploads packs are in flight (back-pressure for the reader). */
  async waitForCapacity(): Promise<void> {
    while (this.uploads.size >= this.maxUploads) {
      await Promise.race(this.uploads);
      this.throwIfFailed();
    }
    this.throwIfFailed();
  }

  /** Seals the open pack, waits for every upload and writes the index for all stored packs. */
  async flush(): Promise<void> {
    if (this.size > 0) this.seal();
    await Promise.all(this.uploads);
    await this.indexing;
    this.throwIfFailed();
    await this.writeIndex();
  }

  private throwIfFailed(): void {
    if (this.failure !== undefined) throw this.failure;
  }

  private seal(): void {
    const packId = this.packId;
    const entries = this.entries;
    const tail = packTail(this.vault.key.encryption, packId, entries);
    const buffer = this.buffer!;
    const body = [buffer.subarray(0, this.size), tail];
    const total = this.size + tail.length;
    this.buffer = undefined;
    this.entries = [];
    this.size = 0;
    const upload = this.vault.store
      .put(packKey(packId), () => body, { ifAbsent: true, retainUntil: this.vault.retainUntil() })
      .then(() => {
        this.bytesWritten += total;
        this.unindexed.push({ packId, entries });
        if (this.unindexed.length >= this.indexEvery) {
          this.indexing = this.indexing.then(() => this.writeIndex());
        }
      })
      .catch((err) => {
        this.failure ??= err instanceof CairnError ? err : new CairnError('INTERNAL', String(err), { cause: err });
      })
      .finally(() => {
        this.uploads.delete(upload);
        this.spareBuffers.push(buffer);
      });
    this.uploads.add(upload);
  }

  private async writeIndex(): Promise<void> {
    if (this.unindexed.length === 0) return;
    const packs = this.unindexed;
    this.unindexed = [];
    try {
      const { size } = await this.vault.writeIndex(packs);
      this.bytesWritten += size;
    } catch (err) {
      this.failure ??= err;
      throw err;
    }
  }
}
