import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/**
 * The vCenter simulator the vmware source's tests run against: govmomi's vcsim with changed-block
 * tracking, data-true snapshots and a few failure knobs added (test/fixtures/vcsim/main.go says what
 * and how). It is built once with the Debian packages' Go and govmomi sources (offline, about 20 s)
 * into node_modules/.cache/cairn-vcsim/<hash of the source>/, then started per test file on a free
 * port with a self-signed certificate.
 *
 * Needs: apt-get install golang-go golang-github-vmware-govmomi-dev (.ci/run installs them).
 */

export interface VcsimDisk {
  key: number;
  /** `[LocalDS_0] VM/diskN.vmdk` */
  fileName: string;
  /** The live flat extent on this machine: what the guest writes. */
  flat: string;
  capacity: number;
  diskMode: string;
}

export interface VcsimVm {
  name: string;
  moref: string;
  instanceUuid: string;
  folder: string;
  disks: VcsimDisk[];
}

export interface Vcsim {
  /** https://127.0.0.1:PORT/sdk */
  url: string;
  host: string;
  port: number;
  user: string;
  password: string;
  /** SHA-256 of the server's certificate, lower-case hex. */
  thumbprint: string;
  /** The folder behind datastore LocalDS_0: `[LocalDS_0] a/b` is `<datastoreDir>/a/b`. */
  datastoreDir: string;
  vms: VcsimVm[];
  vm(name: string): VcsimVm;
  /** Stops the simulator (its files go with it). Idempotent. */
  stop(): Promise<void>;
}

/** The checkout (this file also runs compiled, from dist/test/support/). */
function findRepoRoot(): string {
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'test', 'fixtures', 'vcsim', 'main.go'))) return dir;
    if (dirname(dir) === dir) throw new Error('cannot find test/fixtures/vcsim/main.go above ' + fileURLToPath(import.meta.url));
  }
}
const repoRoot = findRepoRoot();
const sourceDir = join(repoRoot, 'test', 'fixtures', 'vcsim');
const cacheRoot = join(repoRoot, 'node_modules', '.cache', 'cairn-vcsim');
const GOPATH = '/usr/share/gocode';

/** Builds the simulator if this source has not been built yet; returns the executable. */
export async function buildVcsim(): Promise<string> {
  const source = await readFile(join(sourceDir, 'main.go'));
  const hash = createHash('sha256').update(source).digest('hex').slice(0, 16);
  const exe = join(cacheRoot, hash, 'vcsim');
  if (existsSync(exe)) return exe;
  if (!existsSync(join(GOPATH, 'src', 'github.com', 'vmware', 'govmomi', 'simulator'))) {
    throw new Error(`the govmomi sources are not in ${GOPATH}; install them: apt-get install golang-go golang-github-vmware-govmomi-dev`);
  }
  await mkdir(join(cacheRoot, hash), { recursive: true });
  const tmp = `${exe}.${process.pid}.tmp`;
  const r = spawnSync('go', ['build', '-o', tmp, '.'], {
    cwd: sourceDir,
    encoding: 'utf8',
    env: { ...process.env, GO111MODULE: 'off', GOPATH, GOFLAGS: '', GOCACHE: join(cacheRoot, 'go-build') },
  });
  if (r.error) throw new Error(`cannot run go (${r.error.message}); install it: apt-get install golang-go golang-github-vmware-govmomi-dev`);
  if (r.status !== 0) throw new Error(`building the vcsim fixture failed:\n${r.stderr}`);
  await rename(tmp, exe);
  return exe;
}

export async function startVcsim(): Promise<Vcsim> {
  const exe = await buildVcsim();
  const child: ChildProcess = spawn(exe, [], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString('utf8')).slice(-4000)));
  const line = await new Promise<string>((resolveLine, reject) => {
    const rl = createInterface({ input: child.stdout! });
    rl.once('line', (l) => resolveLine(l));
    child.once('exit', (code) => reject(new Error(`the vcsim fixture exited with status ${code} before it was ready:\n${stderr}`)));
    child.once('error', reject);
  });
  const info = JSON.parse(line) as Omit<Vcsim, 'port' | 'vm' | 'stop'> & { port: string };
  let stopped: Promise<void> | undefined;
  return {
    ...info,
    port: Number(info.port),
    vm(name: string): VcsimVm {
      const v = info.vms.find((x) => x.name === name);
      if (!v) throw new Error(`vcsim has no VM ${name} (it has ${info.vms.map((x) => x.name).join(', ')})`);
      return v;
    },
    stop(): Promise<void> {
      stopped ??= (async () => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const gone = new Promise((r) => child.once('exit', r));
        child.stdin!.end();
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await gone;
        clearTimeout(timer);
        await rm(info.datastoreDir, { recursive: true, force: true });
      })();
      return stopped;
    },
  };
}
