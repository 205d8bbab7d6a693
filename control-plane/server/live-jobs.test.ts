import { describe, expect, it } from 'vitest';

import { LiveJobs } from './live-jobs.js';

const progress = (jobId: string, kind: 'backup' | 'restore' | 'verify' | 'delete') =>
  ({ v: 1, type: 'job-progress', id: `p-${jobId}`, jobId, commandId: `cmd-${jobId}`, kind, resource: 'web', vault: 'main', percent: 10, bytesDone: 1, bytesTotal: 10, rateBytesPerSecond: 1 }) as const;

describe('LiveJobs', () => {
  it('drops at a heartbeat only unlisted jobs of the kinds a heartbeat can list', () => {
    const jobs = new LiveJobs();
    for (const [id, kind] of [['b1', 'backup'], ['r1', 'restore'], ['v1', 'verify'], ['d1', 'delete']] as const) jobs.progress('agent-1', progress(id, kind), 't0');
    // The heartbeat cannot name restore, verify or delete jobs: they stay, with their commands running.
    jobs.heartbeat('agent-1', [], 't1');
    expect(jobs.list().map((j) => j.jobId)).toEqual(['d1', 'r1', 'v1']);
    expect(jobs.forCommand('cmd-r1')?.kind).toBe('restore');
    // They go with their job-result or the agent's disconnect.
    jobs.finished('agent-1', 'r1');
    expect(jobs.list().map((j) => j.jobId)).toEqual(['d1', 'v1']);
    jobs.forget('agent-1');
    expect(jobs.list()).toEqual([]);
  });
});
