import { randomBytes } from 'node:crypto';
import { existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalStore } from '../../shared/store/local-store.js';
import { ZERO_ID } from '../../shared/vault/block-map.js';
import { ChunkEncoder } from '../../shared/vault/chunk-codec.js';
import { ChunkHasher } from '../../shared/vault/crypto.js';
import type { Manifest } from '../../shared/vault/manifest.js';
import { PackWriter } from '../../shared/vault/pack-writer.js';
import { TreeWriter, type TreeEntry } from '../../shared/vault/tree.js';
import { Vault } from '../../shared/vault/vault.js';
import { restoreTree } from './restore-tree.js';

/**
 * restoreTree on hand-made trees: the cases a real source rarely produces (an entry the backup
 * could not read, a socket, a chunk the vault lost, hard links whose data-holding path is left out
 * of the selection). The full picture, against a real tree through the CLI, is test/file-restore.test.ts.
 */

const dir = mkdtempSync(join(tmpdir(), 'cairn-restore-tree-'));
let vault: Vault;
let data: Buffer;
let fileChunks: { id: Buffer; length: number }[];
/** A small chunk, and one stored under an id its content does not hash to (damaged). */
let small: { id: Buffer; length: number };
let bad: { id: Buffer; length: number };
const SMALL = Buffer.from('small file content\n');

function entry(path: string, type: TreeEntry['type'], extra: Partial<TreeEntry> = {}): TreeEntry {
  return {
    path: Buffer.from(path),
    type,
    mode: type === 'dir' ? 0o755 : 0o640,
    uid: process.getuid!(),
    gid: process.getgid!(),
    size: 0,
    mtimeNs: 1_600_000_000_123_456_789n,
    atimeNs: 1_600_000_001_000_000_007n,
    ctimeNs: 0n,
    dev: 1,
    ino: 0,
    ...extra,
  };
}

async function backup(entries: TreeEntry[], id: string): Promise<Manifest> {
  const tree = new TreeWriter(vault, id);
  for (const e of entries) await tree.add(e);
  const record = await tree.finish();
  return {
    version: 1,
    id,
    name: id,
    kind: 'full',
    resource: 'dir:///src',
    parent: null,
    startedAt: '2026-01-01T00:00:00.000Z',
    finishedAt: '2026-01-01T00:00:01.000Z',
    host: 'h',
    consistency: 'crash_consistent',
    disks: [],
    type: 'filesystem',
    tree: record,
    bytesRead: 0,
    bytesStored: 0,
  };
}

beforeAll(async () => {
  vault = await Vault.init(new LocalStore(join(dir, 'vault')), 'pw', { kdfLogN: 12 });
  const { index } = await vault.loadIndex();
  const packs = new PackWriter(vault, index);
  const hasher = new ChunkHasher(vault.key.chunkId);
  const encoder = new ChunkEncoder(vault.key.encryption, 3);
  data = Buffer.concat([randomBytes(100_000), Buffer.alloc(200_000), randomBytes(50_000)]);
  fileChunks = [];
  for (const [at, len] of [[0, 100_000], [100_000, 200_000], [300_000, 50_000]]) {
    const piece = data.subarray(at, at + len);
    if (piece.every((b) => b === 0)) {
      fileChunks.push({ id: ZERO_ID, length: len });
      continue;
    }
    const id = hasher.id(piece);
    const enc = encoder.encode(id, piece);
    packs.add(id, Buffer.concat(enc.parts), enc.codec, len);
    fileChunks.push({ id, length: len });
  }
  small = { id: hasher.id(SMALL), length: SMALL.length };
  const enc = encoder.encode(small.id, SMALL);
  packs.add(small.id, Buffer.concat(enc.parts), enc.codec, SMALL.length);
  bad = { id: randomBytes(32), length: SMALL.length };
  const wrong = encoder.encode(bad.id, Buffer.from('other file content\n'));
  packs.add(bad.id, Buffer.concat(wrong.parts), wrong.codec, SMALL.length);
  await packs.flush();
});

