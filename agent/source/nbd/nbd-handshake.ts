import type { Socket } from 'node:net';
import { CairnError } from '../../../shared/errors.js';
import {
  CLISERV_MAGIC,
  IHAVEOPT,
  NBDMAGIC,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_FLAG_ERROR,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  OPTION_REPLY_MAGIC,
  optionReplyErrorNames,
  protocolViolation,
} from './nbd-protocol.js';
import { formatNbdUrl, type NbdTarget } from './nbd-url.js';
import type { SocketReader } from './socket-reader.js';

/** Block size constraints as the server advertised them with NBD_INFO_BLOCK_SIZE. */
export interface BlockSizeConstraints {
  /** Offsets and lengths of requests are multiples of this (a power of 2, at most 64 KiB). */
  minimum: number;
  /** Requests aligned to and sized in multiples of this avoid read-modify-write on the server. */
  preferred: number;
  /** Largest read the server accepts; 0xffffffff means no limit of its own. */
  maximum: number;
}

export interface NegotiatedExport {
  size: number;
  transmissionFlags: number;
  /** Undefined when the server advertised none (then the protocol's defaults hold). */
  blockSize: BlockSizeConstraints | undefined;
  structuredReplies: boolean;
  /** Context name -> the id the server gave it for this connection. */
  metaContexts: Map<string, number>;
}

/** Option replies larger than this are not something a sane server sends for our options. */
const MAX_OPTION_REPLY = 64 * 1024;

/**
 * The handshake of the fixed newstyle negotiation, from the server's greeting to the start of
 * transmission: structured replies, the requested metadata contexts, then NBD_OPT_GO asking for
 * the export's size, flags and block size constraints. On a refusal the client ends the session
 * with NBD_OPT_ABORT, as the protocol asks; on a protocol violation the caller hangs up.
 *
 * A server without fixed newstyle, or one that does not know NBD_OPT_GO, gets the old
 * NBD_OPT_EXPORT_NAME instead (no error message and no block size information then).
 */
export async function negotiate(
  socket: Socket,
  reader: SocketReader,
  target: NbdTarget,
  exportName: string,
  metaContexts: readonly string[],
  askStructuredReplies = true,
): Promise<NegotiatedExport> {
  const url = formatNbdUrl(target, exportName);
  const greeting = await reader.read(16);
  if (greeting.readBigUInt64BE(0) !== NBDMAGIC) {
    throw new CairnError(
      'SOURCE_UNREADABLE',
      `${url} does not speak NBD (its greeting does not start with NBDMAGIC); check the socket path or port`,
    );
  }
  const style = greeting.readBigUInt64BE(8);
  if (style === CLISERV_MAGIC) {
    throw new CairnError(
      'SOURCE_UNREADABLE',
      `NBD server ${url} uses the oldstyle handshake, which has no export names, errors or block status and which Cairn does not speak; serve the disk with qemu-nbd, qemu-storage-daemon or nbd-server 3.10 or later`,
    );
  }
  if (style !== IHAVEOPT) throw protocolViolation(url, `unknown handshake magic 0x${style.toString(16)} after NBDMAGIC`);

  const handshakeFlags = (await reader.read(2)).readUInt16BE(0);
  const fixed = (handshakeFlags & NBD_FLAG_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (handshakeFlags & NBD_FLAG_NO_ZEROES) !== 0;
  const clientFlags = Buffer.alloc(4);
  clientFlags.writeUInt32BE((fixed ? NBD_FLAG_C_FIXED_NEWSTYLE : 0) | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0));
  socket.write(clientFlags);

  const options = new OptionHaggling(socket, reader, target, exportName);
  if (!fixed) {
    if (metaContexts.length > 0) {
      throw options.refuse(
        `NBD server ${url} only knows the original newstyle handshake, so it cannot report ${metaContexts.join(', ')}; serve the disk with qemu-nbd or qemu-storage-daemon`,
      );
    }
    return { ...(await options.exportName(noZeroes)), blockSize: undefined, structuredReplies: false, metaContexts: new Map() };
  }

  const structuredReplies = askStructuredReplies && (await options.structuredReply());
  let contexts = new Map<string, number>();
  if (metaContexts.length > 0) {
    if (!structuredReplies) {
      throw options.refuse(
        `NBD server ${url} does not offer structured replies, which block status (${metaContexts.join(', ')}) needs; serve the disk with qemu-nbd 3.0 or later`,
      );
    }
    contexts = await options.setMetaContexts(metaContexts);
  }
  const go = await options.go();
  const opened = go ?? { ...(await options.exportName(noZeroes)), blockSize: undefined };
  return { ...opened, structuredReplies, metaContexts: contexts };
}

interface OptionReply {
  type: number;
  data: Buffer;
}

