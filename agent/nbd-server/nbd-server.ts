import { createServer, type Server, type Socket } from 'node:net';
import { CairnError } from '../../shared/errors.js';
import { SocketReader } from '../source/nbd/socket-reader.js';
import {
  BASE_ALLOCATION,
  IHAVEOPT,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  NBD_STRUCTURED_REPLY_MAGIC,
  NBDMAGIC,
  OPTION_REPLY_MAGIC,
  REQUEST_HEADER_SIZE,
} from '../source/nbd/nbd-protocol.js';
import type { NbdTarget } from '../source/nbd/nbd-url.js';
import type { BlockExport, Segment } from './block-export.js';

/** Largest READ, WRITE, CACHE or WRITE_ZEROES length (advertised as the maximum block size). */
export const MAX_REQUEST = 32 * 1024 * 1024;
/** Largest READ sent as one chunk when the client asks not to fragment (NBD_CMD_FLAG_DF). */
export const MAX_UNFRAGMENTED = 1024 * 1024;
const PREFERRED_BLOCK = 4096;
/** Option data larger than this is a denial of service: the connection is dropped. */
const MAX_OPTION = 64 * 1024;
/** Requests of one connection served at once; the next header is read when one finishes. */
const MAX_IN_FLIGHT = 16;
/** Bytes of replies queued on a socket before the connection stops reading requests. */
const MAX_QUEUED = 64 * 1024 * 1024;
/** Block status describes at most this much per request. */
const MAX_STATUS = 1024 * 1024 * 1024;
/** The one metadata context id handed out. */
const ALLOCATION_CONTEXT = 1;

export interface NbdServerOptions {
  /** One line per event worth telling an operator (connections, errors). */
  log?: (line: string) => void;
}

/**
 * An NBD server (NetworkBlockDevice/nbd doc/proto.md), fixed newstyle only, no TLS: options
 * EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY, LIST_META_CONTEXT and SET_META_CONTEXT
 * (`base:allocation`); commands READ, WRITE, DISC, FLUSH, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS.
 *
 * Contracts: any number of connections, each served independently (a client that breaks the
 * protocol or vanishes only loses its own connection); requests of a connection are served
 * concurrently and answered in any order; a read is answered only once all its data is checked,
 * so an error is always an error reply, never wrong data. `close` stops listening, answers requests
 * in flight, then closes every connection and every export. The server may listen before its
 * exports are set (so a taken address fails before slow work): connections made meanwhile wait.
 */
export class NbdServer {
  private readonly exports = new Map<string, BlockExport>();
  private readonly connections = new Set<Connection>();
  private readonly servers: Server[] = [];
  private closing = false;
  /** Sockets accepted before setExports, served once it is called. */
  private waiting: Socket[] | undefined = [];
  readonly log: (line: string) => void;
  private defaultExport = '';

  constructor(opts: NbdServerOptions = {}) {
    this.log = opts.log ?? (() => undefined);
  }

  /** Sets what is served, once; `defaultExport` is the export of the empty name "". */
  setExports(exports: BlockExport[], defaultExport: string): void {
    if (this.waiting === undefined) throw new CairnError('INTERNAL', 'the exports of an NBD server are set once');
    for (const e of exports) this.exports.set(e.name, e);
    if (!this.exports.has(defaultExport)) throw new CairnError('INTERNAL', `no export named ${defaultExport}`);
    this.defaultExport = defaultExport;
    const waiting = this.waiting;
    this.waiting = undefined;
    for (const socket of waiting) this.accept(socket);
  }

  get exportList(): BlockExport[] {
    return [...this.exports.values()];
  }

  /** The export a client names ("" is the default export), if there is one. */
  find(name: string): BlockExport | undefined {
    return this.exports.get(name === '' ? this.defaultExport : name);
  }

  get isClosing(): boolean {
    return this.closing;
  }

