import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';

import { deleteBackup } from '../../agent/backup/delete-backup.js';
import { LocalStore } from '../store/local-store.js';
import { ZERO_ID } from './block-map.js';
import { cut, gearTable } from './cdc.js';
import { ChunkDecoder, ChunkEncoder } from './chunk-codec.js';
import { ChunkIndex } from './chunk-index.js';
import { ChunkHasher } from './crypto.js';
import { collectGarbage } from './gc.js';
import { manifestKey, type Manifest } from './manifest.js';
import { packKey } from './pack.js';
import { PackWriter } from './pack-writer.js';
import { collectReferences } from './references.js';
import {
  decodeTreeEntries,
  encodeTreeEntries,
  readTree,
  treeBoundaryHash,
  treeBoundarySeed,
  treePartIds,
  PartCursor,
  RawTreePart,
  TREE_FLAGS,
  TREE_TYPE_CODES,
  TreeReader,
  TreeWriter,
  TREE_MAGIC,
  TREE_PART_MAX,
  type EntryType,
  type FileChunk,
  type TreeEntry,
  type TreeRecord,
  type TreeWriterOptions,
} from './tree.js';
import { Vault } from './vault.js';
import { verifyVault } from './verify.js';
import { WorkerPool } from './worker-pool.js';

// The verify test needs `npm run build` first: it decodes chunks in the compiled worker.

const TYPES: EntryType[] = ['dir', 'file', 'symlink', 'hardlink', 'fifo', 'socket', 'chardev', 'blockdev'];

/** Names with bytes that are not UTF-8, control characters, spaces, backslashes. */
const ODD = [Buffer.from([0xff, 0xfe]), Buffer.from('\n\t'), Buffer.from([0xc3, 0x28]), Buffer.from(' \\ "x"'), Buffer.from('ü€😀'), Buffer.from([1])];

/** A canonical text of an entry (keys sorted, bytes in hex), for comparing many entries quickly. */
function canon(e: TreeEntry): string {
  const text = (v: unknown): string => {
    if (Buffer.isBuffer(v)) return `<${v.toString('hex')}>`;
    if (typeof v === 'bigint') return `${v}n`;
    if (Array.isArray(v)) return `[${v.map(text).join(',')}]`;
    if (v && typeof v === 'object') {
      const o = v as Record<string, unknown>;
      return `{${Object.keys(o)
        .filter((k) => o[k] !== undefined)
        .sort()
        .map((k) => `${k}:${text(o[k])}`)
        .join(',')}}`;
    }
    return JSON.stringify(v);
  };
  return text(e);
}

/** `n` entries of every type, sorted by path bytes: dirs d000.., each with entries of odd names. */
function makeEntries(n: number): TreeEntry[] {
  const out: TreeEntry[] = [];
  const base = { mode: 0o755, uid: 0, gid: 0, size: 0, mtimeNs: 0n, atimeNs: 0n, ctimeNs: 0n, dev: 2049, ino: 2n };
  out.push({ ...base, path: Buffer.alloc(0), type: 'dir' });
  let i = 0;
  for (let d = 0; out.length < n; d++) {
    const dir = Buffer.from(`d${String(d).padStart(4, '0')}`);
    out.push({ ...base, path: dir, type: 'dir', ino: BigInt(1000 + d), xattrs: [['user.dir', Buffer.from([d & 0xff])]] });
    for (let k = 0; k < 1000 && out.length < n; k++, i++) {
      const name = Buffer.concat([Buffer.from(`f${String(k).padStart(4, '0')}`), ODD[k % ODD.length]]);
      const path = Buffer.concat([dir, Buffer.from('/'), name]);
      const type = TYPES[i % TYPES.length];
      const e: TreeEntry = {
        path,
        type,
        mode: (i * 37) & 0o7777,
        uid: i % 3 === 0 ? 4294967294 : 1000,
        gid: i % 5,
        size: 0,
        mtimeNs: BigInt(i) * 1_000_000_007n - (i % 7 === 0 ? 10n ** 18n : 0n),
        atimeNs: 2n ** 62n + BigInt(i),
        ctimeNs: 1_764_000_000_123_456_789n + BigInt(i),
        dev: i % 11 === 0 ? 2 ** 40 + 3 : 2049,
        ino: i % 13 === 0 ? 2n ** 64n - 1n - BigInt(i) : i % 13 === 1 ? BigInt(Number.MAX_SAFE_INTEGER - i) : BigInt(5000 + i),
      };
      if (type === 'file') {
        const chunks: FileChunk[] = [];
        for (let c = 0; c < (i >> 3) % 4; c++) chunks.push({ id: c === 1 ? Buffer.from(ZERO_ID) : randomBytes(32), length: 1 + ((i * 7919 + c) % 4_000_000) });
        e.chunks = chunks;
        e.size = chunks.reduce((s, c) => s + c.length, 0);
        if (i % 3 === 0) e.xattrs = [['security.selinux', Buffer.from('system_u:object_r:etc_t:s0\0')], ['user.bin', Buffer.from([0, 255, 10])]];
      }
      if (type === 'symlink') e.target = Buffer.concat([Buffer.from('../'), ODD[i % ODD.length]]);
      if (type === 'hardlink') {
        e.link = Buffer.from('d0000/f0001');
        e.size = 12345;
      }
      if (type === 'chardev' || type === 'blockdev') e.rdev = (8 << 8) | (i & 0xff);
      if (i % 17 === 0) e.warning = `unreadable: EACCES ${i} ü`;
      out.push(e);
    }
  }
  return out.sort((a, b) => Buffer.compare(a.path, b.path));
}

/** Writes a tree into the vault as a backup does (parts into a PackWriter, flushed); `added`: chunks the writer got. */
async function writeTree(
  vault: Vault,
  entries: TreeEntry[],
  opts: TreeWriterOptions = {},
): Promise<{ record: TreeRecord; parts: string[]; tree: TreeWriter; index: ChunkIndex; added: number }> {
  const { index } = await vault.loadIndex();
  const before = index.size;
  const writer = new PackWriter(vault, index);
  const tree = new TreeWriter(vault, writer, index, opts);
  for (const e of entries) await tree.add(e);
  const record = await tree.finish();
  await writer.flush();
  return { record, parts: await treePartIds(vault, index, record), tree, index, added: index.size - before };
}

async function readAll(vault: Vault, record: TreeRecord, index?: ChunkIndex): Promise<TreeEntry[]> {
  const out: TreeEntry[] = [];
  for await (const e of readTree(vault, index ?? (await vault.loadIndex()).index, record)) out.push(e);
  return out;
}