class OptionHaggling {
  private readonly url: string;
  /** The URL of the server's default export, which `nbdinfo --list` takes. */
  private readonly listUrl: string;

  constructor(
    private readonly socket: Socket,
    private readonly reader: SocketReader,
    target: NbdTarget,
    private readonly name: string,
  ) {
    this.url = formatNbdUrl(target, name);
    this.listUrl = formatNbdUrl(target, '');
  }

  /** True when the server agreed; false when it does not know structured replies. */
  async structuredReply(): Promise<boolean> {
    this.send(NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0));
    const reply = await this.reply(NBD_OPT_STRUCTURED_REPLY);
    if (reply.type === NBD_REP_ACK) return true;
    if (reply.type === NBD_REP_ERR_TLS_REQD || reply.type === NBD_REP_ERR_SHUTDOWN) throw this.refusal('NBD_OPT_STRUCTURED_REPLY', reply);
    if ((reply.type & NBD_REP_FLAG_ERROR) !== 0) return false;
    throw protocolViolation(this.url, `reply type ${reply.type} to NBD_OPT_STRUCTURED_REPLY`);
  }

  /** Selects the contexts; every one must be granted, or the session ends with an error naming it. */
  async setMetaContexts(wanted: readonly string[]): Promise<Map<string, number>> {
    const queries = wanted.map((q) => Buffer.from(q, 'utf8'));
    const name = Buffer.from(this.name, 'utf8');
    const data = Buffer.alloc(4 + name.length + 4 + queries.reduce((n, q) => n + 4 + q.length, 0));
    let at = data.writeUInt32BE(name.length, 0);
    at += name.copy(data, at);
    at = data.writeUInt32BE(queries.length, at);
    for (const q of queries) {
      at = data.writeUInt32BE(q.length, at);
      at += q.copy(data, at);
    }
    this.send(NBD_OPT_SET_META_CONTEXT, data);

    const granted = new Map<string, number>();
    for (;;) {
      const reply = await this.reply(NBD_OPT_SET_META_CONTEXT);
      if (reply.type === NBD_REP_ACK) break;
      if (reply.type === NBD_REP_META_CONTEXT) {
        if (reply.data.length < 5) throw protocolViolation(this.url, 'an NBD_REP_META_CONTEXT reply without a context name');
        granted.set(reply.data.toString('utf8', 4), reply.data.readUInt32BE(0));
        continue;
      }
      throw this.refusal('NBD_OPT_SET_META_CONTEXT', reply);
    }
    const missing = wanted.find((w) => !granted.has(w));
    if (missing !== undefined) {
      const hint = missing.startsWith('qemu:dirty-bitmap:')
        ? 'is the bitmap name right, and does the server export it? `qemu-img info` lists the bitmaps of an image; qemu-nbd exports one with --bitmap=NAME'
        : 'the server does not offer it';
      throw this.refuse(`export '${this.name}' on ${this.url} has no meta context ${missing} (${hint})`);
    }
    return granted;
  }

  /**
   * NBD_OPT_GO with NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE; on success transmission starts.
   * Undefined when the server does not know NBD_OPT_GO (the caller falls back to EXPORT_NAME).
   */
  async go(): Promise<Omit<NegotiatedExport, 'structuredReplies' | 'metaContexts'> | undefined> {
    const name = Buffer.from(this.name, 'utf8');
    const data = Buffer.alloc(4 + name.length + 2 + 2 * 2);
    let at = data.writeUInt32BE(name.length, 0);
    at += name.copy(data, at);
    at = data.writeUInt16BE(2, at);
    at = data.writeUInt16BE(NBD_INFO_EXPORT, at);
    data.writeUInt16BE(NBD_INFO_BLOCK_SIZE, at);
    this.send(NBD_OPT_GO, data);

    let exportInfo: { size: number; transmissionFlags: number } | undefined;
    let blockSize: BlockSizeConstraints | undefined;
    for (;;) {
      const reply = await this.reply(NBD_OPT_GO);
      if (reply.type === NBD_REP_INFO) {
        if (reply.data.length < 2) throw protocolViolation(this.url, 'an NBD_REP_INFO reply without an information type');
        const info = reply.data.readUInt16BE(0);
        if (info === NBD_INFO_EXPORT) {
          if (reply.data.length !== 12) throw protocolViolation(this.url, `NBD_INFO_EXPORT of ${reply.data.length} bytes, not 12`);
          exportInfo = { size: this.exportSize(reply.data.readBigUInt64BE(2)), transmissionFlags: reply.data.readUInt16BE(10) };
        } else if (info === NBD_INFO_BLOCK_SIZE) {
          if (reply.data.length !== 14) throw protocolViolation(this.url, `NBD_INFO_BLOCK_SIZE of ${reply.data.length} bytes, not 14`);
          blockSize = this.blockSize(reply.data.readUInt32BE(2), reply.data.readUInt32BE(6), reply.data.readUInt32BE(10));
        }
        // Other information types are ignored, as the protocol asks.
        continue;
      }
      if (reply.type === NBD_REP_ACK) {
        if (!exportInfo) throw protocolViolation(this.url, 'NBD_OPT_GO succeeded without NBD_INFO_EXPORT');
        return { ...exportInfo, blockSize };
      }
      if (reply.type === NBD_REP_ERR_UNSUP) return undefined;
      throw this.refusal('NBD_OPT_GO', reply);
    }
  }

  /** NBD_OPT_EXPORT_NAME: no reply on refusal, the server just hangs up. */
  async exportName(noZeroes: boolean): Promise<{ size: number; transmissionFlags: number }> {
    this.send(NBD_OPT_EXPORT_NAME, Buffer.from(this.name, 'utf8'));
    let reply: Buffer;
    try {
      reply = await this.reader.read(10 + (noZeroes ? 0 : 124));
    } catch (err) {
      throw new CairnError(
        'SOURCE_UNREADABLE',
        `NBD server ${this.url} hung up when asked for export '${this.name}' (this old server gives no reason: the export may not exist); list the exports with \`nbdinfo --list '${this.listUrl}'\``,
        { cause: err },
      );
    }
    return { size: this.exportSize(reply.readBigUInt64BE(0)), transmissionFlags: reply.readUInt16BE(8) };
  }

  /** Ends the negotiation softly (NBD_OPT_ABORT, then hang up) and returns `message` as an error. */
  refuse(message: string, cause?: unknown): CairnError {
    const abort = Buffer.alloc(16);
    abort.writeBigUInt64BE(IHAVEOPT, 0);
    abort.writeUInt32BE(NBD_OPT_ABORT, 8);
    this.socket.end(abort, () => this.socket.destroy());
    return new CairnError('SOURCE_UNREADABLE', message, { cause });
  }

  private refusal(option: string, reply: OptionReply): CairnError {
    const said = reply.data.length > 0 ? ` (server says: ${reply.data.toString('utf8')})` : '';
    switch (reply.type) {
      case NBD_REP_ERR_UNKNOWN:
        return this.refuse(
          `NBD server ${this.url} has no export '${this.name}'${said}; list the exports with \`nbdinfo --list '${this.listUrl}'\` and fix the export name in the URL`,
        );
      case NBD_REP_ERR_TLS_REQD:
        return this.refuse(
          `NBD server ${this.url} requires TLS, which Cairn's NBD client does not speak yet${said}; serve the disk without TLS on a local socket`,
        );
      case NBD_REP_ERR_SHUTDOWN:
        return this.refuse(`NBD server ${this.url} is shutting down${said}; run the backup again when it serves the disk again`);
      default: {
        const what = optionReplyErrorNames[reply.type] ?? `reply type 0x${reply.type.toString(16)}`;
        if ((reply.type & NBD_REP_FLAG_ERROR) === 0) return protocolViolation(this.url, `unexpected ${what} to ${option}`);
        return this.refuse(`NBD server ${this.url} refused ${option} for export '${this.name}' with ${what}${said}`);
      }
    }
  }

  private send(option: number, data: Buffer): void {
    const header = Buffer.alloc(16);
    header.writeBigUInt64BE(IHAVEOPT, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(data.length, 12);
    this.socket.write(data.length > 0 ? Buffer.concat([header, data]) : header);
  }

  private async reply(option: number): Promise<OptionReply> {
    const header = await this.reader.read(20);
    if (header.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw protocolViolation(this.url, 'an option reply without the reply magic');
    const repliedTo = header.readUInt32BE(8);
    if (repliedTo !== option) throw protocolViolation(this.url, `a reply to option ${repliedTo} while option ${option} was asked`);
    const type = header.readUInt32BE(12);
    const length = header.readUInt32BE(16);
    if (length > MAX_OPTION_REPLY) throw protocolViolation(this.url, `an option reply of ${length} bytes`);
    return { type, data: length > 0 ? await this.reader.read(length) : Buffer.alloc(0) };
  }

  private exportSize(size: bigint): number {
    if (size > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new CairnError('SOURCE_UNREADABLE', `export '${this.name}' on ${this.url} is ${size} bytes, more than Cairn can address (8 PiB)`);
    }
    return Number(size);
  }

  private blockSize(minimum: number, preferred: number, maximum: number): BlockSizeConstraints {
    const powerOf2 = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;
    if (!powerOf2(minimum) || minimum > 65536 || !powerOf2(preferred) || maximum < minimum || (maximum !== 0xffffffff && maximum % minimum !== 0)) {
      throw protocolViolation(this.url, `impossible block sizes (minimum ${minimum}, preferred ${preferred}, maximum ${maximum})`);
    }
    return { minimum, preferred, maximum };
  }
}
