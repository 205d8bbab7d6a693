import { cpSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalStore } from '../shared/store/local-store.js';
import { Vault } from '../shared/vault/vault.js';
import { expectOk, repoRoot, Sandbox, sha256File } from './helpers.js';

/**
 * The golden vault (test/fixtures/golden-vault/, made once by test/fixtures/make-golden-vault.ts)
 * was written by an earlier Cairn. Today's Cairn must list it, restore both of its backups bit for bit
 * and verify every chunk. A failure here means the vault format changed: bump the format version and
 * keep reading old vaults rather than regenerate the fixture.
 */

interface GoldenBackup {
  id: string;
  name: string;
  kind: string;
  parent: string | null;
  usedBytes: number;
  sha256: string;
}

interface Golden {
  formatVersion: number;
  passphrase: string;
  chunkSize: number;
  imageSize: number;
  backups: GoldenBackup[];
}

const fixtureVault = join(repoRoot, 'test', 'fixtures', 'golden-vault');
const golden = JSON.parse(readFileSync(join(repoRoot, 'test', 'fixtures', 'golden-vault.json'), 'utf8')) as Golden;

function filesUnder(dir: string): string[] {
  return (readdirSync(dir, { recursive: true }) as string[]).filter((p) => statSync(join(dir, p)).isFile());
}

describe('golden vault', () => {
  let box: Sandbox;
  let vault: string;
  const cairn = (args: string[]) => box.cairn(args, { env: { CAIRN_PASSPHRASE: golden.passphrase } });

  beforeAll(async () => {
    box = await Sandbox.create('golden');
    vault = box.path('vault');
    // A copy: nothing a test does may touch the committed fixture.
    cpSync(fixtureVault, vault, { recursive: true });
  });

  afterAll(async () => {
    await box?.cleanup();
  });

  it('is small and holds exactly the objects of two backups', () => {
    const files = filesUnder(fixtureVault);
    const bytes = files.reduce((s, f) => s + statSync(join(fixtureVault, f)).size, 0);
    expect(bytes).toBeLessThan(256 * 1024);
    expect(files.filter((f) => f.startsWith('backups/')).sort()).toEqual(golden.backups.map((b) => `backups/${b.id}`).sort());
    expect(files.some((f) => f.split('/').pop()!.startsWith('.tmp-'))).toBe(false);
    expect(files.some((f) => f.startsWith('leases/') || f.startsWith('gc/'))).toBe(false);
  });

  it('lists both backups as they were recorded', async () => {
    const r = await cairn(['backups', 'list', '--vault', vault, '--json']);
    expectOk(r);
    const list = JSON.parse(r.stdout) as (GoldenBackup & { size: number; disks: { chunkSize: number }[] })[];
    expect(list.map((b) => ({ id: b.id, name: b.name, kind: b.kind, parent: b.parent, usedBytes: b.usedBytes }))).toEqual(
      golden.backups.map((b) => ({ id: b.id, name: b.name, kind: b.kind, parent: b.parent, usedBytes: b.usedBytes })),
    );
    for (const b of list) {
      expect(b.size).toBe(golden.imageSize);
      expect(b.disks.map((d) => d.chunkSize)).toEqual([golden.chunkSize]);
    }
  });

  it('restores both backups bit for bit, by name and by id', async () => {
    for (const [i, b] of golden.backups.entries()) {
      const to = box.path(`restored-${i}.img`);
      expectOk(await cairn(['restore', i === 0 ? b.name : b.id, '--vault', vault, '--to', to]));
      expect(statSync(to).size).toBe(golden.imageSize);
      expect(await sha256File(to), `restore of ${b.name}`).toBe(b.sha256);
    }
  });

  it('verifies with --read-data', async () => {
    const r = await cairn(['vault', 'verify', '--vault', vault, '--read-data', '--json']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const v = JSON.parse(r.stdout) as { ok: boolean; backups: number; chunksChecked: number; problems: unknown[] };
    expect(v).toMatchObject({ ok: true, backups: 2, problems: [] });
    expect(v.chunksChecked).toBeGreaterThan(0);
  });

  it('still covers what it was made to cover: both codecs, zero chunks, a short last chunk', async () => {
    const opened = await Vault.open(new LocalStore(vault), golden.passphrase);
    expect(opened.config).toMatchObject({ version: golden.formatVersion, chunkSize: golden.chunkSize });
    const { index } = await opened.loadIndex();
    const codecs = new Set([...index.entries()].map(([, loc]) => loc.codec));
    expect([...codecs].sort()).toEqual([0, 1]);
    for (const b of golden.backups) {
      const m = await opened.readManifest(b.id);
      const map = await opened.readBlockMap(m.disks[0].blockMap);
      expect(map.diskSize).toBe(golden.imageSize);
      expect(map.lengthAt(map.count - 1)).toBe(golden.imageSize % golden.chunkSize);
      expect([...Array(map.count).keys()].some((p) => map.isZero(p))).toBe(true);
    }
  });
});
