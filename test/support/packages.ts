import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { CliResult } from '../helpers.js';
import { repoRoot } from '../helpers.js';

/** What `npm run package` makes (installers/build/package.ts). */
export interface Packages {
  version: string;
  binary: string;
  deb: string;
  tarball: string;
}

/**
 * Builds the single executable, the .deb and the install.sh tarball for `version` into `outDir`,
 * as `npm run package -- --version V --out DIR` does (the compiled build script in dist/, which
 * `npm test` compiles first). The runtime download and the SQLite addon compile are cached in
 * node_modules/.cache, so only the first build of a machine takes minutes.
 */
export function buildPackages(outDir: string, version: string): Packages {
  mkdirSync(outDir, { recursive: true });
  const r = spawnSync(process.execPath, [join(repoRoot, 'dist', 'installers', 'build', 'package.js'), '--version', version, '--out', outDir], {
    cwd: repoRoot,
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
  if (r.status !== 0) throw new Error(`npm run package failed (exit ${r.status ?? r.signal}):\n${r.stdout}${r.stderr}`);
  return {
    version,
    binary: join(outDir, 'cairn'),
    deb: join(outDir, `cairn_${version}_amd64.deb`),
    tarball: join(outDir, `cairn-${version}-linux-x64.tar.gz`),
  };
}

/**
 * Runs an installed or built `cairn` executable with only the variables given (no inherited
 * environment: in particular a PATH without Node.js unless the caller passes one).
 */
export function runExecutable(binary: string, args: string[], env: Record<string, string>, cwd = '/'): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(binary, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', reject);
    child.on('close', (code, signal) =>
      resolve({
        code: code ?? (signal ? 128 : -1),
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8') + (signal ? `\n[killed by ${signal}]` : ''),
      }),
    );
  });
}
