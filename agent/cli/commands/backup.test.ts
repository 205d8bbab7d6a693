import { describe, expect, it } from 'vitest';
import type { FileBackupResult } from '../../backup/file-backup.js';
import type { Manifest } from '../../../shared/vault/manifest.js';
import { fileBackupJson, JSON_PATHS } from './backup.js';

function result(unreadable: number, changed: number): FileBackupResult {
  const tree = { parts: ['00'.repeat(32)], entries: 1 + unreadable + changed, files: unreadable + changed, dirs: 1, bytes: 0, partial: unreadable + changed };
  const manifest = { id: 'B', name: 'n', kind: 'full', parent: null, consistency: 'crash_consistent', startedAt: 's', finishedAt: 'f', tree } as unknown as Manifest;
  const paths = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}/${String(i).padStart(7, '0')}`);
  return {
    manifest,
    tree,
    bytesRead: 0,
    bytesStored: 0,
    durationMs: 1,
    recoveredPacks: 0,
    filesReused: 0,
    filesRead: 0,
    newChunks: 0,
    newBytes: 0,
    // As runFileBackup returns them: the first 1000 paths of each list, and the counts.
    unreadable: paths('locked', Math.min(unreadable, 1000)),
    unreadableCount: unreadable,
    changed: paths('growing', Math.min(changed, 1000)),
    changedCount: changed,
    warnings: [],
  };
}

describe('cairn backup --json of a file system', () => {
  it('lists at most the first 1000 unreadable and changed paths, and counts them all', () => {
    const big = fileBackupJson(result(250_000, 1500), 'vault', '/src');
    expect(JSON_PATHS).toBe(1000);
    expect(big.unreadable).toEqual(result(1000, 0).unreadable);
    expect(big.unreadableCount).toBe(250_000);
    expect(big.changed).toEqual(result(0, 1000).changed);
    expect(big.changedCount).toBe(1500);
    expect(JSON.stringify(big).length).toBeLessThan(100_000);

    const small = fileBackupJson(result(2, 0), 'vault', '/src');
    expect(small).toMatchObject({ unreadable: ['locked/0000000', 'locked/0000001'], unreadableCount: 2, changed: [], changedCount: 0, partial: true });
  });
});
