import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { CairnError } from '../../../shared/errors.js';
import { onInterrupt } from '../../../shared/interrupt.js';
import { loadAgentConfig } from '../../daemon/config.js';
import { AgentDaemon } from '../../daemon/daemon.js';
import { collectInventory } from '../../daemon/inventory.js';
import { createLogger } from '../../daemon/log.js';
import { ControlPlaneSession } from '../../link/control-plane-session.js';
import { CONTROL_PLANE_FILE, enrollAgent, loadControlPlaneState } from '../../link/enroll.js';
import { parseEnrollmentToken } from '../../../shared/protocol/enrollment-token.js';
import type { AgentStatus } from '../../daemon/status.js';
import { startStatusServer } from '../../daemon/status-server.js';
import { formatStatus } from '../../daemon/status-text.js';
import { StateStore } from '../../state/state-store.js';
import { parse } from '../args.js';
import { readPassphrase } from '../context.js';
import { cairnVersion } from '../../../shared/runtime/version.js';

export const agentHelp = `Usage:
  cairn agent enroll TOKEN --config FILE
  cairn agent run --config FILE [--now RESOURCE]
  cairn agent status [--config FILE | --address HOST:PORT] [--json]

'enroll' registers this agent with the control plane an enrollment token (from the console or
'POST /v1/enrollment-tokens') names, and stores the agent's credential in the config's stateDir
(control-plane.json, readable by the owner only). A token works once, and only until it expires.
From then on 'run' keeps a link to the control plane: it runs the policies the control plane pushes
besides the config's, answers its commands (backup now, restore, verify, delete) and reports every
job and each vault's backups; while the control plane is away it keeps running the last policies it
accepted and sends the results once it is back.

'run' is the agent daemon: it backs up every resource of a vault on the schedules of the policies
applied to that vault (backups named autobk_...), prunes them by the policies' retention, runs vault
gc on its own schedule, catches up a run missed while it was down, and serves a status endpoint
(GET /healthz, /status, /metrics) on 127.0.0.1. SIGTERM stops it cleanly (running backups are
cancelled, file systems thawed, vaults consistent); SIGHUP reloads the config (a bad one is logged
and the old one kept). The config file is JSON: see agent/daemon/README.md for every key.
  --now RESOURCE  also back up RESOURCE once at start
'status' asks a running agent for its status (the address comes from the config's status.port).`;

export async function agentCommand(argv: string[], out: (s: string) => void): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === '--help' || sub === '-h' || sub === 'help') return (out(agentHelp), 0);
  if (sub === 'enroll') return enroll(rest, out);
  if (sub === 'run') return run(rest, out);
  if (sub === 'status') return status(rest, out);
  throw new CairnError('USAGE', `unknown command 'cairn agent ${sub}'; see 'cairn agent --help'`);
}

