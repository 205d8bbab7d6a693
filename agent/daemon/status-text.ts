/**
 * `cairn agent status` as text: the agent, its link to the control plane, running jobs, the last
 * result of each resource and the vaults. Pure: the same status gives the same text; times are
 * printed as given (UTC), never relative to now.
 */
import { formatBytes, formatDuration, formatRate, formatTime, table } from '../cli/format.js';
import type { AgentStatus, ResourceStatus, RunningJob } from './status.js';

/** Durations that may run to hours or days (uptime, ETA): `42.0 s`, `5m07s`, `3h12m`, `2d04h`. */
export function formatLongDuration(seconds: number): string {
  if (seconds < 3600) return formatDuration(seconds * 1000);
  const minutes = Math.floor(seconds / 60);
  if (minutes < 24 * 60) return `${Math.floor(minutes / 60)}h${String(minutes % 60).padStart(2, '0')}m`;
  const hours = Math.floor(minutes / 60);
  return `${Math.floor(hours / 24)}d${String(hours % 24).padStart(2, '0')}h`;
}

const indent = (text: string) =>
  text
    .split('\n')
    .map((l) => `  ${l}`)
    .join('\n');

/** One line, for error messages inside a listing. */
const oneLine = (text: string) => text.replace(/\s+/g, ' ').trim();

function controlPlane(cp: AgentStatus['controlPlane']): string {
  const url = cp.url ?? '(unknown address)';
  const details = [
    cp.agentId ? `as ${cp.agentId}` : '',
    cp.policyVersion !== undefined ? `policy version ${cp.policyVersion ?? 'none yet'}` : '',
  ].filter((d) => d !== '');
  const suffix = details.length ? ` (${details.join(', ')})` : '';
  const problem = cp.problem ? `; last problem: ${oneLine(cp.problem)}` : '';
  switch (cp.state) {
    case 'connected':
      return `connected to ${url}${suffix}`;
    case 'connecting':
      return `connecting to ${url}${suffix}${problem}`;
    case 'disconnected':
      return `disconnected from ${url}${suffix}${problem}`;
    case 'not-configured':
      return 'not configured (the agent runs on its own)';
  }
}

function jobRow(j: RunningJob): string[] {
  const p = j.progress;
  return [
    j.id,
    j.kind,
    j.resource ?? '-',
    j.vault,
    p ? `${p.percent.toFixed(1)}%` : '-',
    p ? `${formatBytes(p.bytesDone)} of ${formatBytes(p.bytesTotal)}` : '-',
    p ? formatBytes(p.bytesStored) : '-',
    p ? formatRate(p.rateBytesPerSecond, 1000) : '-',
    p?.etaSeconds != null ? formatLongDuration(p.etaSeconds) : '-',
  ];
}

function resourceRow(r: ResourceStatus): string[] {
  const last = r.lastResult;
  return [
    r.name,
    r.vault,
    r.policy ?? '-',
    last ? last.status : 'never run',
    last ? formatTime(last.finishedAt) : '-',
    last ? formatDuration(last.durationMs) : '-',
    r.lastSuccessAt ? formatTime(r.lastSuccessAt) : 'never',
    r.nextRun ? formatTime(r.nextRun) : '-',
  ];
}

export function formatStatus(s: AgentStatus): string {
  const head: [string, string][] = [
    ['Agent', `${s.agentId} (cairn ${s.version})`],
    ['Up', `${formatLongDuration(s.uptimeSeconds)}, since ${formatTime(s.startedAt)}`],
    ['Control plane', controlPlane(s.controlPlane)],
  ];
  if (s.inventory) {
    const i = s.inventory;
    const cpus = `${i.cpus.cores} CPU${i.cpus.cores === 1 ? '' : 's'}`;
    head.push(['Host', `${i.hostname}: ${i.os.distro} ${i.os.release} (${i.os.arch}), ${cpus}, ${formatBytes(i.memoryBytes)} memory`]);
  }
  const width = Math.max(...head.map(([k]) => k.length)) + 2;
  const out: string[] = head.map(([k, v]) => `${k.padEnd(width)}${v}`);

  out.push('');
  if (s.jobs.length === 0) {
    out.push('Running jobs: none');
  } else {
    out.push(`Running jobs (${s.jobs.length}):`);
    out.push(indent(table(['JOB', 'KIND', 'RESOURCE', 'VAULT', 'DONE', 'READ', 'STORED', 'RATE', 'ETA'], s.jobs.map(jobRow))));
  }

  out.push('');
  if (s.resources.length === 0) {
    out.push('Resources: none configured');
  } else {
    out.push('Resources:');
    out.push(
      indent(
        table(
          ['RESOURCE', 'VAULT', 'POLICY', 'LAST RESULT', 'FINISHED', 'TOOK', 'LAST SUCCESS', 'NEXT RUN'],
          s.resources.map(resourceRow),
        ),
      ),
    );
    const failures = s.resources.filter((r) => r.lastResult && r.lastResult.status !== 'ok' && r.lastResult.error);
    for (const r of failures) out.push(`  ${r.name} ${r.lastResult!.status}: ${oneLine(r.lastResult!.error!)}`);
  }

  out.push('');
  if (s.vaults.length === 0) {
    out.push('Vaults: none configured');
  } else {
    out.push('Vaults:');
    out.push(
      indent(
        table(
          ['VAULT', 'LOCATION', 'BACKUPS', 'STORED'],
          s.vaults.map((v) => [
            v.name,
            v.location,
            v.backups === null ? '-' : String(v.backups),
            v.storedBytes === null ? '-' : formatBytes(v.storedBytes),
          ]),
        ),
      ),
    );
  }
  return `${out.join('\n')}\n`;
}
