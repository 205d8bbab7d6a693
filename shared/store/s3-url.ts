import { CairnError } from '../errors.js';

/** A parsed `s3://bucket/prefix?endpoint=URL&region=R&path-style=true` vault location. */
export interface S3Location {
  bucket: string;
  /** '' or a prefix ending in '/'; every key of the vault lives under it. */
  prefix: string;
  /** An S3-compatible service's URL; undefined means AWS itself. */
  endpoint?: string;
  region?: string;
  /** Path-style requests (http://host/bucket/key), which most S3-compatible services need. */
  pathStyle: boolean;
  /** The named profile in the shared AWS config and credentials files. */
  profile?: string;
  /** The location as shown in messages: `s3://bucket/prefix` (the query never holds secrets, but is long). */
  display: string;
}

const knownParams = new Set(['endpoint', 'region', 'path-style', 'profile']);

/** Bucket naming rules of S3 (3–63 characters of lower-case letters, digits, dots and dashes). */
const bucketPattern = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

export function isS3Url(location: string): boolean {
  return location.startsWith('s3://');
}

export function parseS3Url(location: string): S3Location {
  const bad = (what: string): CairnError =>
    new CairnError('USAGE', `vault URL ${location.split('?')[0]}: ${what}; the form is s3://bucket/prefix?endpoint=URL&region=R&path-style=true`);
  let url: URL;
  try {
    url = new URL(location);
  } catch {
    throw bad('not a valid URL');
  }
  const bucket = url.hostname;
  // s3://host:port/... is a server, not a bucket: the URL would otherwise lose the port unnoticed.
  if (url.port || url.username || url.password) throw bad(`"${url.host}" is not a bucket (a server goes in ?endpoint=http://host:port)`);
  if (!bucketPattern.test(bucket)) throw bad(`"${bucket}" is not a valid bucket name`);
  const path = decodeURIComponent(url.pathname).replace(/^\/+/, '').replace(/\/+$/, '');
  if (path.split('/').some((s) => s === '.' || s === '..') || /\/\//.test(path)) throw bad('the prefix has an empty, "." or ".." segment');
  for (const name of url.searchParams.keys()) {
    if (!knownParams.has(name)) throw bad(`unknown parameter "${name}" (known: ${[...knownParams].join(', ')})`);
  }
  const endpoint = url.searchParams.get('endpoint') ?? undefined;
  if (endpoint !== undefined) {
    let e: URL;
    try {
      e = new URL(endpoint);
    } catch {
      throw bad(`endpoint "${endpoint}" is not a URL`);
    }
    if (e.protocol !== 'http:' && e.protocol !== 'https:') throw bad(`endpoint "${endpoint}" must be http:// or https://`);
  }
  const pathStyleParam = url.searchParams.get('path-style');
  if (pathStyleParam !== null && pathStyleParam !== 'true' && pathStyleParam !== 'false') throw bad('path-style must be true or false');
  const prefix = path ? path + '/' : '';
  return {
    bucket,
    prefix,
    endpoint,
    region: url.searchParams.get('region') ?? undefined,
    pathStyle: pathStyleParam === 'true',
    profile: url.searchParams.get('profile') ?? undefined,
    display: `s3://${bucket}/${prefix}`,
  };
}
