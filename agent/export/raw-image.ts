import { allZero, zeroBytes, type ImageSource } from './image-source.js';

/** Data is read in runs of at most this many bytes. */
const READ_BYTES = 4 * 1024 * 1024;

/**
 * A raw image: the disk's bytes as they are, `size` bytes long. An object store has no holes, so
 * zero chunks are produced as zeros — but never read from the vault.
 */
export async function* rawImage(src: ImageSource): AsyncGenerator<Buffer> {
  for (let at = 0; at < src.size; ) {
    const end = Math.min(src.size, at + READ_BYTES);
    // Split the window into a run of zero chunks or a run of data chunks, whichever starts here.
    const zero = allZero(src, at, Math.min(end, (Math.floor(at / src.chunkSize) + 1) * src.chunkSize));
    let runEnd = Math.min(end, (Math.floor(at / src.chunkSize) + 1) * src.chunkSize);
    while (runEnd < end && allZero(src, runEnd, Math.min(end, runEnd + src.chunkSize)) === zero) {
      runEnd = Math.min(end, runEnd + src.chunkSize);
    }
    if (zero) yield* zeroBytes(runEnd - at);
    else yield await src.read(at, runEnd - at);
    at = runEnd;
  }
}

