import { createServer } from 'node:net';

import { afterEach, describe, expect, it } from 'vitest';

import { CairnError } from '../../shared/errors.js';
import { startStatusServer, type StatusServer } from './status-server.js';
import type { AgentStatus, MetricsSnapshot, StatusProvider } from './status.js';

const status: AgentStatus = {
  agentId: 'agent-1',
  version: '0.1.0',
  startedAt: '2026-11-25T10:00:00.000Z',
  uptimeSeconds: 120,
  controlPlane: { state: 'not-configured', url: null },
  jobs: [],
  resources: [
    { name: 'web-01', vault: 'local', policy: 'nightly', lastResult: null, lastSuccessAt: null, nextRun: '2026-11-26T02:00:00.000Z' },
  ],
  vaults: [{ name: 'local', location: '/srv/vault', backups: 3, storedBytes: 1024 }],
  inventory: null,
};

const metrics: MetricsSnapshot = {
  backups: [
    { resource: 'web-01', vault: 'local', result: 'ok', count: 3 },
    { resource: 'web-01', vault: 'local', result: 'failed', count: 1 },
    { resource: 'we"ird\\name\nx', vault: 'local', result: 'ok', count: 1 },
  ],
  bytesRead: [{ resource: 'web-01', bytes: 3000 }],
  bytesStored: [{ resource: 'web-01', bytes: 1200 }],
  durations: [{ resource: 'web-01', seconds: [0.5, 1, 4, 20, 4000] }],
  lastSuccess: [{ resource: 'web-01', timestamp: 1795600000.5 }],
  runningJobs: 1,
  queuedJobs: 2,
  uptimeSeconds: 120,
};

const provider: StatusProvider = { status: () => status, metrics: () => metrics };

let servers: StatusServer[] = [];
afterEach(async () => {
  await Promise.all(servers.map((s) => s.close()));
  servers = [];
});

async function start(p: StatusProvider = provider, log?: (msg: string) => void): Promise<StatusServer> {
  const s = await startStatusServer(p, { port: 0, log });
  servers.push(s);
  return s;
}

