import { createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';

import type { Clock, IdSource } from '../../shared/clock.js';
import type { Catalog, JsonValue, PolicyChanges, PolicyRecord, VaultInput } from '../catalog/catalog.js';
import {
  createEnrollmentToken,
  issueAgentCredential,
  parseEnrollmentToken,
  verifyAdminToken,
  verifyEnrollmentSecret,
} from '../pki/tokens.js';
import { nameParam, onlyFields, pathPattern, readJsonObject, send, type Route } from './api-io.js';
import { ApiError, toApiError } from './http-error.js';
import type { LiveJobs } from './live-jobs.js';
import type { Log } from './log.js';
import { operationRoutes, publicAgent } from './operations-api.js';
import { openApiDocument } from './openapi.js';
import { cairnVersion } from '../../shared/runtime/version.js';
import { checkPolicyInput, checkPolicySet, checkVaultName } from './policy-push.js';

export { MAX_BODY_BYTES } from './api-io.js';
/** scrypt checks of not yet known admin tokens that may run at once; more are answered 503. */
export const MAX_ADMIN_VERIFICATIONS = 2;
const ADMIN_RETRY_AFTER_SECONDS = 1;

/** Longest enrollment token lifetime an admin may ask for: 30 days. */
export const MAX_ENROLLMENT_TTL_SECONDS = 30 * 24 * 3600;
const MAX_HOSTNAME = 256;

export interface RestApiDeps {
  catalog: Catalog;
  clock: Clock;
  /** Where command and checkpoint ids come from. */
  ids: IdSource;
  log: Log;
  /** The agents' address put into enrollment tokens, `wss://host:port/v1/agent`. */
  wsUrl: string;
  caFingerprint: string;
  /** The stored scrypt hash of the admin token. */
  adminTokenHash: string;
  /** For tests: replaces the scrypt check (default verifyAdminToken from ../pki/tokens.ts). */
  verifyAdminToken?: (hash: string, token: string) => Promise<boolean>;
  /** Called after an agent is revoked, to drop its live connection. */
  onRevoked(agentId: string): void;
  /** Called after each change to policies or their bindings, to push the new version to agents. */
  onPoliciesChanged(): void;
  /** Called after a command was queued for the agent, to send it at once if it is connected. */
  onCommandQueued(agentId: string): void;
  /** The jobs agents connected to this instance run now. */
  liveJobs: LiveJobs;
  /** Whether the agent is connected to this instance (preferred for a vault rescan). */
  isConnected(agentId: string): boolean;
}

/** The API's request handler, with its routes (`method`, OpenAPI `path`) for the document and tests. */
export type RestApi = ((req: IncomingMessage, res: ServerResponse) => void) & { routes: { method: string; path: string }[] };

/**
 * Makes an enrollment token for the agents' address `wsUrl` and stores its hash: what
 * `POST /v1/enrollment-tokens` and `cairn control-plane token create` do.
 */
export async function issueEnrollmentToken(
  catalog: Catalog,
  options: { wsUrl: string; caFingerprint: string; ttlSeconds: number; clock: Clock },
): Promise<{ token: string; id: string; expiresAt: string }> {
  const made = createEnrollmentToken({ url: options.wsUrl, caFingerprint: options.caFingerprint, ttlMs: options.ttlSeconds * 1000, clock: options.clock });
  await catalog.addEnrollmentToken({
    id: made.id,
    secretHash: made.secretHash,
    expiresAt: made.expiresAt.toISOString(),
    createdAt: options.clock.now().toISOString(),
  });
  return { token: made.token, id: made.id, expiresAt: made.expiresAt.toISOString() };
}

/**
 * The control plane's JSON API. Contracts: every answer is JSON; every failure is
 * `{ error: { code, message } }` with the status of its code and never a stack trace; every route
 * but GET /v1/health, GET /v1/openapi.json and POST /v1/enroll needs `Authorization: Bearer <admin token>`; no answer carries a secret's hash.
 */
export function createRestApi(deps: RestApiDeps): RestApi {
  const { catalog, clock } = deps;
  // SHA-256 of admin tokens already checked with scrypt: the scrypt cost is for the stored hash, not
  // for every request. Only right tokens are remembered, so the set cannot grow past the few in use.
  const verifiedAdmin = new Set<string>();
  // scrypt verifications running now (bounded by MAX_ADMIN_VERIFICATIONS).
  let verifying = 0;

  const started = clock.now().getTime();
  const routes: Route[] = [
    {
      // For monitoring and service checks: no token, no secrets, no catalog query.
      method: 'GET',
      path: '/v1/health',
      admin: false,
      handler: async () => ({
        status: 200,
        body: { status: 'ok', version: cairnVersion(), uptimeSeconds: Math.round((clock.now().getTime() - started) / 1000) },
      }),
    },
    {
      method: 'GET',
      path: '/v1/openapi.json',
      admin: false,
      handler: async () => ({ status: 200, body: openApiDocument() }),
    },
    {
      method: 'POST',
      path: '/v1/enrollment-tokens',
      admin: true,
      handler: async (req) => {
        const body = await readJsonObject(req);
        const ttl = body.ttlSeconds;
        if (typeof ttl !== 'number' || !Number.isInteger(ttl) || ttl < 1 || ttl > MAX_ENROLLMENT_TTL_SECONDS) {
          throw new ApiError('USAGE', `ttlSeconds must be a whole number of seconds from 1 to ${MAX_ENROLLMENT_TTL_SECONDS}`);
        }
        const made = await issueEnrollmentToken(catalog, { wsUrl: deps.wsUrl, caFingerprint: deps.caFingerprint, ttlSeconds: ttl, clock });
        deps.log('info', `enrollment token ${made.id} created, expires ${made.expiresAt}`);
        return { status: 201, body: made };
      },
    },
    {
      method: 'GET',
      path: '/v1/agents',
      admin: true,
      handler: async () => ({ status: 200, body: { agents: (await catalog.listAgents()).map(publicAgent) } }),
    },
    {
      method: 'POST',
      path: '/v1/agents/{id}/revoke',
      admin: true,
      handler: async (_req, [agentId]) => {
        await catalog.revokeAgent(agentId, clock.now().toISOString());
        deps.onRevoked(agentId);
        const agent = await catalog.getAgent(agentId);
        if (agent === undefined) throw new ApiError('NOT_FOUND', `no agent ${agentId}`);
        deps.log('info', `agent ${agentId} revoked`);
        return { status: 200, body: { agent: publicAgent(agent) } };
      },
    },
    {
      method: 'GET',
      path: '/v1/policies',
      admin: true,
      handler: async () => ({ status: 200, body: { policies: await catalog.listPolicies(), policyVersion: await catalog.policyVersion() } }),
    },
    {
      method: 'POST',
      path: '/v1/policies',
      admin: true,
      handler: async (req) => {
        const body = await readJsonObject(req);
        checkPolicyInput(body);
        const policy = body as unknown as Omit<PolicyRecord, 'vaults'> & { vaults?: string[] };
        const existing = await catalog.listPolicies();
        if (existing.some((p) => p.name === policy.name)) throw new ApiError('ALREADY_EXISTS', `a policy named ${JSON.stringify(policy.name)} exists already`);
        const record: PolicyRecord = { ...policy, vaults: policy.vaults ?? [] };
        checkPolicySet([...existing, record]);
        const version = await catalog.createPolicy(record);
        return policyChanged(201, `policy ${record.name} created`, record.name, version);
      },
    },
    {
      method: 'GET',
      path: '/v1/policies/{name}',
      admin: true,
      handler: async (_req, [raw]) => ({ status: 200, body: { policy: await knownPolicy(nameParam(raw)) } }),
    },
    {
      method: 'PUT',
      path: '/v1/policies/{name}',
      admin: true,
      handler: async (req, [raw]) => {
        const name = nameParam(raw);
        const body = await readJsonObject(req);
        const old = await knownPolicy(name);
        if (body.name !== undefined && body.name !== name) throw new ApiError('USAGE', 'name cannot be changed; create a policy with the new name and delete this one');
        const merged = { ...old, ...body, name };
        checkPolicyInput(merged);
        checkPolicySet((await catalog.listPolicies()).map((p) => (p.name === name ? (merged as PolicyRecord) : p)));
        const { name: _same, ...changes } = body;
        const version = await catalog.updatePolicy(name, changes as PolicyChanges);
        return policyChanged(200, `policy ${name} updated`, name, version);
      },
    },
    {
      method: 'DELETE',
      path: '/v1/policies/{name}',
      admin: true,
      handler: async (_req, [raw]) => {
        const name = nameParam(raw);
        const version = await catalog.deletePolicy(name);
        deps.onPoliciesChanged();
        deps.log('info', `policy ${name} deleted (policy version ${version})`);
        return { status: 200, body: { policyVersion: version } };
      },
    },
    bindRoute('bind'),
    bindRoute('unbind'),
    {
      method: 'GET',
      path: '/v1/vaults',
      admin: true,
      handler: async () => ({ status: 200, body: { vaults: await catalog.listVaults() } }),
    },
    {
      method: 'PUT',
      path: '/v1/vaults/{name}',
      admin: true,
      handler: async (req, [raw]) => {
        const name = nameParam(raw);
        checkVaultName(name);
        const body = await readJsonObject(req);
        onlyFields(body, ['type', 'location', 'capacityBytes']);
        // The catalog checks type, location (no credentials) and capacity and names the field.
        const vault = { name, type: body.type, location: body.location, capacityBytes: body.capacityBytes ?? null } as VaultInput;
        const existed = (await catalog.listVaults()).some((v) => v.name === name);
        await catalog.upsertVault(vault);
        const stored = (await catalog.listVaults()).find((v) => v.name === name);
        deps.log('info', `vault ${name} ${existed ? 'updated' : 'created'}`);
        return { status: existed ? 200 : 201, body: { vault: stored } };
      },
    },
    {
      method: 'POST',
      path: '/v1/enroll',
      admin: false,
      handler: async (req) => enroll(await readJsonObject(req)),
    },
    ...operationRoutes(deps),
  ];
  const compiled = routes.map((route) => ({ route, pattern: pathPattern(route.path) }));

  function bindRoute(action: 'bind' | 'unbind'): Route {
    return {
      method: 'POST',
      path: `/v1/policies/{name}/${action}`,
      admin: true,
      handler: async (req, [raw]) => {
        const name = nameParam(raw);
        const body = await readJsonObject(req);
        onlyFields(body, ['vault']);
        if (typeof body.vault !== 'string') throw new ApiError('USAGE', 'vault must be the name of a vault');
        const vault = body.vault;
        const old = await knownPolicy(name);
        if (action === 'bind') {
          const bound = { ...old, vaults: [...new Set([...old.vaults, vault])] };
          checkPolicySet((await catalog.listPolicies()).map((p) => (p.name === name ? bound : p)));
        }
        const version = action === 'bind' ? await catalog.bindPolicy(name, vault) : await catalog.unbindPolicy(name, vault);
        return policyChanged(200, `policy ${name} ${action === 'bind' ? 'bound to' : 'unbound from'} vault ${vault}`, name, version);
      },
    };
  }

  async function knownPolicy(name: string): Promise<PolicyRecord> {
    const policy = await catalog.getPolicy(name);
    if (policy === undefined) throw new ApiError('NOT_FOUND', `no policy ${JSON.stringify(name)}`);
    return policy;
  }

  /** After a policy change: push, log, and answer with the policy and the version. */
  async function policyChanged(status: number, what: string, name: string, version: number): Promise<{ status: number; body: unknown }> {
    deps.onPoliciesChanged();
    deps.log('info', `${what} (policy version ${version})`);
    return { status, body: { policy: await knownPolicy(name), policyVersion: version } };
  }

  async function enroll(body: Record<string, unknown>): Promise<{ status: number; body: unknown }> {
    const { token, hostname, inventory } = body;
    if (typeof token !== 'string') throw new ApiError('USAGE', 'token must be the enrollment token text');
    if (typeof hostname !== 'string' || hostname.length < 1 || hostname.length > MAX_HOSTNAME || /\p{Cc}/u.test(hostname)) {
      throw new ApiError('USAGE', `hostname must be 1-${MAX_HOSTNAME} characters without control characters`);
    }
    if (inventory !== undefined && inventory !== null && (typeof inventory !== 'object' || Array.isArray(inventory))) {
      throw new ApiError('USAGE', 'inventory must be an object or null');
    }
    // Expiry is judged by the stored record below, not by the expiry the client's copy claims, so
    // parse with a clock at 1970: the token's own expiry never refuses it here.
    const parsed = parseEnrollmentToken(token, { now: () => new Date(0) });
    const now = clock.now();
    const stored = await catalog.getEnrollmentToken(parsed.id);
    const check =
      stored === undefined
        ? 'wrong'
        : verifyEnrollmentSecret(
            { id: stored.id, secretHash: stored.secretHash, expiresAt: new Date(stored.expiresAt), used: stored.usedAt !== null },
            parsed.secret,
            now,
          );
    if (check !== 'ok') throw enrollmentRefused(check, parsed.id);
    // Of concurrent requests with the same token exactly one gets past this line.
    const used = await catalog.useEnrollmentToken(parsed.id, now.toISOString());
    if (used === undefined) {
      const again = await catalog.getEnrollmentToken(parsed.id);
      throw enrollmentRefused(again?.usedAt != null ? 'reused' : 'expired', parsed.id);
    }
    const credential = issueAgentCredential();
    await catalog.addAgent({
      agentId: credential.agentId,
      credentialHash: credential.secretHash,
      hostname,
      inventory: (inventory ?? null) as JsonValue,
      enrolledAt: now.toISOString(),
    });
    deps.log('info', `agent ${credential.agentId} (${hostname}) enrolled with token ${parsed.id}`);
    return { status: 200, body: { agentId: credential.agentId, credential: credential.secret } };
  }

  function enrollmentRefused(check: 'wrong' | 'expired' | 'reused', id: string): ApiError {
    switch (check) {
      case 'reused':
        deps.log('warn', `enrollment token ${id} presented again after it was used: it may have been copied`);
        return new ApiError('ENROLLMENT_REUSED', `the enrollment token ${id} was used already (reused); create a new one`);
      case 'expired':
        return new ApiError('ENROLLMENT_EXPIRED', `the enrollment token ${id} has expired; create a new one`);
      case 'wrong':
        return new ApiError('ENROLLMENT_WRONG', 'the enrollment token is not known to this control plane or its secret is wrong');
    }
  }

  async function isAdmin(req: IncomingMessage): Promise<boolean> {
    const match = /^Bearer (\S{1,1024})$/.exec(req.headers.authorization ?? '');
    if (match === null) return false;
    const key = createHash('sha256').update(match[1]).digest('hex');
    if (verifiedAdmin.has(key)) return true;
    // Each unknown token costs a 32 MiB scrypt: at most MAX_ADMIN_VERIFICATIONS at once, so a flood
    // of wrong tokens cannot exhaust CPU, memory or the threadpool; beyond that, 503 and Retry-After.
    if (verifying >= MAX_ADMIN_VERIFICATIONS) {
      throw new ApiError('BUSY', 'too many admin token checks at once; try again shortly', {
        status: 503,
        headers: { 'retry-after': String(ADMIN_RETRY_AFTER_SECONDS) },
      });
    }
    verifying++;
    try {
      if (!(await (deps.verifyAdminToken ?? verifyAdminToken)(deps.adminTokenHash, match[1]))) return false;
    } finally {
      verifying--;
    }
    verifiedAdmin.add(key);
    return true;
  }

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    void (async () => {
      try {
        const url = new URL(req.url ?? '/', 'https://cairn.invalid');
        const path = url.pathname;
        let found: { route: Route; params: string[] } | undefined;
        for (const { route, pattern } of compiled) {
          const match = route.method === req.method ? pattern.exec(path) : null;
          if (match !== null) {
            found = { route, params: match.slice(1) };
            break;
          }
        }
        if (found === undefined) throw new ApiError('ROUTE_NOT_FOUND', `no route ${req.method} ${path}`);
        if (found.route.admin && !(await isAdmin(req))) {
          throw new ApiError('UNAUTHENTICATED', 'this call needs "Authorization: Bearer <admin token>" with a valid admin token');
        }
        const { status, body } = await found.route.handler(req, found.params, url.searchParams);
        send(res, status, body);
      } catch (err) {
        const { error, internal } = toApiError(err);
        if (internal) deps.log('error', `${req.method} ${req.url}: ${(err as Error)?.stack ?? String(err)}`);
        send(res, error.status, { error: { code: error.code, message: error.message } }, error.headers);
        // Whatever of the body is still coming is read and dropped, so the client sees the answer.
        req.resume();
      }
    })();
  };
  return Object.assign(handle, { routes: routes.map((r) => ({ method: r.method, path: r.path })) });
}
