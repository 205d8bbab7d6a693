import { describe, expect, it } from 'vitest';
import { CairnError } from '../../shared/errors.js';
import { planRetention, validateRetentionRule, type BackupRecord, type RetentionPlan, type RetentionRule } from './retention.js';

const DAY = 86_400_000;

function auto(id: string, startedAt: string): BackupRecord {
  return { id, name: `autobk_${id}`, startedAt };
}

function thrown(fn: () => unknown): CairnError {
  try {
    fn();
  } catch (err) {
    if (err instanceof CairnError) return err;
    throw err;
  }
  throw new Error('expected a CairnError, but the call succeeded');
}

/** The plan as "id: reason,reason" lines, newest first, and the pruned ids. */
function summary(plan: RetentionPlan): { keep: string[]; prune: string[] } {
  return { keep: plan.keep.map((k) => `${k.id}: ${k.reasons.join(',')}`), prune: plan.prune.map((p) => p.id) };
}

describe('400 daily runs with max_backups=7, day=7, week=4, month=12, year=2', () => {
  // One automatic backup a day at 14:00 UTC from Monday 2024-01-01 (2024 is a leap year: 366 days) to
  // Monday 2025-02-03 (31 + 3 more days): 400 backups; the rule counts in UTC; now is 15:00 on the last day.
  // Worked by hand, newest first:
  // - day=7: the newest of each of the 7 latest days with backups: 28 January ... 3 February 2025.
  // - week=4: ISO weeks 2025-W06 (3 Feb, a Monday: 3 Feb), W05 (27 Jan-2 Feb: Sunday 2 Feb),
  //   W04 (20-26 Jan: 26 Jan), W03 (13-19 Jan: 19 Jan).
  // - month=12: the last backup of February 2025 (3 Feb) and of every month back to March 2024:
  //   31 Jan 2025, 31 Dec, 30 Nov, 31 Oct, 30 Sep, 31 Aug, 31 Jul, 30 Jun, 31 May, 30 Apr, 31 Mar 2024.
  // - year=2: 3 Feb 2025 and 31 Dec 2024 (both kept by other rules too).
  //   Long-term total: 7 days + 26 and 19 Jan + 10 month ends of 2024 = 19 backups.
  // - max_backups=7 counts only backups no long-term rule keeps: 27 Jan, then 25, 24, 23, 22, 21,
  //   20 Jan (26 Jan is a weekly one and takes no slot).
  // - newest: 3 February 2025.
  // Survivors: 19 + 7 = 26, plus the one-off backup, which is never pruned and takes no slot.
  const expected = [
    '2025-02-03: newest,day,week,month,year',
    '2025-02-02: day,week',
    '2025-02-01: day',
    '2025-01-31: day,month',
    '2025-01-30: day',
    '2025-01-29: day',
    '2025-01-28: day',
    '2025-01-27: max_backups',
    '2025-01-26: week',
    '2025-01-25: max_backups',
    '2025-01-24: max_backups',
    '2025-01-23: max_backups',
    '2025-01-22: max_backups',
    '2025-01-21: max_backups',
    '2025-01-20: max_backups',
    '2025-01-19: week',
    '2024-12-31: month,year',
    '2024-11-30: month',
    '2024-10-31: month',
    '2024-09-30: month',
    '2024-08-31: month',
    '2024-07-31: month',
    '2024-06-30: month',
    '2024-05-31: month',
    '2024-04-30: month',
    '2024-03-31: month',
    'one-off: manual',
  ];
  const rule: RetentionRule = { max_backups: 7, day_backups: 7, week_backups: 4, month_backups: 12, year_backups: 2, timezone: 'UTC' };
  const first = Date.parse('2024-01-01T14:00:00Z');
  const runs = Array.from({ length: 400 }, (_, i) => auto(new Date(first + i * DAY).toISOString().slice(0, 10), new Date(first + i * DAY).toISOString()));
  const oneOff: BackupRecord = { id: 'one-off', name: 'manualbk_k3x9qz', startedAt: '2024-01-10T09:00:00Z' };

  it('planned once over all of them', () => {
    expect(runs.at(-1)!.id).toBe('2025-02-03');
    const plan = planRetention([...runs, oneOff], rule, new Date('2025-02-03T15:00:00Z'));
    expect(summary(plan).keep).toEqual(expected);
    expect(plan.prune).toHaveLength(400 - 26);
  });

  it('pruned after every run, as the agent does: the same survivors', () => {
    let vault: BackupRecord[] = [oneOff];
    for (const run of runs) {
      vault.push(run);
      const plan = planRetention(vault, rule, new Date(Date.parse(run.startedAt) + 3_600_000));
      const kept = new Set(plan.keep.map((k) => k.id));
      vault = vault.filter((b) => kept.has(b.id));
    }
    expect(summary(planRetention(vault, rule, new Date('2025-02-03T15:00:00Z')))).toEqual({ keep: expected, prune: [] });
  });
});

