import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';

import { WebSocketServer, type RawData, type WebSocket } from 'ws';

import type { Clock } from '../../shared/clock.js';
import { CairnError, isCairnError, type ErrorCode } from '../../shared/errors.js';
import {
  chooseProtocolVersion,
  decodeMessage,
  encodeMessage,
  errorReplyFor,
  MAX_FRAME_BYTES,
  ProtocolError,
  SUPPORTED_VERSIONS,
  type AgentMessage,
  type BackupSummary,
  type CatalogSyncMessage,
  type JobResultMessage,
  type ServerMessage,
} from '../../shared/protocol/messages.js';
import type { BackupInput, Catalog, JsonValue, PolicyRecord, ScannedBackup } from '../catalog/catalog.js';
import { verifyAgentCredential } from '../pki/tokens.js';
import { commandMessage, storedArgs } from './commands.js';
import { LiveJobs } from './live-jobs.js';
import type { Log } from './log.js';
import { policyPush, readPolicySnapshot } from './policy-push.js';

export const AGENT_PATH = '/v1/agent';
/** WebSocket close code for a broken rule of the protocol (RFC 6455). */
export const CLOSE_POLICY = 1008;
/** WebSocket close code "try again later" (RFC 6455 registry): a store failed for now; the agent reconnects and re-sends. */
export const CLOSE_TRY_AGAIN_LATER = 1013;

export interface AgentLinkOptions {
  catalog: Catalog;
  clock: Clock;
  log: Log;
  /** How long a new connection has to send `hello` (default 10 s). */
  helloTimeoutMs?: number;
  /** Connections from one address that may be between upgrade and `welcome` at once (default 20). */
  maxPendingPerAddress?: number;
  /** Connections from all addresses that may be between upgrade and `welcome` at once (default 1000). */
  maxPending?: number;
  /** Sent in `welcome` (default 30). */
  heartbeatSeconds?: number;
}

type PolicySnapshot = { version: number; records: PolicyRecord[] };

/** One WebSocket and what the link knows of it. */
interface Connection {
  ws: WebSocket;
  /**
   * Set by a hello whose credential was accepted, in the same step that makes this the agent's live
   * connection (before any further await), so a close at any later point removes it from `live`.
   */
  agentId?: string;
  /** Commands sent on this connection: each is sent once per connection (again after a reconnect). */
  sentCommands: Set<string>;
  /** Command sends of this connection, one after another, so they go out in the catalog's order. */
  commandSends: Promise<void>;
  /** Set once `welcome` is sent: only then may a `policy-push` follow. */
  welcomed: boolean;
  /** The highest policy version the agent runs or was sent on this connection (hello's, else 0). */
  policyVersion: number;
  send(message: ServerMessage): void;
  nextId(): string;
}

/**
 * The control plane's end of the agents' WebSocket link (shared/protocol/README.md has the messages).
 *
 * Contracts:
 * - The first message must be a valid `hello` with the credential of an enrolled, unrevoked agent,
 *   within the hello timeout; it is answered `welcome` and the agent is marked online. Anything else
 *   is answered with an `error` message and closed with 1008. An oversized frame is closed by ws
 *   with 1009 before it is read. One connection's failure never touches another.
 * - Messages of one connection are handled one at a time, in order.
 * - One live connection per agent: a newer one replaces the older (closed 1000); the agent is
 *   marked offline only when its live connection closes.
 * - At most `maxPendingPerAddress` handshakes per remote address and `maxPending` in all; more are
 *   refused with HTTP 503 before the upgrade, so a flood costs a socket, not a session.
 * - Policies: right after `welcome`, an agent whose `hello.policyVersion` is below the catalog's
 *   (or above it: a version this catalog never had, treated as unknown) gets the latest
 *   `policy-push`; `policiesChanged()` pushes the latest version to every welcomed connection. Apart
 *   from that first push to an agent with an unknown version, a connection is never sent a version
 *   at or below one it runs or was already sent, so pushes on it only grow. `policy-ack` records the agent's acknowledged version.
 * - Revocation: the agent record is read again after the connection is registered (a revoke racing
 *   the hello is seen) and at every heartbeat (a revoke by another instance closes it within one
 *   heartbeat interval); a revoked agent's connection is closed with 1008.
 * - Durable outbox: `job-result` and `catalog-sync` are stored first and acked after; a store that
 *   fails for now gets no ack and the connection is closed with 1013 (the agent reconnects and
 *   re-sends); a refusal a re-send cannot cure is logged, answered with an `error` naming the
 *   message and acked. Storing is idempotent, so a repeated message is stored once and acked each time.
 * - An agent changes only what it protects: `catalog-sync` only for vaults where it holds a
 *   resource, a `delete` result marks deleted only its own backups or those of resources it holds,
 *   and `resources` never takes a name another unrevoked agent holds.
 * - Commands: right after `welcome` the agent's pending commands go out in the catalog's order;
 *   `commandsQueued()` sends new ones at once, and every heartbeat sends any not yet sent (lost
 *   notices). Each command goes once per connection.
 * - `resources` replaces the agent's resources in the catalog; `job-progress` and heartbeats feed
 *   `jobs` (memory only), which drops an agent's jobs when it disconnects.
 */
