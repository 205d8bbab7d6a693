import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ZERO_ID } from './block-map.js';
import { cut, gearTable, type CdcParams } from './cdc.js';
import { ChunkHasher, ID_BYTES, newMasterKey } from './crypto.js';
import { ChunkDecoder } from './chunk-codec.js';
import { InlineFirstPool, WorkerPool } from './worker-pool.js';
import { cutOutputBytes, type BatchSlot, type CutSegment, type DecodeItem } from './worker-protocol.js';

// Needs `npm run build` first: the pool runs the compiled worker (dist/shared/vault/chunk-worker.js).

const PARAMS: CdcParams = { min: 4096, avg: 16384, max: 65536 };
const SLOT = 256 * 1024;
const SEGMENTS_PER_SLOT = 8;
const key = newMasterKey();
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

interface Chunk {
  id: Buffer;
  length: number;
  /** The sealed blob, when this chunk was encoded. */
  blob?: Buffer;
  codec?: number;
}

/**
 * Chunks files the way a file backup drives the workers: several files per slot (one segment each),
 * a large file over several requests, each starting where the previous one stopped.
 */
async function chunkFiles(
  pool: Pick<WorkerPool, 'call' | 'broadcast'>,
  files: Buffer[],
  /** The worker for a batch; `slots`: given to the workers already (else new ones are broadcast). */
  opts: { pick?: (batch: number) => number; slots?: BatchSlot[] } = {},
): Promise<Chunk[][]> {
  const pick = opts.pick ?? ((batch: number) => batch % 2);
  const slots: BatchSlot[] = opts.slots ?? [
    { input: new SharedArrayBuffer(SLOT), output: new SharedArrayBuffer(cutOutputBytes(SLOT, SEGMENTS_PER_SLOT, PARAMS)) },
  ];
  if (!opts.slots) await pool.broadcast({ type: 'slots', slots });
  const input = Buffer.from(slots[0].input);
  const output = Buffer.from(slots[0].output);
  const out: Chunk[][] = files.map(() => []);
  const done = files.map(() => 0);
  let batch = 0;
  let next = 0; // the first file not finished
  while (next < files.length) {
    const segments: CutSegment[] = [];
    const owners: number[] = [];
    let at = 0;
    for (let f = next; f < files.length && segments.length < SEGMENTS_PER_SLOT && at < SLOT; f++) {
      const take = Math.min(files[f].length - done[f], SLOT - at);
      files[f].copy(input, at, done[f], done[f] + take);
      segments.push({ length: take, final: done[f] + take === files[f].length });
      owners.push(f);
      at += take;
      if (!segments[segments.length - 1].final) break; // the rest of this file waits for this reply
    }
    const worker = pick(batch);
    const reply = await pool.call(worker, { type: 'cut', batch, slot: 0, segments, params: PARAMS });
    if (reply.type !== 'chunked') throw new Error(`unexpected reply ${reply.type}`);
    const ids = Buffer.from(reply.ids);
    const which: number[] = [];
    const batchChunks: Chunk[] = [];
    let k = 0;
    segments.forEach((seg, s) => {
      const f = owners[s];
      for (let c = 0; c < reply.chunks[s]; c++, k++) {
        const chunk: Chunk = { id: Buffer.from(ids.subarray(k * ID_BYTES, (k + 1) * ID_BYTES)), length: reply.lengths[k] };
        out[f].push(chunk);
        batchChunks.push(chunk);
        if (!chunk.id.equals(ZERO_ID)) which.push(k);
      }
      done[f] += reply.consumed[s];
      if (seg.final) expect(reply.consumed[s]).toBe(seg.length);
    });
    expect(k).toBe(reply.lengths.length);
    const encoded = await pool.call(worker, { type: 'encode', batch, which });
    if (encoded.type !== 'encoded') throw new Error(`unexpected reply ${encoded.type}`);
    for (let i = 0; i < encoded.items.length; i += 5) {
      const [chunk, codec, offset, length] = encoded.items.slice(i, i + 4);
      batchChunks[chunk].blob = Buffer.from(output.subarray(offset, offset + length));
      batchChunks[chunk].codec = codec;
      expect(encoded.items[i + 4]).toBe(batchChunks[chunk].length);
    }
    batch++;
    while (next < files.length && done[next] === files[next].length) next++;
  }
  return out;
}

