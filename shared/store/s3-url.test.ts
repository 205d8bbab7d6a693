import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { S3Store } from './s3-store.js';
import { parseS3Url } from './s3-url.js';

describe('s3:// vault URLs', () => {
  it('reads bucket, prefix and parameters', () => {
    expect(parseS3Url('s3://backups/site-a?endpoint=https://rgw.example.net&path-style=true&region=eu-1')).toMatchObject({
      bucket: 'backups',
      prefix: 'site-a/',
      endpoint: 'https://rgw.example.net',
      region: 'eu-1',
      pathStyle: true,
      display: 's3://backups/site-a/',
    });
  });

  it('refuses a server in place of the bucket (USAGE, pointing at ?endpoint=)', () => {
    for (const url of ['s3://127.0.0.1:9000/bucket/v', 's3://rgw.example.net:443/v', 's3://user:secret@backups/v']) {
      expect(() => parseS3Url(url), url).toThrow(expect.objectContaining({ code: 'USAGE', message: expect.stringContaining('?endpoint=http://host:port') }));
    }
  });
});

describe('S3Store without a region', () => {
  const saved: Record<string, string | undefined> = {};
  const names = ['AWS_REGION', 'AWS_DEFAULT_REGION', 'AWS_PROFILE', 'AWS_CONFIG_FILE', 'AWS_SHARED_CREDENTIALS_FILE'];
  beforeEach(() => {
    for (const n of names) saved[n] = process.env[n];
    for (const n of names) delete process.env[n];
    // No shared config either: a region there would be found.
    process.env.AWS_CONFIG_FILE = '/nonexistent/cairn-test-aws-config';
    process.env.AWS_SHARED_CREDENTIALS_FILE = '/nonexistent/cairn-test-aws-credentials';
  });
  afterEach(() => {
    for (const n of names) {
      if (saved[n] === undefined) delete process.env[n];
      else process.env[n] = saved[n];
    }
  });

  it('says to set one (USAGE), not an internal error', async () => {
    const store = new S3Store('s3://backups/v', { credentials: { accessKeyId: 'a', secretAccessKey: 'b' }, retry: { attempts: 1, baseMs: 1, capMs: 1 } });
    await expect(store.get('config')).rejects.toMatchObject({ code: 'USAGE', message: expect.stringContaining('AWS_REGION') });
  });
});
