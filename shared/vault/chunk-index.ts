import { ID_BYTES } from './crypto.js';
import type { EncodedEntries } from './index-file.js';
import { ENTRY_AT, ENTRY_BYTES, type PackEntry } from './pack.js';

/** Where a chunk lives: its pack and the entry from that pack's header. */
export interface ChunkLocation {
  packId: string;
  offset: number;
  length: number;
  rawLength: number;
  codec: number;
}

const ID_WORDS = ID_BYTES / 4;
const FIRST_CAPACITY = 256;
/** Multiplier for Fibonacci hashing: spreads ids that differ in few bits over the whole table. */
const GOLDEN = 0x9e3779b1 | 0;

/**
 * The in-memory view of every chunk the vault holds, built from index objects (and from headers of
 * packs no index names yet). A chunk stored in several packs (after a repack or a resumed backup)
 * keeps the first location added; any copy is as good as another.
 *
 * Held in flat typed arrays rather than an object per chunk, so that loading tens of thousands of
 * chunks allocates a few large arrays: chunks are numbered in the order they were first added, and
 * chunk n has its id as 8 little-endian 32-bit words at `ids[8n..8n+7]` and its location in the
 * n-th slot of the column arrays (pack number into `packNames`). `slots` is an open-addressing
 * hash table (power-of-two size, at most half full, linear probing) of chunk number + 1, 0 for
 * free. Offsets and lengths fit 32 bits: the pack format stores them as u32.
 *
 * Only 32-byte ids are held: `has` and `get` find nothing for any other length, and adding an id
 * of another length, or a location that does not fit the format, throws a RangeError (a bug in
 * the caller, not in the vault).
 */
export class ChunkIndex {
  private count = 0;
  private ids: Int32Array;
  private packOf: Int32Array;
  private offsets: Uint32Array;
  private lengths: Uint32Array;
  private rawLengths: Uint32Array;
  private codecs: Uint8Array;
  private slots: Int32Array;
  /** log2 of slots.length, for taking the top bits of the hash. */
  private slotBits: number;
  private readonly packNames: string[] = [];
  /** Every pack added, whether or not it holds the first copy of any chunk, in the order added. */
  private readonly packNumbers = new Map<string, number>();

  /** `expectedChunks`: room to make at once (it grows as needed): saves regrowing while loading. */
  constructor(expectedChunks = 0) {
    let capacity = FIRST_CAPACITY;
    while (capacity < expectedChunks) capacity *= 2;
    this.ids = new Int32Array(capacity * ID_WORDS);
    this.packOf = new Int32Array(capacity);
    this.offsets = new Uint32Array(capacity);
    this.lengths = new Uint32Array(capacity);
    this.rawLengths = new Uint32Array(capacity);
    this.codecs = new Uint8Array(capacity);
    this.slots = new Int32Array(capacity * 2);
    this.slotBits = Math.log2(capacity * 2);
  }

  get size(): number {
    return this.count;
  }

  /** Adds the chunks of a pack's header, as entries or as stored (index-file.ts); keeps existing locations. */
  addPack(packId: string, entries: PackEntry[] | EncodedEntries): void {
    const pack = this.packNumber(packId);
    if (Array.isArray(entries)) {
      this.reserve(this.count + entries.length);
      for (const e of entries) this.insert(e.id, pack, e.offset, e.length, e.rawLength, e.codec);
      return;
    }
    const { body, count } = entries;
    if (!(entries.at >= 0 && entries.at + count * ENTRY_BYTES <= body.length)) {
      throw new RangeError(`${count} entries from ${entries.at} run past the end of ${body.length} bytes`);
    }
    this.reserve(this.count + count);
    for (let i = 0, at = entries.at; i < count; i++, at += ENTRY_BYTES) {
      const offset = body.readUInt32LE(at + ENTRY_AT.offset);
      const length = body.readUInt32LE(at + ENTRY_AT.length);
      this.insertAt(body, at, pack, offset, length, body.readUInt32LE(at + ENTRY_AT.rawLength), body[at + ENTRY_AT.codec]);
    }
  }

  /** Adds one chunk (e.g. just appended to a pack being written). Keeps an existing location. */
  add(id: Buffer, loc: ChunkLocation): void {
    const pack = this.packNumber(loc.packId);
    this.reserve(this.count + 1);
    this.insert(id, pack, loc.offset, loc.length, loc.rawLength, loc.codec);
  }

  has(id: Buffer): boolean {
    return id.length === ID_BYTES && this.findAt(id, 0) >= 0;
  }

  /** has() for the id at `bytes[at..at+32)`, without a view of it. */
  hasAt(bytes: Buffer, at: number): boolean {
    return at >= 0 && at + ID_BYTES <= bytes.length && this.findAt(bytes, at) >= 0;
  }

  /** The chunk's location: a new object on each call, which the caller may keep or change. */
  get(id: Buffer): ChunkLocation | undefined {
    const n = this.find(id);
    return n < 0 ? undefined : this.location(n);
  }

  hasPack(packId: string): boolean {
    return this.packNumbers.has(packId);
  }

  packIds(): IterableIterator<string> {
    return this.packNumbers.keys();
  }

  /** Every chunk as [id, location], in the order first added; each id is a new Buffer. */
  *entries(): IterableIterator<[Buffer, ChunkLocation]> {
    for (let n = 0; n < this.count; n++) {
      const id = Buffer.allocUnsafe(ID_BYTES);
      for (let w = 0; w < ID_WORDS; w++) id.writeInt32LE(this.ids[n * ID_WORDS + w], w * 4);
      yield [id, this.location(n)];
    }
  }

