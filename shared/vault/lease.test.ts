import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';

import { ManualClock } from '../clock.js';
import { LocalStore } from '../store/local-store.js';
import { Lease, LEASE_TTL_MS, liveLeases } from './lease.js';
import { Vault } from './vault.js';



const T0 = Date.parse('2026-11-25T10:00:00.000Z');

describe('leases', () => {
  let dir: string;
  let store: LocalStore;
  let clock: ManualClock;
  let vault: Vault;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cairn-lease-'));
    store = new LocalStore(dir);
    clock = new ManualClock(T0);
    vault = await Vault.init(store, 'lease test', {}, { clock });
  });
  beforeEach(async () => {
    clock.ms = T0;
    for await (const o of store.list('leases/')) await store.delete(o.key);
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('are written as plaintext JSON at acquire and deleted at release', async () => {
    const lease = await Lease.acquire(vault, 'backup');
    const rec = JSON.parse((await store.get(`leases/${lease.record.id}`)).toString('utf8'));
    expect(rec).toEqual(lease.record);
    expect(rec).toMatchObject({ purpose: 'backup', pid: process.pid, createdAt: new Date(T0).toISOString() });
    expect(Date.parse(rec.expiresAt) - T0).toBe(LEASE_TTL_MS);
    await lease.release();
    expect(await store.stat(`leases/${lease.record.id}`)).toBeUndefined();
    expect(await liveLeases(vault)).toEqual([]);
  });

  it('are live until expiresAt and dead after it, by the vault clock', async () => {
    const lease = await Lease.acquire(vault, 'gc');
    expect((await liveLeases(vault)).map((l) => l.id)).toEqual([lease.record.id]);
    clock.advance(LEASE_TTL_MS - 1);
    expect(await liveLeases(vault)).toHaveLength(1);
    clock.advance(1);
    expect(await liveLeases(vault)).toEqual([]);
    await lease.release();
  });

  it('are listed oldest first', async () => {
    const first = await Lease.acquire(vault, 'backup');
    clock.advance(60_000);
    const second = await Lease.acquire(vault, 'gc');
    clock.advance(60_000);
    expect((await liveLeases(vault)).map((l) => l.id)).toEqual([first.record.id, second.record.id]);
    await first.release();
    expect((await liveLeases(vault)).map((l) => l.id)).toEqual([second.record.id]);
    await second.release();
  });

  it('count as live when unreadable (the safe side), whatever the clock says', async () => {
    await store.put('leases/0123456789abcdef', () => Buffer.from('{truncated'));
    clock.advance(10 * LEASE_TTL_MS);
    const live = await liveLeases(vault);
    expect(live).toHaveLength(1);
    expect(live[0]).toMatchObject({ id: 'leases/0123456789abcdef', purpose: 'backup' });
  });
});
