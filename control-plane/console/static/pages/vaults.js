/** Vaults: type, capacity and usage, resources, policies; create and edit; back up now, verify, rescan. */
import { api, seg } from '../api.js';
import { field, h, replace, select, table } from '../dom.js';
import { bytes } from '../format.js';

const GiB = 1024 ** 3;
const TYPES = ['server', 'disk', 'filesystem', 'hybrid'];

export async function render(ctx) {
  const list = h('div');
  const formBox = h('div');
  replace(ctx.body, list, formBox);
  let vaults = [];

  async function load() {
    ({ vaults } = await api('GET', '/v1/vaults'));
    if (!ctx.current) return;
    const rows = vaults.map((v) => [
      h('strong', {}, v.name),
      v.type,
      h('code', {}, v.location),
      usageCell(v),
      String(v.backupCount),
      v.resources.length ? v.resources.join(', ') : '–',
      v.policies.length ? v.policies.join(', ') : '–',
      h(
        'div',
        { class: 'row-actions' },
        h('button', { type: 'button', 'aria-label': `Back up vault ${v.name} now`, onclick: () => backUpNow(v) }, 'Back up now'),
        h('button', { type: 'button', class: 'secondary', 'aria-label': `Edit vault ${v.name}`, onclick: () => showForm(v) }, 'Edit'),
        h('button', { type: 'button', class: 'secondary', 'aria-label': `Verify vault ${v.name}`, onclick: () => verify(v) }, 'Verify'),
        h('button', { type: 'button', class: 'secondary', 'aria-label': `Rescan vault ${v.name}`, onclick: () => rescan(v) }, 'Rescan'),
      ),
    ]);
    replace(
      list,
      table('Vaults', ['Name', 'Type', 'Location', 'Used / capacity', 'Backups', 'Resources', 'Policies', ''], rows, 'No vaults yet.'),
      h('div', { class: 'toolbar' }, h('button', { type: 'button', onclick: () => showForm(null) }, 'New vault')),
    );
  }

  function showForm(vault) {
    const name = h('input', { type: 'text', required: true, value: vault?.name ?? '', readonly: vault !== null });
    const type = select({}, TYPES, vault?.type ?? 'server');
    const location = h('input', { type: 'text', required: true, value: vault?.location ?? '', placeholder: '/srv/cairn/vault or s3://bucket/prefix' });
    const capacity = h('input', {
      type: 'number',
      min: 0,
      step: 'any',
      value: vault?.capacityBytes ? String(+(vault.capacityBytes / GiB).toFixed(3)) : '',
    });
    const form = h(
      'form',
      { class: 'card', 'aria-labelledby': 'vault-form-title' },
      h('h2', { id: 'vault-form-title' }, vault ? `Edit vault ${vault.name}` : 'New vault'),
      h(
        'div',
        { class: 'grid' },
        field('Vault name', name),
        field('Type', type),
        field('Location', location, 'A folder on the agents, or an s3:// URL without credentials'),
        field('Capacity (GiB)', capacity, 'Empty: no limit'),
      ),
      h(
        'div',
        { class: 'actions' },
        h('button', { type: 'submit' }, vault ? 'Save vault' : 'Create vault'),
        h('button', { type: 'button', class: 'secondary', onclick: () => replace(formBox) }, 'Cancel'),
      ),
    );
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const body = {
        type: type.value,
        location: location.value.trim(),
        capacityBytes: capacity.value === '' ? null : Math.round(Number(capacity.value) * GiB),
      };
      const ok = await ctx.run(
        () => api('PUT', `/v1/vaults/${seg(name.value.trim())}`, body),
        `Vault ${name.value.trim()} ${vault ? 'saved' : 'created'}.`,
      );
      if (ok) {
        replace(formBox);
        await ctx.run(load);
      }
    });
    replace(formBox, form);
    (vault ? location : name).focus();
  }

  async function backUpNow(vault) {
    await ctx.run(
      () => api('POST', '/v1/checkpoints', { vault: vault.name }),
      ({ checkpoint }) =>
        `Backup of vault ${vault.name} requested: ${checkpoint.commands.length} command(s) sent to agents. Follow them under Jobs; the backups appear under Backups.`,
    );
  }

  async function verify(vault) {
    if (!confirm(`Verify vault ${vault.name}? The agents read back and check all of its data; this takes a while on a large vault.`)) return;
    await ctx.run(
      () => api('POST', `/v1/vaults/${seg(vault.name)}/verify`, { readData: true }),
      ({ commands }) => `Verification of vault ${vault.name} requested: ${commands.length} command(s).`,
    );
  }

  async function rescan(vault) {
    await ctx.run(
      () => api('POST', `/v1/vaults/${seg(vault.name)}/rescan`, {}),
      () => `Rescan of vault ${vault.name} requested.`,
    );
  }

  await load();
}

function usageCell(v) {
  const text = v.capacityBytes === null ? `${bytes(v.usedBytes)} (no limit)` : `${bytes(v.usedBytes)} of ${bytes(v.capacityBytes)}`;
  if (v.capacityBytes === null) return text;
  return h(
    'div',
    {},
    h('meter', { min: 0, max: v.capacityBytes, value: v.usedBytes, high: v.capacityBytes * 0.9, 'aria-label': `Vault ${v.name} usage` }),
    ' ',
    text,
  );
}
