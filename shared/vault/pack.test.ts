import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { CairnError } from '../errors.js';
import { LocalStore } from '../store/local-store.js';
import { ChunkIndex } from './chunk-index.js';
import { ID_BYTES, seal } from './crypto.js';
import { PackWriter } from './pack-writer.js';
import {
  decodeEntries,
  encodeEntries,
  ENTRY_BYTES,
  openPackHeader,
  packIdFromKey,
  packKey,
  packTail,
  PACK_MAGIC,
  PACK_TRAILER_BYTES,
  parseTrailer,
  type PackEntry,
} from './pack.js';
import { Vault } from './vault.js';

const key = randomBytes(32);
const packId = randomBytes(16).toString('hex');

function entries(n: number): PackEntry[] {
  const out: PackEntry[] = [];
  let offset = 0;
  for (let i = 0; i < n; i++) {
    const length = 100 + i * 7;
    out.push({ id: randomBytes(ID_BYTES), offset, length, rawLength: 4096 + i, codec: i % 2 });
    offset += length;
  }
  return out;
}

/** Splits a tail into its sealed header and the header length the trailer claims. */
function split(tail: Buffer): { sealed: Buffer; headerLength: number } {
  const headerLength = parseTrailer(tail.subarray(tail.length - PACK_TRAILER_BYTES), packId);
  return { sealed: tail.subarray(tail.length - PACK_TRAILER_BYTES - headerLength, tail.length - PACK_TRAILER_BYTES), headerLength };
}

function thrown(fn: () => unknown): CairnError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(CairnError);
    return err as CairnError;
  }
  throw new Error('expected an error');
}

describe('pack tail', () => {
  it('round-trips entries through the sealed header and trailer', () => {
    const list = entries(5);
    const tail = packTail(key, packId, list);
    expect(tail.subarray(tail.length - PACK_MAGIC.length)).toEqual(PACK_MAGIC);
    const { sealed, headerLength } = split(tail);
    expect(headerLength + PACK_TRAILER_BYTES).toBe(tail.length);
    expect(openPackHeader(key, packId, sealed)).toEqual(list);
  });

  it('round-trips an empty header', () => {
    const { sealed } = split(packTail(key, packId, []));
    expect(openPackHeader(key, packId, sealed)).toEqual([]);
  });

  it('rejects a flipped bit anywhere in the sealed header as VAULT_CORRUPT', () => {
    const { sealed } = split(packTail(key, packId, entries(3)));
    for (const at of [0, 12, Math.floor(sealed.length / 2), sealed.length - 1]) {
      const bad = Buffer.from(sealed);
      bad[at] ^= 0x01;
      expect(thrown(() => openPackHeader(key, packId, bad)).code).toBe('VAULT_CORRUPT');
    }
  });

  it('rejects a header opened under another pack id or key as VAULT_CORRUPT', () => {
    const { sealed } = split(packTail(key, packId, entries(3)));
    expect(thrown(() => openPackHeader(key, randomBytes(16).toString('hex'), sealed)).code).toBe('VAULT_CORRUPT');
    expect(thrown(() => openPackHeader(randomBytes(32), packId, sealed)).code).toBe('VAULT_CORRUPT');
  });

  it('rejects a trailer with the wrong magic or length as VAULT_CORRUPT', () => {
    const tail = packTail(key, packId, entries(1));
    const trailer = Buffer.from(tail.subarray(tail.length - PACK_TRAILER_BYTES));
    trailer[trailer.length - 1] ^= 0xff;
    expect(thrown(() => parseTrailer(trailer, packId)).code).toBe('VAULT_CORRUPT');
    expect(thrown(() => parseTrailer(trailer.subarray(1), packId)).code).toBe('VAULT_CORRUPT');
  });

  it('refuses a header version it does not know with VAULT_VERSION', () => {
    const plain = Buffer.alloc(5);
    plain.writeUInt8(2, 0);
    const sealed = seal(key, plain, Buffer.from(`cairn/pack-header/v1/${packId}`));
    expect(thrown(() => openPackHeader(key, packId, sealed)).code).toBe('VAULT_VERSION');
  });

  it('rejects a header whose count runs past its end as VAULT_CORRUPT', () => {
    const plain = Buffer.alloc(5 + ENTRY_BYTES);
    plain.writeUInt8(1, 0);
    plain.writeUInt32LE(2, 1);
    encodeEntries(entries(1), plain, 5);
    const sealed = seal(key, plain, Buffer.from(`cairn/pack-header/v1/${packId}`));
    expect(thrown(() => openPackHeader(key, packId, sealed)).code).toBe('VAULT_CORRUPT');
  });

  it('encodes entries in 45 bytes each at the given offset', () => {
    const list = entries(2);
    const buf = Buffer.alloc(3 + 2 * ENTRY_BYTES);
    expect(encodeEntries(list, buf, 3)).toBe(3 + 2 * ENTRY_BYTES);
    expect(decodeEntries(buf, 3, 2, 'test')).toEqual(list);
  });

  it('maps pack ids to keys and back, and ignores other keys', () => {
    expect(packKey(packId)).toBe(`packs/${packId.slice(0, 2)}/${packId}`);
    expect(packIdFromKey(packKey(packId))).toBe(packId);
    expect(packIdFromKey(`packs/${packId.slice(0, 2)}/.tmp-0123456789abcdef`)).toBeUndefined();
    expect(packIdFromKey(`packs/zz/${packId}`)).toBeUndefined();
  });
});