  /** Starts listening; resolves once the socket is bound (rejects with the system error otherwise). */
  listen(target: NbdTarget): Promise<Server> {
    const server = createServer({ noDelay: true }, (socket) => this.accept(socket));
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      const ready = () => {
        server.off('error', reject);
        server.on('error', (err) => this.log(`listener error: ${err.message}`));
        this.servers.push(server);
        resolve(server);
      };
      if ('unix' in target) server.listen(target.unix, ready);
      else server.listen(target.port, target.host, ready);
    });
  }

  async close(graceMs = 2000): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    await Promise.all(this.servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    for (const socket of this.waiting ?? []) socket.destroy();
    await Promise.all([...this.connections].map((c) => c.shutdown(graceMs)));
    for (const e of this.exports.values()) await e.close();
  }

  /** Connections open now. */
  get connectionCount(): number {
    return this.connections.size;
  }

  private accept(socket: Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    if (this.waiting !== undefined) {
      this.waiting.push(socket);
      socket.on('error', () => undefined);
      return;
    }
    const conn = new Connection(this, socket);
    this.connections.add(conn);
    void conn.run().finally(() => this.connections.delete(conn));
  }
}

/** A request as read from the wire. */
interface Request {
  flags: number;
  type: number;
  handle: Buffer;
  offset: number;
  length: number;
  /** WRITE payload. */
  data?: Buffer;
}

class ProtocolError extends Error {}

class Connection {
  private readonly reader: SocketReader;
  private readonly peer: string;
  private structured = false;
  private noZeroes = false;
  /** Export name (canonical) and whether base:allocation was selected for it. */
  private meta: { exportName: string; selected: boolean } | undefined;
  private metaSelected = false;
  private exp: BlockExport | undefined;
  private readonly inFlight = new Set<Promise<void>>();
  private stopping = false;

  constructor(
    private readonly server: NbdServer,
    private readonly socket: Socket,
  ) {
    this.reader = new SocketReader(socket);
    this.peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'a local client';
    socket.on('error', () => undefined); // reported through the reader; EPIPE on a vanished client is normal
  }

  async run(): Promise<void> {
    try {
      if (!(await this.handshake())) return;
      this.server.log(`${this.peer} opened export ${this.exp!.name}${this.structured ? '' : ' (simple replies)'}`);
      await this.transmit();
    } catch (err) {
      if (err instanceof ProtocolError) this.server.log(`${this.peer}: ${err.message}; connection closed`);
      else if (!this.socket.destroyed && !this.stopping) this.server.log(`${this.peer}: connection failed: ${(err as Error).message}`);
    } finally {
      await Promise.all(this.inFlight);
      await this.hangUp();
      if (this.exp) this.server.log(`${this.peer} closed export ${this.exp.name}`);
    }
  }

  /** Answers what is in flight (up to graceMs), then closes. */
  async shutdown(graceMs: number): Promise<void> {
    this.stopping = true;
    const timer = new Promise((r) => setTimeout(r, graceMs).unref());
    await Promise.race([Promise.all(this.inFlight), timer]);
    await this.hangUp();
  }

  /** Sends what is queued (the replies, an ABORT's ack), then closes; at most 1 s for a client that does not read. */
  private async hangUp(): Promise<void> {
    if (this.socket.destroyed) return;
    const closed = new Promise((r) => this.socket.once('close', r));
    this.socket.end();
    await Promise.race([closed, new Promise((r) => setTimeout(r, 1000).unref())]);
    this.socket.destroy();
  }

  // ---- handshake ---------------------------------------------------------------------------