describe('retention semantics', () => {
  it('one-off backups are never candidates; the newest automatic backup is always kept', () => {
    const backups = [
      { id: 'm1', name: 'manualbk_aaaaaa', startedAt: '2020-01-01T00:00:00Z' },
      { id: 'x1', name: 'imported-disk', startedAt: '2020-01-02T00:00:00Z' },
      auto('a1', '2025-05-01T00:00:00Z'),
      auto('a2', '2025-05-02T00:00:00Z'),
    ];
    // Both automatic backups are older than a day; the newest survives anyway.
    expect(summary(planRetention(backups, { retention_duration_days: 1 }, new Date('2025-06-01T00:00:00Z')))).toEqual({
      keep: ['a2: newest', 'x1: manual', 'm1: manual'],
      prune: ['a1'],
    });
  });

  it('no count and no age limit (absent or -1): every backup is kept, long-term rules or not', () => {
    const backups = [auto('a1', '2025-05-01T00:00:00Z'), auto('a2', '2025-05-02T00:00:00Z')];
    const now = new Date('2025-06-01T00:00:00Z');
    for (const rule of [{}, { max_backups: -1, retention_duration_days: -1 }, { day_backups: 1, timezone: 'UTC' }] as RetentionRule[]) {
      expect(summary(planRetention(backups, rule, now))).toEqual({ keep: ['a2: newest,no_limit', 'a1: no_limit'], prune: [] });
    }
  });

  it('retention_duration_days keeps backups younger than D x 24 h: exactly D days old goes', () => {
    const backups = [
      auto('young', '2025-06-03T00:00:00.001Z'),
      auto('seven-days', '2025-06-03T00:00:00Z'),
      auto('older', '2025-06-02T12:00:00Z'),
      auto('newest', '2025-06-09T23:00:00Z'),
    ];
    expect(summary(planRetention(backups, { retention_duration_days: 7 }, new Date('2025-06-10T00:00:00Z')))).toEqual({
      keep: ['newest: newest,retention_duration_days', 'young: retention_duration_days'],
      prune: ['seven-days', 'older'],
    });
  });

  it('days without backups do not shorten day_backups; of two backups on a day the later one is the daily', () => {
    const backups = [
      auto('jun01', '2025-06-01T10:00:00Z'),
      auto('jun05', '2025-06-05T10:00:00Z'),
      auto('jun09', '2025-06-09T10:00:00Z'),
      auto('jun10-early', '2025-06-10T02:00:00Z'),
      auto('jun10-late', '2025-06-10T14:00:00Z'),
    ];
    expect(summary(planRetention(backups, { max_backups: 1, day_backups: 3, timezone: 'UTC' }, new Date('2025-06-10T15:00:00Z')))).toEqual({
      keep: ['jun10-late: newest,day', 'jun10-early: max_backups', 'jun09: day', 'jun05: day'],
      prune: ['jun01'],
    });
  });

  it("months are counted in the rule's time zone: 17:00 UTC on 31 December is January at UTC+08:00", () => {
    const backups = [
      auto('a', '2024-12-31T15:00:00Z'), // 23:00 on 31 Dec at UTC+08:00
      auto('b', '2024-12-31T17:00:00Z'), // 01:00 on 1 Jan at UTC+08:00
      auto('c', '2025-01-05T12:00:00Z'),
      auto('d', '2025-01-06T12:00:00Z'),
    ];
    const now = new Date('2025-01-06T13:00:00Z');
    expect(summary(planRetention(backups, { max_backups: 1, month_backups: 2, timezone: 'UTC' }, now))).toEqual({
      keep: ['d: newest,month', 'c: max_backups', 'b: month'],
      prune: ['a'],
    });
    for (const timezone of ['UTC+08:00', 'Asia/Shanghai']) {
      expect(summary(planRetention(backups, { max_backups: 1, month_backups: 2, timezone }, now))).toEqual({
        keep: ['d: newest,month', 'c: max_backups', 'a: month'],
        prune: ['b'],
      });
    }
  });

  it('weeks are ISO weeks: Monday 30 December 2024 belongs to 2025-W01 with Sunday 5 January', () => {
    const backups = [
      auto('dec28', '2024-12-28T12:00:00Z'), // Saturday, 2024-W52
      auto('dec29', '2024-12-29T12:00:00Z'), // Sunday, 2024-W52
      auto('dec30', '2024-12-30T12:00:00Z'), // Monday, 2025-W01
      auto('jan05', '2025-01-05T12:00:00Z'), // Sunday, 2025-W01
      auto('jan06', '2025-01-06T12:00:00Z'), // Monday, 2025-W02
    ];
    expect(summary(planRetention(backups, { max_backups: 1, week_backups: 3, timezone: 'Europe/Berlin' }, new Date('2025-01-06T13:00:00Z')))).toEqual({
      keep: ['jan06: newest,week', 'jan05: week', 'dec30: max_backups', 'dec29: week'],
      prune: ['dec28'],
    });
  });
});

