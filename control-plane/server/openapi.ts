/**
 * The REST API as an OpenAPI 3.1 document, served at `GET /v1/openapi.json`. Written by hand beside
 * the routes; a test checks that its paths and methods are exactly the router's, so a route cannot
 * be added or dropped without the document following.
 */

type Schema = Record<string, unknown>;

const ref = (name: string): Schema => ({ $ref: `#/components/schemas/${name}` });
const str = (description?: string): Schema => ({ type: 'string', ...(description ? { description } : {}) });
const time: Schema = { type: 'string', format: 'date-time' };
const nullable = (schema: Schema): Schema => ({ anyOf: [schema, { type: 'null' }] });
const int: Schema = { type: 'integer', minimum: 0 };
const bool: Schema = { type: 'boolean' };
const arrayOf = (items: Schema): Schema => ({ type: 'array', items });
const obj = (properties: Record<string, Schema>, required: string[] = Object.keys(properties)): Schema => ({
  type: 'object',
  properties,
  required,
  additionalProperties: false,
});

const schemas: Record<string, Schema> = {
  Error: obj({ error: obj({ code: str('a stable code: those of shared/errors.ts plus UNAUTHENTICATED, ENROLLMENT_*, ROUTE_NOT_FOUND, TOO_LARGE, CONFLICT'), message: str('what, where, what to do') }) }),
  Agent: obj({
    agentId: str(),
    hostname: str(),
    inventory: { description: 'what the agent reported at enrollment (any JSON), or null' },
    enrolledAt: time,
    lastSeen: nullable(time),
    status: { enum: ['online', 'offline'] },
    revokedAt: nullable(time),
    policyVersionAcked: int,
  }),
  Vault: obj({
    name: str(),
    type: { enum: ['server', 'disk', 'filesystem', 'hybrid'] },
    location: str('where the vault is; empty when only agents know it'),
    capacityBytes: nullable(int),
    usedBytes: int,
    backupCount: int,
    resources: arrayOf(str()),
    policies: arrayOf(str()),
  }),
  VaultInput: obj({ type: { enum: ['server', 'disk', 'filesystem', 'hybrid'] }, location: str('no credentials'), capacityBytes: nullable(int) }, ['type', 'location']),
  Resource: obj({ name: str(), agentId: str(), vault: str(), disks: arrayOf(str()) }),
  Trigger: obj({ patterns: arrayOf(str()), cron: str(), timezone: str() }, ['timezone']),
  Retention: obj(
    {
      max_backups: { type: 'integer' },
      retention_duration_days: { type: 'integer' },
      day_backups: { type: 'integer' },
      week_backups: { type: 'integer' },
      month_backups: { type: 'integer' },
      year_backups: { type: 'integer' },
      timezone: str(),
    },
    [],
  ),
  Policy: obj({ name: str(), enabled: bool, trigger: ref('Trigger'), retention: ref('Retention'), vaults: arrayOf(str()) }),
  PolicyInput: obj({ name: str(), enabled: bool, trigger: ref('Trigger'), retention: ref('Retention'), vaults: arrayOf(str()) }, ['name', 'enabled', 'trigger', 'retention']),
  PolicyChanges: obj({ enabled: bool, trigger: ref('Trigger'), retention: ref('Retention'), vaults: arrayOf(str()) }, []),
  Backup: obj({
    id: str(),
    name: str(),
    vault: str(),
    resource: str(),
    agentId: nullable(str('null: known from a vault scan only')),
    kind: { enum: ['full', 'incremental'] },
    startedAt: time,
    finishedAt: time,
    bytesRead: int,
    bytesStored: int,
    consistency: { enum: ['crash_consistent', 'app_consistent'] },
    logicalBytes: nullable(int),
    host: nullable(str()),
    status: { enum: ['available', 'deleted'] },
    deletedAt: nullable(time),
  }),
  Problem: obj({ code: str(), message: str() }),
  CommandResult: obj(
    {
      status: { enum: ['ok', 'failed', 'cancelled'] },
      backup: { anyOf: [{ type: 'object' }, { type: 'null' }] },
      error: nullable(ref('Problem')),
      catalogError: { ...ref('Problem'), description: 'present when the catalog refused the backup the job reported (it is not catalogued): why' },
    },
    ['status', 'backup', 'error'],
  ),
  Progress: obj({ percent: nullable({ type: 'number' }), bytesDone: nullable(int), bytesTotal: nullable(int), rateBytesPerSecond: nullable({ type: 'number' }), updatedAt: time }),
  Command: obj({
    commandId: str(),
    agentId: str(),
    action: { enum: ['backup-now', 'restore', 'verify', 'delete', 'catalog-sync'] },
    vault: nullable(str()),
    resource: nullable(str()),
    args: { type: 'object', description: 'by action, as the protocol command: backup-now {full, name}; restore {backupId, target, disk, force}; verify {readData}; delete {backupId}; catalog-sync {}' },
    createdAt: time,
    completedAt: nullable(time),
    status: { enum: ['pending', 'running', 'ok', 'failed', 'cancelled'] },
    result: nullable(ref('CommandResult')),
    progress: nullable(ref('Progress')),
  }),
  Job: obj({
    agentId: str(),
    jobId: str(),
    commandId: nullable(str()),
    kind: nullable({ enum: ['backup', 'prune', 'gc', 'restore', 'verify', 'delete'] }),
    resource: nullable(str()),
    vault: nullable(str()),
    percent: nullable({ type: 'number' }),
    bytesDone: nullable(int),
    bytesTotal: nullable(int),
    rateBytesPerSecond: nullable({ type: 'number' }),
    updatedAt: time,
  }),
  Dashboard: obj({
    agents: obj({ total: int, online: int, offline: int, revoked: int }),
    jobs24h: obj({ ok: int, failed: int, cancelled: int }),
    vaults: arrayOf(
      obj({
        name: str(),
        type: str(),
        capacityBytes: nullable(int),
        usedBytes: int,
        logicalBytes: int,
        dedupRatio: nullable({ type: 'number', description: 'logicalBytes / usedBytes; null when usedBytes is 0' }),
        backupCount: int,
      }),
    ),
    generatedAt: time,
  }),
};

