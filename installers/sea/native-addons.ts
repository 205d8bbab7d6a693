/**
 * Loads one of the native addons (SQLite, BLAKE3, zstd) that the single executable carries. The
 * entry point opens and checks each addon file once (`runtime-dir.ts`) and keeps the descriptors
 * open; they are shared by every thread of the process and named in `CAIRN_NATIVE_ADDONS`
 * (`name=fd,...`, inherited by worker threads), so each thread loads, through `/proc/self/fd/N`,
 * exactly the bytes that were checked. The build replaces each addon's own loader with a call to
 * this; see `installers/build/bundle.ts`.
 */
const loaded = new Map<string, unknown>();

function descriptors(): Map<string, number> {
  const map = new Map<string, number>();
  for (const part of (process.env.CAIRN_NATIVE_ADDONS ?? '').split(',')) {
    const [name, fd] = part.split('=');
    if (name && fd && /^\d+$/.test(fd)) map.set(name, Number(fd));
  }
  return map;
}

export function loadNativeAddon(name: string, addons: Map<string, number> = descriptors()): unknown {
  const cached = loaded.get(name);
  if (cached !== undefined) return cached;
  const fd = addons.get(name);
  if (fd === undefined) throw new Error(`native addon '${name}' requested before the runtime folder was prepared`);
  const module = { exports: {} as unknown };
  process.dlopen(module, `/proc/self/fd/${fd}`);
  loaded.set(name, module.exports);
  return module.exports;
}

/** The value of `CAIRN_NATIVE_ADDONS` for `addons`. */
export function describeAddons(addons: Map<string, number>): string {
  return [...addons].map(([name, fd]) => `${name}=${fd}`).join(',');
}
