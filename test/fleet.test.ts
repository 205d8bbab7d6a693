import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { call, type Reply } from '../control-plane/server/test-client.js';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { GetObjectCommand } from '@aws-sdk/client-s3';

import { cliPath, expectOk, makeImage, MiB, PASSPHRASE, runCli, s3Target, Sandbox, sha256File, unusedPort, waitFor as waitForValue } from './helpers.js';

/**
 * A fleet as an admin runs it, every part a real process: `cairn control-plane run` on port 0 and
 * three `cairn agent run` agents enrolled over HTTPS and linked over WSS, each protecting its own disk
 * into one shared vault. A policy made through the API reaches all three and they back up on its
 * schedule; an agent stopped while the policy changes gets the new version when it returns; the
 * catalog lists every agent's backups with the right vault, resource and kind; a one-off backup and a
 * restore run through the control plane; a revoked agent is refused.
 */

const AGENTS = 3;

interface RunningProcess {
  child: ChildProcess;
  output: string;
}

interface Agent {
  index: number;
  resource: string;
  image: string;
  configPath: string;
  statusPort: number;
  agentId: string;
  process?: RunningProcess;
}

let sb: Sandbox;
let vault: string;
let cp: RunningProcess;
let endpoint: { url: string; caCertPem: string };
let admin: string;
const agents: Agent[] = [];