export class AgentLink {
  /** What the agents connected here run now (job-progress and heartbeats). */
  readonly jobs = new LiveJobs();
  private readonly wss = new WebSocketServer({ noServer: true, maxPayload: MAX_FRAME_BYTES });
  private readonly pendingByAddress = new Map<string, number>();
  private pendingTotal = 0;
  private readonly live = new Map<string, Connection>();
  private pushWanted = false;
  private pushRunning = false;
  private readonly sockets = new Set<WebSocket>();
  private readonly helloTimeoutMs: number;
  private readonly maxPendingPerAddress: number;
  private readonly maxPending: number;
  private readonly heartbeatSeconds: number;

  constructor(private readonly options: AgentLinkOptions) {
    this.helloTimeoutMs = options.helloTimeoutMs ?? 10_000;
    this.maxPendingPerAddress = options.maxPendingPerAddress ?? 20;
    this.maxPending = options.maxPending ?? 1000;
    this.heartbeatSeconds = options.heartbeatSeconds ?? 30;
  }

  /** For the HTTPS server's 'upgrade' event. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => socket.destroy());
    const path = new URL(req.url ?? '/', 'https://cairn.invalid').pathname;
    if (path !== AGENT_PATH) {
      refuseUpgrade(socket, 404, 'Not Found');
      return;
    }
    const address = req.socket.remoteAddress ?? 'unknown';
    const pending = this.pendingByAddress.get(address) ?? 0;
    if (pending >= this.maxPendingPerAddress || this.pendingTotal >= this.maxPending) {
      this.options.log('warn', `refused a WebSocket from ${address}: too many connections waiting for hello`);
      refuseUpgrade(socket, 503, 'Service Unavailable');
      return;
    }
    this.pendingByAddress.set(address, pending + 1);
    this.pendingTotal++;
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      this.pendingTotal--;
      const left = (this.pendingByAddress.get(address) ?? 1) - 1;
      if (left <= 0) this.pendingByAddress.delete(address);
      else this.pendingByAddress.set(address, left);
    };
    socket.once('close', release);
    this.wss.handleUpgrade(req, socket, head, (ws) => this.accept(ws, address, release));
  }

  /** Closes the agent's live connection, if any (after it was revoked). */
  disconnect(agentId: string, reason: string): void {
    this.live.get(agentId)?.ws.close(CLOSE_POLICY, reason);
  }

  /**
   * Pushes the catalog's latest policy version to every connected agent; call after each change
   * that may have bumped it. Returns at once; calls made while a push is being read fold into one
   * more push, so a burst of changes ends with every agent sent the last version.
   */
  policiesChanged(): void {
    this.pushWanted = true;
    if (this.pushRunning) return;
    this.pushRunning = true;
    void this.pushLoop();
  }

