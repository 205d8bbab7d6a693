import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { WalkAddon } from './walk-addon.js';

/**
 * Loads the addon from the repo's build folder (from the sources in agent/source/dir/native/ or the
 * compiled dist/agent/source/dir/native/); throws when it is not built. The single executable's
 * bundle replaces this module with one that loads its embedded copy, in whichever thread asks
 * (installers/build/bundle.ts).
 */
export function loadWalkAddon(): WalkAddon {
  const here = fileURLToPath(import.meta.url);
  const repo = resolve(dirname(here), here.endsWith('.js') ? '../../../../..' : '../../../..');
  return createRequire(import.meta.url)(resolve(repo, 'build', 'Release', 'cairn_walk.node')) as WalkAddon;
}
