/**
 * Schedules against hand-worked calendars. Every expected instant below was worked out from the
 * calendar and the zone's rules, not printed by the code under test:
 * - Europe/Berlin 2025: CET (UTC+1) until Sun 30 March 01:00 UTC, when 02:00 becomes 03:00 CEST
 *   (UTC+2); back to CET on Sun 26 October 01:00 UTC, when 03:00 CEST becomes 02:00 CET.
 * - America/New_York 2025: EST (UTC-5) until Sun 9 March 07:00 UTC (02:00 -> 03:00 EDT, UTC-4);
 *   back on Sun 2 November 06:00 UTC (02:00 EDT -> 01:00 EST).
 * - 1 June 2025 and 2 March 2025 are Sundays; 2024 is a leap year, 2025-2027 are not.
 */
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../shared/clock.js';
import { CairnError } from '../../shared/errors.js';
import { catchUp, parseSchedule, type Schedule, type ScheduleSpec } from './trigger.js';

const at = (iso: string): Date => new Date(iso);

/** The next `n` fire times after `from`, as ISO strings. */
function fires(schedule: Schedule, from: string, n: number): string[] {
  const out: string[] = [];
  let t = at(from);
  for (let i = 0; i < n; i++) {
    t = schedule.next(t);
    out.push(t.toISOString());
  }
  return out;
}

function rejection(spec: ScheduleSpec): CairnError {
  try {
    parseSchedule(spec);
  } catch (err) {
    if (err instanceof CairnError) return err;
    throw err;
  }
  throw new Error(`expected parseSchedule to reject ${JSON.stringify(spec)}`);
}

