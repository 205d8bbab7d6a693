import type { Body, ByteRange, ObjectInfo, ObjectStore, PutOptions } from './object-store.js';

/**
 * A bandwidth budget: each transfer of n bytes books the next n/rate seconds of the link. A transfer
 * starts when the bookings before it have run out, so over any stretch longer than one object the bytes
 * moved stay within the rate, however many transfers run at once.
 */
export class RateLimiter {
  private nextFree = 0;

  constructor(
    readonly bytesPerSecond: number,
    private readonly now: () => number = () => performance.now(),
    private readonly sleep: (ms: number) => Promise<void> = (ms) => new Promise((r) => setTimeout(r, ms)),
  ) {}

  /** Waits for this transfer's turn and books its time. */
  async take(bytes: number): Promise<void> {
    const t = this.now();
    const start = Math.max(t, this.nextFree);
    this.nextFree = start + (bytes / this.bytesPerSecond) * 1000;
    if (start > t) await this.sleep(start - t);
  }
}

/**
 * Limits the bytes a store uploads (put bodies) and downloads (get results) per second, for
 * `--limit-upload` / `--limit-download`. Objects are the unit: one object goes at the link's speed and
 * the next one waits, so the average over a few objects holds to the limit. Metadata requests (stat,
 * list, delete) are not limited.
 */
export class ThrottledStore implements ObjectStore {
  readonly location: string;

  constructor(
    private readonly inner: ObjectStore,
    private readonly upload?: RateLimiter,
    private readonly download?: RateLimiter,
  ) {
    this.location = inner.location;
    if (inner.removeStaleTempFiles) this.removeStaleTempFiles = inner.removeStaleTempFiles.bind(inner);
    if (inner.supportsRetention) this.supportsRetention = inner.supportsRetention.bind(inner);
    if (inner.extendRetention) this.extendRetention = inner.extendRetention.bind(inner);
  }

  removeStaleTempFiles?: ObjectStore['removeStaleTempFiles'];
  supportsRetention?: ObjectStore['supportsRetention'];
  extendRetention?: ObjectStore['extendRetention'];

  get requests() {
    return this.inner.requests;
  }

  async put(key: string, body: Body, options?: PutOptions): Promise<void> {
    if (this.upload) {
      const b = body();
      await this.upload.take(Array.isArray(b) ? b.reduce((n, p) => n + p.length, 0) : b.length);
    }
    return this.inner.put(key, body, options);
  }

  async get(key: string, range?: ByteRange, into?: Buffer): Promise<Buffer> {
    // The size is known up front only for ranges; whole objects are booked once they arrived.
    if (this.download && range) await this.download.take(range.length);
    const data = await this.inner.get(key, range, into);
    if (this.download && !range) await this.download.take(data.length);
    return data;
  }

  stat(key: string): Promise<ObjectInfo | undefined> {
    return this.inner.stat(key);
  }

  list(prefix: string): AsyncIterable<ObjectInfo> {
    return this.inner.list(prefix);
  }

  delete(key: string): Promise<void> {
    return this.inner.delete(key);
  }
}