  private location(n: number): ChunkLocation {
    return {
      packId: this.packNames[this.packOf[n]],
      offset: this.offsets[n],
      length: this.lengths[n],
      rawLength: this.rawLengths[n],
      codec: this.codecs[n],
    };
  }

  private packNumber(packId: string): number {
    let pack = this.packNumbers.get(packId);
    if (pack === undefined) {
      pack = this.packNames.length;
      this.packNames.push(packId);
      this.packNumbers.set(packId, pack);
    }
    return pack;
  }

  /** Stores a chunk unless its id is held already; the arrays must have room (reserve). */
  private insert(id: Buffer, pack: number, offset: number, length: number, rawLength: number, codec: number): void {
    if (id.length !== ID_BYTES) throw new RangeError(`a chunk id is ${ID_BYTES} bytes, not ${id.length}`);
    if (!isU32(offset) || !isU32(length) || !isU32(rawLength) || !(codec >= 0 && codec <= 255 && codec === Math.floor(codec))) {
      throw new RangeError(`chunk location out of range: offset ${offset}, length ${length}, raw length ${rawLength}, codec ${codec}`);
    }
    this.insertAt(id, 0, pack, offset, length, rawLength, codec);
  }

  /** As insert, for the id at `bytes[at..at+32)`, with values checked already. */
  private insertAt(bytes: Buffer, at: number, pack: number, offset: number, length: number, rawLength: number, codec: number): void {
    const w0 = bytes.readInt32LE(at);
    const mask = this.slots.length - 1;
    let s = hash(w0, bytes.readInt32LE(at + 12), bytes.readInt32LE(at + 28), this.slotBits);
    for (let held = this.slots[s]; held !== 0; held = this.slots[s]) {
      if (this.ids[(held - 1) * ID_WORDS] === w0 && this.sameId(held - 1, bytes, at)) return;
      s = (s + 1) & mask;
    }
    const n = this.count++;
    this.ids[n * ID_WORDS] = w0;
    for (let w = 1; w < ID_WORDS; w++) this.ids[n * ID_WORDS + w] = bytes.readInt32LE(at + w * 4);
    this.packOf[n] = pack;
    this.offsets[n] = offset;
    this.lengths[n] = length;
    this.rawLengths[n] = rawLength;
    this.codecs[n] = codec;
    this.slots[s] = n + 1;
  }

  /** The chunk number holding `id`, or -1. */
  private find(id: Buffer): number {
    return id.length === ID_BYTES ? this.findAt(id, 0) : -1;
  }

  /** The chunk number holding the id at `bytes[at..at+32)` (in range), or -1. */
  private findAt(bytes: Buffer, at: number): number {
    const w0 = bytes.readInt32LE(at);
    const mask = this.slots.length - 1;
    let s = hash(w0, bytes.readInt32LE(at + 12), bytes.readInt32LE(at + 28), this.slotBits);
    for (let held = this.slots[s]; held !== 0; held = this.slots[s]) {
      if (this.ids[(held - 1) * ID_WORDS] === w0 && this.sameId(held - 1, bytes, at)) return held - 1;
      s = (s + 1) & mask;
    }
    return -1;
  }

  /** Whether chunk n has the id at `bytes[at..at+32)` (words 1..7: the caller compared word 0). */
  private sameId(n: number, bytes: Buffer, at: number): boolean {
    const from = n * ID_WORDS;
    for (let w = 1; w < ID_WORDS; w++) if (this.ids[from + w] !== bytes.readInt32LE(at + w * 4)) return false;
    return true;
  }

  /** Grows the arrays (doubling) so that they hold `chunks` chunks with the table at most half full. */
  private reserve(chunks: number): void {
    let capacity = this.packOf.length;
    if (chunks <= capacity) return;
    while (capacity < chunks) capacity *= 2;
    this.ids = grown(this.ids, capacity * ID_WORDS, Int32Array);
    this.packOf = grown(this.packOf, capacity, Int32Array);
    this.offsets = grown(this.offsets, capacity, Uint32Array);
    this.lengths = grown(this.lengths, capacity, Uint32Array);
    this.rawLengths = grown(this.rawLengths, capacity, Uint32Array);
    this.codecs = grown(this.codecs, capacity, Uint8Array);
    this.slots = new Int32Array(capacity * 2);
    this.slotBits = Math.log2(capacity * 2);
    const mask = this.slots.length - 1;
    for (let n = 0; n < this.count; n++) {
      const at = n * ID_WORDS;
      let s = hash(this.ids[at], this.ids[at + 3], this.ids[at + 7], this.slotBits);
      while (this.slots[s] !== 0) s = (s + 1) & mask;
      this.slots[s] = n + 1;
    }
  }
}

/** Table slot for an id from three of its words: ids are keyed hashes, but tests pick some by hand. */
function hash(w0: number, w3: number, w7: number, bits: number): number {
  return Math.imul(w0 ^ Math.imul(w3 ^ w7, GOLDEN), GOLDEN) >>> (32 - bits);
}

function isU32(v: number): boolean {
  return v >= 0 && v <= 0xffffffff && v === Math.floor(v);
}

function grown<T extends Int32Array | Uint32Array | Uint8Array>(from: T, length: number, make: new (length: number) => T): T {
  const to = new make(length);
  to.set(from);
  return to;
}
