import { describe, expect, it } from 'vitest';
import { withoutCredentials } from './control-plane-session.js';

describe('withoutCredentials', () => {
  it('removes a URL user and password and leaves everything else as written', () => {
    expect(withoutCredentials('nbd://backup:s3cret@10.0.0.5:10809/db?bitmap=b1')).toBe('nbd://10.0.0.5:10809/db?bitmap=b1');
    expect(withoutCredentials('nbd://admin@10.0.0.5/db')).toBe('nbd://10.0.0.5/db');
    expect(withoutCredentials('nbd+unix:///disk?socket=/run/nbd.sock')).toBe('nbd+unix:///disk?socket=/run/nbd.sock');
    expect(withoutCredentials('/var/lib/images/web.img')).toBe('/var/lib/images/web.img');
  });
});
