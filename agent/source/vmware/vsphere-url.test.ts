import { describe, expect, it } from 'vitest';
import { isCairnError } from '../../../shared/errors.js';
import { parseVsphereUrl } from './vsphere-url.js';

function usage(url: string): string {
  try {
    parseVsphereUrl(url);
  } catch (err) {
    if (isCairnError(err, 'USAGE')) return err.message;
    throw err;
  }
  throw new Error(`${url} was accepted`);
}

describe('parseVsphereUrl', () => {
  it('reads user, host, port, VM and options', () => {
    const u = parseVsphereUrl('vsphere://backup@vsphere.local@VC01.example:8443/web%2001?password-file=/etc/cairn/vc.pw&thumbprint=AB:CD' + ':ef'.repeat(18) + '&quiesce=require');
    expect(u).toMatchObject({ host: 'vc01.example', port: 8443, user: 'backup@vsphere.local', vm: 'web 01', passwordFile: '/etc/cairn/vc.pw', quiesce: 'require', transport: 'https' });
    expect(u.thumbprint).toBe('abcd' + 'ef'.repeat(18));
    expect(u.display).toBe('vsphere://backup@vsphere.local@vc01.example:8443/web 01');
    expect(parseVsphereUrl('vsphere://u%40corp@[::1]/vm-42').port).toBe(443);
    expect(parseVsphereUrl('vsphere://u@h/vm-42?transport=nbd&nbd-helper=/usr/lib/cairn/vddk-helper')).toMatchObject({ transport: 'nbd', nbdHelper: '/usr/lib/cairn/vddk-helper', quiesce: 'auto' });
  });

  it('refuses passwords in the URL, saying where to put them', () => {
    expect(usage('vsphere://admin:hunter2@h/vm')).toMatch(/password-file=PATH.*CAIRN_VSPHERE_PASSWORD/);
    expect(usage('vsphere://admin:hunter2@h/vm')).not.toContain('hunter2');
    expect(usage('vsphere://admin@h/vm?password=hunter2')).not.toContain('hunter2');
  });

  it('refuses what it cannot use', () => {
    expect(usage('vsphere://h/vm')).toContain('no user');
    expect(usage('vsphere://u@h/')).toContain('name one VM');
    expect(usage('vsphere://u@h/a/b')).toContain('name one VM');
    expect(usage('vsphere://u@h/vm?quiesce=maybe')).toContain('quiesce=maybe');
    expect(usage('vsphere://u@h/vm?transport=nbd')).toContain('nbd-helper=');
    expect(usage('vsphere://u@h/vm?nbd-helper=/x')).toContain('only used with transport=nbd');
    expect(usage('vsphere://u@h/vm?thumbprint=xyz')).toContain('not a certificate thumbprint');
    expect(usage('vsphere://u@h/vm?colour=red')).toContain("unknown parameter 'colour'");
    expect(usage('vsphere://u@h:99999/vm')).toContain('out of range');
  });
});
