import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, existsSync, fstatSync, openSync, lstatSync, mkdirSync, readFileSync, readdirSync, realpathSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectOk, MiB, PASSPHRASE, makeImage, mountCommand, repoRoot, s3Target, sha256File, unusedPort, waitFor, type CliResult } from './helpers.js';
import { buildPackages, runExecutable, type Packages } from './support/packages.js';
import { call } from '../control-plane/server/test-client.js';
import { SystemdRoot } from './support/systemd-root.js';

/**
 * The artifacts of `npm run package`, built fresh from this tree: the single executable, the .deb
 * (installed on this machine, which is why the tests run as root) and install.sh.
 */

const version = (JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version;

/** Runs the built executable and expects exit 0. */
async function runOk(args: string[], env: Record<string, string>, cwd?: string): Promise<CliResult> {
  const r = await runExecutable(packages.binary, args, env, cwd);
  expectOk(r, args);
  return r;
}

let work: string;
let packages: Packages;

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error('the installer tests install a .deb on this machine: run them as root (CI does)');
  work = await mkdtemp(join(tmpdir(), 'cairn-it-installers-'));
  packages = buildPackages(join(work, 'v1'), version);
}, 600_000);

afterAll(async () => {
  for (const child of services) child.kill('SIGKILL');
  // Leave the machine as it was, also when a test failed half-way.
  if (weInstalled && installed()) sh('dpkg', ['--purge', 'cairn']);
  if (work) await rm(work, { recursive: true, force: true });
});

/** Runs a command to its end; returns its exit code and output. */
function sh(command: string, args: string[], env?: NodeJS.ProcessEnv): { code: number; out: string; err: string } {
  const r = spawnSync(command, args, { encoding: 'utf8', env: env ?? { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }, maxBuffer: 64 << 20 });
  return { code: r.status ?? 128, out: r.stdout, err: r.stderr };
}

function installed(): boolean {
  return sh('dpkg-query', ['-W', '-f', '${db:Status-Status}', 'cairn']).out === 'installed';
}

function mode(path: string): string {
  const st = lstatSync(path);
  const owner = (id: number, file: string): string => (id === 0 ? 'root' : (sh('getent', [file, String(id)]).out.split(':')[0] ?? String(id)));
  return `${(st.mode & 0o7777).toString(8).padStart(4, '0')} ${owner(st.uid, 'passwd')}:${owner(st.gid, 'group')}`;
}

const services: ChildProcess[] = [];
/** Set once these tests installed the package: only then does afterAll purge it (never someone else's). */
let weInstalled = false;

