import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, lstatSync, readdirSync, readFileSync, readlinkSync, statSync, type BigIntStats } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalStore } from '../shared/store/local-store.js';
import { ZERO_ID } from '../shared/vault/block-map.js';
import { readTree, type TreeEntry } from '../shared/vault/tree.js';
import { Vault } from '../shared/vault/vault.js';
import { expectOk, KiB, repoRoot, Sandbox } from './helpers.js';

/**
 * The golden file-system vault (test/fixtures/golden-vault-fs/, made once by
 * test/fixtures/make-golden-vault-fs.ts) was written by an earlier Cairn: a full and an incremental
 * `dir://` backup of a small folder. Today's Cairn must list both as recorded, browse them with
 * `cairn ls`, restore each entry for entry (data, type, mode, nanosecond mtime, link target,
 * hard-link identity, holes, user.* attributes) and verify every chunk. A failure here means the
 * vault format changed: bump the format version and keep reading old vaults rather than regenerate
 * the fixture. Owners are not compared (the test may run as any user).
 */

interface GoldenEntry {
  path: string;
  hex: string;
  type: 'dir' | 'file' | 'hardlink' | 'symlink' | 'fifo';
  mode: string;
  mtimeNs: string;
  size?: number;
  sha256?: string;
  target?: string;
  link?: string;
  xattrs?: Record<string, string>;
}

interface GoldenBackup {
  id: string;
  name: string;
  kind: string;
  parent: string | null;
  filesReused: number;
  filesRead: number;
  entries: GoldenEntry[];
}

interface Golden {
  formatVersion: number;
  passphrase: string;
  fileChunkAvg: number;
  backups: GoldenBackup[];
}

const fixtureVault = join(repoRoot, 'test', 'fixtures', 'golden-vault-fs');
const golden = JSON.parse(readFileSync(join(repoRoot, 'test', 'fixtures', 'golden-vault-fs.json'), 'utf8')) as Golden;

function filesUnder(dir: string): string[] {
  return (readdirSync(dir, { recursive: true }) as string[]).filter((p) => statSync(join(dir, p)).isFile());
}

const pathOf = (e: GoldenEntry): Buffer => Buffer.from(e.hex, 'hex');

/** The folder an entry is in (the root's own entry has none). */
function parentOf(e: GoldenEntry): string | undefined {
  if (e.hex === '') return undefined;
  const p = pathOf(e);
  const slash = p.lastIndexOf(0x2f);
  return slash < 0 ? '' : p.subarray(0, slash).toString('hex');
}

/** Nanoseconds since the epoch as `cairn ls --json` gives them: ISO 8601 UTC with nine fractional digits. */
function iso(ns: string): string {
  const n = BigInt(ns);
  const s = n / 1_000_000_000n;
  const frac = (n % 1_000_000_000n).toString().padStart(9, '0');
  return new Date(Number(s) * 1000).toISOString().replace(/\.\d+Z$/, `.${frac}Z`);
}

/** Every entry under `dir` (the root included), by raw relative path in hex. */
function scanRestored(dir: string): Map<string, { abs: Buffer; st: BigIntStats }> {
  const out = new Map<string, { abs: Buffer; st: BigIntStats }>();
  const visit = (rel: Buffer, abs: Buffer) => {
    const st = lstatSync(abs, { bigint: true });
    out.set(rel.toString('hex'), { abs, st });
    if (!st.isDirectory()) return;
    for (const name of readdirSync(abs, { encoding: 'buffer' })) {
      visit(rel.length ? Buffer.concat([rel, Buffer.from('/'), name]) : name, Buffer.concat([abs, Buffer.from('/'), name]));
    }
  };
  visit(Buffer.alloc(0), Buffer.from(dir));
  return out;
}

/** user.* attributes under `dir` (symlinks not followed), by absolute path (latin1 of its bytes), values base64. */
function xattrsUnder(dir: string): Map<string, Record<string, string>> {
  const r = spawnSync('getfattr', ['-R', '-P', '-h', '--absolute-names', '-d', '-m', '^user\\.', '-e', 'base64', dir]);
  if (r.error) throw new Error(`getfattr cannot run (${r.error.message}); install the attr package`);
  const out = new Map<string, Record<string, string>>();
  let current: Record<string, string> | undefined;
  for (const line of r.stdout.toString('latin1').split('\n')) {
    if (line.startsWith('# file: ')) {
      current = {};
      out.set(line.slice(8).replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))), current);
    } else if (current && line.includes('=')) {
      const eq = line.indexOf('=');
      current[line.slice(0, eq)] = line.slice(eq + 1).replace(/^0s/, '');
    }
  }
  return out;
}

function typeOf(st: BigIntStats): string {
  if (st.isDirectory()) return 'dir';
  if (st.isFile()) return 'file';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  return 'other';
}

