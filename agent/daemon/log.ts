/**
 * The daemon's log: JSON lines in `<dir>/agent.log` for machines, short readable lines on the
 * console for people (and journald).
 *
 * Contracts:
 * - One JSON object per line: `timestamp` (ISO 8601, UTC), `level`, `message`, then the fields. A
 *   field named like one of those three is written with a trailing underscore (`level_`).
 * - The file rotates by size: before a line would take `agent.log` past `maxBytes` it becomes
 *   `agent1.log`, the older ones move up by one (`agent1.log` → `agent2.log`, winston's `tailable`
 *   naming), and at most `maxFiles` files exist in all; `agent.log` is always the newest. A file
 *   exceeds `maxBytes` only if one line does.
 * - Each line is written to the file synchronously, whole, as it is logged: a crash loses nothing
 *   already logged. (winston's own File transport buffers: in a burst of lines logged before it has
 *   opened its file it lost every line and never finished, and a burst after opening did not rotate;
 *   so the file is a RotatingFile behind winston's Stream transport instead.) A file that cannot be
 *   written (disk full, folder gone) costs those lines and one message on stderr, never the daemon.
 * - Console lines read `2026-11-25T10:00:00Z info message key=value`. Under systemd (JOURNAL_STREAM
 *   or INVOCATION_ID set) the timestamp is left out, since journald stamps lines itself, and when
 *   the console is the journal (JOURNAL_STREAM) each line starts with its syslog priority (`<6>`,
 *   sd-daemon(3)), which journald strips and files as the priority, so `journalctl -p err` works.
 * - Fields whose name contains passphrase, password, secret, token or key as a word (`apiKey`,
 *   `secret_access_key`, `sessionToken`) are written as '[redacted]', at any depth. Messages are
 *   not inspected: never put a secret into one.
 * - `close()` resolves once every line logged before it is in the file.
 */
import { closeSync, fstatSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';

import winston from 'winston';

import { type Clock, systemClock } from '../../shared/clock.js';
import { CairnError } from '../../shared/errors.js';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
export type LogFields = Record<string, unknown>;

export interface Logger {
  error(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  debug(message: string, fields?: LogFields): void;
  /** Flushes and closes the outputs; later calls do nothing. */
  close(): Promise<void>;
}

export interface LoggerOptions {
  /** Folder of `agent.log` (created if missing); no file log without it. */
  dir?: string;
  /** Lowest level written: error, warn, info (default) or debug. */
  level?: string;
  /** Also write readable lines to the console (`consoleStream`); default true. */
  console?: boolean;
  /** Size at which `agent.log` rotates; default 10 MiB. */
  maxBytes?: number;
  /** Files kept in all, the current one included; default 5. */
  maxFiles?: number;
  /** Where console lines go; default process.stderr. */
  consoleStream?: NodeJS.WritableStream;
  /** Environment to detect systemd in; default process.env. */
  env?: NodeJS.ProcessEnv;
  clock?: Clock;
}

const levels: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };
/** syslog priorities for the sd-daemon line prefix. */
const syslogPriority: Record<LogLevel, number> = { error: 3, warn: 4, info: 6, debug: 7 };

const secretWords = new Set(['passphrase', 'password', 'passwd', 'secret', 'token', 'key', 'apikey', 'credentials']);
const reserved = new Set(['timestamp', 'level', 'message']);

/** `secretAccessKey` → secret, access, key; `api_key` → api, key. */
function isSecretName(name: string): boolean {
  const words = name
    .replace(/([a-z0-9])([A-Z])/g, '$1 $2')
    .toLowerCase()
    .split(/[^a-z0-9]+/);
  return words.some((w) => secretWords.has(w)) || secretWords.has(name.toLowerCase().replace(/[^a-z0-9]/g, ''));
}

/** A copy of `value` fit for a log: secrets redacted, errors as their message, cycles cut. */
export function redact(value: unknown, seen: WeakSet<object> = new WeakSet()): unknown {
  if (value instanceof Error) return value.message;
  if (typeof value === 'bigint') return value.toString();
  if (value === null || typeof value !== 'object') return value;
  if (value instanceof Date) return value.toISOString();
  if (seen.has(value)) return '[circular]';
  seen.add(value);
  if (Array.isArray(value)) return value.map((v) => redact(v, seen));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) out[k] = isSecretName(k) ? '[redacted]' : redact(v, seen);
  return out;
}