describe('CBR trigger patterns', () => {
  it('weekly on Monday, Wednesday and Friday at 14:00, strictly after and at-or-before', () => {
    const s = parseSchedule({ patterns: ['FREQ=WEEKLY;BYDAY=MO,WE,FR;BYHOUR=14;BYMINUTE=00'], timezone: 'UTC' });
    // Wednesday 4 June 14:00 itself is not "after" it.
    expect(fires(s, '2025-06-04T14:00:00Z', 3)).toEqual(['2025-06-06T14:00:00.000Z', '2025-06-09T14:00:00.000Z', '2025-06-11T14:00:00.000Z']);
    expect(s.next(at('2025-06-04T13:59:59.999Z')).toISOString()).toBe('2025-06-04T14:00:00.000Z');
    expect(s.previous(at('2025-06-08T23:00:00Z'))?.toISOString()).toBe('2025-06-06T14:00:00.000Z');
    expect(s.previous(at('2025-06-06T14:00:00Z'))?.toISOString()).toBe('2025-06-06T14:00:00.000Z');
    expect(s.previous(at('2025-06-06T13:59:59Z'))?.toISOString()).toBe('2025-06-04T14:00:00.000Z');
  });

  it("reads CBR's UTC offsets: 14:00 at UTC+08:00 is 06:00 UTC, at UTC-05:30 it is 19:30 UTC", () => {
    const pattern = 'FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA,SU;BYHOUR=14;BYMINUTE=00';
    const east = parseSchedule({ patterns: [pattern], timezone: 'UTC+08:00' });
    expect(fires(east, '2025-06-04T00:00:00Z', 2)).toEqual(['2025-06-04T06:00:00.000Z', '2025-06-05T06:00:00.000Z']);
    const west = parseSchedule({ patterns: [pattern], timezone: 'UTC-05:30' });
    expect(west.next(at('2025-06-04T00:00:00Z')).toISOString()).toBe('2025-06-04T19:30:00.000Z');
  });

  it('every second day counts from the start date, across a month end, and never fires before the start', () => {
    // Start: 30 January 2025, 00:00 in Berlin (CET) = 29 January 23:00 UTC. 14:00 CET = 13:00 UTC.
    const s = parseSchedule({ patterns: ['FREQ=DAILY;INTERVAL=2;BYHOUR=14;BYMINUTE=00'], timezone: 'Europe/Berlin', start: at('2025-01-29T23:00:00Z') });
    expect(fires(s, '2025-01-01T00:00:00Z', 3)).toEqual(['2025-01-30T13:00:00.000Z', '2025-02-01T13:00:00.000Z', '2025-02-03T13:00:00.000Z']);
    expect(s.previous(at('2025-02-02T00:00:00Z'))?.toISOString()).toBe('2025-02-01T13:00:00.000Z');
    expect(s.previous(at('2025-01-30T12:59:59Z'))).toBeUndefined();
  });

  it('every second day keeps 14:00 local across the spring change (13:00 UTC, then 12:00 UTC)', () => {
    const s = parseSchedule({ patterns: ['FREQ=DAILY;INTERVAL=2;BYHOUR=14;BYMINUTE=00'], timezone: 'Europe/Berlin', start: at('2025-03-27T23:00:00Z') });
    expect(fires(s, '2025-03-27T23:00:00Z', 3)).toEqual(['2025-03-28T13:00:00.000Z', '2025-03-30T12:00:00.000Z', '2025-04-01T12:00:00.000Z']);
  });

  it('a pattern may list several hours and minutes; the policy fires at the union of its patterns', () => {
    const s = parseSchedule({
      patterns: ['FREQ=WEEKLY;BYDAY=SA;BYHOUR=3;BYMINUTE=00', 'FREQ=DAILY;BYHOUR=8,20;BYMINUTE=15'],
      cron: '0 0 1 * *',
      timezone: 'UTC',
    });
    // Friday 30 May 2025 21:00 -> Saturday 31 May 03:00, 08:15, 20:15 -> Sunday 1 June 00:00 (cron) -> 08:15.
    expect(fires(s, '2025-05-30T21:00:00Z', 5)).toEqual([
      '2025-05-31T03:00:00.000Z',
      '2025-05-31T08:15:00.000Z',
      '2025-05-31T20:15:00.000Z',
      '2025-06-01T00:00:00.000Z',
      '2025-06-01T08:15:00.000Z',
    ]);
  });

  it('hourly every 4 hours at :30 (local hours 0, 4, 8, ...)', () => {
    const s = parseSchedule({ patterns: ['FREQ=HOURLY;INTERVAL=4;BYMINUTE=30'], timezone: 'UTC' });
    expect(fires(s, '2025-06-01T05:00:00Z', 3)).toEqual(['2025-06-01T08:30:00.000Z', '2025-06-01T12:30:00.000Z', '2025-06-01T16:30:00.000Z']);
  });

  it('keys are case-insensitive and in any order, BYMINUTE=0 equals BYMINUTE=00', () => {
    const s = parseSchedule({ patterns: ['byminute=0;byhour=14;byday=mo;freq=weekly'], timezone: 'UTC' });
    expect(s.next(at('2025-06-01T00:00:00Z')).toISOString()).toBe('2025-06-02T14:00:00.000Z');
  });
});

