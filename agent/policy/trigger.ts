import { parse as parseCron, validateDetailed as validateCron } from 'node-cron';
import type { Clock } from '../../shared/clock.js';
import { CairnError } from '../../shared/errors.js';
import { civilFromDay, DAY_MS, daysInMonth, TimeZone } from './time-zone.js';

/**
 * When a backup policy fires. A schedule is the union of CBR trigger patterns (an iCalendar RRULE
 * subset) and, optionally, one cron expression, read in one stated time zone. Pure: it never reads the
 * clock; `catchUp` takes a Clock.
 *
 * Rules are matched in *wall time* (see time-zone.ts) and each matching wall time becomes the first
 * instant at which the zone's clock reads it or later. Hence, around daylight-saving changes:
 * - a wall time that does not exist (02:30 on the spring-forward night) fires once, at the end of the
 *   gap (03:00 new time); several wall times in one gap fire once together;
 * - a wall time that happens twice (01:30 on the fall-back night in New York) fires once, at its first
 *   occurrence; the repeated hour fires nothing new.
 */
export interface Schedule {
  /** The zone the rules are read in, as given. */
  readonly timezone: string;
  /** The first fire time strictly after `after`. */
  next(after: Date): Date;
  /** The last fire time at or before `atOrBefore`, or undefined if there is none (or it is before `start`). */
  previous(atOrBefore: Date): Date | undefined;
}

export interface ScheduleSpec {
  /** CBR trigger patterns, e.g. 'FREQ=WEEKLY;BYDAY=MO,WE,FR;BYHOUR=14;BYMINUTE=00'; at most 24. */
  patterns?: readonly string[];
  /** A cron expression: 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first. */
  cron?: string;
  /** IANA name ('Europe/Berlin', 'UTC') or CBR offset ('UTC+08:00'). */
  timezone: string;
  /**
   * When the schedule begins (CBR's trigger start_time): nothing fires before it, and INTERVAL counts
   * days from its local date. Without it INTERVAL counts from 1970-01-01 (local).
   */
  start?: Date;
}

export const PATTERN_EXAMPLES = {
  WEEKLY: 'FREQ=WEEKLY;BYDAY=MO,WE,FR;BYHOUR=14;BYMINUTE=00',
  DAILY: 'FREQ=DAILY;INTERVAL=2;BYHOUR=14;BYMINUTE=00',
  HOURLY: 'FREQ=HOURLY;INTERVAL=4;BYMINUTE=30',
} as const;

/** CBR: "A maximum of 24 rules can be configured", and at most 24 time points a day. */
const MAX_PATTERNS = 24;
const MAX_TIMES_PER_DAY = 24;
/** CBR: "The scheduling interval must not be less than 1 hour." */
const MIN_GAP_SECONDS = 3600;
/** CBR: the interval of a daily schedule is 1 to 30 days. */
const MAX_DAILY_INTERVAL = 30;
/** HOURLY (a Cairn extension) repeats within a day, so its interval divides 24. */
const HOURLY_INTERVALS = [1, 2, 3, 4, 6, 8, 12];
/** Far enough to find the next 29 February whatever the start (2096 -> 2104 is 8 years). */
const SEARCH_DAYS = 9 * 366;
const WEEKDAYS = ['SU', 'MO', 'TU', 'WE', 'TH', 'FR', 'SA'];

/** One rule of a schedule: on which local days, and at which seconds of those days. */
interface Rule {
  readonly source: string;
  matchesDay(day: number): boolean;
  /** Seconds since local midnight, ascending, no duplicates. */
  readonly times: readonly number[];
}

/** Builds a schedule; throws CairnError USAGE naming the bad pattern, key or zone, with an example. */
export function parseSchedule(spec: ScheduleSpec): Schedule {
  const zone = TimeZone.parse(spec.timezone);
  const patterns = spec.patterns ?? [];
  if (patterns.length === 0 && spec.cron === undefined) {
    throw new CairnError('USAGE', `a schedule needs at least one pattern (e.g. ${PATTERN_EXAMPLES.WEEKLY}) or a cron expression (e.g. "0 14 * * 1,3,5")`);
  }
  if (patterns.length > MAX_PATTERNS) {
    throw new CairnError('USAGE', `a schedule has at most ${MAX_PATTERNS} patterns, as CBR allows; ${patterns.length} were given`);
  }
  let startMs: number | undefined;
  let anchorDay = 0;
  if (spec.start !== undefined) {
    startMs = spec.start.getTime();
    if (Number.isNaN(startMs)) throw new CairnError('USAGE', 'the schedule start is not a valid date');
    anchorDay = zone.local(startMs).day;
  }
  const rules = patterns.map((p) => parsePattern(p, anchorDay));
  checkTimesOfDay(rules);
  if (spec.cron !== undefined) rules.push(parseCronRule(spec.cron));
  return new RuleSchedule(spec.timezone, zone, rules, startMs);
}

