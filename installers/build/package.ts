import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildDeb, checkDebianVersion } from './deb.js';
import { buildExecutable } from './executable.js';
import { buildTarball } from './tarball.js';

/**
 * `npm run package`: the single executable, the .deb and the tarball with install.sh, into dist/.
 * Options: --version V (default: package.json's), --out DIR (default: dist).
 */
async function main(argv: string[]): Promise<number> {
  const repo = resolve(fileURLToPath(import.meta.url), '..', '..', '..', '..');
  const arg = (name: string): string | undefined => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const version = arg('--version') ?? (JSON.parse(readFileSync(join(repo, 'package.json'), 'utf8')) as { version: string }).version;
  const outDir = resolve(arg('--out') ?? join(repo, 'dist'));
  const cacheDir = join(repo, 'node_modules', '.cache', 'cairn-package');
  const workDir = join(cacheDir, `work-${process.pid}`);
  mkdirSync(outDir, { recursive: true });
  const log = (s: string): void => void process.stderr.write(`package: ${s}\n`);
  checkDebianVersion(version);
  const seconds = (since: number): string => `${((Date.now() - since) / 1000).toFixed(1)} s`;
  try {
    let started = Date.now();
    const binary = join(outDir, 'cairn');
    const { node } = await buildExecutable({ repo, version, cacheDir, workDir: join(workDir, 'sea'), output: binary, log });
    log(`${binary}: Cairn ${version} on Node.js ${node} (${seconds(started)})`);
    started = Date.now();
    const deb = buildDeb({ repo, binary, version, outDir, workDir: join(workDir, 'deb') });
    log(`${deb} (${seconds(started)})`);
    started = Date.now();
    const tarball = buildTarball({ repo, binary, version, outDir, workDir: join(workDir, 'tarball') });
    log(`${tarball} (${seconds(started)})`);
  } finally {
    rmSync(workDir, { recursive: true, force: true });
  }
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => (process.exitCode = code),
  (err: Error) => {
    process.stderr.write(`package: ${err.message}\n`);
    process.exitCode = 1;
  },
);
