import { createHash } from 'node:crypto';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { Readable } from 'node:stream';

import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetBucketVersioningCommand,
  GetObjectCommand,
  GetObjectLockConfigurationCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectVersionsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  PutObjectRetentionCommand,
  S3Client,
  UploadPartCommand,
  type GetObjectRetentionCommandOutput,
  GetObjectRetentionCommand,
} from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';

import { CairnError, isCairnError } from '../errors.js';
import { isValidKey, noRequests, type Body, type ByteRange, type ObjectInfo, type ObjectStore, type PutOptions, type RequestCounts } from './object-store.js';
import { defaultRetryPolicy, withRetry, type RetryPolicy } from './retry.js';
import { parseS3Url, type S3Location } from './s3-url.js';

const MiB = 1024 * 1024;
const silentLogger = { trace() {}, debug() {}, info() {}, warn() {}, error() {} };
/** Bodies above this go up as streams (see bodyOf). */
const STREAM_FROM = MiB;

// The SDK prints a notice on stderr when it runs on Node.js 20 (its next versions need 22). Cairn's
// packages ship their own runtime (installers/README.md); the notice would only break one-line errors.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

export interface S3StoreOptions {
  /** Static credentials (tests); without them the standard AWS chain is used (environment, profile, …). */
  credentials?: { accessKeyId: string; secretAccessKey: string };
  /** Objects larger than this go up as multipart uploads (default 48 MiB: a default 32 MiB pack is one PUT). */
  multipartThreshold?: number;
  /** Part size of multipart uploads (default 16 MiB; S3's minimum is 5 MiB). */
  partSize?: number;
  retry?: RetryPolicy;
  /** A connection that sends or receives nothing for this long is dropped and the request retried (default 30 s). */
  idleTimeoutMs?: number;
  connectTimeoutMs?: number;
  /** Most connections open at once (default 16). */
  maxSockets?: number;
  /** Told about each retry, e.g. to log it. */
  onRetry?: (what: string, err: CairnError, waitMs: number) => void;
}

type Kind = keyof RequestCounts;

/**
 * An ObjectStore on an S3 bucket (AWS or any S3-compatible service), under an optional prefix.
 * Beyond the ObjectStore contracts:
 * - Every request is retried on throttling (503 SlowDown), 5xx, timeouts and reset connections, with
 *   capped exponential backoff and full jitter; each attempt is counted in `requests`.
 * - put with ifAbsent sends `If-None-Match: *`, so the server refuses to replace an object. A retry of a
 *   put whose first attempt may have landed compares the stored object with its own body before it reports
 *   ALREADY_EXISTS. (radosgw 16 enforces If-None-Match only in unversioned buckets; Cairn's keys are
 *   random or content-derived, so it relies on the header only to catch mistakes, never for locking.)
 * - Objects above the multipart threshold go up in parts, each retried on its own; a failed upload is
 *   aborted, and removeStaleTempFiles aborts uploads that a crash left behind.
 * - retainUntil writes the object under Object Lock in COMPLIANCE mode (nobody, root included, can delete
 *   it before that date). On a versioned bucket delete removes every version of the key, so gc frees space.
 */
export class S3Store implements ObjectStore {
  readonly location: string;
  readonly requests: RequestCounts = noRequests();
  readonly where: S3Location;
  private readonly client: S3Client;
  private readonly multipartThreshold: number;
  private readonly partSize: number;
  private readonly retryPolicy: RetryPolicy;
  private readonly onRetry?: S3StoreOptions['onRetry'];
  private versioned?: Promise<boolean>;
  private destroyed = false;
  private readonly waits = new Set<{ timer: NodeJS.Timeout; resolve: () => void }>();
  private objectLock?: Promise<boolean>;