  private async pushLoop(): Promise<void> {
    while (this.pushWanted) {
      this.pushWanted = false;
      try {
        const snapshot = await readPolicySnapshot(this.options.catalog);
        if (snapshot !== undefined) for (const conn of this.live.values()) this.pushTo(conn, snapshot);
      } catch (err) {
        this.options.log('error', `pushing policies: ${(err as Error)?.stack ?? String(err)}`);
      }
    }
    // No await between the last check of pushWanted and this line: no request is lost.
    this.pushRunning = false;
  }

  /** Sends `snapshot` if the connection is welcomed and does not run or hold that version already. */
  private pushTo(conn: Connection, snapshot: PolicySnapshot): void {
    if (!conn.welcomed || snapshot.version <= conn.policyVersion || conn.ws.readyState !== conn.ws.OPEN) return;
    conn.send(policyPush(conn.nextId(), snapshot.version, snapshot.records));
    conn.policyVersion = snapshot.version;
  }

  /**
   * Sends the agent's pending commands now if it is connected to this instance; call after queueing
   * one (or on a catalog notice that another instance did). Each command goes once per connection,
   * in the catalog's order; the agent runs a command at most once, so a repeat after a reconnect is harmless.
   */
  commandsQueued(agentId: string): void {
    const conn = this.live.get(agentId);
    if (conn !== undefined && conn.welcomed) this.sendPendingCommands(conn);
  }

  /** Whether the agent has a welcomed connection to this instance. */
  isConnected(agentId: string): boolean {
    return this.live.get(agentId)?.welcomed === true;
  }

  private sendPendingCommands(conn: Connection): void {
    const agentId = conn.agentId!;
    const { catalog, log } = this.options;
    conn.commandSends = conn.commandSends
      .then(async () => {
        if (conn.ws.readyState !== conn.ws.OPEN) return;
        for (const record of await catalog.pendingCommands(agentId)) {
          if (conn.sentCommands.has(record.commandId) || conn.ws.readyState !== conn.ws.OPEN) continue;
          const message = commandMessage(conn.nextId(), record);
          if (message === undefined) {
            log('error', `command ${record.commandId} for agent ${agentId} has no vault/resource/args in the catalog; not sent`);
            conn.sentCommands.add(record.commandId);
            continue;
          }
          try {
            conn.send(message);
          } catch (err) {
            // encodeMessage refused it: the API checks commands before queueing, so this is a bug or a hand-made record.
            log('error', `command ${record.commandId} for agent ${agentId} cannot be sent: ${(err as Error).message}`);
          }
          conn.sentCommands.add(record.commandId);
        }
      })
      .catch((err) => log('error', `sending commands to agent ${agentId}: ${(err as Error)?.stack ?? String(err)}`));
  }

  /** Closes every connection with 1001 (going away). */
  close(): void {
    for (const ws of this.sockets) ws.close(1001, 'control plane shutting down');
    this.wss.close();
  }

