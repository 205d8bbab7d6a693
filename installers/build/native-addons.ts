import { execFileSync, spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createRequire } from 'node:module';
import type { RuntimeNode } from './runtime-node.js';

/**
 * The native addons Cairn loads, as files built for the executable's runtime. The names are the
 * ones `installers/sea/native-addons.ts` loads.
 *
 * - `blake` (@napi-rs/blake-hash), `zstd` (zstd-napi) and Cairn's own `cairn_walk` (binding.gyp,
 *   built by `npm install` into build/Release) use Node-API, whose binary interface is the same in
 *   every Node.js version: the files npm installed or built are used as they are.
 * - `better_sqlite3` uses V8's C++ API, which changes with each Node.js major: it is compiled again
 *   against the runtime's headers with npm's own node-gyp (cached per addon and runtime version).
 */
export interface NativeAddon {
  name: string;
  file: string;
}

function packageDir(repo: string, name: string): string {
  const require = createRequire(join(repo, 'package.json'));
  return dirname(require.resolve(`${name}/package.json`));
}

function nodeGyp(): string {
  const candidates = [
    process.env.npm_execpath ? join(dirname(process.env.npm_execpath), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js') : '',
    join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  const found = candidates.find((c) => c !== '' && existsSync(c));
  if (found === undefined) throw new Error(`node-gyp not found (looked in ${candidates.filter(Boolean).join(', ')}); it comes with npm`);
  return found;
}

export function nativeAddons(repo: string, runtime: RuntimeNode, cacheDir: string, log: (s: string) => void): NativeAddon[] {
  const sqliteDir = packageDir(repo, 'better-sqlite3');
  const sqliteVersion = (JSON.parse(readFileSync(join(sqliteDir, 'package.json'), 'utf8')) as { version: string }).version;
  const build = join(cacheDir, `better-sqlite3-${sqliteVersion}-node-v${runtime.version}`);
  const sqliteNode = join(build, 'build', 'Release', 'better_sqlite3.node');
  if (!existsSync(sqliteNode)) {
    log(`compiling better-sqlite3 ${sqliteVersion} for Node.js ${runtime.version} (once; cached in ${cacheDir})`);
    const work = `${build}.${process.pid}`;
    rmSync(work, { recursive: true, force: true });
    mkdirSync(work, { recursive: true });
    for (const part of ['binding.gyp', 'src', 'deps', 'package.json']) cpSync(join(sqliteDir, part), join(work, part), { recursive: true });
    const gyp = spawnSync(process.execPath, [nodeGyp(), 'rebuild', '--release', `--nodedir=${runtime.dir}`, `--jobs=${availableParallelism()}`], {
      cwd: work,
      encoding: 'utf8',
      maxBuffer: 64 << 20,
      env: { ...process.env, npm_config_nodedir: runtime.dir },
    });
    if (gyp.status !== 0) {
      process.stderr.write(`${gyp.stdout}${gyp.stderr}`.split('\n').slice(-40).join('\n'));
      throw new Error(`compiling better-sqlite3 for Node.js ${runtime.version} failed (node-gyp exit ${gyp.status ?? gyp.signal}); it needs python3, make and g++`);
    }
    rmSync(build, { recursive: true, force: true });
    renameSync(work, build);
  }

  const blakeDir = packageDir(packageDir(repo, '@napi-rs/blake-hash'), '@napi-rs/blake-hash-linux-x64-gnu');
  const zstdDir = packageDir(repo, 'zstd-napi');
  const addons: NativeAddon[] = [
    { name: 'better_sqlite3', file: sqliteNode },
    { name: 'blake', file: join(blakeDir, 'blake.linux-x64-gnu.node') },
    { name: 'zstd', file: join(zstdDir, 'build', 'Release', 'binding.node') },
    { name: 'cairn_walk', file: join(repo, 'build', 'Release', 'cairn_walk.node') },
  ];
  const missing = addons.find((a) => !existsSync(a.file));
  if (missing) throw new Error(`native addon ${missing.name} is not built: ${missing.file} is missing (npm install builds it)`);
  // Each must load in the runtime it ships with.
  const probe = addons.map((a) => `process.dlopen({ exports: {} }, ${JSON.stringify(a.file)});`).join('');
  execFileSync(runtime.binary, ['-e', probe], { stdio: ['ignore', 'ignore', 'inherit'] });
  return addons;
}

/** Copies the addons into `dir/native/NAME.node`. */
export function stageAddons(addons: NativeAddon[], dir: string): void {
  mkdirSync(join(dir, 'native'), { recursive: true });
  for (const a of addons) copyFileSync(a.file, join(dir, 'native', `${a.name}.node`));
}
