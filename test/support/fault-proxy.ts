import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/**
 * An HTTP/1.1 forwarding proxy for tests and benchmarks: put it between an S3 client (path-style URLs,
 * endpoint = `proxy.url`) and a real S3 server to count requests by kind and to inject network faults.
 *
 * Requests are forwarded as the client sent them: same method, same request-target (path + query),
 * same header lines in the same order and case — including Host, because SigV4 signs the Host header,
 * so the server must see the client's Host (the SDK's endpoint, i.e. the proxy's address), not the
 * upstream's. Bodies are streamed in both directions with backpressure, never buffered whole.
 */

export type RequestKind = 'PUT' | 'POST' | 'GET' | 'HEAD' | 'DELETE' | 'LIST';

export interface RequestInfo {
  /** LIST = a GET on a bucket ('/<bucket>' or '/<bucket>/', no key); GET = a GET of an object key. */
  kind: RequestKind;
  method: string;
  /** Path-style: the first path segment, URL-decoded ('' for the service root '/'). */
  bucket: string;
  /** Everything after '/<bucket>/', URL-decoded ('' for bucket-level requests). */
  key: string;
  query: URLSearchParams;
  /** 0-based: how many requests the proxy had seen before this one (since start or resetCounts()). */
  index: number;
}

export type Fault =
  /** Answer with an S3 XML error without contacting the server (the request body is drained first). */
  | { type: 'status'; status: number; code: string; message?: string }
  /** Reset the client connection at once (the client sees ECONNRESET / socket hang up). */
  | { type: 'reset' }
  /** Wait before forwarding; if the client went away meanwhile, nothing is forwarded. */
  | { type: 'delay'; ms: number }
  /** Forward, but destroy both connections once afterBytes request-body bytes were forwarded (a body
   *  no longer than afterBytes, e.g. a GET's, passes untouched: there is nothing to cut). */
  | { type: 'cut-upload'; afterBytes: number }
  /**
   * Forward, but destroy the client connection once afterBytes response-body bytes were sent. The
   * client never gets a complete response: if the body is not longer than afterBytes (a PUT's empty
   * reply, any HEAD), it gets nothing at all although the server acted — a lost reply.
   */
  | { type: 'cut-download'; afterBytes: number };

export type FaultRule = (req: RequestInfo) => Fault | undefined;

export interface FaultProxy {
  /** 'http://127.0.0.1:PORT' */
  url: string;
  /** Every request seen, faulted or not. */
  counts: Record<RequestKind, number>;
  /** Request-body bytes received from clients. */
  bytesIn: number;
  /** Response-body bytes sent to clients (forwarded bodies and injected error bodies). */
  bytesOut: number;
  /** Called for each request; return a fault to inject, or undefined to forward normally. */
  setFaults(rule: ((req: RequestInfo) => Fault | undefined) | undefined): void;
  resetCounts(): void;
  /** Closes the listener and destroys open sockets (client- and server-side). */
  close(): Promise<void>;
}

const KINDS: readonly RequestKind[] = ['PUT', 'POST', 'GET', 'HEAD', 'DELETE', 'LIST'];

