import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { XattrReader } from './xattrs.js';

describe('XattrReader', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-xattrs-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads user.* attributes through getfattr found on PATH', async () => {
    const file = join(dir, 'with-attrs');
    writeFileSync(file, 'x');
    const set = spawnSync('setfattr', ['-n', 'user.colour', '-v', 'blue', file]);
    expect(set.status, String(set.stderr)).toBe(0);
    const reader = new XattrReader();
    try {
      expect(reader.unavailable).toBeUndefined();
      const read = reader.read(Buffer.from(file));
      reader.flush();
      expect(await read).toEqual([['user.colour', Buffer.from('blue')]]);
    } finally {
      reader.close();
    }
  });

  it('says once that attributes are not backed up when getfattr is missing, and reads none', async () => {
    for (const command of ['cairn-no-such-getfattr', join(dir, 'missing', 'getfattr')]) {
      const reader = new XattrReader(command);
      try {
        expect(reader.unavailable).toBe(`extended attributes were not backed up: ${command} was not found (install the 'attr' package)`);
        expect(await reader.read(Buffer.from(join(dir, 'with-attrs')))).toBeUndefined();
      } finally {
        reader.close();
      }
    }
  });
});
