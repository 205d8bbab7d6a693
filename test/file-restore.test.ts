import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { linkSync, lstatSync, mkdirSync, openSync, closeSync, readdirSync, readFileSync, readlinkSync, symlinkSync, writeFileSync, writeSync, ftruncateSync, chmodSync, lchownSync, type BigIntStats, existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalStore } from '../shared/store/local-store.js';
import { ZERO_ID } from '../shared/vault/block-map.js';
import { packKey } from '../shared/vault/pack.js';
import { readTree, type EntryType, type FileChunk } from '../shared/vault/tree.js';
import { Vault } from '../shared/vault/vault.js';
import { cliPath, exitCode, expectCliError, KiB, MiB, PASSPHRASE, runAs, Sandbox, type CliResult } from './helpers.js';

/**
 * Restores of file-system backups and `cairn ls`, end to end through the CLI: a generated tree with
 * every kind of entry (odd-byte names, sparse files, hard links across folders, setuid and sticky
 * modes, foreign owners, device nodes, fifos, symlinks with raw-byte targets, extended attributes
 * in user.* and trusted.*) is backed up, restored whole and in parts, and compared file by file
 * with the tree as it was: content sha256, type, mode, owner, mtime and atime to the nanosecond,
 * symlink targets, hard-link identity, attributes, allocated blocks of sparse files.
 *
 * The backups are made by `cairn backup dir:///...`; the test reads the stored tree only for what
 * the source no longer shows (atimes before the backup read the files) and to find a chunk to damage.
 */

const root = process.getuid?.() === 0;

// ---- reading a tree as the tests see it ---------------------------------------------------------

interface Seen {
  path: Buffer;
  st: BigIntStats;
  type: EntryType;
  target?: Buffer;
  sha?: string;
}

function typeOf(st: BigIntStats): EntryType {
  if (st.isDirectory()) return 'dir';
  if (st.isFile()) return 'file';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  if (st.isCharacterDevice()) return 'chardev';
  return 'blockdev';
}

/** Every entry below `dir` (lstat first, then content), by tree path (latin1 key), in path byte order. */
function scan(dir: string): Map<string, Seen> {
  const found: Seen[] = [];
  const walk = (rel: Buffer) => {
    const abs = rel.length ? Buffer.concat([Buffer.from(dir + '/'), rel]) : Buffer.from(dir);
    const st = lstatSync(abs, { bigint: true });
    const type = typeOf(st);
    found.push({ path: rel, st, type, ...(type === 'symlink' ? { target: readlinkSync(abs, { encoding: 'buffer' }) } : {}) });
    if (type === 'dir') {
      for (const name of readdirSync(abs, { encoding: 'buffer' })) walk(rel.length ? Buffer.concat([rel, Buffer.from('/'), name]) : name);
    }
  };
  walk(Buffer.alloc(0));
  found.sort((a, b) => Buffer.compare(a.path, b.path));
  for (const s of found) {
    if (s.type === 'file') s.sha = createHash('sha256').update(readFileSync(Buffer.concat([Buffer.from(dir + '/'), s.path]))).digest('hex');
  }
  return new Map(found.map((s) => [s.path.toString('latin1'), s]));
}

/** Extended attributes of every entry below `dir` that has any: latin1 path -> sorted "name=base64" list. */
function xattrsOf(dir: string): Map<string, string[]> {
  const r = spawnSync('getfattr', ['-R', '-P', '-h', '--absolute-names', '-d', '-m', '-', '-e', 'base64', dir]);
  if (r.error) throw new Error(`getfattr cannot run (${r.error.message}); install the attr package`);
  const out = new Map<string, string[]>();
  let current: string | undefined;
  const prefix = Buffer.from(`# file: ${dir}`);
  for (const line of splitLines(r.stdout)) {
    if (line.subarray(0, prefix.length).equals(prefix)) {
      current = unquote(line.subarray(prefix.length + 1)).toString('latin1');
      out.set(current, []);
    } else if (current !== undefined && line.length) {
      const text = line.toString('latin1');
      const eq = text.includes('=') ? text.indexOf('=') : text.length;
      const value = text.slice(eq + 1);
      out.get(current)!.push(`${unquote(Buffer.from(text.slice(0, eq), 'latin1')).toString('latin1')}=${value === '0s' || value === '""' ? '' : value.replace(/^0s/, '')}`);
    }
  }
  for (const v of out.values()) v.sort();
  return out;
}

