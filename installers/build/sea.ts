import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { createRequire } from 'node:module';
import type { EmbeddedManifest } from '../sea/runtime-dir.js';
import type { RuntimeNode } from './runtime-node.js';

/** The fuse Node.js looks for to know it carries an application (Node.js docs, "Single executable applications"). */
const SEA_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';

function listFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name))
    .sort();
}

/**
 * Makes the single executable: a copy of the runtime's `node` with Cairn's bundle and its assets
 * (under `assetDir`: `native/`, `console/`, `workers/`) injected as a Node.js single-executable
 * application blob. The blob must be made by the same Node.js that runs it.
 */
export function makeExecutable(opts: {
  runtime: RuntimeNode;
  version: string;
  cliBundle: string;
  assetDir: string;
  workDir: string;
  output: string;
}): void {
  const assets: Record<string, string> = {};
  const files: Record<string, string> = {};
  for (const file of listFiles(opts.assetDir)) {
    const key = relative(opts.assetDir, file).split('\\').join('/');
    assets[key] = file;
    files[key] = createHash('sha256').update(readFileSync(file)).digest('hex');
  }
  const buildId = createHash('sha256')
    .update(JSON.stringify([opts.version, opts.runtime.version, files, createHash('sha256').update(readFileSync(opts.cliBundle)).digest('hex')]))
    .digest('hex');
  const manifest: EmbeddedManifest = { version: opts.version, node: opts.runtime.version, buildId, files };
  const manifestFile = join(opts.workDir, 'manifest.json');
  writeFileSync(manifestFile, JSON.stringify(manifest, null, 2));
  assets['manifest.json'] = manifestFile;

  const blob = join(opts.workDir, 'sea-prep.blob');
  const config = join(opts.workDir, 'sea-config.json');
  writeFileSync(
    config,
    JSON.stringify({ main: opts.cliBundle, output: blob, disableExperimentalSEAWarning: true, useCodeCache: true, useSnapshot: false, assets }, null, 2),
  );
  quiet(opts.runtime.binary, ['--experimental-sea-config', config]);

  copyFileSync(opts.runtime.binary, opts.output);
  chmodSync(opts.output, 0o755);
  // postject's CLI in a child process: its ELF library prints harmless warnings about note sections.
  const postject = join(dirname(createRequire(import.meta.url).resolve('postject')), 'cli.js');
  quiet(process.execPath, [postject, opts.output, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', SEA_FUSE, '--overwrite']);
}

/** Runs a build step, showing its output only when it fails. */
function quiet(command: string, args: string[]): void {
  const r = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) {
    process.stderr.write(`${r.stdout ?? ''}${r.stderr ?? ''}`);
    throw new Error(`${command} ${args.join(' ')} failed (exit ${r.status ?? r.signal})`);
  }
}
