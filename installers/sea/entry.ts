/**
 * Entry point of the single executable (see installers/README.md). Prepares the runtime folder
 * (native addons as files), tells Cairn's code where its embedded files are, then runs the CLI as
 * `bin/cairn.js` does.
 */
import { getAsset } from 'node:sea';
import { registerEmbeddedRuntime } from '../../shared/runtime/embedded.js';
import { describeAddons, loadNativeAddon } from './native-addons.js';
import { extractTree, prepareRuntimeDir, type EmbeddedManifest, type RuntimeDir } from './runtime-dir.js';

function start(): Promise<number> {
  let manifest: EmbeddedManifest;
  let dir: string;
  try {
    manifest = JSON.parse(getAsset('manifest.json', 'utf8')) as EmbeddedManifest;
    // Loading each addon once here proves the folder can hold them (not mounted noexec).
    const probe = (prepared: RuntimeDir): void => {
      for (const name of prepared.addons.keys()) loadNativeAddon(name, prepared.addons);
    };
    const prepared = prepareRuntimeDir(manifest, (key) => getAsset(key), probe);
    dir = prepared.dir;
    process.env.CAIRN_NATIVE_ADDONS = describeAddons(prepared.addons);
  } catch (err) {
    process.stderr.write(`cairn: error: ${(err as Error).message}\n`);
    return Promise.resolve(1);
  }
  const extracted = new Map<string, string>();
  registerEmbeddedRuntime({
    version: manifest.version,
    workerSource: (name) => getAsset(`workers/${name}.cjs`, 'utf8'),
    extractedDir: (prefix) => {
      let path = extracted.get(prefix);
      if (path === undefined) extracted.set(prefix, (path = extractTree(dir, manifest, prefix, (key) => getAsset(key))));
      return path;
    },
  });
  // Loaded only now: the modules load native addons as they initialise.
  return import('../../agent/cli/main.js').then(
    ({ main }) => main(process.argv.slice(2)),
    (err: Error) => {
      process.stderr.write(`cairn: error: cannot start: ${err.message}\n`);
      return 1;
    },
  );
}

void start().then((code) => {
  process.exitCode = code;
});
