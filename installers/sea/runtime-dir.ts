import { createHash } from 'node:crypto';
import { closeSync, constants, fstatSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import type { Stats } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { dirname, join, parse, resolve } from 'node:path';

/** What the build records about the embedded files (asset `manifest.json`). */
export interface EmbeddedManifest {
  version: string;
  /** Node.js version of the runtime inside the executable. */
  node: string;
  /** Hash over every embedded file: names the runtime folder, so two builds never share one. */
  buildId: string;
  /** Asset key -> sha256 (hex) of its contents. Keys: `native/NAME.node`, `console/...`, `workers/NAME.cjs`. */
  files: Record<string, string>;
}

export type AssetReader = (key: string) => ArrayBuffer;

/** A prepared runtime folder and, per native addon, an open descriptor of its checked file. */
export interface RuntimeDir {
  dir: string;
  /** Addon name (`blake`) -> file descriptor, open for the life of the process. */
  addons: Map<string, number>;
}

/**
 * Where the executable may unpack what cannot run from memory (native addons must be files to be
 * loaded; the web console is served from files), best first: `$CAIRN_CACHE_DIR` alone when set;
 * else systemd's `$CACHE_DIRECTORY`, `$XDG_CACHE_HOME/cairn`, `~/.cache/cairn`, a per-user folder in
 * the temp dir. Each gets `runtime-VERSION-BUILDID/` inside it.
 */
export function runtimeRoots(env: NodeJS.ProcessEnv = process.env): string[] {
  if (env.CAIRN_CACHE_DIR) return [resolve(env.CAIRN_CACHE_DIR)];
  const home = env.HOME ?? safeHomedir();
  const roots = [
    env.CACHE_DIRECTORY?.split(':')[0],
    env.XDG_CACHE_HOME ? join(env.XDG_CACHE_HOME, 'cairn') : undefined,
    home && home !== '/' ? join(home, '.cache', 'cairn') : undefined,
    join(tmpdir(), `cairn-${process.getuid?.() ?? 'user'}`),
  ];
  return [...new Set(roots.filter((r): r is string => r !== undefined && r !== '').map((r) => resolve(r)))];
}

function safeHomedir(): string | undefined {
  try {
    return homedir();
  } catch {
    return undefined;
  }
}

const uid = (): number | undefined => process.getuid?.();

/**
 * Makes `dir` (and missing parents) and checks that nobody else can change what is in it: `dir`
 * must belong to this user and be writable by no one else, and every folder above it must belong
 * to root or this user and be writable by no one else unless sticky (as /tmp is), so that no other
 * user can rename `dir` or a folder above it away and put their own in its place.
 */
function ensurePrivateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const me = uid();
  const st = lstatSync(dir);
  if (!st.isDirectory()) throw new Error(`${dir} is not a folder`);
  if (me !== undefined && st.uid !== me) throw new Error(`${dir} belongs to user ${st.uid}, not to this user (${me})`);
  if ((st.mode & 0o022) !== 0) throw new Error(`${dir} is writable by other users (mode ${(st.mode & 0o777).toString(8)})`);
  for (let up = dirname(dir); ; up = dirname(up)) {
    const p = lstatSync(up);
    // A link above counts as the folder it leads to (a link's own mode means nothing; only its
    // folder's owner can change it, and that folder is checked as the walk goes on).
    ensureTrustedAncestor(up, p.isSymbolicLink() ? statSync(up) : p);
    if (up === parse(up).root) break;
  }
}

function ensureTrustedAncestor(path: string, st: Stats): void {
  const me = uid();
  if (me !== undefined && st.uid !== 0 && st.uid !== me) throw new Error(`${path} belongs to user ${st.uid}, neither root nor this user`);
  const sticky = (st.mode & 0o1000) !== 0;
  if ((st.mode & 0o022) !== 0 && !sticky) throw new Error(`${path} is writable by other users (mode ${(st.mode & 0o777).toString(8)})`);
}

function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * Writes `key`'s contents to `target` unless an identical copy is there already. Atomic (temp file,
 * then rename), so processes starting at once never see a half-written file.
 */
function extractOne(key: string, target: string, expected: string, read: AssetReader): void {
  try {
    if (sha256(readFileSync(target)) === expected) return;
  } catch {
    // missing: write it
  }
  writeAsset(key, target, expected, read);
}

