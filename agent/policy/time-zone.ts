import { CairnError } from '../../shared/errors.js';

/**
 * Time-zone arithmetic for schedules and retention, on `Intl.DateTimeFormat` (Node's ICU copy of the
 * tz database) with no dependency of its own.
 *
 * Two time scales meet here. An *instant* is milliseconds since the epoch (what a `Date` holds). A
 * *wall time* is what a clock on the wall of the zone reads, written as milliseconds since
 * 1970-01-01T00:00 of that clock, as if the zone were UTC; `Math.floor(wall / DAY_MS)` is the local
 * day number. Around a daylight-saving change the map from instants to wall times jumps: forward
 * (a gap of wall times that never happen) or back (an hour of wall times that happen twice).
 *
 * Contract of `instantOfWall(W)`: the first instant at which the zone's clock reads W *or later*.
 * For a wall time that exists once that is its instant; for one that exists twice, the first of the
 * two; for one inside a gap, the instant the gap ends (the clock jumps from 01:59:59.999 to 03:00).
 * It never decreases as W grows, which is what lets a schedule search wall times and convert once.
 *
 * Assumes at most one offset change within a day of the instant asked about, true of every zone in
 * the tz database since 1970.
 */

export const DAY_MS = 86_400_000;
const HOUR_MS = 3_600_000;

export interface LocalTime {
  /** Local day number: days since 1970-01-01 of the zone's calendar. */
  day: number;
  year: number;
  /** 1-12 */
  month: number;
  /** 1-31 */
  dayOfMonth: number;
  /** 0 = Sunday ... 6 = Saturday, as cron counts. */
  weekday: number;
  /** Milliseconds since local midnight. */
  msOfDay: number;
}

export class TimeZone {
  private constructor(
    /** The name as given (an IANA name or a CBR offset such as UTC+08:00). */
    readonly name: string,
    private readonly fixedOffsetMs: number | undefined,
    private readonly format: Intl.DateTimeFormat | undefined,
  ) {}

  /**
   * An IANA zone ('Europe/Berlin', 'UTC') or a fixed offset as CBR writes it ('UTC+08:00',
   * 'UTC-05:30'; also 'GMT+8', '+08:00'). Throws CairnError USAGE naming the bad value.
   */
  static parse(name: string): TimeZone {
    const offset = /^(?:UTC|GMT)?([+-])(\d{1,2})(?::?(\d{2}))?$/i.exec(name.trim());
    if (offset && (/^(UTC|GMT)/i.test(name.trim()) || name.includes(':'))) {
      const hours = Number(offset[2]);
      const minutes = Number(offset[3] ?? '0');
      if (hours > 14 || minutes > 59 || (hours === 14 && minutes > 0)) {
        throw new CairnError('USAGE', `time zone "${name}": a UTC offset lies between UTC-14:00 and UTC+14:00`);
      }
      const sign = offset[1] === '-' ? -1 : 1;
      return new TimeZone(name, sign * (hours * HOUR_MS + minutes * 60_000), undefined);
    }
    let format: Intl.DateTimeFormat;
    try {
      format = new Intl.DateTimeFormat('en-US', {
        timeZone: name,
        hourCycle: 'h23',
        year: 'numeric',
        month: 'numeric',
        day: 'numeric',
        hour: 'numeric',
        minute: 'numeric',
        second: 'numeric',
      });
    } catch (err) {
      throw new CairnError(
        'USAGE',
        `unknown time zone "${name}": give an IANA name such as Europe/Berlin, America/New_York or UTC, or a UTC offset such as UTC+08:00`,
        { cause: err },
      );
    }
    return new TimeZone(name, undefined, format);
  }

  /** Local minus UTC, in milliseconds, at `instant`. */
  offsetAt(instant: number): number {
    if (this.fixedOffsetMs !== undefined) return this.fixedOffsetMs;
    const seconds = Math.floor(instant / 1000) * 1000;
    const f: Record<string, number> = {};
    for (const part of this.format!.formatToParts(seconds)) {
      if (part.type !== 'literal') f[part.type] = Number(part.value);
    }
    const wall = Date.UTC(f.year!, f.month! - 1, f.day!, f.hour!, f.minute!, f.second!);
    return wall - seconds;
  }