/** A tree of `count` small files in three folders, file `damaged` (if any) with the bad chunk second. */
function manyFiles(count: number, damaged?: number): TreeEntry[] {
  const out = [entry('', 'dir'), entry('d0', 'dir'), entry('d1', 'dir'), entry('d2', 'dir')];
  const files = Array.from({ length: count }, (_, i) => {
    const chunks = i === damaged ? [small, bad] : [small];
    return entry(`d${i % 3}/f${String(i).padStart(5, '0')}`, 'file', { size: chunks.length * SMALL.length, chunks });
  });
  return [...out, ...files].sort((a, b) => Buffer.compare(a.path, b.path));
}

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('restoreTree', () => {
  it('gives the data to the first selected hard link when the first path is left out; the others link to it', async () => {
    const file = { size: data.length, chunks: fileChunks, ino: 7 };
    const m = await backup(
      [
        entry('', 'dir'),
        entry('a', 'dir'),
        entry('a/first', 'file', file),
        entry('b', 'dir'),
        entry('b/second', 'hardlink', { ...file, chunks: undefined, link: Buffer.from('a/first') }),
        entry('b/third', 'hardlink', { ...file, chunks: undefined, link: Buffer.from('a/first') }),
      ],
      'links',
    );
    const to = join(dir, 'links-out');
    const r = await restoreTree(vault, m, { to, paths: ['b'] });
    expect(r.warnings).toEqual([]);
    expect(readdirSync(to)).toEqual(['b']);
    expect(readFileSync(join(to, 'b/second'))).toEqual(data);
    expect(lstatSync(join(to, 'b/third')).ino).toBe(lstatSync(join(to, 'b/second')).ino);
    expect(lstatSync(join(to, 'b/second')).nlink).toBe(2);
    expect(lstatSync(join(to, 'b/second'), { bigint: true }).mtimeNs).toBe(1_600_000_000_123_456_789n);
    expect(lstatSync(join(to, 'b/second')).mode & 0o7777).toBe(0o640);
    expect(r).toMatchObject({ files: 1, hardlinks: 1, dirs: 2, bytes: data.length, bytesWritten: 150_000 });
  });

  it('skips what it cannot restore with a warning: an unreadable file, a socket', async () => {
    const m = await backup(
      [
        entry('', 'dir'),
        entry('gone', 'file', { size: 10, warning: 'unreadable: EACCES' }),
        entry('ok', 'file', { size: data.length, chunks: fileChunks }),
        entry('sock', 'socket'),
      ],
      'skips',
    );
    const to = join(dir, 'skips-out');
    const r = await restoreTree(vault, m, { to });
    expect(readdirSync(to)).toEqual(['ok']);
    expect(r.warnings).toEqual([
      'gone not restored: the backup holds no data for it (unreadable: EACCES)',
      '1 sockets not restored: a socket is made by the program that listens on it',
    ]);
  });

  it('restores many files in batches', async () => {
    const m = await backup(manyFiles(1100), 'many');
    const to = join(dir, 'many-out');
    const r = await restoreTree(vault, m, { to });
    expect(r).toMatchObject({ files: 1100, bytesWritten: 1100 * SMALL.length, warnings: [] });
    const names = ['d0', 'd1', 'd2'].flatMap((d) => readdirSync(join(to, d)).map((n) => `${d}/${n}`));
    expect(names).toHaveLength(1100);
    for (const n of names) expect(readFileSync(join(to, n))).toEqual(SMALL);
  });

  it('fails on a damaged chunk with VAULT_CORRUPT naming file and offset, leaving no file of the failed batches', async () => {
    const m = await backup(manyFiles(1100, 700), 'damaged');
    const to = join(dir, 'damaged-out');
    await expect(restoreTree(vault, m, { to })).rejects.toMatchObject({
      code: 'VAULT_CORRUPT',
      message: expect.stringContaining(`d1/f00700 (offset ${SMALL.length}) cannot be restored`),
    });
    const names = ['d0', 'd1', 'd2'].flatMap((d) => readdirSync(join(to, d)));
    expect(names.filter((n) => n.startsWith('.cairn-partial-'))).toEqual([]);
    expect(names).not.toContain('f00700');
    // Whatever was renamed into place is whole.
    for (const d of ['d0', 'd1', 'd2']) for (const n of readdirSync(join(to, d))) expect(readFileSync(join(to, d, n))).toEqual(SMALL);
  });

  it('fails with VAULT_CORRUPT naming file and offset when a chunk is in no index, before writing anything', async () => {
    const lost = { id: randomBytes(32), length: 10 };
    const m = await backup(
      [entry('', 'dir'), entry('f', 'file', { size: data.length + 10, chunks: [...fileChunks, lost] })],
      'lost',
    );
    const to = join(dir, 'lost-out');
    await expect(restoreTree(vault, m, { to })).rejects.toMatchObject({
      code: 'VAULT_CORRUPT',
      message: expect.stringContaining(`of f (offset ${data.length}) is in no index`),
    });
    expect(existsSync(to)).toBe(false);
  });
});
