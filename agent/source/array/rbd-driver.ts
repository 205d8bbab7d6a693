import { CairnError } from '../../../shared/errors.js';
import type { ArrayVolumeUrl } from './array-source.js';

export function parseRbdUrl(url: string): ArrayVolumeUrl {
  throw new CairnError('USAGE', `${url}: Ceph RBD volumes are not supported yet`);
}