  /** The wall time the zone's clock reads at `instant`. */
  wallAt(instant: number): number {
    return instant + this.offsetAt(instant);
  }

  /** Calendar fields of `instant` in this zone. */
  local(instant: number): LocalTime {
    const wall = this.wallAt(instant);
    const day = Math.floor(wall / DAY_MS);
    return { ...civilFromDay(day), day, msOfDay: wall - day * DAY_MS };
  }

  /**
   * The latest wall time the clock has shown at or before `instant`. Equal to `wallAt(instant)` except
   * in the repeated hour after a fall-back change, when the clock shows a wall time it showed once
   * already; then it is the wall time just before the clock was set back (e.g. 02:59:59.999).
   * A wall time W has had its first instant by `instant` exactly when W <= highWater(instant).
   */
  highWater(instant: number): number {
    const now = this.wallAt(instant);
    const before = this.offsetAt(instant - DAY_MS);
    if (before <= this.offsetAt(instant)) return now;
    const change = this.firstInstantWithOffsetOtherThan(before, instant - DAY_MS, instant);
    return Math.max(now, change - 1 + before);
  }

  /** The first instant at which the clock reads `wall` or later (see the contract above). */
  instantOfWall(wall: number): number {
    const early = this.offsetAt(wall - DAY_MS);
    const late = this.offsetAt(wall + DAY_MS);
    if (early === late && this.offsetAt(wall - early) === early) return wall - early;
    // Candidates in time order: with a fall-back change both may read `wall`; the first one wins.
    const candidates = [wall - early, wall - late].sort((a, b) => a - b);
    for (const t of candidates) {
      if (this.wallAt(t) === wall) return t;
    }
    // In a gap: the clock jumps over `wall` at the change, which lies between the two candidates.
    return this.firstInstantWithOffsetOtherThan(early, candidates[0]!, candidates[1]!);
  }

  /** Smallest whole-second instant in (lo, hi] whose offset is not `offset`; hi must have another. */
  private firstInstantWithOffsetOtherThan(offset: number, lo: number, hi: number): number {
    let a = Math.floor(lo / 1000);
    let b = Math.ceil(hi / 1000);
    while (b - a > 1) {
      const mid = Math.floor((a + b) / 2);
      if (this.offsetAt(mid * 1000) === offset) a = mid;
      else b = mid;
    }
    return b * 1000;
  }
}

/** Year, month, day of month and weekday of a day number (days since 1970-01-01), proleptic Gregorian. */
export function civilFromDay(day: number): { year: number; month: number; dayOfMonth: number; weekday: number } {
  // H. Hinnant's days_from_civil inverse: eras of 400 years starting on 0000-03-01.
  const z = day + 719_468;
  const era = Math.floor(z / 146_097);
  const doe = z - era * 146_097;
  const yoe = Math.floor((doe - Math.floor(doe / 1460) + Math.floor(doe / 36_524) - Math.floor(doe / 146_096)) / 365);
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100));
  const mp = Math.floor((5 * doy + 2) / 153);
  const dayOfMonth = doy - Math.floor((153 * mp + 2) / 5) + 1;
  const month = mp < 10 ? mp + 3 : mp - 9;
  const year = yoe + era * 400 + (month <= 2 ? 1 : 0);
  const weekday = (((day + 4) % 7) + 7) % 7;
  return { year, month, dayOfMonth, weekday };
}

/** Number of days in a month of a year (month 1-12). */
export function daysInMonth(year: number, month: number): number {
  return new Date(Date.UTC(year, month, 0)).getUTCDate();
}

/**
 * ISO 8601 week of a day number, as one comparable number (ISO year * 100 + week): weeks start on
 * Monday and week 1 is the one holding the year's first Thursday.
 */
export function isoWeekOf(day: number): number {
  const weekdayMonday0 = (civilFromDay(day).weekday + 6) % 7;
  const thursday = day - weekdayMonday0 + 3;
  const { year } = civilFromDay(thursday);
  const jan1 = Math.floor(Date.UTC(year, 0, 1) / DAY_MS);
  return year * 100 + Math.floor((thursday - jan1) / 7) + 1;
}