describe('bad rules and data', () => {
  it.each([
    [{ day_backups: -1, max_backups: 5, timezone: 'UTC' }, 'day_backups=-1: give a whole number from 0 to 100'],
    [{ week_backups: 101, max_backups: 5, timezone: 'UTC' }, 'week_backups=101'],
    [{ month_backups: 1.5, max_backups: 5, timezone: 'UTC' }, 'month_backups=1.5'],
    [{ year_backups: -3, max_backups: 5, timezone: 'UTC' }, 'year_backups=-3'],
    [{ max_backups: -5 }, 'max_backups=-5: give a whole number from 1 to 99999, or -1'],
    [{ max_backups: 0 }, 'max_backups=0'],
    [{ max_backups: 100_000 }, 'max_backups=100000'],
    [{ retention_duration_days: -2 }, 'retention_duration_days=-2'],
    [{ max_backups: 7, retention_duration_days: 30 }, 'not both'],
    [{ max_backups: 7, day_backups: 7 }, 'give timezone'],
    [{ max_backups: 7, day_backups: 7, timezone: 'Mars/Olympus' }, 'unknown time zone "Mars/Olympus"'],
  ] as [RetentionRule, string][])('%j', (rule, problem) => {
    const err = thrown(() => validateRetentionRule(rule));
    expect(err.code).toBe('USAGE');
    expect(err.message).toContain(problem);
    expect(thrown(() => planRetention([], rule, new Date())).code).toBe('USAGE');
  });

  it('zero long-term counts need no time zone', () => {
    expect(() => validateRetentionRule({ max_backups: 7, day_backups: 0, week_backups: 0 })).not.toThrow();
  });

  it('a backup without a valid start time, or given twice, is an internal error naming it', () => {
    const err = thrown(() => planRetention([auto('a1', 'yesterday')], { max_backups: 1 }, new Date()));
    expect(err.code).toBe('INTERNAL');
    expect(err.message).toContain('a1');
    expect(thrown(() => planRetention([auto('a1', '2025-01-01T00:00:00Z'), auto('a1', '2025-01-02T00:00:00Z')], {}, new Date())).message).toContain(
      'a1 twice',
    );
  });
});
