import { fstatSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join, resolve } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';

import { systemClock } from '../../shared/clock.js';
import { CairnError, fromSystemError } from '../../shared/errors.js';
import { writePrivateFile } from '../../shared/fs/private-file.js';
import { openCatalog } from '../catalog/open-catalog.js';
import type { Log } from '../server/log.js';
import { issueEnrollmentToken, MAX_ENROLLMENT_TTL_SECONDS } from '../server/rest-api.js';
import { startControlPlane } from '../server/server.js';

export const controlPlaneHelp = `Usage:
  cairn control-plane run [--data-dir DIR] [--listen HOST:PORT] [--hostname NAME]... [--database URL]
                          [--tls-cert FILE --tls-key FILE --tls-ca FILE]
  cairn control-plane token create --ttl DURATION [--data-dir DIR] [--database URL] [--json]

'run' serves the REST API, the web console and the agents' WebSocket on one HTTPS listener
(default 127.0.0.1:8443; port 0 picks a free one). It prints the URL and, at the first start only,
the admin token (stored only as a hash: keep it); when its output goes to the systemd journal, it
writes the token to DIR/admin-token (mode 0600) instead. SIGTERM or Ctrl-C stop it cleanly.
  --data-dir DIR     the control plane's folder: PKI, SQLite catalog, admin token hash, endpoint.json
                     (default: $CAIRN_CONTROL_PLANE_DIR, else ./cairn-control-plane)
  --hostname NAME    a name or address agents use to reach it (repeatable): goes into the server
                     certificate; the first one into the URLs (needed with --listen 0.0.0.0:PORT)
  --database URL     postgres://... : the catalog on PostgreSQL, shared by every instance given it
                     (also $CAIRN_CONTROL_PLANE_DATABASE); default SQLite in the data dir
  --tls-cert/--tls-key/--tls-ca FILE   your own server certificate (chain), its key and the CA
                     agents pin, instead of the CA the control plane makes in DIR/pki

'token create' makes an enrollment token on this host, straight in the catalog (the server may be
running): give it to the agent to enroll with. It takes the agents' address and CA fingerprint from
DIR/endpoint.json, written by 'run', and needs the same --database as 'run' when that was given.
  --ttl DURATION     how long the token stays usable: e.g. 30m, 1h, 7d (at most 30d)`;

const DEFAULT_LISTEN = '127.0.0.1:8443';
const ENDPOINT_FILE = 'endpoint.json';
/** Where a first start under systemd leaves the admin token instead of printing it. */
const ADMIN_TOKEN_FILE = 'admin-token';

/** What 'run' leaves in the data dir for 'token create': where agents connect and which CA they pin. */
interface Endpoint {
  url: string;
  wsUrl: string;
  caFingerprint: string;
}

export async function controlPlaneCommand(argv: string[], out: (s: string) => void): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === '--help' || sub === '-h' || sub === 'help') return (out(controlPlaneHelp), 0);
  if (sub === 'run') return run(rest, out);
  if (sub === 'token') {
    const [verb, ...args] = rest;
    if (verb === 'create') return tokenCreate(args, out);
    throw new CairnError('USAGE', `unknown command 'cairn control-plane token${verb === undefined ? '' : ` ${verb}`}'; did you mean 'cairn control-plane token create --ttl 1h'?`);
  }
  throw new CairnError('USAGE', `unknown command 'cairn control-plane ${sub}'; see 'cairn control-plane --help'`);
}