  /** Option haggling; true when transmission starts. */
  private async handshake(): Promise<boolean> {
    const hello = Buffer.alloc(18);
    hello.writeBigUInt64BE(NBDMAGIC, 0);
    hello.writeBigUInt64BE(IHAVEOPT, 8);
    hello.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
    this.socket.write(hello);
    const clientFlags = (await this.reader.read(4)).readUInt32BE(0);
    if (clientFlags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) throw new ProtocolError(`unknown client flags 0x${clientFlags.toString(16)}`);
    this.noZeroes = (clientFlags & NBD_FLAG_C_NO_ZEROES) !== 0;
    for (;;) {
      const head = await this.reader.read(16);
      if (head.readBigUInt64BE(0) !== IHAVEOPT) throw new ProtocolError('an option did not start with IHAVEOPT');
      const option = head.readUInt32BE(8);
      const length = head.readUInt32BE(12);
      if (length > MAX_OPTION) throw new ProtocolError(`option ${option} carries ${length} bytes`);
      const data = Buffer.from(await this.reader.read(length));
      if (this.server.isClosing && option !== NBD_OPT_ABORT) {
        this.optionReply(option, NBD_REP_ERR_SHUTDOWN, Buffer.from('the server is shutting down'));
        continue;
      }
      switch (option) {
        case NBD_OPT_EXPORT_NAME: {
          const exp = this.server.find(data.toString('utf8'));
          // No error can be sent for EXPORT_NAME: an unknown export ends the session.
          if (!exp) throw new ProtocolError(`asked for unknown export '${data.toString('utf8')}'`);
          this.exp = exp;
          this.metaSelected = this.meta !== undefined && this.meta.selected && this.meta.exportName === exp.name;
          const reply = Buffer.alloc(this.noZeroes ? 10 : 134);
          reply.writeBigUInt64BE(BigInt(exp.size), 0);
          reply.writeUInt16BE(this.transmissionFlags(exp), 8);
          this.socket.write(reply);
          return true;
        }
        case NBD_OPT_ABORT:
          this.optionReply(option, NBD_REP_ACK);
          this.socket.end();
          return false;
        case NBD_OPT_LIST:
          if (length !== 0) {
            this.optionReply(option, NBD_REP_ERR_INVALID, Buffer.from('NBD_OPT_LIST takes no data'));
            break;
          }
          for (const e of this.server.exportList) {
            const name = Buffer.from(e.name);
            const entry = Buffer.alloc(4);
            entry.writeUInt32BE(name.length);
            this.optionReply(option, NBD_REP_SERVER, Buffer.concat([entry, name, Buffer.from(e.description)]));
          }
          this.optionReply(option, NBD_REP_ACK);
          break;
        case NBD_OPT_STARTTLS:
          this.optionReply(option, NBD_REP_ERR_UNSUP, Buffer.from('TLS is not supported; use a Unix socket or a trusted network'));
          break;
        case NBD_OPT_INFO:
        case NBD_OPT_GO:
          if (this.info(option, data)) return true;
          break;
        case NBD_OPT_STRUCTURED_REPLY:
          if (length !== 0) this.optionReply(option, NBD_REP_ERR_INVALID, Buffer.from('NBD_OPT_STRUCTURED_REPLY takes no data'));
          else {
            this.structured = true;
            this.optionReply(option, NBD_REP_ACK);
          }
          break;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
          this.metaContext(option, data);
          break;
        default:
          this.optionReply(option, NBD_REP_ERR_UNSUP, Buffer.from(`option ${option} is not supported`));
      }
    }
  }

