import { it } from 'vitest';
import { NbdClient } from '../nbd/nbd-client.js';
it('t', async () => {
  let t = Date.now();
  const v = await NbdClient.connect({ unix: '/tmp/qx/vm.sock' }, { exportName: 'cairn-fleece-d0' });
  await v.read(0, v.size); await v.close();
  console.log('view', Date.now() - t); t = Date.now();
  const c = await NbdClient.connect({ unix: '/tmp/qx/vm.sock' }, { exportName: 'vm0' });
  console.log('connect', Date.now() - t); t = Date.now();
  await c.read(10489856, 3145728);
  console.log('read', Date.now() - t); t = Date.now();
  await c.close();
  console.log('close', Date.now() - t);
}, 15000);
