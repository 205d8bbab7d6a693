import { CairnError } from '../../shared/errors.js';
import { encodeMessage, ProtocolError, type Policy, type PolicyPushMessage } from '../../shared/protocol/messages.js';
import type { Catalog, PolicyRecord } from '../catalog/catalog.js';
import { ApiError } from './http-error.js';

/**
 * What the control plane pushes to agents, and the one check of what the API accepts: a policy is
 * accepted exactly when a `policy-push` carrying it passes `encodeMessage`, so the REST API and the
 * wire cannot disagree about a policy's shape.
 *
 * A policy bound to no vault is stored but not pushed: the protocol needs at least one vault per
 * policy (`Policy.vaults`), and such a policy backs nothing up on any agent.
 */

/** The policy as it travels, for policies bound to at least one vault. */
export function pushablePolicies(records: PolicyRecord[]): Policy[] {
  return records
    .filter((r) => r.vaults.length > 0)
    .map((r) => ({ name: r.name, enabled: r.enabled, vaults: [...r.vaults], trigger: r.trigger, retention: r.retention }));
}

/** The `policy-push` for `version` and `records`. */
export function policyPush(id: string, version: number, records: PolicyRecord[]): PolicyPushMessage {
  return { v: 1, type: 'policy-push', id, version, policies: pushablePolicies(records) };
}

const PREFIX = 'policy-push.policies[0]';
/** Stands in for the vaults of an unbound policy while its other fields are checked. */
const UNBOUND = 'unbound';

/**
 * Checks one policy as the API received it (a parsed JSON object with name, enabled, trigger,
 * retention and optionally vaults) with the protocol's policy schema. Throws ApiError USAGE naming
 * the field as the API client wrote it (`trigger.patterns[0]`); returns nothing when it is fine.
 */
export function checkPolicyInput(candidate: Record<string, unknown>): void {
  const vaults = candidate.vaults;
  const shaped = { ...candidate, vaults: vaults === undefined || (Array.isArray(vaults) && vaults.length === 0) ? [UNBOUND] : vaults };
  encodeOrRefuse([shaped]);
}

/**
 * Checks that the whole policy set still fits one `policy-push` (count and frame size), so no
 * change is stored that could not be pushed. Throws ApiError USAGE.
 */
export function checkPolicySet(records: PolicyRecord[]): void {
  encodeOrRefuse(pushablePolicies(records), 'the policy set');
}

/** Checks a vault name with the protocol's name rule (a vault is pushed by name). */
export function checkVaultName(name: string): void {
  try {
    encodeMessage({
      v: 1,
      type: 'policy-push',
      id: 'check',
      version: 1,
      policies: [{ name: 'check', enabled: true, vaults: [name], trigger: { cron: '0 0 * * *', timezone: 'UTC' }, retention: {} }],
    });
  } catch (err) {
    if (!(err instanceof ProtocolError)) throw err;
    throw new ApiError('USAGE', `vault name ${err.problem}`);
  }
}

function encodeOrRefuse(policies: unknown[], what?: string): void {
  try {
    encodeMessage({ v: 1, type: 'policy-push', id: 'check', version: 1, policies: policies as Policy[] });
  } catch (err) {
    if (!(err instanceof ProtocolError)) throw err;
    if (what !== undefined || err.field === null || !err.field.startsWith(PREFIX)) {
      // Too many policies or too big a frame: a property of the set, not of one field.
      throw new ApiError('USAGE', `${what ?? 'the policy'} cannot be pushed to agents: ${err.field === null ? '' : `${err.field} `}${err.problem}`);
    }
    const field = err.field.slice(PREFIX.length).replace(/^\./, '');
    throw new ApiError('USAGE', field === '' ? `the policy ${err.problem}` : `${field} ${err.problem}`);
  }
}

/**
 * The latest version and policy set, read consistently: the version is read before and after the
 * policies and the read repeated until they agree (every change bumps the version). Undefined while
 * the version is 0 (nothing to push yet).
 */
export async function readPolicySnapshot(catalog: Catalog): Promise<{ version: number; records: PolicyRecord[] } | undefined> {
  for (let attempt = 0; ; attempt++) {
    const version = await catalog.policyVersion();
    if (version === 0) return undefined;
    const records = await catalog.listPolicies();
    if ((await catalog.policyVersion()) === version) return { version, records };
    if (attempt >= 20) throw new CairnError('BUSY', 'the policies kept changing while they were read for a push; it is tried again at the next change');
  }
}