  private accept(ws: WebSocket, address: string, releasePending: () => void): void {
    this.sockets.add(ws);
    let agentId: string | undefined;
    let sent = 0;
    let queue = Promise.resolve();
    const { catalog, clock, log } = this.options;

    const send = (message: ServerMessage): void => {
      if (ws.readyState === ws.OPEN) ws.send(encodeMessage(message));
    };
    const nextId = (): string => `cp-${++sent}`;
    const conn: Connection = { ws, welcomed: false, policyVersion: 0, send, nextId, sentCommands: new Set(), commandSends: Promise.resolve() };
    const refuse = (code: ErrorCode, message: string, inReplyTo: string | null, extra: { supportedVersions?: number[] } = {}): void => {
      send({ v: 1, type: 'error', id: nextId(), code, message, inReplyTo, ...extra });
      ws.close(CLOSE_POLICY, message.slice(0, 120));
    };

    const helloTimer = setTimeout(() => refuse('USAGE', `no hello within ${this.helloTimeoutMs} ms`, null), this.helloTimeoutMs);

    ws.on('error', (err) => log('warn', `WebSocket from ${address}${conn.agentId ? ` (${conn.agentId})` : ''}: ${err.message}`));
    ws.on('close', () => {
      clearTimeout(helloTimer);
      releasePending();
      this.sockets.delete(ws);
      const id = conn.agentId;
      if (id !== undefined && this.live.get(id) === conn) {
        this.live.delete(id);
        this.jobs.forget(id);
        queue = queue.then(() => catalog.touchAgent(id, clock.now().toISOString(), 'offline')).catch((err) =>
          log('error', `marking agent ${id} offline: ${(err as Error).message}`),
        );
      }
    });

    ws.on('message', (data: RawData, isBinary: boolean) => {
      queue = queue.then(async () => {
        if (ws.readyState !== ws.OPEN) return;
        let message: AgentMessage;
        try {
          if (isBinary) throw new ProtocolError(null, 'frame must be a text frame, not binary', { context: 'message to the control plane refused' });
          message = decodeMessage(rawText(data), 'to-server');
        } catch (err) {
          if (!(err instanceof ProtocolError)) throw err;
          send(errorReplyFor(err, nextId()));
          ws.close(CLOSE_POLICY, 'protocol error');
          return;
        }
        try {
          agentId = await this.handle(message, agentId, send, refuse, () => {
            clearTimeout(helloTimer);
            releasePending();
          }, conn);
        } catch (err) {
          log('error', `handling ${message.type} from ${agentId ?? address}: ${(err as Error)?.stack ?? String(err)}`);
          refuse('INTERNAL', 'internal error in the control plane; see its log', message.id);
        }
      }).catch((err) => log('error', `WebSocket from ${address}: ${(err as Error)?.stack ?? String(err)}`));
    });
  }

