import { hexId, type Clock, type IdSource } from '../../shared/clock.js';
import type { CommandMessage } from '../../shared/protocol/messages.js';
import type { Catalog, CommandRecord, JsonValue } from '../catalog/catalog.js';
import type { LiveJob } from './live-jobs.js';

/**
 * Commands as the control plane keeps and shows them. A catalog command's `args` holds the protocol
 * command's `vault`, `resource` and `args` (`StoredCommandArgs`), so the `command` message sent to the
 * agent is rebuilt from the catalog alone, identically on every send and by every instance.
 */

export type CommandAction = CommandMessage['action'];

/** What a catalog command's `args` JSON holds. */
export interface StoredCommandArgs {
  vault: string;
  resource: string | null;
  args: Record<string, JsonValue>;
}

/** What the protocol command carries besides its envelope and commandId. */
export type CommandSpec = { agentId: string; action: CommandAction } & StoredCommandArgs;

export type CommandStatus = 'pending' | 'running' | 'ok' | 'failed' | 'cancelled';

/** A command as the REST API shows it. */
export interface CommandView {
  commandId: string;
  agentId: string;
  action: string;
  vault: string | null;
  resource: string | null;
  args: JsonValue;
  createdAt: string;
  completedAt: string | null;
  status: CommandStatus;
  /** `{status, backup, error}` from the job-result that completed it; null while not completed. */
  result: JsonValue | null;
  progress: { percent: number | null; bytesDone: number | null; bytesTotal: number | null; rateBytesPerSecond: number | null; updatedAt: string } | null;
}

/** Queues a command in the catalog with a new id; returns the stored record. */
export async function queueCommand(catalog: Catalog, spec: CommandSpec, deps: { clock: Clock; ids: IdSource }): Promise<CommandRecord> {
  const record = {
    commandId: `cmd_${hexId(deps.ids, 12)}`,
    agentId: spec.agentId,
    action: spec.action,
    args: { vault: spec.vault, resource: spec.resource, args: spec.args },
    createdAt: deps.clock.now().toISOString(),
  };
  await catalog.addCommand(record);
  return { ...record, completedAt: null, result: null };
}

/** The stored vault/resource/args of a command; undefined for a record not written by queueCommand. */
export function storedArgs(record: CommandRecord): StoredCommandArgs | undefined {
  const a = record.args;
  if (a === null || typeof a !== 'object' || Array.isArray(a)) return undefined;
  const { vault, resource, args } = a;
  if (typeof vault !== 'string' || !(resource === null || typeof resource === 'string')) return undefined;
  if (args === null || typeof args !== 'object' || Array.isArray(args)) return undefined;
  return { vault, resource, args };
}

/** The `command` message for a stored command; undefined when its stored args are not a command's. */
export function commandMessage(id: string, record: CommandRecord): CommandMessage | undefined {
  const stored = storedArgs(record);
  if (stored === undefined) return undefined;
  return { v: 1, type: 'command', id, commandId: record.commandId, action: record.action, ...stored } as CommandMessage;
}

/** The REST view: status from the result, or running while a live job carries the command's id. */
export function commandView(record: CommandRecord, live: LiveJob | undefined): CommandView {
  const stored = storedArgs(record);
  let status: CommandStatus = 'pending';
  if (record.completedAt !== null) {
    const s = (record.result as { status?: unknown } | null)?.status;
    status = s === 'ok' || s === 'failed' || s === 'cancelled' ? s : 'failed';
  } else if (live !== undefined) {
    status = 'running';
  }
  return {
    commandId: record.commandId,
    agentId: record.agentId,
    action: record.action,
    vault: stored?.vault ?? null,
    resource: stored?.resource ?? null,
    args: stored?.args ?? record.args,
    createdAt: record.createdAt,
    completedAt: record.completedAt,
    status,
    result: record.result,
    progress:
      live === undefined || record.completedAt !== null
        ? null
        : { percent: live.percent, bytesDone: live.bytesDone, bytesTotal: live.bytesTotal, rateBytesPerSecond: live.rateBytesPerSecond, updatedAt: live.updatedAt },
  };
}
