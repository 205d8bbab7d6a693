/** Dashboard: agents online, the last 24 hours of job results, and each vault's storage. */
import { api } from '../api.js';
import { bars, donut, usage } from '../charts.js';
import { h, replace } from '../dom.js';
import { time } from '../format.js';

export async function render(ctx) {
  const refresh = h('button', { type: 'button', class: 'secondary' }, 'Refresh');
  const content = h('div', { class: 'dashboard' });
  replace(ctx.body, h('div', { class: 'toolbar' }, refresh), content);

  async function load() {
    const d = await api('GET', '/v1/dashboard');
    if (!ctx.current) return;
    const { agents, jobs24h, vaults } = d;
    replace(
      content,
      h(
        'section',
        { class: 'card', 'aria-labelledby': 'dash-agents' },
        h('h2', { id: 'dash-agents' }, 'Agents'),
        h('p', { class: 'big' }, `${agents.online} of ${agents.total} online`),
        donut(
          'Agents',
          [
            { label: 'online', value: agents.online, kind: 'ok' },
            { label: 'offline', value: agents.offline, kind: 'idle' },
            { label: 'revoked', value: agents.revoked, kind: 'failed' },
          ],
          `${agents.online}/${agents.total}`,
        ),
      ),
      h(
        'section',
        { class: 'card', 'aria-labelledby': 'dash-jobs' },
        h('h2', { id: 'dash-jobs' }, 'Jobs, last 24 h'),
        bars('Job results in the last 24 hours', [
          { label: 'ok', value: jobs24h.ok, kind: 'ok' },
          { label: 'failed', value: jobs24h.failed, kind: 'failed' },
          { label: 'cancelled', value: jobs24h.cancelled, kind: 'idle' },
        ]),
      ),
      h(
        'section',
        { class: 'card wide', 'aria-labelledby': 'dash-vaults' },
        h('h2', { id: 'dash-vaults' }, 'Vault storage'),
        vaults.length === 0 ? h('p', { class: 'empty' }, 'No vaults yet: add one under Vaults.') : vaults.map(usage),
      ),
      h('p', { class: 'muted wide' }, `As of ${time(d.generatedAt)}`),
    );
  }

  refresh.addEventListener('click', () => ctx.run(load));
  await load();
  ctx.every(10_000, load);
}
