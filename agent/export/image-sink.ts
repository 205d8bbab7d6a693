import { randomBytes } from 'node:crypto';
import { open, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { CairnError, fromSystemError } from '../../shared/errors.js';
import type { S3Store } from '../../shared/store/s3-store.js';
import { S3Upload } from '../../shared/store/s3-upload.js';

/**
 * Where an image's bytes go, in order. Nothing is visible under the target's name until `complete`
 * resolves; after a failure the caller calls `abort`, which removes everything written so far.
 */
export interface ImageSink {
  /** `s3://bucket/key` or the file's absolute path. */
  readonly target: string;
  write(data: Buffer): Promise<void>;
  complete(): Promise<void>;
  abort(): Promise<void>;
  /** Bytes the target has acknowledged (uploaded parts, or written to the file). */
  readonly bytesWritten: number;
}

/** An object in a bucket, written by a streaming multipart upload (no local copy). */
export class S3ImageSink implements ImageSink {
  private constructor(
    readonly target: string,
    private readonly upload: S3Upload,
  ) {}

  /**
   * Starts the upload of `key` (a key of the bucket; `store` has no prefix). An existing object is
   * replaced only with `force`: it is looked for (HEAD) before anything is written.
   */
  static async open(store: S3Store, key: string, opts: { force?: boolean; expectedBytes?: number; partSize?: number }): Promise<S3ImageSink> {
    const target = `s3://${store.where.bucket}/${key}`;
    const endpoint = store.where.endpoint ?? 'AWS S3';
    try {
      if (!opts.force && (await store.stat(key))) {
        throw new CairnError('ALREADY_EXISTS', `export target ${target} exists already; choose another key or add --force to replace it`);
      }
      const upload = await S3Upload.start(store, key, { expectedBytes: opts.expectedBytes, partSize: opts.partSize });
      return new S3ImageSink(target, upload);
    } catch (err) {
      // A missing bucket is the target not found, not a missing vault.
      if (err instanceof CairnError && err.code === 'VAULT_NOT_FOUND') {
        throw new CairnError('NOT_FOUND', `export target ${target}: bucket "${store.where.bucket}" does not exist at ${endpoint}; create it or check --to`, { cause: err });
      }
      throw err;
    }
  }

  get bytesWritten(): number {
    return this.upload.bytesUploaded;
  }

  write(data: Buffer): Promise<void> {
    return this.upload.write(data);
  }

  complete(): Promise<void> {
    return this.upload.complete();
  }

  abort(): Promise<void> {
    return this.upload.abort();
  }
}

/**
 * A local file, written as `.<name>.cairn-partial-<random>` beside the target and renamed over it
 * at the end (as restore-disk.ts does), so an interrupted export never leaves a half-written image
 * under the target's name. An existing target is replaced only with `force`.
 */
export class FileImageSink implements ImageSink {
  private position = 0;
  private closed = false;

  private constructor(
    readonly target: string,
    private readonly partial: string,
    private readonly fh: FileHandle,
  ) {}

  static async open(path: string, opts: { force?: boolean }): Promise<FileImageSink> {
    const target = resolve(path);
    let existing;
    try {
      existing = await stat(target);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw targetError(err, target);
    }
    if (existing?.isDirectory()) {
      throw new CairnError('TARGET_UNWRITABLE', `export target ${target} is a directory; give a file path such as ${join(target, 'disk-0.qcow2')}`);
    }
    if (existing && !existing.isFile()) {
      throw new CairnError('TARGET_UNWRITABLE', `export target ${target} is not a regular file; images are written to files (restore to a device with a plain --to path)`);
    }
    if (existing && !opts.force) {
      throw new CairnError('ALREADY_EXISTS', `export target ${target} exists already; choose another --to or add --force to replace it`);
    }
    const partial = join(dirname(target), `.${basename(target)}.cairn-partial-${randomBytes(4).toString('hex')}`);
    try {
      return new FileImageSink(target, partial, await open(partial, 'wx'));
    } catch (err) {
      throw targetError(err, dirname(target));
    }
  }

  get bytesWritten(): number {
    return this.position;
  }

  async write(data: Buffer): Promise<void> {
    try {
      for (let done = 0; done < data.length; ) {
        const { bytesWritten } = await this.fh.write(data, done, data.length - done, this.position);
        done += bytesWritten;
        this.position += bytesWritten;
      }
    } catch (err) {
      throw targetError(err, this.target);
    }
  }

  async complete(): Promise<void> {
    try {
      await this.fh.close();
      this.closed = true;
      await rename(this.partial, this.target);
    } catch (err) {
      await unlink(this.partial).catch(() => undefined);
      throw targetError(err, this.target);
    }
  }

  async abort(): Promise<void> {
    if (!this.closed) await this.fh.close().catch(() => undefined);
    this.closed = true;
    await unlink(this.partial).catch(() => undefined);
  }
}

function targetError(err: unknown, where: string): CairnError {
  const e = fromSystemError(err, 'cannot write the export target', where);
  return e.code === 'INTERNAL' ? new CairnError('TARGET_UNWRITABLE', e.message, { cause: err }) : e;
}
