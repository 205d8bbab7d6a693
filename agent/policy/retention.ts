import { CairnError } from '../../shared/errors.js';
import { DAY_MS, isoWeekOf, TimeZone } from './time-zone.js';

/**
 * Which backups a policy keeps: CBR's retention model (operation_definition of a backup policy), as a
 * pure function of the backups, the rule and the time. Field names are CBR's, so a CBR policy maps
 * across unchanged.
 */
export interface RetentionRule {
  /** Keep the newest N automatic backups (1-99999); -1 or absent: no limit by count. */
  max_backups?: number;
  /** Keep automatic backups younger than D days (1-99999); -1 or absent: no limit by age. */
  retention_duration_days?: number;
  /** Long-term: keep the newest backup of each of the N latest days / ISO weeks / months / years (0-100). */
  day_backups?: number;
  week_backups?: number;
  month_backups?: number;
  year_backups?: number;
  /** The zone whose calendar the long-term rules count in; required when any of them is above 0. */
  timezone?: string;
}

export interface BackupRecord {
  id: string;
  /** `autobk_...` for backups the policy made, `manualbk_...` for one-off backups. */
  name: string;
  /** ISO 8601 start time. */
  startedAt: string;
}

export type KeepReason =
  | 'manual'
  | 'newest'
  | 'no_limit'
  | 'max_backups'
  | 'retention_duration_days'
  | 'day'
  | 'week'
  | 'month'
  | 'year';

export interface RetentionPlan {
  /** Newest first, each with every reason that keeps it. */
  keep: { id: string; reasons: KeepReason[] }[];
  /** Newest first. */
  prune: { id: string }[];
}

const REASON_ORDER: readonly KeepReason[] = ['manual', 'newest', 'no_limit', 'max_backups', 'retention_duration_days', 'day', 'week', 'month', 'year'];
const LONG_TERM = [
  ['day_backups', 'day'],
  ['week_backups', 'week'],
  ['month_backups', 'month'],
  ['year_backups', 'year'],
] as const;
const MAX_COUNT = 99_999;
const MAX_LONG_TERM = 100;
export const AUTOMATIC_PREFIX = 'autobk_';

/** Checks a rule against CBR's documented ranges; throws CairnError USAGE naming the field. */
export function validateRetentionRule(rule: RetentionRule): void {
  const limit = (field: 'max_backups' | 'retention_duration_days'): boolean => {
    const v = rule[field];
    if (v === undefined || v === -1) return false;
    if (!Number.isInteger(v) || v < 1 || v > MAX_COUNT) {
      throw new CairnError('USAGE', `retention ${field}=${v}: give a whole number from 1 to ${MAX_COUNT}, or -1 (or nothing) for no limit`);
    }
    return true;
  };
  const byCount = limit('max_backups');
  const byAge = limit('retention_duration_days');
  if (byCount && byAge) {
    throw new CairnError(
      'USAGE',
      'retention: give max_backups or retention_duration_days, not both (CBR keeps by count or by age); leave both out to keep backups forever',
    );
  }
  let longTerm = false;
  for (const [field] of LONG_TERM) {
    const v = rule[field];
    if (v === undefined) continue;
    if (!Number.isInteger(v) || v < 0 || v > MAX_LONG_TERM) {
      throw new CairnError('USAGE', `retention ${field}=${v}: give a whole number from 0 to ${MAX_LONG_TERM}`);
    }
    if (v > 0) longTerm = true;
  }
  if (longTerm && rule.timezone === undefined) {
    throw new CairnError('USAGE', 'retention: day/week/month/year_backups count in a time zone; give timezone, e.g. Europe/Berlin or UTC+08:00');
  }
  if (rule.timezone !== undefined) TimeZone.parse(rule.timezone);
}

/**
 * Decides which backups to keep and which to prune at `now`. Semantics (README.md has the sources):
 * - Only automatic backups (`autobk_`) are candidates; anything else is one-off and kept ('manual').
 * - The newest automatic backup is always kept ('newest').
 * - max_backups and retention_duration_days both absent (or -1): every backup is kept ('no_limit').
 * - Long-term rules keep the newest backup of each of the N most recent days / ISO weeks / months /
 *   years that have automatic backups, in the rule's time zone. A missed day does not shorten what
 *   is kept.
 * - max_backups keeps the newest N automatic backups *not* kept by a long-term rule: long-term
 *   backups do not count against it.
 * - retention_duration_days keeps automatic backups started less than D x 24 h before `now`.
 * Applying the plan after every run leaves the same backups as applying it once at the end: whatever
 * it keeps at one time it kept at every earlier time.
 */
export function planRetention(backups: readonly BackupRecord[], rule: RetentionRule, now: Date): RetentionPlan {
  validateRetentionRule(rule);
  const ids = new Set<string>();
  const all = backups.map((b) => {
    if (ids.has(b.id)) throw new CairnError('INTERNAL', `retention was given backup ${b.id} twice`);
    ids.add(b.id);
    const t = Date.parse(b.startedAt);
    if (Number.isNaN(t)) throw new CairnError('INTERNAL', `backup ${b.id} (${b.name}) has no valid start time: "${b.startedAt}"`);
    return { id: b.id, name: b.name, t, reasons: new Set<KeepReason>() };
  });
  all.sort((a, b) => b.t - a.t || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));

  const automatic = all.filter((b) => b.name.startsWith(AUTOMATIC_PREFIX));
  for (const b of all) if (!b.name.startsWith(AUTOMATIC_PREFIX)) b.reasons.add('manual');
  automatic[0]?.reasons.add('newest');

  const count = rule.max_backups === undefined || rule.max_backups === -1 ? undefined : rule.max_backups;
  const days = rule.retention_duration_days === undefined || rule.retention_duration_days === -1 ? undefined : rule.retention_duration_days;
  if (count === undefined && days === undefined) {
    for (const b of automatic) b.reasons.add('no_limit');
  } else {
    if (rule.timezone !== undefined) {
      const zone = TimeZone.parse(rule.timezone);
      const keyOf = {
        day: (t: number) => zone.local(t).day,
        week: (t: number) => isoWeekOf(zone.local(t).day),
        month: (t: number) => {
          const l = zone.local(t);
          return l.year * 12 + l.month;
        },
        year: (t: number) => zone.local(t).year,
      };
      for (const [field, reason] of LONG_TERM) {
        const n = rule[field] ?? 0;
        const seen = new Set<number>();
        for (const b of automatic) {
          if (seen.size >= n) break;
          const key = keyOf[reason](b.t);
          if (seen.has(key)) continue;
          seen.add(key);
          b.reasons.add(reason);
        }
      }
    }
    if (count !== undefined) {
      const longTerm = (b: (typeof all)[number]): boolean => LONG_TERM.some(([, r]) => b.reasons.has(r));
      let slots = count;
      for (const b of automatic) {
        if (slots === 0) break;
        if (longTerm(b)) continue;
        b.reasons.add('max_backups');
        slots--;
      }
    }
    if (days !== undefined) {
      for (const b of automatic) if (now.getTime() - b.t < days * DAY_MS) b.reasons.add('retention_duration_days');
    }
  }

  const plan: RetentionPlan = { keep: [], prune: [] };
  for (const b of all) {
    if (b.reasons.size === 0) plan.prune.push({ id: b.id });
    else plan.keep.push({ id: b.id, reasons: REASON_ORDER.filter((r) => b.reasons.has(r)) });
  }
  return plan;
}
