import { createServer, type Server } from 'node:https';
import { readFile } from 'node:fs/promises';
import { isIP, type AddressInfo } from 'node:net';
import { join } from 'node:path';

import { randomIdSource, systemClock, type Clock, type IdSource } from '../../shared/clock.js';
import { CairnError, fromSystemError } from '../../shared/errors.js';
import { writePrivateFile } from '../../shared/fs/private-file.js';
import type { Catalog } from '../catalog/catalog.js';
import { openCatalog } from '../catalog/open-catalog.js';
import { createConsoleHandler } from '../console/serve.js';
import { ensurePki, loadGivenPki, type GivenPkiFiles, type Pki } from '../pki/certificates.js';
import { createAdminToken } from '../pki/tokens.js';
import { AGENT_PATH, AgentLink } from './agent-link.js';
import { stderrLog, type Log } from './log.js';
import { createRestApi } from './rest-api.js';

export interface ControlPlaneOptions {
  /** Holds `pki/`, `catalog.sqlite` and `admin-token.hash`; one control plane process per folder. */
  dataDir: string;
  /** `postgres://…`: the catalog on PostgreSQL (shared by every instance given it); absent: SQLite in dataDir. */
  database?: string;
  /**
   * The operator's own server certificate, key and CA (checked by loadGivenPki) instead of the CA
   * the control plane makes in `dataDir/pki`; agents then pin that CA. `hostnames` only pick the URL.
   */
  tls?: GivenPkiFiles;
  /** Address to listen on (default 127.0.0.1). */
  host?: string;
  /** Port to listen on; 0 picks a free one. */
  port: number;
  /**
   * Names and addresses agents use to reach the control plane: they go into the server certificate,
   * and the first one into the URLs (default: `host`, plus `localhost` when host is a loopback address).
   */
  hostnames?: string[];
  clock?: Clock;
  ids?: IdSource;
  log?: Log;
  /** Test hook: see AgentLinkOptions. */
  helloTimeoutMs?: number;
}

export interface ControlPlane {
  /** `https://host:port` */
  url: string;
  /** `wss://host:port/v1/agent`: what enrollment tokens carry. */
  wsUrl: string;
  caFingerprint: string;
  /** The CA certificate agents and API clients trust (PEM). */
  caCertPem: string;
  /** The admin API token, only on the start that created it; it is stored hashed and never shown again. */
  adminToken: string | undefined;
  catalog: Catalog;
  /** Closes connections, the listener and the catalog. */
  close(): Promise<void>;
}

const ADMIN_TOKEN_FILE = 'admin-token.hash';

/**
 * Starts the control plane: its PKI (made at first start), catalog, REST API and agent WebSocket on
 * one HTTPS listener. Resolves once it listens; rejects (and leaves nothing open) if any part fails.
 */
