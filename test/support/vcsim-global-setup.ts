/**
 * vitest globalSetup: builds the vCenter simulator fixture (test/fixtures/vcsim, about 20 s the first
 * time, then cached) before any test file starts, so the build does not count against the VMware
 * tests' hook time while other test files load the machine.
 */
import { buildVcsim } from './vcsim.js';

export default async function setup(): Promise<void> {
  await buildVcsim();
}
