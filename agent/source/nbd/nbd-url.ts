import { CairnError } from '../../../shared/errors.js';

/** Where an NBD server listens: a Unix socket, or a TCP host and port. */
export type NbdTarget = { unix: string } | { host: string; port: number };

export interface NbdUrl {
  target: NbdTarget;
  /** The export to open; empty for the server's default export. */
  exportName: string;
  /** Name of the dirty bitmap to read changes from (`bitmap=` in the query), if given. */
  bitmap: string | undefined;
  /** The URL in canonical form (without `bitmap`), for messages. */
  display: string;
}

export const NBD_DEFAULT_PORT = 10809;

const EXAMPLES = "nbd+unix:///EXPORT?socket=/run/disk.sock or nbd://HOST:PORT/EXPORT (add '&bitmap=NAME' or '?bitmap=NAME' for changed blocks)";

/**
 * Parses an NBD URI as NetworkBlockDevice/nbd doc/uri.md defines it, for the schemes Cairn speaks:
 * `nbd+unix:///EXPORT?socket=PATH` and `nbd://HOST[:PORT]/EXPORT` (port 10809 by default). The
 * export name is the path without its leading `/`, percent-decoded, and may be empty. Cairn adds one
 * query parameter, `bitmap=NAME`. TLS schemes and unknown parameters are refused (USAGE).
 */
export function parseNbdUrl(url: string): NbdUrl {
  const bad = (why: string): CairnError => new CairnError('USAGE', `invalid NBD URL '${url}': ${why}; use ${EXAMPLES}`);
  const m = /^([a-z][a-z0-9+.-]*):\/\/([^/?#]*)([^?#]*)(?:\?([^#]*))?(#.*)?$/i.exec(url);
  if (!m) throw bad('not a URL');
  const [, schemeRaw, authority = '', path = '', query, fragment] = m;
  const scheme = schemeRaw!.toLowerCase();
  if (scheme === 'nbds' || scheme === 'nbds+unix') throw bad('TLS (nbds) is not supported by Cairn yet; export the disk without TLS on a local socket');
  if (scheme !== 'nbd' && scheme !== 'nbd+unix') throw bad(`unknown scheme '${scheme}:'`);
  if (fragment !== undefined) throw bad('a URL fragment (#...) has no meaning here');

  const exportName = decode(path.startsWith('/') ? path.slice(1) : path, 'export name', bad);
  const params = new Map<string, string>();
  for (const part of query ? query.split('&') : []) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const key = decode(eq < 0 ? part : part.slice(0, eq), 'query parameter', bad);
    const value = decode(eq < 0 ? '' : part.slice(eq + 1), `value of '${key}'`, bad);
    if (key !== 'socket' && key !== 'bitmap') throw bad(`unknown query parameter '${key}' (known: socket, bitmap)`);
    if (params.has(key)) throw bad(`'${key}' is given twice`);
    params.set(key, value);
  }
  const bitmap = params.get('bitmap');
  if (bitmap === '') throw bad("'bitmap=' needs the name of a dirty bitmap");

  let target: NbdTarget;
  if (scheme === 'nbd+unix') {
    if (authority !== '') throw bad(`a Unix-socket URL has no host ('${authority}'); write nbd+unix:///EXPORT?socket=PATH`);
    const socket = params.get('socket');
    if (!socket) throw bad("'socket=PATH' is missing");
    target = { unix: socket };
  } else {
    if (params.has('socket')) throw bad("'socket=' belongs to nbd+unix:// URLs");
    target = parseAuthority(authority, bad);
  }
  return { target, exportName, bitmap, display: formatNbdUrl(target, exportName) };
}

/** The canonical URL of an export, as parseNbdUrl reads it back. */
export function formatNbdUrl(target: NbdTarget, exportName: string): string {
  const name = encodePath(exportName);
  if ('unix' in target) return `nbd+unix:///${name}?socket=${encodePath(target.unix)}`;
  const host = target.host.includes(':') ? `[${target.host}]` : target.host;
  return `nbd://${host}:${target.port}/${name}`;
}

function parseAuthority(authority: string, bad: (why: string) => CairnError): NbdTarget {
  if (authority.includes('@')) throw bad('user names (TLS authentication) are not supported');
  const m = /^(?:\[([0-9a-f:.]+)\]|([^:[\]]+))(?::(\d*))?$/i.exec(authority);
  if (!m) throw bad(authority === '' ? 'the host is missing' : `cannot read host and port from '${authority}'`);
  const host = m[1] ?? decode(m[2]!, 'host', bad);
  const port = m[3] === undefined || m[3] === '' ? NBD_DEFAULT_PORT : Number(m[3]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw bad(`port ${m[3]} is not between 1 and 65535`);
  return { host, port };
}

function decode(s: string, what: string, bad: (why: string) => CairnError): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw bad(`the ${what} has a bad %-escape`);
  }
}

/** Percent-encodes what a URI path or query value cannot hold literally; keeps '/' readable. */
function encodePath(s: string): string {
  return encodeURIComponent(s).replace(/%2F/gi, '/');
}
