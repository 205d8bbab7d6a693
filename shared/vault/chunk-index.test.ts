import { randomBytes, randomInt } from 'node:crypto';

import { describe, expect, it } from 'vitest';

import { ChunkIndex, type ChunkLocation } from './chunk-index.js';
import { ID_BYTES } from './crypto.js';
import { decodeIndexEncoded, encodeIndex } from './index-file.js';
import { encodeEntries, ENTRY_BYTES, type PackEntry } from './pack.js';

function randomLocation(packId: string): ChunkLocation {
  return { packId, offset: randomInt(2 ** 32 - 1), length: randomInt(1 << 24), rawLength: randomInt(1 << 24), codec: randomInt(256) };
}

function entryOf(id: Buffer, loc: ChunkLocation): PackEntry {
  return { id, offset: loc.offset, length: loc.length, rawLength: loc.rawLength, codec: loc.codec };
}

/** Adds each id one at a time to a fresh index and to a Map model; checks every id is found as added. */
function addAllAndCheck(ids: Buffer[]): ChunkIndex {
  const index = new ChunkIndex();
  const model = new Map<string, ChunkLocation>();
  for (const id of ids) {
    const loc = randomLocation('p');
    index.add(id, loc);
    if (!model.has(id.toString('hex'))) model.set(id.toString('hex'), loc);
  }
  expect(index.size).toBe(model.size);
  expect(mismatches(index, model)).toEqual([]);
  return index;
}

function sameLocation(a: ChunkLocation | undefined, b: ChunkLocation | undefined): boolean {
  if (!a || !b) return false;
  const keys = Object.keys(b) as (keyof ChunkLocation)[];
  return Object.keys(a).length === keys.length && keys.every((k) => a[k] === b[k]);
}

/** The ids (hex) of `model` that `index` does not hold with the same location, with what it holds. */
function mismatches(index: ChunkIndex, model: Map<string, ChunkLocation>): { id: string; held?: ChunkLocation; added: ChunkLocation }[] {
  const out: { id: string; held?: ChunkLocation; added: ChunkLocation }[] = [];
  for (const [hex, added] of model) {
    const id = Buffer.from(hex, 'hex');
    const held = index.get(id);
    if (!sameLocation(held, added) || !index.has(id)) out.push({ id: hex, held, added });
  }
  return out;
}