describe('daylight-saving changes', () => {
  it('Berlin, spring: 02:30 does not exist on 30 March and fires once at 03:00 CEST (01:00 UTC)', () => {
    const s = parseSchedule({ patterns: ['FREQ=DAILY;BYHOUR=2;BYMINUTE=30'], timezone: 'Europe/Berlin' });
    expect(fires(s, '2025-03-29T00:00:00Z', 3)).toEqual([
      '2025-03-29T01:30:00.000Z', // 02:30 CET
      '2025-03-30T01:00:00.000Z', // gap: the first instant after it, 03:00 CEST
      '2025-03-31T00:30:00.000Z', // 02:30 CEST
    ]);
    expect(s.previous(at('2025-03-30T12:00:00Z'))?.toISOString()).toBe('2025-03-30T01:00:00.000Z');
    expect(s.previous(at('2025-03-30T00:59:59Z'))?.toISOString()).toBe('2025-03-29T01:30:00.000Z');
  });

  it('Berlin, autumn: 02:30 happens twice on 26 October and fires once, at the first (CEST)', () => {
    const s = parseSchedule({ patterns: ['FREQ=DAILY;BYHOUR=2;BYMINUTE=30'], timezone: 'Europe/Berlin' });
    expect(fires(s, '2025-10-25T12:00:00Z', 2)).toEqual(['2025-10-26T00:30:00.000Z', '2025-10-27T01:30:00.000Z']);
    // During the repeated hour (02:15 CET) the 02:30 of the day has fired already.
    expect(s.next(at('2025-10-26T01:15:00Z')).toISOString()).toBe('2025-10-27T01:30:00.000Z');
    expect(s.previous(at('2025-10-26T01:45:00Z'))?.toISOString()).toBe('2025-10-26T00:30:00.000Z');
  });

  it('Berlin, hourly: no double run in the repeated hour, one run for the skipped hour', () => {
    const s = parseSchedule({ patterns: ['FREQ=HOURLY;BYMINUTE=00'], timezone: 'Europe/Berlin' });
    // Autumn: 01:00 CEST, 02:00 CEST, (02:00 CET is the same wall time: skipped), 03:00 CET, 04:00 CET.
    expect(fires(s, '2025-10-25T22:30:00Z', 4)).toEqual([
      '2025-10-25T23:00:00.000Z',
      '2025-10-26T00:00:00.000Z',
      '2025-10-26T02:00:00.000Z',
      '2025-10-26T03:00:00.000Z',
    ]);
    // Spring: 01:00 CET, then 02:00 (gap) and 03:00 CEST are the same instant and fire once, 04:00 CEST.
    expect(fires(s, '2025-03-29T23:30:00Z', 3)).toEqual(['2025-03-30T00:00:00.000Z', '2025-03-30T01:00:00.000Z', '2025-03-30T02:00:00.000Z']);
  });

  it('New York, spring: Sunday 02:30 on 9 March fires at 03:00 EDT (07:00 UTC)', () => {
    const s = parseSchedule({ patterns: ['FREQ=WEEKLY;BYDAY=SU;BYHOUR=2;BYMINUTE=30'], timezone: 'America/New_York' });
    expect(fires(s, '2025-03-01T00:00:00Z', 3)).toEqual([
      '2025-03-02T07:30:00.000Z', // 02:30 EST
      '2025-03-09T07:00:00.000Z', // gap -> 03:00 EDT
      '2025-03-16T06:30:00.000Z', // 02:30 EDT
    ]);
  });

  it('New York, autumn: Sunday 01:30 on 2 November fires at the EDT one only', () => {
    const s = parseSchedule({ patterns: ['FREQ=WEEKLY;BYDAY=SU;BYHOUR=1;BYMINUTE=30'], timezone: 'America/New_York' });
    expect(fires(s, '2025-11-01T12:00:00Z', 2)).toEqual(['2025-11-02T05:30:00.000Z', '2025-11-09T06:30:00.000Z']);
    expect(s.previous(at('2025-11-02T06:45:00Z'))?.toISOString()).toBe('2025-11-02T05:30:00.000Z');
  });

  it('New York, 14:00 on weekdays moves from 19:00 to 18:00 UTC over the spring change', () => {
    const s = parseSchedule({ patterns: ['FREQ=WEEKLY;BYDAY=MO,WE,FR;BYHOUR=14;BYMINUTE=00'], timezone: 'America/New_York' });
    expect(fires(s, '2025-03-06T00:00:00Z', 2)).toEqual(['2025-03-07T19:00:00.000Z', '2025-03-10T18:00:00.000Z']);
  });

  it('cron every 15 minutes, Berlin spring: the four gap slots and 03:00 fire once together', () => {
    const s = parseSchedule({ cron: '*/15 * * * *', timezone: 'Europe/Berlin' });
    // From 01:50 CET: 02:00, 02:15, 02:30, 02:45 (gap) and 03:00 CEST are all 01:00 UTC; then 03:15.
    expect(fires(s, '2025-03-30T00:50:00Z', 2)).toEqual(['2025-03-30T01:00:00.000Z', '2025-03-30T01:15:00.000Z']);
  });

  it('cron every 30 minutes, Berlin autumn: the repeated 02:00-02:59 fires nothing new', () => {
    const s = parseSchedule({ cron: '*/30 * * * *', timezone: 'Europe/Berlin' });
    // 02:30 CEST = 00:30 UTC; the clock then shows 02:00-02:59 CET again; next new wall time 03:00 CET.
    expect(fires(s, '2025-10-26T00:15:00Z', 2)).toEqual(['2025-10-26T00:30:00.000Z', '2025-10-26T02:00:00.000Z']);
  });

  it('cron 02:30 daily in New York, spring', () => {
    const s = parseSchedule({ cron: '30 2 * * *', timezone: 'America/New_York' });
    expect(fires(s, '2025-03-08T12:00:00Z', 2)).toEqual(['2025-03-09T07:00:00.000Z', '2025-03-10T06:30:00.000Z']);
  });
});