  /** NBD_OPT_INFO / NBD_OPT_GO; true when GO succeeded. */
  private info(option: number, data: Buffer): boolean {
    if (data.length < 6) return this.invalid(option, 'the request is too short');
    const nameLength = data.readUInt32BE(0);
    if (data.length < 4 + nameLength + 2) return this.invalid(option, 'the export name runs past the request');
    const name = data.subarray(4, 4 + nameLength).toString('utf8');
    const count = data.readUInt16BE(4 + nameLength);
    if (data.length !== 4 + nameLength + 2 + 2 * count) return this.invalid(option, 'the list of information requests has the wrong length');
    const wanted = new Set<number>();
    for (let i = 0; i < count; i++) wanted.add(data.readUInt16BE(4 + nameLength + 2 + 2 * i));
    const exp = this.server.find(name);
    if (!exp) {
      this.optionReply(option, NBD_REP_ERR_UNKNOWN, Buffer.from(`no export '${name}'; exports: ${this.server.exportList.map((e) => e.name).join(', ')}`));
      return false;
    }
    const info = Buffer.alloc(12);
    info.writeUInt16BE(NBD_INFO_EXPORT, 0);
    info.writeBigUInt64BE(BigInt(exp.size), 2);
    info.writeUInt16BE(this.transmissionFlags(exp), 10);
    this.optionReply(option, NBD_REP_INFO, info);
    const sizes = Buffer.alloc(14);
    sizes.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
    sizes.writeUInt32BE(1, 2);
    sizes.writeUInt32BE(PREFERRED_BLOCK, 6);
    sizes.writeUInt32BE(MAX_REQUEST, 10);
    this.optionReply(option, NBD_REP_INFO, sizes);
    if (wanted.has(NBD_INFO_NAME)) this.optionReply(option, NBD_REP_INFO, infoString(NBD_INFO_NAME, exp.name));
    if (wanted.has(NBD_INFO_DESCRIPTION)) this.optionReply(option, NBD_REP_INFO, infoString(NBD_INFO_DESCRIPTION, exp.description));
    this.optionReply(option, NBD_REP_ACK);
    if (option !== NBD_OPT_GO) return false;
    this.exp = exp;
    this.metaSelected = this.meta !== undefined && this.meta.selected && this.meta.exportName === exp.name;
    return true;
  }

  private metaContext(option: number, data: Buffer): void {
    if (option === NBD_OPT_SET_META_CONTEXT) this.meta = undefined; // replaced even when the request fails
    if (!this.structured) {
      this.invalid(option, 'negotiate NBD_OPT_STRUCTURED_REPLY first');
      return;
    }
    let at = 0;
    const u32 = (): number | undefined => {
      if (at + 4 > data.length) return undefined;
      at += 4;
      return data.readUInt32BE(at - 4);
    };
    const str = (n: number): string | undefined => {
      if (at + n > data.length) return undefined;
      at += n;
      return data.subarray(at - n, at).toString('utf8');
    };
    const nameLength = u32();
    const name = nameLength === undefined ? undefined : str(nameLength);
    const count = u32();
    if (name === undefined || count === undefined) {
      this.invalid(option, 'the request is truncated');
      return;
    }
    const queries: string[] = [];
    for (let i = 0; i < count; i++) {
      const n = u32();
      const q = n === undefined ? undefined : str(n);
      if (q === undefined) {
        this.invalid(option, 'a query runs past the request');
        return;
      }
      queries.push(q);
    }
    if (at !== data.length) {
      this.invalid(option, 'the request has trailing bytes');
      return;
    }
    const exp = this.server.find(name);
    if (!exp) {
      this.optionReply(option, NBD_REP_ERR_UNKNOWN, Buffer.from(`no export '${name}'`));
      return;
    }
    const list = option === NBD_OPT_LIST_META_CONTEXT;
    // base:allocation is the only context; "base:" lists it (a wildcard) but selects nothing.
    const matches = list
      ? queries.length === 0 || queries.some((q) => q === 'base:' || q === BASE_ALLOCATION)
      : queries.some((q) => q === BASE_ALLOCATION);
    if (matches) {
      const reply = Buffer.alloc(4 + BASE_ALLOCATION.length);
      reply.writeUInt32BE(list ? 0 : ALLOCATION_CONTEXT, 0);
      reply.write(BASE_ALLOCATION, 4, 'utf8');
      this.optionReply(option, NBD_REP_META_CONTEXT, reply);
    }
    if (!list) this.meta = { exportName: exp.name, selected: matches };
    this.optionReply(option, NBD_REP_ACK);
  }

