import os from 'node:os';

import { describe, expect, it } from 'vitest';

import { collectInventory } from './inventory.js';

describe('inventory', () => {
  it('describes this machine within about 3 s', async () => {
    const started = Date.now();
    const inv = await collectInventory();
    expect(Date.now() - started).toBeLessThan(3500);

    expect(inv.hostname).toBe(os.hostname());
    expect(inv.memoryBytes).toBeGreaterThan(0);
    expect(inv.cpus.cores).toBeGreaterThanOrEqual(1);
    expect(inv.cpus.physicalCores).toBeGreaterThanOrEqual(1);
    expect(inv.os.platform).toBe(os.platform());
    expect(inv.os.arch).toBe(os.arch());
    for (const d of inv.disks) {
      expect(d.name).not.toBe('');
      expect(d.sizeBytes).toBeGreaterThanOrEqual(0);
      expect(d.name).not.toMatch(/loop|zram/);
    }
    for (const n of inv.network) {
      expect(n.iface).not.toBe('lo');
      expect(n.ip4).not.toContain('127.0.0.1');
    }
  });

  it('falls back instead of waiting when the budget is spent', async () => {
    const started = Date.now();
    const inv = await collectInventory({ timeoutMs: 1 });
    expect(Date.now() - started).toBeLessThan(2000);
    expect(inv.hostname).toBe(os.hostname());
    expect(inv.cpus.cores).toBeGreaterThanOrEqual(1);
    expect(inv.memoryBytes).toBeGreaterThan(0);
    expect(Array.isArray(inv.disks)).toBe(true);
    expect(Array.isArray(inv.network)).toBe(true);
  });
});
