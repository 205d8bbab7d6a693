/** Agents: status, inventory, last contact, policy version acknowledged; enrollment tokens; revoke. */
import { api, seg } from '../api.js';
import { field, h, replace, table } from '../dom.js';
import { ago, bytes, time } from '../format.js';

export async function render(ctx) {
  const list = h('div');
  const ttl = h('input', { type: 'number', min: 1, max: 720, value: '24', required: true });
  const tokenOut = h('div', { class: 'token-out' });
  const enrollForm = h(
    'form',
    { class: 'card inline-form', 'aria-labelledby': 'enroll-title' },
    h('h2', { id: 'enroll-title' }, 'Enroll an agent'),
    field('Token valid for (hours)', ttl),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Create enrollment token')),
    tokenOut,
  );
  enrollForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    await ctx.run(async () => {
      const made = await api('POST', '/v1/enrollment-tokens', { ttlSeconds: Math.round(Number(ttl.value) * 3600) });
      replace(
        tokenOut,
        h('p', {}, `Token ${made.id}, valid until ${time(made.expiresAt)}. It is shown once; on the agent's machine run:`),
        h('pre', { class: 'command', 'aria-label': 'Enrollment command' }, `cairn agent enroll ${made.token} --config /etc/cairn/agent.json`),
      );
    }, 'Enrollment token created.');
  });
  replace(ctx.body, list, enrollForm);

  async function load() {
    const { agents } = await api('GET', '/v1/agents');
    if (!ctx.current) return;
    const rows = agents.map((a) => [
      h('strong', {}, a.hostname),
      h('code', {}, a.agentId),
      statusBadge(a),
      inventorySummary(a.inventory),
      h('span', { title: time(a.lastSeen) }, ago(a.lastSeen)),
      String(a.policyVersionAcked),
      a.revokedAt
        ? `revoked ${time(a.revokedAt)}`
        : h('button', { type: 'button', class: 'danger', 'aria-label': `Revoke ${a.hostname} (${a.agentId})`, onclick: () => revoke(a) }, 'Revoke'),
    ]);
    replace(
      list,
      table('Enrolled agents', ['Host', 'Agent ID', 'Status', 'Machine', 'Last seen', 'Policy version acked', ''], rows, 'No agents enrolled yet.'),
    );
  }

  async function revoke(agent) {
    if (!confirm(`Revoke agent ${agent.hostname} (${agent.agentId})? It is disconnected and can never connect again.`)) return;
    if (await ctx.run(() => api('POST', `/v1/agents/${seg(agent.agentId)}/revoke`), `Agent ${agent.hostname} revoked.`)) await ctx.run(load);
  }

  await load();
  ctx.every(5000, load);
}

function statusBadge(agent) {
  const status = agent.revokedAt ? 'revoked' : agent.status;
  return h('span', { class: `badge kind-${status === 'online' ? 'ok' : status === 'revoked' ? 'failed' : 'idle'}` }, status);
}

/** OS, CPUs, memory and disks in one line; the whole inventory on hover. */
function inventorySummary(inv) {
  if (!inv || typeof inv !== 'object') return '–';
  const parts = [];
  if (inv.os) parts.push(`${inv.os.distro ?? inv.os.platform ?? ''} ${inv.os.release ?? ''}`.trim());
  if (inv.cpus) parts.push(`${inv.cpus.cores} CPUs`);
  if (typeof inv.memoryBytes === 'number') parts.push(`${bytes(inv.memoryBytes)} RAM`);
  if (Array.isArray(inv.disks)) parts.push(`${inv.disks.length} disks (${bytes(inv.disks.reduce((n, d) => n + (d.sizeBytes ?? 0), 0))})`);
  return h('span', { title: JSON.stringify(inv, null, 2) }, parts.join(' · ') || '–');
}