describe('tree', () => {
  let dir: string;
  let vault: Vault;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cairn-tree-'));
    vault = await Vault.init(new LocalStore(dir), 'tree test', { kdfLogN: 12, chunkSize: 4096, packSize: 64 * 1024 });
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('round-trips 100k entries of every type, odd-byte paths and xattrs across parts stored as chunks', async () => {
    const entries = makeEntries(100_000);
    const { record, parts, tree, index, added } = await writeTree(vault, entries);
    // About one entry in 64 ends a part past 4 KiB: some 800 parts, each a chunk in a pack, no other
    // objects; about one part in 32 ends a part list (chunks too), which the manifest names.
    expect(parts.length).toBeGreaterThan(400);
    expect(parts.length).toBeLessThan(3200);
    expect(record.partCount).toBe(parts.length);
    expect(record.parts).toBeUndefined();
    expect(new Set(parts).size).toBe(parts.length);
    expect(tree.partsStored).toBe(parts.length);
    expect(record.partLists!.length).toBeGreaterThan(parts.length / 100);
    expect(record.partLists!.length).toBeLessThan(parts.length / 10);
    expect(tree.listsStored).toBe(record.partLists!.length);
    expect(added).toBe(parts.length + record.partLists!.length);
    for (const id of [...parts, ...record.partLists!]) expect(index.has(Buffer.from(id, 'hex')), id).toBe(true);
    expect(record.entries).toBe(entries.length);
    expect(record.files).toBe(entries.filter((e) => e.type === 'file').length);
    expect(record.dirs).toBe(entries.filter((e) => e.type === 'dir').length);
    expect(record.bytes).toBe(entries.filter((e) => e.type === 'file').reduce((s, e) => s + e.size, 0));
    expect(record.partial).toBe(entries.filter((e) => e.warning).length);
    const kinds = new Set<string>();
    for await (const o of vault.store.list('')) kinds.add(o.key.split('/')[0]);
    expect([...kinds].sort()).toEqual(['config', 'index', 'keys', 'packs']);

    let n = 0;
    const loaded = (await vault.loadIndex()).index;
    const gets = vault.store.requests.GET;
    for await (const e of readTree(vault, loaded, record)) {
      const want = entries[n++];
      if (canon(e) !== canon(want)) expect(e).toEqual(want);
    }
    expect(n).toBe(entries.length);
    // Parts that follow each other in a pack come in one ranged get: a get per pack, not per part.
    const packs = new Set(parts.map((id) => index.get(Buffer.from(id, 'hex'))!.packId));
    expect(packs.size).toBeLessThan(parts.length / 5);
    expect(vault.store.requests.GET - gets).toBeLessThanOrEqual(record.partLists!.length + packs.size + 1);
    // Every type and flag occurred.
    expect(new Set(entries.map((e) => e.type))).toEqual(new Set(TYPES));
  });

  it('has the layout FORMAT.md gives (a golden part plaintext)', () => {
    const base = { mode: 0o755, uid: 0, gid: 0, size: 0, mtimeNs: 0n, atimeNs: 0n, ctimeNs: 0n, dev: 1, ino: 2n };
    const entries: TreeEntry[] = [
      { ...base, path: Buffer.alloc(0), type: 'dir' },
      {
        path: Buffer.from('a'),
        type: 'file',
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        size: 5,
        mtimeNs: 1_700_000_000_123_456_789n,
        atimeNs: -1n,
        ctimeNs: 0n,
        dev: 1,
        ino: 3n,
        xattrs: [['user.k', Buffer.from('v')]],
        chunks: [{ id: Buffer.alloc(32, 0xab), length: 5 }],
      },
      { ...base, path: Buffer.from('a/l'), type: 'symlink', mode: 0o777, target: Buffer.from([0x78, 0xff]), warning: 'w' },
    ];
    const golden = [
      '43524e5452454531 03000000', // magic, count
      '00 00 00 00 ed03 00 00 00 0000000000000000 0000000000000000 0000000000000000 01 02', // root dir
      '00 01 61 01 18 a403 e807 e807 05 15cd853dfe9c9717 ffffffffffffffff 0000000000000000 01 03', // file 'a'
      `01 06 757365722e6b 01 76 01 ${'ab'.repeat(32)} 05`, // its xattr and chunk
      '01 02 2f6c 02 21 ff03 00 00 00 0000000000000000 0000000000000000 0000000000000000 01 02 02 78ff 01 77', // 'a/l' symlink, warning
    ]
      .join('')
      .replace(/ /g, '');
    expect(encodeTreeEntries(entries).toString('hex')).toBe(golden);
    expect(decodeTreeEntries(Buffer.from(golden, 'hex'), 'golden').map(canon)).toEqual(entries.map(canon));
  });

  it('stores inode numbers up to 2^64 - 1 as LEB128, byte for byte as numbers below 2^53 always were', () => {
    const base = { mode: 0, uid: 0, gid: 0, size: 0, mtimeNs: 0n, atimeNs: 0n, ctimeNs: 0n, dev: 0 };
    // ino -> its varint bytes; the first four are what trees written with a Number ino hold.
    const pinned: [bigint, string][] = [
      [0n, '00'],
      [300n, 'ac02'],
      [2n ** 32n + 5n, '8580808010'],
      [2n ** 53n - 1n, 'ffffffffffffff0f'],
      [2n ** 53n, '8080808080808010'],
      [0x8000_0000_0000_0001n, '81808080808080808001'],
      [2n ** 64n - 1n, 'ffffffffffffffffff01'],
    ];
    const entries: TreeEntry[] = [{ ...base, path: Buffer.alloc(0), type: 'dir', ino: 0n }];
    for (const [i, [ino]] of pinned.entries()) if (i) entries.push({ ...base, path: Buffer.from([0x61 + i]), type: 'fifo', ino });
    const plain = encodeTreeEntries(entries);
    // Magic and count, then per entry: shared, suffix length, a 1-byte path (none for the root), type,
    // flags, mode, uid, gid, size (0 each), three times, dev (0), and ino last.
    let at = 12;
    for (const [i, [, hex]] of pinned.entries()) {
      at += 2 + (i ? 1 : 0) + 2 + 4 + 24 + 1;
      expect(plain.subarray(at, at + hex.length / 2).toString('hex'), `ino ${pinned[i][0]}`).toBe(hex);
      at += hex.length / 2;
    }
    expect(at).toBe(plain.length);
    expect(decodeTreeEntries(plain, 'pinned').map((e) => e.ino)).toEqual(pinned.map(([ino]) => ino));

    expect(() => encodeTreeEntries([{ ...entries[0], ino: 2n ** 64n }])).toThrow(expect.objectContaining({ code: 'INTERNAL' }));
    expect(() => encodeTreeEntries([{ ...entries[0], ino: -1n }])).toThrow(expect.objectContaining({ code: 'INTERNAL' }));
    // 2^64 as LEB128 (10 bytes), and an 11-byte run: damaged.
    const root = encodeTreeEntries([entries[0]]);
    for (const ino of ['80808080808080808002', '8080808080808080808000']) {
      const bad = Buffer.concat([root.subarray(0, root.length - 1), Buffer.from(ino, 'hex')]);
      expect(() => decodeTreeEntries(bad, 'bad')).toThrow(expect.objectContaining({ code: 'VAULT_CORRUPT' }));
    }
  });

  it('refuses entries out of order, duplicates and chunks that do not cover the size (INTERNAL)', async () => {
    const { index } = await vault.loadIndex();
    const writer = new PackWriter(vault, index);
    const w = new TreeWriter(vault, writer, index);
    const e = (path: string, extra: Partial<TreeEntry> = {}): TreeEntry => ({
      path: Buffer.from(path),
      type: 'dir',
      mode: 0o755,
      uid: 0,
      gid: 0,
      size: 0,
      mtimeNs: 0n,
      atimeNs: 0n,
      ctimeNs: 0n,
      dev: 1,
      ino: 1n,
      ...extra,
    });
    await w.add(e(''));
    await w.add(e('a'));
    // A caller's bug, thrown at once (add is synchronous unless a part waits for the writer).
    expect(() => w.add(e('a'))).toThrow(expect.objectContaining({ code: 'INTERNAL' }));
    expect(() => w.add(e('0'))).toThrow(expect.objectContaining({ code: 'INTERNAL' }));
    expect(() => w.add(e('b', { type: 'file', size: 10, chunks: [{ id: randomBytes(32), length: 9 }] }))).toThrow(
      expect.objectContaining({ code: 'INTERNAL' }),
    );
    // Byte order: '.' (0x2e) sorts before '/' (0x2f), and 0xff after everything.
    await w.add(e('a.b'));
    await w.add(e('a/b'));
    await w.add(e('a\xff', {}));
    const record = await w.finish();
    await writer.flush();
    const paths = (await readAll(vault, record)).map((x) => x.path.toString('latin1'));
    expect(paths).toEqual(['', 'a', 'a.b', 'a/b', Buffer.from('a\xff').toString('latin1')]);
  });

  it('reports a missing or damaged part as VAULT_CORRUPT naming it, an unknown layout as VAULT_VERSION', async () => {
    const { record, parts, index } = await writeTree(vault, makeEntries(2000));
    expect(parts.length).toBeGreaterThan(2);
    const id1 = parts[1];
    const loc1 = index.get(Buffer.from(id1, 'hex'))!;
    const corrupt = (p: Promise<unknown>, id: string) =>
      expect(p).rejects.toMatchObject({ code: 'VAULT_CORRUPT', message: expect.stringMatching(new RegExp(`tree part (list )?${id}.*cairn vault verify`)) });

    // Not in the index (e.g. its pack was deleted and the index rebuilt).
    const without = new ChunkIndex();
    for (const [id, loc] of index.entries()) if (id.toString('hex') !== id1) without.add(id, loc);
    await corrupt(drain(readTree(vault, without, record)), id1);
    // Another part's blob under its id (a part moved or swapped) does not authenticate.
    const swapped = new ChunkIndex();
    for (const [id, loc] of index.entries()) swapped.add(id, id.toString('hex') === id1 ? index.get(Buffer.from(parts[2], 'hex'))! : loc);
    await corrupt(drain(readTree(vault, swapped, record)), id1);
    // A flipped byte in its pack.
    const pack = await vault.store.get(packKey(loc1.packId));
    const damaged = Buffer.from(pack);
    damaged[loc1.offset + 40] ^= 1;
    await vault.store.put(packKey(loc1.packId), () => damaged);
    await corrupt(drain(readTree(vault, index, record)), id1);
    // Its pack gone: the first part or part list it held is named (lists are read first).
    await vault.store.delete(packKey(loc1.packId));
    const firstInPack = [...record.partLists!, ...parts].find((id) => index.get(Buffer.from(id, 'hex'))!.packId === loc1.packId)!;
    await corrupt(drain(readTree(vault, index, record)), firstInPack);

    // A part of a layout this Cairn does not know, stored as a chunk like any part.
    expect(TREE_MAGIC.toString()).toBe('CRNTREE1');
    const future = Buffer.concat([Buffer.from('CRNTREE9'), Buffer.alloc(4)]);
    const fid = new ChunkHasher(vault.key.chunkId).id(future);
    const writer = new PackWriter(vault, index);
    const enc = new ChunkEncoder(vault.key.encryption, 3).encode(fid, future);
    writer.add(fid, enc.blob, enc.codec, future.length);
    await writer.flush();
    const futureRecord: TreeRecord = { parts: [fid.toString('hex')], entries: 0, files: 0, dirs: 0, bytes: 0, partial: 0 };
    await expect(drain(readTree(vault, index, futureRecord))).rejects.toMatchObject({ code: 'VAULT_VERSION' });
    // A record of the layout before parts were chunks (a part count, a `trees/` key).
    const older = { key: 'trees/x', parts: 1, entries: 1, files: 0, dirs: 1, bytes: 0, partial: 0 } as unknown as TreeRecord;
    await expect(drain(readTree(vault, index, older))).rejects.toMatchObject({ code: 'VAULT_VERSION' });
  });

  it('shares unchanged parts between trees: one changed entry of 20 000 stores 1-2 new parts', async () => {
    const entries = makeEntries(20_000);
    const first = await writeTree(vault, entries);
    const parts = first.parts.length;
    expect(parts).toBeGreaterThan(80);

    // The same tree again: every part and list is reused, nothing is written.
    const same = await writeTree(vault, entries);
    expect(same.parts).toEqual(first.parts);
    expect(same.record.partLists).toEqual(first.record.partLists);
    expect(same.added).toBe(0);
    expect(same.tree.partsReused).toBe(parts);
    // The packs of reused parts and lists are reported (immutable vaults extend their retention).
    const used = [...first.parts, ...first.record.partLists!].map((id) => same.index.get(Buffer.from(id, 'hex'))!.packId);
    expect([...same.tree.packsReused].sort()).toEqual([...new Set(used)].sort());

    // One entry in the middle changed (as an edited file in an incremental).
    const mid = entries.findIndex((e, i) => i >= 10_000 && e.type === 'file');
    const changed = entries.slice();
    changed[mid] = { ...entries[mid], mtimeNs: entries[mid].mtimeNs + 1n, size: 7, chunks: [{ id: randomBytes(32), length: 7 }] };
    const second = await writeTree(vault, changed);
    expect(second.tree.partsStored).toBeGreaterThanOrEqual(1);
    expect(second.tree.partsStored).toBeLessThanOrEqual(2);
    expect(second.parts.filter((id) => !first.parts.includes(id)).length).toBe(second.tree.partsStored);
    // The list holding the changed part (or two, when its boundary moved), and no other.
    expect(second.tree.listsStored).toBeGreaterThanOrEqual(1);
    expect(second.tree.listsStored).toBeLessThanOrEqual(2);
    expect(second.record.partLists!.filter((id) => !first.record.partLists!.includes(id)).length).toBe(second.tree.listsStored);
    expect(second.added).toBe(second.tree.partsStored + second.tree.listsStored);
    expect((await readAll(vault, second.record)).map(canon)).toEqual(changed.map(canon));
    // The first tree still reads as it was.
    expect((await readAll(vault, first.record)).length).toBe(entries.length);
  });

  it('reuses a parent part given again entry for entry without encoding it, and encodes what a change leaves of a part', async () => {
    const entries = makeEntries(20_000);
    const first = await writeTree(vault, entries);
    const { index } = await vault.loadIndex();
    const parent: RawTreePart[] = [];
    const reader = new TreeReader(vault, index, first.record);
    for (let p = await reader.nextRawPart(); p; p = await reader.nextRawPart()) parent.push(p);
    expect(parent.map((p) => p.id.toString('hex'))).toEqual(first.parts);

    /**
     * Writes the parent's entries again as an incremental merge does: runs of unchanged entries
     * with addStored (in runs of up to 3, as they queue behind waiting entries), the others with add.
     */
    const rewrite = async (changed: Map<number, TreeEntry | null>, into = index, appended: TreeEntry[] = []) => {
      const writer = new PackWriter(vault, into);
      const tree = new TreeWriter(vault, writer, into);
      const hash = vi.spyOn(ChunkHasher.prototype, 'id');
      let n = 0;
      for (const part of parent) {
        const cursor = new PartCursor();
        cursor.start(part);
        let run = 0;
        const flush = async (at: number) => {
          if (run) await tree.addStored(part, at - run, run);
          run = 0;
        };
        while (cursor.next()) {
          const c = changed.get(n++);
          if (c === undefined) {
            run++;
            if (run === 3) await flush(cursor.n + 1);
            continue;
          }
          await flush(cursor.n);
          if (c !== null) await tree.add(c); // null: removed
        }
        await flush(part.count);
      }
      for (const e of appended) await tree.add(e);
      const record = await tree.finish();
      await writer.flush();
      const hashed = hash.mock.calls.length;
      hash.mockRestore();
      return { record, tree, hashed, parts: await treePartIds(vault, into, record) };
    };

    // All as before: every part reused by id, nothing stored, nothing hashed but the part lists and
    // the last part (finish closed it, not a boundary: it is encoded again, and found stored).
    const same = await rewrite(new Map());
    expect(same.parts).toEqual(first.parts);
    expect(same.record).toEqual(first.record);
    expect(same.tree.partsReused).toBe(first.parts.length);
    expect(same.tree.partsStored).toBe(0);
    expect(same.hashed).toBe(first.record.partLists!.length + 1);

    // One entry changed, one removed (in other parts): those parts are encoded again (the entries
    // before the change too), the others reused.
    const mid = entries.findIndex((e, i) => i >= 10_000 && e.type === 'file');
    const edited = { ...entries[mid], mtimeNs: entries[mid].mtimeNs + 1n };
    const gone = 15_000;
    const second = await rewrite(new Map([[mid, edited], [gone, null]]));
    const want = entries.map((e, i) => (i === mid ? edited : e)).filter((_, i) => i !== gone);
    expect((await readAll(vault, second.record)).map(canon)).toEqual(want.map(canon));
    expect(second.record).toMatchObject({ entries: want.length, files: want.filter((e) => e.type === 'file').length, partial: want.filter((e) => e.warning).length });
    expect(second.tree.partsStored).toBeGreaterThanOrEqual(2);
    expect(second.tree.partsStored).toBeLessThanOrEqual(4);
    expect(second.tree.partsReused).toBe(second.parts.length - second.tree.partsStored);
    expect(second.hashed - second.tree.partsStored - second.record.partLists!.length).toBeGreaterThanOrEqual(0);
    expect(second.hashed - second.tree.partsStored - second.record.partLists!.length).toBeLessThanOrEqual(1);
    // What a writer given plain entries makes, byte for byte: it finds every part stored already.
    const plain = await writeTree(vault, want);
    expect(plain.parts).toEqual(second.parts);
    expect(plain.record).toEqual(second.record);
    expect(plain.tree.partsStored).toBe(0);

    // Entries after the parent's last part (closed by finish, not at a boundary): that part is not
    // reused as it is but goes on with them, as a writer given plain entries does.
    const last = entries[entries.length - 1];
    const after = [1, 2, 3].map((k) => ({ ...last, path: Buffer.concat([last.path, Buffer.from(`~${k}`)]) }));
    const appended = await rewrite(new Map(), index, after);
    const plainAppended = await writeTree(vault, [...entries, ...after]);
    expect(appended.parts).toEqual(plainAppended.parts);
    expect(appended.record).toEqual(plainAppended.record);
    expect(appended.parts.slice(0, -1)).toEqual(first.parts.slice(0, -1));

    // A part the index lacks (its pack condemned by a pending gc) is encoded and stored again.
    const without = new ChunkIndex();
    const dropped = first.parts[3];
    for (const [id, loc] of index.entries()) if (id.toString('hex') !== dropped) without.add(id, loc);
    const again = await rewrite(new Map(), without);
    expect(again.tree.partsStored).toBe(1);
    expect(without.has(Buffer.from(dropped, 'hex'))).toBe(true);
    expect(again.parts).toEqual(first.parts);
    expect(again.record).toEqual(first.record);
  });

  it('takes a parent tree cut by other rules (an older mask) in place: its parts are reused where they end at a boundary, the tree reads back whole', async () => {
    const entries = makeEntries(8000);
    const old = await writeTree(vault, entries, { boundaryMask: 0xff });
    const { index } = await vault.loadIndex();
    const reader = new TreeReader(vault, index, old.record);
    const writer = new PackWriter(vault, index);
    const tree = new TreeWriter(vault, writer, index);
    const cursor = new PartCursor();
    for (let part = await reader.nextRawPart(); part; part = await reader.nextRawPart()) {
      cursor.start(part);
      while (cursor.next()) await tree.addStored(part, cursor.n, 1);
    }
    const record = await tree.finish();
    await writer.flush();
    expect((await readAll(vault, record)).map(canon)).toEqual(entries.map(canon));
    expect(record).toMatchObject({ entries: old.record.entries, files: old.record.files, dirs: old.record.dirs, bytes: old.record.bytes, partial: old.record.partial });
    // An old boundary (8 low bits zero) is a boundary now (6 bits): every part is reused (the last
    // one encoded again, as finish closed it) and none is cut anew.
    expect(await treePartIds(vault, index, record)).toEqual(old.parts);
    expect(tree.partsReused).toBe(old.parts.length);
    expect(tree.partsStored).toBe(0);
  });

  it('reads parts in place with a PartCursor: the same fields as decodeTreeEntries, order and counts checked', async () => {
    const entries = makeEntries(5000);
    const { record } = await writeTree(vault, entries);
    const { index } = await vault.loadIndex();
    const reader = new TreeReader(vault, index, record);
    const cursor = new PartCursor();
    let n = 0;
    for (let part = await reader.nextRawPart(); part; part = await reader.nextRawPart()) {
      cursor.start(part);
      while (cursor.next()) {
        const e = entries[n++];
        const plain = part.plain;
        expect(Buffer.from(cursor.path.subarray(0, cursor.pathLength))).toEqual(e.path);
        expect(cursor.entry()).toEqual(e);
        expect([cursor.type, cursor.mode, cursor.uid, cursor.gid, cursor.size, cursor.dev]).toEqual([TREE_TYPE_CODES[e.type], e.mode, e.uid, e.gid, e.size, e.dev]);
        expect(cursor.ino).toBe(e.ino < 2n ** 53n ? Number(e.ino) : -1);
        expect([0, 8, 16].map((d) => plain.readBigInt64LE(cursor.timesAt + d))).toEqual([e.mtimeNs, e.atimeNs, e.ctimeNs]);
        if (e.target) expect(plain.subarray(cursor.targetAt, cursor.targetAt + cursor.targetLength)).toEqual(e.target);
        if (e.rdev !== undefined) expect(cursor.rdev).toBe(e.rdev);
        if (e.chunks) {
          expect(cursor.chunkCount).toBe(e.chunks.length);
          if (e.chunks.length) expect(plain.subarray(cursor.chunksAt, cursor.chunksAt + 32)).toEqual(e.chunks[0].id);
        }
        expect(cursor.flags & TREE_FLAGS.WARNING).toBe(e.warning === undefined ? 0 : TREE_FLAGS.WARNING);
      }
      // A part's totals, once read through.
      const own = part.entries();
      expect([part.files, part.dirs, part.bytes, part.partial]).toEqual([
        own.filter((e) => e.type === 'file').length,
        own.filter((e) => e.type === 'dir').length,
        own.filter((e) => e.type === 'file').reduce((s, e) => s + e.size, 0),
        own.filter((e) => e.warning !== undefined).length,
      ]);
    }
    expect(n).toBe(entries.length);

    // Out of order within a part, across parts, a count the bytes do not hold, bytes after the last entry.
    const base = { mode: 0o644, uid: 0, gid: 0, size: 0, mtimeNs: 0n, atimeNs: 0n, ctimeNs: 0n, dev: 1, ino: 1n, type: 'fifo' as const };
    const raw = (paths: string[], edit?: (b: Buffer) => Buffer) => {
      const plain = encodeTreeEntries(paths.map((p) => ({ ...base, path: Buffer.from(p) })));
      const b = edit ? edit(plain) : plain;
      return new RawTreePart(Buffer.alloc(32), b, b.readUInt32LE(8), 'tree part x');
    };
    const readAllOf = (...parts: RawTreePart[]) => {
      const c = new PartCursor();
      for (const p of parts) {
        c.start(p);
        while (c.next());
      }
    };
    expect(() => readAllOf(raw(['a', 'b']), raw(['c']))).not.toThrow();
    const swapped = raw(['a', 'b'], (b) => Buffer.from(b.toString('latin1').replace('\x01a', '\x01c'), 'latin1'));
    expect(() => readAllOf(swapped)).toThrow(expect.objectContaining({ code: 'VAULT_CORRUPT', message: expect.stringContaining('out of order') }));
    expect(() => readAllOf(raw(['a', 'b']), raw(['b']))).toThrow(expect.objectContaining({ code: 'VAULT_CORRUPT', message: expect.stringContaining('does not come after the last entry of the previous part') }));
    expect(() => readAllOf(raw(['a', 'ab']), raw(['a']))).toThrow(expect.objectContaining({ code: 'VAULT_CORRUPT' }));
    const more = raw(['a'], (b) => {
      const c = Buffer.from(b);
      c.writeUInt32LE(2, 8);
      return c;
    });
    expect(() => readAllOf(more)).toThrow(expect.objectContaining({ code: 'VAULT_CORRUPT', message: expect.stringContaining('damaged') }));
    const trailing = raw(['a'], (b) => Buffer.concat([b, Buffer.from([0])]));
    expect(() => readAllOf(trailing)).toThrow(expect.objectContaining({ code: 'VAULT_CORRUPT', message: expect.stringContaining('1 bytes after its last entry') }));
  });

  it('keeps boundaries where they were when an entry is inserted or removed', async () => {
    const entries = makeEntries(20_000);
    const first = await writeTree(vault, entries);
    const old = new Set(first.parts);

    const at = entries.findIndex((e, i) => i >= 5000 && e.type === 'file');
    const extra: TreeEntry = { ...entries[at], path: Buffer.concat([entries[at].path, Buffer.from('-new')]) };
    const inserted = [...entries.slice(0, at + 1), extra, ...entries.slice(at + 1)];
    expect(Buffer.compare(extra.path, inserted[at + 2].path)).toBeLessThan(0);
    const second = await writeTree(vault, inserted);
    const fresh = second.parts.filter((id) => !old.has(id));
    expect(fresh.length).toBeGreaterThanOrEqual(1);
    expect(fresh.length).toBeLessThanOrEqual(2);
    expect(second.parts.length - fresh.length).toBeGreaterThanOrEqual(first.parts.length - 2);

    const removed = entries.filter((_, i) => i !== at + 3000);
    const third = await writeTree(vault, removed);
    expect(third.parts.filter((id) => !old.has(id)).length).toBeLessThanOrEqual(2);
    expect((await readAll(vault, third.record)).map(canon)).toEqual(removed.map(canon));
  });

  it('cuts a part at TREE_PART_MAX whatever the paths, and at a path boundary only past the minimum', async () => {
    // No path boundary at all (mask: every hash bit): parts close at the maximum only.
    const entries = makeEntries(3000);
    const capped = await writeTree(vault, entries, { maxBytes: 16 * 1024, boundaryMask: 0xffffffff });
    expect(capped.parts.length).toBeGreaterThan(3);
    for (const id of capped.parts.slice(0, -1)) {
      const raw = capped.index.get(Buffer.from(id, 'hex'))!.rawLength;
      expect(raw).toBeGreaterThanOrEqual(16 * 1024);
      expect(raw).toBeLessThan(17 * 1024);
    }
    // Every entry a boundary: parts close as soon as they reach the minimum.
    const eager = await writeTree(vault, entries, { minBytes: 2048, boundaryMask: 0 });
    for (const id of eager.parts.slice(0, -1)) expect(eager.index.get(Buffer.from(id, 'hex'))!.rawLength).toBeGreaterThanOrEqual(2048);
    expect(eager.parts.length).toBeGreaterThan(capped.parts.length);
    expect(TREE_PART_MAX).toBe(1024 * 1024);
    for (const r of [capped, eager]) expect((await readAll(vault, r.record)).length).toBe(entries.length);
  });

  it('hashes paths for boundaries with a per-vault seed: about one path in 256 has the low 8 bits zero', () => {
    const seed = treeBoundarySeed(vault.key.chunkId);
    expect(seed).toBe(treeBoundarySeed(Buffer.from(vault.key.chunkId)));
    expect(treeBoundarySeed(randomBytes(32))).not.toBe(seed);
    let zero = 0;
    const paths = Array.from({ length: 100_000 }, (_, i) => Buffer.from(`usr/lib/x86_64-linux-gnu/lib${i}.so`));
    for (const p of paths) if ((treeBoundaryHash(seed, p) & 0xff) === 0) zero++;
    expect(zero).toBeGreaterThan(300);
    expect(zero).toBeLessThan(500);
    expect(treeBoundaryHash(seed, paths[0])).toBe(treeBoundaryHash(seed, Buffer.from(paths[0])));
    expect(treeBoundaryHash(seed, paths[0])).not.toBe(treeBoundaryHash(seed ^ 1, paths[0]));
    // Pinned (FORMAT.md, "Trees"): FNV-1a then fmix32, and the seed of an all-zero chunk-id key.
    expect(treeBoundaryHash(0, Buffer.from('usr/lib/libc.so.6'))).toBe(0x3b973ef5);
    expect(treeBoundaryHash(0, Buffer.alloc(0))).toBe(0xab3e7c0b);
    expect(treeBoundarySeed(Buffer.alloc(32))).toBe(0xca4ecb28);
  });
});

