/**
 * Clients for the control plane's tests: real HTTPS and a raw WebSocket that trust only the control
 * plane's CA and speak the protocol frame by frame, so tests see exactly what travels.
 */
import { request } from 'node:https';

import { expect, vi } from 'vitest';
import { WebSocket } from 'ws';

import { PROTOCOL_VERSION, type HelloMessage } from '../../shared/protocol/messages.js';

/** What a test needs of a running control plane. */
export interface Endpoint {
  url: string;
  wsUrl: string;
  caCertPem: string;
}

export interface Reply {
  status: number;
  body: any;
  text: string;
}

/** One HTTPS call that trusts only the control plane's CA. */
export function call(
  cp: Pick<Endpoint, 'url' | 'caCertPem'>,
  method: string,
  path: string,
  options: { token?: string; body?: unknown; raw?: string | Buffer } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const payload = options.raw ?? (options.body === undefined ? undefined : JSON.stringify(options.body));
    const req = request(
      new URL(path, cp.url),
      {
        method,
        ca: cp.caCertPem,
        headers: {
          ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
          ...(payload === undefined ? {} : { 'content-type': 'application/json' }),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let body: unknown;
          try {
            body = text ? JSON.parse(text) : undefined;
          } catch {
            body = undefined;
          }
          resolve({ status: res.statusCode ?? 0, body, text });
        });
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

/** A raw WebSocket agent that records every message it receives and how it was closed. */
export class TestAgent {
  readonly ws: WebSocket;
  readonly received: any[] = [];
  readonly opened: Promise<void>;
  readonly closed: Promise<{ code: number; reason: string }>;
  private sent = 0;

  constructor(cp: Pick<Endpoint, 'wsUrl' | 'caCertPem'>) {
    this.ws = new WebSocket(cp.wsUrl, { ca: cp.caCertPem });
    this.ws.on('message', (data) => this.received.push(JSON.parse(data.toString())));
    this.ws.on('error', () => {});
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', () => resolve());
      this.ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
    });
    this.closed = new Promise((resolve) => this.ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  }

  /** Sends a value as JSON (a string as it is). */
  send(value: unknown): void {
    this.ws.send(typeof value === 'string' ? value : JSON.stringify(value));
  }

  /** Sends a message with a fresh id (`t-1`, `t-2`, ...) unless it has one; returns the id. */
  message(fields: Record<string, unknown>): string {
    const id = (fields.id as string | undefined) ?? `t-${++this.sent}`;
    this.send({ v: 1, id, ...fields });
    return id;
  }

  /** Every received message of `type`. */
  all(type: string): any[] {
    return this.received.filter((m) => m.type === type);
  }

  /** The first received message of `type` (matching `where`), once it arrives. */
  async next(type: string, where: (m: any) => boolean = () => true, timeout = 5000): Promise<any> {
    await vi.waitFor(() => expect(this.all(type).some(where)).toBe(true), { timeout, interval: 5 });
    return this.all(type).find(where);
  }

  /** The `ack` naming `messageId`, once it arrives. */
  ack(messageId: string): Promise<any> {
    return this.next('ack', (m) => m.messageId === messageId);
  }

  pushes(): any[] {
    return this.all('policy-push');
  }

  /** The policy-push with `version`, once it arrives. */
  push(version: number): Promise<any> {
    return this.next('policy-push', (m) => m.version === version, 1000);
  }
}

export function hello(agentId: string, token: string, policyVersion: number | null = null): HelloMessage {
  return {
    v: 1,
    type: 'hello',
    id: 'h-1',
    agentId,
    token,
    agentVersion: '0.1.0',
    protocolVersions: [PROTOCOL_VERSION],
    inventory: null,
    policyVersion,
  };
}

export interface EnrolledAgent {
  agentId: string;
  credential: string;
}

/** Makes an enrollment token with the admin token and enrolls an agent with it. */
export async function enroll(cp: Endpoint, admin: string, hostname: string): Promise<EnrolledAgent> {
  const made = await call(cp, 'POST', '/v1/enrollment-tokens', { token: admin, body: { ttlSeconds: 600 } });
  expect(made.status).toBe(201);
  const enrolled = await call(cp, 'POST', '/v1/enroll', { body: { token: made.body.token, hostname, inventory: null } });
  expect(enrolled.status).toBe(200);
  return enrolled.body;
}

/** Opens a WebSocket, says hello and waits for welcome. */
export async function connect(cp: Endpoint, agent: EnrolledAgent, policyVersion: number | null = null): Promise<TestAgent> {
  const client = new TestAgent(cp);
  await client.opened;
  client.send(hello(agent.agentId, agent.credential, policyVersion));
  await client.next('welcome');
  return client;
}
