import { copyFileSync, cpSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { bundle } from './bundle.js';
import { nativeAddons, stageAddons } from './native-addons.js';
import { runtimeNode } from './runtime-node.js';
import { makeExecutable } from './sea.js';

/**
 * Builds the single executable `cairn` for Linux x86-64 into `output`: the pinned Node.js LTS
 * runtime with Cairn bundled in, its native addons and the web console embedded.
 */
export async function buildExecutable(opts: { repo: string; version: string; cacheDir: string; workDir: string; output: string; log: (s: string) => void }): Promise<{ node: string }> {
  const runtime = runtimeNode(opts.cacheDir, opts.log);
  const addons = nativeAddons(opts.repo, runtime, opts.cacheDir, opts.log);
  rmSync(opts.workDir, { recursive: true, force: true });
  const assetDir = join(opts.workDir, 'assets');
  mkdirSync(join(assetDir, 'workers'), { recursive: true });
  opts.log('bundling');
  const bundles = await bundle(opts.repo, opts.workDir);
  for (const [name, file] of Object.entries(bundles.workers)) copyFileSync(file, join(assetDir, 'workers', `${name}.cjs`));
  stageAddons(addons, assetDir);
  cpSync(join(opts.repo, 'control-plane', 'console', 'static'), join(assetDir, 'console'), { recursive: true });
  opts.log(`making the executable (Node.js ${runtime.version})`);
  makeExecutable({ runtime, version: opts.version, cliBundle: bundles.cli, assetDir, workDir: opts.workDir, output: opts.output });
  return { node: runtime.version };
}
