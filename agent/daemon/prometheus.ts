/**
 * The agent's metrics in the Prometheus text exposition format, version 0.0.4
 * (https://prometheus.io/docs/instrumenting/exposition_formats/). The first half is a small
 * generic writer (families, samples, escaping, histograms); the second maps a MetricsSnapshot onto
 * the `cairn_*` families. Rendering is pure: same snapshot, same text.
 */
import type { MetricsSnapshot } from './status.js';

export const prometheusContentType = 'text/plain; version=0.0.4; charset=utf-8';

export interface Sample {
  /** Appended to the family name: '_bucket', '_sum', '_count' for histograms; '' otherwise. */
  suffix?: string;
  labels?: Record<string, string>;
  value: number;
}

export interface MetricFamily {
  /** A valid metric name; counters carry their `_total` suffix here (0.0.4 keeps it in TYPE). */
  name: string;
  help: string;
  type: 'counter' | 'gauge' | 'histogram';
  samples: Sample[];
}

/** Label values escape backslash, double quote and line feed. */
export function escapeLabelValue(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** HELP text escapes backslash and line feed (a quote stays as is). */
export function escapeHelp(text: string): string {
  return text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

/** A sample value as Go's ParseFloat reads it: integers plainly, and +Inf, -Inf, NaN spelled out. */
export function formatSampleValue(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '-Inf';
  return String(value);
}

function formatLabels(labels: Record<string, string> | undefined): string {
  const entries = Object.entries(labels ?? {});
  if (entries.length === 0) return '';
  return `{${entries.map(([k, v]) => `${k}="${escapeLabelValue(v)}"`).join(',')}}`;
}

/** The exposition text: per family `# HELP`, `# TYPE`, then its samples; ends with a line feed. */
export function renderExposition(families: MetricFamily[]): string {
  const lines: string[] = [];
  for (const f of families) {
    lines.push(`# HELP ${f.name} ${escapeHelp(f.help)}`);
    lines.push(`# TYPE ${f.name} ${f.type}`);
    for (const s of f.samples) {
      lines.push(`${f.name}${s.suffix ?? ''}${formatLabels(s.labels)} ${formatSampleValue(s.value)}`);
    }
  }
  return lines.length === 0 ? '' : `${lines.join('\n')}\n`;
}

/**
 * The samples of one histogram series: a cumulative `_bucket` per upper bound (ascending, `+Inf`
 * added last), then `_sum` and `_count`. `le` is the last label, as client libraries write it.
 */
export function histogramSamples(upperBounds: readonly number[], values: readonly number[], labels: Record<string, string> = {}): Sample[] {
  const bounds = [...upperBounds].filter((b) => b !== Infinity).sort((a, b) => a - b);
  const samples: Sample[] = bounds.map((b) => ({
    suffix: '_bucket',
    labels: { ...labels, le: formatSampleValue(b) },
    value: values.filter((v) => v <= b).length,
  }));
  samples.push({ suffix: '_bucket', labels: { ...labels, le: '+Inf' }, value: values.length });
  samples.push({ suffix: '_sum', labels, value: values.reduce((a, v) => a + v, 0) });
  samples.push({ suffix: '_count', labels, value: values.length });
  return samples;
}

/** Upper bounds of `cairn_backup_duration_seconds`: 1 s to 1 h (`+Inf` is implied). */
export const backupDurationBuckets = [1, 5, 15, 60, 300, 900, 3600] as const;

/** The families of the agent's metrics, in a fixed order. Families without samples keep HELP/TYPE. */
export function agentMetricFamilies(m: MetricsSnapshot): MetricFamily[] {
  const families: MetricFamily[] = [
    {
      name: 'cairn_backups_total',
      help: 'Backups finished since the agent started, by resource, vault and result.',
      type: 'counter',
      samples: m.backups.map((b) => ({ labels: { resource: b.resource, vault: b.vault, result: b.result }, value: b.count })),
    },
    {
      name: 'cairn_backup_bytes_read_total',
      help: 'Bytes read from the source by backups since the agent started.',
      type: 'counter',
      samples: m.bytesRead.map((b) => ({ labels: { resource: b.resource }, value: b.bytes })),
    },
    {
      name: 'cairn_backup_bytes_stored_total',
      help: 'Bytes written to vaults by backups (after deduplication and compression) since the agent started.',
      type: 'counter',
      samples: m.bytesStored.map((b) => ({ labels: { resource: b.resource }, value: b.bytes })),
    },
    {
      name: 'cairn_backup_duration_seconds',
      help: 'Duration of finished backups.',
      type: 'histogram',
      samples: m.durations.flatMap((d) => histogramSamples(backupDurationBuckets, d.seconds, { resource: d.resource })),
    },
    {
      name: 'cairn_backup_last_success_timestamp_seconds',
      help: 'Unix time at which the last successful backup of the resource finished.',
      type: 'gauge',
      samples: m.lastSuccess.map((s) => ({ labels: { resource: s.resource }, value: s.timestamp })),
    },
    { name: 'cairn_jobs_running', help: 'Jobs running now.', type: 'gauge', samples: [{ value: m.runningJobs }] },
    { name: 'cairn_jobs_queued', help: 'Jobs waiting in the queue.', type: 'gauge', samples: [{ value: m.queuedJobs }] },
  ];
  if (m.uptimeSeconds !== undefined) {
    families.push({
      name: 'cairn_agent_uptime_seconds',
      help: 'Seconds since the agent started.',
      type: 'gauge',
      samples: [{ value: m.uptimeSeconds }],
    });
  }
  return families;
}

export function renderAgentMetrics(m: MetricsSnapshot): string {
  return renderExposition(agentMetricFamilies(m));
}
