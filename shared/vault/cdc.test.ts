import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { LocalStore } from '../store/local-store.js';
import { cdcMasks, cut, DEFAULT_CDC, gearTable, validCdcParams, type CdcParams } from './cdc.js';
import { cdcParams, parseConfig } from './config.js';
import { Vault } from './vault.js';

const SMALL: CdcParams = { min: 2048, avg: 8192, max: 32768 };
const key = Buffer.alloc(32, 7);
const gear = gearTable(key);

/** Deterministic pseudo-random bytes (so a failure can be reproduced). */
function pseudoRandom(n: number, seed: string): Buffer {
  const out = Buffer.alloc(n);
  let block = createHash('sha256').update(seed).digest();
  for (let at = 0; at < n; at += block.length) {
    block.copy(out, at);
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

function chunksOf(data: Buffer, lengths: number[]): string[] {
  const out: string[] = [];
  let at = 0;
  for (const n of lengths) {
    out.push(createHash('sha256').update(data.subarray(at, at + n)).digest('hex'));
    at += n;
  }
  return out;
}

describe('gear table', () => {
  it('is 256 values fixed by the chunk-id key and different for another key', () => {
    expect(gear.length).toBe(256);
    expect(gearTable(Buffer.alloc(32, 7))).toEqual(gear);
    const other = gearTable(Buffer.alloc(32, 8));
    expect(other).not.toEqual(gear);
    // Values look random: no repeats among 256 draws of 32 bits is overwhelmingly likely.
    expect(new Set(gear).size).toBe(256);
  });

  it('is pinned: the format fixes it (FORMAT.md, "Content-defined chunks"), and so are the cuts', () => {
    // gear[0] = the first 4 bytes, little-endian, of BLAKE3_keyed(7 x 32, "cairn/cdc-gear/v1" | 0x00).
    expect(Array.from(gear.slice(0, 4), (v) => (v >>> 0).toString(16))).toEqual(['fceb300a', '39702b8d', 'ee8ed2c2', '48d72a64']);
    expect(cut(pseudoRandom(200_000, 'golden'), SMALL, gear, true)).toEqual([
      10650, 9653, 8235, 9175, 8735, 9603, 9069, 13214, 11711, 11623, 9253, 9749, 10192, 8462, 10213, 11460, 15870, 9383, 9019, 4731,
    ]);
  });

  it('gives different boundaries for different keys', () => {
    const data = pseudoRandom(1 << 20, 'keys');
    expect(cut(data, SMALL, gearTable(Buffer.alloc(32, 8)), true)).not.toEqual(cut(data, SMALL, gear, true));
  });
});

describe('cut', () => {
  it('is deterministic, covers the data exactly and respects min and max', () => {
    const data = pseudoRandom(4 << 20, 'determinism');
    const a = cut(data, SMALL, gear, true);
    expect(cut(Buffer.from(data), SMALL, gearTable(key), true)).toEqual(a);
    expect(a.reduce((s, n) => s + n, 0)).toBe(data.length);
    for (const n of a.slice(0, -1)) {
      expect(n).toBeGreaterThanOrEqual(SMALL.min);
      expect(n).toBeLessThanOrEqual(SMALL.max);
    }
    // Normalized chunking keeps the mean near avg (min + about avg for these masks).
    const mean = data.length / a.length;
    expect(mean).toBeGreaterThan(SMALL.avg * 0.75);
    expect(mean).toBeLessThan(SMALL.avg * 1.6);
  });

  it('averages about 1 MiB with the default parameters, each chunk 256 KiB to 4 MiB', () => {
    const data = randomBytes(96 << 20);
    const lengths = cut(data, DEFAULT_CDC, gear, true);
    expect(lengths.reduce((s, n) => s + n, 0)).toBe(data.length);
    for (const n of lengths.slice(0, -1)) {
      expect(n).toBeGreaterThanOrEqual(DEFAULT_CDC.min);
      expect(n).toBeLessThanOrEqual(DEFAULT_CDC.max);
    }
    const mean = data.length / lengths.length;
    expect(mean).toBeGreaterThan(0.75 * DEFAULT_CDC.avg);
    expect(mean).toBeLessThan(1.6 * DEFAULT_CDC.avg);
  });

  it('forces a cut at max where no boundary comes (all-zero data)', () => {
    const lengths = cut(Buffer.alloc(100_000), SMALL, gear, true);
    expect(lengths.reduce((s, n) => s + n, 0)).toBe(100_000);
    for (const n of lengths.slice(0, -1)) expect(n).toBeLessThanOrEqual(SMALL.max);
    expect(lengths.length).toBeGreaterThanOrEqual(Math.ceil(100_000 / SMALL.max));
  });

  it('handles short, empty and non-final data', () => {
    expect(cut(Buffer.alloc(0), SMALL, gear, true)).toEqual([]);
    expect(cut(pseudoRandom(1000, 'short'), SMALL, gear, true)).toEqual([1000]);
    // Not final: a tail that might grow is left for the next call.
    expect(cut(pseudoRandom(1000, 'short'), SMALL, gear, false)).toEqual([]);
    const data = pseudoRandom(200_000, 'tail');
    const all = cut(data, SMALL, gear, true);
    const some = cut(data, SMALL, gear, false);
    expect(some).toEqual(all.slice(0, some.length));
    expect(data.length - some.reduce((s, n) => s + n, 0)).toBeLessThan(SMALL.max);
    // Parameters that could never end a chunk are refused, not looped on.
    expect(() => cut(Buffer.alloc(10), { min: 0, avg: 0, max: 0 }, gear, true)).toThrow(expect.objectContaining({ code: 'INTERNAL' }));
    // Exactly max bytes without a boundary are a chunk even when not final.
    expect(cut(Buffer.alloc(SMALL.max), SMALL, gear, false)).toEqual(cut(Buffer.alloc(SMALL.max), SMALL, gear, true));
  });

  it('gives the same chunks however the stream is split into calls', () => {
    const data = pseudoRandom(3 << 20, 'stream');
    const whole = cut(data, SMALL, gear, true);
    for (const piece of [5000, 40_000, 333_333]) {
      const got: number[] = [];
      let start = 0; // first byte not yet in a chunk
      let end = 0; // bytes read so far
      while (start < data.length) {
        end = Math.min(data.length, end + piece);
        const final = end === data.length;
        const lengths = cut(data.subarray(start, end), SMALL, gear, final);
        got.push(...lengths);
        start += lengths.reduce((s, n) => s + n, 0);
      }
      expect(got, `pieces of ${piece}`).toEqual(whole);
    }
  });

  it('resists boundary shift: an insertion near the start changes only the first chunk or two', () => {
    const data = pseudoRandom(8 << 20, 'shift');
    const edited = Buffer.concat([data.subarray(0, 1000), pseudoRandom(100, 'inserted'), data.subarray(1000)]);
    const before = chunksOf(data, cut(data, SMALL, gear, true));
    const after = chunksOf(edited, cut(edited, SMALL, gear, true));
    const old = new Set(before);
    const changed = after.filter((h) => !old.has(h));
    expect(changed.length).toBeGreaterThanOrEqual(1);
    expect(changed.length).toBeLessThanOrEqual(2);
    // Every chunk after the changed ones is found again, in order.
    expect(after.slice(changed.length)).toEqual(before.slice(before.length - (after.length - changed.length)));
    expect(after.length - changed.length).toBeGreaterThan(before.length - 3);

    // A deletion in the middle as well.
    const cutAt = 4 << 20;
    const shorter = Buffer.concat([data.subarray(0, cutAt), data.subarray(cutAt + 77)]);
    const afterDelete = chunksOf(shorter, cut(shorter, SMALL, gear, true));
    expect(afterDelete.filter((h) => !old.has(h)).length).toBeLessThanOrEqual(2);
  });

  it('cuts exactly where adding one byte at a time does (the cuts are the vault format)', () => {
    /** The plain formula of cutPoint's contract: fp = (fp << 1) + gear[byte] from byte min of a chunk on. */
    function oneByteAtATime(data: Uint8Array, p: CdcParams, g: Int32Array, final: boolean): number[] {
      const { strict, loose } = cdcMasks(p);
      const lengths: number[] = [];
      for (let start = 0; start < data.length; ) {
        const rest = data.length - start;
        const limit = Math.min(rest, p.max);
        let length = limit;
        let fp = 0;
        for (let k = p.min; k < limit; k++) {
          fp = ((fp << 1) + g[data[start + k]]) | 0;
          if ((fp & (k < p.avg ? strict : loose)) === 0) {
            length = k + 1;
            break;
          }
        }
        if (!final && length === rest && rest < p.max) break;
        lengths.push(length);
        start += length;
      }
      return lengths;
    }
    const tiny: CdcParams = { min: 1024, avg: 4096, max: 16384 };
    // Random bytes with runs of one value (no boundary in them: cuts forced at max), so every kind of cut occurs.
    const data = pseudoRandom(3 << 20, 'one byte at a time');
    data.fill(0, 1 << 20, (1 << 20) + 50_000);
    data.fill(0xa5, 2 << 20, (2 << 20) + 70_001);
    const gears = [gear, gearTable(Buffer.alloc(32, 9))];
    let cuts = 0;
    // Odd offsets and lengths move the data against the 32-byte blocks and 32-bit words cutPoint reads.
    for (const [from, to] of [[0, data.length], [1, data.length - 1], [3, data.length - 30], [17, 1_500_001], [30, 40_033]]) {
      for (const final of [true, false]) {
        for (const g of gears) {
          const piece = data.subarray(from, to);
          const want = oneByteAtATime(piece, tiny, g, final);
          expect(cut(piece, tiny, g, final), `[${from}, ${to}) final ${final}`).toEqual(want);
          cuts += want.length;
        }
      }
    }
    expect(cuts).toBeGreaterThan(2000);
    // A copy in a buffer of its own (another alignment) and the SMALL parameters agree as well.
    const copy = new Uint8Array(data.subarray(5, 1_000_005));
    expect(cut(copy, SMALL, gear, true)).toEqual(oneByteAtATime(copy, SMALL, gear, true));
  });

  it('uses a strict mask before avg and a loose one after, around log2(avg) bits', () => {
    const { strict, loose } = cdcMasks(DEFAULT_CDC);
    const bits = (m: number) => (m >>> 0).toString(2).replace(/0/g, '').length;
    expect(bits(strict)).toBe(22);
    expect(bits(loose)).toBe(18);
    // High bits from bit 30 down: the ones that depend on the most bytes.
    expect((strict >>> 30) & 3).toBe(1);
    expect((loose >>> 30) & 3).toBe(1);
    expect(strict & 0x1ff).toBe(0);
  });
});

describe('cdc parameters in the vault config', () => {
  let dir: string | undefined;
  afterEach(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
    dir = undefined;
  });

  const good = {
    format: 'cairn-vault',
    version: 1,
    id: '0123456789abcdef0123456789abcdef',
    type: 'filesystem',
    createdAt: '2026-11-25T10:00:00.000Z',
    chunkSize: 65536,
    packSize: 16777216,
    compression: { algorithm: 'zstd', level: 1 },
  };

  it('defaults to DEFAULT_CDC for configs without them and validates them when present', () => {
    expect(cdcParams(parseConfig(Buffer.from(JSON.stringify(good)), '/v'))).toEqual(DEFAULT_CDC);
    const own = { min: 64 * 1024, avg: 256 * 1024, max: 1024 * 1024 };
    expect(cdcParams(parseConfig(Buffer.from(JSON.stringify({ ...good, cdc: own })), '/v'))).toEqual(own);
    for (const cdc of [
      { min: 0, avg: 1024 * 1024, max: 4 << 20 },
      { min: 256 * 1024, avg: 1000 * 1000, max: 4 << 20 },
      { min: 2 << 20, avg: 1 << 20, max: 4 << 20 },
      { min: 256 * 1024, avg: 1 << 20, max: 1 << 20 },
      { min: 256 * 1024, avg: 1 << 20, max: 128 << 20 },
      { min: 256 * 1024, avg: 1 << 20 },
      'big',
    ]) {
      expect(() => parseConfig(Buffer.from(JSON.stringify({ ...good, cdc })), '/v'), JSON.stringify(cdc)).toThrow(
        expect.objectContaining({ code: 'VAULT_CORRUPT', message: expect.stringContaining('chunking') }),
      );
    }
    expect(validCdcParams(DEFAULT_CDC)).toBe(true);
  });

  it('are written by vault init (DEFAULT_CDC unless given); invalid ones are USAGE', async () => {
    dir = await mkdtemp(join(tmpdir(), 'cairn-cdc-'));
    await Vault.init(new LocalStore(join(dir, 'a')), 'p', { kdfLogN: 12 });
    expect(JSON.parse((await new LocalStore(join(dir, 'a')).get('config')).toString()).cdc).toEqual(DEFAULT_CDC);
    const own = { min: 16384, avg: 65536, max: 262144 };
    const v = await Vault.init(new LocalStore(join(dir, 'b')), 'p', { kdfLogN: 12, cdc: own });
    expect(cdcParams(v.config)).toEqual(own);
    expect((await Vault.readConfig(new LocalStore(join(dir, 'b')))).cdc).toEqual(own);
    await expect(
      Vault.init(new LocalStore(join(dir, 'c')), 'p', { kdfLogN: 12, cdc: { min: 1, avg: 3, max: 2 } }),
    ).rejects.toMatchObject({ code: 'USAGE' });
    expect(await new LocalStore(join(dir, 'c')).stat('config')).toBeUndefined();
  });
});
