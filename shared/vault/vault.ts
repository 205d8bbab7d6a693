import { hostname } from 'node:os';
import { CairnError, isCairnError } from '../errors.js';
import { hexId, randomIdSource, systemClock, type Clock, type IdSource } from '../clock.js';
import type { ObjectStore } from '../store/object-store.js';
import {
  DEFAULT_CHUNK,
  DEFAULT_PACK,
  DEFAULT_FILE_ZSTD_LEVEL,
  DEFAULT_ZSTD_LEVEL,
  FORMAT_NAME,
  FORMAT_VERSION,
  parseConfig,
  validChunkSize,
  type VaultConfig,
  type VaultType,
} from './config.js';
import { DEFAULT_CDC, validCdcParams, type CdcParams } from './cdc.js';
import { defaultScrypt, newMasterKey, type MasterKey } from './crypto.js';
import { unwrapMasterKey, wrapMasterKey } from './keys.js';
import { ChunkIndex } from './chunk-index.js';
import { decodeIndex, decodeIndexEncoded, encodeIndex, indexKey, type EncodedIndexedPack, type IndexedPack } from './index-file.js';
import { openPackHeader, packIdFromKey, packKey, parseTrailer, PACK_TRAILER_BYTES, type PackEntry } from './pack.js';
import { decodeManifest, encodeManifest, manifestKey, type Manifest } from './manifest.js';
import { BlockMap, decodeBlockMap, encodeBlockMap } from './block-map.js';
import { readGcPlan, type GcPlan } from './gc-plan.js';
import type { IndexCache } from './index-cache.js';
import { DEFAULT_GENERATION_DAYS, retentionDate } from './retention.js';

export interface InitOptions {
  type?: VaultType;
  chunkSize?: number;
  packSize?: number;
  compressionLevel?: number;
  /** Content-defined chunking of file data (default DEFAULT_CDC: 256 KiB / 1 MiB / 4 MiB). */
  cdc?: CdcParams;
  /** Keep every backup this many days under Object Lock (the store must support it). */
  immutableDays?: number;
  /**
   * scrypt cost of the passphrase's key file as log2(N), 12 to 20 (default 16: N = 65536, 64 MiB and
   * about 0.1-0.4 s per unlock). Each step down halves both the unlock time and the cost of guessing.
   */
  kdfLogN?: number;
}

export interface VaultDeps {
  clock?: Clock;
  ids?: IdSource;
  /** Optional local cache of index objects (the agent's state database). */
  indexCache?: IndexCache;
  /** Packs uploaded at once by a backup (default 2: a local disk gains nothing from more). */
  uploadConcurrency?: number;
}

/**
 * An open (unlocked) vault: the format's operations on top of an ObjectStore. It holds no state
 * beyond the config and key, so several processes may open the same vault at once; the only
 * coordination is through objects (leases, the gc plan) described in FORMAT.md.
 */
export class Vault {
  readonly clock: Clock;
  readonly ids: IdSource;
  readonly uploadConcurrency: number;
  private readonly indexCache: IndexCache | undefined;

  private constructor(
    readonly store: ObjectStore,
    readonly config: VaultConfig,
    readonly key: MasterKey,
    deps: VaultDeps,
  ) {
    this.clock = deps.clock ?? systemClock;
    this.ids = deps.ids ?? randomIdSource;
    this.indexCache = deps.indexCache;
    this.uploadConcurrency = Math.max(1, deps.uploadConcurrency ?? 2);
  }