  constructor(location: string | S3Location, opts: S3StoreOptions = {}) {
    this.where = typeof location === 'string' ? parseS3Url(location) : location;
    this.location = this.where.display;
    this.multipartThreshold = opts.multipartThreshold ?? 48 * MiB;
    this.partSize = Math.max(5 * MiB, opts.partSize ?? 16 * MiB);
    this.retryPolicy = opts.retry ?? defaultRetryPolicy;
    this.onRetry = opts.onRetry;
    const agentOptions = { keepAlive: true, maxSockets: opts.maxSockets ?? 16 };
    this.client = new S3Client({
      endpoint: this.where.endpoint,
      region: this.where.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? (this.where.endpoint ? 'us-east-1' : undefined),
      forcePathStyle: this.where.pathStyle,
      profile: this.where.profile,
      credentials: opts.credentials,
      // Retries are ours (withRetry), so that every attempt is counted and a put body is rebuilt per attempt.
      maxAttempts: 1,
      // The SDK would print on the console that a streamed put cannot be retried; ours retries it, and
      // Cairn reports errors itself.
      logger: silentLogger,
      // The SDK's default CRC32 checksums use aws-chunked bodies that many S3-compatible servers reject;
      // every object Cairn stores is authenticated by its own AEAD tag anyway.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: new NodeHttpHandler({
        connectionTimeout: opts.connectTimeoutMs ?? 5_000,
        socketTimeout: opts.idleTimeoutMs ?? 30_000,
        httpAgent: new HttpAgent(agentOptions),
        httpsAgent: new HttpsAgent(agentOptions),
      }),
    });
  }

  async put(key: string, body: Body, options: PutOptions = {}): Promise<void> {
    this.checkKey(key, 'put');
    const size = partsOf(body).reduce((n, p) => n + p.length, 0);
    if (size > this.multipartThreshold) return this.putMultipart(key, body, size, options);
    let maybeLanded = false;
    try {
      await this.retrying(`put ${key}`, async () => {
        const parts = partsOf(body);
        try {
          await this.send('PUT', `put ${key}`, () => this.client.send(new PutObjectCommand({
            Bucket: this.where.bucket,
            Key: this.where.prefix + key,
            Body: bodyOf(parts, size),
            ContentLength: size,
            IfNoneMatch: options.ifAbsent ? '*' : undefined,
            ...this.lockFields(options.retainUntil, parts),
          })));
        } catch (err) {
          if (isCairnError(err) && err.retryable) maybeLanded = true;
          throw err;
        }
      });
    } catch (err) {
      if (isCairnError(err, 'ALREADY_EXISTS') && maybeLanded && (await this.holds(key, body))) return;
      throw err;
    }
  }

  async get(key: string, range?: ByteRange, into?: Buffer): Promise<Buffer> {
    this.checkKey(key, 'get');
    if (range && !(isCount(range.offset) && isCount(range.length))) {
      throw new CairnError('INTERNAL', `get ${key}: invalid range ${JSON.stringify(range)} on ${this.location}`);
    }
    if (range && range.length === 0) {
      // S3 has no empty range; make sure the object exists, as an empty read of a missing key must fail.
      if (!(await this.stat(key))) throw this.notFound(key);
      return Buffer.alloc(0);
    }
    return this.retrying(`get ${key}`, async () => {
      let res;
      try {
        res = await this.send('GET', `get ${key}`, () => this.client.send(new GetObjectCommand({
          Bucket: this.where.bucket,
          Key: this.where.prefix + key,
          Range: range ? `bytes=${range.offset}-${range.offset + range.length - 1}` : undefined,
        })));
      } catch (err) {
        // 416: the range starts at or past the end; the contract clips it to nothing.
        if (range && statusOf(err) === 416) return Buffer.alloc(0);
        throw err;
      }
      const length = res.ContentLength ?? 0;
      const out = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length);
      let filled = 0;
      try {
        for await (const piece of res.Body as Readable) {
          const b = piece as Buffer;
          if (filled + b.length > out.length) throw new Error(`more bytes than the announced ${length}`);
          b.copy(out, filled);
          filled += b.length;
        }
      } catch (err) {
        throw this.toError(err, `get ${key}`);
      }
      if (filled !== length) {
        throw new CairnError('STORE_UNAVAILABLE', `get ${key}: the connection to ${this.location} ended after ${filled} of ${length} bytes`, { retryable: true });
      }
      return out;
    });
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    this.checkKey(key, 'stat');
    try {
      const res = await this.retrying(`stat ${key}`, () =>
        this.send('HEAD', `stat ${key}`, () => this.client.send(new HeadObjectCommand({ Bucket: this.where.bucket, Key: this.where.prefix + key }))),
      );
      return { key, size: res.ContentLength ?? 0, modified: res.LastModified ?? new Date(0) };
    } catch (err) {
      if (isCairnError(err, 'NOT_FOUND')) return undefined;
      throw err;
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    let token: string | undefined;
    do {
      const page = await this.retrying(`list ${prefix || '(all)'}`, () =>
        this.send('LIST', `list ${prefix}`, () => this.client.send(new ListObjectsV2Command({
          Bucket: this.where.bucket,
          Prefix: this.where.prefix + prefix,
          ContinuationToken: token,
        }))),
      );
      for (const o of page.Contents ?? []) {
        if (!o.Key) continue;
        yield { key: o.Key.slice(this.where.prefix.length), size: o.Size ?? 0, modified: o.LastModified ?? new Date(0) };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  async delete(key: string): Promise<void> {
    this.checkKey(key, 'delete');
    const full = this.where.prefix + key;
    if (!(await this.isVersioned())) {
      await this.retrying(`delete ${key}`, () =>
        this.send('DELETE', `delete ${key}`, () => this.client.send(new DeleteObjectCommand({ Bucket: this.where.bucket, Key: full }))),
      );
      return;
    }
    // A plain DELETE on a versioned bucket only adds a delete marker and frees nothing: remove each version.
    const page = await this.retrying(`delete ${key}`, () =>
      this.send('LIST', `delete ${key}`, () => this.client.send(new ListObjectVersionsCommand({ Bucket: this.where.bucket, Prefix: full }))),
    );
    const versions = [...(page.Versions ?? []), ...(page.DeleteMarkers ?? [])].filter((v) => v.Key === full);
    for (const v of versions) {
      await this.retrying(`delete ${key}`, () =>
        this.send('DELETE', `delete ${key}`, () => this.client.send(new DeleteObjectCommand({ Bucket: this.where.bucket, Key: full, VersionId: v.VersionId }))),
      ).catch(async (err: unknown) => {
        if (isCairnError(err, 'PERMISSION_DENIED') && (await this.supportsRetention())) {
          throw new CairnError('IMMUTABLE', `delete ${key}: ${this.location} keeps it under Object Lock${await this.retentionNote(key)}; it can be deleted after that date`, { cause: err });
        }
        throw err;
      });
    }
  }

  async removeStaleTempFiles(olderThanMs: number, now: Date = new Date()): Promise<number> {
    let removed = 0;
    let keyMarker: string | undefined;
    let uploadMarker: string | undefined;
    do {
      const page = await this.retrying('list multipart uploads', () =>
        this.send('LIST', 'list multipart uploads', () => this.client.send(new ListMultipartUploadsCommand({
          Bucket: this.where.bucket,
          Prefix: this.where.prefix,
          KeyMarker: keyMarker,
          UploadIdMarker: uploadMarker,
        }))),
      );
      for (const u of page.Uploads ?? []) {
        if (!u.Key || !u.UploadId || !u.Initiated || now.getTime() - u.Initiated.getTime() < olderThanMs) continue;
        await this.abort(u.Key, u.UploadId);
        removed++;
      }
      keyMarker = page.IsTruncated ? page.NextKeyMarker : undefined;
      uploadMarker = page.IsTruncated ? page.NextUploadIdMarker : undefined;
    } while (keyMarker);
    return removed;
  }

  supportsRetention(): Promise<boolean> {
    this.objectLock ??= this.retrying('read the object lock configuration', () =>
      this.send('GET', 'read the object lock configuration', () => this.client.send(new GetObjectLockConfigurationCommand({ Bucket: this.where.bucket }))),
    ).then(
      (res) => res.ObjectLockConfiguration?.ObjectLockEnabled === 'Enabled',
      (err: unknown) => {
        if (isCairnError(err, 'NOT_FOUND') || isCairnError(err, 'INTERNAL')) return false;
        this.objectLock = undefined;
        throw err;
      },
    );
    return this.objectLock;
  }

  async extendRetention(key: string, until: Date): Promise<void> {
    this.checkKey(key, 'extend the retention of');
    await this.retrying(`extend retention of ${key}`, () =>
      this.send('PUT', `extend retention of ${key}`, () => this.client.send(new PutObjectRetentionCommand({
        Bucket: this.where.bucket,
        Key: this.where.prefix + key,
        Retention: { Mode: 'COMPLIANCE', RetainUntilDate: until },
      }))),
    );
  }

  /** The object's retention date as the server holds it, or undefined. */
  async retainedUntil(key: string): Promise<Date | undefined> {
    try {
      const res: GetObjectRetentionCommandOutput = await this.retrying(`read retention of ${key}`, () =>
        this.send('GET', `read retention of ${key}`, () => this.client.send(new GetObjectRetentionCommand({ Bucket: this.where.bucket, Key: this.where.prefix + key }))),
      );
      return res.Retention?.RetainUntilDate;
    } catch {
      return undefined;
    }
  }

  /**
   * Closes the connections and ends every retry wait at once: requests still waiting to be retried
   * fail instead of keeping the process alive after its command has ended.
   */
  destroy(): void {
    this.destroyed = true;
    for (const w of this.waits) {
      clearTimeout(w.timer);
      w.resolve();
    }
    this.waits.clear();
    this.client.destroy();
  }

  /**
   * One request made as this store makes its own: counted under `kind`, retried on transient errors,
   * SDK errors translated to CairnErrors. For requests the ObjectStore seam has no method for
   * (s3-upload.ts streams an object of unknown length with it).
   */
  request<T>(kind: Kind, what: string, send: (client: S3Client) => Promise<T>): Promise<T> {
    return this.retrying(what, () => this.send(kind, what, () => send(this.client)));
  }

  private async putMultipart(key: string, body: Body, size: number, options: PutOptions): Promise<void> {
    const full = this.where.prefix + key;
    // S3 refuses a completed upload over an existing key only where CompleteMultipartUpload honours
    // If-None-Match; ask first as well, so a server without it still does not replace objects in practice.
    if (options.ifAbsent && (await this.stat(key))) {
      throw new CairnError('ALREADY_EXISTS', `put ${key}: the object exists already in ${this.location}`);
    }
    const created = await this.retrying(`put ${key}`, () =>
      this.send('POST', `put ${key}`, () => this.client.send(new CreateMultipartUploadCommand({
        Bucket: this.where.bucket,
        Key: full,
        ...(options.retainUntil ? { ObjectLockMode: 'COMPLIANCE' as const, ObjectLockRetainUntilDate: options.retainUntil } : {}),
      }))),
    );
    const uploadId = created.UploadId!;
    try {
      const count = Math.ceil(size / this.partSize);
      const etags: string[] = new Array(count);
      // Two parts at a time: a pack already uploads beside other packs.
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < count) {
          const n = next++;
          const res = await this.retrying(`put ${key} part ${n + 1}/${count}`, () => {
            const data = slice(partsOf(body), n * this.partSize, Math.min(size, (n + 1) * this.partSize));
            return this.send('PUT', `put ${key}`, () => this.client.send(new UploadPartCommand({
              Bucket: this.where.bucket,
              Key: full,
              UploadId: uploadId,
              PartNumber: n + 1,
              Body: data,
              ContentLength: data.length,
              ...(options.retainUntil ? { ContentMD5: md5(data) } : {}),
            })));
          });
          etags[n] = res.ETag!;
        }
      };
      await Promise.all([worker(), worker()]);
      await this.retrying(`put ${key}`, () =>
        this.send('POST', `put ${key}`, () => this.client.send(new CompleteMultipartUploadCommand({
          Bucket: this.where.bucket,
          Key: full,
          UploadId: uploadId,
          MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) },
        }))),
      );
      // Some servers (radosgw 16) ignore the lock fields of CreateMultipartUpload: set the date again.
      if (options.retainUntil) await this.extendRetention(key, options.retainUntil);
    } catch (err) {
      await this.abort(full, uploadId).catch(() => undefined);
      throw err;
    }
  }

  private async abort(fullKey: string, uploadId: string): Promise<void> {
    await this.retrying(`abort upload of ${fullKey}`, () =>
      this.send('DELETE', `abort upload of ${fullKey}`, () => this.client.send(new AbortMultipartUploadCommand({ Bucket: this.where.bucket, Key: fullKey, UploadId: uploadId }))),
    );
  }

  /** True when the stored object has exactly the bytes of `body` (a put that landed before its reply was lost). */
  private async holds(key: string, body: Body): Promise<boolean> {
    const stored = await this.get(key).catch(() => undefined);
    return stored !== undefined && stored.equals(joined(body));
  }

  private isVersioned(): Promise<boolean> {
    this.versioned ??= this.retrying('read the bucket versioning', () =>
      this.send('GET', 'read the bucket versioning', () => this.client.send(new GetBucketVersioningCommand({ Bucket: this.where.bucket }))),
    ).then(
      (res) => res.Status === 'Enabled' || res.Status === 'Suspended',
      (err: unknown) => {
        this.versioned = undefined;
        throw err;
      },
    );
    return this.versioned;
  }

  private async retentionNote(key: string): Promise<string> {
    const until = await this.retainedUntil(key);
    return until ? ` until ${until.toISOString()}` : '';
  }

  private lockFields(retainUntil: Date | undefined, parts: Buffer[]) {
    if (!retainUntil) return {};
    // S3 requires an integrity header on uploads that carry an Object Lock retention.
    return { ObjectLockMode: 'COMPLIANCE' as const, ObjectLockRetainUntilDate: retainUntil, ContentMD5: md5(...parts) };
  }

  private retrying<T>(what: string, fn: () => Promise<T>): Promise<T> {
    return withRetry(fn, (err) => !this.destroyed && isCairnError(err) && err.retryable, this.retryPolicy, {
      onRetry: (err, _attempt, wait) => this.onRetry?.(what, err as CairnError, wait),
      sleep: (ms) =>
        new Promise<void>((resolve) => {
          const w = { timer: setTimeout(() => (this.waits.delete(w), resolve()), ms), resolve };
          this.waits.add(w);
        }),
    });
  }

  /** Makes one request (one attempt), counted under `kind`; SDK errors become CairnErrors. */
  private async send<T>(kind: Kind, what: string, request: () => Promise<T>): Promise<T> {
    if (this.destroyed) throw new CairnError('STORE_UNAVAILABLE', `${what} on ${this.location}: the store was closed`);
    this.requests[kind]++;
    try {
      return await request();
    } catch (err) {
      throw this.toError(err, what);
    }
  }

  /** Turns an SDK or network error into a CairnError that names the location and says what to do. */
  private toError(err: unknown, what: string): CairnError {
    if (err instanceof CairnError) return err;
    const e = err as { name?: string; code?: string; message?: string; Code?: string; $metadata?: { httpStatusCode?: number } };
    const name = e.Code ?? e.name ?? '';
    const status = statusOf(err);
    const at = this.location;
    const endpoint = this.where.endpoint ?? 'AWS S3';
    const cause = { cause: err };
    const sysCode = e.code ?? (err as { cause?: { code?: string } })?.cause?.code;
    if (name === 'NoSuchBucket') {
      return new CairnError('VAULT_NOT_FOUND', `${what}: bucket "${this.where.bucket}" does not exist at ${endpoint}; create it or check the URL ${at}`, cause);
    }
    if (name === 'NoSuchKey' || (status === 404 && (name === 'NotFound' || name === 'NoSuchVersion'))) return this.notFound(what.replace(/^\w+ /, ''), err);
    if (name === 'PreconditionFailed' || status === 412) {
      return new CairnError('ALREADY_EXISTS', `${what}: the object exists already in ${at}`, cause);
    }
    if (name === 'InvalidAccessKeyId' || name === 'SignatureDoesNotMatch' || name === 'InvalidToken' || name === 'ExpiredToken') {
      return new CairnError('PERMISSION_DENIED', `${what} on ${at}: ${endpoint} refused the credentials (${name}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the profile`, cause);
    }
    if (name === 'CredentialsProviderError' || /Could not load credentials/i.test(e.message ?? '')) {
      return new CairnError('PERMISSION_DENIED', `${what}: no AWS credentials found for ${at}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or add &profile=NAME to the URL`, cause);
    }
    if (name === 'AccessDenied' || status === 403) {
      return new CairnError('PERMISSION_DENIED', `${what} on ${at}: ${endpoint} denied access (${name || 403}); check the credentials' permissions on the bucket`, cause);
    }
    if (/Region is missing/i.test(e.message ?? '')) {
      return new CairnError('USAGE', `${what} on ${at}: no AWS region is set; set AWS_REGION, or add &region=R to the URL (an S3-compatible service: &endpoint=URL)`, cause);
    }
    if (name === 'QuotaExceeded') return new CairnError('NO_SPACE', `${what}: the quota of ${at} is used up; free space or raise the quota`, cause);
    if (status === 409 && name === 'ConditionalRequestConflict') {
      return new CairnError('STORE_UNAVAILABLE', `${what}: a concurrent write of the same key on ${at}`, { cause: err, retryable: true });
    }
    const transient =
      (status !== undefined && (status >= 500 || status === 408 || status === 429)) ||
      name === 'SlowDown' || name === 'RequestTimeout' || name === 'TimeoutError' || name === 'RequestTimeTooSkewed' ||
      ['ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'ECONNABORTED', 'EHOSTUNREACH', 'ENETUNREACH', 'ERR_STREAM_PREMATURE_CLOSE'].includes(sysCode ?? '') ||
      /socket hang up|aborted|premature close/i.test(e.message ?? '');
    if (transient) {
      const why = sysCode === 'ECONNREFUSED' || sysCode === 'ENOTFOUND' || sysCode === 'EAI_AGAIN'
        ? `cannot reach ${endpoint} (${sysCode}); check the endpoint and that the service is up`
        : `${endpoint} did not answer properly (${name || sysCode || status}${e.message && e.message !== name ? `: ${e.message}` : ''}); try again later`;
      return new CairnError('STORE_UNAVAILABLE', `${what} on ${at}: ${why}`, { cause: err, retryable: true });
    }
    return new CairnError('INTERNAL', `${what} on ${at} failed: ${name || 'error'}${e.message && e.message !== name ? `: ${e.message}` : ''}`, cause);
  }

  private notFound(key: string, cause?: unknown): CairnError {
    return new CairnError('NOT_FOUND', `object ${key} does not exist in ${this.location}`, cause === undefined ? undefined : { cause });
  }

  private checkKey(key: string, what: string): void {
    if (!isValidKey(key)) throw new CairnError('INTERNAL', `cannot ${what} key "${key}" on ${this.location}: not a valid object key`);
  }
}

