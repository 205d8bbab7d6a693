import type { Socket } from 'node:net';
import { copyInto } from '../../../shared/vault/bytes.js';

/**
 * Exact-length reads from a stream socket for a protocol parsed by one reader at a time (the
 * handshake, then the reply loop). Bytes are copied straight into the caller's buffer, so a read
 * payload is copied once. When more than `highWaterMark` bytes wait unread the socket is paused.
 *
 * After the socket closes, the pending read and every later one reject with one Error: its message
 * is the socket error's ("read ECONNRESET"), or "the server closed the connection"; `cause` is the
 * socket error if there was one.
 */
export class SocketReader {
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: { need: number; resolve: () => void; reject: (err: Error) => void } | undefined;
  private failure: Error | undefined;

  constructor(
    private readonly socket: Socket,
    private readonly highWaterMark = 4 * 1024 * 1024,
  ) {
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
      if (this.buffered > this.highWaterMark) socket.pause();
      this.wake();
    });
    let socketError: Error | undefined;
    socket.on('error', (err) => {
      socketError = err;
    });
    socket.on('close', () => {
      this.failure ??= socketError
        ? new Error(socketError.message, { cause: socketError })
        : new Error('the server closed the connection');
      this.wake();
    });
  }

  /** The next `length` bytes (a view of received data when it lies in one chunk). */
  async read(length: number): Promise<Buffer> {
    await this.fill(length);
    const first = this.chunks[0];
    if (first !== undefined && first.length >= length) {
      const out = first.subarray(0, length);
      this.consume(length);
      return out;
    }
    const out = Buffer.allocUnsafe(length);
    this.copyOut(out, 0, length);
    return out;
  }

  /** Copies the next `length` bytes into `target` at `targetOffset`, in pieces as they arrive. */
  async readInto(target: Buffer, targetOffset: number, length: number): Promise<void> {
    let done = 0;
    while (done < length) {
      await this.fill(1);
      const n = Math.min(length - done, this.buffered);
      this.copyOut(target, targetOffset + done, n);
      done += n;
    }
  }

  /** Discards the next `length` bytes. */
  async skip(length: number): Promise<void> {
    let left = length;
    while (left > 0) {
      await this.fill(1);
      const n = Math.min(left, this.buffered);
      this.consume(n);
      left -= n;
    }
  }

  private fill(need: number): Promise<void> {
    if (this.buffered >= need) return Promise.resolve();
    if (this.failure) return Promise.reject(this.failure);
    if (this.waiter) return Promise.reject(new Error('SocketReader: two reads at once'));
    return new Promise((resolve, reject) => {
      this.waiter = { need, resolve, reject };
    });
  }

  private wake(): void {
    const w = this.waiter;
    if (!w) return;
    if (this.buffered >= w.need) {
      this.waiter = undefined;
      w.resolve();
    } else if (this.failure) {
      this.waiter = undefined;
      w.reject(this.failure);
    }
  }

  private copyOut(target: Buffer, targetOffset: number, length: number): void {
    let done = 0;
    while (done < length) {
      const chunk = this.chunks[0]!;
      const n = Math.min(chunk.length, length - done);
      copyInto(chunk.subarray(0, n), target, targetOffset + done); // target may be a batch slot (shared memory)
      done += n;
      this.consume(n);
    }
  }

  private consume(length: number): void {
    let left = length;
    while (left > 0) {
      const chunk = this.chunks[0]!;
      if (chunk.length <= left) {
        this.chunks.shift();
        left -= chunk.length;
      } else {
        this.chunks[0] = chunk.subarray(left);
        left = 0;
      }
    }
    this.buffered -= length;
    if (this.buffered <= this.highWaterMark / 2 && this.socket.isPaused()) this.socket.resume();
  }
}
