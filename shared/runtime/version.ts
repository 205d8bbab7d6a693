import { readFileSync } from 'node:fs';
import { embeddedRuntime } from './embedded.js';

/** Cairn's version: the single executable's, else package.json's (three levels above this file in src and in dist/shared/runtime). */
export function cairnVersion(): string {
  const embedded = embeddedRuntime();
  if (embedded) return embedded.version;
  for (const rel of ['../../package.json', '../../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version: string };
      if (pkg.name === 'cairn') return pkg.version;
    } catch {
      // try the next
    }
  }
  return 'unknown';
}
