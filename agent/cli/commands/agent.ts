import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CairnError } from '../../../shared/errors.js';
import { onInterrupt } from '../../../shared/interrupt.js';
import { loadAgentConfig } from '../../daemon/config.js';
import { AgentDaemon } from '../../daemon/daemon.js';
import { collectInventory } from '../../daemon/inventory.js';
import { createLogger } from '../../daemon/log.js';
import type { AgentStatus } from '../../daemon/status.js';
import { startStatusServer } from '../../daemon/status-server.js';
import { formatStatus } from '../../daemon/status-text.js';
import { StateStore } from '../../state/state-store.js';
import { parse } from '../args.js';
import { readPassphrase } from '../context.js';
import { cairnVersion } from '../version.js';

export const agentHelp = `Usage:
  cairn agent run --config FILE [--now RESOURCE]
  cairn agent status [--config FILE | --address HOST:PORT] [--json]

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
  const state = new StateStore(join(config.stateDir, 'agent.sqlite'));
  const log = createLogger({ dir: config.logDir });
  const daemon = new AgentDaemon(config, { state, log, agentId: agentId(config.stateDir), version: cairnVersion(), inventory: await collectInventory().catch(() => null) });
  const server = await startStatusServer(daemon, { host: config.status.host, port: config.status.port, log: (m: string) => log.warn(m) });
  log.info('status endpoint listening', { url: server.url });
  daemon.start();
  for (const r of values.now ?? []) daemon.runNow(r);

  process.on('SIGHUP', () => {
    try {
      daemon.reload(loadAgentConfig(configPath));
      log.info('configuration reloaded', { config: configPath });
    } catch (err) {
      log.error('configuration not reloaded; the previous one stays in force', { error: (err as Error).message });
    }
  });
  await new Promise<void>((resolve) => {
    onInterrupt(async () => {
      daemon.stop();
      log.info('agent stopping');
      await server.close().catch(() => undefined);
      await log.close?.();
      resolve();
    });
  });
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