function start(args: string[]): RunningProcess {
  const child = spawn(process.execPath, [cliPath, ...args], {
    cwd: sb.dir,
    // The S3 test server's credentials: an agent restores to the cloud with the host's AWS credentials.
    env: { ...process.env, ...s3Target.env, CAIRN_PASSPHRASE: undefined, CAIRN_CONTROL_PLANE_DIR: undefined, JOURNAL_STREAM: undefined, INVOCATION_ID: undefined },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const running: RunningProcess = { child, output: '' };
  child.stdout!.on('data', (d: Buffer) => (running.output += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (running.output += d.toString()));
  return running;
}

async function stop(p: RunningProcess | undefined): Promise<void> {
  if (!p || p.child.exitCode !== null || p.child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => p.child.once('exit', () => resolve()));
  p.child.kill('SIGTERM');
  const timer = setTimeout(() => p.child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/** Everything the processes printed, for a failure message. */
function outputs(): string {
  return [`control plane:\n${cp?.output ?? ''}`, ...agents.map((a) => `agent ${a.index}:\n${a.process?.output ?? ''}`)].join('\n');
}

function waitFor<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  return waitForValue(what, check, timeoutMs, outputs, 100);
}

async function api(method: string, path: string, body?: unknown): Promise<Reply> {
  return call(endpoint, method, path, { token: admin, body });
}

async function ok(method: string, path: string, body?: unknown): Promise<any> {
  const reply = await api(method, path, body);
  if (reply.status >= 300) throw new Error(`${method} ${path}: ${reply.status} ${reply.text}`);
  return reply.body;
}

async function agentStatus(a: Agent): Promise<any> {
  const res = await fetch(`http://127.0.0.1:${a.statusPort}/status`);
  return res.json();
}

async function agentRecords(): Promise<Map<string, any>> {
  const { agents: list } = await ok('GET', '/v1/agents');
  return new Map((list as any[]).map((r) => [r.agentId as string, r]));
}

beforeAll(async () => {
  sb = await Sandbox.create('fleet');
  vault = await sb.initVault('shared-vault');
  await writeFile(sb.path('vault.pass'), PASSPHRASE + '\n');

  cp = start(['control-plane', 'run', '--data-dir', sb.path('cp'), '--listen', '127.0.0.1:0']);
  const url = await waitFor('the control plane to listen', async () => /listening on (https:\/\/\S+)/.exec(cp.output)?.[1], 30_000);
  admin = await waitFor('the admin token', async () => /admin token[^:]*: (\S+)/.exec(cp.output)?.[1], 5_000);
  endpoint = { url, caCertPem: await readFile(sb.path('cp', 'pki', 'ca.crt'), 'utf8') };
  await ok('PUT', '/v1/vaults/shared', { type: 'disk', location: vault, capacityBytes: 1024 * MiB });

  for (let index = 1; index <= AGENTS; index++) {
    const image = sb.path(`host${index}.img`);
    await makeImage(image, [
      { kind: 'random', length: 3 * MiB },
      { kind: 'hole', length: 2 * MiB },
      { kind: 'text', length: 3 * MiB },
    ]);
    const statusPort = await unusedPort();
    const resource = `host${index}-disk`;
    const configPath = sb.path(`agent${index}.json`);
    await writeFile(
      configPath,
      JSON.stringify({
        stateDir: `agent${index}/state`,
        logDir: `agent${index}/log`,
        status: { port: statusPort },
        vaults: { shared: { url: vault, passphraseFile: 'vault.pass' } },
        resources: { [resource]: { vault: 'shared', disks: [image] } },
      }),
    );
    const token = await runCli(['control-plane', 'token', 'create', '--ttl', '10m', '--data-dir', sb.path('cp')], { cwd: sb.dir });
    expectOk(token);
    const enrolled = await runCli(['agent', 'enroll', token.stdout.trim(), '--config', configPath], { cwd: sb.dir });
    expectOk(enrolled);
    agents.push({ index, resource, image, configPath, statusPort, agentId: '' });
  }
  // The ids come from the control plane; each agent's own status names its id.
  const records = await agentRecords();
  expect(records.size).toBe(AGENTS);
  for (const a of agents) {
    a.process = start(['agent', 'run', '--config', a.configPath]);
    a.agentId = await waitFor(`agent ${a.index} to link`, async () => {
      const s = await agentStatus(a);
      return s.controlPlane?.state === 'connected' ? (s.controlPlane.agentId as string) : undefined;
    });
    expect(records.has(a.agentId)).toBe(true);
  }
}, 180_000);

afterAll(async () => {
  await Promise.all(agents.map((a) => stop(a.process)));
  await stop(cp);
  if (process.env.CAIRN_FLEET_LOG) await writeFile(process.env.CAIRN_FLEET_LOG, outputs());
  await sb?.cleanup();
});

describe('a control plane and three agents', () => {
  it('lists every agent online with its inventory, and every resource with its agent and vault', async () => {
    await waitFor('three agents online', async () => {
      const records = await agentRecords();
      return [...records.values()].every((r) => r.status === 'online') ? true : undefined;
    });
    const records = await agentRecords();
    for (const a of agents) expect(records.get(a.agentId)?.inventory?.hostname).toBeTruthy();
    const resources = await waitFor('three resources', async () => {
      const { resources: list } = await ok('GET', '/v1/resources?vault=shared');
      return list.length === AGENTS ? (list as any[]) : undefined;
    });
    expect(resources.map((r) => [r.name, r.agentId, r.vault]).sort()).toEqual(
      agents.map((a) => [a.resource, a.agentId, 'shared']).sort(),
    );
  });

  it('pushes a policy made through the API to all three, which back up on its schedule into the shared vault', async () => {
    const created = await ok('POST', '/v1/policies', {
      name: 'every-few-seconds',
      enabled: true,
      trigger: { cron: '*/3 * * * * *', timezone: 'UTC' },
      retention: { max_backups: 4 },
      vaults: ['shared'],
    });
    const version = created.policyVersion as number;
    await waitFor('every agent to ack the policy', async () => {
      const records = await agentRecords();
      return agents.every((a) => records.get(a.agentId)?.policyVersionAcked === version) ? true : undefined;
    });
    // Two scheduled backups per agent: the first full, the next incremental.
    const backups = await waitFor('two scheduled backups per agent', async () => {
      const { backups: list } = await ok('GET', '/v1/backups?vault=shared&limit=1000');
      const per = (a: Agent) => (list as any[]).filter((b) => b.resource === a.resource);
      return agents.every((a) => per(a).length >= 2) ? (list as any[]) : undefined;
    }, 90_000);
    for (const a of agents) {
      const mine = backups.filter((b) => b.resource === a.resource);
      for (const b of mine) {
        expect(b).toMatchObject({ vault: 'shared', agentId: a.agentId, status: 'available' });
        expect(b.name).toMatch(/^autobk_/);
      }
      const kinds = mine.sort((x, y) => x.startedAt.localeCompare(y.startedAt)).map((b) => b.kind);
      expect(kinds[0]).toBe('full');
      expect(kinds.slice(1)).toContain('incremental');
    }
    // The catalog filters by agent and kind.
    const first = agents[0]!;
    const { backups: byAgent } = await ok('GET', `/v1/backups?agent=${first.agentId}&kind=full`);
    expect((byAgent as any[]).every((b) => b.agentId === first.agentId && b.kind === 'full')).toBe(true);
    expect(byAgent.length).toBeGreaterThanOrEqual(1);
  });

  it('gives an agent that was stopped while the policy changed the new version when it returns', async () => {
    const away = agents[2]!;
    await stop(away.process);
    await waitFor('the stopped agent to show offline', async () => ((await agentRecords()).get(away.agentId)?.status === 'offline' ? true : undefined));
    const before = (await agentRecords()).get(away.agentId)!.policyVersionAcked as number;

    const changed = await ok('PUT', '/v1/policies/every-few-seconds', { retention: { max_backups: 2 } });
    const version = changed.policyVersion as number;
    expect(version).toBeGreaterThan(before);
    await waitFor('the two running agents to ack the change', async () => {
      const records = await agentRecords();
      return agents.slice(0, 2).every((a) => records.get(a.agentId)?.policyVersionAcked === version) ? true : undefined;
    });
    expect((await agentRecords()).get(away.agentId)!.policyVersionAcked).toBe(before);

    away.process = start(['agent', 'run', '--config', away.configPath]);
    await waitFor('the returning agent to ack the new version', async () =>
      (await agentRecords()).get(away.agentId)?.policyVersionAcked === version ? true : undefined,
    );
    const s = await agentStatus(away);
    expect(s.controlPlane).toMatchObject({ state: 'connected', policyVersion: version });
    // The new retention (2) applies: soon no resource keeps more than 2 automatic backups.
    await waitFor('retention of 2 on every resource', async () => {
      const { backups: list } = await ok('GET', '/v1/backups?vault=shared&status=available&limit=1000');
      return agents.every((a) => (list as any[]).filter((b) => b.resource === a.resource && b.name.startsWith('autobk_')).length <= 2)
        ? true
        : undefined;
    }, 60_000);
  });

  it('runs a one-off backup and a restore through the control plane; the restore is bit-identical', async () => {
    // Stop the schedule, so the one-off backup is the newest.
    await ok('PUT', '/v1/policies/every-few-seconds', { enabled: false });
    const a = agents[0]!;
    const { checkpoint } = await ok('POST', '/v1/checkpoints', { vault: 'shared', resources: [a.resource] });
    expect(checkpoint.commands).toHaveLength(1);
    const commandId = checkpoint.commands[0].commandId as string;
    const done = await waitFor('the one-off backup', async () => {
      const { command } = await ok('GET', `/v1/commands/${commandId}`);
      return command.completedAt ? command : undefined;
    });
    expect(done).toMatchObject({ agentId: a.agentId, action: 'backup-now', status: 'ok' });
    const made = done.result.backup;
    expect(made.name).toMatch(/^manualbk_/);
    const { backup } = await ok('GET', `/v1/backups/${made.id}`);
    expect(backup).toMatchObject({ id: made.id, vault: 'shared', resource: a.resource, agentId: a.agentId, status: 'available' });

    // Another agent restores it: the backup is in the vault they share.
    const other = agents[1]!;
    const target = sb.path('restored.img');
    const { command } = await ok('POST', '/v1/restores', { backupId: made.id, target, agentId: other.agentId });
    const restored = await waitFor('the restore', async () => {
      const { command: c } = await ok('GET', `/v1/commands/${command.commandId}`);
      return c.completedAt ? c : undefined;
    });
    expect(restored, JSON.stringify(restored.result)).toMatchObject({ agentId: other.agentId, action: 'restore', status: 'ok' });
    expect(await sha256File(target)).toBe(await sha256File(a.image));

    // Restore to cloud: the same backup exported by that agent as a qcow2 object in a bucket.
    const bucket = await s3Target.newBucket();
    const { command: exported } = await ok('POST', '/v1/restores', {
      backupId: made.id,
      target: s3Target.url(bucket, 'images/host1.qcow2'),
      agentId: other.agentId,
    });
    const uploaded = await waitFor('the export to the bucket', async () => {
      const { command: c } = await ok('GET', `/v1/commands/${exported.commandId}`);
      return c.completedAt ? c : undefined;
    });
    expect(uploaded, JSON.stringify(uploaded.result)).toMatchObject({ action: 'restore', status: 'ok' });
    const object = await s3Target.s3.send(new GetObjectCommand({ Bucket: bucket, Key: 'images/host1.qcow2' }));
    const qcow2 = sb.path('host1-from-bucket.qcow2');
    await writeFile(qcow2, await object.Body!.transformToByteArray());
    await promisify(execFile)('qemu-img', ['check', qcow2]);
    await promisify(execFile)('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', qcow2, a.image]);
  });

  it('finds a backup made without any agent once the vault is rescanned', async () => {
    // As if an agent cut off from the control plane had made it: straight into the vault by the CLI.
    const image = agents[0]!.image;
    const { id } = await sb.cairnJson<{ id: string }>(['backup', image, '--vault', vault, '--name', 'offline-one', '--json']);
    expect((await api('GET', `/v1/backups/${id}`)).status).toBe(404);

    const { command } = await ok('POST', '/v1/vaults/shared/rescan');
    expect(command.action).toBe('catalog-sync');
    const { backup } = await waitFor('the rescanned backup', async () => {
      const reply = await api('GET', `/v1/backups/${id}`);
      return reply.status === 200 ? reply.body : undefined;
    });
    expect(backup).toMatchObject({ id, name: 'offline-one', vault: 'shared', status: 'available' });
    // Every agent's scans named the others' backups as their makers did.
    expect(cp.output).not.toMatch(/not stored/);
  });

  it('refuses a revoked agent: its connection is closed and it cannot come back', async () => {
    const revoked = agents[1]!;
    const reply = await api('POST', `/v1/agents/${revoked.agentId}/revoke`);
    expect(reply.status).toBe(200);
    await waitFor('the revoked agent to lose its link', async () => {
      const s = await agentStatus(revoked);
      return s.controlPlane.state !== 'connected' ? true : undefined;
    });
    const record = (await agentRecords()).get(revoked.agentId)!;
    expect(record.revokedAt).toBeTruthy();
    // It keeps trying with backoff and is refused every time; it never shows connected again.
    for (let i = 0; i < 10; i++) {
      await new Promise((r) => setTimeout(r, 200));
      expect((await agentStatus(revoked)).controlPlane.state).not.toBe('connected');
    }
    // A command for it is refused at the API.
    const refused = await api('POST', '/v1/checkpoints', { vault: 'shared', resources: [revoked.resource] });
    expect(refused.status).toBeGreaterThanOrEqual(400);
    // The others still serve.
    const still = await agentRecords();
    expect(still.get(agents[0]!.agentId)?.status).toBe('online');
  });
});
