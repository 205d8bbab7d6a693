import { describe, expect, it } from 'vitest';

import { formatLongDuration, formatStatus } from './status-text.js';
import type { AgentStatus } from './status.js';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

const status: AgentStatus = {
  agentId: 'agent-7f3a',
  version: '0.1.0',
  startedAt: '2026-11-25T07:00:00.000Z',
  uptimeSeconds: 3 * 3600 + 12 * 60 + 5,
  controlPlane: { state: 'connected', url: 'wss://cp.example.com' },
  jobs: [
    {
      id: 'job-1',
      kind: 'backup',
      resource: 'web-01',
      vault: 'offsite',
      policy: 'nightly',
      startedAt: '2026-11-25T10:00:00.000Z',
      progress: {
        bytesDone: 4.25 * GiB,
        bytesTotal: 10 * GiB,
        bytesStored: 1.2 * GiB,
        percent: 42.5,
        rateBytesPerSecond: 85 * MiB,
        etaSeconds: 69,
      },
    },
    { id: 'job-2', kind: 'prune', resource: null, vault: 'offsite', policy: null, startedAt: '2026-11-25T10:05:00.000Z', progress: null },
  ],
  resources: [
    {
      name: 'web-01',
      vault: 'offsite',
      policy: 'nightly',
      lastResult: {
        status: 'ok',
        backup: 'web-01_20261125',
        startedAt: '2026-11-25T02:00:00.000Z',
        finishedAt: '2026-11-25T02:00:13.412Z',
        bytesRead: 2 * GiB,
        bytesStored: 100 * MiB,
        durationMs: 13_412,
        error: null,
      },
      lastSuccessAt: '2026-11-25T02:00:13.412Z',
      nextRun: '2026-11-26T02:00:00.000Z',
    },
    {
      name: 'db-01',
      vault: 'local',
      policy: 'hourly',
      lastResult: {
        status: 'failed',
        backup: null,
        startedAt: '2026-11-25T09:00:00.000Z',
        finishedAt: '2026-11-25T09:00:00.250Z',
        bytesRead: 0,
        bytesStored: 0,
        durationMs: 250,
        error: 'source /dev/vg0/db cannot be read:\n  permission denied',
      },
      lastSuccessAt: '2026-11-24T23:00:09.000Z',
      nextRun: '2026-11-25T11:00:00.000Z',
    },
    { name: 'new-vm', vault: 'local', policy: null, lastResult: null, lastSuccessAt: null, nextRun: null },
  ],
  vaults: [
    { name: 'offsite', location: 's3://backups/cairn', backups: 42, storedBytes: 120 * GiB },
    { name: 'local', location: '/srv/cairn', backups: null, storedBytes: null },
  ],
  inventory: {
    hostname: 'hv-1',
    os: { platform: 'linux', distro: 'Debian GNU/Linux', release: '12', kernel: '6.1.0', arch: 'x64' },
    cpus: { model: 'AMD EPYC', cores: 8, physicalCores: 4 },
    memoryBytes: 32 * GiB,
    disks: [],
    network: [],
  },
};

describe('formatStatus', () => {
  it('prints agent, link, jobs, resources and vaults', () => {
    expect(formatStatus(status).split('\n')).toEqual([
      'Agent          agent-7f3a (cairn 0.1.0)',
      'Up             3h12m, since 2026-11-25 07:00:00Z',
      'Control plane  connected to wss://cp.example.com',
      'Host           hv-1: Debian GNU/Linux 12 (x64), 8 CPUs, 32.0 GiB memory',
      '',
      'Running jobs (2):',
      '  JOB    KIND    RESOURCE  VAULT    DONE   READ                  STORED    RATE        ETA',
      '  job-1  backup  web-01    offsite  42.5%  4.25 GiB of 10.0 GiB  1.20 GiB  85.0 MiB/s  1m09s',
      '  job-2  prune   -         offsite  -      -                     -         -           -',
      '',
      'Resources:',
      '  RESOURCE  VAULT    POLICY   LAST RESULT  FINISHED              TOOK    LAST SUCCESS          NEXT RUN',
      '  web-01    offsite  nightly  ok           2026-11-25 02:00:13Z  13.4 s  2026-11-25 02:00:13Z  2026-11-26 02:00:00Z',
      '  db-01     local    hourly   failed       2026-11-25 09:00:00Z  250 ms  2026-11-24 23:00:09Z  2026-11-25 11:00:00Z',
      '  new-vm    local    -        never run    -                     -       never                 -',
      '  db-01 failed: source /dev/vg0/db cannot be read: permission denied',
      '',
      'Vaults:',
      '  VAULT    LOCATION            BACKUPS  STORED',
      '  offsite  s3://backups/cairn  42       120 GiB',
      '  local    /srv/cairn          -        -',
      '',
    ]);
  });

  it('says so when there is nothing to list, and shows a missing control plane', () => {
    const idle: AgentStatus = {
      ...status,
      uptimeSeconds: 42,
      controlPlane: { state: 'not-configured', url: null },
      jobs: [],
      resources: [],
      vaults: [],
      inventory: null,
    };
    expect(formatStatus(idle)).toBe(
      [
        'Agent          agent-7f3a (cairn 0.1.0)',
        'Up             42.0 s, since 2026-11-25 07:00:00Z',
        'Control plane  not configured (the agent runs on its own)',
        '',
        'Running jobs: none',
        '',
        'Resources: none configured',
        '',
        'Vaults: none configured',
        '',
      ].join('\n'),
    );
    expect(formatStatus({ ...idle, controlPlane: { state: 'disconnected', url: 'wss://cp' } })).toContain(
      'Control plane  disconnected from wss://cp\n',
    );
  });

  it('formats long durations in hours and days', () => {
    expect(formatLongDuration(59)).toBe('59.0 s');
    expect(formatLongDuration(3599)).toBe('59m59s');
    expect(formatLongDuration(3600)).toBe('1h00m');
    expect(formatLongDuration(2 * 86400 + 4 * 3600 + 59)).toBe('2d04h');
  });
});

describe('formatStatus control plane link', () => {
  it('names the agent id, policy version and the last problem', () => {
    const base: AgentStatus = { ...status, jobs: [] };
    const connected = formatStatus({ ...base, controlPlane: { state: 'connected', url: 'wss://cp:8443/v1/agent', agentId: 'agt_01', policyVersion: 3, problem: null } });
    expect(connected).toContain('connected to wss://cp:8443/v1/agent (as agt_01, policy version 3)');
    const away = formatStatus({ ...base, controlPlane: { state: 'connecting', url: 'wss://cp:8443/v1/agent', agentId: 'agt_01', policyVersion: null, problem: 'cannot reach\nthe control plane' } });
    expect(away).toContain('connecting to wss://cp:8443/v1/agent (as agt_01, policy version none yet); last problem: cannot reach the control plane');
  });
});