interface Operation {
  summary: string;
  admin?: boolean;
  params?: string[];
  query?: Record<string, Schema>;
  body?: Schema;
  bodyOptional?: boolean;
  status: number;
  /** Another success status with the same body (PUT answers 200 for a change, 201 for a creation). */
  alsoStatus?: number;
  response: Schema;
  errors: number[];
}

const policyVersion: Schema = { type: 'integer', minimum: 0 };
const withVersion = obj({ policy: ref('Policy'), policyVersion });

const operations: Record<string, Record<string, Operation>> = {
  '/v1/health': {
    get: {
      summary: 'liveness for monitoring (no admin token)',
      admin: false,
      status: 200,
      response: obj({ status: { type: 'string', enum: ['ok'] }, version: str(), uptimeSeconds: { type: 'integer', minimum: 0 } }),
      errors: [],
    },
  },
  '/v1/openapi.json': { get: { summary: 'this document', admin: false, status: 200, response: { type: 'object' }, errors: [] } },
  '/v1/enrollment-tokens': {
    post: { summary: 'create an enrollment token', body: obj({ ttlSeconds: { type: 'integer', minimum: 1, maximum: 2592000 } }), status: 201, response: obj({ token: str(), id: str(), expiresAt: time }), errors: [400] },
  },
  '/v1/enroll': {
    post: {
      summary: 'enroll an agent with a token (no admin token)',
      admin: false,
      body: obj({ token: str(), hostname: str(), inventory: { type: ['object', 'null'] } }, ['token', 'hostname']),
      status: 200,
      response: obj({ agentId: str(), credential: str() }),
      errors: [400],
    },
  },
  '/v1/dashboard': { get: { summary: 'counts of agents, job results of the last 24 h, vault usage', status: 200, response: ref('Dashboard'), errors: [] } },
  '/v1/agents': { get: { summary: 'every agent, revoked ones included', status: 200, response: obj({ agents: arrayOf(ref('Agent')) }), errors: [] } },
  '/v1/agents/{id}': { get: { summary: 'one agent', params: ['id'], status: 200, response: obj({ agent: ref('Agent') }), errors: [404] } },
  '/v1/agents/{id}/revoke': { post: { summary: 'revoke an agent and close its connection', params: ['id'], status: 200, response: obj({ agent: ref('Agent') }), errors: [404] } },
  '/v1/resources': {
    get: { summary: 'resources agents reported', query: { agent: str(), vault: str() }, status: 200, response: obj({ resources: arrayOf(ref('Resource')) }), errors: [400] },
  },
  '/v1/policies': {
    get: { summary: 'every policy and the policy version', status: 200, response: obj({ policies: arrayOf(ref('Policy')), policyVersion }), errors: [] },
    post: { summary: 'create a policy', body: ref('PolicyInput'), status: 201, response: withVersion, errors: [400, 404, 409] },
  },
  '/v1/policies/{name}': {
    get: { summary: 'one policy', params: ['name'], status: 200, response: obj({ policy: ref('Policy') }), errors: [404] },
    put: { summary: 'change a policy (the fields given)', params: ['name'], body: ref('PolicyChanges'), status: 200, response: withVersion, errors: [400, 404] },
    delete: { summary: 'delete a policy and its bindings', params: ['name'], status: 200, response: obj({ policyVersion }), errors: [404] },
  },
  '/v1/policies/{name}/bind': { post: { summary: 'bind a policy to a vault', params: ['name'], body: obj({ vault: str() }), status: 200, response: withVersion, errors: [400, 404] } },
  '/v1/policies/{name}/unbind': { post: { summary: 'unbind a policy from a vault', params: ['name'], body: obj({ vault: str() }), status: 200, response: withVersion, errors: [400, 404] } },
  '/v1/vaults': { get: { summary: 'every vault with usage, resources and policies', status: 200, response: obj({ vaults: arrayOf(ref('Vault')) }), errors: [] } },
  '/v1/vaults/{name}': { put: { summary: 'create (201) or change (200) a vault', params: ['name'], body: ref('VaultInput'), status: 201, alsoStatus: 200, response: obj({ vault: ref('Vault') }), errors: [400] } },
  '/v1/vaults/{name}/verify': {
    post: {
      summary: 'queue a verify command per resource of the vault, to the agent holding it',
      params: ['name'],
      body: obj({ readData: bool }, []),
      bodyOptional: true,
      status: 202,
      response: obj({ commands: arrayOf(ref('Command')) }),
      errors: [400, 404, 409],
    },
  },
  '/v1/vaults/{name}/rescan': {
    post: {
      summary: 'queue a catalog-sync command to one agent with the vault (connected or online ones first)',
      params: ['name'],
      body: obj({}, []),
      bodyOptional: true,
      status: 202,
      response: obj({ command: ref('Command') }),
      errors: [404, 409],
    },
  },
  '/v1/backups': {
    get: {
      summary: 'backups, newest first',
      query: {
        vault: str(),
        resource: str(),
        agent: str(),
        kind: { enum: ['full', 'incremental'] },
        status: { enum: ['available', 'deleted'] },
        from: { ...time, description: 'started at or after' },
        to: { ...time, description: 'started before' },
        limit: { type: 'integer', minimum: 1, maximum: 1000, default: 100 },
        offset: { type: 'integer', minimum: 0, default: 0 },
      },
      status: 200,
      response: obj({ backups: arrayOf(ref('Backup')) }),
      errors: [400],
    },
  },
  '/v1/backups/{id}': {
    get: { summary: 'one backup', params: ['id'], status: 200, response: obj({ backup: ref('Backup') }), errors: [404] },
    delete: { summary: "queue a delete command to the agent holding the backup's resource", params: ['id'], status: 202, response: obj({ command: ref('Command') }), errors: [404, 409] },
  },
  '/v1/checkpoints': {
    post: {
      summary: "queue a backup-now per resource of a vault (or the ones named), each to the agent holding it",
      body: obj({ vault: str(), resources: arrayOf(str()), full: bool, name: str() }, ['vault']),
      status: 202,
      response: obj({ checkpoint: obj({ id: str(), vault: str(), commands: arrayOf(ref('Command')) }) }),
      errors: [400, 404, 409],
    },
  },
  '/v1/restores': {
    post: {
      summary: "queue a restore command (to the agent holding the backup's resource, or agentId)",
      body: obj({ backupId: str(), target: str('a path on the agent\'s host'), agentId: str(), disk: nullable(int), force: bool }, ['backupId', 'target']),
      status: 202,
      response: obj({ command: ref('Command') }),
      errors: [400, 404, 409],
    },
  },
  '/v1/commands': {
    get: {
      summary: 'commands, newest first',
      query: { agent: str(), pending: bool, limit: { type: 'integer', minimum: 1, maximum: 1000, default: 100 }, offset: { type: 'integer', minimum: 0, default: 0 } },
      status: 200,
      response: obj({ commands: arrayOf(ref('Command')) }),
      errors: [400],
    },
  },
  '/v1/commands/{id}': { get: { summary: 'one command', params: ['id'], status: 200, response: obj({ command: ref('Command') }), errors: [404] } },
  '/v1/jobs': { get: { summary: 'jobs the agents connected to this instance run now', status: 200, response: obj({ jobs: arrayOf(ref('Job')) }), errors: [] } },
};

