import { hexId, type Clock, type IdSource } from '../../shared/clock.js';
import type { AgentRecord, BackupRecord, Catalog, CommandRecord, ResourceRecord } from '../catalog/catalog.js';
import { checkCommand, nameParam, onlyFields, QueryReader, readJsonObject, type Route } from './api-io.js';
import { commandView, queueCommand, type CommandSpec } from './commands.js';
import { ApiError } from './http-error.js';
import type { LiveJobs } from './live-jobs.js';
import type { Log } from './log.js';

/** Largest page of backups or commands one request returns; the default is DEFAULT_PAGE. */
export const MAX_PAGE = 1000;
export const DEFAULT_PAGE = 100;
const DAY_MS = 24 * 3600_000;

export interface OperationDeps {
  catalog: Catalog;
  clock: Clock;
  ids: IdSource;
  log: Log;
  liveJobs: LiveJobs;
  onCommandQueued(agentId: string): void;
  isConnected(agentId: string): boolean;
}

/** An agent as the API shows it: everything but the credential hash, with the acked policy version. */
export function publicAgent(agent: AgentRecord): Omit<AgentRecord, 'credentialHash' | 'policyAck'> & { policyVersionAcked: number } {
  const { credentialHash: _hidden, policyAck, ...rest } = agent;
  return { ...rest, policyVersionAcked: policyAck };
}

/**
 * The API's operations: dashboard, agents, resources, backups, commands (delete, checkpoint, restore,
 * verify, rescan) and live jobs. Commands are checked with the protocol's schema, queued in the
 * catalog, then sent at once to the agent if it is connected (else at its next `welcome`); each
 * answers 202 with the queued command. A command is only queued for an enrolled, unrevoked agent.
 */