function splitLines(buf: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  for (let nl = buf.indexOf(0x0a); nl >= 0; nl = buf.indexOf(0x0a, at)) {
    out.push(buf.subarray(at, nl));
    at = nl + 1;
  }
  return out;
}

/** getfattr's \ooo escapes back to bytes. */
function unquote(b: Buffer): Buffer {
  const out: number[] = [];
  for (let i = 0; i < b.length; i++) {
    if (b[i] === 0x5c && i + 3 < b.length + 0 && /^[0-7]{3}$/.test(b.toString('latin1', i + 1, i + 4))) {
      out.push(parseInt(b.toString('latin1', i + 1, i + 4), 8));
      i += 3;
    } else out.push(b[i]);
  }
  return Buffer.from(out);
}

/**
 * Expects `restored` to hold exactly the entries of `source` named in `paths` (all when omitted),
 * each with the same type, mode, owner, times, size, content, symlink target and attributes, and
 * hard links grouped alike.
 */
function expectSameTree(source: string, restored: string, paths?: string[]): void {
  const before = scan(source);
  const after = scan(restored);
  const want = paths ?? [...before.keys()];
  expect([...after.keys()].map(show).sort()).toEqual(want.map(show).sort());
  const xb = xattrsOf(source);
  const xa = xattrsOf(restored);
  for (const key of want) {
    const b = before.get(key)!;
    const a = after.get(key)!;
    const what = `entry '${show(key)}'`;
    expect(a.type, what).toBe(b.type);
    expect(a.st.mode, what).toBe(b.st.mode);
    expect([a.st.uid, a.st.gid], what).toEqual(root ? [b.st.uid, b.st.gid] : [BigInt(process.getuid!()), BigInt(process.getgid!())]);
    expect(a.st.mtimeNs, `${what} mtime`).toBe(b.st.mtimeNs);
    // Reading one path of a hard-linked inode moves the atime the others' entries record.
    if (b.type !== 'dir' && b.st.nlink === 1n) expect(a.st.atimeNs, `${what} atime`).toBe(recordedAtime.get(key) ?? b.st.atimeNs);
    if (b.type === 'file') {
      expect(a.st.size, what).toBe(b.st.size);
      expect(a.sha, what).toBe(b.sha);
    }
    if (b.type === 'symlink') expect(a.target, what).toEqual(b.target);
    if (b.type === 'chardev' || b.type === 'blockdev') expect(a.st.rdev, what).toBe(b.st.rdev);
    expect(xa.get(key) ?? [], `${what} xattrs`).toEqual((xb.get(key) ?? []).filter((x) => root || x.startsWith('user.')));
  }
  // Hard links: paths sharing an inode in the source share one after the restore, and only those.
  const groups = (m: Map<string, Seen>) => {
    const byIno = new Map<bigint, string[]>();
    for (const [k, s] of m) if (s.type === 'file' && want.includes(k)) byIno.set(s.st.ino, [...(byIno.get(s.st.ino) ?? []), k]);
    return [...byIno.values()].map((g) => g.sort().join(' | ')).sort();
  };
  expect(groups(after)).toEqual(groups(before));
}

function show(latin1: string): string {
  return JSON.stringify(latin1);
}

// ---- a source tree with every kind of entry ---------------------------------------------------