const json = (schema: Schema): Schema => ({ content: { 'application/json': { schema } } });

/** The OpenAPI 3.1 document of the API; a fresh copy each call. */
export function openApiDocument(): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const [path, methods] of Object.entries(operations)) {
    paths[path] = {};
    for (const [method, op] of Object.entries(methods)) {
      const admin = op.admin ?? true;
      const parameters = [
        ...(op.params ?? []).map((name) => ({ name, in: 'path', required: true, schema: str(), description: 'percent-encoded' })),
        ...Object.entries(op.query ?? {}).map(([name, schema]) => ({ name, in: 'query', required: false, schema })),
      ];
      // 503: too many admin token checks at once (with Retry-After).
      const errors = [...new Set([...(admin ? [401, 503] : []), ...op.errors, 404, 500])].sort();
      paths[path]![method] = {
        summary: op.summary,
        ...(admin ? {} : { security: [] }),
        ...(parameters.length ? { parameters } : {}),
        ...(op.body ? { requestBody: { required: !op.bodyOptional, ...json(op.body) } } : {}),
        responses: {
          [String(op.status)]: { description: 'success', ...json(op.response) },
          ...(op.alsoStatus === undefined ? {} : { [String(op.alsoStatus)]: { description: 'success', ...json(op.response) } }),
          ...Object.fromEntries(errors.map((code) => [String(code), { description: 'error', ...json(ref('Error')) }])),
        },
      };
    }
  }
  return structuredClone({
    openapi: '3.1.0',
    info: { title: 'Cairn control plane', version: '1', description: 'JSON in and out; every failure is {error: {code, message}}.' },
    components: {
      schemas,
      securitySchemes: { adminToken: { type: 'http', scheme: 'bearer', description: 'the admin token printed at first start' } },
    },
    security: [{ adminToken: [] }],
    paths,
  });
}
