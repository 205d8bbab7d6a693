import { setTimeout as delay } from 'node:timers/promises';
import type { IncomingMessage } from 'node:http';
import { X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';

import { WebSocket, type RawData } from 'ws';

import { systemClock, type Clock } from '../../shared/clock.js';
import { CairnError, isCairnError, type ErrorCode } from '../../shared/errors.js';
import {
  decodeMessage,
  encodeMessage,
  errorReplyFor,
  MAX_FRAME_BYTES,
  ProtocolError,
  SUPPORTED_VERSIONS,
  type AgentMessage,
  type CommandMessage,
  type Inventory,
  type PolicyPushMessage,
  type Problem,
  type RunningJobSummary,
  type ServerMessage,
  type WelcomeMessage,
} from '../../shared/protocol/messages.js';
import type { ControlPlaneState } from './enroll.js';
import { checkPinnedServer, fingerprintOf, hostOf } from './pinned-ca.js';

export type LinkState = 'connecting' | 'connected' | 'disconnected';

/** An agent message without its `id`: `send` gives it the next id of the connection. */
export type UnsentMessage = AgentMessage extends infer M ? (M extends AgentMessage ? Omit<M, 'id'> : never) : never;

/** Reconnect delays: full jitter over base * 2^attempt, capped; the attempt count resets after a stable connection. */
export const BACKOFF = { baseMs: 1000, capMs: 60_000, stableMs: 60_000 } as const;
const AGENT_PATH = '/v1/agent';

export interface ControlPlaneLinkOptions {
  state: ControlPlaneState;
  agentVersion: string;
  /** Read at every hello. */
  inventory: () => Inventory | null;
  /** The policy version the agent runs (null: none yet); read at every hello. */
  policyVersion: () => number | null;
  /** Sent in every heartbeat (default: none). */
  runningJobs?: () => RunningJobSummary[];
  /** Applies a pushed policy set; a rejection is sent back as `policy-ack.error`. */
  onPolicyPush: (message: PolicyPushMessage) => Promise<void>;
  onCommand?: (message: CommandMessage) => void;
  /** After each `welcome`, once `send` works: the moment to send what follows every (re)connection. */
  onWelcome?: (message: WelcomeMessage) => void;
  /** The control plane acknowledged an outbox message (`ack.messageId`). */
  onAck?: (messageId: string) => void;
  /** The control plane refused this agent (credential unknown, revoked or wrong) or the protocol. */
  onRefused?: (problem: Problem) => void;
  onStateChange?: (state: LinkState) => void;
  log?: (level: 'info' | 'warn' | 'error', message: string) => void;
  clock?: Clock;
  /** Waits between attempts; must reject or resolve early when `signal` aborts. */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  /** In [0, 1); picks the jitter. */
  random?: () => number;
  /** How long a connection may take to reach `welcome` (default 30 s). */
  handshakeTimeoutMs?: number;
}

/**
 * The agent's end of the WebSocket to its control plane (shared/protocol/README.md has the messages).
 *
 * Contracts:
 * - Trusts only the stored CA: `ca` is that PEM alone (no system roots), the PEM must have the stored
 *   fingerprint, and the chain of every connection must end in it (checked before `hello` is sent).
 * - Each connection starts with `hello`; after `welcome` a `heartbeat` goes every `heartbeatSeconds`.
 * - Incoming messages are handled one at a time, in order; a `policy-push` is answered with
 *   `policy-ack` once `onPolicyPush` settles.
 * - After any end of a connection (drop, refusal, failure to connect) the link waits a full-jitter
 *   delay (BACKOFF) and dials again, until `close()`. A refusal never shortens the wait.
 */
export class ControlPlaneLink {
  private current: LinkState = 'disconnected';
  private attempt = 0;
  private ws: WebSocket | undefined;
  /** The welcomed connection's sender, or undefined while there is none. */
  private sender: { send: (message: AgentMessage) => void; frame: (frame: string) => void; nextId: () => string } | undefined;
  private readonly stop = new AbortController();
  private readonly running: Promise<void>;
  private readonly clock: Clock;
  private readonly sleep: (ms: number, signal: AbortSignal) => Promise<void>;
  private readonly random: () => number;
  private readonly url: string;
  /** Last refusal or failure, for the status endpoint. */
  lastProblem: Problem | undefined;

  constructor(private readonly options: ControlPlaneLinkOptions) {
    this.clock = options.clock ?? systemClock;
    this.sleep = options.sleep ?? ((ms, signal) => delay(ms, undefined, { signal }));
    this.random = options.random ?? Math.random;
    const ca = new X509Certificate(options.state.caCertPem);
    if (fingerprintOf(ca) !== options.state.caFingerprint) {
      throw new CairnError('CONFIG_INVALID', 'the stored control plane CA does not match its fingerprint; enroll the agent again');
    }
    const url = new URL(options.state.controlPlaneUrl);
    if (url.pathname === '/' || url.pathname === '') url.pathname = AGENT_PATH;
    this.url = url.toString();
    this.running = this.run();
  }

  get state(): LinkState {
    return this.current;
  }

  /**
   * Sends a message on the welcomed connection with the connection's next id; false (nothing sent)
   * while there is none. Throws ProtocolError when the message would be refused (a caller's bug).
   */
  send(message: UnsentMessage): boolean {
    const sender = this.sender;
    if (!sender) return false;
    sender.send({ ...message, id: sender.nextId() } as AgentMessage);
    return true;
  }

  /**
   * Sends a frame already encoded (with `encodeMessage`) and carrying its own id, as the durable
   * outbox does so a re-sent message keeps its id; false (nothing sent) while not welcomed.
   */
  sendFrame(frame: string): boolean {
    const sender = this.sender;
    if (!sender) return false;
    sender.frame(frame);
    return true;
  }

  /** Stops reconnecting and closes the connection; resolves when the link is down. */
  async close(): Promise<void> {
    this.stop.abort();
    this.ws?.close(1000, 'agent shutting down');
    await this.running;
  }

  private setState(state: LinkState): void {
    if (state === this.current) return;
    this.current = state;
    this.options.onStateChange?.(state);
  }

  private async run(): Promise<void> {
    while (!this.stop.signal.aborted) {
      const connectedFor = await this.connectOnce();
      this.ws = undefined;
      this.setState('disconnected');
      if (this.stop.signal.aborted) break;
      if (connectedFor >= BACKOFF.stableMs) this.attempt = 0;
      const wait = Math.floor(this.random() * Math.min(BACKOFF.capMs, BACKOFF.baseMs * 2 ** this.attempt));
      this.attempt = Math.min(this.attempt + 1, 30);
      try {
        await this.sleep(wait, this.stop.signal);
      } catch {
        // aborted by close()
      }
    }
    this.setState('disconnected');
  }

  /** One connection from dial to close; resolves with how long it was welcomed (0: never). */
  private connectOnce(): Promise<number> {
    const { state, log } = this.options;
    this.setState('connecting');
    return new Promise((resolve) => {
      const ws = new WebSocket(this.url, { ca: state.caCertPem, maxPayload: MAX_FRAME_BYTES, handshakeTimeout: this.options.handshakeTimeoutMs ?? 30_000 });
      this.ws = ws;
      let sent = 0;
      let welcomedAt: number | undefined;
      let heartbeat: NodeJS.Timeout | undefined;
      let queue = Promise.resolve();
      const send = (message: AgentMessage): void => {
        if (ws.readyState === ws.OPEN) ws.send(encodeMessage(message));
      };
      const frame = (text: string): void => {
        if (ws.readyState === ws.OPEN) ws.send(text);
      };
      const nextId = (): string => `ag-${++sent}`;
      const problem = (code: ErrorCode, message: string): void => {
        this.lastProblem = { code, message };
      };
      const welcomeTimer = setTimeout(() => {
        problem('STORE_UNAVAILABLE', 'the control plane sent no welcome in time');
        ws.terminate();
      }, this.options.handshakeTimeoutMs ?? 30_000);

      ws.on('upgrade', (res: IncomingMessage) => {
        try {
          const url = new URL(this.url);
          checkPinnedServer(res.socket as TLSSocket, { caFingerprint: state.caFingerprint, host: hostOf(url), url: state.controlPlaneUrl, now: this.clock.now() });
        } catch (err) {
          problem(isCairnError(err) ? err.code : 'INTERNAL', (err as Error).message);
          log?.('error', (err as Error).message);
          ws.terminate();
        }
      });
      ws.on('open', () => {
        send({
          v: 1,
          type: 'hello',
          id: nextId(),
          agentId: state.agentId,
          token: state.credential,
          agentVersion: this.options.agentVersion,
          protocolVersions: [...SUPPORTED_VERSIONS],
          inventory: this.options.inventory(),
          policyVersion: this.options.policyVersion(),
        });
      });
      ws.on('message', (data: RawData, isBinary: boolean) => {
        queue = queue
          .then(async () => {
            let message: ServerMessage;
            try {
              if (isBinary) throw new ProtocolError(null, 'frame must be a text frame, not binary', { context: 'message to the agent refused' });
              message = decodeMessage(Buffer.isBuffer(data) ? data : Buffer.from(data as ArrayBuffer), 'to-agent');
            } catch (err) {
              if (!(err instanceof ProtocolError)) throw err;
              send(errorReplyFor(err, nextId()));
              problem('USAGE', err.message);
              ws.close(1008, 'protocol error');
              return;
            }
            await this.handle(message, welcomedAt !== undefined, send, nextId, () => {
              clearTimeout(welcomeTimer);
              welcomedAt = this.clock.now().getTime();
              this.attemptConnected();
              if (message.type === 'welcome') {
                heartbeat = setInterval(
                  () => send({ v: 1, type: 'heartbeat', id: nextId(), jobs: this.options.runningJobs?.() ?? [] }),
                  message.heartbeatSeconds * 1000,
                );
                this.sender = { send, frame, nextId };
                try {
                  this.options.onWelcome?.(message);
                } catch (err) {
                  log?.('error', `after the welcome: ${(err as Error)?.message ?? String(err)}`);
                }
              }
            }, ws);
          })
          .catch((err) => log?.('error', `handling a message from the control plane: ${(err as Error)?.stack ?? String(err)}`));
      });
      ws.on('error', (err) => {
        problem('STORE_UNAVAILABLE', `cannot reach the control plane at ${state.controlPlaneUrl}: ${err.message}`);
      });
      ws.on('close', () => {
        if (this.sender?.send === send) this.sender = undefined;
        clearTimeout(welcomeTimer);
        if (heartbeat !== undefined) clearInterval(heartbeat);
        resolve(welcomedAt === undefined ? 0 : this.clock.now().getTime() - welcomedAt);
      });
      if (this.stop.signal.aborted) ws.terminate();
    });
  }

  private attemptConnected(): void {
    this.lastProblem = undefined;
    this.setState('connected');
  }

  private async handle(
    message: ServerMessage,
    welcomed: boolean,
    send: (message: AgentMessage) => void,
    nextId: () => string,
    onWelcome: () => void,
    ws: WebSocket,
  ): Promise<void> {
    const { log } = this.options;
    if (message.type === 'error') {
      const refusal = { code: message.code, message: message.message };
      this.lastProblem = refusal;
      log?.('warn', `the control plane refused: ${message.message}`);
      this.options.onRefused?.(refusal);
      return;
    }
    if (!welcomed) {
      if (message.type !== 'welcome') {
        this.lastProblem = { code: 'USAGE', message: `the control plane sent ${message.type} before welcome` };
        ws.close(1008, 'welcome expected');
        return;
      }
      onWelcome();
      log?.('info', `connected to the control plane as ${message.agentId}`);
      return;
    }
    switch (message.type) {
      case 'welcome':
        ws.close(1008, 'welcome sent twice');
        return;
      case 'policy-push': {
        let error: Problem | null = null;
        try {
          await this.options.onPolicyPush(message);
        } catch (err) {
          error = { code: isCairnError(err) ? err.code : 'INTERNAL', message: ((err as Error)?.message ?? String(err)).slice(0, 1024) };
        }
        send({ v: 1, type: 'policy-ack', id: nextId(), version: message.version, error });
        return;
      }
      case 'command':
        this.options.onCommand?.(message);
        return;
      case 'ack':
        this.options.onAck?.(message.messageId);
        return;
    }
  }
}