/** Writes `key`'s contents to `target`, atomically (temp file, then rename). */
function writeAsset(key: string, target: string, expected: string, read: AssetReader): void {
  const data = new Uint8Array(read(key));
  if (sha256(data) !== expected) throw new Error(`embedded file ${key} is damaged (sha256 mismatch): the executable is corrupt; reinstall Cairn`);
  ensurePrivateDir(dirname(target));
  const tmp = `${target}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, data, { mode: key.endsWith('.node') ? 0o500 : 0o400, flag: 'wx' });
    renameSync(tmp, target);
  } finally {
    rmSync(tmp, { force: true });
  }
}

/**
 * Opens `path` (never through a link), checks it is a regular file of this user whose contents
 * hash to `expected`, and returns the descriptor. Loading the addon through `/proc/self/fd/N` then
 * loads exactly the bytes checked, whatever happens to the name afterwards.
 */
function openChecked(path: string, expected: string): number {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const st = fstatSync(fd);
    const me = uid();
    if (!st.isFile()) throw new Error(`${path} is not a regular file`);
    if (me !== undefined && st.uid !== me) throw new Error(`${path} belongs to user ${st.uid}, not to this user (${me})`);
    if (sha256(readFileSync(fd)) !== expected) throw new Error(`${path} changed after it was written`);
    return fd;
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}

/**
 * Prepares the runtime folder: the first of `runtimeRoots` where every native addon can be checked
 * or written, opened and checked again, and then loaded (`probe`, which fails on a file system
 * mounted noexec). Fails with a message that says which folders were tried, why each failed, and
 * what to do.
 */
export function prepareRuntimeDir(
  manifest: EmbeddedManifest,
  read: AssetReader,
  probe: (prepared: RuntimeDir) => void,
  env: NodeJS.ProcessEnv = process.env,
): RuntimeDir {
  const failures: string[] = [];
  for (const root of runtimeRoots(env)) {
    const dir = join(root, `runtime-${manifest.version}-${manifest.buildId.slice(0, 12)}`);
    const addons = new Map<string, number>();
    try {
      ensurePrivateDir(root);
      ensurePrivateDir(dir);
      for (const [key, hash] of Object.entries(manifest.files)) {
        const name = /^native\/(.+)\.node$/.exec(key)?.[1];
        if (name === undefined) continue;
        // Checked once, on the descriptor that is then loaded; written (again) only when that check fails.
        let fd: number;
        try {
          fd = openChecked(join(dir, key), hash);
        } catch {
          writeAsset(key, join(dir, key), hash, read);
          fd = openChecked(join(dir, key), hash);
        }
        addons.set(name, fd);
      }
      const prepared = { dir, addons };
      probe(prepared);
      pruneOtherBuilds(root, dir);
      return prepared;
    } catch (err) {
      for (const fd of addons.values()) closeSync(fd);
      failures.push(`cannot prepare Cairn's runtime folder ${dir}: ${(err as Error).message}`);
    }
  }
  throw new Error(`${failures.join('; ')}. Set CAIRN_CACHE_DIR to a folder only you can write, on a file system that allows executables.`);
}

/**
 * Deletes the runtime folders of other builds (left by upgrades). A process of another build that
 * still runs keeps its addons (open descriptors) and writes its folder again if it needs files.
 */
function pruneOtherBuilds(root: string, keep: string): void {
  try {
    for (const entry of readdirSync(root)) {
      const path = join(root, entry);
      if (entry.startsWith('runtime-') && path !== keep) rmSync(path, { recursive: true, force: true });
    }
  } catch {
    // Only tidiness: a folder that cannot be listed or deleted now is tried again at the next start.
  }
}

/** Writes every embedded file under `prefix/` into the runtime folder (once) and returns its path. */
export function extractTree(runtimeDir: string, manifest: EmbeddedManifest, prefix: string, read: AssetReader): string {
  const base = join(runtimeDir, prefix);
  for (const [key, hash] of Object.entries(manifest.files)) {
    if (key.startsWith(`${prefix}/`)) extractOne(key, join(runtimeDir, key), hash, read);
  }
  return base;
}
