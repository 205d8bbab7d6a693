import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, readdirSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import pg from 'pg';

/**
 * Starts a throw-away PostgreSQL cluster for tests: initdb into a temporary directory, then the
 * `postgres` server from /usr/lib/postgresql/<newest version>/bin on 127.0.0.1 at a free port (and a
 * unix socket in the same directory), with fsync off. No system service is used or needed.
 *
 * Needs: apt-get install postgresql (the server binaries; .ci/run installs it).
 *
 * PostgreSQL refuses to run as root: when the tests run as root, initdb and the server run as the
 * `postgres` system user (which the Debian package creates) through setpriv, and the directory is
 * handed to that user. Connections over TCP need the password (scram-sha-256), so tests can also
 * try wrong credentials; the unix socket trusts local users.
 */

export interface PostgresServer {
  /** postgresql://cairn:<password>@127.0.0.1:<port>/postgres: the superuser on the default database. */
  url: string;
  host: string;
  port: number;
  user: string;
  password: string;
  /** The folder of the server's unix socket; local users connect there without a password. */
  socketDir: string;
  /** Creates an empty database and returns its URL (same user and password). */
  createDatabase(name?: string): Promise<string>;
  /** Stops the server (fast shutdown, then SIGKILL) and removes the directory. Idempotent. */
  stop(): Promise<void>;
}

export interface PostgresServerOptions {
  /** Receives what the server logs. */
  log?: (line: string) => void;
}

/** The bin folder of the newest PostgreSQL installed, or an Error saying what to install. */
export function postgresBinDir(): string {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root)
    ? readdirSync(root)
        .filter((v) => existsSync(join(root, v, 'bin', 'initdb')) && existsSync(join(root, v, 'bin', 'postgres')))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  if (!versions.length) {
    throw new Error(`no PostgreSQL server binaries under ${root}/<version>/bin; install them: apt-get install postgresql`);
  }
  return join(root, versions[0], 'bin');
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => server.listen(0, '127.0.0.1', resolve).on('error', reject));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** The command line that runs `bin` as the postgres user when we are root, else as ourselves. */
function asServerUser(bin: string, args: string[]): [string, string[]] {
  if (process.getuid?.() !== 0) return [bin, args];
  return ['setpriv', ['--reuid=postgres', '--regid=postgres', '--init-groups', '--', bin, ...args]];
}

let databases = 0;

export async function startPostgres(options: PostgresServerOptions = {}): Promise<PostgresServer> {
  const bin = postgresBinDir();
  const dir = await mkdtemp(join(tmpdir(), 'cairn-pg-'));
  const data = join(dir, 'data');
  const user = 'cairn';
  const password = randomBytes(12).toString('hex');
  let server: ChildProcess | undefined;
  let stopped = false;

  const stop = async () => {
    if (stopped) return;
    stopped = true;
    if (server && server.exitCode === null && server.signalCode === null) {
      const exited = new Promise((resolve) => server!.once('exit', resolve));
      server.kill('SIGINT');
      const timer = setTimeout(() => server!.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }
    await rm(dir, { recursive: true, force: true });
  };

  try {
    await writeFile(join(dir, 'pwfile'), `${password}\n`, { mode: 0o600 });
    if (process.getuid?.() === 0) {
      const pwuid = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
      const pwgid = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
      if (pwuid.status !== 0) throw new Error('running as root, and there is no postgres user to run PostgreSQL as; install the postgresql package');
      const uid = Number(pwuid.stdout.trim());
      const gid = Number(pwgid.stdout.trim());
      chownSync(dir, uid, gid);
      chownSync(join(dir, 'pwfile'), uid, gid);
    }
    chmodSync(dir, 0o700);
    const [initCmd, initArgs] = asServerUser(join(bin, 'initdb'), [
      '-D',
      data,
      '-U',
      user,
      `--pwfile=${join(dir, 'pwfile')}`,
      '--auth-local=trust',
      '--auth-host=scram-sha-256',
      '--encoding=UTF8',
      '--locale=C',
      '--no-sync',
    ]);
    const init = spawnSync(initCmd, initArgs, { encoding: 'utf8', cwd: dir });
    if (init.status !== 0) throw new Error(`initdb failed (${init.status}): ${init.stderr || init.stdout || String(init.error)}`);

    const port = await freePort();
    const [cmd, args] = asServerUser(join(bin, 'postgres'), [
      '-D',
      data,
      '-h',
      '127.0.0.1',
      '-p',
      String(port),
      '-k',
      dir,
      '-c',
      'fsync=off',
      '-c',
      'synchronous_commit=off',
      '-c',
      'full_page_writes=off',
      '-c',
      'max_connections=300',
      '-c',
      'shared_buffers=32MB',
    ]);
    const output: string[] = [];
    server = spawn(cmd, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    for (const stream of [server.stdout!, server.stderr!]) {
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => {
        for (const line of chunk.split('\n').filter(Boolean)) {
          output.push(line);
          if (output.length > 50) output.shift();
          options.log?.(line);
        }
      });
    }
    const url = `postgresql://${user}:${password}@127.0.0.1:${port}/postgres`;
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (server.exitCode !== null) throw new Error(`postgres exited with ${server.exitCode}: ${output.join('\n')}`);
      const client = new pg.Client({ connectionString: url });
      try {
        await client.connect();
        await client.end();
        break;
      } catch (err) {
        await client.end().catch(() => {});
        if (Date.now() > deadline) throw new Error(`postgres did not accept connections within 30 s: ${(err as Error).message}\n${output.join('\n')}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }

    return {
      url,
      host: '127.0.0.1',
      port,
      user,
      password,
      socketDir: dir,
      async createDatabase(name = `cairn_test_${process.pid}_${++databases}`) {
        const client = new pg.Client({ connectionString: url });
        await client.connect();
        try {
          await client.query(`CREATE DATABASE ${name}`);
        } finally {
          await client.end();
        }
        return url.replace(/\/postgres$/, `/${name}`);
      },
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
