import { CairnError } from '../../shared/errors.js';
import type { Policy } from '../../shared/protocol/messages.js';
import type { PolicyConfig } from '../daemon/config.js';
import { validateRetentionRule, type RetentionRule } from '../policy/retention.js';
import { parseSchedule, type ScheduleSpec } from '../policy/trigger.js';

/**
 * Turns a pushed policy set into the daemon's policies, checked by agent/policy's own rules
 * (patterns, cron and time zone parse; retention ranges, not both max_backups and
 * retention_duration_days, a zone for long-term rules). All or nothing: the first policy that fails
 * refuses the whole set with CONFIG_INVALID naming the policy and the field, e.g.
 * `policy 'nightly' (policies[2].trigger): ...`. Vaults this agent does not have are allowed: the
 * policy then applies to none of its resources.
 */
export function pushedPolicies(policies: readonly Policy[]): PolicyConfig[] {
  return policies.map((p, i) => {
    const refuse = (field: string, err: unknown): CairnError =>
      new CairnError('CONFIG_INVALID', `policy '${p.name}' (policies[${i}].${field}) is not valid: ${(err as Error).message}`, { cause: err });
    const spec: ScheduleSpec = { patterns: p.trigger.patterns, cron: p.trigger.cron, timezone: p.trigger.timezone };
    let schedule;
    try {
      schedule = parseSchedule(spec);
    } catch (err) {
      throw refuse('trigger', err);
    }
    const retention: RetentionRule = { ...p.retention };
    try {
      validateRetentionRule(retention);
    } catch (err) {
      throw refuse('retention', err);
    }
    return { name: p.name, origin: 'control-plane', enabled: p.enabled, vaults: [...p.vaults], schedule, scheduleSpec: spec, retention };
  });
}