function makeSource(dir: string): void {
  const p = (rel: string | Buffer) => (typeof rel === 'string' ? join(dir, rel) : Buffer.concat([Buffer.from(dir + '/'), rel]));
  for (const d of ['docs', 'bin', 'shared', 'links', 'other', 'odd', 'dev', 'deep/a/b/c']) mkdirSync(p(d), { recursive: true });
  writeFileSync(p('docs/readme.txt'), 'a readme\n'.repeat(1000));
  writeFileSync(p('docs/empty'), '');
  writeFileSync(p('bin/tool'), randomBytes(10 * KiB));
  chmodSync(p('bin/tool'), 0o4755);
  chmodSync(p('shared'), 0o1777);
  chmodSync(p('docs'), 0o750);
  writeFileSync(p('deep/a/b/c/leaf'), randomBytes(3000));
  // Sparse: data, a 16 MiB hole, data (longer than the largest chunk, so whole chunks are zero);
  // and a file that is one hole.
  const fd = openSync(p('big.bin'), 'wx');
  writeSync(fd, randomBytes(1.5 * MiB), 0, 1.5 * MiB, 0);
  writeSync(fd, randomBytes(MiB), 0, MiB, 17.5 * MiB);
  closeSync(fd);
  const hole = openSync(p('hole.img'), 'wx');
  ftruncateSync(hole, 8 * MiB);
  closeSync(hole);
  // One chunk's data twice in one file and in another (dedup across places).
  const block = randomBytes(2 * MiB);
  writeFileSync(p('twice.bin'), Buffer.concat([block, block, Buffer.from('tail')]));
  writeFileSync(p('other/same-block'), block);
  writeFileSync(p('links/a'), 'linked data\n');
  linkSync(p('links/a'), p('links/b'));
  linkSync(p('links/a'), p('other/c'));
  symlinkSync('docs/readme.txt', p('sym-rel'));
  symlinkSync(Buffer.from('nowhere/\xff\x01', 'latin1'), p('sym-odd'));
  for (const name of ['caf\xe9', 'new\nline', 'tab\there', 'back\\slash', 'ütf8-ok', 'esc\x1b[31m']) {
    writeFileSync(p(Buffer.from(`odd/${name}`, name.includes('ü') ? 'utf8' : 'latin1')), '0123456789');
  }
  spawnSync('mkfifo', [p('pipe') as string]);
  writeFileSync(p('owned'), 'someone else\n');
  if (root) {
    lchownSync(p('owned'), 1234, 5678);
    lchownSync(p('sym-rel'), 4321, 8765);
    expect(spawnSync('mknod', [p('dev/null-copy') as string, 'c', '1', '3']).status).toBe(0);
    expect(spawnSync('mknod', [p('dev/blocky') as string, 'b', '7', '200']).status).toBe(0);
  }
  const setx = (args: string[]) => expect(spawnSync('setfattr', args).status, `setfattr ${args.join(' ')}`).toBe(0);
  setx(['-n', 'user.comment', '-v', 'hello', p('docs/readme.txt') as string]);
  setx(['-n', 'user.bin', '-v', '0sAAECA/8=', p('docs/readme.txt') as string]);
  setx(['-n', 'user.empty', p('docs') as string]);
  // On an inode with three paths: a restore of a later path alone must still carry it.
  setx(['-n', 'user.linked', '-v', 'inode', p('links/a') as string]);
  // A name that is not UTF-8 cannot be an argument: setfattr reads it, escaped, from stdin.
  const restore = spawnSync('setfattr', ['--restore=-'], { input: `# file: ${dir}/odd/caf\\351\nuser.odd=0seA==\n\n` });
  expect(restore.status, restore.stderr.toString()).toBe(0);
  if (root) setx(['-h', '-n', 'trusted.cairn', '-v', '0sAQI=', p('bin/tool') as string]);
  // Times to the nanosecond, not on microsecond boundaries (files, a symlink, folders).
  const touch = (rel: string, at: string) => expect(spawnSync('touch', ['-h', '-d', at, p(rel) as string]).status).toBe(0);
  touch('docs/readme.txt', '@1600000000.123456789');
  touch('sym-rel', '@1500000000.987654321');
  touch('big.bin', '@1700000000.000000001');
  touch('deep/a/b/c', '@1400000000.5');
  touch('deep/a', '@1400000001.333333333');
  touch('docs', '@1650000000.111111111');
}

