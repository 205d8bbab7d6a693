/** Live jobs with progress bars, polled every 1.5 s, and the latest commands sent to agents. */
import { api } from '../api.js';
import { h, replace, table } from '../dom.js';
import { ago, bytes, duration, rate, time } from '../format.js';

const POLL_MS = 1500;

export async function render(ctx) {
  const running = h('div');
  const commands = h('div');
  replace(ctx.body, running, commands);

  async function load() {
    const [{ jobs }, { agents }, recent] = await Promise.all([
      api('GET', '/v1/jobs'),
      api('GET', '/v1/agents'),
      api('GET', '/v1/commands?limit=25'),
    ]);
    if (!ctx.current) return;
    const hostOf = new Map(agents.map((a) => [a.agentId, a.hostname]));
    replace(
      running,
      table(
        'Jobs running now',
        ['Agent', 'Kind', 'Resource', 'Vault', 'Progress', 'Done', 'Rate', 'Time left', 'Updated'],
        jobs.map((j) => [
          hostOf.get(j.agentId) ?? j.agentId,
          j.kind ?? '–',
          j.resource ?? '–',
          j.vault ?? '–',
          h(
            'div',
            { class: 'progress' },
            h('progress', { max: 100, value: j.percent, 'aria-label': `${j.kind ?? 'job'} ${j.resource ?? ''} progress`.replace(/\s+/g, ' ') }),
            ` ${Math.floor(j.percent)} %`,
          ),
          `${bytes(j.bytesDone)} of ${bytes(j.bytesTotal)}`,
          rate(j.rateBytesPerSecond),
          j.rateBytesPerSecond > 0 ? duration((j.bytesTotal - j.bytesDone) / j.rateBytesPerSecond) : '–',
          ago(j.updatedAt),
        ]),
        'No job is running.',
      ),
    );
    replace(
      commands,
      table(
        'Latest commands',
        ['Created', 'Agent', 'Action', 'Vault', 'Resource', 'Status', 'Result'],
        recent.commands.map((c) => [
          time(c.createdAt),
          hostOf.get(c.agentId) ?? c.agentId,
          c.action,
          c.vault ?? '–',
          c.resource ?? '–',
          h('span', { class: `badge kind-${statusKind(c.status)}` }, c.status),
          resultText(c),
        ]),
        'No commands yet.',
      ),
    );
  }

  await load();
  ctx.every(POLL_MS, load);
}

function statusKind(status) {
  return { ok: 'ok', failed: 'failed', cancelled: 'idle', running: 'busy', pending: 'idle' }[status] ?? 'idle';
}

function resultText(c) {
  const error = c.result?.error;
  if (error) return h('span', { class: 'error-text' }, typeof error === 'object' ? `${error.code}: ${error.message}` : String(error));
  const backup = c.result?.backup;
  if (backup) return `backup ${typeof backup === 'object' ? backup.name : backup}`;
  if (c.progress && c.status === 'running') return `${Math.floor(c.progress.percent)} %`;
  return c.completedAt ? `done ${time(c.completedAt)}` : '–';
}
