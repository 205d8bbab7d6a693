import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { isCairnError } from '../../shared/errors.js';
import { loadAgentConfig, parseAgentConfig } from './config.js';

const example = fileURLToPath(new URL('./example-config.json', import.meta.url));

function rejects(raw: unknown, ...fragments: string[]): void {
  try {
    parseAgentConfig(raw, '/etc/cairn/agent.json');
  } catch (err) {
    expect(isCairnError(err, 'CONFIG_INVALID'), String(err)).toBe(true);
    for (const f of fragments) expect((err as Error).message).toContain(f);
    return;
  }
  throw new Error('the config was accepted');
}

const minimal = {
  vaults: { v: { url: 'vault', passphraseFile: 'v.pass' } },
  resources: { r: { vault: 'v', disks: ['disk.img'] } },
  policies: { p: { vaults: ['v'], trigger: { cron: '0 2 * * *' } } },
};

describe('agent config', () => {
  it('reads the documented example', () => {
    const c = loadAgentConfig(example);
    expect([...c.vaults.keys()]).toEqual(['local', 'offsite']);
    expect(c.resources.get('db01')!.disks).toHaveLength(2);
    expect(c.resources.get('db01')!.quiesce!.hookTimeoutMs).toBe(30_000);
    expect(c.policies.get('nightly')!.schedule.next(new Date('2026-11-25T00:00:00Z')).toISOString()).toBe('2026-11-25T00:30:00.000Z');
    expect(c.policies.get('workdays')!.enabled).toBe(false);
    expect(c.gc).toBeDefined();
  });

  it('resolves relative paths against the config folder and fills defaults', () => {
    const c = parseAgentConfig(minimal, '/etc/cairn/agent.json');
    expect(c.vaults.get('v')).toEqual({ name: 'v', url: '/etc/cairn/vault', passphraseFile: '/etc/cairn/v.pass' });
    expect(c.resources.get('r')!.disks).toEqual(['/etc/cairn/disk.img']);
    expect(c).toMatchObject({ stateDir: '/etc/cairn/state', logDir: '/etc/cairn/log', status: { host: '127.0.0.1', port: 7480 }, concurrency: 1 });
  });

  it('takes a config with nothing to back up yet (as installed by the packages)', () => {
    const c = parseAgentConfig({ stateDir: '/var/lib/cairn', logDir: '/var/log/cairn' }, '/etc/cairn/agent.json');
    expect([c.vaults.size, c.resources.size, c.policies.size]).toEqual([0, 0, 0]);
    expect(c.status).toEqual({ host: '127.0.0.1', port: 7480 });
  });

  it('names the key of every mistake', () => {
    rejects({ ...minimal, extra: 1 }, "'extra' is not a known key");
    rejects({ ...minimal, vaults: {} }, "'resources.r.vault'", "'v'", 'known: )');
    rejects({ ...minimal, resources: { r: { vault: 'x', disks: ['d'] } } }, "'resources.r.vault'", "'x'", 'known: v');
    rejects({ ...minimal, resources: { r: { vault: 'v', disks: [] } } }, "'resources.r.disks'");
    rejects({ ...minimal, policies: { p: { vaults: ['v'], trigger: { patterns: ['FREQ=DAILY;BYHOUR=25;BYMINUTE=0'] } } } }, "'policies.p.trigger'", 'BYHOUR');
    rejects({ ...minimal, policies: { p: { vaults: ['v'], trigger: { cron: '0 2 * * *', timezone: 'Mars/Olympus' } } } }, "'policies.p.trigger'", 'Mars/Olympus');
    rejects({ ...minimal, policies: { p: { vaults: ['v'], trigger: { cron: '0 2 * * *' }, retention: { max_backups: -5 } } } }, "'policies.p.retention'");
    rejects({ ...minimal, status: { port: 70000 } }, "'status.port'");
    rejects({ ...minimal, resources: { r: { vault: 'v', disks: ['d'], quiesce: { hookTimeout: 'soon' } } } }, "'resources.r.quiesce.hookTimeout'");
  });
});