// ---- backing it up -----------------------------------------------------------------------------

/** atimes as the backup recorded them (reading a file during the backup moves its atime). */
const recordedAtime = new Map<string, bigint>();

/**
 * Backs `dir` up with `cairn backup dir://...` as `name`, then reads the stored tree: the atimes it
 * recorded and each file's chunks (to damage one later).
 */
async function backupTree(sb: Sandbox, vaultDir: string, dir: string, name: string): Promise<Map<string, FileChunk[]>> {
  const r = await sb.cairnJson<{ type: string; partial: boolean; warnings: string[] }>(['backup', `dir://${dir}`, '--vault', vaultDir, '--name', name, '--json']);
  expect(r).toMatchObject({ type: 'filesystem', partial: false, warnings: [] });
  const vault = await Vault.open(new LocalStore(vaultDir), PASSPHRASE);
  const m = await vault.findBackup(name);
  const chunks = new Map<string, FileChunk[]>();
  const { index } = await vault.loadIndex();
  for await (const e of readTree(vault, index, m.tree!)) {
    const key = e.path.toString('latin1');
    recordedAtime.set(key, e.atimeNs);
    if (e.type === 'file' && e.chunks) chunks.set(key, e.chunks);
  }
  return chunks;
}

// ---- the tests ----------------------------------------------------------------------------------