  /** Handles one decoded message; returns the connection's agent id (set by a welcomed hello). */
  private async handle(
    message: AgentMessage,
    agentId: string | undefined,
    send: (message: ServerMessage) => void,
    refuse: (code: ErrorCode, message: string, inReplyTo: string | null, extra?: { supportedVersions?: number[] }) => void,
    welcomed: () => void,
    conn: Connection,
  ): Promise<string | undefined> {
    const { catalog, clock, log } = this.options;
    const ws = conn.ws;
    if (agentId === undefined) {
      if (message.type !== 'hello') {
        refuse('USAGE', `the first message must be hello, not ${message.type}`, message.id);
        return undefined;
      }
      const agent = await catalog.getAgent(message.agentId);
      // The socket may have closed during any await of the hello: then nothing more is done for it.
      if (ws.readyState !== ws.OPEN) return undefined;
      // One answer for unknown, wrong and revoked, so the reply tells a guesser nothing.
      if (agent === undefined || agent.revokedAt !== null || !verifyAgentCredential(agent.credentialHash, message.token)) {
        log('warn', `refused hello from agent ${message.agentId}: ${agent === undefined ? 'unknown' : agent.revokedAt !== null ? 'revoked' : 'wrong credential'}`);
        refuse('PERMISSION_DENIED', 'agent credential refused: the agent is unknown, revoked or its credential is wrong; enroll it again', message.id);
        return undefined;
      }
      const version = chooseProtocolVersion(message.protocolVersions);
      if (version === undefined) {
        refuse('USAGE', `no common protocol version: this control plane speaks ${SUPPORTED_VERSIONS.join(', ')}`, message.id, {
          supportedVersions: [...SUPPORTED_VERSIONS],
        });
        return undefined;
      }
      welcomed();
      // Registered before the next await, and conn.agentId with it, so the close handler sees it.
      const previous = this.live.get(agent.agentId);
      this.live.set(agent.agentId, conn);
      conn.agentId = agent.agentId;
      previous?.ws.close(1000, 'replaced by a newer connection of the same agent');
      // A revoke between the read above and the registration would not have found this connection
      // to close: read again now that it is registered (a revoke from now on finds it).
      const current = await catalog.getAgent(agent.agentId);
      if (ws.readyState !== ws.OPEN) return agent.agentId;
      if (current === undefined || current.revokedAt !== null) {
        log('warn', `refused hello from agent ${agent.agentId}: revoked while it connected`);
        refuse('PERMISSION_DENIED', 'agent credential refused: the agent is unknown, revoked or its credential is wrong; enroll it again', message.id);
        return agent.agentId;
      }
      const now = clock.now();
      await catalog.touchAgent(agent.agentId, now.toISOString(), 'online');
      if (ws.readyState !== ws.OPEN) return agent.agentId;
      send({
        v: 1,
        type: 'welcome',
        id: `cp-welcome`,
        agentId: agent.agentId,
        serverTime: now.toISOString(),
        heartbeatSeconds: this.heartbeatSeconds,
        protocolVersion: version,
      });
      conn.welcomed = true;
      conn.policyVersion = message.policyVersion ?? 0;
      log('info', `agent ${agent.agentId} connected`);
      // Read after `welcomed` is set: a change from now on is pushed by policiesChanged, one before
      // it is in this snapshot, so the agent misses none.
      // A failed read leaves the connection up: the next change pushes again.
      try {
        const snapshot = await readPolicySnapshot(catalog);
        const catalogVersion = snapshot?.version ?? 0;
        if (message.policyVersion !== null && message.policyVersion > catalogVersion && conn.policyVersion === message.policyVersion) {
          // The agent runs a version this catalog never had (another control plane's, or a catalog
          // restored or moved to PostgreSQL): treat it as unknown, so the latest is pushed. The agent
          // takes the first push after its welcome even when that version is lower (protocol README).
          log('warn', `agent ${agent.agentId} runs policy version ${message.policyVersion}, above this catalog's ${catalogVersion}: it gets this catalog's policies`);
          conn.policyVersion = 0;
        }
        if (snapshot !== undefined && ws.readyState === ws.OPEN) this.pushTo(conn, snapshot);
      } catch (err) {
        log('error', `pushing policies to agent ${agent.agentId}: ${(err as Error)?.stack ?? String(err)}`);
      }
      this.sendPendingCommands(conn);
      return agent.agentId;
    }

    switch (message.type) {
      case 'hello':
        refuse('USAGE', 'hello was sent twice on one connection', message.id);
        return agentId;
      case 'heartbeat': {
        // Another instance may have revoked the agent (its disconnect reaches only its own
        // connections): every heartbeat reads the record again.
        const agent = await catalog.getAgent(agentId);
        if (agent === undefined || agent.revokedAt !== null) {
          log('warn', `closing the connection of agent ${agentId}: it was revoked`);
          refuse('PERMISSION_DENIED', 'agent credential refused: the agent is unknown, revoked or its credential is wrong; enroll it again', message.id);
          return agentId;
        }
        await catalog.touchAgent(agentId, clock.now().toISOString(), 'online');
        this.jobs.heartbeat(agentId, message.jobs, clock.now().toISOString());
        // Catches up on `commands` notices lost between instances: only commands not yet sent on this connection go.
        this.sendPendingCommands(conn);
        return agentId;
      }
      case 'policy-ack':
        await catalog.touchAgent(agentId, clock.now().toISOString(), 'online');
        if (message.error === null) await catalog.setAgentPolicyAck(agentId, message.version);
        else log('warn', `agent ${agentId} refused policy version ${message.version}: ${message.error.message}`);
        return agentId;
      case 'job-progress':
        this.jobs.progress(agentId, message, clock.now().toISOString());
        return agentId;
      case 'resources': {
        await catalog.touchAgent(agentId, clock.now().toISOString(), 'online');
        const conflicts = await catalog.replaceAgentResources(
          agentId,
          message.resources.map((r) => ({ name: r.name, vault: r.vault, disks: [...r.disks] })),
        );
        for (const c of conflicts) {
          log('warn', `agent ${agentId} reported resource ${c.name}, which agent ${c.heldBy} holds; it stays with ${c.heldBy} (revoke ${c.heldBy} to move it, or rename the resource)`);
        }
        return agentId;
      }
      case 'job-result':
        await this.storeThenAck(agentId, message, conn, () => this.storeJobResult(agentId, message));
        this.jobs.finished(agentId, message.jobId);
        return agentId;
      case 'catalog-sync':
        await this.storeThenAck(agentId, message, conn, () => this.storeSyncPart(agentId, message));
        return agentId;
      default:
        await catalog.touchAgent(agentId, clock.now().toISOString(), 'online');
        return agentId;
    }
  }

