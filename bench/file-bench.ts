/**
 * Cairn against restic on a real folder (a program, not a test): a copy of a tree (default
 * /usr/lib), full backup, a few small edits, incremental backup; both tools on the same copy in the
 * same state, page cache warm for both (the copy is read once first). Prints a table with the ratio
 * per row (restic time / Cairn time: above 1 means Cairn is faster) and the stored sizes.
 *
 *   npm run build && node dist/bench/file-bench.js [--src /usr/lib] [--dir /var/tmp/fb] [--edits 10] [--keep]
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    src: { type: 'string', default: '/usr/lib' },
    dir: { type: 'string' },
    edits: { type: 'string', default: '10' },
    keep: { type: 'boolean', default: false },
  },
});
const PASSPHRASE = 'bench-pass';
const cli = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/cairn.js');
const work = values.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-file-bench-'));
fs.mkdirSync(work, { recursive: true });
const tree = path.join(work, 'tree');
const vault = path.join(work, 'vault');
const repo = path.join(work, 'restic-repo');
const env: Record<string, string> = {};
for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('CAIRN_') && !k.startsWith('RESTIC_')) env[k] = v;
Object.assign(env, { CAIRN_PASSPHRASE: PASSPHRASE, RESTIC_PASSWORD: PASSPHRASE, CAIRN_STATE_DIR: path.join(work, 'state'), RESTIC_CACHE_DIR: path.join(work, 'restic-cache') });

function run(what: string, cmd: string, args: string[]): { ms: number; stdout: string } {
  process.stderr.write(`${what}...\n`);
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { env, encoding: 'utf8', maxBuffer: 1 << 28 });
  const ms = performance.now() - t0;
  if (r.error || r.status !== 0) {
    process.stderr.write(`${cmd} ${args.join(' ')} failed (${r.error?.message ?? `exit ${r.status}`}):\n${r.stderr}\n`);
    process.exit(1);
  }
  return { ms, stdout: r.stdout };
}

function du(dir: string): number {
  return Number(spawnSync('du', ['-sb', dir], { encoding: 'utf8' }).stdout.split('\t')[0]);
}

/** Overwrites 16 bytes at a random place in `count` files larger than 4 KiB, picked evenly. */
function edit(count: number): void {
  const files: string[] = [];
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && fs.statSync(p).size > 4096) files.push(p);
    }
  };
  walk(tree);
  files.sort();
  for (let i = 0; i < count; i++) {
    const p = files[Math.floor(((i + 0.5) * files.length) / count)];
    const fd = fs.openSync(p, 'r+');
    fs.writeSync(fd, randomBytes(16), 0, 16, Math.floor(fs.fstatSync(fd).size / 2));
    fs.closeSync(fd);
  }
}

fs.rmSync(tree, { recursive: true, force: true });
run(`copying ${values.src}`, 'cp', ['-a', values.src!, tree]);
run('reading the copy once (page cache)', 'tar', ['-cf', '/dev/null', '-C', work, 'tree']);
run('cairn vault init', process.execPath, [cli, 'vault', 'init', vault]);
run('restic init', 'restic', ['init', '-r', repo, '-q']);

const bytes = du(tree);
const files = Number(spawnSync('sh', ['-c', `find ${JSON.stringify(tree)} -type f | wc -l`], { encoding: 'utf8' }).stdout);
const cairnFull = run('cairn full', process.execPath, [cli, 'backup', `dir://${tree}`, '--vault', vault, '--json']);
const resticFull = run('restic full', 'restic', ['-r', repo, 'backup', tree, '-q']);
const storedFull = [du(vault), du(repo)];
edit(Number(values.edits));
const cairnInc = run('cairn incremental', process.execPath, [cli, 'backup', `dir://${tree}`, '--vault', vault, '--json']);
const resticInc = run('restic incremental', 'restic', ['-r', repo, 'backup', tree, '-q']);
const storedInc = [du(vault) - storedFull[0], du(repo) - storedFull[1]];
const inc = JSON.parse(cairnInc.stdout) as { filesRead: number; filesReused: number; bytesRead: number };

const MB = 1e6;
const rows = [
  ['full backup (s)', cairnFull.ms, resticFull.ms],
  [`incremental after ${values.edits} edits (s)`, cairnInc.ms, resticInc.ms],
];
console.log(`tree: ${values.src}, ${files} files, ${(bytes / MB).toFixed(0)} MB; ${os.cpus().length} cores`);
console.log('| row | Cairn | restic | restic/Cairn |');
console.log('|---|---|---|---|');
for (const [name, c, r] of rows) console.log(`| ${name} | ${((c as number) / 1000).toFixed(2)} | ${((r as number) / 1000).toFixed(2)} | ${((r as number) / (c as number)).toFixed(2)}x |`);
console.log(`| full: MB/s, files/s | ${(bytes / MB / (cairnFull.ms / 1000)).toFixed(0)}, ${(files / (cairnFull.ms / 1000)).toFixed(0)} | ${(bytes / MB / (resticFull.ms / 1000)).toFixed(0)}, ${(files / (resticFull.ms / 1000)).toFixed(0)} | |`);
console.log(`| stored after full (MB) | ${(storedFull[0] / MB).toFixed(0)} | ${(storedFull[1] / MB).toFixed(0)} | |`);
console.log(`| stored by incremental (MB) | ${(storedInc[0] / MB).toFixed(1)} | ${(storedInc[1] / MB).toFixed(1)} | |`);
console.log(`Cairn incremental: ${inc.filesRead} files read, ${inc.filesReused} reused, ${(inc.bytesRead / MB).toFixed(1)} MB read`);
if (!values.keep && !values.dir) fs.rmSync(work, { recursive: true, force: true });