describe('file-system restore and ls', () => {
  let sb: Sandbox;
  let vault: string;
  let src: string;
  let chunks: Map<string, FileChunk[]>;

  beforeAll(async () => {
    sb = await Sandbox.create('file-restore');
    vault = await sb.initVault('vault', ['--type', 'filesystem']);
    src = sb.path('src');
    mkdirSync(src);
    makeSource(src);
    chunks = await backupTree(sb, vault, src, 'files-1');
  });

  afterAll(async () => {
    await sb?.cleanup();
  });

  it('restores the whole tree: content, metadata, hard links, holes', async () => {
    const to = sb.path('full');
    const r = await sb.cairnJson<{ files: number; dirs: number; symlinks: number; hardlinks: number; special: number; bytes: number; bytesWritten: number; warnings: string[] }>(
      ['restore', 'files-1', '--vault', vault, '--to', to, '--json'],
    );
    expectSameTree(src, to);
    expect(r.hardlinks).toBe(2);
    expect(r.symlinks).toBe(2);
    expect(r.special).toBe(root ? 3 : 1);
    expect(r.files).toBe(scanCount(src, 'file') - 2);
    // Holes stay holes: what the tree holds as all-zero chunks is not allocated.
    const data = (key: string) => chunks.get(key)!.reduce((n, c) => n + (c.id.equals(ZERO_ID) ? 0 : c.length), 0);
    expect(data('hole.img')).toBe(0);
    expect(lstatSync(join(to, 'hole.img')).blocks).toBe(0);
    expect(data('big.bin')).toBeLessThan(lstatSync(join(src, 'big.bin')).size - 8 * MiB);
    expect(lstatSync(join(to, 'big.bin')).blocks * 512).toBeLessThanOrEqual(data('big.bin') + 64 * KiB);
    expect(r.bytesWritten).toBe([...chunks.keys()].reduce((n, k) => n + data(k), 0));
    expect(r.warnings).toEqual([]);
    expect(leftovers(to)).toEqual([]);
  });

  it('restores selected paths with their parent folders; a hard link whose first path is not selected gets the data', async () => {
    const to = sb.path('some');
    const r = await sb.cairnJson<{ warnings: string[] }>(
      ['restore', 'files-1', '--vault', vault, '--to', to, '--path', 'links/b', '--path', '/other/', '--path', 'deep/a/b', '--json'],
    );
    expect(r.warnings).toEqual([]);
    expectSameTree(src, to, ['', 'links', 'links/b', 'other', 'other/c', 'other/same-block', 'deep', 'deep/a', 'deep/a/b', 'deep/a/b/c', 'deep/a/b/c/leaf']);
    expect(existsSync(join(to, 'links/a'))).toBe(false);
  });

  it('exits 9 (partial) when the backup could not read some entries, naming them, after printing its result', async () => {
    expect(root, 'this test makes files unreadable by backing up as nobody, which needs root').toBe(true);
    // A corner of the sandbox that uid 65534 may write: its vault, its state, and a tree it partly reads.
    const area = sb.path('nobody');
    mkdirSync(area);
    chmodSync(sb.dir, 0o755);
    chmodSync(area, 0o777);
    const tree = join(area, 'tree');
    mkdirSync(tree, { mode: 0o755 });
    writeFileSync(join(tree, 'open.txt'), 'anyone may read this\n', { mode: 0o644 });
    writeFileSync(join(tree, 'locked.txt'), 'root only\n', { mode: 0o600 });
    linkSync(join(tree, 'locked.txt'), join(tree, 'zz-link'));
    mkdirSync(join(tree, 'secret'), { mode: 0o700 });
    writeFileSync(join(tree, 'secret', 'inside'), 'hidden\n');
    const state = join(area, 'state');
    mkdirSync(state);
    chmodSync(state, 0o777);
    const nobody = (args: string[]) => runAs(65534, args, { CAIRN_PASSPHRASE: PASSPHRASE, CAIRN_STATE_DIR: state });
    const v = join(area, 'vault');
    const init = await nobody(['vault', 'init', v, '--kdf-log-n', '12']);
    expect(init.code, init.stderr).toBe(0);
    const b = await nobody(['backup', `dir://${tree}`, '--vault', v, '--json']);
    expect(b.code, b.stderr).toBe(exitCode('PARTIAL'));
    const name = (JSON.parse(b.stdout) as { name: string; partial: boolean }).name;

    const to = sb.path('partial');
    const r = await sb.cairn(['restore', name, '--vault', v, '--to', to, '--json']);
    expect(r.code, r.stderr).toBe(exitCode('PARTIAL'));
    const j = JSON.parse(r.stdout) as { partial: boolean; skipped: string[]; files: number; warnings: string[] };
    expect(j).toMatchObject({ partial: true, skipped: ['locked.txt', 'secret', 'zz-link'], skippedCount: 3, files: 1 });
    expect(j.warnings.join('\n')).toMatch(/locked\.txt \(unreadable: EACCES.*secret\/ \(made empty; unreadable: cannot be listed: EACCES.*zz-link \(a hard link to locked\.txt\)/);
    // Nothing of what the backup could not read appears, not even as an empty file.
    expect(readdirSync(to).sort()).toEqual(['open.txt', 'secret']);
    expect(readdirSync(join(to, 'secret'))).toEqual([]);
    expect(readFileSync(join(to, 'open.txt'), 'utf8')).toBe('anyone may read this\n');

    const human = await sb.cairn(['restore', name, '--vault', v, '--to', sb.path('partial-2')]);
    expect(human.code, human.stderr).toBe(exitCode('PARTIAL'));
    expect(human.stdout).toMatch(/^restored .*; PARTIAL: 3 entries the backup could not read are left out/);
    expect(human.stderr).toMatch(/^cairn: warning: 3 entries not restored as backed up: .*locked\.txt \(unreadable: EACCES/m);
    expect(human.stderr).not.toMatch(/cairn: error/);
  });

  it('on SIGINT keeps the files already in place, removes temporary ones and says so; --force then finishes', async () => {
    const many = sb.path('many-src');
    mkdirSync(join(many, 'many'), { recursive: true });
    for (let i = 0; i < 1500; i++) writeFileSync(join(many, 'many', `f${String(i).padStart(4, '0')}`), randomBytes(2 * KiB + (i % 7)));
    await backupTree(sb, vault, many, 'many-1');
    const to = sb.path('interrupted');
    const child = spawn(process.execPath, [cliPath, 'restore', 'many-1', '--vault', vault, '--to', to], {
      env: { ...process.env, CAIRN_PASSPHRASE: PASSPHRASE, CAIRN_STATE_DIR: sb.stateDir },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolveExit) => child.on('close', (code) => resolveExit(code)));
    // Interrupt once some files are in place and others are still being written.
    const deadline = Date.now() + 30_000;
    for (;;) {
      const names = existsSync(join(to, 'many')) ? readdirSync(join(to, 'many')) : [];
      if (names.some((n) => n.startsWith('.cairn-partial-')) && names.some((n) => !n.startsWith('.cairn-partial-'))) break;
      if (Date.now() > deadline) throw new Error(`the restore showed no files in place beside partial ones within 30 s; stderr: ${stderr}`);
      await new Promise((r) => setTimeout(r, 2));
    }
    child.kill('SIGINT');
    expect(await exited, stderr).toBe(130);
    expect(stderr).toContain('interrupted by SIGINT');
    expect(stderr).toContain(`the files restored so far stay in ${to} (temporary files were removed`);
    expect(stderr).toContain('run the same restore again with --force');
    expect(stderr).not.toContain('nothing is left');
    expect(stderr).not.toContain('    at ');
    expect(leftovers(to)).toEqual([]);
    const kept = readdirSync(join(to, 'many'));
    expect(kept.length).toBeGreaterThan(0);
    expect(kept.length).toBeLessThan(1500);
    for (const n of kept) expect(readFileSync(join(to, 'many', n)), n).toEqual(readFileSync(join(many, 'many', n)));

    const again = await sb.cairn(['restore', 'many-1', '--vault', vault, '--to', to, '--force']);
    expect(again.code, again.stderr).toBe(0);
    expectSameTree(many, to);
  });

  it('refuses a path the backup lacks, naming the nearest parent, before writing anything', async () => {
    const to = sb.path('missing');
    const r = await sb.cairn(['restore', 'files-1', '--vault', vault, '--to', to, '--path', 'deep/a/nope/x']);
    expectCliError(r, 'NOT_FOUND', "'deep/a/nope/x'", "'deep/a'");
    expect(existsSync(to)).toBe(false);
  });

  it('refuses a non-empty target unless --force, and then keeps what else is there', async () => {
    const to = sb.path('busy');
    mkdirSync(to);
    writeFileSync(join(to, 'mine.txt'), 'keep me');
    const r = await sb.cairn(['restore', 'files-1', '--vault', vault, '--to', to, '--path', 'docs']);
    expectCliError(r, 'ALREADY_EXISTS', 'not empty', '--force');
    expect(readdirSync(to)).toEqual(['mine.txt']);
    await sb.cairnJson(['restore', 'files-1', '--vault', vault, '--to', to, '--path', 'docs', '--force', '--json']);
    expect(readFileSync(join(to, 'mine.txt'), 'utf8')).toBe('keep me');
    expect(readFileSync(join(to, 'docs/readme.txt'))).toEqual(readFileSync(join(src, 'docs/readme.txt')));
    // Again over itself: files are replaced, not refused.
    await sb.cairnJson(['restore', 'files-1', '--vault', vault, '--to', to, '--path', 'docs', '--force', '--json']);
    expect(leftovers(to)).toEqual([]);
  });

  it('lists folders and files with ls: odd names escaped, -l and --json', async () => {
    const top = await sb.cairn(['ls', 'files-1', '--vault', vault]);
    expect(top.code, top.stderr).toBe(0);
    expect(top.stdout.split('\n').filter(Boolean)).toEqual([
      'big.bin', 'bin/', 'deep/', 'dev/', 'docs/', 'hole.img', 'links/', 'odd/', 'other/', 'owned', 'pipe', 'shared/', 'sym-odd', 'sym-rel', 'twice.bin',
    ]);
    const odd = await sb.cairnJson<{ name: string; path: string; type: string; size: number; mode: string; mtime: string }[]>(['ls', 'files-1', '--vault', vault, 'odd', '--json']);
    expect(odd.map((e) => e.name).sort()).toEqual(['back\\\\slash', 'caf\\xe9', 'esc\\x1b[31m', 'new\\nline', 'tab\\there', 'ütf8-ok'].sort());
    expect(odd.find((e) => e.name === 'caf\\xe9')).toMatchObject({ path: 'odd/caf\\xe9', type: 'file', size: 10, mode: '0644' });
    const file = await sb.cairnJson<{ name: string; type: string; mtime: string; size: number }[]>(['ls', 'files-1', '--vault', vault, '/docs/readme.txt', '--json']);
    expect(file).toEqual([expect.objectContaining({ name: 'readme.txt', type: 'file', size: 9000, mtime: '2020-09-13T12:26:40.123456789Z' })]);
    const sym = await sb.cairnJson<{ name: string; target: string }[]>(['ls', 'files-1', '--vault', vault, 'sym-odd', '--json']);
    expect(sym[0].target).toBe('nowhere/\\xff\\x01');
    const links = await sb.cairnJson<{ name: string; type: string; link?: string }[]>(['ls', 'files-1', '--vault', vault, 'links', '--json']);
    expect(links.map((e) => [e.name, e.type, e.link])).toEqual([['a', 'file', undefined], ['b', 'hardlink', 'links/a']]);
    const long = await sb.cairn(['ls', 'files-1', '--vault', vault, '-l']);
    expect(long.stdout).toMatch(/^drwxr-xr-x\s.*\sbin$/m);
    expect(long.stdout).toMatch(/^drwxrwxrwt\s.*\sshared$/m);
    expect(long.stdout).toMatch(/^lrwxrwxrwx\s.*\ssym-rel -> docs\/readme\.txt$/m);
    const bin = await sb.cairn(['ls', 'files-1', '--vault', vault, 'bin', '-l']);
    expect(bin.stdout).toMatch(/^-rwsr-xr-x\s+\d+\s+\d+\s+10240\s.*\stool$/m);
    const missing = await sb.cairn(['ls', 'files-1', '--vault', vault, 'docs/nope/deeper']);
    expectCliError(missing, 'NOT_FOUND', "'docs/nope/deeper'", "'docs'");
  });

  it('fails on a damaged chunk with VAULT_CORRUPT naming the file and offset, leaving no partial file', async () => {
    // Damage big.bin's last stored chunk (after the hole) in its pack.
    const v = await Vault.open(new LocalStore(vault), PASSPHRASE);
    const { index } = await v.loadIndex();
    const list = chunks.get('big.bin')!;
    const last = list.length - 1 - [...list].reverse().findIndex((c) => !c.id.equals(ZERO_ID));
    const offset = list.slice(0, last).reduce((n, c) => n + c.length, 0);
    expect(offset).toBeGreaterThan(0);
    const loc = index.get(list[last].id)!;
    const packFile = join(vault, packKey(loc.packId));
    const pack = await readFile(packFile);
    pack[loc.offset + 40] ^= 0xff;
    await writeFile(packFile, pack);
    try {
      const to = sb.path('damaged');
      const r = await sb.cairn(['restore', 'files-1', '--vault', vault, '--to', to]);
      expectCliError(r, 'VAULT_CORRUPT', 'big.bin', `offset ${offset}`);
      expect(existsSync(join(to, 'big.bin'))).toBe(false);
      expect(leftovers(to)).toEqual([]);
      // What does not need the chunk still restores.
      const ok = await sb.cairn(['restore', 'files-1', '--vault', vault, '--to', sb.path('undamaged'), '--path', 'docs']);
      expect(ok.code, ok.stderr).toBe(0);
    } finally {
      pack[loc.offset + 40] ^= 0xff;
      await writeFile(packFile, pack);
    }
  });
});


function scanCount(dir: string, type: EntryType): number {
  return [...scan(dir).values()].filter((s) => s.type === type).length;
}

/** Temporary files of a restore left anywhere below `dir`. */
function leftovers(dir: string): string[] {
  return [...scan(dir).keys()].filter((k) => /(^|\/)\.cairn-(partial|node)-/.test(k));
}
