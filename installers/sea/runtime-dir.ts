import { createHash } from 'node:crypto';
import { chmodSync, lstatSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

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

/**
 * Where the executable unpacks what cannot run from memory (native addons must be files to be
 * loaded; the web console is served from files): `$CAIRN_CACHE_DIR`, else systemd's
 * `$CACHE_DIRECTORY`, else `$XDG_CACHE_HOME/cairn` or `~/.cache/cairn`, else a per-user folder in
 * the temp dir. Then `runtime-VERSION-BUILDID/` inside it.
 */
export function runtimeRoot(env: NodeJS.ProcessEnv = process.env): string {
  if (env.CAIRN_CACHE_DIR) return env.CAIRN_CACHE_DIR;
  if (env.CACHE_DIRECTORY) return env.CACHE_DIRECTORY.split(':')[0];
  if (env.XDG_CACHE_HOME) return join(env.XDG_CACHE_HOME, 'cairn');
  const home = env.HOME ?? safeHomedir();
  if (home && home !== '/') return join(home, '.cache', 'cairn');
  return join(tmpdir(), `cairn-${process.getuid?.() ?? 'user'}`);
}

function safeHomedir(): string | undefined {
  try {
    return homedir();
  } catch {
    return undefined;
  }
}

/**
 * Makes `dir` (and missing parents) and checks that only this user can write it, so nobody else
 * can swap a native addon between our check and our load.
 */
function ensurePrivateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = lstatSync(dir);
  const uid = process.getuid?.();
  if (!st.isDirectory()) throw new Error(`${dir} is not a folder`);
  if (uid !== undefined && st.uid !== uid) throw new Error(`${dir} belongs to user ${st.uid}, not to this user (${uid})`);
  if ((st.mode & 0o022) !== 0) throw new Error(`${dir} is writable by other users (mode ${(st.mode & 0o777).toString(8)})`);
}

function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * Writes `key`'s contents below `dir` unless an identical copy is there already. Atomic (temp file,
 * then rename), so processes starting at once never see a half-written file.
 */
function extractOne(key: string, target: string, expected: string, read: AssetReader): void {
  try {
    if (sha256(readFileSync(target)) === expected) return;
  } catch {
    // missing: write it
  }
  const data = new Uint8Array(read(key));
  if (sha256(data) !== expected) throw new Error(`embedded file ${key} is damaged (sha256 mismatch): the executable is corrupt; reinstall Cairn`);
  ensurePrivateDir(dirname(target));
  const tmp = `${target}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, data, { mode: key.endsWith('.node') ? 0o500 : 0o400 });
    renameSync(tmp, target);
  } finally {
    rmSync(tmp, { force: true });
  }
}

/**
 * Prepares the runtime folder: checks or writes every native addon, and returns the folder. Fails
 * with a message that says which folder and what to do.
 */
export function prepareRuntimeDir(manifest: EmbeddedManifest, read: AssetReader, env: NodeJS.ProcessEnv = process.env): string {
  const root = runtimeRoot(env);
  const dir = join(root, `runtime-${manifest.version}-${manifest.buildId.slice(0, 12)}`);
  try {
    ensurePrivateDir(root);
    ensurePrivateDir(dir);
    for (const [key, hash] of Object.entries(manifest.files)) {
      if (key.startsWith('native/')) extractOne(key, join(dir, key), hash, read);
    }
  } catch (err) {
    throw new Error(
      `cannot prepare Cairn's runtime folder ${dir}: ${(err as Error).message}. ` +
        'Set CAIRN_CACHE_DIR to a folder only you can write (on a file system that allows executables).',
    );
  }
  return dir;
}

/** Writes every embedded file under `prefix/` into the runtime folder (once) and returns its path. */
export function extractTree(runtimeDir: string, manifest: EmbeddedManifest, prefix: string, read: AssetReader): string {
  const base = join(runtimeDir, prefix);
  for (const [key, hash] of Object.entries(manifest.files)) {
    if (key.startsWith(`${prefix}/`)) extractOne(key, join(runtimeDir, key), hash, read);
  }
  chmodSync(base, 0o700);
  return base;
}
