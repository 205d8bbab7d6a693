import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../shared/clock.js';
import { LocalStore } from '../../shared/store/local-store.js';
import { Vault } from '../../shared/vault/vault.js';
import { pushedPolicies } from '../link/pushed-policies.js';
import { StateStore } from '../state/state-store.js';
import { parseAgentConfig } from './config.js';
import { AgentDaemon, type DaemonLog } from './daemon.js';

/**
 * The daemon's scheduling decisions on a manual clock, with real backups into a real local vault:
 * a run missed while the agent was down is caught up exactly once, the first start catches up
 * nothing, and retention prunes the policy's backups after each run.
 */

let dir: string;
let vaultDir: string;
const silent: DaemonLog = { info: () => undefined, warn: () => undefined, error: () => undefined };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cairn-daemon-'));
  vaultDir = join(dir, 'vault');
  await Vault.init(new LocalStore(vaultDir), 'daemon test');
  await writeFile(join(dir, 'v.pass'), 'daemon test\n');
  await writeFile(join(dir, 'disk.img'), randomBytes(256 * 1024));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function config(retention: Record<string, unknown> = { max_backups: 3 }) {
  return parseAgentConfig(
    {
      vaults: { v: { url: vaultDir, passphraseFile: 'v.pass' } },
      resources: { r: { vault: 'v', disks: ['disk.img'] } },
      policies: { daily: { vaults: ['v'], trigger: { patterns: ['FREQ=DAILY;INTERVAL=1;BYHOUR=2;BYMINUTE=00'], timezone: 'UTC' }, retention } },
    },
    join(dir, 'agent.json'),
  );
}

function daemon(state: StateStore, clock: ManualClock): AgentDaemon {
  return new AgentDaemon(config(), { state, log: silent, agentId: 'agent-test', version: 'test', clock });
}

describe('AgentDaemon', () => {
  it('catches up a run missed while it was down exactly once, and nothing on a first start', async () => {
    const state = new StateStore(join(dir, 'catch-up.sqlite'));
    const clock = new ManualClock(Date.parse('2026-11-25T12:00:00Z'));

    const first = daemon(state, clock);
    first.start();
    await first.idle();
    first.stop();
    expect(state.jobs('backup', 'r'), 'a first start has nothing to catch up').toEqual([]);
    expect(state.lastFire('daily', 'r')?.toISOString()).toBe('2026-11-25T12:00:00.000Z');

    // Down for five days: five firings missed, one run caught up.
    clock.ms = Date.parse('2026-11-30T12:00:00Z');
    const second = daemon(state, clock);
    second.start();
    await second.idle();
    expect(state.jobs('backup', 'r').map((j) => j.status)).toEqual(['ok']);
    expect(state.lastFire('daily', 'r')?.toISOString()).toBe('2026-11-30T02:00:00.000Z');
    const status = second.status();
    expect(status.resources[0]).toMatchObject({ name: 'r', policy: 'daily', nextRun: '2026-12-01T02:00:00.000Z' });
    expect(status.resources[0].lastResult?.backup).toMatch(/^autobk_/);
    second.stop();

    // Started again the same day: that firing was run already.
    const third = daemon(state, clock);
    third.start();
    await third.idle();
    third.stop();
    expect(state.jobs('backup', 'r')).toHaveLength(1);
    state.close();
  });

  it('prunes the policy backups of the resource by its retention after each run', async () => {
    const state = new StateStore(join(dir, 'prune.sqlite'));
    const d = daemon(state, new ManualClock(Date.now()));
    for (let i = 0; i < 5; i++) {
      expect(d.runNow('r')).toBe(true);
      await d.idle();
    }
    d.stop();
    const vault = await Vault.open(new LocalStore(vaultDir), 'daemon test');
    const names = (await vault.listBackups()).map((m) => m.name);
    expect(names).toHaveLength(3);
    expect(names.every((n) => n.startsWith('autobk_'))).toBe(true);
    expect(state.jobs('backup', 'r').map((j) => j.status)).toEqual(['ok', 'ok', 'ok', 'ok', 'ok']);
    const metrics = d.metrics();
    expect(metrics.backups).toEqual([{ resource: 'r', vault: 'v', result: 'ok', count: 5 }]);
    state.close();
  });
});

describe('AgentDaemon with pushed policies', () => {
  it('keeps a pushed policy apart from a config policy of the same name: both apply', () => {
    const state = new StateStore(join(dir, 'pushed.sqlite'));
    const clock = new ManualClock(Date.parse('2026-11-25T12:00:00Z'));
    const d = daemon(state, clock);
    d.setPushedPolicies(
      pushedPolicies([{ name: 'daily', enabled: true, vaults: ['v', 'elsewhere'], trigger: { cron: '30 1 * * *', timezone: 'UTC' }, retention: { max_backups: 2 } }]),
    );
    d.start();
    try {
      expect(d.policies().map((p) => [p.name, p.origin ?? 'config'])).toEqual([
        ['daily', 'config'],
        ['daily', 'control-plane'],
      ]);
      expect(state.lastFire('daily', 'r')?.toISOString()).toBe('2026-11-25T12:00:00.000Z');
      expect(state.lastFire('cp:daily', 'r')?.toISOString()).toBe('2026-11-25T12:00:00.000Z');
      // The pushed schedule (01:30) comes before the config's (02:00).
      expect(d.status().resources[0]).toMatchObject({ name: 'r', nextRun: '2026-11-26T01:30:00.000Z' });

      d.setPushedPolicies([]);
      expect(d.status().resources[0]).toMatchObject({ nextRun: '2026-11-26T02:00:00.000Z', policy: 'daily' });
    } finally {
      d.stop();
      state.close();
    }
  });
});