async function run(argv: string[], out: (s: string) => void): Promise<number> {
  const values = parse('control-plane run', argv, {
    'data-dir': { type: 'string' },
    listen: { type: 'string' },
    hostname: { type: 'string', multiple: true },
    database: { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    'tls-ca': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) return (out(controlPlaneHelp), 0);
  const { host, port } = parseListen(values.listen ?? DEFAULT_LISTEN);
  const tlsFlags = [values['tls-cert'], values['tls-key'], values['tls-ca']];
  if (tlsFlags.some((v) => v !== undefined) && tlsFlags.some((v) => v === undefined)) {
    throw new CairnError('USAGE', 'control-plane run: --tls-cert, --tls-key and --tls-ca go together; give all three or none');
  }
  const database = databaseOption(values.database);
  const dataDir = dataDirOption(values['data-dir']);
  await mkdir(dataDir, { recursive: true, mode: 0o700 }).catch((err) => {
    throw fromSystemError(err, 'creating the control plane folder', dataDir);
  });

  const cp = await startControlPlane({
    dataDir,
    database,
    host,
    port,
    hostnames: values.hostname,
    tls: values['tls-cert'] === undefined ? undefined : { certFile: values['tls-cert'], keyFile: values['tls-key']!, caFile: values['tls-ca']! },
    log: stderrLog,
  });
  try {
    const endpoint: Endpoint = { url: cp.url, wsUrl: cp.wsUrl, caFingerprint: cp.caFingerprint };
    await writePrivateFile(join(dataDir, ENDPOINT_FILE), `${JSON.stringify(endpoint, null, 2)}\n`, 'writing the control plane endpoint');
  } catch (err) {
    await cp.close();
    throw err;
  }
  out(`control plane listening on ${cp.url}`);
  out(`agents connect to ${cp.wsUrl}; CA fingerprint ${cp.caFingerprint}`);
  out(`data dir ${dataDir}; catalog ${database === undefined ? 'SQLite in the data dir' : 'PostgreSQL'}`);
  if (cp.adminToken !== undefined) {
    if (stdoutIsJournal()) {
      // The journal outlives "shown this once", and more people read it than should administer
      // the fleet: the token goes to a private file instead.
      const file = join(dataDir, ADMIN_TOKEN_FILE);
      await writePrivateFile(file, `${cp.adminToken}\n`, 'writing the admin token');
      out(`admin token written to ${file} (only this service's user can read it): read it, keep it safe, delete the file`);
    } else {
      out(`admin token (shown this once; only its hash is kept): ${cp.adminToken}`);
    }
  }

  // This command owns SIGINT/SIGTERM while it serves: a stop closes connections, the listener and
  // the catalog, then returns 0 (the generic handler's message about backups does not apply here).
  process.removeAllListeners('SIGINT');
  process.removeAllListeners('SIGTERM');
  const signal = await new Promise<NodeJS.Signals>((resolveSignal) => {
    process.once('SIGINT', () => resolveSignal('SIGINT'));
    process.once('SIGTERM', () => resolveSignal('SIGTERM'));
  });
  process.stderr.write(`cairn control plane: ${signal}: stopping\n`);
  // A second signal, or a close that hangs, ends the process anyway.
  process.once('SIGINT', () => process.exit(130));
  process.once('SIGTERM', () => process.exit(143));
  setTimeout(() => process.exit(1), 10_000).unref();
  await cp.close();
  out('control plane stopped');
  return 0;
}

async function tokenCreate(argv: string[], out: (s: string) => void): Promise<number> {
  const values = parse('control-plane token create', argv, {
    'data-dir': { type: 'string' },
    database: { type: 'string' },
    ttl: { type: 'string' },
    json: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) return (out(controlPlaneHelp), 0);
  if (values.ttl === undefined) throw new CairnError('USAGE', "control-plane token create: --ttl is required, e.g. --ttl 1h; see 'cairn control-plane --help'");
  const ttlSeconds = parseTtl(values.ttl);
  const database = databaseOption(values.database);
  const dataDir = dataDirOption(values['data-dir']);
  const endpoint = await readEndpoint(dataDir);
  const catalog = await openCatalog({ dataDir, database });
  try {
    const made = await issueEnrollmentToken(catalog, { wsUrl: endpoint.wsUrl, caFingerprint: endpoint.caFingerprint, ttlSeconds, clock: systemClock });
    if (values.json) {
      out(JSON.stringify(made));
    } else {
      out(made.token);
      process.stderr.write(`enrollment token ${made.id} for ${endpoint.wsUrl}, usable once until ${made.expiresAt}\n`);
    }
  } finally {
    await catalog.close();
  }
  return 0;
}

function parse<T extends NonNullable<ParseArgsConfig['options']>>(command: string, argv: string[], options: T) {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new CairnError('USAGE', `${command}: ${(err as Error).message.replace(/\. To specify a positional.*$/s, '')}; see 'cairn control-plane --help'`);
  }
  if (parsed.positionals.length > 0) throw new CairnError('USAGE', `${command}: unexpected argument '${parsed.positionals[0]}'; see 'cairn control-plane --help'`);
  return parsed.values;
}

/** `--data-dir`, else $CAIRN_CONTROL_PLANE_DIR, else ./cairn-control-plane; absolute. */
function dataDirOption(flag: string | undefined): string {
  const dir = flag ?? process.env.CAIRN_CONTROL_PLANE_DIR ?? 'cairn-control-plane';
  if (dir === '') throw new CairnError('USAGE', '--data-dir must not be empty');
  return resolve(dir);
}

function databaseOption(flag: string | undefined): string | undefined {
  const url = flag ?? (process.env.CAIRN_CONTROL_PLANE_DATABASE || undefined);
  if (url !== undefined && !/^postgres(ql)?:\/\//.test(url)) {
    throw new CairnError('USAGE', `--database must be a postgres:// or postgresql:// URL (leave it out for SQLite in the data dir)`);
  }
  return url;
}

/** `HOST:PORT`, `[v6]:PORT`; port 0-65535 (0: any free port). */
export function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text);
  const host = m?.[1] ?? m?.[2];
  const port = Number(m?.[3]);
  if (m === null || host === undefined || port > 65535 || (m[1] !== undefined && isIP(m[1]) !== 6)) {
    throw new CairnError('USAGE', `--listen '${text}' is not HOST:PORT; write e.g. 127.0.0.1:8443, 0.0.0.0:8443 or [::1]:8443`);
  }
  return { host, port };
}

