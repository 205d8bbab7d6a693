import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { systemClock, randomIdSource } from '../../shared/clock.js';
import type { Catalog } from '../catalog/catalog.js';
import { LiveJobs } from './live-jobs.js';
import { openApiDocument } from './openapi.js';
import { createRestApi } from './rest-api.js';
import { startControlPlane, type ControlPlane } from './server.js';
import { call } from './test-client.js';
import { cairnVersion } from '../../shared/runtime/version.js';

describe('the OpenAPI document', () => {
  let dataDir: string;
  let cp: ControlPlane;

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'cairn-cp-openapi-'));
    cp = await startControlPlane({ dataDir, port: 0, log: () => {} });
  });

  afterAll(async () => {
    await cp?.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('lists exactly the routes the router serves', () => {
    const api = createRestApi({
      catalog: {} as Catalog,
      clock: systemClock,
      ids: randomIdSource,
      log: () => {},
      wsUrl: 'wss://cp.example:8443/v1/agent',
      caFingerprint: '0'.repeat(64),
      adminTokenHash: 'unused',
      onRevoked: () => {},
      onPoliciesChanged: () => {},
      onCommandQueued: () => {},
      liveJobs: new LiveJobs(),
      isConnected: () => false,
    });
    const routed = api.routes.map((r) => `${r.method} ${r.path}`).sort();
    const paths = openApiDocument().paths as Record<string, Record<string, unknown>>;
    const documented = Object.entries(paths).flatMap(([path, methods]) => Object.keys(methods).map((m) => `${m.toUpperCase()} ${path}`)).sort();
    expect(documented).toEqual(routed);
    expect(new Set(routed).size).toBe(routed.length);
  });

  it('is served without a token, as OpenAPI 3.1 whose references all resolve', async () => {
    const reply = await call(cp, 'GET', '/v1/openapi.json');
    expect(reply.status).toBe(200);
    expect(reply.body.openapi).toBe('3.1.0');
    const schemas = reply.body.components.schemas as Record<string, unknown>;
    const refs = [...reply.text.matchAll(/"\$ref":"#\/components\/schemas\/([^"]+)"/g)].map((m) => m[1]!);
    expect(refs.length).toBeGreaterThan(20);
    for (const name of refs) expect(schemas, name).toHaveProperty(name);
    // Every operation has a success response with a schema, and the enroll route needs no token.
    for (const [path, methods] of Object.entries(reply.body.paths as Record<string, Record<string, any>>)) {
      for (const [method, op] of Object.entries(methods)) {
        const success = Object.keys(op.responses).filter((s) => s.startsWith('2'));
        expect(success.length, `${method} ${path}`).toBeGreaterThanOrEqual(1);
        for (const s of success) expect(op.responses[s].content['application/json'].schema, `${method} ${path}`).toBeDefined();
        // Path parameters named in the path are declared, and only those.
        const inPath = [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]);
        expect((op.parameters ?? []).filter((p: any) => p.in === 'path').map((p: any) => p.name), `${method} ${path}`).toEqual(inPath);
      }
    }
    expect(reply.body.paths['/v1/enroll'].post.security).toEqual([]);
    expect(Object.keys(reply.body.paths['/v1/vaults/{name}'].put.responses)).toEqual(expect.arrayContaining(['200', '201', '400', '401']));
    expect(reply.body.paths['/v1/backups'].get.parameters.map((p: any) => p.name)).toEqual(['vault', 'resource', 'agent', 'kind', 'status', 'from', 'to', 'limit', 'offset']);
  });

  it('answers GET /v1/health without a token, for service checks', async () => {
    const reply = await call(cp, 'GET', '/v1/health');
    expect(reply.status).toBe(200);
    expect(reply.body).toEqual({ status: 'ok', version: cairnVersion(), uptimeSeconds: expect.any(Number) });
    expect(reply.body.version).toMatch(/^\d+\.\d+\.\d+/);
    // Everything else still needs the admin token.
    expect((await call(cp, 'GET', '/v1/agents')).status).toBe(401);
  });
});
