import { CairnError } from '../../../shared/errors.js';
import type { ArrayVolumeUrl } from './array-source.js';
import { parseDoradoUrl } from './dorado-driver.js';
import { parseRbdUrl } from './rbd-driver.js';

/** Storage-array volumes by URL scheme: `rbd://` (Ceph RBD), `dorado://` (Huawei OceanStor Dorado). */
export function isArrayUrl(spec: string): boolean {
  return /^(rbd|dorado):\/\//i.test(spec);
}

export function parseArrayUrl(spec: string): ArrayVolumeUrl {
  const scheme = spec.slice(0, spec.indexOf(':')).toLowerCase();
  if (scheme === 'rbd') return parseRbdUrl(spec);
  if (scheme === 'dorado') return parseDoradoUrl(spec);
  throw new CairnError('USAGE', `'${spec}' is not a storage-array volume URL; use rbd://POOL/IMAGE or dorado://USER@HOST/LUN`);
}
