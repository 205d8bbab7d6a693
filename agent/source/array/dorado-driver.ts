import { CairnError } from '../../../shared/errors.js';
import type { ArrayVolumeUrl } from './array-source.js';

export function parseDoradoUrl(url: string): ArrayVolumeUrl {
  throw new CairnError('USAGE', `${url}: OceanStor Dorado volumes are not supported yet`);
}