  static async init(store: ObjectStore, passphrase: string, opts: InitOptions = {}, deps: VaultDeps = {}): Promise<Vault> {
    const clock = deps.clock ?? systemClock;
    const ids = deps.ids ?? randomIdSource;
    const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK;
    if (!validChunkSize(chunkSize)) {
      throw new CairnError('USAGE', `chunk size ${chunkSize} is invalid: use a power of two from 4K to 4M, e.g. 64K`);
    }
    const cdc = opts.cdc ?? DEFAULT_CDC;
    if (!validCdcParams(cdc)) {
      throw new CairnError(
        'USAGE',
        `chunking parameters ${JSON.stringify(cdc)} are invalid: use 1K <= min < avg < max <= 64M with avg a power of two, e.g. 256K/1M/4M`,
      );
    }
    if (await store.stat('config')) {
      throw new CairnError('VAULT_EXISTS', `a vault exists already at ${store.location}; use it, or choose an empty location`);
    }
    for await (const o of store.list('')) {
      const nested = /^(.*\/)config$/.exec(o.key);
      throw new CairnError(
        'VAULT_EXISTS',
        nested
          ? `${store.location} holds another vault under ${nested[1]}; choose a location that does not contain one`
          : `${store.location} is not empty (it holds ${o.key}); a vault needs an empty location`,
      );
    }
    let immutability: VaultConfig['immutability'];
    if (opts.immutableDays !== undefined) {
      if (!Number.isInteger(opts.immutableDays) || opts.immutableDays < 1 || opts.immutableDays > 36500) {
        throw new CairnError('USAGE', `--immutable-days must be a whole number of days from 1 to 36500, not ${opts.immutableDays}`);
      }
      if (!(await store.supportsRetention?.())) {
        throw new CairnError(
          'USAGE',
          `${store.location} cannot keep data immutable: it is not a bucket with Object Lock enabled; ` +
            `create the bucket with Object Lock (e.g. 'aws s3api create-bucket --object-lock-enabled-for-bucket') or drop --immutable-days`,
        );
      }
      immutability = { days: opts.immutableDays, generationDays: Math.min(DEFAULT_GENERATION_DAYS, opts.immutableDays) };
    }
    const now = clock.now().toISOString();
    const config: VaultConfig = {
      format: FORMAT_NAME,
      version: FORMAT_VERSION,
      id: hexId(ids, 16),
      type: opts.type ?? 'disk',
      createdAt: now,
      chunkSize,
      packSize: opts.packSize ?? DEFAULT_PACK,
      compression: { algorithm: 'zstd', level: opts.compressionLevel ?? DEFAULT_ZSTD_LEVEL, fileLevel: opts.compressionLevel ?? DEFAULT_FILE_ZSTD_LEVEL },
      cdc: { min: cdc.min, avg: cdc.avg, max: cdc.max },
      ...(immutability ? { immutability } : {}),
    };
    const retainUntil = immutability && retentionDate(immutability, clock.now());
    const master = newMasterKey();
    if (opts.kdfLogN !== undefined && (!Number.isInteger(opts.kdfLogN) || opts.kdfLogN < 12 || opts.kdfLogN > 20)) {
      throw new CairnError('USAGE', `--kdf-log-n must be a whole number from 12 to 20, not ${opts.kdfLogN}`);
    }
    const scrypt = opts.kdfLogN === undefined ? defaultScrypt : { ...defaultScrypt, N: 2 ** opts.kdfLogN };
    const keyFile = await wrapMasterKey(master, passphrase, { createdAt: now, host: hostname() }, scrypt);
    await store.put(`keys/${hexId(ids, 16)}`, () => Buffer.from(JSON.stringify(keyFile, null, 2)), { ifAbsent: true, retainUntil });
    // The config is written last and only if absent: it is the commit point of init.
    await store.put('config', () => Buffer.from(JSON.stringify(config, null, 2) + '\n'), { ifAbsent: true, retainUntil }).catch((err) => {
      if (isCairnError(err, 'ALREADY_EXISTS')) {
        throw new CairnError('VAULT_EXISTS', `a vault was created at ${store.location} at the same time; use it`);
      }
      throw err;
    });
    return new Vault(store, config, master, deps);
  }

  /** Opens a vault; `config` is the one Vault.readConfig returned, if the caller read it already. */
  static async open(store: ObjectStore, passphrase: string, deps: VaultDeps = {}, config?: VaultConfig): Promise<Vault> {
    config ??= await Vault.readConfig(store);
    const keyNames: string[] = [];
    for await (const o of store.list('keys/')) keyNames.push(o.key);
    if (keyNames.length === 0) {
      throw new CairnError('VAULT_CORRUPT', `the vault at ${store.location} has no key files (keys/ is empty)`);
    }
    for (const name of keyNames.sort()) {
      const master = await unwrapMasterKey(await store.get(name), passphrase, name);
      if (master) return new Vault(store, config, master, deps);
    }
    throw new CairnError(
      'WRONG_PASSPHRASE',
      `the passphrase opens none of the ${keyNames.length} key(s) of the vault at ${store.location}; check CAIRN_PASSPHRASE or --passphrase-file`,
    );
  }