export function startFaultProxy(target: string): Promise<FaultProxy> {
  const upstream = new URL(target);
  if (upstream.protocol !== 'http:') throw new Error(`fault proxy: target must be http://host:port, not ${target}`);
  // Our own pool towards the server, so the tests' keep-alive behaviour does not depend on globalAgent.
  const agent = new http.Agent({ keepAlive: true });
  let rule: FaultRule | undefined;
  let seen = 0;

  const proxy: FaultProxy = {
    url: '',
    counts: zeroCounts(),
    bytesIn: 0,
    bytesOut: 0,
    setFaults(r) {
      rule = r;
    },
    resetCounts() {
      for (const k of KINDS) proxy.counts[k] = 0;
      proxy.bytesIn = 0;
      proxy.bytesOut = 0;
      seen = 0;
    },
    close() {
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
        agent.destroy();
      });
    },
  };

  const server = http.createServer((req, res) => {
    // A client going away is normal here (that is what several faults cause); never let it throw.
    req.on('error', () => {});
    res.on('error', () => {});

    const info = describe(req, seen);
    if (!info) {
      sendError(res, 501, 'NotImplemented', `fault proxy: method ${req.method} is not an S3 request kind`);
      req.resume();
      return;
    }
    seen++;
    proxy.counts[info.kind]++;
    // Body bytes are counted by whoever reads the body (not by a listener here: a 'data' listener
    // would start the flow at once, and a delayed request would lose its body).

    const fault = rule?.(info);
    switch (fault?.type) {
      case undefined:
        return forward(req, res);
      case 'status':
        // Drain first, so the connection stays usable and the client never blocks on a full pipe.
        req.on('data', (chunk: Buffer) => (proxy.bytesIn += chunk.length));
        req.on('end', () => sendError(res, fault.status, fault.code, fault.message ?? fault.code));
        return;
      case 'reset':
        req.socket.resetAndDestroy(); // RST, not FIN: the client sees ECONNRESET, as with a real reset
        return;
      case 'delay': {
        // The body stays unread in the socket meanwhile. If the client times out and hangs up, the
        // response's 'close' fires and the request is dropped, as a dead connection would drop it.
        const timer = setTimeout(() => forward(req, res), fault.ms);
        res.on('close', () => clearTimeout(timer));
        return;
      }
      case 'cut-upload':
        return forward(req, res, { upload: fault.afterBytes });
      case 'cut-download':
        return forward(req, res, { download: fault.afterBytes });
    }
  });
  // No per-request deadline of our own: slow uploads in a benchmark must not be cut by the proxy.
  server.requestTimeout = 0;

  function sendError(res: http.ServerResponse, status: number, code: string, message: string): void {
    const body = Buffer.from(
      '<?xml version="1.0" encoding="UTF-8"?>\n' +
        `<Error><Code>${xml(code)}</Code><Message>${xml(message)}</Message></Error>`,
    );
    res.writeHead(status, { 'Content-Type': 'application/xml', 'Content-Length': body.length });
    if (res.req.method !== 'HEAD') proxy.bytesOut += body.length;
    res.end(body); // for HEAD, Node sends the headers only
  }

  /**
   * Forwards one request. With `cut.upload`, at most that many body bytes reach the server and both
   * connections are then destroyed (a request body no longer than that passes untouched). With
   * `cut.download`, the client's connection is destroyed before the response is complete: it gets
   * the head and `download` body bytes if the body is longer, otherwise nothing at all.
   */
  function forward(req: http.IncomingMessage, res: http.ServerResponse, cut: { upload?: number; download?: number } = {}): void {
    if (res.destroyed) return; // the client left just as a delay ran out
    let cutting = false;
    const upReq = http.request({
      protocol: upstream.protocol,
      hostname: upstream.hostname,
      port: upstream.port,
      agent,
      method: req.method,
      path: req.url, // the raw request-target, not re-encoded
      // An array of raw header lines is written out verbatim: Node adds no Host and changes no case.
      headers: req.rawHeaders,
      setHost: false,
    });
    upReq.on('socket', (s: Socket) => s.setNoDelay(true));
    upReq.on('error', () => {
      if (cutting) return;
      if (!res.headersSent) sendError(res, 502, 'BadGateway', 'fault proxy: the upstream server is unreachable');
      else res.destroy();
    });
    // The client hung up early: abort the upstream request too, as a real connection loss would.
    res.on('close', () => {
      if (!res.writableFinished) upReq.destroy();
    });

    // Request body: client -> server.
    let forwarded = 0;
    let lastWrite: Promise<void> = Promise.resolve();
    const onData = (chunk: Buffer): void => {
      proxy.bytesIn += chunk.length;
      if (cut.upload !== undefined && forwarded + chunk.length > cut.upload) {
        cutting = true;
        req.off('data', onData);
        req.pause();
        const part = chunk.subarray(0, cut.upload - forwarded);
        if (part.length > 0) lastWrite = new Promise((done) => upReq.write(part, () => done()));
        // Destroy only once the allowed bytes are in the kernel, so the server really receives them.
        void lastWrite.then(() => {
          upReq.destroy();
          req.socket.destroy();
        });
        return;
      }
      forwarded += chunk.length;
      let ok = true;
      lastWrite = new Promise((done) => {
        ok = upReq.write(chunk, () => done());
      });
      if (!ok) {
        req.pause();
        upReq.once('drain', () => req.resume());
      }
    };
    req.on('data', onData);
    req.on('end', () => {
      if (!cutting) upReq.end();
    });

    // Response: server -> client.
    upReq.on('response', (upRes) => {
      if (cutting) return upRes.destroy();
      const sendHead = (): void => {
        res.writeHead(upRes.statusCode ?? 502, upRes.statusMessage, connectionFree(upRes.rawHeaders));
      };
      // The server dropped the connection mid-body: pass that on instead of ending the body cleanly.
      upRes.on('error', () => res.destroy());
      upRes.on('close', () => {
        if (!upRes.complete && !cutting) res.destroy();
      });

      const limit = cut.download;
      if (limit === undefined) {
        sendHead();
        upRes.on('data', (chunk: Buffer) => {
          proxy.bytesOut += chunk.length;
          if (!res.write(chunk)) {
            upRes.pause();
            res.once('drain', () => upRes.resume());
          }
        });
        upRes.on('end', () => res.end());
        return;
      }

      // cut-download: the client must never get the whole response. Hold the head and body back
      // until the body outgrows the limit; then send the head and the first `limit` bytes and cut.
      let held: Buffer[] = [];
      let heldBytes = 0;
      upRes.on('data', (chunk: Buffer) => {
        if (cutting) return;
        if (heldBytes + chunk.length <= limit) {
          held.push(chunk);
          heldBytes += chunk.length;
          return;
        }
        cutting = true;
        const part = Buffer.concat([...held, chunk.subarray(0, limit - heldBytes)]);
        held = [];
        sendHead();
        proxy.bytesOut += part.length;
        if (part.length > 0) res.write(part);
        else res.flushHeaders();
        // destroySoon = end (flushing what was written, head included), then destroy.
        res.socket?.destroySoon();
        upRes.destroy(); // never hand a half-read connection back to the pool
      });
      // The whole body fit within the limit (e.g. the empty body of a PUT's reply): the server has
      // acted, but the client gets nothing at all, the "lost reply" case.
      upRes.on('end', () => {
        if (cutting) return;
        cutting = true;
        res.socket?.destroy();
      });
    });
  }

  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      proxy.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      resolve(proxy);
    });
  });
}

