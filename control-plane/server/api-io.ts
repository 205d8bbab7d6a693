import type { IncomingMessage, ServerResponse } from 'node:http';

import { encodeMessage, ProtocolError, type CommandMessage } from '../../shared/protocol/messages.js';
import { ApiError } from './http-error.js';

/** Largest request body read; a larger one is answered 413 without being parsed. */
export const MAX_BODY_BYTES = 1024 * 1024;

export type Handler = (req: IncomingMessage, params: string[], query: URLSearchParams) => Promise<{ status: number; body: unknown }>;

/** One route of the JSON API; `path` is its OpenAPI form (`/v1/backups/{id}`), each `{x}` one path segment. */
export interface Route {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  path: string;
  admin: boolean;
  handler: Handler;
}

/** The regular expression matching a route's path; `{x}` captures one non-empty segment. */
export function pathPattern(path: string): RegExp {
  const escaped = path.replace(/[.*+?^$()|[\]\\]/g, '\\$&').replace(/\{[^}]+\}/g, '([^/]+)');
  return new RegExp(`^${escaped}$`);
}

export function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { ...headers, 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/** The request body as a JSON object: 413 past MAX_BODY_BYTES, 400 when it is not a JSON object. */
export async function readJsonObject(req: IncomingMessage, options: { optional?: boolean } = {}): Promise<Record<string, unknown>> {
  const tooLarge = (): ApiError => new ApiError('TOO_LARGE', `the request body is larger than ${MAX_BODY_BYTES} bytes`);
  if (Number(req.headers['content-length'] ?? 0) > MAX_BODY_BYTES) throw tooLarge();
  // Listeners rather than an async iterator: leaving the iterator early would destroy the socket
  // before the 413 is sent. Past the limit the rest is read and dropped.
  const text = await new Promise<string>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        chunks.length = 0;
        reject(tooLarge());
      } else {
        chunks.push(chunk);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
  if (options.optional && text.trim() === '') return {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ApiError('USAGE', 'the request body is not valid JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ApiError('USAGE', 'the request body must be a JSON object');
  }
  return value as Record<string, unknown>;
}

/** A name from the URL path, percent-decoded. */
export function nameParam(raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw new ApiError('USAGE', 'the name in the path is not valid percent-encoding');
  }
}

export function onlyFields(body: Record<string, unknown>, known: string[]): void {
  for (const key of Object.keys(body)) {
    if (!known.includes(key)) throw new ApiError('USAGE', `${key} is not a known field (known: ${known.join(', ')})`);
  }
}

/** Query parameters, read with checks; every error names the parameter. */
export class QueryReader {
  constructor(
    private readonly query: URLSearchParams,
    known: string[],
  ) {
    for (const key of new Set(query.keys())) {
      if (!known.includes(key)) throw new ApiError('USAGE', `query parameter ${key} is not known here (known: ${known.join(', ')})`);
      if (query.getAll(key).length > 1) throw new ApiError('USAGE', `query parameter ${key} is given more than once`);
    }
  }

  string(key: string): string | undefined {
    const value = this.query.get(key);
    if (value === null) return undefined;
    if (value === '') throw new ApiError('USAGE', `query parameter ${key} must not be empty; leave it out instead`);
    return value;
  }

  oneOf<T extends string>(key: string, values: readonly T[]): T | undefined {
    const value = this.string(key);
    if (value !== undefined && !values.includes(value as T)) throw new ApiError('USAGE', `query parameter ${key} must be one of ${values.join(', ')}`);
    return value as T | undefined;
  }

  integer(key: string, min: number, max: number): number | undefined {
    const value = this.string(key);
    if (value === undefined) return undefined;
    if (!/^\d+$/.test(value) || Number(value) < min || Number(value) > max) {
      throw new ApiError('USAGE', `query parameter ${key} must be a whole number from ${min} to ${max}`);
    }
    return Number(value);
  }

  boolean(key: string): boolean | undefined {
    const value = this.string(key);
    if (value === undefined) return undefined;
    if (value !== 'true' && value !== 'false') throw new ApiError('USAGE', `query parameter ${key} must be true or false`);
    return value === 'true';
  }

  /** An ISO 8601 time with a zone, returned in the catalog's UTC form. */
  time(key: string): string | undefined {
    const value = this.string(key);
    if (value === undefined) return undefined;
    if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$/.test(value) || Number.isNaN(Date.parse(value))) {
      throw new ApiError('USAGE', `query parameter ${key} must be an ISO 8601 time with a zone, such as 2024-05-01T02:00:00Z`);
    }
    return new Date(value).toISOString();
  }
}

/**
 * Checks a command with the protocol's own schema before it is queued, so the API queues nothing an
 * agent would refuse. A 400 names the request field (`target`, `name`) the problem came from.
 */
export function checkCommand(command: Omit<CommandMessage, 'v' | 'type' | 'id' | 'commandId'>): void {
  try {
    encodeMessage({ v: 1, type: 'command', id: 'check', commandId: 'check', ...command } as CommandMessage);
  } catch (err) {
    if (!(err instanceof ProtocolError)) throw err;
    const field = (err.field ?? '').replace(/^command\.(args\.)?/, '');
    throw new ApiError('USAGE', `${field === '' ? 'the command' : field} ${err.problem}`);
  }
}