  /** Reads and checks the config without a passphrase. */
  static async readConfig(store: ObjectStore): Promise<VaultConfig> {
    let raw: Buffer;
    try {
      raw = await store.get('config');
    } catch (err) {
      if (isCairnError(err, 'NOT_FOUND')) {
        throw new CairnError(
          'VAULT_NOT_FOUND',
          `no vault at ${store.location} (no config object); create one with 'cairn vault init ${store.location}'`,
        );
      }
      throw err;
    }
    return parseConfig(raw, store.location);
  }

  /** A new backup id: sortable by time, unique by its random tail. */
  newBackupId(): string {
    const t = this.clock.now().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
    return `${t}-${hexId(this.ids, 4)}`;
  }

  // ---- index -------------------------------------------------------------------------------

  /** Index object keys currently in the vault. */
  async listIndexKeys(): Promise<string[]> {
    const keys: string[] = [];
    for await (const o of this.store.list('index/')) keys.push(o.key);
    return keys;
  }

  async readIndexObject(key: string): Promise<IndexedPack[]> {
    return this.readIndexWith(key, decodeIndex);
  }

  /** Reads an index object from the cache or else the vault (then caching it), decoded by `decode`. */
  private async readIndexWith<T>(key: string, decode: (key: Buffer, indexId: string, sealed: Buffer) => T): Promise<T> {
    const id = key.slice('index/'.length);
    const cached = this.indexCache?.getIndex(this.config.id, key);
    if (cached) {
      try {
        return decode(this.key.encryption, id, cached);
      } catch {
        // A damaged cache entry: fall through to the vault.
      }
    }
    const body = await this.store.get(key);
    const packs = decode(this.key.encryption, id, body);
    this.indexCache?.putIndex(this.config.id, key, body);
    return packs;
  }

  /**
   * Loads every index object. Packs condemned by a pending gc plan are left out (unless asked for,
   * as restore and verify do), so that a new backup never reuses a chunk gc is about to delete.
   * A chunk found in several packs is located in one the store holds: an immutable vault keeps index
   * objects that name packs gc has deleted since. Such packs are left out entirely for backups and gc,
   * and added last for restore and verify (which then name them as missing when a backup needs them).
   * Returns the plan it read (none when condemned packs are included) and the packs it listed.
   */
  async loadIndex(opts: { includeCondemned?: boolean } = {}): Promise<{
    index: ChunkIndex;
    indexKeys: string[];
    plan: GcPlan | undefined;
    packs: Map<string, { size: number; modified: Date }>;
  }> {
    const plan = opts.includeCondemned ? undefined : await readGcPlan(this);
    const condemned = new Set(plan?.condemnedPacks ?? []);
    const indexKeys = await this.listIndexKeys();
    this.indexCache?.retainIndexes(this.config.id, indexKeys);
    // Entries stay encoded until the index holds them: no object per chunk on the way.
    const named: EncodedIndexedPack[] = [];
    for (const key of indexKeys) named.push(...(await this.readIndexWith(key, decodeIndexEncoded)));
    const index = new ChunkIndex(named.reduce((sum, p) => sum + p.entries.count, 0));
    // Listed after the index objects: a pack is stored before any index names it, so every pack an
    // index names is in this listing unless it was deleted.
    const packs = await this.listPacks();
    for (const p of named) {
      if (!condemned.has(p.packId) && packs.has(p.packId)) index.addPack(p.packId, p.entries);
    }
    if (opts.includeCondemned) for (const p of named) if (!packs.has(p.packId)) index.addPack(p.packId, p.entries);
    return { index, indexKeys, plan, packs };
  }

  /** The Object Lock date for objects written now, on an immutable vault (retention.ts). */
  retainUntil(): Date | undefined {
    return this.config.immutability && retentionDate(this.config.immutability, this.clock.now());
  }

  /** Writes a new index object naming `packs` (all stored already); returns its key and size. */
  async writeIndex(packs: IndexedPack[]): Promise<{ key: string; size: number }> {
    const id = hexId(this.ids, 16);
    const body = encodeIndex(this.key.encryption, id, packs);
    await this.store.put(indexKey(id), () => body, { ifAbsent: true, retainUntil: this.retainUntil() });
    this.indexCache?.putIndex(this.config.id, indexKey(id), body);
    return { key: indexKey(id), size: body.length };
  }

  /** Every pack object in the store, with size and time. */
  async listPacks(): Promise<Map<string, { size: number; modified: Date }>> {
    const packs = new Map<string, { size: number; modified: Date }>();
    for await (const o of this.store.list('packs/')) {
      const id = packIdFromKey(o.key);
      if (id) packs.set(id, { size: o.size, modified: o.modified });
    }
    return packs;
  }