describe('tree paths', () => {
  let dir: string;
  let vault: Vault;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cairn-tree-paths-'));
    vault = await Vault.init(new LocalStore(dir), 'tree paths test', { kdfLogN: 12, chunkSize: 4096, packSize: 64 * 1024 });
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('refuses a tree that would write outside its root or below a symlink (VAULT_CORRUPT)', async () => {
    const base = { mode: 0o755, uid: 0, gid: 0, size: 0, mtimeNs: 0n, atimeNs: 0n, ctimeNs: 0n, dev: 1, ino: 1n };
    const root: TreeEntry = { ...base, path: Buffer.alloc(0), type: 'dir' };
    const cases: [string, TreeEntry[]][] = [
      ['dotdot', [root, { ...base, path: Buffer.from('..'), type: 'dir' }, { ...base, path: Buffer.from('../evil'), type: 'file' }]],
      ['below a symlink', [root, { ...base, path: Buffer.from('a'), type: 'symlink', target: Buffer.from('/etc') }, { ...base, path: Buffer.from('a/passwd'), type: 'file' }]],
      ['no parent folder', [root, { ...base, path: Buffer.from('x/y'), type: 'file' }]],
      ['hard link outside', [root, { ...base, path: Buffer.from('h'), type: 'hardlink', link: Buffer.from('../../etc/shadow') }]],
    ];
    for (const [name, entries] of cases) {
      const { record, index } = await writeTree(vault, entries);
      await expect(drain(readTree(vault, index, record)), name).rejects.toMatchObject({ code: 'VAULT_CORRUPT' });
    }
  });

  it('refuses parts out of order: a folder that comes again later as a symlink with children (VAULT_CORRUPT)', async () => {
    const base = { mode: 0o755, uid: 0, gid: 0, size: 0, mtimeNs: 0n, atimeNs: 0n, ctimeNs: 0n, dev: 1, ino: 1n };
    const first = await writeTree(vault, [
      { ...base, path: Buffer.alloc(0), type: 'dir' },
      { ...base, path: Buffer.from('a'), type: 'dir' },
      { ...base, path: Buffer.from('a/x'), type: 'file', chunks: [] },
    ]);
    const second = await writeTree(vault, [
      { ...base, path: Buffer.from('a'), type: 'symlink', target: Buffer.from('/etc') },
      { ...base, path: Buffer.from('a/passwd'), type: 'file', chunks: [] },
    ]);
    const { index } = await vault.loadIndex();
    // Each part alone is in order; together 'a' comes twice, the second time as a symlink.
    // (A record of the layout before part lists: the part ids themselves.)
    const record: TreeRecord = { ...first.record, partLists: undefined, partCount: undefined, parts: [...first.parts, ...second.parts], entries: 5 };
    await expect(drain(readTree(vault, index, record))).rejects.toMatchObject({
      code: 'VAULT_CORRUPT',
      message: expect.stringContaining('does not come after the last entry of the previous part'),
    });
    // The parts in their own trees read fine.
    expect(await drain(readTree(vault, index, first.record))).toBe(3);
  });
});