describe('packs in a vault', () => {
  let dir: string | undefined;
  afterEach(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
    dir = undefined;
  });

  async function vaultWithPack(): Promise<{ vault: Vault; packId: string; written: PackEntry[]; store: LocalStore }> {
    dir = await mkdtemp(join(tmpdir(), 'cairn-pack-'));
    const store = new LocalStore(dir);
    const vault = await Vault.init(store, 'pack test', { chunkSize: 4096, packSize: 1 << 20 });
    const index = new ChunkIndex();
    const writer = new PackWriter(vault, index);
    const blobs = [randomBytes(300), randomBytes(5000), randomBytes(17)];
    for (const b of blobs) writer.add(randomBytes(ID_BYTES), b, 0, b.length);
    await writer.flush();
    const [id] = [...index.packIds()];
    const written = [...index.entries()].map(([chunkId, loc]) => ({ id: chunkId, offset: loc.offset, length: loc.length, rawLength: loc.rawLength, codec: loc.codec }));
    return { vault, packId: id, written, store };
  }

  it('reads back the header a PackWriter wrote, from the end of the pack', async () => {
    const { vault, packId: id, written } = await vaultWithPack();
    const header = await vault.readPackHeader(id);
    expect(header.map((e) => e.id.toString('hex')).sort()).toEqual(written.map((e) => e.id.toString('hex')).sort());
    expect(header).toEqual(expect.arrayContaining(written));
  });

  it('reports a truncated or tampered pack as VAULT_CORRUPT and a missing one as NOT_FOUND', async () => {
    const { vault, packId: id, store } = await vaultWithPack();
    const whole = await store.get(packKey(id));
    await store.put(packKey(id), () => whole.subarray(0, whole.length - 1));
    await expect(vault.readPackHeader(id)).rejects.toMatchObject({ code: 'VAULT_CORRUPT' });
    const tampered = Buffer.from(whole);
    tampered[tampered.length - PACK_TRAILER_BYTES - 3] ^= 0x10;
    await store.put(packKey(id), () => tampered);
    await expect(vault.readPackHeader(id)).rejects.toMatchObject({ code: 'VAULT_CORRUPT' });
    await store.put(packKey(id), () => whole.subarray(0, 5));
    await expect(vault.readPackHeader(id)).rejects.toMatchObject({ code: 'VAULT_CORRUPT' });
    await store.delete(packKey(id));
    await expect(vault.readPackHeader(id)).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });
});