async function run(argv: string[], out: (s: string) => void): Promise<number> {
  const { values, positionals } = parse('agent run', argv, {
    config: { type: 'string' },
    now: { type: 'string', multiple: true },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) return (out(agentHelp), 0);
  if (positionals.length) throw new CairnError('USAGE', `agent run: unexpected argument '${positionals[0]}'`);
  if (!values.config) throw new CairnError('USAGE', "agent run: --config FILE is required; see 'cairn agent --help'");
  const configPath = values.config;
  const config = loadAgentConfig(configPath);
  for (const r of values.now ?? []) {
    if (!config.resources.has(r)) throw new CairnError('USAGE', `agent run: --now names resource '${r}', which is not in ${config.path}`);
  }
  for (const v of config.vaults.values()) {
    try {
      readPassphrase(v.passphraseFile);
    } catch (err) {
      throw new CairnError('CONFIG_INVALID', `agent config ${config.path}: 'vaults.${v.name}.passphraseFile': ${(err as Error).message}`, { cause: err });
    }
  }
  const controlPlane = await loadControlPlaneState(config.stateDir);
  const state = new StateStore(join(config.stateDir, 'agent.sqlite'));
  const log = createLogger({ dir: config.logDir });
  const inventory = await collectInventory().catch(() => null);
  let session: ControlPlaneSession | undefined;
  const daemon = new AgentDaemon(config, {
    state,
    log,
    agentId: agentId(config.stateDir),
    version: cairnVersion(),
    inventory,
    events: {
      jobFinished: (f) => session?.jobFinished(f),
      jobProgress: (j) => session?.jobProgress(j),
      vaultChanged: (v) => session?.vaultChanged(v),
    },
    controlPlane: () => session?.status() ?? { state: 'not-configured', url: null },
  });
  const server = await startStatusServer(daemon, { host: config.status.host, port: config.status.port, log: (m: string) => log.warn(m) });
  log.info('status endpoint listening', { url: server.url });
  if (controlPlane) {
    session = new ControlPlaneSession({ daemon, store: state, state: controlPlane, agentVersion: cairnVersion(), inventory, log });
    session.start();
  }
  daemon.start();
  for (const r of values.now ?? []) daemon.runNow(r);

  process.on('SIGHUP', () => {
    try {
      daemon.reload(loadAgentConfig(configPath));
      log.info('configuration reloaded', { config: configPath });
      session?.configReloaded();
    } catch (err) {
      log.error('configuration not reloaded; the previous one stays in force', { error: (err as Error).message });
    }
  });
  await new Promise<void>((resolve) => {
    onInterrupt(async () => {
      daemon.stop();
      log.info('agent stopping');
      await session?.close().catch(() => undefined);
      await server.close().catch(() => undefined);
      await log.close?.();
      resolve();
    });
  });
  return 0;
}

async function enroll(argv: string[], out: (s: string) => void): Promise<number> {
  const { values, positionals } = parse('agent enroll', argv, {
    config: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) return (out(agentHelp), 0);
  if (positionals.length !== 1) throw new CairnError('USAGE', "agent enroll: give exactly one enrollment token; see 'cairn agent --help'");
  if (!values.config) throw new CairnError('USAGE', "agent enroll: --config FILE is required (the credential goes into its stateDir); see 'cairn agent --help'");
  const config = loadAgentConfig(values.config);
  parseEnrollmentToken(positionals[0]!); // a damaged or expired token fails before the inventory is collected
  const inventory = await collectInventory().catch(() => null);
  const state = await enrollAgent({ token: positionals[0]!, stateDir: config.stateDir, hostname: inventory?.hostname ?? hostname(), inventory });
  out(`enrolled as ${state.agentId} with the control plane at ${state.controlPlaneUrl}`);
  out(`credential stored in ${join(config.stateDir, CONTROL_PLANE_FILE)} (owner only); start or restart 'cairn agent run --config ${values.config}' to connect`);
  return 0;
}

async function status(argv: string[], out: (s: string) => void): Promise<number> {
  const { values, positionals } = parse('agent status', argv, {
    config: { type: 'string' },
    address: { type: 'string' },
    json: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) return (out(agentHelp), 0);
  if (positionals.length) throw new CairnError('USAGE', `agent status: unexpected argument '${positionals[0]}'`);
  let address = values.address;
  if (!address) {
    if (!values.config) throw new CairnError('USAGE', 'agent status: give --config FILE (the agent\'s config) or --address HOST:PORT');
    const c = loadAgentConfig(values.config);
    address = `${c.status.host}:${c.status.port}`;
  }
  const url = `http://${address}/status`;
  let body: AgentStatus;
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    body = (await res.json()) as AgentStatus;
  } catch (err) {
    throw new CairnError('NOT_FOUND', `no agent answers at ${url} (${(err as Error).message}); is 'cairn agent run' running with that status address?`, { cause: err });
  }
  out(values.json ? JSON.stringify(body) : formatStatus(body));
  return 0;
}

/** A stable id for this agent, kept in its state folder. */
function agentId(stateDir: string): string {
  const file = join(stateDir, 'agent-id');
  try {
    return readFileSync(file, 'utf8').trim();
  } catch {
    mkdirSync(stateDir, { recursive: true });
    const id = `agent-${randomBytes(8).toString('hex')}`;
    writeFileSync(file, id + '\n');
    return id;
  }
}
