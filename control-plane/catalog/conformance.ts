/**
 * The conformance suite every Catalog implementation must pass: one group per part of catalog.ts,
 * one test per contract stated there. An implementation's test file calls describeCatalog with a
 * factory that makes a fresh, empty catalog and a cleanup for it (called after close()).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { rejection } from '../../shared/store/conformance.js';
import type {
  AgentInput,
  BackupInput,
  Catalog,
  CatalogEvent,
  JobResultRecord,
  PolicyRecord,
  ScannedBackup,
  SyncPartInput,
  VaultInput,
} from './catalog.js';

export interface CatalogUnderTest {
  catalog: Catalog;
  cleanup: () => Promise<void>;
}

/** A fixed instant plus `minutes`, as the catalog stores it. */
export function at(minutes: number): string {
  return new Date(Date.UTC(2025, 2, 1) + minutes * 60_000).toISOString();
}

export function agentInput(agentId: string, enrolledMinute = 0): AgentInput {
  return {
    agentId,
    credentialHash: `sha256:${agentId}`,
    hostname: `${agentId}.example`,
    inventory: { os: { platform: 'linux', release: '6.8' }, disks: [{ name: 'sda', sizeBytes: 1e12 }], memoryBytes: 17179869184 },
    enrolledAt: at(enrolledMinute),
  };
}

export function vaultInput(name: string, overrides: Partial<VaultInput> = {}): VaultInput {
  return { name, type: 'server', location: `s3://backups/${name}`, capacityBytes: null, ...overrides };
}

export function policyInput(name: string, overrides: Partial<PolicyRecord> = {}): PolicyRecord {
  return {
    name,
    enabled: true,
    trigger: { patterns: ['FREQ=DAILY;INTERVAL=1;BYHOUR=2;BYMINUTE=00'], timezone: 'Europe/Berlin' },
    retention: { max_backups: 7, week_backups: 4, timezone: 'Europe/Berlin' },
    vaults: [],
    ...overrides,
  };
}

/** A backup started at minute `minute`, finished ten minutes later. */
export function backupInput(id: string, minute: number, overrides: Partial<BackupInput> = {}): BackupInput {
  return {
    id,
    name: `autobk_${id}`,
    vault: 'v1',
    resource: 'web',
    agentId: 'agent-1',
    kind: 'incremental',
    startedAt: at(minute),
    finishedAt: at(minute + 10),
    bytesRead: 1000 + minute,
    bytesStored: 100 + minute,
    consistency: 'crash_consistent',
    logicalBytes: 10_000 + minute,
    host: 'web.example',
    status: 'available',
    ...overrides,
  };
}

