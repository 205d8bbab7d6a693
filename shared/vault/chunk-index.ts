import type { PackEntry } from './pack.js';

/** Where a chunk lives: its pack and the entry from that pack's header. */
export interface ChunkLocation {
  packId: string;
  offset: number;
  length: number;
  rawLength: number;
  codec: number;
}

/**
 * The in-memory view of every chunk the vault holds, built from index objects (and from headers of
 * packs no index names yet). Keys are the 32-byte ids as latin1 strings: compact and fast to hash.
 * A chunk stored in several packs (after a repack or a resumed backup) keeps one location; any
 * copy is as good as another.
 */
export class ChunkIndex {
  private readonly chunks = new Map<string, ChunkLocation>();
  private readonly packs = new Map<string, number>();

  get size(): number {
    return this.chunks.size;
  }

  addPack(packId: string, entries: PackEntry[]): void {
    this.packs.set(packId, (this.packs.get(packId) ?? 0) + entries.length);
    for (const e of entries) {
      const k = e.id.toString('latin1');
      if (!this.chunks.has(k)) {
        this.chunks.set(k, { packId, offset: e.offset, length: e.length, rawLength: e.rawLength, codec: e.codec });
      }
    }
  }

  /** Adds one chunk (e.g. just appended to a pack being written). Keeps an existing location. */
  add(id: Buffer, loc: ChunkLocation): void {
    const k = id.toString('latin1');
    if (!this.chunks.has(k)) this.chunks.set(k, loc);
    this.packs.set(loc.packId, (this.packs.get(loc.packId) ?? 0) + 1);
  }

  has(id: Buffer): boolean {
    return this.chunks.has(id.toString('latin1'));
  }

  get(id: Buffer): ChunkLocation | undefined {
    return this.chunks.get(id.toString('latin1'));
  }

  hasPack(packId: string): boolean {
    return this.packs.has(packId);
  }

  packIds(): IterableIterator<string> {
    return this.packs.keys();
  }

  /** Every chunk as [id, location]. */
  *entries(): IterableIterator<[Buffer, ChunkLocation]> {
    for (const [k, loc] of this.chunks) yield [Buffer.from(k, 'latin1'), loc];
  }
}
