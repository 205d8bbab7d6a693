import { describe, expect, it } from 'vitest';
import type { Policy } from '../../shared/protocol/messages.js';
import { pushedPolicies } from './pushed-policies.js';

const good: Policy = { name: 'nightly', enabled: true, vaults: ['main'], trigger: { cron: '0 2 * * *', timezone: 'Europe/Berlin' }, retention: { max_backups: 7 } };

describe('pushedPolicies', () => {
  it('turns a valid set into daemon policies marked as pushed', () => {
    const [p] = pushedPolicies([good]);
    expect(p).toMatchObject({ name: 'nightly', origin: 'control-plane', enabled: true, vaults: ['main'], retention: { max_backups: 7 } });
    expect(p!.schedule.next(new Date('2025-01-01T00:00:00Z')).toISOString()).toBe('2025-01-01T01:00:00.000Z');
  });

  it('refuses the whole set naming the policy and the field', () => {
    const badZone = { ...good, name: 'weekly', trigger: { patterns: ['FREQ=DAILY;INTERVAL=1;BYHOUR=2;BYMINUTE=00'], timezone: 'Mars/Olympus' } };
    expect(() => pushedPolicies([good, badZone])).toThrow(/policy 'weekly' \(policies\[1\]\.trigger\) is not valid: .*Mars\/Olympus/);
    const badPattern = { ...good, trigger: { patterns: ['FREQ=DAILY;BYHOUR=25;BYMINUTE=00'], timezone: 'UTC' } };
    expect(() => pushedPolicies([badPattern])).toThrow(/policies\[0\]\.trigger.*BYHOUR/);
    const both = { ...good, retention: { max_backups: 3, retention_duration_days: 4 } };
    expect(() => pushedPolicies([both])).toThrow(/policy 'nightly' \(policies\[0\]\.retention\).*not both/);
    const longTermNoZone = { ...good, retention: { day_backups: 3 } };
    expect(() => pushedPolicies([longTermNoZone])).toThrow(/policies\[0\]\.retention.*time zone/);
  });
});
