import { extname } from 'node:path';
import { CairnError } from '../../shared/errors.js';
import { isValidKey } from '../../shared/store/object-store.js';
import { isS3Url, parseS3Url, type S3Location } from '../../shared/store/s3-url.js';
import { imageFormats, type ImageFormat } from './image-source.js';

/** Extensions that name an image format. */
export const imageExtensions: Readonly<Record<string, ImageFormat>> = { '.qcow2': 'qcow2', '.vmdk': 'vmdk', '.raw': 'raw', '.img': 'raw' };

/** Stands for the disk's index in a target, so that one --to can name every disk of a backup. */
export const DISK_PLACEHOLDER = '{disk}';

export type ExportTarget =
  /** An object: `bucket` is the location without a prefix, `key` may hold {disk}. */
  | { kind: 's3'; bucket: S3Location; key: string; format: ImageFormat }
  /** A local file in an image format other than raw (may hold {disk}). */
  | { kind: 'file'; path: string; format: ImageFormat }
  /** A plain path: restored as before (raw, sparse; a folder of disk-N.img for several disks). */
  | { kind: 'restore'; path: string };

/**
 * What `--to` (and `--format`) ask for:
 * - `s3://bucket/key.ext[?endpoint=…]`: an object; the format comes from the extension (.qcow2,
 *   .vmdk, .raw, .img) or --format, and any other extension is a USAGE error.
 * - a path ending in .qcow2 or .vmdk, or any path with --format qcow2|vmdk: an image file.
 * - any other path: today's restore (raw, sparse, or a block device), also with --format raw.
 */
export function parseExportTarget(to: string, format: string | undefined): ExportTarget {
  const forced = format === undefined ? undefined : checkFormat(format);
  if (isS3Url(to)) {
    let where: S3Location;
    try {
      where = parseS3Url(to);
    } catch (err) {
      throw err instanceof CairnError ? new CairnError('USAGE', err.message.replace(/^vault URL/, 'export target').replace('s3://bucket/prefix', 's3://bucket/key.qcow2'), { cause: err }) : err;
    }
    const key = where.prefix.replace(/\/$/, '');
    const display = `s3://${where.bucket}/${key}`;
    if (!key) throw new CairnError('USAGE', `export target ${display} names no object; give s3://bucket/key.qcow2 (or .vmdk, .raw, .img)`);
    if (!isValidKey(key.replaceAll(DISK_PLACEHOLDER, '0'))) {
      throw new CairnError('USAGE', `export target ${display}: the key may hold only letters, digits, '.', '_', '-' and '/' (and ${DISK_PLACEHOLDER})`);
    }
    const fmt = forced ?? imageExtensions[extname(key).toLowerCase()];
    if (!fmt) {
      throw new CairnError(
        'USAGE',
        `export target ${display} has no image extension; end the key in ${Object.keys(imageExtensions).join(', ')}, or give --format ${imageFormats.join('|')}`,
      );
    }
    const bucket: S3Location = { ...where, prefix: '', display: `s3://${where.bucket}/` };
    return { kind: 's3', bucket, key, format: fmt };
  }
  const fmt = forced ?? imageExtensions[extname(to).toLowerCase()];
  if (fmt === 'qcow2' || fmt === 'vmdk') return { kind: 'file', path: to, format: fmt };
  return { kind: 'restore', path: to };
}

function checkFormat(format: string): ImageFormat {
  if ((imageFormats as readonly string[]).includes(format)) return format as ImageFormat;
  throw new CairnError('USAGE', `restore: --format '${format}' is not an image format; give one of ${imageFormats.join(', ')}`);
}

/** The target for disk `index`: {disk} replaced by the index. */
export function forDisk(name: string, index: number): string {
  return name.replaceAll(DISK_PLACEHOLDER, String(index));
}