describe('golden file-system vault', () => {
  let box: Sandbox;
  let vault: string;
  const cairn = (args: string[]) => box.cairn(args, { env: { CAIRN_PASSPHRASE: golden.passphrase } });

  beforeAll(async () => {
    box = await Sandbox.create('golden-fs');
    vault = box.path('vault');
    // A copy: nothing a test does may touch the committed fixture.
    cpSync(fixtureVault, vault, { recursive: true });
  });

  afterAll(async () => {
    await box?.cleanup();
  });

  it('is small and holds exactly the objects of two file-system backups', () => {
    const files = filesUnder(fixtureVault);
    const bytes = files.reduce((s, f) => s + statSync(join(fixtureVault, f)).size, 0);
    expect(bytes).toBeLessThan(512 * KiB);
    const ids = golden.backups.map((b) => b.id).sort();
    expect(files.filter((f) => f.startsWith('backups/')).sort()).toEqual(ids.map((id) => `backups/${id}`));
    // Tree parts are chunks in the packs: no trees/ or blockmaps/ objects.
    expect([...new Set(files.map((f) => f.split('/')[0]))].sort()).toEqual(['backups', 'config', 'index', 'keys', 'packs']);
    expect(files.some((f) => f.split('/').pop()!.startsWith('.tmp-'))).toBe(false);
    expect(files.some((f) => f.startsWith('leases/') || f.startsWith('gc/'))).toBe(false);
  });

  it('lists both backups as they were recorded', async () => {
    const r = await cairn(['backups', 'list', '--vault', vault, '--json']);
    expectOk(r);
    const list = JSON.parse(r.stdout) as { id: string; name: string; kind: string; parent: string | null; disks: unknown[] }[];
    expect(list.map((b) => ({ id: b.id, name: b.name, kind: b.kind, parent: b.parent, disks: b.disks }))).toEqual(
      golden.backups.map((b) => ({ id: b.id, name: b.name, kind: b.kind, parent: b.parent, disks: [] })),
    );
  });

  it('shows the folders of both backups with cairn ls as recorded', async () => {
    // The root (folders, a fifo, a sticky folder), docs (a name that is not UTF-8, an empty file, a
    // hard link) and links (symlinks): every type there is. One CLI run per folder, so not all of them.
    const listed = new Set(['', 'docs', 'links']);
    for (const b of golden.backups) {
      const dirs = b.entries.filter((e) => e.type === 'dir' && listed.has(e.path));
      expect(dirs.length).toBe(listed.size);
      const listings = await Promise.all(dirs.map((d) => cairn(['ls', b.id, '--vault', vault, ...(d.path ? [d.path] : []), '--json'])));
      dirs.forEach((d, i) => {
        expectOk(listings[i]);
        const seen = (JSON.parse(listings[i].stdout) as Record<string, unknown>[]).map(({ uid: _uid, gid: _gid, ...rest }) => rest);
        const expected = b.entries
          .filter((e) => parentOf(e) === d.hex)
          .map((e) => ({
            name: e.path.split('/').pop(),
            path: e.path,
            type: e.type,
            size: e.size ?? 0,
            mode: e.mode,
            mtime: iso(e.mtimeNs),
            ...(e.target !== undefined ? { target: e.target } : {}),
            ...(e.link !== undefined ? { link: e.link } : {}),
          }));
        expect(seen, `cairn ls ${b.name} '${d.path}'`).toEqual(expected);
      });
    }
  });

  it('restores both backups entry for entry: data, type, mode, ns mtime, links, holes, attributes', async () => {
    for (const [i, b] of golden.backups.entries()) {
      const to = box.path(`restored-${i}`);
      expectOk(await cairn(['restore', i === 0 ? b.name : b.id, '--vault', vault, '--to', to]));
      const found = scanRestored(to);
      // Exactly the recorded entries: nothing missing, nothing left over (no partial files).
      expect([...found.keys()].sort()).toEqual(b.entries.map((e) => e.hex).sort());
      const xattrs = xattrsUnder(to);
      const byPath = new Map(b.entries.map((e) => [e.path, e]));
      for (const e of b.entries) {
        const { abs, st } = found.get(e.hex)!;
        const what = `${b.name}: '${e.path}'`;
        expect(typeOf(st), what).toBe(e.type === 'hardlink' ? 'file' : e.type);
        expect('0' + Number(st.mode & 0o7777n).toString(8).padStart(3, '0'), what).toBe(e.mode);
        expect(st.mtimeNs.toString(), what).toBe(e.mtimeNs);
        if (e.type === 'file' || e.type === 'hardlink') {
          expect(Number(st.size), what).toBe(e.size);
          expect(createHash('sha256').update(readFileSync(abs)).digest('hex'), what).toBe(e.sha256);
        }
        if (e.type === 'symlink') expect(readlinkSync(abs, { encoding: 'buffer' }).toString('latin1'), what).toBe(e.target);
        let holder = e;
        if (e.type === 'hardlink') {
          holder = byPath.get(e.link!)!;
          const other = found.get(holder.hex)!.st;
          expect([st.ino, st.dev], `${what} is the same inode as '${e.link}'`).toEqual([other.ino, other.dev]);
          expect(st.nlink, what).toBe(2n);
        }
        expect(xattrs.get(abs.toString('latin1')) ?? {}, `${what}: attributes`).toEqual(holder.xattrs ?? {});
      }
      // The sparse file's 256 KiB all-zero run is a hole again (20 KiB of data around it).
      const sparse = found.get(Buffer.from('data/sparse.img').toString('hex'))!.st;
      expect(Number(sparse.blocks) * 512, `${b.name}: data/sparse.img allocated bytes`).toBeLessThan(Number(sparse.size) - 100 * KiB);
    }
  });

  it('verifies with --read-data', async () => {
    const r = await cairn(['vault', 'verify', '--vault', vault, '--read-data', '--json']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const v = JSON.parse(r.stdout) as { ok: boolean; backups: number; chunksChecked: number; problems: unknown[] };
    expect(v).toMatchObject({ ok: true, backups: 2, problems: [] });
    expect(v.chunksChecked).toBeGreaterThan(0);
  });

  it('still covers what it was made to cover: v2 manifests, trees, repeated and all-zero chunks, links, odd names', async () => {
    const opened = await Vault.open(new LocalStore(vault), golden.passphrase);
    expect(opened.config).toMatchObject({ version: golden.formatVersion, cdc: { avg: golden.fileChunkAvg } });
    const trees: Map<string, TreeEntry>[] = [];
    const { index } = await opened.loadIndex();
    const parts: string[] = [];
    for (const b of golden.backups) {
      const m = await opened.readManifest(b.id);
      expect(m).toMatchObject({ version: 2, type: 'filesystem', kind: b.kind, parent: b.parent, disks: [] });
      const entries = new Map<string, TreeEntry>();
      for await (const e of readTree(opened, index, m.tree!)) entries.set(e.path.toString('hex'), e);
      expect([...entries.keys()]).toEqual(b.entries.map((e) => e.hex));
      // A tree this small is one part: a chunk (hex id) in a pack. (Written before part lists: the
      // manifest names the part itself.)
      expect(m.tree).toMatchObject({ parts: [expect.stringMatching(/^[0-9a-f]{64}$/)], entries: b.entries.length });
      expect(m.tree!.partLists).toBeUndefined();
      expect(index.has(Buffer.from(m.tree!.parts![0], 'hex'))).toBe(true);
      parts.push(m.tree!.parts![0]);
      const at = (path: string) => entries.get(Buffer.from(path).toString('hex'))!;
      const big = at('data/big.bin').chunks!;
      const ids = big.map((c) => c.id.toString('hex'));
      expect(big.length).toBeGreaterThan(3);
      expect(new Set(ids).size, 'the repeated region shares chunks').toBeLessThan(ids.length);
      expect(at('data/sparse.img').chunks!.some((c) => c.id.equals(ZERO_ID))).toBe(true);
      expect(at('docs/twin-b')).toMatchObject({ type: 'hardlink', link: Buffer.from('data/twin-a') });
      expect(at('pipe').type).toBe('fifo');
      expect(at('links/to-big')).toMatchObject({ type: 'symlink', target: Buffer.from('../data/big.bin') });
      expect([...entries.values()].some((e) => e.path.toString('utf8').includes('\ufffd'))).toBe(true);
      expect(at('docs/notes.txt').xattrs!.map(([name]) => name)).toEqual(['user.binary', 'user.comment']);
      trees.push(entries);
    }
    // The incremental's tree differs from the full's, so its part is a chunk of its own.
    expect(parts[1]).not.toBe(parts[0]);
    // The incremental kept the unchanged files' chunk lists and cut the changed big.bin mostly alike.
    const [full, incremental] = trees;
    const key = (p: string) => Buffer.from(p).toString('hex');
    const ids = (t: Map<string, TreeEntry>, p: string) => t.get(key(p))!.chunks!.map((c) => c.id.toString('hex'));
    expect(ids(incremental, 'data/sparse.img')).toEqual(ids(full, 'data/sparse.img'));
    const before = new Set(ids(full, 'data/big.bin'));
    const after = ids(incremental, 'data/big.bin');
    expect(after.filter((id) => !before.has(id)).length).toBeLessThanOrEqual(2);
  });
});