describe('cron expressions', () => {
  it('day 31 skips the months without one', () => {
    const s = parseSchedule({ cron: '0 3 31 * *', timezone: 'UTC' });
    expect(fires(s, '2025-01-31T04:00:00Z', 3)).toEqual(['2025-03-31T03:00:00.000Z', '2025-05-31T03:00:00.000Z', '2025-07-31T03:00:00.000Z']);
  });

  it('L is the last day of the month, leap years included', () => {
    const s = parseSchedule({ cron: '0 3 L * *', timezone: 'UTC' });
    expect(s.next(at('2024-02-01T00:00:00Z')).toISOString()).toBe('2024-02-29T03:00:00.000Z');
    expect(fires(s, '2025-02-01T00:00:00Z', 2)).toEqual(['2025-02-28T03:00:00.000Z', '2025-03-31T03:00:00.000Z']);
  });

  it('29 February waits for the next leap year, and previous finds the last one', () => {
    const s = parseSchedule({ cron: '0 0 29 2 *', timezone: 'UTC' });
    expect(s.next(at('2025-03-01T00:00:00Z')).toISOString()).toBe('2028-02-29T00:00:00.000Z');
    expect(s.previous(at('2025-03-01T00:00:00Z'))?.toISOString()).toBe('2024-02-29T00:00:00.000Z');
  });

  it('day-of-month and day-of-week both restricted: either matches (Vixie cron)', () => {
    // "the 13th or a Friday": June 2025 Fridays are 6, 13, 20.
    const or = parseSchedule({ cron: '0 12 13 * 5', timezone: 'UTC' });
    expect(fires(or, '2025-06-01T00:00:00Z', 3)).toEqual(['2025-06-06T12:00:00.000Z', '2025-06-13T12:00:00.000Z', '2025-06-20T12:00:00.000Z']);
    // A day-of-month starting with * is not "restricted": odd days AND Fridays -> 13, 27.
    const and = parseSchedule({ cron: '0 12 */2 * 5', timezone: 'UTC' });
    expect(fires(and, '2025-06-01T00:00:00Z', 2)).toEqual(['2025-06-13T12:00:00.000Z', '2025-06-27T12:00:00.000Z']);
  });

  it('six fields: seconds first', () => {
    const s = parseSchedule({ cron: '30 0 14 * * 1', timezone: 'UTC' });
    expect(s.next(at('2025-06-02T14:00:00Z')).toISOString()).toBe('2025-06-02T14:00:30.000Z');
    expect(s.next(at('2025-06-02T14:00:30Z')).toISOString()).toBe('2025-06-09T14:00:30.000Z');
  });

  it('nicknames: @daily in Berlin summer is 22:00 UTC', () => {
    const s = parseSchedule({ cron: '@daily', timezone: 'Europe/Berlin' });
    expect(s.next(at('2025-06-01T12:00:00Z')).toISOString()).toBe('2025-06-01T22:00:00.000Z');
  });
});

