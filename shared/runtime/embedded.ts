/**
 * The seam between Cairn's code and the single-executable build (`installers/sea/`).
 *
 * Run from a source tree or `dist/`, Cairn finds its worker script, web console files and version on
 * disk beside its modules; this module then answers `undefined`. The single executable has no such
 * files: its entry point registers where they are before anything else runs, and the few places
 * that read files beside their module ask here first.
 */
export interface EmbeddedRuntime {
  /** Cairn's version, as package.json said at build time. */
  version: string;
  /** Source of a bundled worker (`chunk-worker`), for `new Worker(source, { eval: true })`. */
  workerSource(name: string): string;
  /** A folder holding a copy of the embedded files under `prefix` (`console`), made on first use. */
  extractedDir(prefix: string): string;
}

const KEY = Symbol.for('cairn.embedded-runtime');

export function registerEmbeddedRuntime(runtime: EmbeddedRuntime): void {
  (globalThis as Record<symbol, unknown>)[KEY] = runtime;
}

/** The single executable's runtime, or undefined when Cairn runs from its modules on disk. */
export function embeddedRuntime(): EmbeddedRuntime | undefined {
  return (globalThis as Record<symbol, unknown>)[KEY] as EmbeddedRuntime | undefined;
}