export function operationRoutes(deps: OperationDeps): Route[] {
  const { catalog, clock } = deps;

  async function knownAgent(agentId: string): Promise<AgentRecord> {
    const agent = await catalog.getAgent(agentId);
    if (agent === undefined) throw new ApiError('NOT_FOUND', `no agent ${JSON.stringify(agentId)}`);
    return agent;
  }

  async function knownBackup(id: string): Promise<BackupRecord> {
    const backup = await catalog.getBackup(id);
    if (backup === undefined) throw new ApiError('NOT_FOUND', `no backup ${JSON.stringify(id)}`);
    return backup;
  }

  async function knownVault(name: string): Promise<void> {
    if (!(await catalog.listVaults()).some((v) => v.name === name)) throw new ApiError('NOT_FOUND', `no vault ${JSON.stringify(name)}`);
  }

  /** The agent that may run a command for `resource`: the one whose config holds it. */
  async function owner(resource: string, fallback: string | null, what: string): Promise<AgentRecord> {
    const held = (await catalog.listResources()).find((r) => r.name === resource);
    const agentId = held?.agentId ?? fallback;
    if (agentId === null) throw new ApiError('CONFLICT', `${what}: no agent holds resource ${JSON.stringify(resource)}; an agent must report it first`);
    return usableAgent(agentId, what);
  }

  async function usableAgent(agentId: string, what: string): Promise<AgentRecord> {
    const agent = await catalog.getAgent(agentId);
    if (agent === undefined) throw new ApiError('CONFLICT', `${what}: agent ${agentId} is not known to this control plane`);
    if (agent.revokedAt !== null) throw new ApiError('CONFLICT', `${what}: agent ${agentId} was revoked at ${agent.revokedAt}; enroll it again or pick another agent`);
    return agent;
  }

  /** Queues checked commands in order and notifies their agents; returns their views. */
  async function queue(specs: CommandSpec[]): Promise<ReturnType<typeof commandView>[]> {
    for (const spec of specs) checkCommand({ action: spec.action, vault: spec.vault, resource: spec.resource, args: spec.args } as Parameters<typeof checkCommand>[0]);
    const records: CommandRecord[] = [];
    for (const spec of specs) {
      const record = await queueCommand(catalog, spec, deps);
      records.push(record);
      deps.onCommandQueued(spec.agentId);
      deps.log('info', `command ${record.commandId} (${spec.action} ${spec.vault}${spec.resource === null ? '' : `/${spec.resource}`}) queued for agent ${spec.agentId}`);
    }
    return records.map((r) => commandView(r, undefined));
  }

  return [
    {
      method: 'GET',
      path: '/v1/dashboard',
      admin: true,
      handler: async () => {
        const now = clock.now();
        const agents = await catalog.listAgents();
        const revoked = agents.filter((a) => a.revokedAt !== null).length;
        const online = agents.filter((a) => a.revokedAt === null && a.status === 'online').length;
        const jobs24h = { ok: 0, failed: 0, cancelled: 0 };
        for (const r of await catalog.listJobResults({ from: new Date(now.getTime() - DAY_MS).toISOString() })) jobs24h[r.status]++;
        const logical = new Map<string, number>();
        for (const b of await catalog.listBackups({ status: 'available' })) logical.set(b.vault, (logical.get(b.vault) ?? 0) + (b.logicalBytes ?? 0));
        const vaults = (await catalog.listVaults()).map((v) => {
          const logicalBytes = logical.get(v.name) ?? 0;
          return {
            name: v.name,
            type: v.type,
            capacityBytes: v.capacityBytes,
            usedBytes: v.usedBytes,
            logicalBytes,
            dedupRatio: v.usedBytes === 0 ? null : logicalBytes / v.usedBytes,
            backupCount: v.backupCount,
          };
        });
        return {
          status: 200,
          body: {
            agents: { total: agents.length, online, offline: agents.length - revoked - online, revoked },
            jobs24h,
            vaults,
            generatedAt: now.toISOString(),
          },
        };
      },
    },
    {
      method: 'GET',
      path: '/v1/agents/{id}',
      admin: true,
      handler: async (_req, [raw]) => ({ status: 200, body: { agent: publicAgent(await knownAgent(nameParam(raw))) } }),
    },
    {
      method: 'GET',
      path: '/v1/resources',
      admin: true,
      handler: async (_req, _params, query) => {
        const q = new QueryReader(query, ['agent', 'vault']);
        const filter: { agentId?: string; vault?: string } = {};
        const agentId = q.string('agent');
        const vault = q.string('vault');
        if (agentId !== undefined) filter.agentId = agentId;
        if (vault !== undefined) filter.vault = vault;
        return { status: 200, body: { resources: await catalog.listResources(filter) } };
      },
    },
    {
      method: 'GET',
      path: '/v1/backups',
      admin: true,
      handler: async (_req, _params, query) => {
        const q = new QueryReader(query, ['vault', 'resource', 'agent', 'kind', 'status', 'from', 'to', 'limit', 'offset']);
        const filter = {
          vault: q.string('vault'),
          resource: q.string('resource'),
          agentId: q.string('agent'),
          kind: q.oneOf('kind', ['full', 'incremental'] as const),
          status: q.oneOf('status', ['available', 'deleted'] as const),
          from: q.time('from'),
          to: q.time('to'),
          limit: q.integer('limit', 1, MAX_PAGE) ?? DEFAULT_PAGE,
          offset: q.integer('offset', 0, Number.MAX_SAFE_INTEGER) ?? 0,
        };
        return { status: 200, body: { backups: await catalog.listBackups(defined(filter)) } };
      },
    },
    {
      method: 'GET',
      path: '/v1/backups/{id}',
      admin: true,
      handler: async (_req, [raw]) => ({ status: 200, body: { backup: await knownBackup(nameParam(raw)) } }),
    },
    {
      method: 'DELETE',
      path: '/v1/backups/{id}',
      admin: true,
      handler: async (_req, [raw]) => {
        const backup = await knownBackup(nameParam(raw));
        const what = `deleting backup ${backup.id}`;
        if (backup.status === 'deleted') throw new ApiError('CONFLICT', `${what}: it was deleted already${backup.deletedAt === null ? '' : ` at ${backup.deletedAt}`}`);
        const agent = await owner(backup.resource, backup.agentId, what);
        const [command] = await queue([{ agentId: agent.agentId, action: 'delete', vault: backup.vault, resource: backup.resource, args: { backupId: backup.id } }]);
        return { status: 202, body: { command } };
      },
    },
    {
      method: 'POST',
      path: '/v1/checkpoints',
      admin: true,
      handler: async (req) => {
        const body = await readJsonObject(req);
        onlyFields(body, ['vault', 'resources', 'full', 'name']);
        const vault = requiredString(body, 'vault');
        if (body.resources !== undefined && (!Array.isArray(body.resources) || body.resources.some((r) => typeof r !== 'string'))) {
          throw new ApiError('USAGE', 'resources must be a list of resource names');
        }
        const full = optionalBoolean(body, 'full') ?? false;
        if (body.name !== undefined && typeof body.name !== 'string') throw new ApiError('USAGE', 'name must be a string: the backups\' name');
        await knownVault(vault);
        const inVault = await catalog.listResources({ vault });
        let chosen: ResourceRecord[];
        if (body.resources === undefined) {
          if (inVault.length === 0) throw new ApiError('USAGE', `vault ${JSON.stringify(vault)} has no resources: an agent whose config backs up into it must connect first`);
          chosen = inVault;
        } else {
          const names = [...new Set(body.resources as string[])];
          if (names.length === 0) throw new ApiError('USAGE', 'resources must name at least one resource; leave it out for every resource of the vault');
          chosen = names.map((name) => {
            const found = inVault.find((r) => r.name === name);
            if (found === undefined) throw new ApiError('NOT_FOUND', `resources: vault ${JSON.stringify(vault)} has no resource ${JSON.stringify(name)}`);
            return found;
          });
        }
        for (const r of chosen) await usableAgent(r.agentId, `checkpoint of resource ${r.name}`);
        const name = (body.name as string | undefined) ?? null;
        const commands = await queue(chosen.map((r) => ({ agentId: r.agentId, action: 'backup-now', vault, resource: r.name, args: { full, name } })));
        return { status: 202, body: { checkpoint: { id: `chk_${hexId(deps.ids, 12)}`, vault, commands } } };
      },
    },
    {
      method: 'POST',
      path: '/v1/restores',
      admin: true,
      handler: async (req) => {
        const body = await readJsonObject(req);
        onlyFields(body, ['backupId', 'target', 'agentId', 'disk', 'force']);
        const backupId = requiredString(body, 'backupId');
        const target = requiredString(body, 'target');
        if (body.agentId !== undefined && typeof body.agentId !== 'string') throw new ApiError('USAGE', 'agentId must be the id of an agent');
        const disk = body.disk ?? null;
        if (disk !== null && (typeof disk !== 'number' || !Number.isInteger(disk) || disk < 0)) throw new ApiError('USAGE', 'disk must be a disk number (0-based) or null for every disk');
        const force = optionalBoolean(body, 'force') ?? false;
        const backup = await knownBackup(backupId);
        const what = `restoring backup ${backup.id}`;
        if (backup.status === 'deleted') throw new ApiError('CONFLICT', `${what}: it was deleted${backup.deletedAt === null ? '' : ` at ${backup.deletedAt}`}`);
        let agent: AgentRecord;
        if (body.agentId === undefined) {
          agent = await owner(backup.resource, backup.agentId, what);
        } else {
          await knownAgent(body.agentId as string);
          agent = await usableAgent(body.agentId as string, what);
          if ((await catalog.listResources({ agentId: agent.agentId, vault: backup.vault })).length === 0) {
            throw new ApiError('CONFLICT', `${what}: agent ${agent.agentId} has no resource in vault ${JSON.stringify(backup.vault)}, so its config does not open that vault; add the vault to its config first`);
          }
        }
        const [command] = await queue([
          { agentId: agent.agentId, action: 'restore', vault: backup.vault, resource: backup.resource, args: { backupId: backup.id, target, disk: disk as number | null, force } },
        ]);
        return { status: 202, body: { command } };
      },
    },
    {
      method: 'POST',
      path: '/v1/vaults/{name}/verify',
      admin: true,
      handler: async (req, [raw]) => {
        const vault = nameParam(raw);
        const body = await readJsonObject(req, { optional: true });
        onlyFields(body, ['readData']);
        const readData = optionalBoolean(body, 'readData') ?? false;
        await knownVault(vault);
        const resources = await catalog.listResources({ vault });
        if (resources.length === 0) throw new ApiError('USAGE', `vault ${JSON.stringify(vault)} has no resources, so no agent to verify it`);
        for (const r of resources) await usableAgent(r.agentId, `verifying resource ${r.name}`);
        const commands = await queue(resources.map((r) => ({ agentId: r.agentId, action: 'verify', vault, resource: r.name, args: { readData } })));
        return { status: 202, body: { commands } };
      },
    },
    {
      method: 'POST',
      path: '/v1/vaults/{name}/rescan',
      admin: true,
      handler: async (req, [raw]) => {
        const vault = nameParam(raw);
        const body = await readJsonObject(req, { optional: true });
        onlyFields(body, []);
        await knownVault(vault);
        const holders = [...new Set((await catalog.listResources({ vault })).map((r) => r.agentId))];
        const candidates: AgentRecord[] = [];
        for (const id of holders) {
          const agent = await catalog.getAgent(id);
          if (agent !== undefined && agent.revokedAt === null) candidates.push(agent);
        }
        if (candidates.length === 0) throw new ApiError('CONFLICT', `rescanning vault ${JSON.stringify(vault)}: no enrolled, unrevoked agent has a resource in it`);
        // Connected here first, then online elsewhere (another instance), then any.
        const rank = (a: AgentRecord): number => (deps.isConnected(a.agentId) ? 0 : a.status === 'online' ? 1 : 2);
        const agent = candidates.sort((a, b) => rank(a) - rank(b))[0]!;
        const [command] = await queue([{ agentId: agent.agentId, action: 'catalog-sync', vault, resource: null, args: {} }]);
        return { status: 202, body: { command } };
      },
    },
    {
      method: 'GET',
      path: '/v1/commands',
      admin: true,
      handler: async (_req, _params, query) => {
        const q = new QueryReader(query, ['agent', 'pending', 'limit', 'offset']);
        const filter = defined({
          agentId: q.string('agent'),
          pending: q.boolean('pending'),
          limit: q.integer('limit', 1, MAX_PAGE) ?? DEFAULT_PAGE,
          offset: q.integer('offset', 0, Number.MAX_SAFE_INTEGER) ?? 0,
        });
        const commands = (await catalog.listCommands(filter)).map((c) => commandView(c, deps.liveJobs.forCommand(c.commandId)));
        return { status: 200, body: { commands } };
      },
    },
    {
      method: 'GET',
      path: '/v1/commands/{id}',
      admin: true,
      handler: async (_req, [raw]) => {
        const id = nameParam(raw);
        const record = await catalog.getCommand(id);
        if (record === undefined) throw new ApiError('NOT_FOUND', `no command ${JSON.stringify(id)}`);
        return { status: 200, body: { command: commandView(record, deps.liveJobs.forCommand(id)) } };
      },
    },
    {
      method: 'GET',
      path: '/v1/jobs',
      admin: true,
      handler: async () => ({ status: 200, body: { jobs: deps.liveJobs.list() } }),
    },
  ];
}

function requiredString(body: Record<string, unknown>, field: string): string {
  const value = body[field];
  if (typeof value !== 'string' || value === '') throw new ApiError('USAGE', `${field} is required and must be a non-empty string`);
  return value;
}

function optionalBoolean(body: Record<string, unknown>, field: string): boolean | undefined {
  const value = body[field];
  if (value !== undefined && typeof value !== 'boolean') throw new ApiError('USAGE', `${field} must be true or false`);
  return value as boolean | undefined;
}

/** The object without its undefined fields (the catalog's filters treat absent and undefined alike, but say so). */
function defined<T extends Record<string, unknown>>(value: T): { [K in keyof T]?: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as { [K in keyof T]?: Exclude<T[K], undefined> };
}