  private invalid(option: number, why: string): false {
    this.optionReply(option, NBD_REP_ERR_INVALID, Buffer.from(why));
    return false;
  }

  private optionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): void {
    const head = Buffer.alloc(20);
    head.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
    head.writeUInt32BE(option, 8);
    head.writeUInt32BE(type >>> 0, 12);
    head.writeUInt32BE(data.length, 16);
    this.socket.write(data.length ? Buffer.concat([head, data]) : head);
  }

  private transmissionFlags(exp: BlockExport): number {
    let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_CACHE | NBD_FLAG_CAN_MULTI_CONN;
    if (this.structured) flags |= NBD_FLAG_SEND_DF;
    if (exp.writable) flags |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES;
    else flags |= NBD_FLAG_READ_ONLY;
    return flags;
  }

  // ---- transmission ------------------------------------------------------------------------

  private async transmit(): Promise<void> {
    for (;;) {
      while (this.inFlight.size >= MAX_IN_FLIGHT) await Promise.race(this.inFlight);
      while (this.socket.writableLength > MAX_QUEUED && !this.socket.destroyed) {
        await new Promise((r) => this.socket.once('drain', r).once('close', r));
      }
      if (this.stopping) return;
      const head = await this.reader.read(REQUEST_HEADER_SIZE);
      if (head.readUInt32BE(0) !== NBD_REQUEST_MAGIC) throw new ProtocolError('a request did not start with NBD_REQUEST_MAGIC');
      const req: Request = {
        flags: head.readUInt16BE(4),
        type: head.readUInt16BE(6),
        handle: Buffer.from(head.subarray(8, 16)),
        offset: safeOffset(head.readBigUInt64BE(16)),
        length: head.readUInt32BE(24),
      };
      if (req.type === NBD_CMD_WRITE) {
        // The payload must be read (or the connection dropped) whatever the answer will be.
        if (req.length > MAX_REQUEST) throw new ProtocolError(`a write of ${req.length} bytes is larger than the ${MAX_REQUEST}-byte maximum`);
        req.data = Buffer.allocUnsafe(req.length);
        await this.reader.readInto(req.data, 0, req.length);
      }
      if (req.type === NBD_CMD_DISC) return; // run() answers what is in flight, then closes
      const task = this.serve(req).catch((err) => {
        this.server.log(`${this.peer}: request failed: ${(err as Error).message}`);
      });
      const tracked = task.finally(() => this.inFlight.delete(tracked));
      this.inFlight.add(tracked);
    }
  }

  private async serve(req: Request): Promise<void> {
    const exp = this.exp!;
    const end = req.offset + req.length;
    const inRange = end <= exp.size;
    if (this.stopping) return this.error(req, NBD_ESHUTDOWN, 'the server is shutting down');
    switch (req.type) {
      case NBD_CMD_READ: {
        if (req.flags & ~(NBD_CMD_FLAG_DF | NBD_CMD_FLAG_FUA)) return this.error(req, NBD_EINVAL, 'unknown flags for NBD_CMD_READ');
        if (req.length > MAX_REQUEST) return this.error(req, NBD_EINVAL, `reads are limited to ${MAX_REQUEST} bytes`);
        if (!inRange) return this.error(req, NBD_EINVAL, `the read ends at ${end}, past the end of the export (${exp.size} bytes)`);
        const df = (req.flags & NBD_CMD_FLAG_DF) !== 0;
        if (df && req.length > MAX_UNFRAGMENTED) return this.error(req, NBD_EOVERFLOW, `unfragmented reads are limited to ${MAX_UNFRAGMENTED} bytes`);
        let segments: Segment[];
        try {
          segments = req.length === 0 ? [] : await exp.read(req.offset, req.length);
        } catch (err) {
          return this.failed(req, err);
        }
        return this.sendRead(req, segments, df);
      }
      case NBD_CMD_WRITE:
      case NBD_CMD_WRITE_ZEROES:
      case NBD_CMD_TRIM: {
        const allowed =
          req.type === NBD_CMD_WRITE_ZEROES ? NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE : NBD_CMD_FLAG_FUA;
        if (req.type === NBD_CMD_WRITE_ZEROES && req.flags & NBD_CMD_FLAG_FAST_ZERO) return this.error(req, NBD_EINVAL, 'fast zero is not offered');
        if (req.flags & ~allowed) return this.error(req, NBD_EINVAL, 'unknown command flags');
        if (!exp.writable) return this.error(req, NBD_EPERM, `export ${exp.name} is read-only (serve it with --overlay FILE to allow writes)`);
        if (req.type === NBD_CMD_WRITE_ZEROES && req.length > MAX_REQUEST) return this.error(req, NBD_EINVAL, `write-zeroes is limited to ${MAX_REQUEST} bytes`);
        if (!inRange) return this.error(req, req.type === NBD_CMD_TRIM ? NBD_EINVAL : NBD_ENOSPC, `the request ends at ${end}, past the end of the export (${exp.size} bytes)`);
        const fua = (req.flags & NBD_CMD_FLAG_FUA) !== 0;
        try {
          if (req.length > 0) {
            if (req.type === NBD_CMD_WRITE) await exp.write(req.offset, req.data!, fua);
            else if (req.type === NBD_CMD_WRITE_ZEROES) await exp.writeZeroes(req.offset, req.length, fua);
            else await exp.trim(req.offset, req.length, fua);
          }
        } catch (err) {
          return this.failed(req, err);
        }
        return this.ok(req);
      }
      case NBD_CMD_FLUSH:
        try {
          await exp.flush();
        } catch (err) {
          return this.failed(req, err);
        }
        return this.ok(req);
      case NBD_CMD_CACHE:
        if (req.flags & ~NBD_CMD_FLAG_FUA) return this.error(req, NBD_EINVAL, 'unknown flags for NBD_CMD_CACHE');
        if (req.length > MAX_REQUEST) return this.error(req, NBD_EINVAL, `cache requests are limited to ${MAX_REQUEST} bytes`);
        if (!inRange) return this.error(req, NBD_EINVAL, `the request ends at ${end}, past the end of the export (${exp.size} bytes)`);
        if (req.length > 0) exp.cache(req.offset, req.length);
        return this.ok(req);
      case NBD_CMD_BLOCK_STATUS: {
        if (!this.structured || !this.metaSelected) return this.error(req, NBD_EINVAL, 'select base:allocation with NBD_OPT_SET_META_CONTEXT first');
        if (req.flags & ~(NBD_CMD_FLAG_REQ_ONE | NBD_CMD_FLAG_FUA)) return this.error(req, NBD_EINVAL, 'unknown flags for NBD_CMD_BLOCK_STATUS');
        if (req.length === 0 || !inRange) return this.error(req, NBD_EINVAL, `block status of ${req.length} bytes at ${req.offset} is outside the export (${exp.size} bytes)`);
        // The spec lets a reply describe less than asked; clients ask again from where it stopped.
        let runs = exp.allocation(req.offset, Math.min(req.length, MAX_STATUS));
        if (req.flags & NBD_CMD_FLAG_REQ_ONE) runs = runs.slice(0, 1);
        const payload = Buffer.alloc(4 + 8 * runs.length);
        payload.writeUInt32BE(ALLOCATION_CONTEXT, 0);
        runs.forEach((r, i) => {
          payload.writeUInt32BE(r.length, 4 + 8 * i);
          payload.writeUInt32BE(r.zero ? NBD_STATE_HOLE | NBD_STATE_ZERO : 0, 8 + 8 * i);
        });
        this.chunk(req, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, [payload]);
        return;
      }
      default:
        return this.error(req, NBD_EINVAL, `unknown command ${req.type}`);
    }
  }

  private sendRead(req: Request, segments: Segment[], df: boolean): void {
    if (!this.structured) {
      const head = simpleReply(req.handle, 0);
      this.write([head, ...segments.map((s) => s.data ?? Buffer.alloc(s.length))]);
      return;
    }
    if (segments.length === 0) {
      this.chunk(req, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, []);
      return;
    }
    if (df) {
      const offset = Buffer.alloc(8);
      offset.writeBigUInt64BE(BigInt(req.offset));
      this.chunk(req, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, [offset, ...segments.map((s) => s.data ?? Buffer.alloc(s.length))]);
      return;
    }
    segments.forEach((s, i) => {
      const flags = i === segments.length - 1 ? NBD_REPLY_FLAG_DONE : 0;
      if (s.data) {
        const offset = Buffer.alloc(8);
        offset.writeBigUInt64BE(BigInt(s.offset));
        this.chunk(req, flags, NBD_REPLY_TYPE_OFFSET_DATA, [offset, s.data]);
      } else {
        const hole = Buffer.alloc(12);
        hole.writeBigUInt64BE(BigInt(s.offset), 0);
        hole.writeUInt32BE(s.length, 8);
        this.chunk(req, flags, NBD_REPLY_TYPE_OFFSET_HOLE, [hole]);
      }
    });
  }

  private ok(req: Request): void {
    this.write([simpleReply(req.handle, 0)]);
  }

  private failed(req: Request, err: unknown): void {
    const message = (err as Error).message ?? String(err);
    this.server.log(`${this.peer}: ${commandName(req.type)} of ${req.length} bytes at ${req.offset} failed: ${message}`);
    this.error(req, NBD_EIO, message);
  }

  /** An error reply: a structured ERROR chunk with the message when negotiated, else a simple reply. */
  private error(req: Request, code: number, message: string): void {
    if (!this.structured) {
      this.write([simpleReply(req.handle, code)]);
      return;
    }
    const text = Buffer.from(message.slice(0, 1000));
    const payload = Buffer.alloc(6);
    payload.writeUInt32BE(code, 0);
    payload.writeUInt16BE(text.length, 4);
    this.chunk(req, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, [payload, text]);
  }

  private chunk(req: Request, flags: number, type: number, payload: Buffer[]): void {
    const head = Buffer.alloc(20);
    head.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
    head.writeUInt16BE(flags, 4);
    head.writeUInt16BE(type, 6);
    req.handle.copy(head, 8);
    head.writeUInt32BE(
      payload.reduce((s, p) => s + p.length, 0),
      16,
    );
    this.write([head, ...payload]);
  }

  /** Writes one message's buffers back to back (nothing else can come between them). */
  private write(buffers: Buffer[]): void {
    if (this.socket.destroyed || !this.socket.writable) return;
    for (const b of buffers) this.socket.write(b);
  }
}

function simpleReply(handle: Buffer, error: number): Buffer {
  const head = Buffer.alloc(16);
  head.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  head.writeUInt32BE(error, 4);
  handle.copy(head, 8);
  return head;
}

function infoString(type: number, text: string): Buffer {
  const s = Buffer.from(text);
  const b = Buffer.alloc(2 + s.length);
  b.writeUInt16BE(type, 0);
  s.copy(b, 2);
  return b;
}

/** Offsets past 2^53 cannot be exact numbers; they are past any export anyway. */
function safeOffset(v: bigint): number {
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
}

function commandName(type: number): string {
  return (
    { [NBD_CMD_READ]: 'read', [NBD_CMD_WRITE]: 'write', [NBD_CMD_TRIM]: 'trim', [NBD_CMD_WRITE_ZEROES]: 'write-zeroes', [NBD_CMD_FLUSH]: 'flush' }[type] ??
    `command ${type}`
  );
}
