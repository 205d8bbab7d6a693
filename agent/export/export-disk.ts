import { CairnError } from '../../shared/errors.js';
import { onInterrupt } from '../../shared/interrupt.js';
import type { BackupDisk } from '../../shared/vault/backup-disk.js';
import type { ImageFormat, ImageSource } from './image-source.js';
import type { ImageSink } from './image-sink.js';
import { qcow2Image, qcow2ImageSize } from './qcow2-image.js';
import { rawImage } from './raw-image.js';
import { vmdkImage } from './vmdk-image.js';

export interface ExportResult {
  format: ImageFormat;
  target: string;
  /** The disk's size (the image's virtual size). */
  size: number;
  /** Bytes of the disk read from the backup (data chunks only: zero chunks are never read). */
  bytesRead: number;
  /** Bytes of the image written to the target (uploaded, for an object). */
  bytesWritten: number;
  durationMs: number;
}

/**
 * The largest image a format can make of `src`: the part size of an upload is chosen from it.
 * A streamOptimized VMDK of incompressible data is a little larger than the disk.
 */
export function imageSizeBound(format: ImageFormat, src: ImageSource): number {
  if (format === 'qcow2') return qcow2ImageSize(src);
  if (format === 'raw') return src.size;
  return Math.ceil(src.size * 1.01) + 16 * 1024 * 1024;
}

export function imageStream(format: ImageFormat, src: ImageSource, name: string): AsyncGenerator<Buffer> {
  switch (format) {
    case 'raw':
      return rawImage(src);
    case 'qcow2':
      return qcow2Image(src);
    case 'vmdk':
      return vmdkImage(src, { name });
  }
}

/** An ImageSource over a disk of a backup, counting the bytes it reads. */
export function backupImageSource(disk: BackupDisk, onRead: (bytes: number) => void): ImageSource {
  return {
    size: disk.size,
    chunkSize: disk.chunkSize,
    isZero: (p) => disk.isZeroAt(p * disk.chunkSize),
    async read(offset, length) {
      const data = await disk.read(offset, length);
      onRead(length);
      return data;
    },
  };
}

/**
 * Streams one disk of a backup as an image in `format` into `sink`, in one pass: chunks are read in
 * disk order (with read-ahead), turned into image bytes and written while the next are fetched; no
 * temporary copy is made. Either the sink is completed (the whole image is visible at once) or it is
 * aborted (nothing is left): on an error, and on Ctrl-C / SIGTERM through the interrupt handlers.
 */
export async function exportDisk(
  disk: BackupDisk,
  format: ImageFormat,
  sink: ImageSink,
  opts: { name?: string; onProgress?: (bytesRead: number) => void } = {},
): Promise<ExportResult> {
  const t0 = performance.now();
  let bytesRead = 0;
  const src = backupImageSource(disk, (n) => {
    bytesRead += n;
    opts.onProgress?.(n);
  });
  const forget = onInterrupt(() => sink.abort());
  try {
    for await (const piece of imageStream(format, src, opts.name ?? 'disk.vmdk')) await sink.write(piece);
    await sink.complete();
  } catch (err) {
    await sink.abort().catch(() => undefined);
    throw err instanceof Error ? err : new CairnError('INTERNAL', String(err));
  } finally {
    forget();
  }
  return {
    format,
    target: sink.target,
    size: disk.size,
    bytesRead,
    bytesWritten: sink.bytesWritten,
    durationMs: Math.round(performance.now() - t0),
  };
}
