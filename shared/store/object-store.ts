/**
 * The storage seam. A vault sees only this interface; concrete backends (local folder, S3) live
 * beside it and never import anything from the vault. Keys are '/'-separated relative paths made of
 * [A-Za-z0-9._-] segments (no leading '/', no '..', no empty segment).
 *
 * Contracts every backend keeps (checked by the conformance suite in conformance.ts):
 * - put is atomic: a reader sees either no object or the whole object, never a part.
 * - put with ifAbsent fails with ALREADY_EXISTS when the key exists, and never overwrites it.
 * - get of a missing key fails with NOT_FOUND (a CairnError), never returns empty data.
 * - get with a range returns exactly those bytes; a range past the end is clipped to the end.
 * - stat of a missing key resolves to undefined.
 * - list yields every key under the prefix exactly once, in no promised order, with size and mtime.
 * - delete of a missing key succeeds (idempotent).
 */

export interface PutOptions {
  /** Fail with ALREADY_EXISTS instead of replacing an existing object. */
  ifAbsent?: boolean;
  /** Ask the store to keep the object immutable until this time (object lock); ignored where unsupported. */
  retainUntil?: Date;
}

export interface ByteRange {
  /** First byte, 0-based. */
  offset: number;
  /** Number of bytes; the range is clipped at the end of the object. */
  length: number;
}

export interface ObjectInfo {
  key: string;
  size: number;
  /** Last modification as the store reports it. */
  modified: Date;
}

/**
 * A body is a factory so that a retrying wrapper can produce it again. Backends call it once per
 * attempt and must not keep the returned buffers after put resolves.
 */
export type Body = () => Buffer | Buffer[];

/**
 * Requests a store has made, by kind, as a cloud bills them: PUT (whole objects and multipart parts,
 * retention changes), POST (multipart start and completion), GET (object reads), HEAD, LIST, DELETE.
 * Retried attempts count: each one is a request the provider bills.
 */
export interface RequestCounts {
  PUT: number;
  POST: number;
  GET: number;
  HEAD: number;
  LIST: number;
  DELETE: number;
}

export function noRequests(): RequestCounts {
  return { PUT: 0, POST: 0, GET: 0, HEAD: 0, LIST: 0, DELETE: 0 };
}

export interface ObjectStore {
  /** A human-readable location for messages, e.g. "/srv/vault" or "s3://bucket/prefix". */
  readonly location: string;
  /** Requests made so far (a local folder counts its calls the same way). */
  readonly requests: RequestCounts;
  put(key: string, body: Body, options?: PutOptions): Promise<void>;
  /**
   * Reads an object or a range of it. With `into` (large enough for the result), the bytes are
   * placed there and a view of `into` is returned, so a reader can reuse its buffers; a store that
   * cannot read in place copies into it.
   */
  get(key: string, range?: ByteRange, into?: Buffer): Promise<Buffer>;
  stat(key: string): Promise<ObjectInfo | undefined>;
  list(prefix: string): AsyncIterable<ObjectInfo>;
  delete(key: string): Promise<void>;
  /**
   * Removes leftovers of writes that never completed (temp files, unfinished multipart uploads)
   * older than `olderThanMs`; returns how many. Optional: stores without such leftovers omit it.
   */
  removeStaleTempFiles?(olderThanMs: number, now?: Date): Promise<number>;
  /**
   * True when the store enforces retainUntil (an S3 bucket with Object Lock). Stores without object
   * lock omit it or return false.
   */
  supportsRetention?(): Promise<boolean>;
  /**
   * Moves an existing object's retention date forward to `until` (never backward). Only on stores
   * whose supportsRetention() is true.
   */
  extendRetention?(key: string, until: Date): Promise<void>;
}

const keyPattern = /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/;

/** True for a key every backend accepts (see the key rules at the top of this file). */
export function isValidKey(key: string): boolean {
  return keyPattern.test(key) && !key.split('/').some((s) => s === '.' || s === '..');
}