describe('ChunkIndex', () => {
  it('holds tens of thousands of chunks across many packs: get, has, size, packs and entries agree with a Map', () => {
    const index = new ChunkIndex();
    const model = new Map<string, ChunkLocation>();
    const order: string[] = [];
    const packs: string[] = [];
    const all: Buffer[] = [];
    for (let p = 0; p < 150; p++) {
      const packId = randomBytes(16).toString('hex');
      packs.push(packId);
      const entries: PackEntry[] = [];
      for (let i = 0; i < 200; i++) {
        // Every tenth entry repeats a chunk added before (in this or an earlier pack): the first location stays.
        const id = i % 10 === 9 && all.length > 0 ? all[randomInt(all.length)] : randomBytes(ID_BYTES);
        const loc = randomLocation(packId);
        entries.push(entryOf(id, loc));
        const hex = id.toString('hex');
        if (!model.has(hex)) {
          model.set(hex, loc);
          order.push(hex);
          all.push(id);
        }
      }
      if (p % 3 === 0) {
        for (const e of entries) index.add(e.id, { packId, offset: e.offset, length: e.length, rawLength: e.rawLength, codec: e.codec });
      } else {
        index.addPack(packId, entries);
      }
    }
    expect(model.size).toBeGreaterThan(25_000);
    expect(index.size).toBe(model.size);
    expect(mismatches(index, model)).toEqual([]);
    const unknown = Array.from({ length: 2000 }, () => randomBytes(ID_BYTES));
    expect(unknown.filter((id) => index.has(id) || index.get(id) !== undefined)).toEqual([]);

    // Re-adding any chunk, one at a time or in a pack, keeps the first location.
    const again = randomBytes(16).toString('hex');
    index.addPack(again, all.slice(0, 500).map((id) => entryOf(id, randomLocation(again))));
    for (const id of all.slice(500, 1000)) index.add(id, randomLocation(again));
    expect(index.size).toBe(model.size);
    expect(mismatches(index, new Map(all.slice(0, 1000).map((id) => [id.toString('hex'), model.get(id.toString('hex'))!])))).toEqual([]);

    for (const p of packs) expect(index.hasPack(p)).toBe(true);
    expect(index.hasPack(again)).toBe(true);
    expect(index.hasPack(randomBytes(16).toString('hex'))).toBe(false);
    expect([...index.packIds()]).toEqual([...packs, again]);

    const seen = [...index.entries()];
    expect(seen.map(([id]) => id.toString('hex'))).toEqual(order);
    expect(seen.filter(([id, loc]) => !sameLocation(loc, model.get(id.toString('hex'))))).toEqual([]);
  });

  it('stays correct across several doublings of its tables', () => {
    const index = new ChunkIndex();
    const ids: Buffer[] = [];
    for (let n = 1; n <= 9000; n++) {
      const id = randomBytes(ID_BYTES);
      ids.push(id);
      index.add(id, { packId: `pack${n % 7}`, offset: n, length: n * 3, rawLength: n * 5, codec: n % 3 });
      if ((n & (n - 1)) === 0 || ((n - 1) & (n - 2)) === 0) {
        // Just before and just after each power of two, every chunk added so far is found as added.
        expect(index.size).toBe(n);
        const wrong = ids.filter((seen, i) => {
          const m = i + 1;
          const loc = index.get(seen);
          return !loc || loc.packId !== `pack${m % 7}` || loc.offset !== m || loc.length !== m * 3 || loc.rawLength !== m * 5 || loc.codec !== m % 3;
        });
        expect(wrong).toEqual([]);
      }
    }
    expect([...index.packIds()].sort()).toEqual(['pack0', 'pack1', 'pack2', 'pack3', 'pack4', 'pack5', 'pack6']);
  });

  it('tells apart hand-made ids that share their first bytes or differ only in the last byte', () => {
    const samePrefix = Array.from({ length: 300 }, (_, i) => {
      const id = Buffer.alloc(ID_BYTES, 0xab);
      id.writeUInt16BE(i, 8 + (i % 20)); // first 8 bytes equal
      return id;
    });
    const lastByte = Array.from({ length: 256 }, (_, i) => {
      const id = Buffer.alloc(ID_BYTES, 0x11);
      id[ID_BYTES - 1] = i;
      return id;
    });
    const filled = Array.from({ length: 256 }, (_, i) => Buffer.alloc(ID_BYTES, i));
    // Ids equal in every word the table hashes (0, 3 and 7), differing in word 5 only: all in one probe run.
    const sameHash = Array.from({ length: 400 }, (_, i) => {
      const id = Buffer.alloc(ID_BYTES);
      id.writeUInt32LE(i, 20);
      return id;
    });
    const ids = [...samePrefix, ...lastByte, ...filled, ...sameHash];
    // Two ids appear twice: all zeros (filled[0], sameHash[0]) and all 0x11 (filled[0x11], lastByte[0x11]).
    expect(new Set(ids.map((id) => id.toString('hex'))).size).toBe(ids.length - 2);
    const index = addAllAndCheck(ids);
    const near = Buffer.alloc(ID_BYTES, 0x11);
    near[ID_BYTES - 2] = 1; // next to the lastByte ids, but not one of them
    expect(index.has(near)).toBe(false);
    const beyond = Buffer.alloc(ID_BYTES);
    beyond.writeUInt32LE(400, 20);
    expect(index.has(beyond)).toBe(false);
  });

  it('finds ids given as views at any offset, and nothing for ids of another length', () => {
    const index = new ChunkIndex();
    const backing = randomBytes(ID_BYTES * 3 + 1);
    const id = backing.subarray(1, 1 + ID_BYTES); // not 4-byte aligned
    const loc = { packId: 'a', offset: 0xffffffff, length: 0, rawLength: 0xffffffff, codec: 255 };
    index.add(id, loc);
    expect(index.get(Buffer.from(id))).toEqual(loc);
    expect(index.has(id.subarray(0, ID_BYTES - 1))).toBe(false);
    expect(index.get(backing.subarray(1, 2 + ID_BYTES))).toBeUndefined();
    expect(index.has(Buffer.alloc(0))).toBe(false);
    expect(() => index.add(Buffer.alloc(16), loc)).toThrow(RangeError);
    expect(() => index.add(randomBytes(ID_BYTES), { ...loc, offset: 2 ** 32 })).toThrow(RangeError);
    expect(() => index.addPack('b', [{ id: randomBytes(ID_BYTES), offset: 0, length: 1, rawLength: 1, codec: 256 }])).toThrow(RangeError);
    expect(index.size).toBe(1);
  });

  it('hands out locations the caller may change without changing the index', () => {
    const index = new ChunkIndex();
    const id = randomBytes(ID_BYTES);
    index.add(id, { packId: 'a', offset: 1, length: 2, rawLength: 3, codec: 0 });
    const loc = index.get(id)!;
    loc.offset = 99;
    loc.packId = 'b';
    expect(index.get(id)).toEqual({ packId: 'a', offset: 1, length: 2, rawLength: 3, codec: 0 });
  });

  it('takes the entries of a pack as an index object stores them, as it takes them decoded', () => {
    const key = randomBytes(32);
    const packs = Array.from({ length: 20 }, () => {
      const packId = randomBytes(16).toString('hex');
      return { packId, entries: Array.from({ length: 300 }, () => entryOf(randomBytes(ID_BYTES), randomLocation(packId))) };
    });
    packs[7].entries.push(...packs[3].entries.slice(0, 50)); // chunks in two packs: the first stays
    packs[12].entries = [];
    const indexId = randomBytes(16).toString('hex');
    const encoded = decodeIndexEncoded(key, indexId, encodeIndex(key, indexId, packs));
    const fromEncoded = new ChunkIndex(encoded.reduce((sum, p) => sum + p.entries.count, 0) - 1000); // grows past the estimate
    for (const p of encoded) fromEncoded.addPack(p.packId, p.entries);
    const fromObjects = new ChunkIndex();
    for (const p of packs) fromObjects.addPack(p.packId, p.entries);

    expect(fromEncoded.size).toBe(20 * 300 - 300);
    expect([...fromEncoded.packIds()]).toEqual(packs.map((p) => p.packId));
    const model = new Map([...fromObjects.entries()].map(([id, loc]) => [id.toString('hex'), loc]));
    expect(model.get(packs[3].entries[0].id.toString('hex'))!.packId).toBe(packs[3].packId);
    expect(mismatches(fromEncoded, model)).toEqual([]);
    expect([...fromEncoded.entries()].map(([id]) => id.toString('hex'))).toEqual([...model.keys()]);
  });

  it('refuses encoded entries that run past their buffer, adding none of them', () => {
    const index = new ChunkIndex();
    const body = Buffer.alloc(3 * ENTRY_BYTES);
    encodeEntries([0, 1, 2].map((n) => entryOf(Buffer.alloc(ID_BYTES, n + 1), randomLocation('a'))), body, 0);
    expect(() => index.addPack('a', { body, at: ENTRY_BYTES, count: 3 })).toThrow(RangeError);
    expect(index.size).toBe(0);
    index.addPack('a', { body, at: ENTRY_BYTES, count: 2 });
    expect([...index.entries()].map(([id]) => id[0])).toEqual([2, 3]);
  });

  it('counts a pack added with no entries as held', () => {
    const index = new ChunkIndex();
    index.addPack('empty', []);
    expect(index.hasPack('empty')).toBe(true);
    expect(index.size).toBe(0);
    expect([...index.entries()]).toEqual([]);
    expect([...index.packIds()]).toEqual(['empty']);
  });
});
