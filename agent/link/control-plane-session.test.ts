import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import type { BackupSummary, Policy, PolicyPushMessage } from '../../shared/protocol/messages.js';
import type { AgentDaemon, DaemonLog } from '../daemon/daemon.js';
import type { RunningJob } from '../daemon/status.js';
import { StateStore } from '../state/state-store.js';
import { ControlPlaneSession, withoutCredentials } from './control-plane-session.js';

describe('withoutCredentials', () => {
  it('removes a URL user and password and leaves everything else as written', () => {
    expect(withoutCredentials('nbd://backup:s3cret@10.0.0.5:10809/db?bitmap=b1')).toBe('nbd://10.0.0.5:10809/db?bitmap=b1');
    expect(withoutCredentials('nbd://admin@10.0.0.5/db')).toBe('nbd://10.0.0.5/db');
    expect(withoutCredentials('nbd+unix:///disk?socket=/run/nbd.sock')).toBe('nbd+unix:///disk?socket=/run/nbd.sock');
    expect(withoutCredentials('/var/lib/images/web.img')).toBe('/var/lib/images/web.img');
  });
});

function backup(id: string): BackupSummary {
  return {
    id,
    name: `autobk_${id}`,
    vault: 'main',
    resource: 'web',
    kind: 'full',
    startedAt: '2026-01-02T02:00:00.000Z',
    finishedAt: '2026-01-02T03:00:00.000Z',
    bytesRead: 1000,
    bytesStored: 400,
  };
}

const nightly: Policy = { name: 'nightly', enabled: true, vaults: ['main'], trigger: { cron: '0 2 * * *', timezone: 'UTC' }, retention: { max_backups: 7 } };

/**
 * The session without a link (start() is not called): its daemon hooks and outbox, and the link
 * callbacks it would be given (private, reached through `hooks`).
 */
describe('ControlPlaneSession', () => {
  let dir: string;
  let store: StateStore;
  const log: DaemonLog = { info: () => {}, warn: () => {}, error: () => {} };
  let scans: { resolve: (b: BackupSummary[]) => void }[];
  let daemon: AgentDaemon;
  let session: ControlPlaneSession;
  const hooks = () => session as unknown as { onPolicyPush(m: PolicyPushMessage): Promise<void>; onWelcome(): void; onCommand(m: unknown): void; policyVersion: number | null };

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cairn-session-'));
    store = new StateStore(join(dir, 'agent.sqlite'));
    scans = [];
    daemon = {
      catalog: () => new Promise<BackupSummary[]>((resolve) => scans.push({ resolve })),
      setPushedPolicies: vi.fn(),
      configuration: { vaults: new Map(), resources: new Map() },
      runningJobs: () => [],
    } as unknown as AgentDaemon;
    session = new ControlPlaneSession({
      daemon,
      store,
      state: { controlPlaneUrl: 'wss://cp.invalid/v1/agent', agentId: 'agent-1', credential: 'x', caCertPem: '', caFingerprint: '' },
      agentVersion: '0.1.0',
      inventory: null,
      log,
    });
  });

  afterEach(async () => {
    await session.close();
    store.close();
    await rm(dir, { recursive: true, force: true });
  });

  const outboxTypes = () => store.outbox().map((e) => ({ type: e.type, backups: e.type === 'catalog-sync' ? (JSON.parse(e.body).backups as BackupSummary[]).map((b) => b.id) : undefined }));

  it('scans a vault again when a backup finished during the scan, so the sync after its job-result lists it', async () => {
    session.vaultChanged('main');
    await vi.waitFor(() => expect(scans).toHaveLength(1));
    // The backup b2 finishes while the scan (which saw only b1) is running: its job-result is queued first.
    const job: RunningJob = { id: 'backup-1', kind: 'backup', resource: 'web', vault: 'main', policy: 'nightly', startedAt: '2026-01-02T02:00:00.000Z', progress: null };
    session.jobFinished({ job, status: 'ok', backup: backup('b2'), error: null });
    scans[0]!.resolve([backup('b1')]);
    // The stale scan is not queued: the vault is scanned again.
    await vi.waitFor(() => expect(scans).toHaveLength(2));
    expect(outboxTypes()).toEqual([{ type: 'job-result', backups: undefined }]);
    scans[1]!.resolve([backup('b1'), backup('b2')]);
    await vi.waitFor(() => expect(outboxTypes()).toEqual([{ type: 'job-result', backups: undefined }, { type: 'catalog-sync', backups: ['b1', 'b2'] }]));
  });

  it('queues a scan at once when nothing changed during it', async () => {
    session.vaultChanged('main');
    await vi.waitFor(() => expect(scans).toHaveLength(1));
    const job: RunningJob = { id: 'restore-1', kind: 'restore', resource: 'web', vault: 'main', policy: null, startedAt: '2026-01-02T02:00:00.000Z', progress: null };
    session.jobFinished({ job, status: 'ok', backup: null, error: null });
    scans[0]!.resolve([backup('b1')]);
    await vi.waitFor(() => expect(outboxTypes()).toEqual([{ type: 'job-result', backups: undefined }, { type: 'catalog-sync', backups: ['b1'] }]));
    expect(scans).toHaveLength(1);
  });

  it('takes the first push after a welcome even with a lower version (a replaced catalog), later ones only when higher', async () => {
    const { onPolicyPush, onWelcome } = hooks();
    const push = (version: number): PolicyPushMessage => ({ v: 1, type: 'policy-push', id: `p-${version}`, version, policies: [nightly] });
    onWelcome.call(session);
    await onPolicyPush.call(session, push(57));
    expect(store.pushedPolicySet()?.version).toBe(57);
    // On the same connection a lower version is stale.
    await onPolicyPush.call(session, push(3));
    expect(store.pushedPolicySet()?.version).toBe(57);
    // The first push of the next connection is the control plane's current set, whatever its version.
    onWelcome.call(session);
    await onPolicyPush.call(session, push(3));
    expect(store.pushedPolicySet()?.version).toBe(3);
    expect(hooks().policyVersion).toBe(3);
    await onPolicyPush.call(session, push(2));
    expect(store.pushedPolicySet()?.version).toBe(3);
  });

  it('logs, rather than leaves unhandled, a failure to store the result of a catalog-sync command', async () => {
    const errors: string[] = [];
    session = new ControlPlaneSession({
      daemon,
      store,
      state: { controlPlaneUrl: 'wss://cp.invalid/v1/agent', agentId: 'agent-1', credential: 'x', caCertPem: '', caFingerprint: '' },
      agentVersion: '0.1.0',
      inventory: null,
      log: { ...log, error: (m) => errors.push(m) },
    });
    const unhandled = vi.fn();
    process.on('unhandledRejection', unhandled);
    try {
      vi.spyOn(store, 'enqueueJobResult').mockImplementation(() => {
        throw new Error('SQLITE_FULL: database or disk is full');
      });
      hooks().onCommand.call(session, { v: 1, type: 'command', id: 'c', commandId: 'cmd-1', action: 'catalog-sync', vault: 'main', resource: null, args: {} });
      await vi.waitFor(() => expect(scans).toHaveLength(1));
      scans[0]!.resolve([]);
      await vi.waitFor(() => expect(errors.some((e) => e.includes('catalog-sync command'))).toBe(true));
      await new Promise((r) => setTimeout(r, 20));
      expect(unhandled).not.toHaveBeenCalled();
    } finally {
      process.off('unhandledRejection', unhandled);
    }
  });
});
