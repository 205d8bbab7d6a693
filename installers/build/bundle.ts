import { build, type Plugin } from 'esbuild';
import { join } from 'node:path';

/**
 * Bundles Cairn into CommonJS files for the single executable: the CLI (`cairn.cjs`, entry
 * `installers/sea/entry.ts`) and the worker threads (`chunk-worker.cjs`, `walk-worker.cjs`, started with `eval`).
 * A Node.js single-executable application can `require` only built-in modules, so everything else
 * is bundled, and each native addon's own loader (which looks for `.node` files beside the package)
 * is replaced by `loadNativeAddon`, which loads the addon from the runtime folder.
 */
function nativeAddonPlugin(repo: string): Plugin {
  const loader = join(repo, 'installers', 'sea', 'native-addons.ts');
  const stub = (name: string): string => `module.exports = require(${JSON.stringify(loader)}).loadNativeAddon(${JSON.stringify(name)});`;
  return {
    name: 'cairn-native-addons',
    setup(b) {
      // better-sqlite3 finds its addon with `require('bindings')('better_sqlite3.node')`.
      b.onResolve({ filter: /^bindings$/ }, () => ({ path: 'bindings', namespace: 'cairn-native' }));
      b.onResolve({ filter: /^@napi-rs\/blake-hash$/ }, () => ({ path: 'blake', namespace: 'cairn-native' }));
      b.onLoad({ filter: /^bindings$/, namespace: 'cairn-native' }, () => ({
        contents: `const { loadNativeAddon } = require(${JSON.stringify(loader)}); module.exports = (name) => loadNativeAddon(String(name).replace(/\\.node$/, ''));`,
        resolveDir: repo,
        loader: 'js',
      }));
      b.onLoad({ filter: /^blake$/, namespace: 'cairn-native' }, () => ({ contents: stub('blake'), resolveDir: repo, loader: 'js' }));
      // zstd-napi: `require(\`./build/${buildType}/binding.node\`)` in binding.js.
      b.onLoad({ filter: /[\\/]zstd-napi[\\/]binding\.js$/ }, () => ({ contents: stub('zstd'), resolveDir: repo, loader: 'js' }));
      // Cairn's own walk addon (build/Release/cairn_walk.node in the repo), in the walk's worker thread too.
      b.onLoad({ filter: /[\\/]agent[\\/]source[\\/]dir[\\/]native[\\/]load-walk-addon\.ts$/ }, () => ({
        contents: `import { loadNativeAddon } from ${JSON.stringify(loader)}; export const loadWalkAddon = () => loadNativeAddon('cairn_walk');`,
        resolveDir: repo,
        loader: 'js',
      }));
    },
  };
}

export interface Bundles {
  cli: string;
  /** Worker scripts by name (`chunk-worker`, `walk-worker`), for `workers/<name>.cjs` in the executable's assets. */
  workers: Record<string, string>;
}

/** The worker threads Cairn starts (embeddedRuntime().workerSource(name)), by entry point. */
const WORKERS: Record<string, string[]> = {
  'chunk-worker': ['shared', 'vault', 'chunk-worker.ts'],
  'walk-worker': ['agent', 'source', 'dir', 'walk-worker.ts'],
};

export async function bundle(repo: string, outDir: string): Promise<Bundles> {
  const common = {
    bundle: true,
    platform: 'node' as const,
    format: 'cjs' as const,
    target: 'node20',
    minify: false,
    sourcemap: false,
    legalComments: 'none' as const,
    logLevel: 'warning' as const,
    plugins: [nativeAddonPlugin(repo)],
    // Optional speed-ups that ws and pg try to load and do without.
    external: ['bufferutil', 'utf-8-validate', 'pg-native'],
    // The modules that use import.meta.url ask the embedded runtime first (shared/runtime/embedded.ts);
    // this keeps the rest of them working in CommonJS.
    define: { 'import.meta.url': '__cairnModuleUrl' },
    banner: { js: 'var __cairnModuleUrl = require("node:url").pathToFileURL(__filename).href;' },
  };
  const cli = join(outDir, 'cairn.cjs');
  await build({ ...common, entryPoints: [join(repo, 'installers', 'sea', 'entry.ts')], outfile: cli });
  const workers: Record<string, string> = {};
  for (const [name, entry] of Object.entries(WORKERS)) {
    workers[name] = join(outDir, `${name}.cjs`);
    // A worker runs from a string (`eval`), where __filename is not a path: it gets a fixed URL.
    await build({
      ...common,
      entryPoints: [join(repo, ...entry)],
      outfile: workers[name],
      banner: { js: `var __cairnModuleUrl = "file:///cairn/${name}.cjs";` },
    });
  }
  return { cli, workers };
}