  /**
   * The durable outbox's server side: `store` first, then `ack`. Store steps are idempotent, so a
   * repeated message is stored once and acked again.
   * - A failure a re-send may cure (BUSY, STORE_UNAVAILABLE, anything unexpected) gets no ack and the
   *   connection is closed with 1013, so the agent reconnects and sends its outbox again.
   * - A refusal a re-send cannot cure (USAGE, ALREADY_EXISTS, NOT_FOUND) is logged, answered with an
   *   `error` naming the message, and acked so the agent's outbox drains: a job-result is still kept
   *   (without its backup) and completes its command with a result saying why the backup was not
   *   catalogued; a catalog-sync part is dropped.
   */
  private async storeThenAck(agentId: string, message: JobResultMessage | CatalogSyncMessage, conn: Connection, store: () => Promise<void>): Promise<void> {
    const { catalog, clock, log } = this.options;
    try {
      await catalog.touchAgent(agentId, clock.now().toISOString(), 'online');
      await store();
    } catch (err) {
      if (!isPermanentRefusal(err)) {
        log('error', `${message.type} ${message.id} from agent ${agentId} not stored (closing with 1013; the agent sends it again): ${(err as Error)?.stack ?? String(err)}`);
        conn.ws.close(CLOSE_TRY_AGAIN_LATER, 'the catalog could not store a message; reconnect and send it again');
        return;
      }
      log('error', `${message.type} ${message.id} from agent ${agentId} refused by the catalog (acked, not stored): ${(err as CairnError).message}`);
      if (message.type === 'job-result') {
        try {
          await this.storeRefusedJobResult(agentId, message, err as CairnError);
        } catch (again) {
          if (!isPermanentRefusal(again)) {
            log('error', `job-result ${message.id} from agent ${agentId}: recording its refusal failed (closing with 1013): ${(again as Error)?.stack ?? String(again)}`);
            conn.ws.close(CLOSE_TRY_AGAIN_LATER, 'the catalog could not store a message; reconnect and send it again');
            return;
          }
          log('error', `job-result ${message.id} from agent ${agentId}: its job result is refused too (acked, not stored): ${again.message}`);
        }
      }
      conn.send({ v: 1, type: 'error', id: conn.nextId(), code: (err as CairnError).code, message: `${message.type} not stored: ${(err as CairnError).message}`.slice(0, 1024), inReplyTo: message.id });
    }
    conn.send({ v: 1, type: 'ack', id: conn.nextId(), messageId: message.id });
  }

  private async storeJobResult(agentId: string, message: JobResultMessage): Promise<void> {
    const { catalog } = this.options;
    if (message.backup !== null) {
      await catalog.ensureVault(message.backup.vault);
      // A job-result says the backup was made, not that it still exists: for a known backup the
      // catalog keeps its status, so a re-sent (or late) result does not undo a deletion.
      await catalog.recordBackup(backupInput(message.backup, agentId), { keepStatus: true });
    }
    await this.recordResultAndComplete(agentId, message, message.backup?.id ?? null, { status: message.status, backup: message.backup, error: message.error });
  }

  /** A job-result whose backup the catalog refused: the job and its command are still recorded, the result says why. */
  private async storeRefusedJobResult(agentId: string, message: JobResultMessage, refusal: CairnError): Promise<void> {
    const notCatalogued = {
      code: refusal.code,
      message: `backup ${message.backup?.id ?? '(none)'} could not be catalogued: ${refusal.message}`.slice(0, 1024),
    };
    await this.recordResultAndComplete(agentId, message, null, {
      status: message.status,
      backup: message.backup,
      error: message.error,
      catalogError: notCatalogued,
    });
  }