/** Events a watcher hears, and a way to wait until it has heard `count` of them. */
export function watchEvents(catalog: Catalog): { seen: CatalogEvent[]; until: (count: number) => Promise<CatalogEvent[]>; stop: () => void } {
  const seen: CatalogEvent[] = [];
  const stop = catalog.watch((e) => seen.push(e));
  const until = async (count: number) => {
    const deadline = Date.now() + 5000;
    while (seen.length < count && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    return seen;
  };
  return { seen, until, stop };
}

export function jobResult(agentId: string, jobId: string, minute: number, overrides: Partial<JobResultRecord> = {}): JobResultRecord {
  return { agentId, jobId, commandId: null, status: 'ok', backupId: `b-${jobId}`, errorCode: null, errorMessage: null, receivedAt: at(minute), ...overrides };
}

export function scanned(b: BackupInput): ScannedBackup {
  const { status: _status, deletedAt: _deletedAt, ...rest } = b;
  return rest;
}

export function describeCatalog(name: string, make: () => Promise<CatalogUnderTest>): void {
  describe(`Catalog conformance: ${name}`, () => {
    let catalog: Catalog;
    let cleanup: (() => Promise<void>) | undefined;

    beforeEach(async () => {
      ({ catalog, cleanup } = await make());
    });
    afterEach(async () => {
      await catalog.close();
      await cleanup?.();
      cleanup = undefined;
    });

    describe('enrollment tokens', () => {
      const token = { id: 'tok-1', secretHash: 'sha256:abc', createdAt: at(0), expiresAt: at(60) };

      it('stores a token unused, with its times in UTC', async () => {
        await catalog.addEnrollmentToken({ ...token, expiresAt: '2025-03-01T02:00:00+01:00' });
        expect(await catalog.getEnrollmentToken('tok-1')).toEqual({ ...token, usedAt: null });
        expect(await catalog.getEnrollmentToken('nope')).toBeUndefined();
      });

      it('refuses a taken id with ALREADY_EXISTS and keeps the first token', async () => {
        await catalog.addEnrollmentToken(token);
        const err = await rejection(catalog.addEnrollmentToken({ ...token, secretHash: 'other' }), 'ALREADY_EXISTS');
        expect(err.message).toContain('tok-1');
        expect((await catalog.getEnrollmentToken('tok-1'))?.secretHash).toBe('sha256:abc');
      });

      it('refuses an unparsable time with USAGE', async () => {
        await rejection(catalog.addEnrollmentToken({ ...token, expiresAt: 'tomorrow' }), 'USAGE');
        await rejection(catalog.useEnrollmentToken('tok-1', 'now'), 'USAGE');
      });

      it('is used once: the first use returns the token as it was, later uses nothing', async () => {
        await catalog.addEnrollmentToken(token);
        expect(await catalog.useEnrollmentToken('tok-1', at(5))).toEqual({ ...token, usedAt: null });
        expect(await catalog.useEnrollmentToken('tok-1', at(6))).toBeUndefined();
        expect((await catalog.getEnrollmentToken('tok-1'))?.usedAt).toBe(at(5));
      });

      it('gives nothing for an unknown or expired token, and leaves an expired one unused', async () => {
        await catalog.addEnrollmentToken(token);
        expect(await catalog.useEnrollmentToken('unknown', at(5))).toBeUndefined();
        expect(await catalog.useEnrollmentToken('tok-1', at(60))).toBeUndefined();
        expect(await catalog.useEnrollmentToken('tok-1', at(61))).toBeUndefined();
        expect((await catalog.getEnrollmentToken('tok-1'))?.usedAt).toBeNull();
      });

      it('lets exactly one of 10 concurrent users have the token', async () => {
        await catalog.addEnrollmentToken(token);
        const results = await Promise.all(Array.from({ length: 10 }, (_, i) => catalog.useEnrollmentToken('tok-1', at(1 + i))));
        const winners = results.filter((r) => r !== undefined);
        expect(winners).toEqual([{ ...token, usedAt: null }]);
        expect((await catalog.getEnrollmentToken('tok-1'))?.usedAt).not.toBeNull();
      });
    });

    describe('agents', () => {
      it('stores an agent offline, never seen, with no ack, and its inventory as given', async () => {
        const input = agentInput('agent-1');
        await catalog.addAgent(input);
        expect(await catalog.getAgent('agent-1')).toEqual({
          ...input,
          lastSeen: null,
          status: 'offline',
          revokedAt: null,
          policyAck: 0,
        });
        expect(await catalog.getAgent('agent-2')).toBeUndefined();
      });

      it('refuses a taken id with ALREADY_EXISTS', async () => {
        await catalog.addAgent(agentInput('agent-1'));
        const err = await rejection(catalog.addAgent({ ...agentInput('agent-1'), hostname: 'other' }), 'ALREADY_EXISTS');
        expect(err.message).toContain('agent-1');
        expect((await catalog.getAgent('agent-1'))?.hostname).toBe('agent-1.example');
      });

      it('lists agents in order of enrollment', async () => {
        await catalog.addAgent(agentInput('b', 2));
        await catalog.addAgent(agentInput('a', 3));
        await catalog.addAgent(agentInput('c', 1));
        expect((await catalog.listAgents()).map((a) => a.agentId)).toEqual(['c', 'b', 'a']);
      });

      it('records contact and status', async () => {
        await catalog.addAgent(agentInput('agent-1'));
        await catalog.touchAgent('agent-1', at(5), 'online');
        expect(await catalog.getAgent('agent-1')).toMatchObject({ lastSeen: at(5), status: 'online' });
        await catalog.touchAgent('agent-1', at(9), 'offline');
        expect(await catalog.getAgent('agent-1')).toMatchObject({ lastSeen: at(9), status: 'offline' });
        await rejection(catalog.touchAgent('ghost', at(5), 'online'), 'NOT_FOUND');
        await rejection(catalog.touchAgent('agent-1', at(5), 'asleep' as 'online'), 'USAGE');
      });

      it('keeps a revoked agent listed, with the first revocation time', async () => {
        await catalog.addAgent(agentInput('agent-1'));
        await catalog.addAgent(agentInput('agent-2', 1));
        await catalog.revokeAgent('agent-1', at(10));
        await catalog.revokeAgent('agent-1', at(20));
        const agents = await catalog.listAgents();
        expect(agents.map((a) => [a.agentId, a.revokedAt])).toEqual([
          ['agent-1', at(10)],
          ['agent-2', null],
        ]);
        // A revoked agent's connection can still be marked offline.
        await catalog.touchAgent('agent-1', at(21), 'offline');
        expect((await catalog.getAgent('agent-1'))?.lastSeen).toBe(at(21));
        await rejection(catalog.revokeAgent('ghost', at(10)), 'NOT_FOUND');
      });

      it('records policy acks, which only grow and never pass the current version', async () => {
        await catalog.addAgent(agentInput('agent-1'));
        await catalog.createPolicy(policyInput('p1'));
        await catalog.updatePolicy('p1', { enabled: false });
        await catalog.setAgentPolicyAck('agent-1', 2);
        expect((await catalog.getAgent('agent-1'))?.policyAck).toBe(2);
        await catalog.setAgentPolicyAck('agent-1', 1);
        expect((await catalog.getAgent('agent-1'))?.policyAck).toBe(2);
        const err = await rejection(catalog.setAgentPolicyAck('agent-1', 3), 'USAGE');
        expect(err.message).toContain('3');
        await rejection(catalog.setAgentPolicyAck('agent-1', -1), 'USAGE');
        await rejection(catalog.setAgentPolicyAck('ghost', 1), 'NOT_FOUND');
        expect((await catalog.getAgent('agent-1'))?.policyAck).toBe(2);
      });

      it('returns copies: changing a returned record changes nothing stored', async () => {
        await catalog.addAgent(agentInput('agent-1'));
        const a = (await catalog.getAgent('agent-1'))!;
        (a.inventory as Record<string, unknown>).memoryBytes = 1;
        a.hostname = 'changed';
        expect(await catalog.getAgent('agent-1')).toMatchObject({ hostname: 'agent-1.example', inventory: { memoryBytes: 17179869184 } });
      });
    });

    describe('vaults', () => {
      it('creates a vault and replaces its type, location and capacity on the next upsert', async () => {
        await catalog.upsertVault(vaultInput('v2'));
        await catalog.upsertVault(vaultInput('v1'));
        await catalog.upsertVault(vaultInput('v2', { type: 'hybrid', location: '/srv/vaults/v2', capacityBytes: 5e12 }));
        expect(await catalog.listVaults()).toEqual([
          { ...vaultInput('v1'), usedBytes: 0, backupCount: 0, resources: [], policies: [] },
          { name: 'v2', type: 'hybrid', location: '/srv/vaults/v2', capacityBytes: 5e12, usedBytes: 0, backupCount: 0, resources: [], policies: [] },
        ]);
      });

      it('reports usage of available backups only, and the resources and policies of each vault', async () => {
        await catalog.addAgent(agentInput('agent-1'));
        await catalog.upsertVault(vaultInput('v1'));
        await catalog.upsertVault(vaultInput('v2'));
        await catalog.upsertResource({ name: 'web', agentId: 'agent-1', vault: 'v1', disks: ['/dev/sda'] });
        await catalog.upsertResource({ name: 'db', agentId: 'agent-1', vault: 'v1', disks: ['/dev/sdb'] });
        await catalog.upsertResource({ name: 'mail', agentId: 'agent-1', vault: 'v2', disks: ['/dev/sdc'] });
        await catalog.createPolicy(policyInput('nightly', { vaults: ['v1'] }));
        await catalog.createPolicy(policyInput('hourly', { vaults: ['v1', 'v2'] }));
        await catalog.recordBackup(backupInput('b1', 0, { bytesStored: 1000 }));
        await catalog.recordBackup(backupInput('b2', 1, { bytesStored: 234 }));
        await catalog.recordBackup(backupInput('b3', 2, { bytesStored: 99999 }));
        await catalog.markBackupDeleted('b3', at(30));
        const vaults = await catalog.listVaults();
        expect(vaults.map((v) => [v.name, v.usedBytes, v.backupCount, v.resources, v.policies])).toEqual([
          ['v1', 1234, 2, ['db', 'web'], ['hourly', 'nightly']],
          ['v2', 0, 0, ['mail'], ['hourly']],
        ]);
      });

      it('refuses a location that carries credentials, without repeating the secret', async () => {
        for (const location of ['s3://AKIA123:hunter2@bucket/prefix', 's3://bucket/prefix?secretKey=hunter2', 'https://user@host/x']) {
          const err = await rejection(catalog.upsertVault(vaultInput('v1', { location })), 'USAGE');
          expect(err.message).not.toContain('hunter2');
        }
        expect(await catalog.listVaults()).toEqual([]);
      });

      it('refuses an unknown type, an empty name and a capacity that is not a positive integer', async () => {
        await rejection(catalog.upsertVault(vaultInput('v1', { type: 'tape' as 'disk' })), 'USAGE');
        await rejection(catalog.upsertVault(vaultInput('')), 'USAGE');
        await rejection(catalog.upsertVault(vaultInput('v1', { capacityBytes: 0 })), 'USAGE');
        await rejection(catalog.upsertVault(vaultInput('v1', { capacityBytes: 1.5 })), 'USAGE');
        expect(await catalog.listVaults()).toEqual([]);
      });
    });

    describe('ensureVault', () => {
      it('creates an unknown vault as a server vault of unknown location and no capacity', async () => {
        await catalog.ensureVault('v1');
        await catalog.ensureVault('v1');
        expect(await catalog.listVaults()).toEqual([
          { name: 'v1', type: 'server', location: '', capacityBytes: null, usedBytes: 0, backupCount: 0, resources: [], policies: [] },
        ]);
      });

      it('leaves a known vault as it is, and refuses an empty name with USAGE', async () => {
        await catalog.upsertVault(vaultInput('v1', { type: 'disk', capacityBytes: 5e9 }));
        await catalog.ensureVault('v1');
        expect((await catalog.listVaults())[0]).toMatchObject(vaultInput('v1', { type: 'disk', capacityBytes: 5e9 }));
        await rejection(catalog.ensureVault(''), 'USAGE');
        expect(await catalog.listVaults()).toHaveLength(1);
      });
    });

    describe('resources', () => {
      beforeEach(async () => {
        await catalog.addAgent(agentInput('agent-1'));
        await catalog.addAgent(agentInput('agent-2', 1));
        await catalog.upsertVault(vaultInput('v1'));
        await catalog.upsertVault(vaultInput('v2'));
      });

      it('creates a resource and replaces its agent, vault and disks on the next upsert', async () => {
        await catalog.upsertResource({ name: 'web', agentId: 'agent-1', vault: 'v1', disks: ['/dev/sda'] });
        await catalog.upsertResource({ name: 'web', agentId: 'agent-2', vault: 'v2', disks: ['/dev/sda', 'nbd+unix:///x?socket=/s'] });
        expect(await catalog.listResources()).toEqual([{ name: 'web', agentId: 'agent-2', vault: 'v2', disks: ['/dev/sda', 'nbd+unix:///x?socket=/s'] }]);
      });

      it('filters by agent, by vault and by both, sorted by name', async () => {
        await catalog.upsertResource({ name: 'web', agentId: 'agent-1', vault: 'v1', disks: ['a'] });
        await catalog.upsertResource({ name: 'db', agentId: 'agent-1', vault: 'v2', disks: ['b'] });
        await catalog.upsertResource({ name: 'mail', agentId: 'agent-2', vault: 'v1', disks: ['c'] });
        const names = async (f?: Parameters<Catalog['listResources']>[0]) => (await catalog.listResources(f)).map((r) => r.name);
        expect(await names()).toEqual(['db', 'mail', 'web']);
        expect(await names({ agentId: 'agent-1' })).toEqual(['db', 'web']);
        expect(await names({ vault: 'v1' })).toEqual(['mail', 'web']);
        expect(await names({ agentId: 'agent-1', vault: 'v1' })).toEqual(['web']);
        expect(await names({ agentId: 'nobody' })).toEqual([]);
      });

      it('refuses an unknown agent or vault with NOT_FOUND, and disks that are not strings with USAGE', async () => {
        expect((await rejection(catalog.upsertResource({ name: 'web', agentId: 'ghost', vault: 'v1', disks: [] }), 'NOT_FOUND')).message).toContain('ghost');
        expect((await rejection(catalog.upsertResource({ name: 'web', agentId: 'agent-1', vault: 'v9', disks: [] }), 'NOT_FOUND')).message).toContain('v9');
        await rejection(catalog.upsertResource({ name: 'web', agentId: 'agent-1', vault: 'v1', disks: [7 as unknown as string] }), 'USAGE');
        expect(await catalog.listResources()).toEqual([]);
      });
    });

    describe('replaceAgentResources', () => {
      beforeEach(async () => {
        await catalog.addAgent(agentInput('agent-1'));
        await catalog.addAgent(agentInput('agent-2', 1));
        await catalog.upsertVault(vaultInput('v1'));
      });
      const all = async () => (await catalog.listResources()).map((r) => [r.name, r.agentId, r.vault, r.disks]);

      it("makes the agent's resources exactly the list: adds, updates and removes, leaving other agents' alone", async () => {
        await catalog.upsertResource({ name: 'old', agentId: 'agent-1', vault: 'v1', disks: ['/dev/sdz'] });
        await catalog.upsertResource({ name: 'web', agentId: 'agent-1', vault: 'v1', disks: ['/dev/sda'] });
        await catalog.upsertResource({ name: 'mail', agentId: 'agent-2', vault: 'v1', disks: ['/dev/sdc'] });
        const report = [
          { name: 'web', vault: 'v1', disks: ['/dev/sda', '/dev/sdb'] },
          { name: 'db', vault: 'v1', disks: ['/dev/nvme0n1'] },
        ];
        await catalog.replaceAgentResources('agent-1', report);
        const expected = [
          ['db', 'agent-1', 'v1', ['/dev/nvme0n1']],
          ['mail', 'agent-2', 'v1', ['/dev/sdc']],
          ['web', 'agent-1', 'v1', ['/dev/sda', '/dev/sdb']],
        ];
        expect(await all()).toEqual(expected);
        // The same report again is the same state.
        await catalog.replaceAgentResources('agent-1', report);
        expect(await all()).toEqual(expected);
        await catalog.replaceAgentResources('agent-1', []);
        expect(await all()).toEqual([['mail', 'agent-2', 'v1', ['/dev/sdc']]]);
      });

      it("keeps a name another unrevoked agent holds with that agent and returns the conflict; creates unknown vaults as ensureVault does", async () => {
        await catalog.upsertResource({ name: 'web', agentId: 'agent-2', vault: 'v1', disks: ['/dev/sda'] });
        const conflicts = await catalog.replaceAgentResources('agent-1', [
          { name: 'web', vault: 'v-new', disks: ['/dev/sdb'] },
          { name: 'db', vault: 'v1', disks: ['/dev/sdc'] },
        ]);
        expect(conflicts).toEqual([{ name: 'web', heldBy: 'agent-2' }]);
        expect(await all()).toEqual([
          ['db', 'agent-1', 'v1', ['/dev/sdc']],
          ['web', 'agent-2', 'v1', ['/dev/sda']],
        ]);
        expect((await catalog.listVaults()).map((v) => [v.name, v.type, v.location, v.resources])).toEqual([
          ['v-new', 'server', '', []],
          ['v1', 'server', 's3://backups/v1', ['db', 'web']],
        ]);
        // The holder's own report is no conflict.
        expect(await catalog.replaceAgentResources('agent-2', [{ name: 'web', vault: 'v1', disks: ['/dev/sdd'] }])).toEqual([]);
      });

      it('moves a name a revoked agent holds to the reporting agent', async () => {
        await catalog.upsertResource({ name: 'web', agentId: 'agent-2', vault: 'v1', disks: ['/dev/sda'] });
        await catalog.revokeAgent('agent-2', at(5));
        expect(await catalog.replaceAgentResources('agent-1', [{ name: 'web', vault: 'v1', disks: ['/dev/sdb'] }])).toEqual([]);
        expect(await all()).toEqual([['web', 'agent-1', 'v1', ['/dev/sdb']]]);
      });

      it('refuses an unknown agent with NOT_FOUND, and a repeated name or a bad entry with USAGE, changing nothing', async () => {
        await catalog.upsertResource({ name: 'web', agentId: 'agent-1', vault: 'v1', disks: ['/dev/sda'] });
        expect((await rejection(catalog.replaceAgentResources('ghost', [{ name: 'x', vault: 'v2', disks: [] }]), 'NOT_FOUND')).message).toContain('ghost');
        const twice = await rejection(
          catalog.replaceAgentResources('agent-1', [
            { name: 'db', vault: 'v2', disks: [] },
            { name: 'db', vault: 'v2', disks: ['/dev/sdb'] },
          ]),
          'USAGE',
        );
        expect(twice.message).toContain('db');
        await rejection(catalog.replaceAgentResources('agent-1', [{ name: 'db', vault: 'v2', disks: [] }, { name: 'mail', vault: '', disks: [] }]), 'USAGE');
        await rejection(catalog.replaceAgentResources('agent-1', [{ name: 'db', vault: 'v2', disks: 'sda' as unknown as string[] }]), 'USAGE');
        expect(await all()).toEqual([['web', 'agent-1', 'v1', ['/dev/sda']]]);
        expect((await catalog.listVaults()).map((v) => v.name)).toEqual(['v1']);
      });
    });

    describe('policies and the policy version', () => {
      beforeEach(async () => {
        await catalog.upsertVault(vaultInput('v1'));
        await catalog.upsertVault(vaultInput('v2'));
      });

      it('starts at version 0', async () => {
        expect(await catalog.policyVersion()).toBe(0);
        expect(await catalog.listPolicies()).toEqual([]);
      });

      it('creates a policy, with its vaults sorted and once each, and bumps the version', async () => {
        expect(await catalog.createPolicy(policyInput('nightly', { vaults: ['v2', 'v1', 'v2'] }))).toBe(1);
        expect(await catalog.getPolicy('nightly')).toEqual(policyInput('nightly', { vaults: ['v1', 'v2'] }));
        expect(await catalog.createPolicy(policyInput('hourly', { trigger: { cron: '0 * * * *', timezone: 'UTC' }, retention: {} }))).toBe(2);
        expect((await catalog.listPolicies()).map((p) => p.name)).toEqual(['hourly', 'nightly']);
        expect(await catalog.getPolicy('nope')).toBeUndefined();
        expect(await catalog.policyVersion()).toBe(2);
      });

      it('refuses a taken name, an unknown vault and a bad policy without storing or bumping anything', async () => {
        await catalog.createPolicy(policyInput('nightly'));
        await rejection(catalog.createPolicy(policyInput('nightly', { enabled: false })), 'ALREADY_EXISTS');
        expect((await rejection(catalog.createPolicy(policyInput('other', { vaults: ['v1', 'v9'] })), 'NOT_FOUND')).message).toContain('v9');
        await rejection(catalog.createPolicy(policyInput('bad', { trigger: { timezone: 'UTC' } })), 'USAGE');
        await rejection(catalog.createPolicy(policyInput('bad', { retention: { keep_forever: 1 } as never })), 'USAGE');
        await rejection(catalog.createPolicy(policyInput('bad', { retention: { max_backups: 'seven' } as never })), 'USAGE');
        expect((await catalog.listPolicies()).map((p) => [p.name, p.enabled])).toEqual([['nightly', true]]);
        expect(await catalog.policyVersion()).toBe(1);
      });

      it('updates only the fields given; given vaults replace the bindings', async () => {
        await catalog.createPolicy(policyInput('nightly', { vaults: ['v1'] }));
        expect(await catalog.updatePolicy('nightly', { enabled: false })).toBe(2);
        expect(await catalog.getPolicy('nightly')).toEqual(policyInput('nightly', { enabled: false, vaults: ['v1'] }));
        expect(await catalog.updatePolicy('nightly', { retention: { max_backups: 3 }, vaults: ['v2'] })).toBe(3);
        expect(await catalog.getPolicy('nightly')).toEqual(policyInput('nightly', { enabled: false, retention: { max_backups: 3 }, vaults: ['v2'] }));
        expect((await catalog.listVaults()).map((v) => v.policies)).toEqual([[], ['nightly']]);
      });

      it('does not bump for an update that changes nothing, nor for a failed one', async () => {
        await catalog.createPolicy(policyInput('nightly', { vaults: ['v1'] }));
        expect(await catalog.updatePolicy('nightly', {})).toBe(1);
        expect(await catalog.updatePolicy('nightly', { enabled: true, vaults: ['v1', 'v1'], retention: { week_backups: 4, timezone: 'Europe/Berlin', max_backups: 7 } })).toBe(1);
        await rejection(catalog.updatePolicy('nope', { enabled: false }), 'NOT_FOUND');
        await rejection(catalog.updatePolicy('nightly', { vaults: ['v9'] }), 'NOT_FOUND');
        await rejection(catalog.updatePolicy('nightly', { trigger: { timezone: 'UTC' } }), 'USAGE');
        expect(await catalog.policyVersion()).toBe(1);
        expect((await catalog.getPolicy('nightly'))?.vaults).toEqual(['v1']);
      });

      it('deletes a policy with its bindings and bumps; an unknown one is NOT_FOUND', async () => {
        await catalog.createPolicy(policyInput('nightly', { vaults: ['v1', 'v2'] }));
        expect(await catalog.deletePolicy('nightly')).toBe(2);
        expect(await catalog.getPolicy('nightly')).toBeUndefined();
        expect((await catalog.listVaults()).map((v) => v.policies)).toEqual([[], []]);
        await rejection(catalog.deletePolicy('nightly'), 'NOT_FOUND');
        expect(await catalog.policyVersion()).toBe(2);
        // The name is free again.
        expect(await catalog.createPolicy(policyInput('nightly'))).toBe(3);
        expect((await catalog.getPolicy('nightly'))?.vaults).toEqual([]);
      });

      it('binds and unbinds, bumping only when the binding changes', async () => {
        await catalog.createPolicy(policyInput('nightly'));
        expect(await catalog.bindPolicy('nightly', 'v2')).toBe(2);
        expect(await catalog.bindPolicy('nightly', 'v1')).toBe(3);
        expect(await catalog.bindPolicy('nightly', 'v1')).toBe(3);
        expect((await catalog.getPolicy('nightly'))?.vaults).toEqual(['v1', 'v2']);
        expect(await catalog.unbindPolicy('nightly', 'v2')).toBe(4);
        expect(await catalog.unbindPolicy('nightly', 'v2')).toBe(4);
        expect(await catalog.unbindPolicy('nightly', 'never-bound')).toBe(4);
        expect((await catalog.getPolicy('nightly'))?.vaults).toEqual(['v1']);
        await rejection(catalog.bindPolicy('nightly', 'v9'), 'NOT_FOUND');
        await rejection(catalog.bindPolicy('nope', 'v1'), 'NOT_FOUND');
        await rejection(catalog.unbindPolicy('nope', 'v1'), 'NOT_FOUND');
        expect(await catalog.policyVersion()).toBe(4);
      });

      it('keeps one global version: concurrent changes to different policies get distinct consecutive versions', async () => {
        const versions = await Promise.all(Array.from({ length: 10 }, (_, i) => catalog.createPolicy(policyInput(`p${i}`, { vaults: ['v1'] }))));
        expect([...versions].sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        const more = await Promise.all([catalog.unbindPolicy('p0', 'v1'), catalog.bindPolicy('p1', 'v2'), catalog.deletePolicy('p2'), catalog.updatePolicy('p3', { enabled: false })]);
        expect([...more].sort((a, b) => a - b)).toEqual([11, 12, 13, 14]);
        expect(await catalog.policyVersion()).toBe(14);
      });

      it('returns copies: changing a returned policy changes nothing stored', async () => {
        await catalog.createPolicy(policyInput('nightly', { vaults: ['v1'] }));
        const p = (await catalog.getPolicy('nightly'))!;
        p.vaults.push('v2');
        p.trigger.timezone = 'UTC';
        expect(await catalog.getPolicy('nightly')).toEqual(policyInput('nightly', { vaults: ['v1'] }));
      });
    });

    describe('backups', () => {
      beforeEach(async () => {
        await catalog.upsertVault(vaultInput('v1'));
        await catalog.upsertVault(vaultInput('v2'));
      });

      it('records a backup with every field, and nothing for an unknown id', async () => {
        const b = backupInput('b1', 0, { kind: 'full', consistency: 'app_consistent' });
        await catalog.recordBackup(b);
        expect(await catalog.getBackup('b1')).toEqual({ ...b, deletedAt: null });
        expect(await catalog.getBackup('b2')).toBeUndefined();
      });

      it('is idempotent by id: the same backup twice is one backup', async () => {
        await catalog.recordBackup(backupInput('b1', 0));
        await catalog.recordBackup(backupInput('b1', 0));
        expect(await catalog.listBackups()).toHaveLength(1);
        expect((await catalog.listVaults())[0]).toMatchObject({ backupCount: 1, usedBytes: 100 });
      });

      it('on a second record keeps the measurements, fills in a missing agent and takes the status', async () => {
        await catalog.recordBackup(backupInput('b1', 0, { agentId: null }));
        await catalog.recordBackup(backupInput('b1', 0, { agentId: 'agent-7', bytesStored: 5, bytesRead: 6, finishedAt: at(99), consistency: 'app_consistent' }));
        expect(await catalog.getBackup('b1')).toEqual({ ...backupInput('b1', 0), agentId: 'agent-7', deletedAt: null });
        await catalog.recordBackup(backupInput('b1', 0, { agentId: 'agent-8', status: 'deleted', deletedAt: at(50) }));
        expect(await catalog.getBackup('b1')).toMatchObject({ agentId: 'agent-7', status: 'deleted', deletedAt: at(50) });
        await catalog.recordBackup(backupInput('b1', 0, { status: 'deleted', deletedAt: at(70) }));
        expect((await catalog.getBackup('b1'))?.deletedAt).toBe(at(50));
        await catalog.recordBackup(backupInput('b1', 0));
        expect(await catalog.getBackup('b1')).toMatchObject({ status: 'available', deletedAt: null });
      });

      it('with keepStatus, leaves status and deletedAt of a known backup as stored, and stores a new one with the given status', async () => {
        await catalog.recordBackup(backupInput('b1', 0, { agentId: null }));
        await catalog.markBackupDeleted('b1', at(20));
        await catalog.recordBackup(backupInput('b1', 0, { agentId: 'agent-7' }), { keepStatus: true });
        expect(await catalog.getBackup('b1')).toMatchObject({ agentId: 'agent-7', status: 'deleted', deletedAt: at(20) });
        await catalog.recordBackup(backupInput('b2', 1), { keepStatus: true });
        expect(await catalog.getBackup('b2')).toMatchObject({ status: 'available', deletedAt: null });
      });

      it('stores logicalBytes and host as null when not given, and fills them in later, keeping known ones', async () => {
        const { logicalBytes: _l, host: _h, ...bare } = backupInput('b1', 0);
        await catalog.recordBackup(bare);
        expect(await catalog.getBackup('b1')).toMatchObject({ logicalBytes: null, host: null });
        await catalog.recordBackup(backupInput('b1', 0, { logicalBytes: 5000, host: 'db.example' }));
        expect(await catalog.getBackup('b1')).toMatchObject({ logicalBytes: 5000, host: 'db.example' });
        await catalog.recordBackup(backupInput('b1', 0, { logicalBytes: 6000, host: 'other.example' }));
        await catalog.recordBackup(backupInput('b1', 0, { logicalBytes: null, host: null }));
        expect(await catalog.getBackup('b1')).toMatchObject({ logicalBytes: 5000, host: 'db.example' });
        await rejection(catalog.recordBackup(backupInput('b2', 0, { logicalBytes: -5 })), 'USAGE');
        await rejection(catalog.recordBackup(backupInput('b2', 0, { host: '' })), 'USAGE');
        expect(await catalog.getBackup('b2')).toBeUndefined();
      });

      it('refuses the same id with another identity with ALREADY_EXISTS, changing nothing', async () => {
        await catalog.recordBackup(backupInput('b1', 0));
        for (const other of [{ vault: 'v2' }, { resource: 'db' }, { name: 'manualbk_x' }, { kind: 'full' as const }, { startedAt: at(1) }]) {
          const err = await rejection(catalog.recordBackup(backupInput('b1', 0, { ...other, status: 'deleted' })), 'ALREADY_EXISTS');
          expect(err.message).toContain('b1');
        }
        expect(await catalog.getBackup('b1')).toEqual({ ...backupInput('b1', 0), deletedAt: null });
      });

      it('refuses an unknown vault with NOT_FOUND and bad fields with USAGE', async () => {
        await rejection(catalog.recordBackup(backupInput('b1', 0, { vault: 'v9' })), 'NOT_FOUND');
        await rejection(catalog.recordBackup(backupInput('b1', 0, { bytesStored: -1 })), 'USAGE');
        await rejection(catalog.recordBackup(backupInput('b1', 0, { kind: 'differential' as 'full' })), 'USAGE');
        await rejection(catalog.recordBackup(backupInput('b1', 0, { startedAt: 'yesterday' })), 'USAGE');
        expect(await catalog.listBackups()).toEqual([]);
      });

      it('marks a backup deleted once, keeping the first time', async () => {
        await catalog.recordBackup(backupInput('b1', 0));
        await catalog.markBackupDeleted('b1', at(20));
        await catalog.markBackupDeleted('b1', at(30));
        expect(await catalog.getBackup('b1')).toMatchObject({ status: 'deleted', deletedAt: at(20) });
        await rejection(catalog.markBackupDeleted('ghost', at(20)), 'NOT_FOUND');
      });

      describe('listing', () => {
        // Minutes 0..9: vault v1 for even, v2 for odd; resource web below 5, db from 5; agent-1 for
        // multiples of 3, else agent-2; full at 0 and 5; b4 deleted. b10 ties b9's start.
        beforeEach(async () => {
          for (let i = 0; i < 10; i++) {
            await catalog.recordBackup(
              backupInput(`b${i}`, i, {
                vault: i % 2 ? 'v2' : 'v1',
                resource: i < 5 ? 'web' : 'db',
                agentId: i % 3 ? 'agent-2' : 'agent-1',
                kind: i % 5 ? 'incremental' : 'full',
              }),
            );
          }
          await catalog.recordBackup(backupInput('b10', 9, { vault: 'v2', resource: 'db', agentId: 'agent-1' }));
          await catalog.markBackupDeleted('b4', at(100));
        });
        const ids = async (f?: Parameters<Catalog['listBackups']>[0]) => (await catalog.listBackups(f)).map((b) => b.id);

        it('lists newest first, ties by id descending', async () => {
          expect(await ids()).toEqual(['b9', 'b10', 'b8', 'b7', 'b6', 'b5', 'b4', 'b3', 'b2', 'b1', 'b0']);
        });

        it('filters by vault, resource, agent, kind, status and time, alone and together', async () => {
          expect(await ids({ vault: 'v1' })).toEqual(['b8', 'b6', 'b4', 'b2', 'b0']);
          expect(await ids({ resource: 'web' })).toEqual(['b4', 'b3', 'b2', 'b1', 'b0']);
          expect(await ids({ agentId: 'agent-1' })).toEqual(['b9', 'b10', 'b6', 'b3', 'b0']);
          expect(await ids({ kind: 'full' })).toEqual(['b5', 'b0']);
          expect(await ids({ status: 'deleted' })).toEqual(['b4']);
          expect(await ids({ from: at(3), to: at(6) })).toEqual(['b5', 'b4', 'b3']);
          expect(await ids({ from: '2025-03-01T01:08:00+01:00' })).toEqual(['b9', 'b10', 'b8']);
          expect(await ids({ vault: 'v2', resource: 'db', agentId: 'agent-2', kind: 'incremental', status: 'available', from: at(0), to: at(9) })).toEqual(['b7']);
          expect(await ids({ vault: 'v3' })).toEqual([]);
        });

        it('pages with limit and offset: pages cover every match once, in order', async () => {
          const pages: string[] = [];
          for (let offset = 0; offset < 20; offset += 3) pages.push(...(await ids({ limit: 3, offset })));
          expect(pages).toEqual(await ids());
          expect(await ids({ vault: 'v1', limit: 2, offset: 1 })).toEqual(['b6', 'b4']);
          expect(await ids({ limit: 0 })).toEqual([]);
          expect(await ids({ offset: 11 })).toEqual([]);
          expect(await ids({ offset: 9 })).toEqual(['b1', 'b0']);
        });

        it('refuses a bad limit, offset, kind or time with USAGE', async () => {
          await rejection(catalog.listBackups({ limit: -1 }), 'USAGE');
          await rejection(catalog.listBackups({ offset: 1.5 }), 'USAGE');
          await rejection(catalog.listBackups({ kind: 'other' as 'full' }), 'USAGE');
          await rejection(catalog.listBackups({ from: 'last week' }), 'USAGE');
        });
      });

      describe('replaceVaultBackups', () => {
        it('adds missing backups, marks absent ones deleted at the scan time, restores present ones, leaves other vaults alone', async () => {
          await catalog.recordBackup(backupInput('keep', 0));
          await catalog.recordBackup(backupInput('gone', 1));
          await catalog.recordBackup(backupInput('back', 2));
          await catalog.markBackupDeleted('back', at(5));
          await catalog.recordBackup(backupInput('other', 3, { vault: 'v2' }));
          const summary = await catalog.replaceVaultBackups(
            'v1',
            [scanned(backupInput('keep', 0)), scanned(backupInput('back', 2)), scanned(backupInput('new', 4, { agentId: null }))],
            at(60),
          );
          expect(summary).toEqual({ added: 1, restored: 1, deleted: 1 });
          expect((await catalog.listBackups()).map((b) => [b.id, b.status, b.deletedAt])).toEqual([
            ['new', 'available', null],
            ['other', 'available', null],
            ['back', 'available', null],
            ['gone', 'deleted', at(60)],
            ['keep', 'available', null],
          ]);
          expect(await catalog.getBackup('new')).toEqual({ ...backupInput('new', 4, { agentId: null }), deletedAt: null });
        });

        it('changes nothing when repeated', async () => {
          const scan = [scanned(backupInput('a', 0)), scanned(backupInput('b', 1))];
          expect(await catalog.replaceVaultBackups('v1', scan, at(60))).toEqual({ added: 2, restored: 0, deleted: 0 });
          const before = await catalog.listBackups();
          expect(await catalog.replaceVaultBackups('v1', scan, at(61))).toEqual({ added: 0, restored: 0, deleted: 0 });
          expect(await catalog.listBackups()).toEqual(before);
        });

        it('marks every backup of the vault deleted for an empty scan, keeping earlier deletion times', async () => {
          await catalog.recordBackup(backupInput('a', 0));
          await catalog.recordBackup(backupInput('b', 1));
          await catalog.markBackupDeleted('b', at(5));
          expect(await catalog.replaceVaultBackups('v1', [], at(60))).toEqual({ added: 0, restored: 0, deleted: 1 });
          expect((await catalog.listBackups()).map((b) => [b.id, b.status, b.deletedAt])).toEqual([
            ['b', 'deleted', at(5)],
            ['a', 'deleted', at(60)],
          ]);
        });

        it('is one transaction: a conflicting backup anywhere in the scan changes nothing', async () => {
          await catalog.recordBackup(backupInput('a', 0));
          await catalog.recordBackup(backupInput('clash', 1, { vault: 'v2' }));
          const scan = [scanned(backupInput('new', 2)), scanned(backupInput('clash', 1))];
          await rejection(catalog.replaceVaultBackups('v1', scan, at(60)), 'ALREADY_EXISTS');
          expect((await catalog.listBackups()).map((b) => [b.id, b.vault, b.status])).toEqual([
            ['clash', 'v2', 'available'],
            ['a', 'v1', 'available'],
          ]);
        });

        it('refuses a scanned backup of another vault with USAGE and an unknown vault with NOT_FOUND', async () => {
          await catalog.recordBackup(backupInput('a', 0));
          await rejection(catalog.replaceVaultBackups('v1', [scanned(backupInput('x', 1, { vault: 'v2' }))], at(60)), 'USAGE');
          await rejection(catalog.replaceVaultBackups('v9', [], at(60)), 'NOT_FOUND');
          expect((await catalog.listBackups()).map((b) => [b.id, b.status])).toEqual([['a', 'available']]);
        });
      });
    });

    describe('commands', () => {
      beforeEach(async () => {
        await catalog.addAgent(agentInput('agent-1'));
        await catalog.addAgent(agentInput('agent-2', 1));
      });
      const command = (commandId: string, agentId = 'agent-1', minute = 0) => ({
        commandId,
        agentId,
        action: 'backup-now',
        args: { resource: 'web', full: false, tags: ['a', 'b'] },
        createdAt: at(minute),
      });

      it('queues commands per agent, pending in the order added', async () => {
        await catalog.addCommand(command('c2', 'agent-1', 5));
        await catalog.addCommand(command('c1', 'agent-1', 1));
        await catalog.addCommand(command('c3', 'agent-2', 2));
        expect((await catalog.pendingCommands('agent-1')).map((c) => c.commandId)).toEqual(['c2', 'c1']);
        expect(await catalog.pendingCommands('agent-2')).toEqual([{ ...command('c3', 'agent-2', 2), completedAt: null, result: null }]);
        expect(await catalog.pendingCommands('nobody')).toEqual([]);
        expect(await catalog.getCommand('c1')).toEqual({ ...command('c1', 'agent-1', 1), completedAt: null, result: null });
        expect(await catalog.getCommand('c9')).toBeUndefined();
      });

      it('is idempotent by commandId: the same command again (args in any key order) changes nothing', async () => {
        await catalog.addCommand(command('c1'));
        await catalog.addCommand({ ...command('c1', 'agent-1', 7), args: { tags: ['a', 'b'], full: false, resource: 'web' } });
        expect(await catalog.pendingCommands('agent-1')).toEqual([{ ...command('c1'), completedAt: null, result: null }]);
      });

      it('refuses the same commandId with another agent, action or args with ALREADY_EXISTS', async () => {
        await catalog.addCommand(command('c1'));
        await rejection(catalog.addCommand(command('c1', 'agent-2')), 'ALREADY_EXISTS');
        await rejection(catalog.addCommand({ ...command('c1'), action: 'verify' }), 'ALREADY_EXISTS');
        await rejection(catalog.addCommand({ ...command('c1'), args: { resource: 'db' } }), 'ALREADY_EXISTS');
        expect(await catalog.pendingCommands('agent-2')).toEqual([]);
      });

      it('refuses an unknown agent with NOT_FOUND', async () => {
        await rejection(catalog.addCommand(command('c1', 'ghost')), 'NOT_FOUND');
        expect(await catalog.getCommand('c1')).toBeUndefined();
      });

      it('completes a command once: a repeat keeps the first result and returns false', async () => {
        await catalog.addCommand(command('c1'));
        await catalog.addCommand(command('c2'));
        expect(await catalog.completeCommand('c1', { ok: true, backup: 'b1' }, at(10))).toBe(true);
        expect(await catalog.completeCommand('c1', { ok: false }, at(11))).toBe(false);
        expect(await catalog.getCommand('c1')).toMatchObject({ completedAt: at(10), result: { ok: true, backup: 'b1' } });
        expect((await catalog.pendingCommands('agent-1')).map((c) => c.commandId)).toEqual(['c2']);
        await rejection(catalog.completeCommand('ghost', null, at(10)), 'NOT_FOUND');
      });

      it('stores a null result as null', async () => {
        await catalog.addCommand(command('c1'));
        expect(await catalog.completeCommand('c1', null, at(10))).toBe(true);
        expect(await catalog.getCommand('c1')).toMatchObject({ completedAt: at(10), result: null });
        expect(await catalog.pendingCommands('agent-1')).toEqual([]);
      });

      it('lists commands newest first (ties by commandId descending), by agent and by state, in pages', async () => {
        await catalog.addCommand(command('c1', 'agent-1', 1));
        await catalog.addCommand(command('c2', 'agent-2', 2));
        await catalog.addCommand(command('c3', 'agent-1', 3));
        await catalog.addCommand(command('c4', 'agent-1', 3));
        await catalog.addCommand(command('c0', 'agent-2', 9));
        await catalog.completeCommand('c3', { ok: true }, at(10));
        const ids = async (f?: Parameters<Catalog['listCommands']>[0]) => (await catalog.listCommands(f)).map((c) => c.commandId);
        expect(await ids()).toEqual(['c0', 'c4', 'c3', 'c2', 'c1']);
        expect(await ids({ agentId: 'agent-1' })).toEqual(['c4', 'c3', 'c1']);
        expect(await ids({ pending: true })).toEqual(['c0', 'c4', 'c2', 'c1']);
        expect(await ids({ pending: false })).toEqual(['c3']);
        expect(await ids({ agentId: 'agent-2', pending: true })).toEqual(['c0', 'c2']);
        expect(await ids({ limit: 2, offset: 1 })).toEqual(['c4', 'c3']);
        expect(await ids({ limit: 0 })).toEqual([]);
        expect(await ids({ agentId: 'nobody' })).toEqual([]);
        expect((await catalog.listCommands({ pending: false }))[0]).toEqual({ ...command('c3', 'agent-1', 3), completedAt: at(10), result: { ok: true } });
        await rejection(catalog.listCommands({ limit: -1 }), 'USAGE');
        await rejection(catalog.listCommands({ offset: 0.5 }), 'USAGE');
        await rejection(catalog.listCommands({ pending: 'yes' as unknown as boolean }), 'USAGE');
      });
    });

    describe('job results', () => {
      beforeEach(async () => {
        await catalog.addAgent(agentInput('agent-1'));
        await catalog.addAgent(agentInput('agent-2', 1));
      });

      it('stores a result once per agent and job: a re-sent one returns false and keeps the first', async () => {
        const first = jobResult('agent-1', 'j1', 5, { commandId: 'c1' });
        expect(await catalog.recordJobResult(first)).toBe(true);
        expect(await catalog.recordJobResult({ ...first, status: 'failed', errorCode: 'INTERNAL', receivedAt: at(6) })).toBe(false);
        // The same job id of another agent is another job.
        expect(await catalog.recordJobResult(jobResult('agent-2', 'j1', 7))).toBe(true);
        expect(await catalog.listJobResults({ agentId: 'agent-1' })).toEqual([first]);
        expect(await catalog.listJobResults()).toHaveLength(2);
      });

      it('refuses an unknown agent with NOT_FOUND and inconsistent fields with USAGE, storing nothing', async () => {
        expect((await rejection(catalog.recordJobResult(jobResult('ghost', 'j1', 0)), 'NOT_FOUND')).message).toContain('ghost');
        await rejection(catalog.recordJobResult(jobResult('agent-1', 'j1', 0, { errorCode: 'INTERNAL' })), 'USAGE');
        await rejection(catalog.recordJobResult(jobResult('agent-1', 'j1', 0, { status: 'failed' })), 'USAGE');
        await rejection(catalog.recordJobResult(jobResult('agent-1', 'j1', 0, { status: 'done' as 'ok' })), 'USAGE');
        await rejection(catalog.recordJobResult(jobResult('agent-1', '', 0)), 'USAGE');
        await rejection(catalog.recordJobResult(jobResult('agent-1', 'j1', 0, { receivedAt: 'now' })), 'USAGE');
        expect(await catalog.listJobResults()).toEqual([]);
        // A cancelled job may carry an error code or not.
        expect(await catalog.recordJobResult(jobResult('agent-1', 'j2', 0, { status: 'cancelled', backupId: null }))).toBe(true);
        const failed = jobResult('agent-1', 'j3', 0, { status: 'failed', backupId: null, errorCode: 'SOURCE_UNREADABLE', errorMessage: 'cannot read /dev/sda' });
        expect(await catalog.recordJobResult(failed)).toBe(true);
        expect(await catalog.listJobResults({ status: 'failed' })).toEqual([failed]);
      });

      it('lists newest first (ties by agent, then job, descending), filtered by agent, status and time, limited', async () => {
        await catalog.recordJobResult(jobResult('agent-1', 'j1', 1));
        await catalog.recordJobResult(jobResult('agent-1', 'j2', 3, { status: 'failed', errorCode: 'INTERNAL' }));
        await catalog.recordJobResult(jobResult('agent-2', 'j1', 3));
        await catalog.recordJobResult(jobResult('agent-2', 'j0', 3));
        await catalog.recordJobResult(jobResult('agent-1', 'j3', 8, { status: 'cancelled' }));
        const keys = async (f?: Parameters<Catalog['listJobResults']>[0]) => (await catalog.listJobResults(f)).map((r) => `${r.agentId}/${r.jobId}`);
        expect(await keys()).toEqual(['agent-1/j3', 'agent-2/j1', 'agent-2/j0', 'agent-1/j2', 'agent-1/j1']);
        expect(await keys({ agentId: 'agent-1' })).toEqual(['agent-1/j3', 'agent-1/j2', 'agent-1/j1']);
        expect(await keys({ status: 'ok' })).toEqual(['agent-2/j1', 'agent-2/j0', 'agent-1/j1']);
        expect(await keys({ from: at(3), to: at(8) })).toEqual(['agent-2/j1', 'agent-2/j0', 'agent-1/j2']);
        expect(await keys({ limit: 2 })).toEqual(['agent-1/j3', 'agent-2/j1']);
        await rejection(catalog.listJobResults({ status: 'odd' as 'ok' }), 'USAGE');
        await rejection(catalog.listJobResults({ from: 'yesterday' }), 'USAGE');
        await rejection(catalog.listJobResults({ limit: -2 }), 'USAGE');
      });
    });

    describe('catalog syncs', () => {
      beforeEach(async () => {
        await catalog.upsertVault(vaultInput('v1'));
        await catalog.upsertVault(vaultInput('v2'));
      });
      const part = (n: number, last: boolean, backups: BackupInput[], overrides: Partial<SyncPartInput> = {}): SyncPartInput => ({
        agentId: 'agent-1',
        syncId: 's1',
        vault: 'v1',
        part: n,
        last,
        backups: backups.map(scanned),
        ...overrides,
      });
      const states = async () => (await catalog.listBackups()).map((b) => [b.id, b.vault, b.status, b.deletedAt]);

      it('replaces the vault\'s backups when the one and last part arrives', async () => {
        await catalog.recordBackup(backupInput('gone', 0));
        await catalog.recordBackup(backupInput('other', 1, { vault: 'v2' }));
        expect(await catalog.addSyncPart(part(0, true, [backupInput('new', 2, { agentId: null })]), at(60))).toEqual({ added: 1, restored: 0, deleted: 1 });
        expect(await states()).toEqual([
          ['new', 'v1', 'available', null],
          ['other', 'v2', 'available', null],
          ['gone', 'v1', 'deleted', at(60)],
        ]);
        expect(await catalog.getBackup('new')).toEqual({ ...backupInput('new', 2, { agentId: null }), deletedAt: null });
      });

      it('waits for every part, in any order, then replaces with their union once', async () => {
        await catalog.recordBackup(backupInput('gone', 0));
        await catalog.recordBackup(backupInput('back', 1));
        await catalog.markBackupDeleted('back', at(5));
        expect(await catalog.addSyncPart(part(2, true, [backupInput('c', 4)]), at(60))).toBeNull();
        expect(await catalog.addSyncPart(part(0, false, [backupInput('a', 2), backupInput('back', 1)]), at(60))).toBeNull();
        // A re-sent part changes nothing.
        expect(await catalog.addSyncPart(part(0, false, [backupInput('a', 2), backupInput('back', 1)]), at(60))).toBeNull();
        expect(await states()).toEqual([
          ['back', 'v1', 'deleted', at(5)],
          ['gone', 'v1', 'available', null],
        ]);
        expect(await catalog.addSyncPart(part(1, false, [backupInput('b', 3)]), at(61))).toEqual({ added: 3, restored: 1, deleted: 1 });
        expect(await states()).toEqual([
          ['c', 'v1', 'available', null],
          ['b', 'v1', 'available', null],
          ['a', 'v1', 'available', null],
          ['back', 'v1', 'available', null],
          ['gone', 'v1', 'deleted', at(61)],
        ]);
        // A part of a sync done already is a re-sent message: nothing changes, even when the vault changed since.
        await catalog.markBackupDeleted('a', at(70));
        for (const [n, last] of [[0, false], [1, false], [2, true]] as const) {
          expect(await catalog.addSyncPart(part(n, last, [backupInput('a', 2)]), at(80))).toBeNull();
        }
        expect((await catalog.getBackup('a'))?.status).toBe('deleted');
        expect(await catalog.listBackups({ status: 'available' })).toHaveLength(3);
      });

      it('keeps syncs apart by agent and syncId, and creates an unknown vault as ensureVault does', async () => {
        expect(await catalog.addSyncPart(part(1, true, [], { vault: 'v-new' }), at(60))).toBeNull();
        expect(await catalog.addSyncPart(part(0, false, [], { agentId: 'agent-2', vault: 'v-new' }), at(60))).toBeNull();
        expect(await catalog.addSyncPart(part(0, false, [], { syncId: 's2', vault: 'v-new' }), at(60))).toBeNull();
        expect(await catalog.addSyncPart(part(0, false, [backupInput('x', 0, { vault: 'v-new' })], { vault: 'v-new' }), at(60))).toEqual({ added: 1, restored: 0, deleted: 0 });
        expect((await catalog.listVaults()).find((v) => v.name === 'v-new')).toMatchObject({ type: 'server', location: '', capacityBytes: null, backupCount: 1 });
      });

      it('refuses parts that disagree on the vault or on the last part, and backups of another vault, with USAGE', async () => {
        expect(await catalog.addSyncPart(part(1, true, [backupInput('b', 1)]), at(60))).toBeNull();
        expect((await rejection(catalog.addSyncPart(part(0, false, [], { vault: 'v2' }), at(60)), 'USAGE')).message).toContain('v2');
        await rejection(catalog.addSyncPart(part(2, false, []), at(60)), 'USAGE');
        await rejection(catalog.addSyncPart(part(0, true, []), at(60)), 'USAGE');
        await rejection(catalog.addSyncPart(part(1, false, [backupInput('b', 1)]), at(60)), 'USAGE');
        await rejection(catalog.addSyncPart(part(0, false, [backupInput('x', 0, { vault: 'v2' })]), at(60)), 'USAGE');
        await rejection(catalog.addSyncPart(part(-1, false, []), at(60)), 'USAGE');
        await rejection(catalog.addSyncPart(part(0, false, [], { syncId: '' }), at(60)), 'USAGE');
        await rejection(catalog.addSyncPart(part(0, false, []), 'later'), 'USAGE');
        expect(await catalog.listBackups()).toEqual([]);
        // The refused parts left no trace: the right part 0 completes the sync.
        expect(await catalog.addSyncPart(part(0, false, [backupInput('a', 0)]), at(60))).toEqual({ added: 2, restored: 0, deleted: 0 });
      });

      it('is one transaction: a conflicting backup in the union changes nothing and stores no part', async () => {
        await catalog.recordBackup(backupInput('keep', 0));
        await catalog.recordBackup(backupInput('clash', 1, { vault: 'v2' }));
        expect(await catalog.addSyncPart(part(0, false, [backupInput('new', 2)]), at(60))).toBeNull();
        await rejection(catalog.addSyncPart(part(1, true, [backupInput('clash', 1)]), at(60)), 'ALREADY_EXISTS');
        expect(await states()).toEqual([
          ['clash', 'v2', 'available', null],
          ['keep', 'v1', 'available', null],
        ]);
        // The last part was not stored: a corrected one completes the sync.
        expect(await catalog.addSyncPart(part(1, true, [backupInput('keep', 0)]), at(61))).toEqual({ added: 1, restored: 0, deleted: 0 });
      });

      it('completes once among concurrent parts', async () => {
        const parts = Array.from({ length: 6 }, (_, i) => part(i, i === 5, [backupInput(`b${i}`, i)]));
        const results = await Promise.all([...parts, ...parts].map((p) => catalog.addSyncPart(p, at(60))));
        expect(results.filter((r) => r !== null)).toEqual([{ added: 6, restored: 0, deleted: 0 }]);
        expect(await catalog.listBackups({ status: 'available' })).toHaveLength(6);
      });
    });

    describe('watch', () => {
      beforeEach(async () => {
        await catalog.addAgent(agentInput('agent-1'));
        await catalog.upsertVault(vaultInput('v1'));
      });

      it('tells of policy changes and newly queued commands, not of calls that changed nothing or failed', async () => {
        const events = watchEvents(catalog);
        try {
          await catalog.createPolicy(policyInput('p1'));
          await catalog.bindPolicy('p1', 'v1');
          await catalog.bindPolicy('p1', 'v1');
          await catalog.updatePolicy('p1', {});
          await rejection(catalog.createPolicy(policyInput('p1')), 'ALREADY_EXISTS');
          await catalog.addCommand({ commandId: 'c1', agentId: 'agent-1', action: 'verify', args: null, createdAt: at(1) });
          await catalog.addCommand({ commandId: 'c1', agentId: 'agent-1', action: 'verify', args: null, createdAt: at(1) });
          await catalog.unbindPolicy('p1', 'v1');
          await catalog.deletePolicy('p1');
          expect(await events.until(5)).toEqual([
            { kind: 'policies' },
            { kind: 'policies' },
            { kind: 'commands', agentId: 'agent-1' },
            { kind: 'policies' },
            { kind: 'policies' },
          ]);
        } finally {
          events.stop();
        }
      });

      it('stops telling a listener once stopped, while others still hear', async () => {
        const stopped = watchEvents(catalog);
        const still = watchEvents(catalog);
        try {
          await catalog.createPolicy(policyInput('p1'));
          expect(await stopped.until(1)).toEqual([{ kind: 'policies' }]);
          stopped.stop();
          await catalog.createPolicy(policyInput('p2'));
          expect(await still.until(2)).toEqual([{ kind: 'policies' }, { kind: 'policies' }]);
          expect(stopped.seen).toHaveLength(1);
        } finally {
          still.stop();
        }
      });
    });
  });
}
