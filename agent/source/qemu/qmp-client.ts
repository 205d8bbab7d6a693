import { createConnection, type Socket } from 'node:net';
import { StringDecoder } from 'node:string_decoder';
import { CairnError } from '../../../shared/errors.js';

/**
 * A small client for the QEMU Machine Protocol (docs/interop/qmp-spec.rst) over a Unix socket, as
 * qemu-storage-daemon serves it with `--chardev socket,id=m,path=PATH,server=on,wait=off --monitor
 * chardev=m`. `connect` reads the greeting and leaves capabilities negotiation with
 * `qmp_capabilities`; then `execute` sends one command at a time (later calls queue behind it) and
 * resolves with its `return` value.
 *
 * Contract:
 * - Every failure is a CairnError with code SOURCE_UNREADABLE naming the socket. A command QEMU
 *   refuses is a QmpError (also a CairnError) carrying the command and QEMU's error class and
 *   `desc`; the connection stays usable after it.
 * - A command without a reply within the timeout, or a dropped connection, fails that command and
 *   every later one: the client does not reconnect (the caller connects again).
 * - Asynchronous events are not replies; the last EVENT_HISTORY of them are kept in `events`.
 */

export interface QmpConnectOptions {
  /** Limit for connecting and for each command's reply (default 30 s). */
  timeoutMs?: number;
}

export interface QmpEvent {
  event: string;
  data: Record<string, unknown> | undefined;
  timestamp: { seconds: number; microseconds: number } | undefined;
}

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

/** A command QEMU answered with an error. */
export class QmpError extends CairnError {
  readonly command: string;
  /** QEMU's error class, e.g. 'GenericError', 'DeviceNotFound'. */
  readonly errorClass: string;
  /** QEMU's human-readable reason. */
  readonly desc: string;

  constructor(socketPath: string, command: string, errorClass: string, desc: string) {
    super('SOURCE_UNREADABLE', `QMP command ${command} on ${socketPath} failed: ${desc}`);
    this.name = 'QmpError';
    this.command = command;
    this.errorClass = errorClass;
    this.desc = desc;
  }
}

const DEFAULT_TIMEOUT_MS = 30_000;
const EVENT_HISTORY = 100;

interface Pending {
  id: number;
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: unknown) => void;
  timer: NodeJS.Timeout;
}

export class QmpClient {
  readonly socketPath: string;
  readonly greeting: QmpGreeting;
  /** The most recent asynchronous events, oldest first. */
  readonly events: QmpEvent[] = [];

  private readonly timeoutMs: number;
  private nextId = 1;
  /** Resolves when the previous command has been answered; commands go out one at a time. */
  private queue: Promise<unknown> = Promise.resolve();
  private pending: Pending | undefined;
  /** Set once the connection is unusable: the error later commands fail with. */
  private failure: CairnError | undefined;
  private readonly closed: Promise<void>;

  private constructor(
    private readonly socket: Socket,
    socketPath: string,
    greeting: QmpGreeting,
    timeoutMs: number,
    lines: LineReader,
  ) {
    this.socketPath = socketPath;
    this.greeting = greeting;
    this.timeoutMs = timeoutMs;
    this.closed = new Promise((resolve) => (socket.closed ? resolve() : socket.once('close', () => resolve())));
    lines.onLine = (line) => this.receive(line);
    lines.onEnd = (err) => this.fail(dropped(socketPath, this.pending?.command, err));
  }

