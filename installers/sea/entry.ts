/**
 * Entry point of the single executable (see installers/README.md). Prepares the runtime folder
 * (native addons as files), tells Cairn's code where its embedded files are, then runs the CLI as
 * `bin/cairn.js` does.
 */
import { getAsset } from 'node:sea';
import { registerEmbeddedRuntime } from '../../shared/runtime/embedded.js';
import { extractTree, prepareRuntimeDir, type EmbeddedManifest } from './runtime-dir.js';

function start(): Promise<number> {
  let manifest: EmbeddedManifest;
  let dir: string;
  try {
    manifest = JSON.parse(getAsset('manifest.json', 'utf8')) as EmbeddedManifest;
    dir = prepareRuntimeDir(manifest, (key) => getAsset(key));
  } catch (err) {
    process.stderr.write(`cairn: ${(err as Error).message}\n`);
    return Promise.resolve(1);
  }
  process.env.CAIRN_RUNTIME_DIR = dir;
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
  return import('../../agent/cli/main.js').then(({ main }) => main(process.argv.slice(2)));
}

void start().then((code) => {
  process.exitCode = code;
});
