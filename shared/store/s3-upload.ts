import { Readable } from 'node:stream';

import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  UploadPartCommand,
} from '@aws-sdk/client-s3';

import { CairnError, isCairnError } from '../errors.js';
import type { S3Store } from './s3-store.js';

const MiB = 1024 * 1024;
/** S3 allows at most this many parts per upload. */
const MAX_PARTS = 10_000;

export interface S3UploadOptions {
  /** Bytes per part (default 16 MiB; S3's minimum, 5 MiB, is enforced). */
  partSize?: number;
  /** Parts uploading at once (default 4). */
  concurrency?: number;
  /**
   * The object's expected length, if known: the part size grows so that it fits in S3's 10,000
   * parts with room to spare (an upload of unknown length gets 16 MiB parts: up to 156 GiB).
   */
  expectedBytes?: number;
}

/**
 * A streaming multipart upload of one object whose length need not be known in advance: bytes are
 * written in order, cut into parts, and each part is uploaded (and retried on its own, as every
 * request of the S3Store is) while the next is filled.
 *
 * Contracts:
 * - Memory is bounded: at most `concurrency` parts in flight plus the one being filled.
 * - `write` waits when every upload slot is busy (back-pressure for the producer) and throws the
 *   first failed part's error once it is known.
 * - The object appears only when `complete` succeeds (S3 makes a completed upload visible at once,
 *   whole). After any failure the caller calls `abort`, which removes the upload and its parts, so
 *   neither an object nor a dangling multipart upload is left; `abort` is safe to call at any time,
 *   more than once, and also while parts are in flight (an interrupt).
 */
export class S3Upload {
  readonly partSize: number;
  private readonly concurrency: number;
  private readonly fullKey: string;
  private readonly what: string;
  private readonly etags: string[] = [];
  private readonly inFlight = new Set<Promise<void>>();
  private part: Buffer;
  private filled = 0;
  private parts = 0;
  private failure: unknown;
  private aborted = false;
  private completed = false;
  private uploaded = 0;

  private constructor(
    private readonly store: S3Store,
    readonly key: string,
    private readonly uploadId: string,
    opts: S3UploadOptions,
  ) {
    const minForSize = opts.expectedBytes ? Math.ceil(opts.expectedBytes / (MAX_PARTS * 0.9) / MiB) * MiB : 0;
    this.partSize = Math.max(5 * MiB, opts.partSize ?? 16 * MiB, minForSize);
    this.concurrency = Math.max(1, opts.concurrency ?? 4);
    this.fullKey = store.where.prefix + key;
    this.what = `upload of ${key} to s3://${store.where.bucket}/${store.where.prefix}`;
    this.part = Buffer.allocUnsafe(this.partSize);
  }

  /** Starts a multipart upload of `key` (relative to the store's prefix). */
  static async start(store: S3Store, key: string, opts: S3UploadOptions = {}): Promise<S3Upload> {
    const full = store.where.prefix + key;
    const created = await store.request('POST', `start upload of ${key}`, (client) =>
      client.send(new CreateMultipartUploadCommand({ Bucket: store.where.bucket, Key: full })),
    );
    if (!created.UploadId) throw new CairnError('STORE_UNAVAILABLE', `start upload of ${key} on ${store.location}: the server returned no upload id`);
    return new S3Upload(store, key, created.UploadId, opts);
  }

  /** Bytes whose parts the server has acknowledged. */
  get bytesUploaded(): number {
    return this.uploaded;
  }

  /** Appends `data`; the buffer may be reused by the caller as soon as this resolves. */
  async write(data: Buffer): Promise<void> {
    for (let at = 0; at < data.length; ) {
      this.check();
      const n = Math.min(data.length - at, this.partSize - this.filled);
      data.copy(this.part, this.filled, at, at + n);
      this.filled += n;
      at += n;
      if (this.filled === this.partSize) await this.flush();
    }
  }

  /** Uploads what is left and completes the upload: the object exists from now on. */
  async complete(): Promise<void> {
    this.check();
    if (this.filled > 0 || this.parts === 0) await this.flush();
    while (this.inFlight.size > 0) await Promise.race(this.inFlight);
    this.check();
    await this.store.request('POST', `complete ${this.what}`, (client) =>
      client.send(
        new CompleteMultipartUploadCommand({
          Bucket: this.store.where.bucket,
          Key: this.fullKey,
          UploadId: this.uploadId,
          MultipartUpload: { Parts: this.etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) },
        }),
      ),
    );
    this.completed = true;
  }

  /**
   * Abandons the upload: the server drops the parts and no object appears. Parts still uploading
   * fail; the abort is sent at once and again after they have settled, as S3 asks for uploads
   * with parts in flight. A no-op after `complete`.
   */
  async abort(): Promise<void> {
    if (this.completed) return;
    const first = !this.aborted;
    this.aborted = true;
    if (!first) return;
    await this.sendAbort();
    if (this.inFlight.size > 0) {
      await Promise.allSettled([...this.inFlight]);
      await this.sendAbort();
    }
  }

  private async sendAbort(): Promise<void> {
    try {
      await this.store.request('DELETE', `abort ${this.what}`, (client) =>
        client.send(new AbortMultipartUploadCommand({ Bucket: this.store.where.bucket, Key: this.fullKey, UploadId: this.uploadId })),
      );
    } catch (err) {
      // Gone already (a second abort): that is what was wanted.
      if (!isCairnError(err, 'NOT_FOUND') && !isCairnError(err, 'VAULT_NOT_FOUND')) throw err;
    }
  }

  private check(): void {
    if (this.failure !== undefined) throw this.failure;
    if (this.aborted) throw new CairnError('STORE_UNAVAILABLE', `${this.what} was aborted`);
  }

  /** Sends the filled part once a slot is free, and starts a new part buffer. */
  private async flush(): Promise<void> {
    while (this.inFlight.size >= this.concurrency) await Promise.race(this.inFlight);
    this.check();
    if (this.parts + 1 > MAX_PARTS) {
      throw new CairnError('USAGE', `${this.what}: the object needs more than ${MAX_PARTS} parts of ${this.partSize} bytes; give a larger part size`);
    }
    const number = ++this.parts;
    const body = this.part.subarray(0, this.filled);
    this.part = Buffer.allocUnsafe(this.partSize);
    this.filled = 0;
    const task = this.uploadPart(number, body).then(
      () => {
        this.inFlight.delete(task);
      },
      (err: unknown) => {
        this.inFlight.delete(task);
        this.failure ??= err;
      },
    );
    this.inFlight.add(task);
  }

  private async uploadPart(number: number, body: Buffer): Promise<void> {
    const res = await this.store.request('PUT', `${this.what}, part ${number}`, (client) => {
      // An aborted upload stops retrying its parts.
      if (this.aborted) return Promise.reject(new CairnError('STORE_UNAVAILABLE', `${this.what} was aborted`));
      return client.send(
        new UploadPartCommand({
          Bucket: this.store.where.bucket,
          Key: this.fullKey,
          UploadId: this.uploadId,
          PartNumber: number,
          // A stream, so the SDK sends UNSIGNED-PAYLOAD instead of hashing every part (as s3-store.ts
          // does for packs); a retry gets a new stream over the same bytes.
          Body: Readable.from([body], { objectMode: false }),
          ContentLength: body.length,
        }),
      );
    });
    if (!res.ETag) throw new CairnError('STORE_UNAVAILABLE', `${this.what}, part ${number}: the server returned no ETag`);
    this.etags[number - 1] = res.ETag;
    this.uploaded += body.length;
  }
}