function zeroCounts(): Record<RequestKind, number> {
  return { PUT: 0, POST: 0, GET: 0, HEAD: 0, DELETE: 0, LIST: 0 };
}

/** Classifies a path-style S3 request; undefined for methods the S3 client never sends. */
function describe(req: http.IncomingMessage, index: number): RequestInfo | undefined {
  const url = req.url ?? '/';
  const q = url.indexOf('?');
  // Split by hand rather than with new URL(): a path such as '//x' would be read as a host name.
  const path = (q < 0 ? url : url.slice(0, q)).replace(/^\//, '');
  const slash = path.indexOf('/');
  const bucket = decode(slash < 0 ? path : path.slice(0, slash));
  const key = slash < 0 ? '' : decode(path.slice(slash + 1));
  const method = req.method ?? '';
  let kind: RequestKind;
  if (method === 'GET') kind = key === '' ? 'LIST' : 'GET';
  else if (method === 'PUT' || method === 'POST' || method === 'HEAD' || method === 'DELETE') kind = method;
  else return undefined;
  return { kind, method, bucket, key, query: new URLSearchParams(q < 0 ? '' : url.slice(q + 1)), index };
}

function decode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/**
 * The upstream's Connection / Keep-Alive headers describe the proxy<->server connection, not ours;
 * forwarding e.g. "Keep-Alive: timeout=60" would make the client keep sockets the proxy closes after 5 s.
 * Node writes its own for the client side. Everything else (framing headers included) is kept.
 */
function connectionFree(raw: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toLowerCase();
    if (name !== 'connection' && name !== 'keep-alive') out.push(raw[i], raw[i + 1]);
  }
  return out;
}

function xml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

// ---------------------------------------------------------------------------------------------
// Rule helpers. Each call returns a fresh rule with its own counters, starting from zero.

/** The n-th request (1-based) of `kind` gets `fault`; all others pass. */
export function failNth(kind: RequestKind, n: number, fault: Fault): FaultRule {
  let seen = 0;
  return (req) => (req.kind === kind && ++seen === n ? fault : undefined);
}

/** Every `everyN`-th request of `kind` (the everyN-th, 2*everyN-th, ...) gets `fault`. */
export function failEvery(kind: RequestKind, everyN: number, fault: Fault): FaultRule {
  let seen = 0;
  return (req) => (req.kind === kind && ++seen % everyN === 0 ? fault : undefined);
}

/**
 * Each request of the given kinds (default: all) fails with probability `rate`, with a fault picked
 * from `faults`. Seeded, so the same request sequence always gets the same faults — note that with
 * concurrent requests the arrival order itself may vary between runs.
 */
export function randomFaults(opts: { seed: number; rate: number; faults: Fault[]; kinds?: RequestKind[] }): FaultRule {
  const rand = mulberry32(opts.seed);
  return (req) => {
    if (opts.kinds && !opts.kinds.includes(req.kind)) return undefined;
    if (rand() >= opts.rate) return undefined;
    return opts.faults[Math.floor(rand() * opts.faults.length)];
  };
}

/** mulberry32: a tiny 32-bit seeded PRNG; returns floats in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed | 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