function consoleValue(v: unknown): string {
  const s = typeof v === 'string' ? v : JSON.stringify(v) ?? String(v);
  return s === '' || /[\s"=\\]/.test(s) ? JSON.stringify(s) : s;
}

interface Entry {
  timestamp: string;
  level: LogLevel;
  message: string;
  fields: Record<string, unknown>;
}

const entryKey = Symbol('cairn.entry');

function jsonLine(e: Entry): string {
  const line: Record<string, unknown> = { timestamp: e.timestamp, level: e.level, message: e.message };
  for (const [k, v] of Object.entries(e.fields)) line[reserved.has(k) ? `${k}_` : k] = v;
  return JSON.stringify(line);
}

function consoleLine(e: Entry, underSystemd: boolean, toJournal: boolean): string {
  const parts: string[] = [];
  if (!underSystemd) parts.push(e.timestamp.replace(/\.\d+Z$/, 'Z'));
  parts.push(e.level, e.message);
  for (const [k, v] of Object.entries(e.fields)) parts.push(`${k}=${consoleValue(v)}`);
  return `${toJournal ? `<${syslogPriority[e.level]}>` : ''}${parts.join(' ')}`;
}

/**
 * An append-only log file with size-based rotation, as a Writable for winston's Stream transport.
 * Writes are synchronous; see the contract at the top of this file.
 */
export class RotatingFile extends Writable {
  private fd: number | null = null;
  private size = 0;
  private failed = false;

  constructor(
    private readonly dir: string,
    private readonly base: string,
    private readonly maxBytes: number,
    private readonly maxFiles: number,
    private readonly onError: (err: Error) => void,
  ) {
    super({ decodeStrings: true });
  }

  /** `agent.log` for 0, `agent<n>.log` for n ≥ 1. */
  private pathOf(n: number): string {
    const dot = this.base.lastIndexOf('.');
    const [stem, ext] = dot > 0 ? [this.base.slice(0, dot), this.base.slice(dot)] : [this.base, ''];
    return join(this.dir, n === 0 ? this.base : `${stem}${n}${ext}`);
  }

  private open(): number {
    if (this.fd === null) {
      mkdirSync(this.dir, { recursive: true });
      this.fd = openSync(this.pathOf(0), 'a', 0o640);
      this.size = fstatSync(this.fd).size;
    }
    return this.fd;
  }

  private closeFile(): void {
    if (this.fd !== null) {
      const fd = this.fd;
      this.fd = null;
      closeSync(fd);
    }
  }

  private rotate(): void {
    this.closeFile();
    rmSync(this.pathOf(this.maxFiles - 1), { force: true });
    for (let n = this.maxFiles - 2; n >= 0; n--) {
      try {
        renameSync(this.pathOf(n), this.pathOf(n + 1));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, done: (err?: Error | null) => void): void {
    try {
      this.open();
      if (this.size > 0 && this.size + chunk.length > this.maxBytes) {
        this.rotate();
        this.open();
      }
      let off = 0;
      while (off < chunk.length) off += writeSync(this.fd!, chunk, off);
      this.size += chunk.length;
      this.failed = false;
    } catch (err) {
      // Try again with a fresh descriptor on the next line; report each failure streak once.
      try {
        this.closeFile();
      } catch {
        // The descriptor is gone either way.
      }
      if (!this.failed) this.onError(err as Error);
      this.failed = true;
    }
    done();
  }

  override _final(done: (err?: Error | null) => void): void {
    try {
      this.closeFile();
    } catch {
      // Nothing left to flush: every write was synchronous.
    }
    done();
  }
}

function waitFinished(stream: Writable): Promise<void> {
  if (stream.writableFinished || stream.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    stream.once('finish', () => resolve());
    stream.once('close', () => resolve());
    stream.once('error', () => resolve());
  });
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const level = (opts.level ?? 'info').toLowerCase();
  if (!Object.hasOwn(levels, level)) {
    throw new CairnError('USAGE', `log level "${opts.level}" is not known; use error, warn, info or debug`);
  }
  const env = opts.env ?? process.env;
  const clock = opts.clock ?? systemClock;
  const toJournal = Boolean(env.JOURNAL_STREAM);
  const underSystemd = toJournal || Boolean(env.INVOCATION_ID);
  const entryOf = (info: winston.Logform.TransformableInfo) => (info as unknown as Record<symbol, Entry>)[entryKey];
  const asMessage = (render: (e: Entry) => string) =>
    winston.format((info) => {
      (info as unknown as Record<symbol, string>)[Symbol.for('message')] = render(entryOf(info));
      return info;
    })();

  const transports: winston.transport[] = [];
  let file: RotatingFile | undefined;
  if (opts.dir !== undefined) {
    const maxBytes = opts.maxBytes ?? 10 * 1024 * 1024;
    const maxFiles = opts.maxFiles ?? 5;
    if (!(maxBytes > 0) || !Number.isInteger(maxFiles) || maxFiles < 1) {
      throw new CairnError('USAGE', `log rotation needs maxBytes > 0 and maxFiles ≥ 1 (got ${maxBytes} and ${maxFiles})`);
    }
    const dir = opts.dir;
    file = new RotatingFile(dir, 'agent.log', maxBytes, maxFiles, (err) =>
      process.stderr.write(`cairn: the agent log in ${dir} cannot be written: ${err.message}\n`),
    );
    transports.push(new winston.transports.Stream({ stream: file, eol: '\n', format: asMessage(jsonLine) }));
  }
  if (opts.console ?? true) {
    transports.push(
      new winston.transports.Stream({
        stream: opts.consoleStream ?? process.stderr,
        eol: '\n',
        format: asMessage((e) => consoleLine(e, underSystemd, toJournal)),
      }),
    );
  }

  const logger = winston.createLogger({
    levels,
    level,
    transports,
  });
  if (transports.length === 0) logger.silent = true;
  logger.on('error', (err: Error) => process.stderr.write(`cairn: logging failed: ${err.message}\n`));

  let closing: Promise<void> | undefined;
  const write = (lvl: LogLevel) => (message: string, fields?: LogFields) => {
    if (closing !== undefined || levels[lvl] > levels[level as LogLevel]) return;
    const entry: Entry = {
      timestamp: clock.now().toISOString(),
      level: lvl,
      message,
      fields: redact(fields ?? {}) as Record<string, unknown>,
    };
    logger.log({ level: lvl, message, [entryKey]: entry });
  };

  return {
    error: write('error'),
    warn: write('warn'),
    info: write('info'),
    debug: write('debug'),
    close: () =>
      (closing ??= (async () => {
        const finished = waitFinished(logger);
        logger.end();
        await finished;
        if (file) {
          const closed = waitFinished(file);
          file.end();
          await closed;
        }
      })()),
  };
}