describe('the single executable', () => {
  /** A PATH with nothing on it (no node, no npm) and a HOME of the test's own. */
  const bare = (home: string, extra: Record<string, string> = {}): Record<string, string> => {
    const empty = join(work, 'empty-path');
    mkdirSync(empty, { recursive: true });
    return { PATH: empty, HOME: home, CAIRN_PASSPHRASE: PASSPHRASE, ...extra };
  };

  it('runs --version, a backup and a restore with no Node.js on the PATH, into a folder and an S3 vault', async () => {
    const dir = join(work, 'no-node');
    mkdirSync(dir);
    const env = bare(join(dir, 'home'), { CAIRN_STATE_DIR: join(dir, 'state') });
    expect(spawnSync('sh', ['-c', 'command -v node'], { env }).status).not.toBe(0);

    const v = await runOk(['--version'], env);
    expect(v.stdout.trim()).toBe(version);

    const disk = join(dir, 'disk.img');
    await makeImage(disk, [
      { kind: 'random', length: 5 * MiB },
      { kind: 'hole', length: 3 * MiB },
      { kind: 'text', length: 4 * MiB },
      { kind: 'zero', length: 1 * MiB },
      { kind: 'random', length: 3 * MiB },
    ]);
    const vaults = [join(dir, 'vault'), s3Target.url(await s3Target.newBucket(), 'single-executable')];
    const s3env = Object.fromEntries(Object.entries(s3Target.env).filter((e): e is [string, string] => e[1] !== undefined));
    for (const vault of vaults) {
      const e = { ...env, ...s3env };
      await runOk(['vault', 'init', vault], e, dir);
      const b = await runOk(['backup', disk, '--vault', vault, '--json'], e, dir);
      const backup = JSON.parse(b.stdout) as { id: string; kind: string };
      expect(backup.kind).toBe('full');
      const out = join(dir, `restored-${vaults.indexOf(vault)}.img`);
      await runOk(['restore', backup.id, '--vault', vault, '--to', out], e, dir);
      expect(await sha256File(out)).toBe(await sha256File(disk));
      await runOk(['vault', 'verify', '--vault', vault, '--read-data'], e, dir);
    }

    // A file-system backup uses the walk's worker thread as well as the chunk workers.
    const tree = join(dir, 'tree');
    mkdirSync(join(tree, 'sub'), { recursive: true });
    writeFileSync(join(tree, 'a.txt'), 'the single executable backs up folders\n'.repeat(1000));
    writeFileSync(join(tree, 'sub', 'b.bin'), randomBytes(300_000));
    // Thousands of entries: the executable's runtime (Node.js 24) once aborted in a garbage
    // collection of SQLite statements part way through such a backup (shared/runtime/sqlite-retain.ts).
    mkdirSync(join(tree, 'many'));
    for (let i = 0; i < 3000; i++) writeFileSync(join(tree, 'many', `f${i}`), `${i}\n`);
    const fb = JSON.parse((await runOk(['backup', `dir://${tree}`, '--vault', vaults[0], '--json'], env, dir)).stdout) as { id: string; files: number };
    expect(fb.files).toBe(3002);
    writeFileSync(join(tree, 'many', 'f1'), 'edited\n');
    const inc = JSON.parse((await runOk(['backup', `dir://${tree}`, '--vault', vaults[0], '--json'], env, dir)).stdout) as Record<string, unknown>;
    expect(inc).toMatchObject({ kind: 'incremental', parent: fb.id, files: 3002 });
    expect((inc.filesRead as number) + (inc.filesReused as number)).toBe(3002);
    const restored = join(dir, 'restored-tree');
    await runOk(['restore', fb.id, '--vault', vaults[0], '--to', restored], env, dir);
    expect(readFileSync(join(restored, 'sub', 'b.bin')).equals(readFileSync(join(tree, 'sub', 'b.bin')))).toBe(true);
    expect(readFileSync(join(restored, 'a.txt'), 'utf8')).toBe(readFileSync(join(tree, 'a.txt'), 'utf8'));
  });

  it('keeps its native addons in a private runtime folder and replaces a damaged one', async () => {
    const cache = join(work, 'cache-private');
    const env = bare(join(work, 'home-2'), { CAIRN_CACHE_DIR: cache });
    await runOk(['--version'], env);
    const [runtime] = spawnSync('ls', [cache], { encoding: 'utf8' }).stdout.trim().split('\n');
    expect(runtime).toMatch(new RegExp(`^runtime-${version.replace(/[.+]/g, '\\$&')}-[0-9a-f]{12}$`));
    expect(statSync(cache).mode & 0o777).toBe(0o700);
    expect(statSync(join(cache, runtime)).mode & 0o777).toBe(0o700);
    const zstd = join(cache, runtime, 'native', 'zstd.node');
    const good = readFileSync(zstd);
    chmodSync(zstd, 0o600);
    writeFileSync(zstd, 'not an ELF file');
    // A backup needs zstd: it works, because the damaged copy is replaced before anything loads it.
    const dir = join(work, 'damaged');
    mkdirSync(dir);
    const disk = join(dir, 'd.img');
    await makeImage(disk, [{ kind: 'text', length: 2 * MiB }]);
    await runOk(['vault', 'init', join(dir, 'vault')], { ...env, CAIRN_STATE_DIR: join(dir, 'state') }, dir);
    await runOk(['backup', disk, '--vault', join(dir, 'vault')], { ...env, CAIRN_STATE_DIR: join(dir, 'state') }, dir);
    expect(readFileSync(zstd).equals(good)).toBe(true);
  });

  it('passes over a cache folder on a noexec file system for the next one', async () => {
    const noexec = join(work, 'noexec');
    mkdirSync(noexec);
    mountCommand(['mount', '-t', 'tmpfs', '-o', 'noexec,size=64m,mode=0700', 'tmpfs', noexec]);
    try {
      const home = join(work, 'home-noexec');
      // XDG_CACHE_HOME is on the noexec mount: the addons are written there but cannot be loaded.
      await runOk(['--version'], bare(home, { XDG_CACHE_HOME: noexec }));
      expect(readdirSync(join(home, '.cache', 'cairn')).some((f) => f.startsWith('runtime-'))).toBe(true);
      // Given as the only choice, it is refused with the reason.
      const only = await runExecutable(packages.binary, ['--version'], bare(home, { CAIRN_CACHE_DIR: join(noexec, 'only') }));
      expect(only.code).toBe(1);
      expect(only.stderr).toMatch(/^cairn: error: cannot prepare Cairn's runtime folder .*only\/runtime-.*: .*(failed to map|Operation not permitted|permission denied)/i);
      expect(only.stderr).not.toMatch(/\n\s+at /);
    } finally {
      mountCommand(['umount', noexec]);
    }
  });

  it('refuses a runtime folder below a folder that other users can write', async () => {
    const shared = join(work, 'shared-parent');
    mkdirSync(shared);
    chmodSync(shared, 0o777);
    const r = await runExecutable(packages.binary, ['--version'], bare(join(work, 'home-4'), { CAIRN_CACHE_DIR: join(shared, 'mine') }));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${shared} is writable by other users (mode 777)`);
  });

  it('refuses a runtime folder that other users can write, and says what to do', async () => {
    const cache = join(work, 'cache-shared');
    mkdirSync(cache, { mode: 0o777 });
    chmodSync(cache, 0o777);
    const r = await runExecutable(packages.binary, ['--version'], bare(join(work, 'home-3'), { CAIRN_CACHE_DIR: cache }));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`cannot prepare Cairn's runtime folder ${cache}/runtime-`);
    expect(r.stderr).toContain('writable by other users (mode 777)');
    expect(r.stderr).toContain('Set CAIRN_CACHE_DIR');
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(spawnSync('ls', [cache], { encoding: 'utf8' }).stdout).toBe('');
  });
});

/**
 * A unit's ExecStart= as systemd would run it (systemd.exec(5), "Command lines"): the variables of
 * Environment= and then EnvironmentFile= (a leading "-": optional), `${VAR}` as one argument, `$VAR`
 * split at white space. Covers the forms Cairn's units use.
 */
function execStart(unitFile: string): { argv: string[]; env: Record<string, string>; user: string | undefined; unit: Map<string, string[]> } {
  const unit = new Map<string, string[]>();
  for (const line of readFileSync(unitFile, 'utf8').split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (m) unit.set(m[1]!, [...(unit.get(m[1]!) ?? []), m[2]!]);
  }
  const env: Record<string, string> = {};
  const assign = (text: string): void => {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(text.trim());
    if (m) env[m[1]!] = m[2]!.replace(/^"(.*)"$/, '$1');
  };
  for (const e of unit.get('Environment') ?? []) assign(e);
  for (const f of unit.get('EnvironmentFile') ?? []) {
    const file = f.replace(/^-/, '');
    if (!existsSync(file)) {
      expect(f.startsWith('-'), `EnvironmentFile ${file} is missing`).toBe(true);
      continue;
    }
    for (const line of readFileSync(file, 'utf8').split('\n')) if (!line.trim().startsWith('#')) assign(line);
  }
  const [exec] = unit.get('ExecStart') ?? [];
  expect(exec, `${unitFile} has an ExecStart=`).toBeDefined();
  const argv = exec!.split(/\s+/).flatMap((word) => {
    const whole = /^\$\{([A-Za-z0-9_]+)\}$/.exec(word);
    if (whole) return [env[whole[1]!] ?? ''];
    const split = /^\$([A-Za-z0-9_]+)$/.exec(word);
    if (split) return (env[split[1]!] ?? '').split(/\s+/).filter(Boolean);
    return [word];
  });
  return { argv, env, user: unit.get('User')?.[0], unit };
}

/**
 * Starts a unit's ExecStart by hand, with what systemd gives a service: its User=, the state, logs
 * and cache folders made as *Directory= and *DirectoryMode= say, their $STATE_DIRECTORY... variables,
 * $INVOCATION_ID, output to a "journal" named by $JOURNAL_STREAM, systemd's default PATH, cwd /. (No systemd runs as PID 1 here, so its sandboxing is not applied.)
 */
function startService(unitFile: string): { child: ChildProcess; output: () => string } {
  const { argv, env, user, unit } = execStart(unitFile);
  const vars: Record<string, string> = {
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    LANG: 'C.UTF-8',
    ...env,
  };
  for (const [key, root, variable] of [
    ['StateDirectory', '/var/lib', 'STATE_DIRECTORY'],
    ['LogsDirectory', '/var/log', 'LOGS_DIRECTORY'],
    ['CacheDirectory', '/var/cache', 'CACHE_DIRECTORY'],
  ] as const) {
    const names = unit.get(key)?.[0]?.split(/\s+/).filter(Boolean);
    if (names === undefined) continue;
    const dirs = names.map((name) => join(root, name));
    const dirMode = unit.get(`${key}Mode`)?.[0] ?? '0755';
    for (const dir of dirs) sh('install', ['-d', '-m', dirMode, ...(user ? ['-o', user, '-g', user] : []), dir]);
    vars[variable] = dirs.join(':');
  }
  // Set for every service (systemd.exec(5), "Environment Variables in Spawned Processes"); output
  // goes to the journal, a stream whose device:inode JOURNAL_STREAM names (here: a file).
  vars.INVOCATION_ID = randomBytes(16).toString('hex');
  const journal = join(work, `journal-${services.length}.log`);
  const fd = openSync(journal, 'w');
  const st = fstatSync(fd);
  vars.JOURNAL_STREAM = `${st.dev}:${st.ino}`;
  const command = user ? ['setpriv', `--reuid=${user}`, `--regid=${user}`, '--init-groups', ...argv] : argv;
  const child = spawn(command[0]!, command.slice(1), { cwd: '/', env: vars, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  services.push(child);
  return { child, output: () => readFileSync(journal, 'utf8') };
}

/** GET `url` (plain HTTP) until it answers 200 with JSON; `what` gives the service's output for a failure. */
function getJson(url: string, what: () => string): Promise<Record<string, unknown>> {
  return waitFor(
    `${url} to answer`,
    async () => {
      const res = await fetch(url);
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      return (await res.json()) as Record<string, unknown>;
    },
    30_000,
    what,
  );
}

/** GET /v1/health of the control plane on `port`, trusting the CA it made in its data dir. */
function cpHealth(port: number, what: () => string): Promise<Record<string, unknown>> {
  return waitFor(
    `the control plane on port ${port} to answer`,
    async () => {
      const caCertPem = readFileSync('/var/lib/cairn/control-plane/pki/ca.crt', 'utf8');
      const reply = await call({ url: `https://127.0.0.1:${port}`, caCertPem }, 'GET', '/v1/health');
      if (reply.status !== 200) throw new Error(`HTTP ${reply.status}`);
      return reply.body as Record<string, unknown>;
    },
    30_000,
    what,
  );
}

async function stop(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null) return child.exitCode;
  const done = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  child.kill('SIGTERM');
  return done;
}

describe('the Debian package', () => {
  const AGENT_UNIT = '/usr/lib/systemd/system/cairn-agent.service';
  const CP_UNIT = '/usr/lib/systemd/system/cairn-control-plane.service';
  let agentPort: number;
  let cpPort: number;
  let agentId: string;

  it('is a well-formed package of the executable, both units and the config', () => {
    expect(installed(), 'cairn is already installed on this machine: purge it first (dpkg -P cairn)').toBe(false);
    const field = (f: string): string => sh('dpkg-deb', ['-f', packages.deb, f]).out.trim();
    expect(field('Package')).toBe('cairn');
    expect(field('Version')).toBe(version);
    expect(field('Architecture')).toBe('amd64');
    expect(field('Depends')).toMatch(/libc6 \(>= 2\.28\).*openssl/);
    const listing = sh('dpkg-deb', ['-c', packages.deb]).out;
    expect(listing).toMatch(/^-rwxr-xr-x root\/root +\d+ .* \.\/usr\/bin\/cairn$/m);
    for (const unit of ['cairn-agent.service', 'cairn-control-plane.service']) expect(listing).toMatch(new RegExp(`^-rw-r--r-- root/root .* \\./usr/lib/systemd/system/${unit}$`, 'm'));
    expect(sh('dpkg-deb', ['-I', packages.deb, 'conffiles']).out.trim().split('\n').sort()).toEqual(['/etc/cairn/agent.json', '/etc/cairn/control-plane.env']);
  });

  it('installs the executable, the units, config, state and log folders, the user, and enables the agent', () => {
    expect(installed(), 'cairn is already installed on this machine: purge it first (dpkg -P cairn)').toBe(false);
    weInstalled = true;
    const r = sh('dpkg', ['--install', packages.deb]);
    expect(r.code, r.out + r.err).toBe(0);
    expect(mode('/usr/bin/cairn')).toBe('0755 root:root');
    expect(mode(AGENT_UNIT)).toBe('0644 root:root');
    expect(mode(CP_UNIT)).toBe('0644 root:root');
    expect(mode('/etc/cairn/agent.json')).toBe('0640 root:root');
    expect(mode('/etc/cairn/control-plane.env')).toBe('0640 root:cairn');
    expect(mode('/var/lib/cairn')).toBe('0711 root:root');
    expect(mode('/var/lib/cairn/control-plane')).toBe('0700 cairn:cairn');
    expect(mode('/var/log/cairn')).toBe('0750 root:root');
    const user = sh('getent', ['passwd', 'cairn']).out.trim().split(':');
    expect(Number(user[2])).toBeLessThan(1000);
    expect(user[5]).toBe('/var/lib/cairn/control-plane');
    expect(user[6]).toMatch(/nologin$/);
    // Enabled at boot (the agent), installed but not enabled (the control plane).
    expect(realpathSync('/etc/systemd/system/multi-user.target.wants/cairn-agent.service')).toBe(realpathSync(AGENT_UNIT));
    expect(existsSync('/etc/systemd/system/multi-user.target.wants/cairn-control-plane.service')).toBe(false);
    expect(sh('/usr/bin/cairn', ['--version']).out.trim()).toBe(version);
  });

  it('has units that systemd-analyze verifies, hardened', () => {
    const r = sh('systemd-analyze', ['verify', AGENT_UNIT, CP_UNIT]);
    expect(r.code, r.out + r.err).toBe(0);
    expect((r.out + r.err).trim()).toBe('');
    // Exposure scores (0 best, 10 worst; an unsandboxed root service scores 9.6): a change that
    // weakens the sandbox fails here.
    for (const [unit, most] of [[AGENT_UNIT, 5.0], [CP_UNIT, 3.5]] as const) {
      const sec = sh('systemd-analyze', ['security', '--offline=yes', '--no-pager', unit]);
      const score = /Overall exposure level for \S+: ([\d.]+)/.exec(sec.out + sec.err);
      expect(score, sec.out + sec.err).not.toBeNull();
      expect(Number(score![1]), `${unit} exposure`).toBeLessThanOrEqual(most);
    }
    const agent = execStart(AGENT_UNIT).unit;
    expect(agent.get('CapabilityBoundingSet')).toEqual(['CAP_DAC_READ_SEARCH CAP_DAC_OVERRIDE CAP_SYS_ADMIN']);
    expect(agent.get('Restart')).toEqual(['on-failure']);
    const cp = execStart(CP_UNIT).unit;
    expect(cp.get('User')).toEqual(['cairn']);
    expect(cp.get('CapabilityBoundingSet')).toEqual(['']);
  });

  it('runs the installed binary as the units start it: the agent serves its status, the control plane its health', async () => {
    // Local settings, the way an admin makes them: both are conffiles the upgrade must keep.
    agentPort = await unusedPort();
    cpPort = await unusedPort();
    const config = JSON.parse(readFileSync('/etc/cairn/agent.json', 'utf8')) as { status: { port: number } };
    config.status.port = agentPort;
    writeFileSync('/etc/cairn/agent.json', JSON.stringify(config, null, 2));
    writeFileSync('/etc/cairn/control-plane.env', `${readFileSync('/etc/cairn/control-plane.env', 'utf8')}\nCAIRN_LISTEN=127.0.0.1:${cpPort}\n`);

    const agent = startService(AGENT_UNIT);
    const status = await getJson(`http://127.0.0.1:${agentPort}/status`, agent.output);
    expect(status.version).toBe(version);
    agentId = String(status.agentId);
    expect(agentId).toMatch(/\S{8,}/);
    const cp = startService(CP_UNIT);
    const health = await cpHealth(cpPort, cp.output);
    expect(health).toMatchObject({ status: 'ok', version });
    // The web console comes out of the executable into the service's own cache folder.
    const caCertPem = readFileSync('/var/lib/cairn/control-plane/pki/ca.crt', 'utf8');
    const page = await call({ url: `https://127.0.0.1:${cpPort}`, caCertPem }, 'GET', '/');
    expect(page.status).toBe(200);
    expect(page.text).toMatch(/^<!doctype html>/i);
    const cpRuntime = readdirSync('/var/cache/cairn/control-plane').find((f) => f.startsWith('runtime-'));
    expect(mode(`/var/cache/cairn/control-plane/${cpRuntime}/console/index.html`)).toBe('0400 cairn:cairn');
    // Under systemd the admin token goes to a private file, not into the journal.
    expect(mode('/var/lib/cairn/control-plane/admin-token')).toBe('0600 cairn:cairn');
    const token = readFileSync('/var/lib/cairn/control-plane/admin-token', 'utf8').trim();
    expect(token).toMatch(/^cairn-admin\./);
    expect(cp.output()).toContain('admin token written to /var/lib/cairn/control-plane/admin-token');
    expect(cp.output()).not.toContain(token);
    expect((await call({ url: `https://127.0.0.1:${cpPort}`, caCertPem }, 'GET', '/v1/agents', { token })).status).toBe(200);
    expect(await stop(agent.child), agent.output()).toBeOneOf([0, 143]);
    expect(await stop(cp.child), cp.output()).toBeOneOf([0, 143]);
    // What each left where the layout says, owned by whom it runs as.
    expect(existsSync('/var/lib/cairn/agent.sqlite')).toBe(true);
    expect(readdirSync('/var/log/cairn')).toContain('agent.log');
    expect(readdirSync('/var/cache/cairn').some((f) => f.startsWith('runtime-'))).toBe(true);
    expect(mode('/var/lib/cairn/control-plane/endpoint.json')).toMatch(/^0[46]00 cairn:cairn$/);
    // A folder vault an admin put under the agent's state folder (purge must keep it).
    const init = ['vault', 'init', '/var/lib/cairn/vaults/main'];
    expectOk(await runExecutable('/usr/bin/cairn', init, { PATH: '/usr/bin:/bin', HOME: '/root', CAIRN_CACHE_DIR: join(work, 'cache-vault'), CAIRN_PASSPHRASE: PASSPHRASE, CAIRN_STATE_DIR: join(work, 'vault-state') }), init);
  });

  it('upgrades to a newer build, keeping config, state and the agent identity', async () => {
    const newer = buildPackages(join(work, 'v2'), `${version}+upgrade1`);
    const configBefore = readFileSync('/etc/cairn/agent.json', 'utf8');
    const envBefore = readFileSync('/etc/cairn/control-plane.env', 'utf8');
    const tokenHash = readFileSync('/var/lib/cairn/control-plane/admin-token.hash', 'utf8');
    const r = sh('dpkg', ['--install', newer.deb]);
    expect(r.code, r.out + r.err).toBe(0);
    expect(sh('dpkg-query', ['-W', '-f', '${Version}', 'cairn']).out).toBe(newer.version);
    expect(sh('/usr/bin/cairn', ['--version']).out.trim()).toBe(newer.version);
    expect(readFileSync('/etc/cairn/agent.json', 'utf8')).toBe(configBefore);
    expect(readFileSync('/etc/cairn/control-plane.env', 'utf8')).toBe(envBefore);
    expect(readFileSync('/var/lib/cairn/control-plane/admin-token.hash', 'utf8')).toBe(tokenHash);
    expect(mode('/etc/cairn/control-plane.env')).toBe('0640 root:cairn');

    const agent = startService(AGENT_UNIT);
    const status = await getJson(`http://127.0.0.1:${agentPort}/status`, agent.output);
    expect(status).toMatchObject({ version: newer.version, agentId });
    expect(await stop(agent.child), agent.output()).toBeOneOf([0, 143]);
    // The old build's runtime folder is gone; only the new one's is left.
    const runtimes = readdirSync('/var/cache/cairn').filter((f) => f.startsWith('runtime-'));
    expect(runtimes).toHaveLength(1);
    expect(runtimes[0]).toMatch(/^runtime-\d+\.\d+\.\d+\+upgrade1-/);
  });

  it('remove keeps config and state; purge deletes them, the user and the unit links', () => {
    let r = sh('dpkg', ['--remove', 'cairn']);
    expect(r.code, r.out + r.err).toBe(0);
    for (const gone of ['/usr/bin/cairn', AGENT_UNIT, CP_UNIT]) expect(existsSync(gone), gone).toBe(false);
    for (const kept of ['/etc/cairn/agent.json', '/etc/cairn/control-plane.env', '/var/lib/cairn/agent.sqlite', '/var/lib/cairn/control-plane/admin-token.hash']) {
      expect(existsSync(kept), kept).toBe(true);
    }
    r = sh('dpkg', ['--purge', 'cairn']);
    expect(r.code, r.out + r.err).toBe(0);
    // The vault under /var/lib/cairn holds backups: that folder stays, with a word why.
    expect(r.err).toContain('purge keeps /var/lib/cairn: it holds vaults with backups (/var/lib/cairn/vaults/main)');
    expect(existsSync('/var/lib/cairn/vaults/main/config')).toBe(true);
    expect(existsSync('/var/lib/cairn/agent.sqlite')).toBe(true);
    sh('rm', ['-rf', '/var/lib/cairn']);
    for (const gone of ['/etc/cairn', '/var/log/cairn', '/var/cache/cairn', '/etc/systemd/system/multi-user.target.wants/cairn-agent.service']) {
      expect(existsSync(gone), gone).toBe(false);
    }
    expect(sh('getent', ['passwd', 'cairn']).code).not.toBe(0);
    expect(sh('getent', ['group', 'cairn']).code).not.toBe(0);
    expect(installed()).toBe(false);
  });
});

describe('install.sh', () => {
  it('installs the tarball into a root, upgrades keeping config, and uninstalls', () => {
    const root = join(work, 'root');
    mkdirSync(join(root, 'etc'), { recursive: true });
    // A root with a user database of its own, so the 'cairn' user is made there, not here.
    for (const f of ['passwd', 'group', 'shadow', 'gshadow']) writeFileSync(join(root, 'etc', f), readFileSync(join('/etc', f)));
    expect(sh('tar', ['-xzf', packages.tarball, '-C', work]).code).toBe(0);
    const script = join(work, `cairn-${version}-linux-x64`, 'install.sh');
    let r = sh(script, ['--root', root]);
    expect(r.code, r.out + r.err).toBe(0);
    const at = (p: string): string => mode(join(root, p)).replace(/ .*/, '');
    expect(at('usr/bin/cairn')).toBe('0755');
    expect(at('etc/systemd/system/cairn-agent.service')).toBe('0644');
    expect(at('etc/systemd/system/cairn-control-plane.service')).toBe('0644');
    expect(at('etc/cairn/agent.json')).toBe('0640');
    expect(at('var/lib/cairn')).toBe('0711');
    expect(readFileSync(join(root, 'etc', 'passwd'), 'utf8')).toMatch(/^cairn:x:\d+:\d+:.*:\/var\/lib\/cairn\/control-plane:.*nologin$/m);
    expect(sh(join(root, 'usr', 'bin', 'cairn'), ['--version']).out.trim()).toBe(version);

    // Again, with the config edited: an upgrade keeps it.
    const config = join(root, 'etc', 'cairn', 'agent.json');
    writeFileSync(config, '{ "stateDir": "/var/lib/cairn", "logDir": "/var/log/cairn", "concurrency": 3 }\n');
    writeFileSync(join(root, 'var', 'lib', 'cairn', 'state-marker'), 'kept');
    r = sh(script, ['--root', root]);
    expect(r.code, r.out + r.err).toBe(0);
    expect(readFileSync(config, 'utf8')).toContain('"concurrency": 3');
    expect(existsSync(`${config}.new`)).toBe(true);
    expect(readFileSync(join(root, 'var', 'lib', 'cairn', 'state-marker'), 'utf8')).toBe('kept');

    r = sh(script, ['--uninstall', '--root', root]);
    expect(r.code, r.out + r.err).toBe(0);
    expect(existsSync(join(root, 'usr', 'bin', 'cairn'))).toBe(false);
    expect(existsSync(config)).toBe(true);
    r = sh(script, ['--uninstall', '--purge', '--root', root]);
    expect(r.code, r.out + r.err).toBe(0);
    for (const gone of ['etc/cairn', 'var/lib/cairn', 'var/log/cairn', 'etc/systemd/system/cairn-agent.service']) expect(existsSync(join(root, gone)), gone).toBe(false);
    expect(readFileSync(join(root, 'etc', 'passwd'), 'utf8')).not.toMatch(/^cairn:/m);
  });

  it('refuses a root whose paths lead out of it through a link', () => {
    const root = join(work, 'root-with-link');
    const outside = join(work, 'outside');
    mkdirSync(join(root, 'var', 'lib'), { recursive: true });
    mkdirSync(outside);
    writeFileSync(join(outside, 'precious'), 'keep');
    spawnSync('ln', ['-s', outside, join(root, 'var', 'lib', 'cairn')]);
    const script = join(repoRoot, 'installers', 'linux', 'install.sh');
    for (const args of [['--root', root], ['--uninstall', '--purge', '--root', root]]) {
      const r = sh(script, args);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.err).toContain(`${root}/var/lib/cairn is a symbolic link: refusing to follow it out of the root`);
    }
    expect(readFileSync(join(outside, 'precious'), 'utf8')).toBe('keep');
  });

  it('refuses bad flags with a message and exit 1', () => {
    const script = join(repoRoot, 'installers', 'linux', 'install.sh');
    for (const args of [['--bogus'], ['--root'], ['--purge']]) {
      const r = sh(script, args);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.err, args.join(' ')).toMatch(/^install\.sh: .+/);
    }
  });
});

