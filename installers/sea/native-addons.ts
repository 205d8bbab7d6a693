import { join } from 'node:path';

/**
 * Loads one of the native addons (SQLite, BLAKE3, zstd) that the single executable carries, from the
 * runtime folder its entry point prepared (`CAIRN_RUNTIME_DIR`, inherited by worker threads). The
 * build replaces each addon's own loader with a call to this; see `bundle.ts`.
 */
const loaded = new Map<string, unknown>();

export function loadNativeAddon(name: string): unknown {
  const cached = loaded.get(name);
  if (cached !== undefined) return cached;
  const dir = process.env.CAIRN_RUNTIME_DIR;
  if (!dir) throw new Error(`native addon '${name}' requested before the runtime folder was prepared`);
  const module = { exports: {} as unknown };
  process.dlopen(module, join(dir, 'native', `${name}.node`));
  loaded.set(name, module.exports);
  return module.exports;
}