describe('chunk worker: cut, encode, decode at byte offsets', () => {
  let pool: WorkerPool;
  let dir: string;
  beforeAll(async () => {
    pool = new WorkerPool(key, 1, 2);
    dir = await mkdtemp(join(tmpdir(), 'cairn-worker-'));
  });
  afterAll(async () => {
    await pool.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('cuts and hashes like cdc.ts and the disk chunk ids, files sharing slots and spanning several', async () => {
    const files = [
      randomBytes(1000),
      Buffer.alloc(0),
      Buffer.alloc(200_000), // all zero: zero ids, never encoded
      randomBytes(1_500_000), // spans several slots
      Buffer.concat([randomBytes(70_000), Buffer.alloc(150_000), randomBytes(3)]),
      randomBytes(5000),
    ];
    const got = await chunkFiles(pool, files);
    const gear = gearTable(key.chunkId);
    const hasher = new ChunkHasher(key.chunkId);
    for (const [f, data] of files.entries()) {
      const lengths = cut(data, PARAMS, gear, true);
      expect(got[f].map((c) => c.length), `file ${f}`).toEqual(lengths);
      let at = 0;
      for (const [i, c] of got[f].entries()) {
        const plain = data.subarray(at, at + c.length);
        at += c.length;
        if (plain.every((b) => b === 0)) {
          expect(c.id.equals(ZERO_ID)).toBe(true);
          expect(c.blob).toBeUndefined();
        } else expect(c.id.toString('hex'), `file ${f} chunk ${i}`).toBe(hasher.id(plain).toString('hex'));
      }
    }
    expect(got[2].every((c) => c.id.equals(ZERO_ID))).toBe(true);
    expect(got[1]).toEqual([]);

    // Restore: decode every encoded chunk at its byte offsets; one job writes to several files (fds).
    const paths = files.map((_, f) => join(dir, `restored-${f}`));
    const fds = paths.map((p) => openSync(p, 'w+'));
    try {
      const items: DecodeItem[] = [];
      const ids: Buffer[] = [];
      const blobs: Buffer[] = [];
      let offset = 0;
      got.forEach((chunks, f) => {
        let at = 0;
        for (const c of chunks) {
          if (c.blob) {
            items.push({ offset, length: c.blob.length, codec: c.codec!, rawLength: c.length, offsets: [at], fds: [fds[f]] });
            ids.push(c.id);
            blobs.push(c.blob);
            offset += c.blob.length;
          }
          at += c.length;
        }
      });
      const data = Buffer.concat(blobs);
      const idBytes = Buffer.concat(ids);
      const reply = await pool.call(0, {
        type: 'decode',
        job: 1,
        where: 'test',
        data: new Uint8Array(data).buffer,
        ids: new Uint8Array(idBytes).buffer,
        items,
      });
      if (reply.type !== 'decoded') throw new Error('unexpected reply');
      expect(reply.errors).toEqual([]);
      expect(reply.bytesWritten).toBe(items.reduce((s, it) => s + it.rawLength, 0));
    } finally {
      for (const fd of fds) closeSync(fd);
    }
    for (const [f, data] of files.entries()) {
      // Zero chunks are holes: the restore sets the size; here the file is as long as its last written chunk.
      const restored = Buffer.concat([readFileSync(paths[f]), Buffer.alloc(data.length)]).subarray(0, data.length);
      expect(sha(restored), `file ${f}`).toBe(sha(data));
    }
  });

  it('decodes one chunk to several offsets of the request fd, and reports a damaged blob without writing it', async () => {
    const chunk = randomBytes(3000); // shorter than min: one chunk
    const [[c]] = await chunkFiles(pool, [chunk]);
    const path = join(dir, 'twice');
    const fd = openSync(path, 'w+');
    try {
      const blob = c.blob!;
      const bad = Buffer.from(blob);
      bad[bad.length - 1] ^= 1;
      const item = { length: blob.length, codec: c.codec!, rawLength: c.length };
      const reply = await pool.call(1, {
        type: 'decode',
        job: 2,
        where: 'test pack',
        data: new Uint8Array(Buffer.concat([blob, bad])).buffer,
        ids: new Uint8Array(Buffer.concat([c.id, c.id])).buffer,
        items: [
          { ...item, offset: 0, offsets: [0, 100_000] },
          { ...item, offset: blob.length, offsets: [50_000] },
        ],
        fd,
      });
      if (reply.type !== 'decoded') throw new Error('unexpected reply');
      expect(reply.errors).toEqual([{ index: 1, message: expect.stringContaining('test pack') }]);
      expect(reply.bytesWritten).toBe(2 * chunk.length);
    } finally {
      closeSync(fd);
    }
    const back = readFileSync(path);
    expect(back.length).toBe(103_000);
    expect(sha(back.subarray(0, 3000))).toBe(sha(chunk));
    expect(sha(back.subarray(100_000))).toBe(sha(chunk));
    expect(back.subarray(50_000, 53_000).every((b) => b === 0)).toBe(true);
  });

  it("still hashes fixed disk chunks and decodes them at positions ('hash' path)", async () => {
    const data = Buffer.concat([randomBytes(8192), Buffer.alloc(4096), randomBytes(100)]);
    const slots: BatchSlot[] = [{ input: new SharedArrayBuffer(16384), output: new SharedArrayBuffer(16384 + 4 * 64) }];
    await pool.broadcast({ type: 'slots', slots });
    data.copy(Buffer.from(slots[0].input));
    const hashed = await pool.call(0, { type: 'hash', batch: 9, slot: 0, length: data.length, chunkSize: 4096 });
    if (hashed.type !== 'hashed') throw new Error('unexpected reply');
    const ids = Buffer.from(hashed.ids);
    expect(ids.length).toBe(4 * ID_BYTES);
    expect(ids.subarray(2 * ID_BYTES, 3 * ID_BYTES).equals(ZERO_ID)).toBe(true);
    const enc = await pool.call(0, { type: 'encode', batch: 9, which: [0, 1, 3] });
    if (enc.type !== 'encoded') throw new Error('unexpected reply');
    const out = Buffer.from(slots[0].output);
    const items: DecodeItem[] = [];
    const idList: Buffer[] = [];
    for (let i = 0; i < enc.items.length; i += 5) {
      items.push({ offset: enc.items[i + 2], length: enc.items[i + 3], codec: enc.items[i + 1], rawLength: enc.items[i + 4], positions: [enc.items[i]] });
      idList.push(ids.subarray(enc.items[i] * ID_BYTES, (enc.items[i] + 1) * ID_BYTES));
    }
    const path = join(dir, 'disk');
    const fd = openSync(path, 'w+');
    try {
      const end = items[items.length - 1].offset + items[items.length - 1].length;
      const reply = await pool.call(0, {
        type: 'decode',
        job: 3,
        where: 'disk',
        data: new Uint8Array(out.subarray(0, end)).buffer,
        ids: new Uint8Array(Buffer.concat(idList)).buffer,
        items,
        fd,
        chunkSize: 4096,
      });
      if (reply.type !== 'decoded') throw new Error('unexpected reply');
      expect(reply.errors).toEqual([]);
    } finally {
      closeSync(fd);
    }
    expect(sha(readFileSync(path))).toBe(sha(data));
  });
});

describe('InlineFirstPool', () => {
  it('cuts and encodes on the calling thread until grow(), then on worker threads that got the slots, with the same chunks', async () => {
    const pool = new InlineFirstPool(key, 3, 2);
    const slots: BatchSlot[] = [{ input: new SharedArrayBuffer(SLOT), output: new SharedArrayBuffer(cutOutputBytes(SLOT, SEGMENTS_PER_SLOT, PARAMS)) }];
    try {
      const files = [randomBytes(300_000), randomBytes(5000), Buffer.alloc(100_000), Buffer.concat([randomBytes(40_000), Buffer.alloc(40_000, 7)])];
      await pool.broadcast({ type: 'slots', slots });
      expect(pool.leastBusy()).toBe(0);
      const inline = await chunkFiles(pool, files, { pick: () => pool.leastBusy(), slots });
      expect(pool.grown).toBe(false);
      pool.grow();
      expect(pool.grown).toBe(true);
      const workers = new Set<number>();
      // No new 'slots' request: the threads got the last one when they started.
      const threaded = await chunkFiles(pool, files, {
        pick: () => {
          const w = pool.leastBusy();
          workers.add(w);
          return w;
        },
        slots,
      });
      expect([...workers].every((w) => w >= 1 && w <= 2)).toBe(true);

      const gear = gearTable(key.chunkId);
      const decoder = new ChunkDecoder(key.encryption, key.chunkId);
      for (const [f, data] of files.entries()) {
        const lengths = cut(data, PARAMS, gear, true);
        for (const got of [inline[f], threaded[f]]) {
          expect(got.map((c) => c.length), `file ${f}`).toEqual(lengths);
          let at = 0;
          for (const c of got) {
            const plain = data.subarray(at, at + c.length);
            at += c.length;
            if (c.id.equals(ZERO_ID)) expect(plain.every((b) => b === 0)).toBe(true);
            else expect(sha(decoder.decode(c.id, c.blob!, c.codec!, c.length, 'test'))).toBe(sha(plain));
          }
        }
        expect(threaded[f].map((c) => c.id.toString('hex'))).toEqual(inline[f].map((c) => c.id.toString('hex')));
      }
    } finally {
      await pool.close();
    }
  });

  it('refuses work after close and starts no threads then (work queued before a failure ends there)', async () => {
    const pool = new InlineFirstPool(key, 3, 2);
    await pool.close();
    pool.grow();
    expect(pool.grown).toBe(false);
    await expect(pool.call(0, { type: 'encode', batch: 1, which: [] })).rejects.toMatchObject({ code: 'INTERNAL' });
  });

  it('reports a failure of inline work as a worker thread does: a CairnError keeps its code', async () => {
    const pool = new InlineFirstPool(key, 3, 2);
    try {
      await expect(pool.call(0, { type: 'encode', batch: 42, which: [] })).rejects.toMatchObject({ code: 'INTERNAL', message: expect.stringContaining('no batch 42') });
    } finally {
      await pool.close();
    }
  });
});