describe('the units under a real systemd', () => {
  let root: SystemdRoot;

  beforeAll(async () => {
    root = await SystemdRoot.boot(packages.deb, join(work, 'systemd-root'));
  }, 120_000);

  afterAll(() => root?.close());

  it('runs a scheduled backup in the hardened agent unit, which restores identically', async () => {
    const port = await unusedPort();
    // A disk image where the agent may only read it, a folder vault in its state folder, and a
    // policy every 2 seconds.
    root.must(['sh', '-c', 'mkdir -p /srv/images && head -c 6291456 /dev/urandom > /srv/images/disk.img && truncate -s 16M /srv/images/disk.img']);
    root.must(['sh', '-c', `umask 077 && printf '%s' '${PASSPHRASE}' > /etc/cairn/local.pass`]);
    root.must(['env', 'CAIRN_STATE_DIR=/root/state', 'CAIRN_CACHE_DIR=/root/cache', '/usr/bin/cairn', 'vault', 'init', '/var/lib/cairn/vault', '--passphrase-file', '/etc/cairn/local.pass']);
    const config = {
      stateDir: '/var/lib/cairn',
      logDir: '/var/log/cairn',
      status: { host: '127.0.0.1', port },
      vaults: { local: { url: '/var/lib/cairn/vault', passphraseFile: '/etc/cairn/local.pass' } },
      resources: { disk: { vault: 'local', disks: ['/srv/images/disk.img'] } },
      policies: { often: { vaults: ['local'], trigger: { cron: '*/2 * * * * *' }, retention: { max_backups: 3 } } },
    };
    root.must(['sh', '-c', 'cat > /etc/cairn/agent.json'], JSON.stringify(config));
    root.must(['systemctl', 'start', 'cairn-agent']);

    const status = await getJson(`http://127.0.0.1:${port}/status`, () => root.run(['journalctl', '-u', 'cairn-agent', '--no-pager']).out);
    expect(status.version).toBe(version);
    // The sandbox is what the unit says: three capabilities, no new privileges, / read-only.
    const mainPid = root.must(['systemctl', 'show', '-p', 'MainPID', '--value', 'cairn-agent']).trim();
    const procStatus = root.must(['cat', `/proc/${mainPid}/status`]);
    expect(procStatus).toMatch(/^CapBnd:\s+0000000000200006$/m); // CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN
    expect(procStatus).toMatch(/^NoNewPrivs:\s+1$/m);
    expect(root.run(['nsenter', '-t', mainPid, '-m', 'touch', '/etc/cairn/written']).err).toContain('Read-only file system');
    expect(root.run(['nsenter', '-t', mainPid, '-m', 'touch', '/var/lib/cairn/written']).code).toBe(0);

    // A backup made by the service itself.
    const list = (): Array<{ id: string; name: string }> => {
      const r = root.run(['env', 'CAIRN_STATE_DIR=/root/state', 'CAIRN_CACHE_DIR=/root/cache', '/usr/bin/cairn', 'backups', 'list', '--vault', '/var/lib/cairn/vault', '--passphrase-file', '/etc/cairn/local.pass', '--json']);
      return r.code === 0 ? (JSON.parse(r.out) as Array<{ id: string; name: string }>) : [];
    };
    await waitFor('the service\'s first backup', async () => (list().length > 0 ? true : undefined), 60_000, () => root.run(['journalctl', '-u', 'cairn-agent', '--no-pager']).out, 500);
    // Stopped before the restore, so retention cannot prune the backup meanwhile.
    root.must(['systemctl', 'stop', 'cairn-agent']);
    expect(root.must(['systemctl', 'show', '-p', 'ActiveState,Result', 'cairn-agent']).trim().split('\n').sort()).toEqual(['ActiveState=inactive', 'Result=success']);
    const backup = list().at(-1);
    expect(backup!.name).toMatch(/^autobk_/);
    root.must(['env', 'CAIRN_STATE_DIR=/root/state', 'CAIRN_CACHE_DIR=/root/cache', '/usr/bin/cairn', 'restore', backup!.id, '--vault', '/var/lib/cairn/vault', '--passphrase-file', '/etc/cairn/local.pass', '--to', '/root/restored.img']);
    const sums = root.must(['sha256sum', '/srv/images/disk.img', '/root/restored.img']).trim().split('\n').map((l) => l.split(' ')[0]);
    expect(sums[1]).toBe(sums[0]);
  });

  it('runs the control plane as user cairn with no capabilities; the admin token stays out of the journal', async () => {
    const port = await unusedPort();
    root.must(['sh', '-c', `echo CAIRN_LISTEN=127.0.0.1:${port} >> /etc/cairn/control-plane.env`]);
    root.must(['systemctl', 'start', 'cairn-control-plane']);
    const journal = (): string => root.run(['journalctl', '-u', 'cairn-control-plane', '--no-pager']).out;
    await waitFor('the admin token file', async () => (root.run(['test', '-f', '/var/lib/cairn/control-plane/admin-token']).code === 0 ? true : undefined), 30_000, journal);
    const caCertPem = root.must(['cat', '/var/lib/cairn/control-plane/pki/ca.crt']);
    const token = root.must(['cat', '/var/lib/cairn/control-plane/admin-token']).trim();
    expect(root.must(['stat', '-c', '%a %U:%G', '/var/lib/cairn/control-plane/admin-token']).trim()).toBe('600 cairn:cairn');
    const endpoint = { url: `https://127.0.0.1:${port}`, caCertPem };
    expect((await call(endpoint, 'GET', '/v1/health')).body).toMatchObject({ status: 'ok', version });
    expect((await call(endpoint, 'GET', '/v1/agents', { token })).status).toBe(200);
    expect(journal()).toContain('admin token written to /var/lib/cairn/control-plane/admin-token');
    expect(journal()).not.toContain(token);

    const mainPid = root.must(['systemctl', 'show', '-p', 'MainPID', '--value', 'cairn-control-plane']).trim();
    const procStatus = root.must(['cat', `/proc/${mainPid}/status`]);
    expect(procStatus).toMatch(/^CapBnd:\s+0000000000000000$/m);
    expect(procStatus).toMatch(/^Uid:\s+(\d+)\s/m);
    const uid = /^Uid:\s+(\d+)/m.exec(procStatus)![1];
    expect(root.must(['id', '-u', 'cairn']).trim()).toBe(uid);

    root.must(['systemctl', 'stop', 'cairn-control-plane']);
    expect(root.must(['systemctl', 'show', '-p', 'ActiveState,Result', 'cairn-control-plane']).trim().split('\n').sort()).toEqual(['ActiveState=inactive', 'Result=success']);
  });
});