const units: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };

/** `30m`, `1h`, `7d`, `90s` as seconds, 1 s to 30 days. */
export function parseTtl(text: string): number {
  const m = /^(\d{1,9})([smhd])$/.exec(text.trim());
  const seconds = m === null ? NaN : Number(m[1]) * units[m[2]!]!;
  if (!(seconds >= 1 && seconds <= MAX_ENROLLMENT_TTL_SECONDS)) {
    throw new CairnError('USAGE', `--ttl '${text}' is not a duration from 1s to 30d; write e.g. 30m, 1h or 7d`);
  }
  return seconds;
}

async function readEndpoint(dataDir: string): Promise<Endpoint> {
  const path = join(dataDir, ENDPOINT_FILE);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new CairnError('NOT_FOUND', `no control plane in ${dataDir} (${ENDPOINT_FILE} is missing): run 'cairn control-plane run --data-dir ${dataDir}' once first, or give the right --data-dir`);
    }
    throw fromSystemError(err, 'reading the control plane endpoint', path);
  }
  try {
    const value = JSON.parse(text) as Partial<Endpoint>;
    if (typeof value.wsUrl === 'string' && typeof value.caFingerprint === 'string' && typeof value.url === 'string') return value as Endpoint;
  } catch {
    // reported below
  }
  throw new CairnError('CONFIG_INVALID', `${path} is damaged; start 'cairn control-plane run' again to rewrite it`);
}

/** Every level to stderr with a time, so a service manager's journal shows what the server did. */
const stderrLog: Log = (level, message) => {
  process.stderr.write(`${new Date().toISOString()} ${level} ${message}\n`);
};

/**
 * True when stdout is connected to the systemd journal: systemd sets JOURNAL_STREAM to the
 * `device:inode` of that stream (systemd.exec(5)); a child with other output inherits the variable
 * but not the stream, hence the comparison.
 */
function stdoutIsJournal(): boolean {
  const stream = process.env.JOURNAL_STREAM;
  if (!stream) return false;
  try {
    const st = fstatSync(1);
    return stream === `${st.dev}:${st.ino}`;
  } catch {
    return false;
  }
}