/**
 * What an agent asks on waking: the fire time it missed since `lastRun` (the latest one, to be run
 * once now; undefined if none was missed or the policy never ran) and the next fire time after now.
 */
export function catchUp(schedule: Schedule, lastRun: Date | undefined, clock: Clock): { missed: Date | undefined; next: Date } {
  const now = clock.now();
  const latest = schedule.previous(now);
  const missed = lastRun !== undefined && latest !== undefined && latest.getTime() > lastRun.getTime() ? latest : undefined;
  return { missed, next: schedule.next(now) };
}

class RuleSchedule implements Schedule {
  constructor(
    readonly timezone: string,
    private readonly zone: TimeZone,
    private readonly rules: readonly Rule[],
    private readonly startMs: number | undefined,
  ) {}

  next(after: Date): Date {
    let t = instantOf(after);
    if (this.startMs !== undefined && t < this.startMs) t = this.startMs - 1;
    // A wall time fires after t exactly when the clock has not yet shown it by t (time-zone.ts).
    const seen = this.zone.highWater(t);
    let wall = Infinity;
    for (const rule of this.rules) wall = Math.min(wall, nextWall(rule, seen));
    return new Date(this.zone.instantOfWall(wall));
  }

  previous(atOrBefore: Date): Date | undefined {
    const seen = this.zone.highWater(instantOf(atOrBefore));
    let wall = -Infinity;
    for (const rule of this.rules) wall = Math.max(wall, previousWall(rule, seen) ?? -Infinity);
    if (wall === -Infinity) return undefined;
    const fired = this.zone.instantOfWall(wall);
    return this.startMs !== undefined && fired < this.startMs ? undefined : new Date(fired);
  }
}

function instantOf(d: Date): number {
  const t = d.getTime();
  if (Number.isNaN(t)) throw new CairnError('INTERNAL', 'a schedule was asked about an invalid date');
  return t;
}

/** Smallest wall time of the rule strictly greater than `wall`. */
function nextWall(rule: Rule, wall: number): number {
  const first = Math.floor(wall / DAY_MS);
  for (let day = first; day <= first + SEARCH_DAYS; day++) {
    if (!rule.matchesDay(day)) continue;
    const floor = day === first ? wall - day * DAY_MS : -1;
    const s = rule.times.find((t) => t * 1000 > floor);
    if (s !== undefined) return day * DAY_MS + s * 1000;
  }
  throw new CairnError('INTERNAL', `schedule rule "${rule.source}" found no fire time within ${SEARCH_DAYS} days`);
}

/** Largest wall time of the rule at or before `wall`, if one lies within the search window. */
function previousWall(rule: Rule, wall: number): number | undefined {
  const first = Math.floor(wall / DAY_MS);
  for (let day = first; day >= first - SEARCH_DAYS; day--) {
    if (!rule.matchesDay(day)) continue;
    const ceiling = day === first ? wall - day * DAY_MS : Infinity;
    for (let i = rule.times.length - 1; i >= 0; i--) {
      if (rule.times[i]! * 1000 <= ceiling) return day * DAY_MS + rule.times[i]! * 1000;
    }
  }
  return undefined;
}

// ---- CBR trigger patterns -------------------------------------------------------------------------

type Freq = keyof typeof PATTERN_EXAMPLES;
const KEYS = ['FREQ', 'INTERVAL', 'BYDAY', 'BYHOUR', 'BYMINUTE'];

/**
 * The CBR subset of RFC 2445 RRULE: keys FREQ, INTERVAL, BYDAY, BYHOUR, BYMINUTE (case-insensitive,
 * any order, each once).
 * - FREQ=WEEKLY: BYDAY, BYHOUR, BYMINUTE required; INTERVAL, if given, 1.
 * - FREQ=DAILY: BYHOUR, BYMINUTE required; INTERVAL 1-30 days, counted from the start's local date.
 * - FREQ=HOURLY (Cairn's, not CBR's): BYMINUTE (one value) required; INTERVAL dividing 24; fires at
 *   local hours 0, N, 2N, ...
 * BYHOUR 0-23 and BYMINUTE 0-59 are lists; a pattern fires at every BYHOUR x BYMINUTE.
 */
