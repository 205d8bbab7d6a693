import { describe, expect, it } from 'vitest';
import { decodeMessage, MAX_FRAME_BYTES, type BackupSummary } from '../../shared/protocol/messages.js';
import { catalogParts } from './catalog-parts.js';

function backup(i: number, long = false): BackupSummary {
  return {
    id: `b-${i}`,
    name: `autobk_${String(i).padStart(6, '0')}`,
    vault: 'main',
    resource: long ? 'r'.repeat(128) : 'web',
    kind: i === 0 ? 'full' : 'incremental',
    startedAt: '2025-01-01T00:00:00.000Z',
    finishedAt: '2025-01-01T00:01:00.000Z',
    bytesRead: i,
    bytesStored: i,
    consistency: 'crash_consistent',
    host: long ? 'h'.repeat(256) : 'host-1',
    logicalBytes: 1 << 20,
  };
}

describe('catalogParts', () => {
  let seq = 0;
  const newId = (): string => `ob-${++seq}`;

  it('sends an empty catalog as one last part', () => {
    const parts = catalogParts('main', 'sync-1', [], newId);
    expect(parts).toHaveLength(1);
    expect(decodeMessage(parts[0]!.body, 'to-server')).toMatchObject({ type: 'catalog-sync', part: 0, last: true, backups: [], syncId: 'sync-1' });
  });

  it('cuts at 500 backups and at the frame size, every part decodable, in order', () => {
    const many = Array.from({ length: 1201 }, (_, i) => backup(i));
    const byCount = catalogParts('main', 'sync-2', many, newId).map((p) => decodeMessage(p.body, 'to-server'));
    expect(byCount.map((m) => (m.type === 'catalog-sync' ? m.backups.length : -1))).toEqual([500, 500, 201]);
    expect(byCount.map((m) => (m.type === 'catalog-sync' ? [m.part, m.last] : []))).toEqual([[0, false], [1, false], [2, true]]);

    // Long host and resource names: 500 of them would not fit one frame.
    const big = Array.from({ length: 900 }, (_, i) => backup(i, true));
    const parts = catalogParts('main', 'sync-3', big, newId);
    const decoded = parts.map((p) => decodeMessage(p.body, 'to-server'));
    const first = decoded[0]!;
    expect(first.type === 'catalog-sync' && first.backups.length, 'the frame limit cuts before 500').toBeLessThan(500);
    expect(parts.length).toBeGreaterThanOrEqual(2);
    for (const p of parts) expect(Buffer.byteLength(p.body)).toBeLessThanOrEqual(MAX_FRAME_BYTES);
    const ids = decoded.flatMap((m) => (m.type === 'catalog-sync' ? m.backups.map((b) => b.id) : []));
    expect(ids).toEqual(big.map((b) => b.id));
    expect(new Set(parts.map((p) => p.messageId)).size).toBe(parts.length);
    expect(decoded.at(-1)).toMatchObject({ last: true });
  });
});