  private async recordResultAndComplete(agentId: string, message: JobResultMessage, backupId: string | null, result: Record<string, unknown>): Promise<void> {
    const { catalog, clock, log } = this.options;
    const now = clock.now().toISOString();
    await catalog.recordJobResult({
      agentId,
      jobId: message.jobId,
      commandId: message.commandId,
      status: message.status,
      backupId,
      errorCode: message.error?.code ?? null,
      errorMessage: message.error?.message ?? null,
      receivedAt: now,
    });
    if (message.commandId === null) return;
    const command = await catalog.getCommand(message.commandId);
    if (command === undefined || command.agentId !== agentId) {
      log('warn', `agent ${agentId} reported a result for command ${message.commandId}, which ${command === undefined ? 'is unknown' : 'belongs to another agent'}; result kept, no command completed`);
      return;
    }
    await catalog.completeCommand(command.commandId, result as unknown as JsonValue, now);
    const deleted = storedArgs(command)?.args.backupId;
    if (command.action === 'delete' && message.status === 'ok' && typeof deleted === 'string') await this.markDeletedBy(agentId, deleted, now);
  }

  /**
   * A `delete` the agent says it carried out: the backup is marked deleted only when the catalog
   * says this agent made it or holds its resource, so an agent cannot strike another's backups.
   */
  private async markDeletedBy(agentId: string, backupId: string, at: string): Promise<void> {
    const { catalog, log } = this.options;
    const backup = await catalog.getBackup(backupId);
    if (backup === undefined) return;
    const holds = backup.agentId === agentId || (await catalog.listResources({ agentId })).some((r) => r.name === backup.resource);
    if (!holds) {
      log('warn', `agent ${agentId} reported deleting backup ${backupId}, which is neither its own nor of a resource it holds; not marked deleted`);
      return;
    }
    await catalog.markBackupDeleted(backupId, at);
  }

  private async storeSyncPart(agentId: string, message: CatalogSyncMessage): Promise<void> {
    const { catalog, clock, log } = this.options;
    // Only an agent protecting something in the vault may rebuild its catalog (a sync marks every
    // backup it does not list deleted). Others are acked, so their outbox drains, and ignored.
    if ((await catalog.listResources({ agentId, vault: message.vault })).length === 0) {
      log('warn', `ignored catalog-sync ${message.syncId} part ${message.part} of vault ${message.vault} from agent ${agentId}: it holds no resource in that vault`);
      return;
    }
    const owners = new Map((await catalog.listResources()).map((r) => [r.name, r.agentId]));
    const backups: ScannedBackup[] = message.backups.map((b) => {
      const { status: _status, deletedAt: _deletedAt, ...scanned } = backupInput(b, owners.get(b.resource) ?? null);
      return scanned;
    });
    const summary = await catalog.addSyncPart(
      { agentId, syncId: message.syncId, vault: message.vault, part: message.part, last: message.last, backups },
      clock.now().toISOString(),
    );
    if (summary !== null) {
      log('info', `vault ${message.vault} catalog rebuilt from agent ${agentId}'s scan ${message.syncId}: ${summary.added} added, ${summary.restored} restored, ${summary.deleted} marked deleted`);
    }
  }
}

/** A refusal of the content that sending the same message again cannot cure. */
function isPermanentRefusal(err: unknown): err is CairnError {
  return isCairnError(err) && !err.retryable && (err.code === 'USAGE' || err.code === 'ALREADY_EXISTS' || err.code === 'NOT_FOUND');
}

/** A backup as an agent reported it, for the catalog. */
function backupInput(b: BackupSummary, agentId: string | null): BackupInput {
  return {
    id: b.id,
    name: b.name,
    vault: b.vault,
    resource: b.resource,
    agentId,
    kind: b.kind,
    startedAt: b.startedAt,
    finishedAt: b.finishedAt,
    bytesRead: b.bytesRead,
    bytesStored: b.bytesStored,
    consistency: b.consistency ?? 'crash_consistent',
    logicalBytes: b.logicalBytes ?? null,
    host: b.host ?? null,
    status: 'available',
    deletedAt: null,
  };
}

function rawText(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

function refuseUpgrade(socket: Duplex, status: number, text: string): void {
  socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
}
