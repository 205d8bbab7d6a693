import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  ftruncateSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
  writeSync,
  appendFileSync,
  type BigIntStats,
} from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalStore } from '../shared/store/local-store.js';
import { ZERO_ID } from '../shared/vault/block-map.js';
import { cut, gearTable } from '../shared/vault/cdc.js';
import { cdcParams } from '../shared/vault/config.js';
import { ChunkHasher } from '../shared/vault/crypto.js';
import { readTree, treePartIds, type TreeEntry } from '../shared/vault/tree.js';
import { Vault } from '../shared/vault/vault.js';
import { cliPath, exitCode, expectCliError, MiB, PASSPHRASE, runAs, Sandbox } from './helpers.js';

/**
 * File-system backups end to end through the CLI (`cairn backup dir:///PATH`, `--type filesystem`):
 * a generated tree with every kind of entry is backed up, changed (edits, appends, renames,
 * deletions, a same-size rewrite with the mtime put back) and backed up again. Each stored tree is
 * read back and compared entry by entry with the tree on disk: order, type, mode, owner, times to
 * the nanosecond, symlink targets, hard links, attributes, and every file's chunk ids recomputed
 * here from its bytes (FastCDC with the vault's gear table, keyed BLAKE3), so content is checked
 * without a restore. Files that cannot be read are made real by running the CLI as an unprivileged
 * user on a tree it can partly read.
 */

interface FileBackupJson {
  id: string;
  name: string;
  kind: 'full' | 'incremental';
  type: 'filesystem';
  parent: string | null;
  source: string;
  bytesRead: number;
  bytesStored: number;
  files: number;
  dirs: number;
  entries: number;
  bytes: number;
  filesReused: number;
  filesRead: number;
  newChunks: number;
  partial: boolean;
  unreadable: string[];
  unreadableCount: number;
  changed: string[];
  changedCount: number;
  warnings: string[];
  disks: unknown[];
}

const isRoot = process.getuid?.() === 0;
const b = (s: string | number[]): Buffer => (typeof s === 'string' ? Buffer.from(s) : Buffer.from(s));
/** A folder name and a file name that are not UTF-8 (and one with a newline). */
const ODD_DIR = b([0x6f, 0x64, 0x64, 0xff, 0xfe]);
const ODD_FILE = b([0x66, 0xc3, 0x28, 0x0a, 0x78]);

function abs(root: string, rel: Buffer): Buffer {
  return rel.length ? Buffer.concat([b(root + '/'), rel]) : b(root);
}

function setXattr(path: Buffer | string, name: string, value: Buffer): void {
  // setfattr takes the path as an argument: only used on UTF-8 paths here.
  const r = spawnSync('setfattr', ['-h', '-n', name, '-v', `0s${value.toString('base64')}`, '--', path.toString()]);
  if (r.error || r.status !== 0) throw new Error(`setfattr failed (${r.error?.message ?? r.stderr}); install the attr package`);
}