export async function startControlPlane(options: ControlPlaneOptions): Promise<ControlPlane> {
  const clock = options.clock ?? systemClock;
  const log = options.log ?? stderrLog;
  const host = options.host ?? '127.0.0.1';
  const names = options.hostnames ?? (isLoopback(host) ? [host, 'localhost'] : [host]);
  const unspecified = host === '0.0.0.0' || host === '::';
  const certNames = names.filter((n) => !(n === '0.0.0.0' || n === '::'));
  let pki: Pki;
  if (options.tls !== undefined) {
    pki = await loadGivenPki(options.tls, { clock });
  } else {
    const ensured = await ensurePki(
      join(options.dataDir, 'pki'),
      { hostnames: certNames.filter((n) => isIP(n) === 0), ips: certNames.filter((n) => isIP(n) !== 0) },
      { clock },
    );
    if (ensured.action !== 'loaded') log('info', `PKI ${ensured.action}${ensured.reason ? `: ${ensured.reason}` : ''}`);
    pki = ensured;
  }
  const urlHost = unspecified ? certNames[0] : host;
  if (urlHost === undefined) {
    throw new CairnError('USAGE', `listening on ${host} needs hostnames: the names agents use to reach the control plane`);
  }

  const { hash: adminTokenHash, token: adminToken } = await ensureAdminToken(options.dataDir);
  const catalog = await openCatalog({ dataDir: options.dataDir, database: options.database });
  let server: Server | undefined;
  let unwatch: (() => void) | undefined;
  try {
    const link = new AgentLink({ catalog, clock, log, helloTimeoutMs: options.helloTimeoutMs });
    // Changes made by any instance sharing the catalog (this one included; pushes and sends are
    // idempotent per connection, so hearing of its own changes twice costs nothing).
    unwatch = catalog.watch((event) => {
      if (event.kind === 'policies') link.policiesChanged();
      else link.commandsQueued(event.agentId);
    });
    // The chain includes the CA: an enrolling agent has only the CA's fingerprint (from its token),
    // so it finds the CA in the chain the server sends, checks its fingerprint, then the leaf against it.
    server = createServer({ cert: pki.serverCertPem.trimEnd() + '\n' + pki.caCertPem, key: pki.serverKeyPem });
    server.on('upgrade', (req, socket, head) => link.handleUpgrade(req, socket, head));
    server.on('clientError', (_err, socket) => socket.destroy());

    await new Promise<void>((resolve, reject) => {
      server!.once('error', reject);
      server!.listen(options.port, host, () => {
        server!.off('error', reject);
        resolve();
      });
    });
    const { port } = server.address() as AddressInfo;
    const authority = `${isIP(urlHost) === 6 ? `[${urlHost}]` : urlHost}:${port}`;
    const wsUrl = `wss://${authority}${AGENT_PATH}`;
    const api = createRestApi({
      catalog,
      clock,
      ids: options.ids ?? randomIdSource,
      log,
      wsUrl,
      caFingerprint: pki.caFingerprint,
      adminTokenHash,
      onRevoked: (agentId) => link.disconnect(agentId, 'agent revoked'),
      onPoliciesChanged: () => link.policiesChanged(),
      onCommandQueued: (agentId) => link.commandsQueued(agentId),
      liveJobs: link.jobs,
      isConnected: (agentId) => link.isConnected(agentId),
    });
    const consoleFiles = createConsoleHandler();
    server.on('request', (req, res) => {
      if (!consoleFiles(req, res)) api(req, res);
    });
    log('info', `control plane listening on https://${authority}`);

    const listening = server;
    let closed: Promise<void> | undefined;
    return {
      url: `https://${authority}`,
      wsUrl,
      caFingerprint: pki.caFingerprint,
      caCertPem: pki.caCertPem,
      adminToken,
      catalog,
      close: () =>
        (closed ??= (async () => {
          unwatch?.();
          link.close();
          await new Promise<void>((resolve) => {
            listening.close(() => resolve());
            listening.closeAllConnections();
          });
          await catalog.close();
        })()),
    };
  } catch (err) {
    unwatch?.();
    server?.close();
    await catalog.close();
    const code = (err as NodeJS.ErrnoException)?.code;
    if (code === 'EADDRINUSE' || code === 'EADDRNOTAVAIL') {
      throw new CairnError(
        'USAGE',
        `cannot listen on ${host}:${options.port}: ${code === 'EADDRINUSE' ? 'another program uses that port' : 'no interface of this host has that address'}; choose another address or port`,
        { cause: err },
      );
    }
    throw fromSystemError(err, 'starting the control plane', `${host}:${options.port}`);
  }
}

/**
 * The stored admin token hash; at first start a new token is made and its hash written (0600, whole
 * or not at all), and the token itself returned, the only time it exists outside the admin's hands.
 */
async function ensureAdminToken(dataDir: string): Promise<{ hash: string; token: string | undefined }> {
  const path = join(dataDir, ADMIN_TOKEN_FILE);
  try {
    return { hash: (await readFile(path, 'utf8')).trim(), token: undefined };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw fromSystemError(err, 'reading the admin token hash', path);
  }
  const made = await createAdminToken();
  await writePrivateFile(path, `${made.hash}\n`, 'writing the admin token hash');
  return { hash: made.hash, token: made.token };
}

function isLoopback(host: string): boolean {
  return host === '127.0.0.1' || host === '::1' || host === 'localhost';
}
