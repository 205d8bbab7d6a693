import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from './helpers.js';

/**
 * The README's first command: `cairn quickstart` on the embedded defaults (a local vault and local
 * state) backs up a generated image twice, restores both bit-identically, verifies and collects.
 */

let sb: Sandbox;

beforeAll(async () => {
  sb = await Sandbox.create('quickstart');
});

afterAll(async () => {
  await sb?.cleanup();
});

describe('cairn quickstart', () => {
  it('runs the whole job on the embedded defaults and says every restore is identical', async () => {
    const r = await sb.cairn(['quickstart', '--dir', sb.path('run')], { env: { CAIRN_PASSPHRASE: undefined } });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/full backup manualbk_[a-z0-9]{6}/);
    expect(r.stdout).toMatch(/incremental backup manualbk_[a-z0-9]{6}/);
    expect(r.stdout.match(/: identical \(sha256 /g)).toHaveLength(2);
    expect(r.stdout).toContain('verify --read-data: healthy');
    const list = await sb.cairnJson<unknown[]>(['backups', 'list', '--vault', sb.path('run', 'vault'), '--passphrase-file', sb.path('run', 'passphrase'), '--json']);
    expect(list).toHaveLength(2);
  });
});
