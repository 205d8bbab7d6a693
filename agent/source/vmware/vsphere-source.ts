import { CairnError } from '../../../shared/errors.js';
import type { BlockSource } from '../block-source.js';

export function isVsphereUrl(spec: string): boolean {
  return /^vsphere:\/\//i.test(spec);
}

/** Opens every virtual disk of the VM a `vsphere://` URL names, as one consistency group. */
export async function openVsphereDisks(url: string): Promise<BlockSource[]> {
  throw new CairnError('USAGE', `${url}: VMware VMs are not supported yet`);
}
