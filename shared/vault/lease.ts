import { hostname } from 'node:os';
import { hexId } from '../clock.js';
import { isCairnError } from '../errors.js';
import { onInterrupt } from '../interrupt.js';
import type { Vault } from './vault.js';

/**
 * Leases (FORMAT.md, "Leases"): `leases/<id>`, plaintext JSON written by every backup and gc run
 * before it writes anything else, renewed while it runs, deleted when it ends. A lease whose
 * expiresAt has passed belongs to a process that died. gc never deletes a pack newer than the
 * oldest live lease, and never deletes condemned packs while a lease older than the plan lives.
 */

export interface LeaseRecord {
  id: string;
  purpose: 'backup' | 'gc';
  host: string;
  pid: number;
  createdAt: string;
  expiresAt: string;
}

export const LEASE_TTL_MS = 15 * 60 * 1000;
const RENEW_EVERY_MS = 60 * 1000;

export class Lease {
  private timer: NodeJS.Timeout | undefined;
  private forget: (() => void) | undefined;
  private constructor(
    private readonly vault: Vault,
    readonly record: LeaseRecord,
  ) {}

  static async acquire(vault: Vault, purpose: LeaseRecord['purpose']): Promise<Lease> {
    const now = vault.clock.now();
    const record: LeaseRecord = {
      id: hexId(vault.ids, 8),
      purpose,
      host: hostname(),
      pid: process.pid,
      createdAt: now.toISOString(),
      expiresAt: new Date(now.getTime() + LEASE_TTL_MS).toISOString(),
    };
    const lease = new Lease(vault, record);
    await lease.write();
    lease.forget = onInterrupt(() => lease.release());
    lease.timer = setInterval(() => {
      lease.record.expiresAt = new Date(vault.clock.now().getTime() + LEASE_TTL_MS).toISOString();
      lease.write().catch(() => undefined);
    }, RENEW_EVERY_MS);
    lease.timer.unref();
    return lease;
  }

  private write(): Promise<void> {
    return this.vault.store.put(`leases/${this.record.id}`, () => Buffer.from(JSON.stringify(this.record)));
  }

  async release(): Promise<void> {
    this.forget?.();
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.vault.store.delete(`leases/${this.record.id}`);
  }
}

/**
 * True when the lease's process is known to be gone: it ran on this host and its pid no longer
 * exists (restic's stale-lock rule). Leases of other hosts are judged by expiresAt alone.
 */
function holderIsGone(rec: LeaseRecord): boolean {
  if (rec.host !== hostname() || rec.pid === process.pid) return false;
  try {
    process.kill(rec.pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/**
 * Leases that have not expired and whose process may still run, oldest first. Unreadable lease
 * objects count as live (the safe side); ones deleted while listing are skipped.
 */
export async function liveLeases(vault: Vault): Promise<LeaseRecord[]> {
  const now = vault.clock.now().getTime();
  const out: LeaseRecord[] = [];
  for await (const o of vault.store.list('leases/')) {
    try {
      const rec = JSON.parse((await vault.store.get(o.key)).toString('utf8')) as LeaseRecord;
      if (Date.parse(rec.expiresAt) > now && !holderIsGone(rec)) out.push(rec);
    } catch (err) {
      if (isCairnError(err, 'NOT_FOUND')) continue;
      out.push({
        id: o.key,
        purpose: 'backup',
        host: '?',
        pid: 0,
        createdAt: o.modified.toISOString(),
        expiresAt: new Date(now + LEASE_TTL_MS).toISOString(),
      });
    }
  }
  return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
}