function parsePattern(pattern: string, anchorDay: number): Rule {
  const fail = (problem: string, freq?: Freq): never => {
    const examples = freq ? PATTERN_EXAMPLES[freq] : `${PATTERN_EXAMPLES.WEEKLY} or ${PATTERN_EXAMPLES.DAILY}`;
    throw new CairnError('USAGE', `backup policy pattern "${pattern}": ${problem}; for example ${examples}`);
  };
  const parts = new Map<string, string>();
  for (const part of pattern.trim().split(';')) {
    const eq = part.indexOf('=');
    if (eq <= 0 || eq === part.length - 1) fail(`"${part}" is not KEY=VALUE`);
    const key = part.slice(0, eq).trim().toUpperCase();
    const value = part.slice(eq + 1).trim().toUpperCase();
    if (!KEYS.includes(key)) fail(`unknown key ${key}: CBR patterns use only ${KEYS.join(', ')}`);
    if (parts.has(key)) fail(`${key} is given twice`);
    parts.set(key, value);
  }
  const freqText = parts.get('FREQ');
  if (freqText === undefined) fail('FREQ is missing');
  if (!(freqText! in PATTERN_EXAMPLES)) fail(`FREQ=${freqText} is not supported: use WEEKLY, DAILY or HOURLY`);
  const freq = freqText as Freq;
  const need = (key: string): string => parts.get(key) ?? fail(`FREQ=${freq} needs ${key}`, freq);
  const forbid = (key: string, why: string): void => {
    if (parts.has(key)) fail(`${key} does not go with FREQ=${freq}: ${why}`, freq);
  };
  const numbers = (key: string, max: number): number[] => {
    const out: number[] = [];
    for (const item of need(key).split(',')) {
      if (!/^\d{1,2}$/.test(item) || Number(item) > max) fail(`${key}=${parts.get(key)}: ${item} is not a number from 0 to ${max}`, freq);
      if (out.includes(Number(item))) fail(`${key}=${parts.get(key)} lists ${Number(item)} twice`, freq);
      out.push(Number(item));
    }
    return out;
  };
  const interval = (() => {
    const text = parts.get('INTERVAL');
    if (text === undefined) return 1;
    if (!/^\d{1,3}$/.test(text)) fail(`INTERVAL=${text} is not a whole number`, freq);
    return Number(text);
  })();

  const minutes = numbers('BYMINUTE', 59);
  let hours: number[];
  let matchesDay: (day: number) => boolean;
  if (freq === 'WEEKLY') {
    if (interval !== 1) fail(`INTERVAL=${interval}: a weekly pattern repeats every week (list the days in BYDAY)`, freq);
    const days = new Set<number>();
    for (const d of need('BYDAY').split(',')) {
      const wd = WEEKDAYS.indexOf(d);
      if (wd < 0) fail(`BYDAY=${parts.get('BYDAY')}: ${d} is not one of MO, TU, WE, TH, FR, SA, SU`, freq);
      if (days.has(wd)) fail(`BYDAY=${parts.get('BYDAY')} lists ${d} twice`, freq);
      days.add(wd);
    }
    hours = numbers('BYHOUR', 23);
    matchesDay = (day) => days.has(civilFromDay(day).weekday);
  } else if (freq === 'DAILY') {
    forbid('BYDAY', 'use FREQ=WEEKLY to choose days of the week');
    if (interval < 1 || interval > MAX_DAILY_INTERVAL) fail(`INTERVAL=${interval} is outside 1-${MAX_DAILY_INTERVAL} days`, freq);
    hours = numbers('BYHOUR', 23);
    matchesDay = (day) => (((day - anchorDay) % interval) + interval) % interval === 0;
  } else {
    forbid('BYDAY', 'hourly patterns fire every day');
    forbid('BYHOUR', 'the hours follow from INTERVAL');
    if (!HOURLY_INTERVALS.includes(interval)) fail(`INTERVAL=${interval}: an hourly interval is one of ${HOURLY_INTERVALS.join(', ')}`, freq);
    if (minutes.length !== 1) fail(`BYMINUTE=${parts.get('BYMINUTE')}: an hourly pattern takes one minute (fire times at least an hour apart)`, freq);
    hours = [];
    for (let h = 0; h < 24; h += interval) hours.push(h);
    matchesDay = () => true;
  }
  const times = hours.flatMap((h) => minutes.map((m) => h * 3600 + m * 60)).sort((a, b) => a - b);
  return { source: pattern, matchesDay, times };
}

/** CBR's limits on times of day: each pattern alone, then all together as if they fired on one day. */
function checkTimesOfDay(rules: readonly Rule[]): void {
  for (const rule of rules) checkTimes(rule.times, `backup policy pattern "${rule.source}" fires`);
  checkTimes([...new Set(rules.flatMap((r) => r.times))].sort((a, b) => a - b), 'the patterns together fire');
}