/** Builds the tree: every entry kind, odd names, hard links, a sparse file, files to exclude. */
function makeTree(root: string): void {
  mkdirSync(root);
  writeFileSync(join(root, 'empty'), '');
  writeFileSync(join(root, 'small.txt'), 'hello, world\n'.repeat(100));
  writeFileSync(join(root, 'big.bin'), randomBytes(6 * MiB)); // several chunks, one batch
  writeFileSync(join(root, 'large.bin'), randomBytes(12 * MiB)); // larger than a batch: read in turns
  const fd = openSync(join(root, 'sparse.img'), 'w');
  ftruncateSync(fd, 16 * MiB);
  writeSync(fd, randomBytes(64 * 1024), 0, 64 * 1024, 0);
  writeSync(fd, randomBytes(64 * 1024), 0, 64 * 1024, 16 * MiB - 64 * 1024);
  closeSync(fd);
  symlinkSync('small.txt', join(root, 'link'));
  symlinkSync('nowhere/at/all', join(root, 'dangling'));
  mkdirSync(join(root, 'sub'));
  writeFileSync(join(root, 'sub', 'hard1'), 'linked data\n');
  linkSync(join(root, 'sub', 'hard1'), join(root, 'hard0'));
  spawnSync('mkfifo', [join(root, 'fifo')]);
  // Tree order is byte order of whole paths: a, a-b, a/x, a0.
  mkdirSync(join(root, 'a'));
  writeFileSync(join(root, 'a', 'x'), 'x');
  writeFileSync(join(root, 'a-b'), 'a-b');
  writeFileSync(join(root, 'a0'), 'a0');
  mkdirSync(abs(root, ODD_DIR));
  writeFileSync(abs(root, Buffer.concat([ODD_DIR, b('/'), ODD_FILE])), 'odd bytes in the name\n');
  writeFileSync(join(root, 'attrs.txt'), 'has attributes\n');
  setXattr(join(root, 'attrs.txt'), 'user.comment', b('a note'));
  setXattr(join(root, 'attrs.txt'), 'user.binary', b([0, 1, 2, 255]));
  setXattr(join(root, 'sub'), 'user.dir', b('on a folder'));
  chmodSync(join(root, 'small.txt'), 0o640);
  chmodSync(join(root, 'sub'), 0o1777);
  // Excluded: by name at any depth, folders by name, one path from the root (exclude file).
  writeFileSync(join(root, 'junk.tmp'), 'x');
  writeFileSync(join(root, 'sub', 'deeper.tmp'), 'x');
  mkdirSync(join(root, 'sub', 'cache'));
  writeFileSync(join(root, 'sub', 'cache', 'blob'), 'x');
  writeFileSync(join(root, 'top-only.log'), 'x');
  writeFileSync(join(root, 'sub', 'top-only.log'), 'kept: the pattern is anchored');
}

/** Every entry below root not excluded, as lstat sees it, in tree order (byte order of the whole path). */
function scan(root: string, excluded: (rel: string) => boolean): { path: Buffer; st: BigIntStats }[] {
  const out: { path: Buffer; st: BigIntStats }[] = [];
  const walk = (rel: Buffer): void => {
    const st = lstatSync(abs(root, rel), { bigint: true });
    out.push({ path: rel, st });
    if (!st.isDirectory()) return;
    for (const name of readdirSync(abs(root, rel), { encoding: 'buffer' })) {
      const child = rel.length ? Buffer.concat([rel, b('/'), name]) : name;
      if (!excluded(child.toString('latin1'))) walk(child);
    }
  };
  walk(Buffer.alloc(0));
  return out.sort((x, y) => Buffer.compare(x.path, y.path));
}

const EXCLUDED = (rel: string): boolean => rel.endsWith('.tmp') || rel === 'sub/cache' || rel === 'top-only.log';

async function storedTree(vaultDir: string, id: string): Promise<{ entries: TreeEntry[]; vault: Vault }> {
  const vault = await Vault.open(new LocalStore(vaultDir), PASSPHRASE);
  const m = await vault.readManifest(id);
  expect(m.type).toBe('filesystem');
  expect(m.disks).toEqual([]);
  const entries: TreeEntry[] = [];
  const { index } = await vault.loadIndex();
  for await (const e of readTree(vault, index, m.tree!)) entries.push(e);
  return { entries, vault };
}

/** The chunk ids of a file's bytes as the vault cuts and names them. */
function expectedChunks(vault: Vault, data: Buffer): { id: string; length: number }[] {
  const hasher = new ChunkHasher(vault.key.chunkId);
  const lengths = cut(data, cdcParams(vault.config), gearTable(vault.key.chunkId), true);
  const out: { id: string; length: number }[] = [];
  let at = 0;
  for (const len of lengths) {
    const piece = data.subarray(at, at + len);
    const zero = piece.every((x) => x === 0);
    out.push({ id: (zero ? ZERO_ID : hasher.id(piece)).toString('hex'), length: len });
    at += len;
  }
  return out;
}

