import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

import { afterEach, describe, expect, it } from 'vitest';

import { systemClock, randomIdSource } from '../../shared/clock.js';
import type { Catalog } from '../catalog/catalog.js';
import { LiveJobs } from './live-jobs.js';
import { createRestApi, MAX_ADMIN_VERIFICATIONS } from './rest-api.js';

function get(port: number, token: string): Promise<{ status: number; retryAfter: string | undefined; body: any }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/v1/agents', headers: { authorization: `Bearer ${token}` } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, retryAfter: res.headers['retry-after'] as string | undefined, body: JSON.parse(Buffer.concat(chunks).toString()) }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('the admin token check', () => {
  let server: Server | undefined;
  afterEach(() => server?.close());

  it(`runs at most ${MAX_ADMIN_VERIFICATIONS} scrypt checks at once and answers 503 BUSY with Retry-After beyond`, async () => {
    const waiting: (() => void)[] = [];
    let running = 0;
    let most = 0;
    const api = createRestApi({
      catalog: { listAgents: async () => [] } as unknown as Catalog,
      clock: systemClock,
      ids: randomIdSource,
      log: () => {},
      wsUrl: 'wss://cp.example:8443/v1/agent',
      caFingerprint: '0'.repeat(64),
      adminTokenHash: 'unused',
      // A slow check held open by the test, standing in for a 32 MiB scrypt.
      verifyAdminToken: (_hash, token) =>
        new Promise((resolve) => {
          most = Math.max(most, ++running);
          waiting.push(() => {
            running--;
            resolve(token === 'right');
          });
        }),
      onRevoked: () => {},
      onPoliciesChanged: () => {},
      onCommandQueued: () => {},
      liveJobs: new LiveJobs(),
      isConnected: () => false,
    });
    server = createServer(api);
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;

    const slow = [get(port, 'wrong-1'), get(port, 'wrong-2')];
    while (waiting.length < MAX_ADMIN_VERIFICATIONS) await new Promise((r) => setTimeout(r, 5));
    const refused = await Promise.all([get(port, 'wrong-3'), get(port, 'right')]);
    for (const r of refused) {
      expect(r.status).toBe(503);
      expect(r.body.error.code).toBe('BUSY');
      expect(Number(r.retryAfter)).toBeGreaterThanOrEqual(1);
    }
    expect(most).toBe(MAX_ADMIN_VERIFICATIONS);
    for (const release of waiting.splice(0)) release();
    expect((await Promise.all(slow)).map((r) => r.status)).toEqual([401, 401]);

    // With room again, a right token is checked once and then remembered.
    const right = get(port, 'right');
    while (waiting.length < 1) await new Promise((r) => setTimeout(r, 5));
    waiting.splice(0)[0]!();
    expect((await right).status).toBe(200);
    expect((await get(port, 'right')).status).toBe(200);
  });
});