interface ParsedSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A reader of the 0.0.4 text format, enough to check what we write. */
function parseExposition(text: string): { help: Map<string, string>; type: Map<string, string>; samples: ParsedSample[] } {
  const help = new Map<string, string>();
  const type = new Map<string, string>();
  const samples: ParsedSample[] = [];
  expect(text.endsWith('\n')).toBe(true);
  for (const line of text.slice(0, -1).split('\n')) {
    let m: RegExpMatchArray | null;
    if ((m = line.match(/^# HELP (\S+) (.*)$/))) {
      help.set(m[1], m[2]);
    } else if ((m = line.match(/^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/))) {
      type.set(m[1], m[2]);
    } else {
      m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/);
      expect(m, `sample line: ${line}`).not.toBeNull();
      const labels: Record<string, string> = {};
      const body = m![2] ?? '';
      const labelRe = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/gy;
      let lm: RegExpExecArray | null;
      let consumed = 0;
      while ((lm = labelRe.exec(body))) {
        labels[lm[1]] = lm[2].replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
        consumed = labelRe.lastIndex;
      }
      expect(consumed, `labels of: ${line}`).toBe(body.length);
      const raw = m![3];
      samples.push({ name: m![1], labels, value: raw === '+Inf' ? Infinity : Number(raw) });
    }
  }
  return { help, type, samples };
}

describe('status server', () => {
  it('answers /healthz with ok as plain text', async () => {
    const s = await start();
    const res = await fetch(`${s.url}/healthz`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/plain; charset=utf-8');
    expect(await res.text()).toBe('ok\n');
  });

  it('answers /status with the provider status as JSON', async () => {
    const s = await start();
    const res = await fetch(`${s.url}/status?verbose=1`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(await res.json()).toEqual(status);
  });

  it('answers /metrics in the Prometheus 0.0.4 text format', async () => {
    const s = await start();
    const res = await fetch(`${s.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
    const { help, type, samples } = parseExposition(await res.text());

    const families: Record<string, string> = {
      cairn_backups_total: 'counter',
      cairn_backup_bytes_read_total: 'counter',
      cairn_backup_bytes_stored_total: 'counter',
      cairn_backup_duration_seconds: 'histogram',
      cairn_backup_last_success_timestamp_seconds: 'gauge',
      cairn_jobs_running: 'gauge',
      cairn_jobs_queued: 'gauge',
      cairn_agent_uptime_seconds: 'gauge',
    };
    expect(Object.fromEntries(type)).toEqual(families);
    for (const name of Object.keys(families)) expect(help.get(name)).toMatch(/\S/);
    // Every sample belongs to a declared family.
    for (const x of samples) expect(type.has(x.name.replace(/_(bucket|sum|count)$/, '')) || type.has(x.name)).toBe(true);

    const find = (name: string, labels: Record<string, string> = {}) =>
      samples.filter((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v));
    expect(find('cairn_backups_total', { resource: 'web-01', result: 'ok' })).toEqual([
      { name: 'cairn_backups_total', labels: { resource: 'web-01', vault: 'local', result: 'ok' }, value: 3 },
    ]);
    expect(find('cairn_backups_total', { result: 'failed' })[0].value).toBe(1);
    // Backslash, quote and line feed in a label value come back unchanged.
    expect(find('cairn_backups_total', { resource: 'we"ird\\name\nx' })).toHaveLength(1);
    expect(find('cairn_backup_bytes_read_total')[0]).toMatchObject({ labels: { resource: 'web-01' }, value: 3000 });
    expect(find('cairn_backup_bytes_stored_total')[0].value).toBe(1200);
    expect(find('cairn_backup_last_success_timestamp_seconds')[0].value).toBe(1795600000.5);
    expect(find('cairn_jobs_running')[0]).toEqual({ name: 'cairn_jobs_running', labels: {}, value: 1 });
    expect(find('cairn_jobs_queued')[0].value).toBe(2);
    expect(find('cairn_agent_uptime_seconds')[0].value).toBe(120);

    // Durations 0.5, 1, 4, 20, 4000: cumulative counts per upper bound, +Inf equal to _count.
    const buckets = find('cairn_backup_duration_seconds_bucket', { resource: 'web-01' });
    expect(buckets.map((b) => [b.labels.le, b.value])).toEqual([
      ['1', 2],
      ['5', 3],
      ['15', 3],
      ['60', 4],
      ['300', 4],
      ['900', 4],
      ['3600', 4],
      ['+Inf', 5],
    ]);
    expect(find('cairn_backup_duration_seconds_count')[0].value).toBe(5);
    expect(find('cairn_backup_duration_seconds_sum')[0].value).toBeCloseTo(4025.5);
  });

  it('leaves out the uptime metric when the snapshot has none', async () => {
    const { uptimeSeconds: _, ...rest } = metrics;
    const s = await start({ status: () => status, metrics: () => rest });
    const text = await (await fetch(`${s.url}/metrics`)).text();
    expect(text).not.toContain('cairn_agent_uptime_seconds');
    expect(text).toContain('# TYPE cairn_jobs_queued gauge\ncairn_jobs_queued 2\n');
  });

  it('answers HEAD with the headers of GET and no body', async () => {
    const s = await start();
    const get = await fetch(`${s.url}/status`);
    const head = await fetch(`${s.url}/status`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-type')).toBe(get.headers.get('content-type'));
    expect(head.headers.get('content-length')).toBe(String(Buffer.byteLength(await get.text())));
    expect(await head.text()).toBe('');
  });

  it('answers an unknown path with 404 and other methods with 405', async () => {
    const s = await start();
    const missing = await fetch(`${s.url}/nope`);
    expect(missing.status).toBe(404);
    expect(missing.headers.get('content-type')).toMatch(/^application\/json/);
    expect((await missing.json()).error).toMatch(/\/nope/);

    const post = await fetch(`${s.url}/status`, { method: 'POST', body: 'x' });
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET, HEAD');
    expect((await post.json()).error).toMatch(/POST/);
  });

  it('answers 500 without a stack trace when the provider throws, and logs it', async () => {
    const logged: string[] = [];
    const failing: StatusProvider = {
      status: () => {
        throw new Error('state store is closed');
      },
      metrics: () => {
        throw new TypeError('boom');
      },
    };
    const s = await start(failing, (m) => logged.push(m));
    for (const path of ['/status', '/metrics']) {
      const res = await fetch(`${s.url}${path}`);
      expect(res.status).toBe(500);
      expect(res.headers.get('content-type')).toMatch(/^application\/json/);
      const text = await res.text();
      expect(JSON.parse(text).error).toMatch(/agent log/);
      expect(text).not.toMatch(/state store|boom|at .*\.ts/);
    }
    expect(logged).toEqual([
      'status server: GET /status failed: state store is closed',
      'status server: GET /metrics failed: boom',
    ]);
    // Still serving.
    expect((await fetch(`${s.url}/healthz`)).status).toBe(200);
  });

  it('rejects with BUSY when the port is taken', async () => {
    const blocker = createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
    const port = (blocker.address() as { port: number }).port;
    try {
      const err = await startStatusServer(provider, { port }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CairnError);
      expect((err as CairnError).code).toBe('BUSY');
      expect((err as CairnError).message).toBe(
        `status address 127.0.0.1:${port} is in use by another process; set status.port in the config or stop the other process`,
      );
    } finally {
      await new Promise((r) => blocker.close(r));
    }
  });

  it('closes with keep-alive connections open, and close is idempotent', async () => {
    const s = await startStatusServer(provider, { port: 0 });
    await (await fetch(`${s.url}/healthz`)).text();
    await Promise.all([s.close(), s.close()]);
    await expect(fetch(`${s.url}/healthz`)).rejects.toThrow();
  });
});
