import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { CairnError } from '../../shared/errors.js';
import { validateRetentionRule, type RetentionRule } from '../policy/retention.js';
import { parseSchedule, type Schedule, type ScheduleSpec } from '../policy/trigger.js';
import { parseDuration } from '../cli/args.js';
import type { QuiesceOptions } from '../quiesce/quiesce.js';

/**
 * The agent's one configuration file (JSON; `agent/daemon/example-config.json` is the documented
 * example). Everything is checked before the daemon starts anything: an error names the file, the
 * key and what is wrong. Relative paths are relative to the file's folder.
 */

export interface VaultConfig {
  name: string;
  url: string;
  passphraseFile: string;
}

export interface ResourceConfig {
  name: string;
  vault: string;
  /** Sources as `cairn backup` takes them: paths, nbd+unix://, qmp+unix:// URLs. One backup holds all. */
  disks: string[];
  quiesce: QuiesceOptions | undefined;
  requireAppConsistent: boolean;
}

export interface PolicyConfig {
  name: string;
  /**
   * Where the policy comes from; absent: the config file. A pushed policy is kept apart from a
   * config policy of the same name (both apply): its schedule marks and job history say `cp:<name>`.
   */
  origin?: 'config' | 'control-plane';
  enabled: boolean;
  /** Vaults the policy applies to: every resource of these vaults is backed up on its schedule. */
  vaults: string[];
  schedule: Schedule;
  scheduleSpec: ScheduleSpec;
  retention: RetentionRule;
}

export interface AgentConfig {
  path: string;
  stateDir: string;
  logDir: string;
  status: { host: string; port: number };
  /** Jobs run at once (never two on one resource). */
  concurrency: number;
  vaults: Map<string, VaultConfig>;
  resources: Map<string, ResourceConfig>;
  policies: Map<string, PolicyConfig>;
  /** Garbage collection of every vault, on its own schedule (after pruning); undefined: never. */
  gc: { schedule: Schedule } | undefined;
}

type Json = Record<string, unknown>;

