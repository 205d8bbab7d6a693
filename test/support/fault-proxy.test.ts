import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  failEvery,
  failNth,
  mulberry32,
  randomFaults,
  startFaultProxy,
  type Fault,
  type FaultProxy,
  type RequestInfo,
  type RequestKind,
} from './fault-proxy.js';

const MiB = 1024 * 1024;

// ---- An echo server standing in for S3 -------------------------------------------------------

interface Seen {
  method: string;
  url: string;
  rawHeaders: string[];
  bytes: number; // body bytes received so far
  sha256: string; // of the whole body, once it ended
  complete: boolean; // the body ended normally (false: the connection was cut)
  closed: Promise<void>;
}

interface Echo {
  url: string;
  seen: Seen[];
  /** TCP connections accepted so far. */
  connections: number;
  /** Lets a '/b/stream?size=N' response continue past its first MiB. */
  releaseStream(): void;
  close(): Promise<void>;
}

/** Deterministic bytes, so a truncated body can be compared with the original's prefix. */
function pattern(size: number): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (i * 7 + (i >> 9)) & 0xff;
  return b;
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function startEcho(): Promise<Echo> {
  const seen: Seen[] = [];
  let release: () => void = () => {};
  let released = new Promise<void>((r) => (release = r));
  const server = http.createServer((req, res) => {
    req.on('error', () => {});
    const hash = createHash('sha256');
    let closed!: () => void;
    const entry: Seen = {
      method: req.method ?? '',
      url: req.url ?? '',
      rawHeaders: req.rawHeaders,
      bytes: 0,
      sha256: '',
      complete: false,
      closed: new Promise((r) => (closed = r)),
    };
    seen.push(entry);
    req.on('data', (c: Buffer) => {
      entry.bytes += c.length;
      hash.update(c);
    });
    req.on('close', () => {
      entry.complete = req.complete;
      closed();
    });
    req.on('end', async () => {
      entry.sha256 = hash.digest('hex');
      const url = new URL(entry.url, 'http://x');
      const size = Number(url.searchParams.get('size'));
      if (url.pathname === '/b/download') {
        res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': size });
        res.end(pattern(size));
      } else if (url.pathname === '/b/empty') {
        res.writeHead(200, { 'Content-Length': 0 }); // like S3's reply to a PutObject
        res.end();
      } else if (url.pathname === '/b/stream') {
        // Send the first MiB, then wait until the test has seen it arrive at the client.
        const body = pattern(size);
        res.writeHead(200, { 'Content-Length': size });
        res.write(body.subarray(0, MiB));
        await released;
        released = new Promise<void>((r) => (release = r));
        res.end(body.subarray(MiB));
      } else {
        const summary = JSON.stringify({ method: entry.method, url: entry.url, bytes: entry.bytes, sha256: entry.sha256 });
        // Keep-Alive describes the proxy<->server hop; the proxy must not pass it on to its client.
        res.writeHead(201, 'Created Thing', { 'X-Echo-Case': 'Yes', 'Content-Type': 'application/json', 'Keep-Alive': 'timeout=60' });
        res.end(summary);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const echo: Echo = {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    connections: 0,
    releaseStream: () => release(),
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  };
  server.on('connection', () => echo.connections++);
  return echo;
}

// ---- A small client ---------------------------------------------------------------------------

interface Reply {
  status?: number;
  statusMessage?: string;
  rawHeaders: string[];
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  error?: NodeJS.ErrnoException;
}

interface SendOpts {
  method: string;
  path: string;
  /** Raw header lines (written verbatim, nothing added by Node) or a plain object. */
  headers?: string[] | http.OutgoingHttpHeaders;
  body?: Buffer | ((req: http.ClientRequest) => Promise<void>);
  timeoutMs?: number;
  onData?: (receivedSoFar: number) => void;
}

/** Never rejects: transport errors are returned in `error`, with whatever body arrived before them. */
function send(base: string, opts: SendOpts): Promise<Reply> {
  return new Promise((resolve) => {
    const reply: Reply = { rawHeaders: [], headers: {}, body: Buffer.alloc(0) };
    const chunks: Buffer[] = [];
    let done = false;
    const finish = (error?: NodeJS.ErrnoException): void => {
      if (done) return;
      done = true;
      if (error) reply.error = error;
      reply.body = Buffer.concat(chunks);
      resolve(reply);
    };
    let headers = opts.headers ?? {};
    if (Buffer.isBuffer(opts.body) && !Array.isArray(headers)) headers = { ...headers, 'Content-Length': opts.body.length };
    const req = http.request(base + opts.path, { method: opts.method, headers, agent: false }, (res) => {
      reply.status = res.statusCode;
      reply.statusMessage = res.statusMessage;
      reply.rawHeaders = res.rawHeaders;
      reply.headers = res.headers;
      let received = 0;
      res.on('data', (c: Buffer) => {
        chunks.push(c);
        received += c.length;
        opts.onData?.(received);
      });
      res.on('end', () => finish());
      res.on('error', (e) => finish(e));
      res.on('close', () => {
        if (!res.complete) finish(Object.assign(new Error('response incomplete'), { code: 'INCOMPLETE' }));
      });
    });
    req.on('error', (e) => finish(e));
    if (opts.timeoutMs) {
      req.setTimeout(opts.timeoutMs, () => req.destroy(Object.assign(new Error('client timeout'), { code: 'CLIENT_TIMEOUT' })));
    }
    if (typeof opts.body === 'function') void opts.body(req);
    else req.end(opts.body);
  });
}

async function until(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const zero: Record<RequestKind, number> = { PUT: 0, POST: 0, GET: 0, HEAD: 0, DELETE: 0, LIST: 0 };

// ---- Tests ------------------------------------------------------------------------------------

describe('fault proxy', () => {
  let echo: Echo;
  let proxy: FaultProxy;

  beforeAll(async () => {
    echo = await startEcho();
    proxy = await startFaultProxy(echo.url);
  });
  afterAll(async () => {
    await proxy.close();
    await echo.close();
  });
  beforeEach(() => {
    echo.seen.length = 0;
    proxy.setFaults(undefined);
    proxy.resetCounts();
  });

  it('forwards method, path, query and every header line (Host included) unchanged, and the response back', async () => {
    expect(proxy.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const body = Buffer.from('hello world');
    // The Host names neither the proxy nor the echo server: it must arrive exactly as sent (SigV4).
    const headerLines = [
      'Host', 's3.example.test:9000',
      'x-AMZ-date', '20240101T000000Z',
      'Authorization', 'AWS4-HMAC-SHA256 Credential=AK/20240101/us-east-1/s3/aws4_request, Signature=abc',
      'X-Amz-Meta-Dup', 'first',
      'X-Amz-Meta-Dup', 'second',
      'Content-Type', 'application/octet-stream',
      'Content-Length', String(body.length),
      'Connection', 'close',
    ];
    const path = '/b/dir/a%20b+c.txt?x-id=PutObject&partNumber=1&empty=';
    const reply = await send(proxy.url, { method: 'PUT', path, headers: headerLines, body });

    expect(echo.seen.length).toBe(1);
    expect(echo.seen[0].method).toBe('PUT');
    expect(echo.seen[0].url).toBe(path);
    expect(echo.seen[0].rawHeaders).toEqual(headerLines);
    expect(echo.seen[0].sha256).toBe(sha256(body));

    expect(reply.error).toBeUndefined();
    expect(reply.status).toBe(201);
    expect(reply.statusMessage).toBe('Created Thing');
    expect(reply.rawHeaders).toContain('X-Echo-Case'); // case kept
    expect(reply.headers['x-echo-case']).toBe('Yes');
    expect(reply.headers['content-type']).toBe('application/json');
    expect(reply.headers['keep-alive']).toBeUndefined();
    expect(reply.headers.connection).toBe('close'); // the proxy's own answer to our 'Connection: close'
    const summary = { method: 'PUT', url: path, bytes: 11, sha256: sha256(body) };
    expect(JSON.parse(reply.body.toString())).toEqual(summary);
    expect(proxy.bytesIn).toBe(11);
    expect(proxy.bytesOut).toBe(JSON.stringify(summary).length);
  });

  it('streams a 5 MiB upload and a 5 MiB download instead of buffering them', async () => {
    const data = pattern(5 * MiB);
    // Upload: the server must see the first MiB while the client still holds back the rest.
    const up = await send(proxy.url, {
      method: 'PUT',
      path: '/b/big',
      headers: { 'Content-Length': data.length },
      body: async (req) => {
        req.write(data.subarray(0, MiB));
        await until(() => (echo.seen[0]?.bytes ?? 0) >= MiB, 'the first MiB to reach the server');
        for (let off = MiB; off < data.length; off += 256 * 1024) req.write(data.subarray(off, off + 256 * 1024));
        req.end();
      },
    });
    expect(up.error).toBeUndefined();
    expect(up.status).toBe(201);
    expect(echo.seen[0].bytes).toBe(5 * MiB);
    expect(echo.seen[0].sha256).toBe(sha256(data));
    expect(proxy.bytesIn).toBe(5 * MiB);

    // Download: the server sends one MiB and waits until the client has it before sending the rest.
    proxy.resetCounts();
    const down = await send(proxy.url, {
      method: 'GET',
      path: `/b/stream?size=${5 * MiB}`,
      // Only released once the whole first MiB is here: a buffering proxy would deadlock (and time out).
      onData: (n) => {
        if (n === MiB) echo.releaseStream();
      },
    });
    expect(down.error).toBeUndefined();
    expect(down.status).toBe(200);
    expect(down.body.length).toBe(5 * MiB);
    expect(sha256(down.body)).toBe(sha256(data));
    expect(proxy.bytesOut).toBe(5 * MiB);
  });

  it('passes Expect: 100-continue uploads through (the SDK sends it for large PUTs)', async () => {
    const body = pattern(3 * MiB);
    const reply = await send(proxy.url, {
      method: 'PUT',
      path: '/b/expect',
      headers: { 'Content-Length': body.length, Expect: '100-continue' },
      body: async (req) => {
        await new Promise<void>((r) => req.once('continue', () => r()));
        req.end(body);
      },
    });
    expect(reply.error).toBeUndefined();
    expect(reply.status).toBe(201);
    expect(echo.seen[0].rawHeaders).toContain('100-continue');
    expect(echo.seen[0].sha256).toBe(sha256(body));
  });

  it('counts requests by kind and describes each one to the rule', async () => {
    const infos: RequestInfo[] = [];
    proxy.setFaults((r) => {
      infos.push(r);
      return undefined;
    });
    const requests: [string, string][] = [
      ['PUT', '/b/k'],
      ['GET', '/b/k'],
      ['GET', '/b?list-type=2&prefix=p%2Fq'],
      ['GET', '/b/'],
      ['HEAD', '/b/k'],
      ['DELETE', '/b/dir/a%20b.txt'],
      ['POST', '/b/k?uploads'],
      ['GET', '/b/k'],
    ];
    let bodyBytes = 0;
    for (const [method, path] of requests) {
      const reply = await send(proxy.url, { method, path, body: method === 'PUT' ? Buffer.alloc(1000) : undefined });
      expect(reply.error).toBeUndefined();
      bodyBytes += reply.body.length;
    }
    expect(proxy.counts).toEqual({ PUT: 1, GET: 2, LIST: 2, HEAD: 1, DELETE: 1, POST: 1 });
    expect(proxy.bytesIn).toBe(1000);
    expect(proxy.bytesOut).toBe(bodyBytes);
    expect(echo.seen.map((s) => `${s.method} ${s.url}`)).toEqual(requests.map(([m, p]) => `${m} ${p}`));

    expect(infos.map((i) => [i.index, i.kind, i.method, i.bucket, i.key])).toEqual([
      [0, 'PUT', 'PUT', 'b', 'k'],
      [1, 'GET', 'GET', 'b', 'k'],
      [2, 'LIST', 'GET', 'b', ''],
      [3, 'LIST', 'GET', 'b', ''],
      [4, 'HEAD', 'HEAD', 'b', 'k'],
      [5, 'DELETE', 'DELETE', 'b', 'dir/a b.txt'],
      [6, 'POST', 'POST', 'b', 'k'],
      [7, 'GET', 'GET', 'b', 'k'],
    ]);
    expect(infos[2].query.get('list-type')).toBe('2');
    expect(infos[2].query.get('prefix')).toBe('p/q');
    expect(infos[6].query.has('uploads')).toBe(true);

    proxy.resetCounts();
    expect(proxy.counts).toEqual(zero);
    expect([proxy.bytesIn, proxy.bytesOut]).toEqual([0, 0]);
    await send(proxy.url, { method: 'GET', path: '/b/k' });
    expect(infos.at(-1)?.index).toBe(0); // index restarts with the counts
  });

  it('status: answers the n-th request of a kind with an S3 XML error, without contacting the server', async () => {
    proxy.setFaults(failNth('PUT', 2, { type: 'status', status: 503, code: 'SlowDown', message: 'Reduce <your> rate & retry' }));
    const body = pattern(64 * 1024);
    const replies: Reply[] = [];
    for (const key of ['k1', 'k2', 'k3']) replies.push(await send(proxy.url, { method: 'PUT', path: `/b/${key}`, body }));

    expect(replies.map((r) => r.status)).toEqual([201, 503, 201]);
    const xml =
      '<?xml version="1.0" encoding="UTF-8"?>\n' +
      '<Error><Code>SlowDown</Code><Message>Reduce &lt;your&gt; rate &amp; retry</Message></Error>';
    expect(replies[1].body.toString()).toBe(xml);
    expect(replies[1].headers['content-type']).toBe('application/xml');
    expect(replies[1].headers['content-length']).toBe(String(Buffer.byteLength(xml)));
    expect(echo.seen.map((s) => s.url)).toEqual(['/b/k1', '/b/k3']);
    expect(proxy.counts.PUT).toBe(3);
    expect(proxy.bytesIn).toBe(3 * 64 * 1024); // the faulted request's body was drained, and counted
    expect(proxy.bytesOut).toBe(replies.reduce((n, r) => n + r.body.length, 0)); // the XML body counts too

    // The message defaults to the code; HEAD answers carry no body.
    proxy.resetCounts();
    proxy.setFaults(failNth('HEAD', 1, { type: 'status', status: 404, code: 'NoSuchKey' }));
    const head = await send(proxy.url, { method: 'HEAD', path: '/b/k1' });
    expect(head.status).toBe(404);
    expect(head.body.length).toBe(0);
    expect(head.headers['content-type']).toBe('application/xml');
    expect(proxy.bytesOut).toBe(0); // nothing counted for the bodiless HEAD answer
    proxy.setFaults(failNth('GET', 1, { type: 'status', status: 404, code: 'NoSuchKey' }));
    const get = await send(proxy.url, { method: 'GET', path: '/b/k1' });
    expect(get.body.toString()).toContain('<Code>NoSuchKey</Code><Message>NoSuchKey</Message>');
    expect(proxy.bytesOut).toBe(get.body.length);
  });

  it('failEvery: faults every n-th request of one kind only', async () => {
    proxy.setFaults(failEvery('GET', 2, { type: 'status', status: 500, code: 'InternalError' }));
    const statuses: (number | undefined)[] = [];
    for (let i = 0; i < 5; i++) {
      statuses.push((await send(proxy.url, { method: 'GET', path: `/b/k${i}` })).status);
      statuses.push((await send(proxy.url, { method: 'HEAD', path: `/b/k${i}` })).status);
    }
    expect(statuses).toEqual([201, 201, 500, 201, 201, 201, 500, 201, 201, 201]);
    expect(echo.seen.length).toBe(8);
  });

  it('reset: the client sees ECONNRESET and the server sees nothing', async () => {
    proxy.setFaults(failNth('GET', 1, { type: 'reset' }));
    const reply = await send(proxy.url, { method: 'GET', path: '/b/k' });
    expect(reply.status).toBeUndefined();
    expect(reply.error?.code).toBe('ECONNRESET');
    expect(echo.seen.length).toBe(0);
    expect(proxy.counts.GET).toBe(1);
    // The next request is unaffected.
    expect((await send(proxy.url, { method: 'GET', path: '/b/k' })).status).toBe(201);
  });

  it('delay: holds the request back, and drops it if the client gives up meanwhile', async () => {
    proxy.setFaults(failNth('PUT', 1, { type: 'delay', ms: 300 }));
    const start = Date.now();
    const reply = await send(proxy.url, { method: 'PUT', path: '/b/slow', body: Buffer.from('late body') });
    const elapsed = Date.now() - start;
    expect(reply.status).toBe(201);
    expect(elapsed).toBeGreaterThanOrEqual(300);
    expect(elapsed).toBeLessThan(2000);
    expect(echo.seen[0].sha256).toBe(sha256(Buffer.from('late body')));

    echo.seen.length = 0;
    proxy.setFaults(failNth('GET', 1, { type: 'delay', ms: 400 }));
    const connectionsBefore = echo.connections;
    const gaveUp = await send(proxy.url, { method: 'GET', path: '/b/slow', timeoutMs: 100 });
    expect(gaveUp.error?.code).toBe('CLIENT_TIMEOUT');
    await sleep(600); // past the delay: a forwarded request would have reached the server by now
    expect(echo.seen.length).toBe(0);
    expect(echo.connections).toBe(connectionsBefore); // not even a connection was opened for it
    expect(proxy.counts.GET).toBe(1);
  });

  it('cut-upload: the server gets exactly afterBytes body bytes, then both connections drop', async () => {
    proxy.setFaults(failNth('PUT', 1, { type: 'cut-upload', afterBytes: 100_000 }));
    const body = pattern(MiB);
    const reply = await send(proxy.url, { method: 'PUT', path: '/b/cut', body });
    expect(reply.status).toBeUndefined();
    expect(['ECONNRESET', 'EPIPE']).toContain(reply.error?.code);
    // The client may hear of the cut before the server has even parsed the request: wait for it.
    await until(() => echo.seen.length === 1, 'the server to see the cut request');
    await echo.seen[0].closed;
    expect(echo.seen[0].bytes).toBe(100_000);
    expect(echo.seen[0].complete).toBe(false);
    expect(echo.seen.length).toBe(1);

    // A body no longer than the limit passes untouched.
    echo.seen.length = 0;
    proxy.setFaults(failNth('PUT', 1, { type: 'cut-upload', afterBytes: 1000 }));
    const small = await send(proxy.url, { method: 'PUT', path: '/b/small', body: pattern(1000) });
    expect(small.status).toBe(201);
    expect(echo.seen[0].bytes).toBe(1000);
    expect(echo.seen[0].complete).toBe(true);
  });

  it('cut-download: the client gets the head and exactly afterBytes body bytes, or nothing if the body fits', async () => {
    proxy.setFaults(failNth('GET', 1, { type: 'cut-download', afterBytes: 123_456 }));
    const reply = await send(proxy.url, { method: 'GET', path: `/b/download?size=${MiB}` });
    expect(reply.status).toBe(200);
    expect(reply.headers['content-length']).toBe(String(MiB));
    expect(reply.error).toBeDefined();
    expect(reply.body.length).toBe(123_456);
    expect(reply.body.equals(pattern(MiB).subarray(0, 123_456))).toBe(true);
    expect(proxy.bytesOut).toBe(123_456);

    // A response that would be complete within the limit is withheld entirely: the server acted,
    // the client got nothing (the lost reply of a PUT, whose 200 has an empty body).
    echo.seen.length = 0;
    proxy.resetCounts();
    proxy.setFaults(failNth('GET', 1, { type: 'cut-download', afterBytes: 5000 }));
    const lost = await send(proxy.url, { method: 'GET', path: '/b/download?size=5000' });
    expect(lost.status).toBeUndefined();
    expect(lost.error?.code).toBe('ECONNRESET');
    expect(echo.seen.map((e) => [e.url, e.complete])).toEqual([['/b/download?size=5000', true]]);
    expect(proxy.bytesOut).toBe(0);

    echo.seen.length = 0;
    proxy.setFaults(failNth('PUT', 1, { type: 'cut-download', afterBytes: 0 }));
    const put = await send(proxy.url, { method: 'PUT', path: '/b/empty', body: pattern(4000) });
    expect(put.status).toBeUndefined();
    expect(put.error?.code).toBe('ECONNRESET');
    expect(echo.seen[0].bytes).toBe(4000);
    expect(echo.seen[0].complete).toBe(true);

    // With afterBytes 0 and a body, the client gets the head and no body.
    proxy.setFaults(failNth('GET', 1, { type: 'cut-download', afterBytes: 0 }));
    const headOnly = await send(proxy.url, { method: 'GET', path: '/b/download?size=5000' });
    expect(headOnly.status).toBe(200);
    expect(headOnly.body.length).toBe(0);
    expect(headOnly.error).toBeDefined();

    // And the proxy works normally afterwards.
    proxy.setFaults(undefined);
    const fine = await send(proxy.url, { method: 'GET', path: '/b/download?size=5000' });
    expect(fine.error).toBeUndefined();
    expect(fine.body.equals(pattern(5000))).toBe(true);
  });

  it('mulberry32 matches the reference implementation', () => {
    // Values of the canonical JS mulberry32 (a += 0x6D2B79F5; ...) for seeds 1 and 42.
    expect(mulberry32(1)()).toBe(0.6270739405881613);
    expect(mulberry32(42)()).toBe(0.6011037519201636);
    const r = mulberry32(7);
    const xs = Array.from({ length: 1000 }, () => r());
    expect(xs.every((x) => x >= 0 && x < 1)).toBe(true);
    expect(new Set(xs).size).toBe(1000);
  });

  it('randomFaults: seeded, deterministic, honours rate and kinds', () => {
    const faults: Fault[] = [
      { type: 'reset' },
      { type: 'status', status: 500, code: 'InternalError' },
    ];
    const infos: RequestInfo[] = Array.from({ length: 40 }, (_, index) => ({
      kind: (index % 2 === 0 ? 'PUT' : 'GET') as RequestKind,
      method: index % 2 === 0 ? 'PUT' : 'GET',
      bucket: 'b',
      key: `k${index}`,
      query: new URLSearchParams(),
      index,
    }));
    const run = (opts: Parameters<typeof randomFaults>[0]): string[] => {
      const rule = randomFaults(opts);
      return infos.map((i) => {
        const f = rule(i);
        return f === undefined ? '-' : f.type === 'reset' ? 'R' : 'S';
      });
    };
    const a = run({ seed: 42, rate: 0.3, faults });
    expect(run({ seed: 42, rate: 0.3, faults })).toEqual(a);
    expect(run({ seed: 43, rate: 0.3, faults })).not.toEqual(a);
    // Pinned: changing the PRNG or the draw order changes which requests fail in seeded tests.
    expect(a.join('')).toBe('----SS--S--S--R-SRR--R-----R--SR---RR---');
    expect(run({ seed: 1, rate: 0, faults }).join('')).toBe('-'.repeat(40));
    expect(run({ seed: 1, rate: 1, faults }).every((x) => x !== '-')).toBe(true);
    const putsOnly = run({ seed: 5, rate: 1, faults, kinds: ['PUT'] });
    expect(putsOnly.filter((_, i) => i % 2 === 1)).toEqual(Array(20).fill('-'));
    expect(putsOnly.filter((_, i) => i % 2 === 0).every((x) => x !== '-')).toBe(true);
  });

  it('answers what it cannot forward with S3-style errors (unknown method 501, server down 502)', async () => {
    const odd = await send(proxy.url, { method: 'OPTIONS', path: '/b/k' });
    expect(odd.status).toBe(501);
    expect(odd.body.toString()).toContain('<Code>NotImplemented</Code>');
    expect(proxy.counts).toEqual(zero);
    expect(echo.seen.length).toBe(0);

    // A port that was just free: nothing listens there.
    const dead = await startEcho();
    const deadUrl = dead.url;
    await dead.close();
    const lonely = await startFaultProxy(deadUrl);
    try {
      const reply = await send(lonely.url, { method: 'GET', path: '/b/k' });
      expect(reply.status).toBe(502);
      expect(reply.body.toString()).toContain('<Code>BadGateway</Code>');
      expect(lonely.counts.GET).toBe(1);
    } finally {
      await lonely.close();
    }
  });

  it('close() destroys open connections and stops listening', async () => {
    const own = await startFaultProxy(echo.url);
    own.setFaults(() => ({ type: 'delay', ms: 10_000 }));
    const pending = send(own.url, { method: 'GET', path: '/b/k' });
    await until(() => own.counts.GET === 1, 'the proxy to see the request');
    const start = Date.now();
    await own.close();
    expect(Date.now() - start).toBeLessThan(1000);
    const reply = await pending;
    expect(reply.error?.code).toBe('ECONNRESET');
    const after = await send(own.url, { method: 'GET', path: '/b/k' });
    expect(after.error?.code).toBe('ECONNREFUSED');
    expect(echo.seen.length).toBe(0);
  });
});
