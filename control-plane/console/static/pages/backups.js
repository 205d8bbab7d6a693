/** Backups: filter by vault, resource, agent, kind, status and time; restore dialog; delete. */
import { api, query, seg } from '../api.js';
import { field, h, replace, select, table } from '../dom.js';
import { bytes, duration, localInputToIso, time } from '../format.js';

const PAGE_SIZE = 50;

export async function render(ctx) {
  const [{ vaults }, { agents }] = await Promise.all([api('GET', '/v1/vaults'), api('GET', '/v1/agents')]);
  if (!ctx.current) return;
  const hostOf = new Map(agents.map((a) => [a.agentId, a.hostname]));
  const agentOptions = [['', 'all agents'], ...agents.map((a) => [a.agentId, `${a.hostname} (${a.agentId})`])];

  const vault = select({}, [['', 'all vaults'], ...vaults.map((v) => v.name)], '');
  const resource = h('input', { type: 'text', placeholder: 'any' });
  const agent = select({}, agentOptions, '');
  const kind = select({}, [['', 'any'], 'full', 'incremental'], '');
  const status = select({}, [['available', 'available'], ['deleted', 'deleted'], ['', 'any']], 'available');
  const from = h('input', { type: 'datetime-local' });
  const to = h('input', { type: 'datetime-local' });
  const filters = h(
    'form',
    { class: 'card filters', 'aria-label': 'Filter backups' },
    field('Vault', vault),
    field('Resource', resource),
    field('Agent', agent),
    field('Kind', kind),
    field('Status', status),
    field('Started from', from),
    field('Started before', to),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Apply filters')),
  );
  const list = h('div');
  const pager = h('div', { class: 'toolbar' });
  const dialog = h('dialog', { class: 'card', 'aria-labelledby': 'restore-title' });
  replace(ctx.body, filters, list, pager, dialog);
  let offset = 0;

  filters.addEventListener('submit', async (event) => {
    event.preventDefault();
    offset = 0;
    await ctx.run(load);
  });

  async function load() {
    const params = {
      vault: vault.value,
      resource: resource.value.trim(),
      agent: agent.value,
      kind: kind.value,
      status: status.value,
      from: localInputToIso(from.value),
      to: localInputToIso(to.value),
      limit: PAGE_SIZE + 1,
      offset,
    };
    const { backups } = await api('GET', `/v1/backups${query(params)}`);
    if (!ctx.current) return;
    const more = backups.length > PAGE_SIZE;
    const rows = backups.slice(0, PAGE_SIZE).map((b) => [
      h('strong', {}, b.name),
      b.vault,
      b.resource,
      b.agentId ? hostOf.get(b.agentId) ?? b.agentId : '–',
      b.kind,
      time(b.startedAt),
      duration((new Date(b.finishedAt) - new Date(b.startedAt)) / 1000),
      bytes(b.logicalBytes),
      bytes(b.bytesStored),
      b.consistency,
      h('span', { class: `badge kind-${b.status === 'available' ? 'ok' : 'idle'}` }, b.status),
      b.status === 'available'
        ? h(
            'div',
            { class: 'row-actions' },
            h('button', { type: 'button', 'aria-label': `Restore backup ${b.name}`, onclick: () => openRestore(b) }, 'Restore'),
            h('button', { type: 'button', class: 'danger', 'aria-label': `Delete backup ${b.name}`, onclick: () => remove(b) }, 'Delete'),
          )
        : b.deletedAt
          ? `deleted ${time(b.deletedAt)}`
          : '',
    ]);
    replace(
      list,
      table(
        'Backups',
        ['Name', 'Vault', 'Resource', 'Agent', 'Kind', 'Started', 'Took', 'Size', 'Stored', 'Consistency', 'Status', ''],
        rows,
        'No backups match.',
      ),
    );
    replace(
      pager,
      h('button', { type: 'button', class: 'secondary', disabled: offset === 0, onclick: () => page(-PAGE_SIZE) }, 'Previous page'),
      h('span', { class: 'muted' }, backups.length ? `Backups ${offset + 1}–${offset + Math.min(backups.length, PAGE_SIZE)}` : ''),
      h('button', { type: 'button', class: 'secondary', disabled: !more, onclick: () => page(PAGE_SIZE) }, 'Next page'),
    );
  }

  async function page(delta) {
    offset = Math.max(0, offset + delta);
    await ctx.run(load);
  }

  async function remove(backup) {
    if (!confirm(`Delete backup ${backup.name} of ${backup.resource} from vault ${backup.vault}? This cannot be undone.`)) return;
    await ctx.run(
      () => api('DELETE', `/v1/backups/${seg(backup.id)}`),
      ({ command }) => `Deletion of backup ${backup.name} requested (command ${command.commandId}); it disappears once the agent has done it.`,
    );
  }

  function openRestore(backup) {
    const target = h('input', { type: 'text', required: true, placeholder: '/dev/sdb, /srv/restore/disk.img or s3://bucket/images/disk.qcow2' });
    const onAgent = select({}, agents.filter((a) => !a.revokedAt).map((a) => [a.agentId, `${a.hostname} (${a.agentId})`]), backup.agentId ?? '');
    const disk = h('input', { type: 'number', min: 0, max: 1023, step: 1, placeholder: 'all' });
    const force = h('input', { type: 'checkbox' });
    const error = h('div', { class: 'error', role: 'alert' });
    const form = h(
      'form',
      { method: 'dialog' },
      h('h2', { id: 'restore-title' }, `Restore ${backup.name}`),
      h('p', {}, `${backup.resource} from vault ${backup.vault}, taken ${time(backup.startedAt)} (${bytes(backup.logicalBytes)}).`),
      field(
        'Restore target',
        target,
        'A device or file on the agent (a folder for a backup of several disks), or restore to cloud: an s3:// object ending in .qcow2, .vmdk, .raw or .img, streamed as that image',
      ),
      field('Restore on agent', onAgent),
      field('Disk number', disk, 'Empty: every disk; 0 is the first'),
      h('div', { class: 'field check' }, h('label', {}, force, ' Overwrite the target if it holds data')),
      error,
      h(
        'div',
        { class: 'actions' },
        h('button', { type: 'submit', value: 'restore' }, 'Start restore'),
        h('button', { type: 'button', class: 'secondary', onclick: () => dialog.close() }, 'Cancel'),
      ),
    );
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      error.textContent = '';
      const body = { backupId: backup.id, target: target.value.trim(), force: force.checked };
      if (onAgent.value) body.agentId = onAgent.value;
      if (disk.value !== '') body.disk = Number(disk.value);
      try {
        const { command } = await api('POST', '/v1/restores', body);
        dialog.close();
        ctx.notice(`Restore of ${backup.name} to ${body.target} requested (command ${command.commandId}); follow it under Jobs.`);
      } catch (err) {
        error.textContent = `${err.code ?? 'Error'}: ${err.message}`;
      }
    });
    replace(dialog, form);
    dialog.showModal();
    target.focus();
  }

  await load();
  ctx.every(3000, async () => {
    if (!dialog.open) await load();
  });
}