/** Compares a stored tree with the folder as it is now, entry by entry. */
async function expectTreeMatches(vaultDir: string, id: string, root: string): Promise<TreeEntry[]> {
  const { entries, vault } = await storedTree(vaultDir, id);
  const disk = scan(root, EXCLUDED);
  expect(entries.map((e) => e.path.toString('latin1'))).toEqual(disk.map((d) => d.path.toString('latin1')));
  const firstOfInode = new Map<string, string>();
  for (const [i, e] of entries.entries()) {
    const st = disk[i].st;
    const where = `entry '${e.path.toString('latin1')}'`;
    expect(e.warning, where).toBeUndefined();
    expect(e.mode, where).toBe(Number(st.mode & 0o7777n));
    expect([e.uid, e.gid], where).toEqual([Number(st.uid), Number(st.gid)]);
    expect(e.mtimeNs, where).toBe(st.mtimeNs);
    expect(e.ctimeNs, where).toBe(st.ctimeNs);
    expect(e.ino, where).toBe(st.ino);
    const p = abs(root, e.path);
    if (st.isSymbolicLink()) {
      expect(e.type, where).toBe('symlink');
      expect(e.target?.equals(readlinkSync(p, { encoding: 'buffer' })), where).toBe(true);
    } else if (st.isDirectory()) expect(e.type, where).toBe('dir');
    else if (st.isFIFO()) expect(e.type, where).toBe('fifo');
    else if (st.isFile()) {
      const key = `${st.dev}:${st.ino}`;
      if (st.nlink > 1n && firstOfInode.has(key)) {
        expect(e.type, where).toBe('hardlink');
        expect(e.link?.toString('latin1'), where).toBe(firstOfInode.get(key));
        continue;
      }
      firstOfInode.set(key, e.path.toString('latin1'));
      expect(e.type, where).toBe('file');
      expect(e.size, where).toBe(Number(st.size));
      const got = (e.chunks ?? []).map((c) => ({ id: c.id.toString('hex'), length: c.length }));
      expect(got, where).toEqual(expectedChunks(vault, readFileSync(p)));
    }
  }
  return entries;
}

function byPath(entries: TreeEntry[], path: string | Buffer): TreeEntry {
  const key = typeof path === 'string' ? path : path.toString('latin1');
  const e = entries.find((x) => x.path.toString('latin1') === key);
  if (!e) throw new Error(`no entry '${key}' in the tree`);
  return e;
}