function partsOf(body: Body): Buffer[] {
  const b = body();
  return Array.isArray(b) ? b : [b];
}

function joined(body: Body): Buffer {
  const b = body();
  return Array.isArray(b) ? (b.length === 1 ? b[0] : Buffer.concat(b)) : b;
}

/** Bytes [start, end) of the concatenation of `parts`, copied only when they span several parts. */
function slice(parts: Buffer[], start: number, end: number): Buffer {
  const out: Buffer[] = [];
  let pos = 0;
  for (const p of parts) {
    const a = Math.max(start, pos);
    const b = Math.min(end, pos + p.length);
    if (a < b) out.push(p.subarray(a - pos, b - pos));
    pos += p.length;
    if (pos >= end) break;
  }
  return out.length === 1 ? out[0] : Buffer.concat(out);
}

function md5(...parts: Buffer[]): string {
  const h = createHash('md5');
  for (const p of parts) h.update(p);
  return h.digest('base64');
}

/**
 * A put's body: small ones as one Buffer (the SDK signs its SHA-256), large ones (packs) as a stream
 * of their parts, which is neither joined into one more copy nor hashed for the signature (the SDK
 * sends UNSIGNED-PAYLOAD for streams). Every blob in a pack carries its own AEAD tag, and verify reads
 * them, so the payload hash would only repeat that check at the cost of a pass over every byte.
 */
function bodyOf(parts: Buffer[], size: number): Buffer | Readable {
  if (size <= STREAM_FROM) return parts.length === 1 ? parts[0] : Buffer.concat(parts, size);
  return Readable.from(parts.filter((p) => p.length > 0), { objectMode: false });
}

/** The HTTP status of an SDK error, also when it is the cause of a CairnError. */
function statusOf(err: unknown): number | undefined {
  const e = err instanceof CairnError ? err.cause : err;
  return (e as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;
}

function isCount(n: number): boolean {
  return Number.isSafeInteger(n) && n >= 0;
}
