import { afterEach, describe, expect, it, vi } from 'vitest';
import { helperEnv, type NbdHelperJob } from './disk-readers.js';

const job: NbdHelperJob = {
  helper: '/usr/local/bin/serve-vddk',
  host: 'vc.example',
  port: 443,
  thumbprint: 'ab'.repeat(20),
  user: 'backup@vsphere.local',
  passwordFile: undefined,
  password: 'secret',
  vm: { type: 'VirtualMachine', value: 'vm-42' },
  snapshot: { type: 'VirtualMachineSnapshot', value: 'snapshot-7' },
  fileName: '[ds1] vm/vm.vmdk',
  capacity: 1 << 30,
};

describe('helperEnv', () => {
  afterEach(() => vi.unstubAllEnvs());

  it('passes the allow-list and the job, never the passphrase, the vSphere password or cloud credentials', () => {
    vi.stubEnv('PATH', '/usr/bin:/bin');
    vi.stubEnv('LC_ALL', 'C.UTF-8');
    vi.stubEnv('CAIRN_PASSPHRASE', 'vault passphrase');
    vi.stubEnv('CAIRN_VSPHERE_PASSWORD', 'secret');
    vi.stubEnv('CAIRN_VSPHERE_VDDK_LIBDIR', '/opt/vmware-vix-disklib-distrib');
    vi.stubEnv('AWS_SECRET_ACCESS_KEY', 'aws secret');
    vi.stubEnv('CAIRN_VSPHERE_SERVER', 'not-this-one');
    const env = helperEnv(job, '/tmp/x/password', '/tmp/x/nbd.sock');
    expect(env).toMatchObject({
      PATH: '/usr/bin:/bin',
      LC_ALL: 'C.UTF-8',
      CAIRN_VSPHERE_VDDK_LIBDIR: '/opt/vmware-vix-disklib-distrib',
      CAIRN_VSPHERE_SERVER: 'vc.example',
      CAIRN_VSPHERE_PORT: '443',
      CAIRN_VSPHERE_THUMBPRINT: Array(20).fill('AB').join(':'),
      CAIRN_VSPHERE_PASSWORD_FILE: '/tmp/x/password',
      CAIRN_VSPHERE_SOCKET: '/tmp/x/nbd.sock',
      CAIRN_VSPHERE_VM: 'vm-42',
      CAIRN_VSPHERE_SNAPSHOT: 'snapshot-7',
    });
    expect(Object.keys(env).filter((k) => ['CAIRN_PASSPHRASE', 'CAIRN_VSPHERE_PASSWORD', 'AWS_SECRET_ACCESS_KEY'].includes(k))).toEqual([]);
    expect(Object.values(env)).not.toContain('secret');
  });
});