async function drain<T>(it: AsyncIterable<T>): Promise<number> {
  let n = 0;
  for await (const _ of it) n++;
  return n;
}

const HOUR = 3600_000;

/**
 * Stores files as a file-system backup the way a `dir` backup does (chunks by cdc and tree parts into
 * packs, index, manifest), on the main thread; every entry is a tree part of its own.
 */
async function storeFileBackup(vault: Vault, files: Buffer[], name: string): Promise<Manifest> {
  const params = { min: 2048, avg: 8192, max: 32768 };
  const gear = gearTable(vault.key.chunkId);
  const { index } = await vault.loadIndex();
  const writer = new PackWriter(vault, index);
  const hasher = new ChunkHasher(vault.key.chunkId);
  const encoder = new ChunkEncoder(vault.key.encryption, 1);
  const id = vault.newBackupId();
  const tree = new TreeWriter(vault, writer, index, { minBytes: 1, boundaryMask: 0 });
  const base = { mode: 0o644, uid: 0, gid: 0, mtimeNs: 0n, atimeNs: 0n, ctimeNs: 0n, dev: 1, ino: 1n };
  await tree.add({ ...base, path: Buffer.alloc(0), type: 'dir', size: 0 });
  for (const [n, data] of files.entries()) {
    const chunks: FileChunk[] = [];
    let at = 0;
    for (const len of cut(data, params, gear, true)) {
      const chunk = data.subarray(at, at + len);
      at += len;
      if (chunk.every((b) => b === 0)) {
        chunks.push({ id: Buffer.from(ZERO_ID), length: len });
        continue;
      }
      const cid = hasher.id(chunk);
      chunks.push({ id: cid, length: len });
      if (index.has(cid)) continue;
      const enc = encoder.encode(cid, chunk);
      await writer.waitForCapacity();
      writer.add(cid, enc.blob, enc.codec, len);
    }
    await tree.add({ ...base, path: Buffer.from(`file${n}`), type: 'file', size: data.length, chunks });
  }
  const record = await tree.finish();
  await writer.flush();
  const now = vault.clock.now().toISOString();
  const manifest: Manifest = {
    version: 1,
    id,
    name,
    kind: 'full',
    resource: 'dir:///test',
    parent: null,
    startedAt: now,
    finishedAt: now,
    host: 'test',
    consistency: 'crash_consistent',
    disks: [],
    type: 'filesystem',
    tree: record,
    bytesRead: 0,
    bytesStored: writer.bytesWritten,
  };
  await vault.writeManifest(manifest);
  return manifest;
}

