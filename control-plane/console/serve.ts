import { existsSync, readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { dirname, extname, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

import { CairnError } from '../../shared/errors.js';
import { embeddedRuntime } from '../../shared/runtime/embedded.js';

/** URL prefix of the console's files; `/` answers with the console's page too. */
export const CONSOLE_PREFIX = '/console/';

/**
 * The console's policy: scripts, styles, images and API calls from this origin only; no inline code,
 * no plugins, no framing, no `<base>`, forms post only here.
 */
export const CONSOLE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "font-src 'self'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json; charset=utf-8',
};

/**
 * Where the static files are: `static/` beside this module when run from the source tree, or the
 * source tree's folder when run from the compiled `dist/control-plane/console/` (tsc copies no
 * files that are not TypeScript), or the single executable's copy of them.
 */
export function staticRoot(): string {
  const embedded = embeddedRuntime();
  if (embedded) return embedded.extractedDir('console');
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [join(here, 'static'), join(here, '..', '..', '..', 'control-plane', 'console', 'static')];
  const found = candidates.find((dir) => existsSync(join(dir, 'index.html')));
  if (found === undefined) {
    throw new CairnError('NOT_FOUND', `the web console's files are missing: no index.html in ${candidates.join(' or ')}; reinstall Cairn`);
  }
  return found;
}

/**
 * The web console's static files. Answers GET/HEAD of `/` and `/console/...` and returns true; any
 * other request is left alone (false) for the REST API.
 *
 * Contracts: only files that were in the static folder when the handler was made are ever served
 * (the URL is looked up in that list, never joined onto a path, so `..`, encoded or not, cannot
 * leave the folder); only known file types; every answer carries the strict CSP and `nosniff`; an
 * unknown console path is 404. File contents are read per request, so edits show at the next load.
 */
export function createConsoleHandler(root: string = staticRoot()): (req: IncomingMessage, res: ServerResponse) => boolean {
  const files = listFiles(root);
  return (req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') return false;
    const rawPath = (req.url ?? '/').split('?')[0];
    if (rawPath !== '/' && rawPath !== '/console' && !rawPath.startsWith(CONSOLE_PREFIX)) return false;
    const rest = rawPath === '/' || rawPath === '/console' ? '' : rawPath.slice(CONSOLE_PREFIX.length);
    let name: string;
    try {
      name = decodeURIComponent(rest) || 'index.html';
    } catch {
      name = '';
    }
    const file = files.get(name);
    if (file === undefined) {
      sendText(res, req, 404, `no console file ${JSON.stringify(rawPath)}\n`);
      return true;
    }
    readFile(file.path).then(
      (body) => {
        res.writeHead(200, { ...commonHeaders(), 'content-type': file.type, 'content-length': body.length });
        res.end(req.method === 'HEAD' ? undefined : body);
      },
      () => sendText(res, req, 500, 'the console file could not be read; see the control plane log\n'),
    );
    return true;
  };
}

/**
 * Every servable file under `root` (regular files of a known type; symbolic links are not followed),
 * by its path relative to root with `/` separators.
 */
function listFiles(root: string): Map<string, { path: string; type: string }> {
  const files = new Map<string, { path: string; type: string }>();
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) {
        walk(path);
      } else if (entry.isFile()) {
        const type = CONTENT_TYPES[extname(entry.name).toLowerCase()];
        if (type !== undefined) files.set(relative(root, path).split(sep).join('/'), { path, type });
      }
    }
  };
  walk(root);
  return files;
}

function commonHeaders(): Record<string, string> {
  return {
    'content-security-policy': CONSOLE_CSP,
    'x-content-type-options': 'nosniff',
    'x-frame-options': 'DENY',
    'referrer-policy': 'no-referrer',
    'cache-control': 'no-cache',
  };
}

function sendText(res: ServerResponse, req: IncomingMessage, status: number, text: string): void {
  res.writeHead(status, { ...commonHeaders(), 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(req.method === 'HEAD' ? undefined : text);
}