describe('file-system backup', () => {
  let sb: Sandbox;
  let vault: string;
  let src: string;
  let excludeFile: string;

  beforeAll(async () => {
    sb = await Sandbox.create('file-backup');
    vault = await sb.initVault('vault');
    src = sb.path('src');
    makeTree(src);
    excludeFile = sb.path('excludes');
    writeFileSync(excludeFile, '# from the root only\n/top-only.log\n\ncache/\n');
    // Files changed less than 2 s before a backup started are read again by the next one (their
    // times could hide a write in the same tick); let the tree age past that before the first backup.
    await new Promise((r) => setTimeout(r, 2100));
  });
  afterAll(async () => {
    await sb?.cleanup();
  });

  it('stores every kind of entry, then reads only what changed', async () => {
    const args = ['--vault', vault, '--exclude', '*.tmp', '--exclude-file', excludeFile, '--json'];
    const full = await sb.cairnJson<FileBackupJson>(['backup', `dir://${encodeURI(src)}`, ...args]);
    expect(full).toMatchObject({
      kind: 'full',
      type: 'filesystem',
      parent: null,
      source: src,
      partial: false,
      unreadable: [],
      unreadableCount: 0,
      changed: [],
      changedCount: 0,
      disks: [],
    });
    // empty, small.txt, big.bin, large.bin, sparse.img, hard0 (sub/hard1 is a link to it), a/x, a-b, a0, the odd one, attrs.txt, sub/top-only.log
    expect(full.files).toBe(12);
    expect(full.filesRead).toBe(12);
    expect(full.filesReused).toBe(0);
    expect(full.bytesRead).toBe(full.bytes);
    expect(full.warnings).toEqual([]);

    const entries = await expectTreeMatches(vault, full.id, src);
    expect(full.entries).toBe(entries.length);
    expect(full.dirs).toBe(entries.filter((e) => e.type === 'dir').length);
    expect(byPath(entries, 'big.bin').chunks!.length).toBeGreaterThan(1);
    expect(byPath(entries, 'large.bin').chunks!.length).toBeGreaterThan(3);
    // The hole in the sparse file is all-zero chunks, never stored.
    expect(byPath(entries, 'sparse.img').chunks!.some((c) => c.id.equals(ZERO_ID))).toBe(true);
    expect(byPath(entries, 'hard0').type).toBe('file'); // 'hard0' < 'sub/hard1'
    expect(byPath(entries, 'sub/hard1')).toMatchObject({ type: 'hardlink', size: 12 });
    expect(byPath(entries, 'sub/hard1').link!.toString()).toBe('hard0');
    expect(byPath(entries, 'dangling').target!.toString()).toBe('nowhere/at/all');
    expect(byPath(entries, 'attrs.txt').xattrs?.map(([n, v]) => [n, v.toString('hex')])).toEqual([
      ['user.binary', '000102ff'],
      ['user.comment', Buffer.from('a note').toString('hex')],
    ]);
    expect(byPath(entries, 'sub').xattrs?.map(([n]) => n)).toEqual(['user.dir']);
    expect(byPath(entries, 'sub').mode).toBe(0o1777);
    expect(byPath(entries, Buffer.concat([ODD_DIR, b('/'), ODD_FILE])).type).toBe('file');
    const names = entries.map((e) => e.path.toString('latin1'));
    expect(names.indexOf('a')).toBeLessThan(names.indexOf('a-b'));
    expect(names.indexOf('a-b')).toBeLessThan(names.indexOf('a/x'));
    expect(names.indexOf('a/x')).toBeLessThan(names.indexOf('a0'));
    expect(names).not.toContain('junk.tmp');
    expect(names).not.toContain('sub/cache');
    expect(names).not.toContain('top-only.log');
    expect(names).toContain('sub/top-only.log');

    // Nothing changed: nothing is read and nothing new stored.
    const same = await sb.cairnJson<FileBackupJson>(['backup', src, '--type', 'filesystem', ...args]);
    expect(same).toMatchObject({ kind: 'incremental', parent: full.id, filesRead: 0, filesReused: 12, bytesRead: 0, newChunks: 0 });
    await expectTreeMatches(vault, same.id, src);

    // Edits, an append, a rename, a deletion, a new file, a same-size rewrite with its mtime put back.
    appendFileSync(join(src, 'small.txt'), 'one more line\n');
    renameSync(join(src, 'big.bin'), join(src, 'big-renamed.bin'));
    rmSync(join(src, 'sparse.img'));
    const large = readFileSync(join(src, 'large.bin'));
    large[7 * MiB] ^= 0xff;
    writeFileSync(join(src, 'large.bin'), large);
    writeFileSync(join(src, 'sub', 'new.txt'), 'new file\n');
    const before = statSync(join(src, 'a0'));
    writeFileSync(join(src, 'a0'), 'A0');
    utimesSync(join(src, 'a0'), before.atime, before.mtime);
    setXattr(join(src, 'a-b'), 'user.later', b('added'));
    const inc = await sb.cairnJson<FileBackupJson>(['backup', `dir://${src}`, ...args]);
    expect(inc).toMatchObject({ kind: 'incremental', parent: same.id, partial: false, files: 12 });
    // Read: small.txt (appended), big-renamed.bin (new path), large.bin (edited), sub/new.txt, and by
    // their ctime a0 (mtime put back) and a-b (a new attribute).
    expect(inc.filesRead).toBe(6);
    expect(inc.filesReused).toBe(6);
    const sizes = ['small.txt', 'big-renamed.bin', 'large.bin', 'sub/new.txt', 'a0', 'a-b'].map((f) => statSync(join(src, f)).size);
    expect(inc.bytesRead).toBe(sizes.reduce((s, x) => s + x, 0));
    // The renamed file's chunks are in the vault already; the one-byte edit changes one or two chunks.
    expect(inc.newChunks).toBeGreaterThanOrEqual(4);
    expect(inc.newChunks).toBeLessThanOrEqual(6);
    const after = await expectTreeMatches(vault, inc.id, src);
    expect(after.map((e) => e.path.toString())).not.toContain('sparse.img');
    expect(byPath(after, 'a-b').xattrs?.map(([n]) => n)).toEqual(['user.later']);
    expect(byPath(after, 'attrs.txt').xattrs?.length).toBe(2); // kept from the parent without a getfattr
    expect(byPath(after, 'big-renamed.bin').chunks).toEqual(byPath(entries, 'big.bin').chunks);
  });

  it('stores only the tree parts around a change: an incremental after one edit in 3000 files', async () => {
    // Empty files: no data chunks, so what a backup stores is its tree (and an index object).
    const many = sb.path('many');
    const dir = join(many, 'files');
    mkdirSync(dir, { recursive: true });
    for (let i = 0; i < 3000; i++) writeFileSync(join(dir, `file-${String(i).padStart(4, '0')}.conf`), '');
    const parts = sb.path('vault-parts');
    await sb.initVault('vault-parts');
    const backup = () => sb.cairnJson<FileBackupJson>(['backup', `dir://${many}`, '--vault', parts, '--json']);
    const full = await backup();
    // Listing a folder may update its atime once (relatime): the next backup records that.
    const first = await backup();
    const t = new Date('2025-06-01T12:00:00Z');
    utimesSync(join(dir, 'file-1500.conf'), t, t);
    const edited = await backup();
    expect(edited).toMatchObject({ kind: 'incremental', parent: first.id, newChunks: 0 });

    const vault = await Vault.open(new LocalStore(parts), PASSPHRASE);
    const index = (await vault.loadIndex()).index;
    const records = await Promise.all([first, edited].map(async (b) => (await vault.readManifest(b.id)).tree!));
    const trees = await Promise.all(records.map((r) => treePartIds(vault, index, r)));
    expect(trees[0].length).toBeGreaterThanOrEqual(12);
    expect(trees[1].length).toBeGreaterThanOrEqual(trees[0].length - 1);
    const fresh = trees[1].filter((id) => !trees[0].includes(id));
    expect(fresh.length).toBeGreaterThanOrEqual(1);
    expect(fresh.length).toBeLessThanOrEqual(2);
    // And the part list (or two) that names them.
    const freshLists = records[1].partLists!.filter((id) => !records[0].partLists!.includes(id));
    expect(freshLists.length).toBeGreaterThanOrEqual(1);
    expect(freshLists.length).toBeLessThanOrEqual(2);
    fresh.push(...freshLists);
    // What it stores is those parts and lists, a pack around them, an index object and the
    // manifest. (Part sizes depend on where the vault's keyed boundaries fall, so no fixed share of
    // the full's.)
    const freshBytes = fresh.reduce((sum, id) => sum + index.get(Buffer.from(id, 'hex'))!.length, 0);
    expect(edited.bytesStored).toBeGreaterThan(freshBytes);
    expect(edited.bytesStored).toBeLessThan(freshBytes + 8192);
    expect(edited.bytesStored).toBeLessThan(full.bytesStored);
    const entries = (await storedTree(parts, edited.id)).entries;
    expect(byPath(entries, 'files/file-1500.conf').mtimeNs).toBe(BigInt(t.getTime()) * 1_000_000n);
    expect(entries).toHaveLength(3002);
  });

  it('stops with VAULT_CORRUPT, naming the part, when the parent backup\'s tree is damaged, and records nothing', async () => {
    const dir = sb.path('damaged-parent');
    mkdirSync(dir);
    for (let i = 0; i < 20; i++) writeFileSync(join(dir, `f${i}`), randomBytes(1000 + i));
    const own = sb.path('damaged-parent-vault');
    expect((await sb.cairn(['vault', 'init', own])).code).toBe(0);
    const full = await sb.cairnJson<FileBackupJson>(['backup', `dir://${dir}`, '--vault', own, '--json']);
    // Flip a byte inside the tree's only part, where it lies in its pack.
    const v = await Vault.open(new LocalStore(own), PASSPHRASE);
    const m = await v.readManifest(full.id);
    const index = (await v.loadIndex()).index;
    const part = (await treePartIds(v, index, m.tree!))[0];
    const loc = index.get(Buffer.from(part, 'hex'))!;
    const packFile = join(own, 'packs', loc.packId.slice(0, 2), loc.packId);
    const pack = readFileSync(packFile);
    pack[loc.offset + 20] ^= 0xff;
    writeFileSync(packFile, pack);

    const inc = await sb.cairn(['backup', `dir://${dir}`, '--vault', own, '--json']);
    expectCliError(inc, 'VAULT_CORRUPT', `tree part ${part} is damaged`, "run 'cairn vault verify'");
    expect((await v.listBackups()).map((b) => b.id)).toEqual([full.id]);
  });

  it('refuses what is not a folder and options that do not fit', async () => {
    expectCliError(await sb.cairn(['backup', 'dir://host/x', '--vault', vault]), 'USAGE', 'host');
    expectCliError(await sb.cairn(['backup', join(src, 'small.txt'), '--type', 'filesystem', '--vault', vault]), 'USAGE', 'not a directory');
    expectCliError(await sb.cairn(['backup', sb.path('missing'), '--type', 'filesystem', '--vault', vault]), 'NOT_FOUND', 'missing');
    expectCliError(await sb.cairn(['backup', src, '--exclude', '*.tmp', '--vault', vault]), 'USAGE', '--exclude');
    expectCliError(await sb.cairn(['backup', src, '--type', 'tape', '--vault', vault]), 'USAGE', 'tape');
    expectCliError(await sb.cairn(['backup', `dir://${src}`, '--exclude', '[a', '--vault', vault]), 'USAGE', '[a');
  });

  it('records a file that changes while read', async () => {
    const dir = sb.path('growing');
    mkdirSync(dir);
    for (let i = 0; i < 200; i++) writeFileSync(join(dir, `f${String(i).padStart(3, '0')}`), randomBytes(4096));
    writeFileSync(join(dir, 'zz-log'), '');
    // A writer appends to the log without pause while the backup runs.
    const writer = spawn(process.execPath, ['-e', `const fs=require('fs');for(;;)fs.appendFileSync(${JSON.stringify(join(dir, 'zz-log'))},'line\\n')`], { stdio: 'ignore' });
    try {
      await new Promise((r) => setTimeout(r, 200));
      let r: FileBackupJson | undefined;
      for (let attempt = 0; attempt < 5 && !r?.changed.length; attempt++) {
        r = await sb.cairnJson<FileBackupJson>(['backup', `dir://${dir}`, '--vault', vault, '--full', '--json']);
      }
      // Changed while read alone: exit 0 (cairnJson expects it), recorded with a warning.
      expect(r!.changed).toEqual(['zz-log']);
      expect(r!.changedCount).toBe(1);
      expect(r!.unreadableCount).toBe(0);
      expect(r!.partial).toBe(true);
      expect(r!.warnings.join('\n')).toMatch(/zz-log .*changed while read|changed while read.*zz-log/s);
      const { entries } = await storedTree(vault, r!.id);
      expect(byPath(entries, 'zz-log').warning).toMatch(/^changed while read: /);
    } finally {
      writer.kill('SIGKILL');
    }
  });

  it('stores a file replaced in place (an atomic save) as changed while read, with exit 0', async () => {
    const dir = sb.path('swapping');
    mkdirSync(dir);
    for (let i = 0; i < 200; i++) writeFileSync(join(dir, `f${String(i).padStart(3, '0')}`), randomBytes(4096));
    writeFileSync(join(dir, 'zz-swap'), 'first\n');
    // Another file is renamed onto the path without pause: each read finds a file the walk did not see.
    const script = `const fs=require('fs');const d=${JSON.stringify(dir)};for(let i=0;;i++){fs.writeFileSync(d+'/.next','other '+i+'\\n');fs.renameSync(d+'/.next',d+'/zz-swap')}`;
    const swapper = spawn(process.execPath, ['-e', script], { stdio: 'ignore' });
    try {
      await new Promise((r) => setTimeout(r, 200));
      let r: FileBackupJson | undefined;
      for (let attempt = 0; attempt < 5 && !r?.changed.includes('zz-swap'); attempt++) {
        r = await sb.cairnJson<FileBackupJson>(['backup', `dir://${dir}`, '--vault', vault, '--full', '--exclude', '.next', '--json']);
      }
      expect(r!.changed).toEqual(['zz-swap']);
      expect(r!.unreadableCount).toBe(0);
      const e = byPath((await storedTree(vault, r!.id)).entries, 'zz-swap');
      expect(e.warning).toMatch(/^changed while read: /);
      expect(e.chunks!.length).toBe(1);
    } finally {
      swapper.kill('SIGKILL');
    }
  });

  it('reports unreadable files and folders, goes on, and exits 9 (partial) (as an unprivileged user)', async () => {
    expect(isRoot, 'this test makes files unreadable by running the CLI as nobody, which needs root').toBe(true);
    // A corner of the sandbox that uid 65534 may write: its vault, its state, and a tree it partly reads.
    const area = sb.path('nobody');
    mkdirSync(area);
    chmodSync(sb.dir, 0o755);
    chmodSync(area, 0o777);
    const tree = join(area, 'tree');
    mkdirSync(tree, { mode: 0o755 });
    writeFileSync(join(tree, 'open.txt'), 'anyone may read this\n', { mode: 0o644 });
    writeFileSync(join(tree, 'locked.txt'), 'root only\n', { mode: 0o600 });
    mkdirSync(join(tree, 'secret'), { mode: 0o700 });
    writeFileSync(join(tree, 'secret', 'inside'), 'hidden\n');
    mkdirSync(join(tree, 'zlast'), { mode: 0o755 });
    writeFileSync(join(tree, 'zlast', 'after.txt'), 'read after the failures\n', { mode: 0o644 });
    const state = join(area, 'state');
    mkdirSync(state, { mode: 0o777 });
    chmodSync(state, 0o777);
    const nobody = (args: string[]) => runAs(65534, args, { CAIRN_PASSPHRASE: PASSPHRASE, CAIRN_STATE_DIR: state });
    const v = join(area, 'vault');
    const init = await nobody(['vault', 'init', v, '--kdf-log-n', '12']);
    expect(init.code, init.stderr).toBe(0);
    // The backup is written and printed, and the exit status says it is partial.
    const r = await nobody(['backup', `dir://${tree}`, '--vault', v, '--json']);
    expect(r.code, r.stderr).toBe(exitCode('PARTIAL'));
    const j = JSON.parse(r.stdout) as FileBackupJson;
    expect(j.partial).toBe(true);
    expect(j.unreadable.sort()).toEqual(['locked.txt', 'secret']);
    expect(j.unreadableCount).toBe(2);
    expect(j.warnings.join('\n')).toMatch(/2 entries could not be read/);
    expect(j.warnings.join('\n')).toMatch(/locked\.txt: EACCES/);
    expect(j.filesRead).toBe(3);
    const { entries } = await storedTree(v, j.id);
    expect(entries.map((e) => e.path.toString())).toEqual(['', 'locked.txt', 'open.txt', 'secret', 'zlast', 'zlast/after.txt']);
    expect(byPath(entries, 'locked.txt')).toMatchObject({ type: 'file', size: 0, chunks: [] });
    expect(byPath(entries, 'locked.txt').warning).toMatch(/^unreadable: EACCES/);
    expect(byPath(entries, 'secret').warning).toMatch(/^unreadable: cannot be listed: EACCES/);
    expect(byPath(entries, 'zlast/after.txt').warning).toBeUndefined();
    expect(byPath(entries, 'zlast/after.txt').size).toBe(24);

    // The human output says so too.
    const human = await nobody(['backup', `dir://${tree}`, '--vault', v]);
    expect(human.code, human.stderr).toBe(exitCode('PARTIAL'));
    expect(human.stdout).toMatch(/PARTIAL/);
    expect(human.stdout).toMatch(/warning: 2 entries could not be read/);
  });
});