export function loadAgentConfig(path: string): AgentConfig {
  const file = resolve(path);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new CairnError('CONFIG_INVALID', `cannot read the agent config ${file}: ${(err as Error).message}`, { cause: err });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new CairnError('CONFIG_INVALID', `agent config ${file} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  return parseAgentConfig(raw, file);
}

export function parseAgentConfig(raw: unknown, file: string): AgentConfig {
  const base = dirname(file);
  const bad = (key: string, what: string): CairnError => new CairnError('CONFIG_INVALID', `agent config ${file}: '${key}' ${what}`);
  const obj = (v: unknown, key: string): Json => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad(key, 'must be an object');
    return v as Json;
  };
  const str = (v: unknown, key: string): string => {
    if (typeof v !== 'string' || v === '') throw bad(key, 'must be a non-empty string');
    return v;
  };
  const strings = (v: unknown, key: string): string[] => {
    if (v === undefined) return [];
    if (!Array.isArray(v)) throw bad(key, 'must be a list of strings');
    return v.map((x, i) => str(x, `${key}[${i}]`));
  };
  const known = (o: Json, key: string, keys: string[]): void => {
    for (const k of Object.keys(o)) if (!keys.includes(k)) throw bad(`${key ? `${key}.` : ''}${k}`, `is not a known key (known: ${keys.join(', ')})`);
  };
  const path = (v: unknown, key: string): string => resolve(base, str(v, key));

  const top = obj(raw, '(top level)');
  known(top, '', ['stateDir', 'logDir', 'status', 'concurrency', 'vaults', 'resources', 'policies', 'gc']);
  const status = top.status === undefined ? {} : obj(top.status, 'status');
  known(status, 'status', ['host', 'port']);
  const port = status.port ?? 7480;
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65535) throw bad('status.port', 'must be a port number from 0 to 65535');
  const concurrency = top.concurrency ?? 1;
  if (typeof concurrency !== 'number' || !Number.isInteger(concurrency) || concurrency < 1 || concurrency > 16) {
    throw bad('concurrency', 'must be a whole number from 1 to 16');
  }

  const vaults = new Map<string, VaultConfig>();
  for (const [name, v] of Object.entries(obj(top.vaults ?? {}, 'vaults'))) {
    const key = `vaults.${name}`;
    const o = obj(v, key);
    known(o, key, ['url', 'passphraseFile']);
    const url = str(o.url, `${key}.url`);
    vaults.set(name, {
      name,
      url: /^[a-z][a-z0-9+.-]*:\/\//i.test(url) ? url : resolve(base, url),
      passphraseFile: path(o.passphraseFile, `${key}.passphraseFile`),
    });
  }
  // No vaults is allowed: a freshly installed agent runs, serves its status and can be enrolled
  // before anyone has configured what it backs up.
  const vaultName = (v: unknown, key: string): string => {
    const name = str(v, key);
    if (!vaults.has(name)) throw bad(key, `names vault '${name}', which is not under 'vaults' (known: ${[...vaults.keys()].join(', ')})`);
    return name;
  };

  const resources = new Map<string, ResourceConfig>();
  for (const [name, v] of Object.entries(obj(top.resources ?? {}, 'resources'))) {
    const key = `resources.${name}`;
    const o = obj(v, key);
    known(o, key, ['vault', 'disks', 'quiesce']);
    const disks = strings(o.disks, `${key}.disks`).map((d) => (/^[a-z][a-z0-9+.-]*:\/\//i.test(d) ? d : resolve(base, d)));
    if (disks.length === 0) throw bad(`${key}.disks`, 'must list at least one disk');
    let quiesce: QuiesceOptions | undefined;
    let requireAppConsistent = false;
    if (o.quiesce !== undefined) {
      const q = obj(o.quiesce, `${key}.quiesce`);
      known(q, `${key}.quiesce`, ['preFreeze', 'postThaw', 'freeze', 'hookTimeout', 'freezeTimeout', 'requireAppConsistent']);
      const duration = (d: unknown, k: string): number | undefined => {
        if (d === undefined) return undefined;
        try {
          return parseDuration(str(d, k), k);
        } catch {
          throw bad(k, `is not a duration; write e.g. 30s or 2m`);
        }
      };
      quiesce = {
        preFreeze: strings(q.preFreeze, `${key}.quiesce.preFreeze`).map((p) => resolve(base, p)),
        postThaw: strings(q.postThaw, `${key}.quiesce.postThaw`).map((p) => resolve(base, p)),
        freeze: strings(q.freeze, `${key}.quiesce.freeze`),
        hookTimeoutMs: duration(q.hookTimeout, `${key}.quiesce.hookTimeout`),
        freezeTimeoutMs: duration(q.freezeTimeout, `${key}.quiesce.freezeTimeout`),
      };
      if (q.requireAppConsistent !== undefined && typeof q.requireAppConsistent !== 'boolean') throw bad(`${key}.quiesce.requireAppConsistent`, 'must be true or false');
      requireAppConsistent = q.requireAppConsistent === true;
    }
    resources.set(name, { name, vault: vaultName(o.vault, `${key}.vault`), disks, quiesce, requireAppConsistent });
  }

  const schedule = (v: unknown, key: string): { schedule: Schedule; spec: ScheduleSpec } => {
    const o = obj(v, key);
    known(o, key, ['patterns', 'cron', 'timezone']);
    const spec: ScheduleSpec = {
      patterns: o.patterns === undefined ? undefined : strings(o.patterns, `${key}.patterns`),
      cron: o.cron === undefined ? undefined : str(o.cron, `${key}.cron`),
      timezone: o.timezone === undefined ? 'UTC' : str(o.timezone, `${key}.timezone`),
    };
    if (!spec.patterns?.length && !spec.cron) throw bad(key, "needs 'patterns' (e.g. [\"FREQ=DAILY;INTERVAL=1;BYHOUR=2;BYMINUTE=00\"]) or 'cron'");
    try {
      return { schedule: parseSchedule(spec), spec };
    } catch (err) {
      throw bad(key, `is not a valid schedule: ${(err as Error).message}`);
    }
  };

  const policies = new Map<string, PolicyConfig>();
  for (const [name, v] of Object.entries(obj(top.policies ?? {}, 'policies'))) {
    const key = `policies.${name}`;
    const o = obj(v, key);
    known(o, key, ['enabled', 'vaults', 'trigger', 'retention']);
    if (o.enabled !== undefined && typeof o.enabled !== 'boolean') throw bad(`${key}.enabled`, 'must be true or false');
    const policyVaults = strings(o.vaults, `${key}.vaults`).map((n, i) => vaultName(n, `${key}.vaults[${i}]`));
    if (policyVaults.length === 0) throw bad(`${key}.vaults`, 'must name at least one vault');
    const { schedule: sched, spec } = schedule(o.trigger, `${key}.trigger`);
    const retention = (o.retention === undefined ? {} : obj(o.retention, `${key}.retention`)) as RetentionRule;
    try {
      validateRetentionRule(retention);
    } catch (err) {
      throw bad(`${key}.retention`, `is not valid: ${(err as Error).message}`);
    }
    policies.set(name, { name, enabled: o.enabled !== false, vaults: policyVaults, schedule: sched, scheduleSpec: spec, retention });
  }

  let gc: AgentConfig['gc'];
  if (top.gc !== undefined) {
    const g = obj(top.gc, 'gc');
    known(g, 'gc', ['trigger']);
    gc = { schedule: schedule(g.trigger, 'gc.trigger').schedule };
  }

  return {
    path: file,
    stateDir: top.stateDir === undefined ? resolve(base, 'state') : path(top.stateDir, 'stateDir'),
    logDir: top.logDir === undefined ? resolve(base, 'log') : path(top.logDir, 'logDir'),
    status: { host: status.host === undefined ? '127.0.0.1' : str(status.host, 'status.host'), port },
    concurrency,
    vaults,
    resources,
    policies,
    gc,
  };
}
