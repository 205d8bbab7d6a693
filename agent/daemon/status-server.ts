/**
 * The daemon's read-only HTTP endpoint: `GET /healthz`, `GET /status` (JSON) and `GET /metrics`
 * (Prometheus text). It renders what a StatusProvider returns and holds no state of its own.
 *
 * Contract: only GET and HEAD are served (HEAD answers with the same headers and no body); an
 * unknown path is a 404 and a known path with another method a 405, both with a JSON `{error}`
 * body. If the provider throws, the client gets a 500 with a fixed message and the error goes to
 * `log`; a stack trace never leaves the process. It listens on 127.0.0.1 unless told otherwise,
 * because /status names resources and vaults.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

import { CairnError, fromSystemError } from '../../shared/errors.js';
import { prometheusContentType, renderAgentMetrics } from './prometheus.js';
import type { StatusProvider } from './status.js';

export interface StatusServerOptions {
  /** Address to listen on; default 127.0.0.1. */
  host?: string;
  /** TCP port; 0 picks a free one (see the returned `port`). */
  port: number;
  log?: (msg: string) => void;
}

export interface StatusServer {
  /** Base URL, e.g. `http://127.0.0.1:9810` (no trailing slash). */
  url: string;
  port: number;
  /** Stops listening and drops open connections. Idempotent. */
  close(): Promise<void>;
}

const allowedMethods = 'GET, HEAD';

interface Reply {
  status: number;
  contentType: string;
  body: string;
  headers?: Record<string, string>;
}

const json = (status: number, value: unknown, headers?: Record<string, string>): Reply => ({
  status,
  contentType: 'application/json; charset=utf-8',
  body: `${JSON.stringify(value)}\n`,
  headers,
});

const routes: Record<string, (p: StatusProvider) => Reply> = {
  '/healthz': () => ({ status: 200, contentType: 'text/plain; charset=utf-8', body: 'ok\n' }),
  '/status': (p) => json(200, p.status()),
  '/metrics': (p) => ({ status: 200, contentType: prometheusContentType, body: renderAgentMetrics(p.metrics()) }),
};

function handle(req: IncomingMessage, provider: StatusProvider, log: (msg: string) => void): Reply {
  const path = (req.url ?? '/').split('?')[0];
  const route = Object.hasOwn(routes, path) ? routes[path] : undefined;
  if (route === undefined) return json(404, { error: `no such endpoint: ${path}; try /healthz, /status or /metrics` });
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    return json(405, { error: `method ${req.method} is not allowed on ${path}; use GET or HEAD` }, { Allow: allowedMethods });
  }
  try {
    return route(provider);
  } catch (err) {
    log(`status server: ${req.method} ${path} failed: ${err instanceof Error ? err.message : String(err)}`);
    return json(500, { error: `the agent could not produce ${path}; see the agent log` });
  }
}

function send(req: IncomingMessage, res: ServerResponse, reply: Reply): void {
  const body = Buffer.from(reply.body, 'utf8');
  res.writeHead(reply.status, {
    'Content-Type': reply.contentType,
    'Content-Length': String(body.length),
    'Cache-Control': 'no-store',
    ...reply.headers,
  });
  res.end(req.method === 'HEAD' ? undefined : body);
}

function listenError(err: unknown, host: string, port: number): CairnError {
  const address = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  switch ((err as NodeJS.ErrnoException)?.code) {
    case 'EADDRINUSE':
      return new CairnError(
        'BUSY',
        `status address ${address} is in use by another process; set status.port in the config or stop the other process`,
        { cause: err },
      );
    case 'EADDRNOTAVAIL':
      return new CairnError(
        'USAGE',
        `status address ${address} is not an address of this machine; set status.host in the config to one of its addresses`,
        { cause: err },
      );
    case 'EACCES':
      return new CairnError(
        'PERMISSION_DENIED',
        `status address ${address}: ports below 1024 need privileges; set status.port in the config to 1024 or above`,
        { cause: err },
      );
    default:
      return fromSystemError(err, 'starting the status server', address);
  }
}

/** Starts listening; rejects with a CairnError (BUSY when the port is taken) if it cannot. */
export function startStatusServer(provider: StatusProvider, opts: StatusServerOptions): Promise<StatusServer> {
  const host = opts.host ?? '127.0.0.1';
  const log = opts.log ?? (() => {});
  const server = createServer((req, res) => {
    send(req, res, handle(req, provider, log));
  });

  return new Promise((resolve, reject) => {
    const onError = (err: unknown) => reject(listenError(err, host, opts.port));
    server.once('error', onError);
    server.listen(opts.port, host, () => {
      server.off('error', onError);
      server.on('error', (err) => log(`status server: ${err.message}`));
      const port = (server.address() as AddressInfo).port;
      let closing: Promise<void> | undefined;
      resolve({
        url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
        port,
        close: () =>
          (closing ??= new Promise<void>((done) => {
            server.close(() => done());
            server.closeAllConnections();
          })),
      });
    });
  });
}