function checkTimes(times: readonly number[], what: string): void {
  const hhmm = (s: number): string => `${String(Math.floor(s / 3600)).padStart(2, '0')}:${String((s % 3600) / 60).padStart(2, '0')}`;
  if (times.length > MAX_TIMES_PER_DAY) {
    throw new CairnError('USAGE', `${what} at ${times.length} times of day; CBR allows at most ${MAX_TIMES_PER_DAY}`);
  }
  for (let i = 1; i < times.length; i++) {
    if (times[i]! - times[i - 1]! < MIN_GAP_SECONDS) {
      throw new CairnError(
        'USAGE',
        `${what} at ${hhmm(times[i - 1]!)} and ${hhmm(times[i]!)}, less than an hour apart; CBR wants backups at least an hour apart`,
      );
    }
  }
}

// ---- cron ---------------------------------------------------------------------------------------

/**
 * A cron expression, validated and expanded by node-cron (ranges, steps, names, nicknames such as
 * @daily, and L, L-n, nW, LW in day-of-month, nL and n#k in day-of-week). Day matching follows Vixie
 * cron, not node-cron: when both day-of-month and day-of-week are restricted (neither starts with * or
 * ?), a day matches if either does.
 */
function parseCronRule(expression: string): Rule {
  const checked = validateCron(expression);
  if (!checked.valid) {
    const why = checked.errors.map((e) => e.message).join('; ');
    throw new CairnError('USAGE', `cron expression "${expression}": ${why}; for example "0 14 * * 1,3,5" (14:00 on Monday, Wednesday, Friday)`);
  }
  const f = parseCron(expression);
  const raw = expression.trim().split(/\s+/);
  const [domRaw, dowRaw] = raw.length === 6 ? [raw[3]!, raw[5]!] : raw.length === 5 ? [raw[2]!, raw[4]!] : ['*', '*'];
  const restricted = (field: string): boolean => !field.startsWith('*') && !field.startsWith('?');
  const either = restricted(domRaw) && restricted(dowRaw);
  const months = new Set(f.month);

  const matchesDay = (day: number): boolean => {
    const c = civilFromDay(day);
    if (!months.has(c.month)) return false;
    const dom = f.dayOfMonth.some((v) => dayOfMonthMatches(v, c.year, c.month, c.dayOfMonth));
    const dow = f.dayOfWeek.some((v) => dayOfWeekMatches(v, c.year, c.month, c.dayOfMonth, c.weekday));
    return either ? dom || dow : dom && dow;
  };
  const times: number[] = [];
  for (const h of [...f.hour].sort((a, b) => a - b)) {
    for (const m of [...f.minute].sort((a, b) => a - b)) {
      for (const s of [...f.second].sort((a, b) => a - b)) times.push(h * 3600 + m * 60 + s);
    }
  }
  const rule: Rule = { source: expression, matchesDay, times: [...new Set(times)] };
  // 31 February and the like validate but never happen; say so now rather than search forever.
  let fires = false;
  for (let day = 0; day < SEARCH_DAYS && !fires; day++) fires = matchesDay(day);
  if (!fires) throw new CairnError('USAGE', `cron expression "${expression}" never fires: no month has the day it names`);
  return rule;
}

function dayOfMonthMatches(v: number | string, year: number, month: number, dom: number): boolean {
  if (typeof v === 'number') return v === dom;
  const last = daysInMonth(year, month);
  if (v === 'L') return dom === last;
  const lastMinus = /^L-(\d+)$/.exec(v);
  if (lastMinus) return dom === last - Number(lastMinus[1]);
  const weekdayNear = /^(\d+|L)W$/.exec(v);
  if (weekdayNear) {
    const target = weekdayNear[1] === 'L' ? last : Number(weekdayNear[1]);
    return target <= last && nearestWeekday(year, month, target, last) === dom;
  }
  return false;
}

/** The weekday (Monday-Friday) nearest to `target` within its month, as Quartz's nW. */
function nearestWeekday(year: number, month: number, target: number, last: number): number {
  const wd = new Date(Date.UTC(year, month - 1, target)).getUTCDay();
  if (wd === 6) return target === 1 ? 3 : target - 1;
  if (wd === 0) return target === last ? target - 2 : target + 1;
  return target;
}

function dayOfWeekMatches(v: number | string, year: number, month: number, dom: number, weekday: number): boolean {
  if (typeof v === 'number') return v === weekday;
  const lastOf = /^([0-7])L$/i.exec(v);
  if (lastOf) return Number(lastOf[1]) % 7 === weekday && dom + 7 > daysInMonth(year, month);
  const nth = /^([0-7])#([1-5])$/.exec(v);
  if (nth) return Number(nth[1]) % 7 === weekday && Math.floor((dom - 1) / 7) + 1 === Number(nth[2]);
  return false;
}