  /** Connects, reads the greeting and negotiates capabilities (none are enabled). */
  static async connect(socketPath: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const socket = createConnection({ path: socketPath });
    const lines = new LineReader(socket);
    let timer: NodeJS.Timeout | undefined;
    try {
      const greeting = await new Promise<QmpGreeting>((resolve, reject) => {
        let connected = false;
        timer = setTimeout(() => reject(connected ? noGreeting(socketPath, timeoutMs) : connectTimeout(socketPath, timeoutMs)), timeoutMs);
        socket.once('connect', () => (connected = true));
        lines.onEnd = (err) => reject(connected ? dropped(socketPath, undefined, err) : cannotConnect(socketPath, err));
        lines.onLine = (line) => {
          const message = parse(line);
          const qmp = message?.QMP as QmpGreeting | undefined;
          if (qmp && typeof qmp === 'object') resolve(qmp);
          else reject(new CairnError('SOURCE_UNREADABLE', `${socketPath} is not a QMP socket: its first message was ${line.slice(0, 200)}`));
        };
      });
      const client = new QmpClient(socket, socketPath, greeting, timeoutMs, lines);
      await client.execute('qmp_capabilities');
      return client;
    } catch (err) {
      socket.destroy();
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Runs one command after those queued before it; resolves with its `return` value. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    const run = this.queue.then(() => this.send(command, args));
    this.queue = run.catch(() => undefined);
    return run as Promise<T>;
  }

  /** Hangs up. Pending and later commands fail; safe to call more than once. */
  async close(): Promise<void> {
    this.fail(new CairnError('SOURCE_UNREADABLE', `the QMP connection to ${this.socketPath} was closed by Cairn`));
    await this.closed;
  }

  private send(command: string, args: Record<string, unknown> | undefined): Promise<unknown> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      const timer = setTimeout(() => this.fail(commandTimeout(this.socketPath, command, this.timeoutMs)), this.timeoutMs);
      this.pending = { id, command, resolve, reject, timer };
      this.socket.write(JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id }) + '\n');
    });
  }

  private receive(line: string): void {
    const message = parse(line);
    if (!message) {
      this.fail(new CairnError('SOURCE_UNREADABLE', `QMP socket ${this.socketPath} sent something that is not JSON: ${line.slice(0, 200)}`));
      return;
    }
    if (typeof message.event === 'string') {
      this.events.push({
        event: message.event,
        data: message.data as Record<string, unknown> | undefined,
        timestamp: message.timestamp as QmpEvent['timestamp'],
      });
      if (this.events.length > EVENT_HISTORY) this.events.shift();
      return;
    }
    const request = this.pending;
    // Replies carry our id; anything else (a reply to a command that timed out) is not ours.
    if (!request || message.id !== request.id) return;
    this.pending = undefined;
    clearTimeout(request.timer);
    const error = message.error as { class?: string; desc?: string } | undefined;
    if (error) request.reject(new QmpError(this.socketPath, request.command, error.class ?? 'GenericError', error.desc ?? JSON.stringify(error)));
    else request.resolve(message.return);
  }

  private fail(err: CairnError): void {
    this.failure ??= err;
    const request = this.pending;
    this.pending = undefined;
    if (request) {
      clearTimeout(request.timer);
      request.reject(this.failure);
    }
    this.socket.destroy();
  }
}

/** Splits the stream into lines (QMP sends one JSON object per line) and reports its end once. */
class LineReader {
  onLine: (line: string) => void = () => undefined;
  onEnd: (err: Error | undefined) => void = () => undefined;
  private text = '';
  private readonly decoder = new StringDecoder('utf8');

  constructor(socket: Socket) {
    let socketError: Error | undefined;
    socket.on('data', (chunk: Buffer) => {
      this.text += this.decoder.write(chunk);
      for (let end = this.text.indexOf('\n'); end >= 0; end = this.text.indexOf('\n')) {
        const line = this.text.slice(0, end).trim();
        this.text = this.text.slice(end + 1);
        if (line !== '') this.onLine(line);
      }
    });
    socket.on('error', (err) => (socketError = err));
    socket.on('close', () => this.onEnd(socketError));
  }
}

function parse(line: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(line);
    return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

const START_HINT =
  'is qemu-storage-daemon running with --chardev socket,id=ID,path=PATH,server=on,wait=off and --monitor chardev=ID?';

function cannotConnect(socketPath: string, err: Error | undefined): CairnError {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  let why: string;
  switch (code) {
    case 'ENOENT':
      why = 'no such socket';
      break;
    case 'ECONNREFUSED':
      why = 'nothing listens there (connection refused)';
      break;
    case 'EACCES':
    case 'EPERM':
      why = 'permission denied; run Cairn as a user that may use the socket';
      break;
    default:
      why = err?.message ?? 'the connection closed at once';
  }
  return new CairnError('SOURCE_UNREADABLE', `cannot connect to QMP socket ${socketPath}: ${why}; ${START_HINT}`, { cause: err });
}

function connectTimeout(socketPath: string, ms: number): CairnError {
  return new CairnError('SOURCE_UNREADABLE', `cannot connect to QMP socket ${socketPath}: no answer within ${ms / 1000} s; ${START_HINT}`, {
    retryable: true,
  });
}

function noGreeting(socketPath: string, ms: number): CairnError {
  return new CairnError(
    'SOURCE_UNREADABLE',
    `QMP socket ${socketPath} accepted the connection but sent no greeting within ${ms / 1000} s; is another client connected? (a QMP monitor serves one client at a time)`,
    { retryable: true },
  );
}

function commandTimeout(socketPath: string, command: string, ms: number): CairnError {
  return new CairnError('SOURCE_UNREADABLE', `QMP command ${command} on ${socketPath} got no reply within ${ms / 1000} s; the connection was closed`, {
    retryable: true,
  });
}

function dropped(socketPath: string, command: string | undefined, err: Error | undefined): CairnError {
  const during = command === undefined ? '' : ` while waiting for the reply to ${command}`;
  const why = err ? `: ${err.message}` : '';
  return new CairnError('SOURCE_UNREADABLE', `the QMP connection to ${socketPath} was lost${during}${why}; did qemu-storage-daemon exit?`, {
    cause: err,
    retryable: true,
  });
}