  /** Reads a pack's header with two ranged gets (trailer, then sealed header). */
  async readPackHeader(packId: string, size?: number): Promise<PackEntry[]> {
    const key = packKey(packId);
    const total = size ?? (await this.store.stat(key))?.size;
    if (total === undefined) throw new CairnError('NOT_FOUND', `pack ${packId} is missing from ${this.store.location}`);
    if (total < PACK_TRAILER_BYTES) throw new CairnError('VAULT_CORRUPT', `pack ${packId} is truncated`);
    const trailer = await this.store.get(key, { offset: total - PACK_TRAILER_BYTES, length: PACK_TRAILER_BYTES });
    const headerLength = parseTrailer(trailer, packId);
    if (headerLength > total - PACK_TRAILER_BYTES) throw new CairnError('VAULT_CORRUPT', `pack ${packId} is truncated`);
    const sealed = await this.store.get(key, { offset: total - PACK_TRAILER_BYTES - headerLength, length: headerLength });
    return openPackHeader(this.key.encryption, packId, sealed);
  }

  /**
   * Finds packs that no index object names (left by an interrupted backup), reads their headers,
   * adds them to `index` and writes an index object for them, so their chunks are reused rather
   * than uploaded again. Packs condemned by `plan` (the gc plan loadIndex read) and unreadable
   * packs are skipped; `packs` is the listing loadIndex made, if at hand.
   */
  async recoverUnindexedPacks(
    index: ChunkIndex,
    plan: GcPlan | undefined,
    packs?: Map<string, { size: number; modified: Date }>,
  ): Promise<number> {
    const condemned = new Set(plan?.condemnedPacks ?? []);
    const recovered: IndexedPack[] = [];
    for (const [packId, info] of packs ?? (await this.listPacks())) {
      if (index.hasPack(packId) || condemned.has(packId)) continue;
      try {
        const entries = await this.readPackHeader(packId, info.size);
        recovered.push({ packId, entries });
        index.addPack(packId, entries);
      } catch (err) {
        if (!isCairnError(err, 'VAULT_CORRUPT') && !isCairnError(err, 'NOT_FOUND')) throw err;
      }
    }
    if (recovered.length > 0) await this.writeIndex(recovered);
    return recovered.length;
  }

  // ---- backups -----------------------------------------------------------------------------

  async listBackups(): Promise<Manifest[]> {
    const out: Manifest[] = [];
    for await (const o of this.store.list('backups/')) {
      const id = o.key.slice('backups/'.length);
      out.push(decodeManifest(this.key.encryption, id, await this.store.get(o.key)));
    }
    return out.sort((a, b) => (a.startedAt < b.startedAt ? -1 : a.startedAt > b.startedAt ? 1 : a.id < b.id ? -1 : 1));
  }

  async readManifest(id: string): Promise<Manifest> {
    return decodeManifest(this.key.encryption, id, await this.store.get(manifestKey(id)));
  }

  /** Finds a backup by id or name; NOT_FOUND with a hint otherwise. */
  async findBackup(idOrName: string): Promise<Manifest> {
    const all = await this.listBackups();
    const hit = all.find((m) => m.id === idOrName) ?? all.find((m) => m.name === idOrName);
    if (!hit) {
      throw new CairnError(
        'NOT_FOUND',
        `no backup named or with id '${idOrName}' in the vault at ${this.store.location}; list them with 'cairn backups list'`,
      );
    }
    return hit;
  }

  /** Writes a manifest (the commit point of a backup); returns the bytes written. */
  async writeManifest(m: Manifest): Promise<number> {
    const body = encodeManifest(this.key.encryption, m);
    await this.store.put(manifestKey(m.id), () => body, { ifAbsent: true, retainUntil: this.retainUntil() });
    return body.length;
  }

  async readBlockMap(key: string): Promise<BlockMap> {
    return decodeBlockMap(this.key.encryption, key, await this.store.get(key));
  }

  /** Writes a block map; returns the bytes written. */
  async writeBlockMap(key: string, map: BlockMap): Promise<number> {
    const body = encodeBlockMap(this.key.encryption, key, map);
    await this.store.put(key, () => body, { retainUntil: this.retainUntil() });
    return body.length;
  }
}
