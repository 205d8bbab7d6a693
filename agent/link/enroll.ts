import { request } from 'node:https';
import { mkdir, readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { connect, type TLSSocket } from 'node:tls';

import { systemClock, type Clock } from '../../shared/clock.js';
import { CairnError, fromSystemError } from '../../shared/errors.js';
import { writePrivateFile } from '../../shared/fs/private-file.js';
import { parseEnrollmentToken } from '../../shared/protocol/enrollment-token.js';
import type { Inventory } from '../../shared/protocol/messages.js';
import { checkPinnedServer, fingerprintOf, hostOf } from './pinned-ca.js';

/** What an enrolled agent keeps to reach its control plane: `<stateDir>/control-plane.json`, 0600. */
export interface ControlPlaneState {
  /** `wss://host:port/v1/agent`, from the enrollment token. */
  controlPlaneUrl: string;
  agentId: string;
  /** The per-agent secret presented in every hello. */
  credential: string;
  /** The pinned CA (PEM), as the control plane sent it and checked against `caFingerprint`. */
  caCertPem: string;
  caFingerprint: string;
}

export const CONTROL_PLANE_FILE = 'control-plane.json';
const ENROLL_PATH = '/v1/enroll';
const MAX_REPLY_BYTES = 64 * 1024;

export interface EnrollOptions {
  /** The enrollment token text as pasted. */
  token: string;
  stateDir: string;
  hostname: string;
  inventory: Inventory | null;
  clock?: Clock;
  /** For connecting and for the answer (default 30 s). */
  timeoutMs?: number;
}

/**
 * Registers this agent with the control plane an enrollment token names, and stores what the agent
 * needs to connect from then on.
 *
 * Contracts: an expired or damaged token fails before anything is dialled. The token's secret is sent
 * only after the server's chain was checked against the CA fingerprint in the token (checkPinnedServer);
 * a server that fails that check receives no HTTP request at all. The state file is written whole or
 * not at all (temp file, fsync, rename), mode 0600. Errors: USAGE for a token problem (expired,
 * wrong server, refused by the control plane: reused, wrong, expired), STORE_UNAVAILABLE (retryable)
 * when the control plane cannot be reached.
 */
export async function enrollAgent(options: EnrollOptions): Promise<ControlPlaneState> {
  const clock = options.clock ?? systemClock;
  const timeoutMs = options.timeoutMs ?? 30_000;
  const token = parseEnrollmentToken(options.token, clock);
  const wsUrl = new URL(token.url);
  const host = hostOf(wsUrl);
  const port = Number(wsUrl.port || 443);
  const enrollUrl = `https://${wsUrl.host}${ENROLL_PATH}`;

  const socket = await dial(host, port, timeoutMs, token.url);
  let caCertPem: string;
  try {
    const { ca } = checkPinnedServer(socket, { caFingerprint: token.caFingerprint, host, url: token.url, now: clock.now() });
    caCertPem = ca.toString();
    if (fingerprintOf(ca) !== token.caFingerprint) throw new CairnError('INTERNAL', 'the pinned CA changed while it was read');
  } catch (err) {
    socket.destroy();
    throw err;
  }

  const reply = await post(socket, enrollUrl, JSON.stringify({ token: options.token.trim(), hostname: options.hostname, inventory: options.inventory }), timeoutMs);
  if (reply.status !== 200) {
    const problem = (reply.body as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
    const said = typeof problem?.message === 'string' ? problem.message : `HTTP ${reply.status}`;
    const code = reply.status === 401 || reply.status === 400 ? 'USAGE' : 'INTERNAL';
    throw new CairnError(code, `the control plane at ${enrollUrl} refused the enrollment: ${said}`);
  }
  const { agentId, credential } = (reply.body ?? {}) as Record<string, unknown>;
  if (typeof agentId !== 'string' || typeof credential !== 'string') {
    throw new CairnError('INTERNAL', `the control plane at ${enrollUrl} answered the enrollment without an agent id and credential`);
  }
  const state: ControlPlaneState = { controlPlaneUrl: token.url, agentId, credential, caCertPem, caFingerprint: token.caFingerprint };
  await writeState(options.stateDir, state);
  return state;
}

/** The stored control plane state, or undefined when the agent has not enrolled. */
export async function loadControlPlaneState(stateDir: string): Promise<ControlPlaneState | undefined> {
  const path = join(stateDir, CONTROL_PLANE_FILE);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw fromSystemError(err, 'reading the control plane state', path);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new CairnError('CONFIG_INVALID', `${path} is not JSON; enroll the agent again`, { cause: err });
  }
  const v = value as Record<string, unknown>;
  for (const field of ['controlPlaneUrl', 'agentId', 'credential', 'caCertPem', 'caFingerprint'] as const) {
    if (typeof v?.[field] !== 'string') throw new CairnError('CONFIG_INVALID', `${path} has no ${field}; enroll the agent again`);
  }
  return value as ControlPlaneState;
}

function dial(host: string, port: number, timeoutMs: number, url: string): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    // rejectUnauthorized: false only lets the handshake finish; checkPinnedServer then decides.
    const socket = connect({ host, port, servername: isIP(host) === 0 ? host : undefined, rejectUnauthorized: false, timeout: timeoutMs });
    const fail = (err: Error): void => {
      socket.destroy();
      reject(new CairnError('STORE_UNAVAILABLE', `cannot reach the control plane at ${url}: ${err.message}`, { cause: err, retryable: true }));
    };
    socket.once('error', fail);
    socket.once('timeout', () => fail(new Error(`no TLS handshake within ${timeoutMs} ms`)));
    socket.once('secureConnect', () => {
      socket.off('error', fail);
      socket.setTimeout(0);
      resolve(socket);
    });
  });
}

function post(socket: TLSSocket, url: string, body: string, timeoutMs: number): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const fail = (err: Error): void =>
      reject(new CairnError('STORE_UNAVAILABLE', `enrolling at ${url} failed: ${err.message}`, { cause: err, retryable: true }));
    const req = request(
      url,
      {
        method: 'POST',
        createConnection: () => socket,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), connection: 'close' },
        timeout: timeoutMs,
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_REPLY_BYTES) req.destroy(new Error('the answer is too large'));
          else chunks.push(chunk);
        });
        res.on('error', fail);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown;
          try {
            parsed = text === '' ? undefined : JSON.parse(text);
          } catch {
            parsed = undefined;
          }
          socket.destroy();
          resolve({ status: res.statusCode ?? 0, body: parsed });
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', fail);
    req.end(body);
  });
}

async function writeState(stateDir: string, state: ControlPlaneState): Promise<void> {
  const path = join(stateDir, CONTROL_PLANE_FILE);
  try {
    await mkdir(stateDir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw fromSystemError(err, 'writing the control plane state', path);
  }
  await writePrivateFile(path, JSON.stringify(state, null, 2) + '\n', 'writing the control plane state');
}
