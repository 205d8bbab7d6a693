import { spawnSync } from 'node:child_process';
import { lstatSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { devNumbers, makeNode, restoreTimes, restoreXattrs } from './file-metadata.js';

const dir = mkdtempSync(join(tmpdir(), 'cairn-file-metadata-'));
const root = process.getuid?.() === 0;

afterAll(() => rmSync(dir, { recursive: true, force: true }));

function xattrs(path: string): string {
  return spawnSync('getfattr', ['-h', '-d', '-m', '-', '-e', 'base64', '--absolute-names', path], { encoding: 'utf8' }).stdout;
}

describe('file metadata', () => {
  it('sets atime and mtime to the nanosecond, of a symlink itself', async () => {
    const file = join(dir, 'f');
    const link = join(dir, 'l');
    writeFileSync(file, 'x');
    symlinkSync('f', link);
    const before = lstatSync(file, { bigint: true });
    const warnings = await restoreTimes([
      { path: Buffer.from(link), atimeNs: 1_500_000_000_987_654_321n, mtimeNs: 1_400_000_000_000_000_001n },
      { path: Buffer.from(file), atimeNs: -1_000_000_001n, mtimeNs: 1_700_000_000_123_456_789n },
    ]);
    expect(warnings).toEqual([]);
    const l = lstatSync(link, { bigint: true });
    const f = lstatSync(file, { bigint: true });
    expect([l.atimeNs, l.mtimeNs]).toEqual([1_500_000_000_987_654_321n, 1_400_000_000_000_000_001n]);
    expect([f.atimeNs, f.mtimeNs]).toEqual([-1_000_000_001n, 1_700_000_000_123_456_789n]);
    expect(before.mtimeNs).not.toBe(f.mtimeNs);
  });

  it('reports a path whose times cannot be set, and goes on', async () => {
    const file = join(dir, 'g');
    writeFileSync(file, 'x');
    const warnings = await restoreTimes([
      { path: Buffer.from(join(dir, 'missing')), atimeNs: 0n, mtimeNs: 0n },
      { path: Buffer.from(file), atimeNs: 5n, mtimeNs: 7n },
    ]);
    expect(warnings).toEqual([expect.stringMatching(/^times of .*missing not restored: No such file/)]);
    expect(lstatSync(file, { bigint: true }).mtimeNs).toBe(7n);
  });

  it('restores xattrs to odd-byte names, skipping namespaces it must not set', async () => {
    const name = Buffer.concat([Buffer.from(dir + '/odd\t'), Buffer.from([0xff, 0x3d])]);
    writeFileSync(name, 'x');
    const warnings = await restoreXattrs(
      [{ path: name, xattrs: [['user.a', Buffer.from([0, 1, 2])], ['user.empty', Buffer.alloc(0)], ['system.posix_acl_access', Buffer.from('x')]] }],
      root,
    );
    expect(warnings).toEqual([expect.stringContaining('system.posix_acl_access not restored')]);
    const r = spawnSync('getfattr', ['-R', '-d', '-m', '-', '-e', 'base64', '--absolute-names', dir]);
    const text = r.stdout.toString('latin1');
    expect(text).toContain('user.a=0sAAEC');
    expect(text).toMatch(/user\.empty(=0s|=""|\n)/);
    const none = await restoreXattrs([{ path: Buffer.from(join(dir, 'g')), xattrs: [['security.x', Buffer.from('1')]] }], false);
    expect(none).toEqual([expect.stringContaining('security.x not restored: trusted.* and security.* need root')]);
    expect(xattrs(join(dir, 'g'))).not.toContain('security.x');
  });

  it('decodes Linux device numbers', () => {
    expect(devNumbers(0x0103)).toEqual([1, 3]);
    expect(devNumbers(0x07c8 + 0)).toEqual([7, 200]);
    // major 259, minor 65536: (259 & 0xfff) << 8 | (65536 & ~0xff) << 12
    expect(devNumbers(((259 & 0xfff) << 8) + 65536 * 4096)).toEqual([259, 65536]);
  });

  it('makes fifos, and device nodes as root, under raw-byte names', async () => {
    const fifo = Buffer.concat([Buffer.from(dir + '/p'), Buffer.from([0xfe])]);
    await makeNode(dir, fifo, 'fifo');
    expect(lstatSync(fifo).isFIFO()).toBe(true);
    const dev = Buffer.concat([Buffer.from(dir + '/null'), Buffer.from([0xfe])]);
    if (!root) {
      await expect(makeNode(dir, dev, 'chardev', 0x0103)).rejects.toMatchObject({ code: 'TARGET_UNWRITABLE' });
      return;
    }
    await makeNode(dir, dev, 'chardev', 0x0103);
    const st = lstatSync(dev);
    expect(st.isCharacterDevice()).toBe(true);
    expect(st.rdev).toBe(0x0103);
    expect(readdirSync(dir).filter((n) => n.startsWith('.cairn-node-'))).toEqual([]);
  });
});