describe('catch-up with a manual clock', () => {
  it('reports the latest missed fire time once, and the next one', () => {
    const s = parseSchedule({ patterns: ['FREQ=DAILY;BYHOUR=14;BYMINUTE=00'], timezone: 'UTC' });
    const clock = new ManualClock(Date.parse('2025-06-03T09:00:00Z'));
    // Down from 1 June after its run until 3 June 09:00: the 2 June run was missed.
    expect(catchUp(s, at('2025-06-01T14:00:05Z'), clock)).toEqual({ missed: at('2025-06-02T14:00:00Z'), next: at('2025-06-03T14:00:00Z') });
    expect(catchUp(s, at('2025-06-02T14:00:07Z'), clock)).toEqual({ missed: undefined, next: at('2025-06-03T14:00:00Z') });
    expect(catchUp(s, undefined, clock).missed).toBeUndefined();
    clock.advance(5 * 3_600_000); // 14:00 exactly: that is the fire time, due now
    expect(catchUp(s, at('2025-06-02T14:00:07Z'), clock)).toEqual({ missed: at('2025-06-03T14:00:00Z'), next: at('2025-06-04T14:00:00Z') });
  });
});

describe('bad input', () => {
  const weekly = 'FREQ=WEEKLY;BYDAY=MO;BYHOUR=14;BYMINUTE=00';

  it('an unknown key is named, with the pattern and an example', () => {
    const err = rejection({ patterns: [`${weekly};COUNT=3`], timezone: 'UTC' });
    expect(err.code).toBe('USAGE');
    expect(err.message).toContain(`"${weekly};COUNT=3"`);
    expect(err.message).toContain('unknown key COUNT');
    expect(err.message).toContain('for example FREQ=');
  });

  it('BYHOUR=25 is out of range', () => {
    const err = rejection({ patterns: ['FREQ=DAILY;BYHOUR=25;BYMINUTE=00'], timezone: 'UTC' });
    expect(err.code).toBe('USAGE');
    expect(err.message).toContain('BYHOUR=25: 25 is not a number from 0 to 23');
    expect(err.message).toContain('for example FREQ=DAILY;INTERVAL=2;BYHOUR=14;BYMINUTE=00');
  });

  it('FREQ is required', () => {
    const err = rejection({ patterns: ['BYDAY=MO;BYHOUR=14;BYMINUTE=00'], timezone: 'UTC' });
    expect(err.message).toContain('FREQ is missing');
  });

  it.each([
    ['FREQ=MONTHLY;BYHOUR=14;BYMINUTE=00', 'FREQ=MONTHLY is not supported'],
    ['FREQ=WEEKLY;BYDAY=XX;BYHOUR=14;BYMINUTE=00', 'XX is not one of MO'],
    ['FREQ=WEEKLY;BYDAY=MO,MO;BYHOUR=14;BYMINUTE=00', 'lists MO twice'],
    ['FREQ=WEEKLY;BYHOUR=14;BYMINUTE=00', 'FREQ=WEEKLY needs BYDAY'],
    ['FREQ=WEEKLY;BYDAY=MO;BYHOUR=14', 'FREQ=WEEKLY needs BYMINUTE'],
    ['FREQ=WEEKLY;INTERVAL=2;BYDAY=MO;BYHOUR=14;BYMINUTE=00', 'INTERVAL=2: a weekly pattern repeats every week'],
    ['FREQ=DAILY;INTERVAL=31;BYHOUR=14;BYMINUTE=00', 'INTERVAL=31 is outside 1-30 days'],
    ['FREQ=DAILY;INTERVAL=0;BYHOUR=14;BYMINUTE=00', 'INTERVAL=0 is outside 1-30 days'],
    ['FREQ=DAILY;BYDAY=MO;BYHOUR=14;BYMINUTE=00', 'BYDAY does not go with FREQ=DAILY'],
    ['FREQ=DAILY;BYHOUR=14;BYHOUR=15;BYMINUTE=00', 'BYHOUR is given twice'],
    ['FREQ=DAILY;BYHOUR=14;BYMINUTE=60', 'BYMINUTE=60: 60 is not a number from 0 to 59'],
    ['FREQ=DAILY;BYHOUR=-1;BYMINUTE=00', 'BYHOUR=-1: -1 is not a number'],
    ['FREQ=DAILY;BYHOUR=14,15;BYMINUTE=00,30', 'less than an hour apart'],
    ['FREQ=HOURLY;INTERVAL=5;BYMINUTE=00', 'INTERVAL=5: an hourly interval is one of 1, 2, 3, 4, 6, 8, 12'],
    ['FREQ=HOURLY;BYHOUR=3;BYMINUTE=00', 'BYHOUR does not go with FREQ=HOURLY'],
    ['FREQ=DAILY;BYHOUR;BYMINUTE=00', '"BYHOUR" is not KEY=VALUE'],
  ])('%s', (pattern, problem) => {
    const err = rejection({ patterns: [pattern], timezone: 'UTC' });
    expect(err.code).toBe('USAGE');
    expect(err.message).toContain(`"${pattern}"`);
    expect(err.message).toContain(problem);
  });

  it('patterns together must stay an hour apart and within 24 times a day, and at most 24 patterns', () => {
    expect(rejection({ patterns: ['FREQ=DAILY;BYHOUR=14;BYMINUTE=00', 'FREQ=WEEKLY;BYDAY=SU;BYHOUR=14;BYMINUTE=30'], timezone: 'UTC' }).message).toContain(
      'the patterns together fire at 14:00 and 14:30, less than an hour apart',
    );
    const hourly = 'FREQ=HOURLY;BYMINUTE=00';
    expect(rejection({ patterns: [hourly, 'FREQ=DAILY;BYHOUR=14;BYMINUTE=30'], timezone: 'UTC' }).message).toContain('at 25 times of day');
    const many = Array.from({ length: 25 }, (_, h) => `FREQ=WEEKLY;BYDAY=MO;BYHOUR=${h % 24};BYMINUTE=00`);
    expect(rejection({ patterns: many, timezone: 'UTC' }).message).toContain('at most 24 patterns');
  });

  it('unknown time zones and offsets out of range', () => {
    for (const timezone of ['Mars/Olympus', 'Europe/Berlinn', 'UTC+15:00', '']) {
      const err = rejection({ patterns: [weekly], timezone });
      expect(err.code).toBe('USAGE');
      expect(err.message).toContain(`"${timezone}"`);
    }
  });

  it('bad cron expressions, and one that never fires', () => {
    expect(rejection({ cron: '0 25 * * *', timezone: 'UTC' }).message).toContain('25 is a invalid expression for hour');
    expect(rejection({ cron: '* * *', timezone: 'UTC' }).message).toContain('expected 5 or 6 fields');
    expect(rejection({ cron: '0 0 31 2 *', timezone: 'UTC' }).message).toContain('impossible day of month');
    // node-cron lets "29 days before the last of February" through; it never comes.
    expect(rejection({ cron: '0 0 L-29 2 *', timezone: 'UTC' }).message).toContain('never fires');
  });

  it('a schedule needs a pattern or a cron expression', () => {
    expect(rejection({ timezone: 'UTC' }).message).toContain('at least one pattern');
    expect(rejection({ patterns: [], timezone: 'UTC' }).code).toBe('USAGE');
  });
});