/** Reads a file of a backup back from the vault, checking every chunk. */
async function readFile(vault: Vault, m: Manifest, path: string): Promise<Buffer> {
  const { index } = await vault.loadIndex({ includeCondemned: true });
  const decoder = new ChunkDecoder(vault.key.encryption, vault.key.chunkId);
  for await (const e of readTree(vault, index, m.tree!)) {
    if (e.path.toString() !== path) continue;
    const parts: Buffer[] = [];
    for (const c of e.chunks!) {
      if (c.id.equals(ZERO_ID)) {
        parts.push(Buffer.alloc(c.length));
        continue;
      }
      const loc = index.get(c.id);
      if (!loc) throw new Error(`chunk of ${path} is in no index`);
      const blob = await vault.store.get(packKey(loc.packId), { offset: loc.offset, length: loc.length });
      parts.push(Buffer.from(decoder.decode(c.id, blob, loc.codec, loc.rawLength, loc.packId)));
    }
    return Buffer.concat(parts);
  }
  throw new Error(`${path} is not in the backup`);
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('trees in gc, verify and delete', () => {
  let dir: string;
  let vault: Vault;
  let now: number;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cairn-tree-gc-'));
    now = Date.now() - 10 * HOUR;
    const clock = { now: () => new Date(now) };
    vault = await Vault.init(new LocalStore(dir), 'tree gc test', { kdfLogN: 12, chunkSize: 4096, packSize: 32 * 1024 }, { clock });
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('gc keeps the chunks and tree parts backups reference and frees those of deleted or unfinished backups', async () => {
    const keep = [randomBytes(100_000), Buffer.alloc(50_000), Buffer.concat([randomBytes(30_000), Buffer.alloc(70_000), randomBytes(5)])];
    const gone = [randomBytes(120_000)];
    const kept = await storeFileBackup(vault, keep, 'kept');
    const dropped = await storeFileBackup(vault, gone, 'dropped');
    const keptParts = await partsOf(vault, kept);
    const droppedParts = await partsOf(vault, dropped);
    expect(keptParts.length).toBe(keep.length + 1);
    const refs = (await collectReferences(vault, (await vault.loadIndex()).index, [kept])).refs;
    expect(refs.size).toBeGreaterThan(10);
    // Tree parts and part lists are referenced chunks like file data.
    for (const id of [...keptParts, ...kept.tree!.partLists!]) expect(refs.get(Buffer.from(id, 'hex').toString('latin1'))).toEqual(new Set([kept.id]));
    // Both trees start with the same root entry: that part is one chunk, shared.
    expect(droppedParts[0]).toBe(keptParts[0]);
    const droppedOnly = [...droppedParts, ...dropped.tree!.partLists!].filter((id) => !keptParts.includes(id) && !kept.tree!.partLists!.includes(id));
    // Its file's part, and its list.
    expect(droppedOnly.length).toBe(2);

    // Deleting a backup removes its manifest only; its parts are chunks, gc's job. No trees/ objects.
    await deleteBackup(vault, dropped);
    expect(await vault.store.stat(manifestKey(dropped.id))).toBeUndefined();
    const { index: before } = await vault.loadIndex();
    for (const id of droppedOnly) expect(before.has(Buffer.from(id, 'hex'))).toBe(true);
    // An unfinished backup: its packs (file chunks and tree parts) are stored, its manifest never was.
    const { index } = await vault.loadIndex();
    const writer = new PackWriter(vault, index);
    const unfinished = new TreeWriter(vault, writer, index);
    const base = { mode: 0o644, uid: 0, gid: 0, size: 0, mtimeNs: 0n, atimeNs: 0n, ctimeNs: 0n, dev: 1, ino: 9n };
    await unfinished.add({ ...base, path: Buffer.alloc(0), type: 'dir' });
    await unfinished.add({ ...base, path: Buffer.from('never'), type: 'fifo' });
    const orphan = await unfinished.finish();
    await writer.flush();
    expect(unfinished.partsStored).toBe(1);
    expect(unfinished.listsStored).toBe(1);
    const orphanIds = [...(await treePartIds(vault, index, orphan)), ...orphan.partLists!];

    now = Date.now() + HOUR;
    const r = await collectGarbage(vault, { graceMs: 15 * 60_000 });
    expect(r.packsDeleted).toBeGreaterThan(0);
    const { index: after } = await vault.loadIndex();
    for (const id of [...keptParts, ...kept.tree!.partLists!]) expect(after.has(Buffer.from(id, 'hex')), `kept part ${id}`).toBe(true);
    for (const id of [...droppedOnly, ...orphanIds]) expect(after.has(Buffer.from(id, 'hex')), `freed part ${id}`).toBe(false);
    const kinds = new Set<string>();
    for await (const o of vault.store.list('')) kinds.add(o.key.split('/')[0]);
    expect(kinds.has('trees')).toBe(false);
    for (const [n, data] of keep.entries()) expect(sha(await readFile(vault, kept, `file${n}`))).toBe(sha(data));
    const v = await verifyVault(vault, { readData: false });
    expect(v.problems).toEqual([]);
  });

  it('gc stops when a tree part cannot be read, before deleting anything', async () => {
    const m = await storeFileBackup(vault, [randomBytes(60_000)], 'b');
    await storeFileBackup(vault, [randomBytes(60_000)], 'c').then((c) => deleteBackup(vault, c));
    const part = (await partsOf(vault, m))[1];
    await damageChunk(vault, part);
    const packs = (await vault.listPacks()).size;
    now = Date.now() + HOUR;
    await expect(collectGarbage(vault, { graceMs: 0 })).rejects.toMatchObject({
      code: 'VAULT_CORRUPT',
      message: expect.stringContaining(`tree part ${part} of backup b`),
    });
    expect((await vault.listPacks()).size).toBe(packs);
  });

  it('a damaged part list: reading the tree, gc and verify name it (VAULT_CORRUPT); a part count other than the lists hold is VAULT_CORRUPT', async () => {
    const m = await storeFileBackup(vault, [randomBytes(60_000), randomBytes(30_000)], 'listed');
    const { index } = await vault.loadIndex();
    const lists = m.tree!.partLists!;
    expect(lists.length).toBeGreaterThanOrEqual(1);
    expect(await drainEntries(vault, m)).toHaveLength(3);
    // Its part count must match what the lists hold.
    await expect(drain(readTree(vault, index, { ...m.tree!, partCount: m.tree!.partCount! + 1 }))).rejects.toMatchObject({
      code: 'VAULT_CORRUPT',
      message: expect.stringContaining(`name ${m.tree!.partCount} parts, its manifest says ${m.tree!.partCount! + 1}`),
    });
    // A record of neither layout.
    await expect(drain(readTree(vault, index, { ...m.tree!, partLists: 'x' as unknown as string[] }))).rejects.toMatchObject({ code: 'VAULT_VERSION' });

    const list = lists[0];
    const original = await damageChunk(vault, list);
    await expect(drain(readTree(vault, index, m.tree!))).rejects.toMatchObject({
      code: 'VAULT_CORRUPT',
      message: expect.stringMatching(new RegExp(`tree part list ${list} is damaged.*cairn vault verify`)),
    });
    const packs = (await vault.listPacks()).size;
    now = Date.now() + HOUR;
    await expect(collectGarbage(vault, { graceMs: 0 })).rejects.toMatchObject({
      code: 'VAULT_CORRUPT',
      message: expect.stringContaining(`tree part list ${list} of backup listed`),
    });
    expect((await vault.listPacks()).size).toBe(packs);
    const bad = await verifyVault(vault, { readData: false });
    expect(bad.problems).toEqual([expect.objectContaining({ kind: 'bad-tree', object: list, message: expect.stringContaining(`tree part list ${list}`) })]);
    expect(bad.affected.map((a) => a.id)).toEqual([m.id]);
    await original.restore();
    expect((await verifyVault(vault, { readData: false })).ok).toBe(true);
  });

  it('verify reads tree chunks: missing chunks, a damaged part and corrupt data name the backup', async () => {
    const m = await storeFileBackup(vault, [randomBytes(80_000), randomBytes(40_000)], 'files');
    const entries = await drainEntries(vault, m);
    const pool = new WorkerPool(vault.key, 1, 1);
    try {
      const ok = await verifyVault(vault, { readData: true, pool });
      expect(ok.ok).toBe(true);
      expect(ok.chunksChecked).toBeGreaterThan(10);

      // A damaged tree part: a bad tree of this backup (and, read whole, a corrupt chunk).
      const part = (await partsOf(vault, m))[2];
      const original = await damageChunk(vault, part);
      const badTree = await verifyVault(vault, { readData: false });
      expect(badTree.problems).toEqual([expect.objectContaining({ kind: 'bad-tree', object: part, message: expect.stringContaining(`tree part ${part}`) })]);
      expect(badTree.affected.map((a) => a.id)).toEqual([m.id]);
      const badRead = await verifyVault(vault, { readData: true, pool });
      expect(badRead.problems).toContainEqual(expect.objectContaining({ kind: 'corrupt-chunk', message: expect.stringContaining(part) }));
      await original.restore();
      expect((await verifyVault(vault, { readData: false })).ok).toBe(true);

      // Corrupt one blob of a pack: verify --read-data finds it and names the backup.
      const { index } = await vault.loadIndex();
      const someChunk = entries.flatMap((e) => e.chunks ?? []).find((c) => !c.id.equals(ZERO_ID))!;
      const loc = index.get(someChunk.id)!;
      const pack = await vault.store.get(packKey(loc.packId));
      const bad = Buffer.from(pack);
      bad[loc.offset + 20] ^= 1;
      await vault.store.put(packKey(loc.packId), () => bad);
      const corrupt = await verifyVault(vault, { readData: true, pool });
      expect(corrupt.problems.some((p) => p.kind === 'corrupt-chunk')).toBe(true);
      expect(corrupt.affected).toEqual([expect.objectContaining({ id: m.id, corruptChunks: expect.any(Number) })]);

      // A pack gone: its chunks are missing for this backup.
      await vault.store.delete(packKey(loc.packId));
      const missing = await verifyVault(vault, { readData: false });
      expect(missing.problems.some((p) => p.kind === 'missing-pack')).toBe(true);
      expect(missing.affected[0]).toMatchObject({ id: m.id });
      expect(missing.affected[0].missingChunks).toBeGreaterThan(0);
    } finally {
      await pool.close();
    }
  });
});

async function partsOf(vault: Vault, m: Manifest): Promise<string[]> {
  return treePartIds(vault, (await vault.loadIndex()).index, m.tree!);
}

/** Flips a byte of a chunk's blob in its pack; `restore` puts the pack back as it was. */
async function damageChunk(vault: Vault, hex: string): Promise<{ restore: () => Promise<void> }> {
  const loc = (await vault.loadIndex()).index.get(Buffer.from(hex, 'hex'))!;
  const key = packKey(loc.packId);
  const body = await vault.store.get(key);
  const bad = Buffer.from(body);
  bad[loc.offset + Math.floor(loc.length / 2)] ^= 1;
  await vault.store.put(key, () => bad);
  return { restore: () => vault.store.put(key, () => body).then(() => undefined) };
}

async function drainEntries(vault: Vault, m: Manifest): Promise<TreeEntry[]> {
  const out: TreeEntry[] = [];
  for await (const e of readTree(vault, (await vault.loadIndex()).index, m.tree!)) out.push(e);
  return out;
}
