/** Policies: create, edit, delete; bind to and unbind from vaults; triggers and retention. */
import { api, seg } from '../api.js';
import { field, h, replace, select, table } from '../dom.js';

const RETENTION_COUNTS = [
  ['max_backups', 'Keep at most (backups)'],
  ['retention_duration_days', 'Keep for (days)'],
  ['day_backups', 'Daily backups kept'],
  ['week_backups', 'Weekly backups kept'],
  ['month_backups', 'Monthly backups kept'],
  ['year_backups', 'Yearly backups kept'],
];

export async function render(ctx) {
  const list = h('div');
  const formBox = h('div');
  replace(ctx.body, list, formBox);

  async function load() {
    const [{ policies, policyVersion }, { vaults }] = await Promise.all([api('GET', '/v1/policies'), api('GET', '/v1/vaults')]);
    if (!ctx.current) return;
    const rows = policies.map((p) => [
      h('strong', {}, p.name),
      p.enabled ? 'yes' : 'no',
      triggerText(p.trigger),
      retentionText(p.retention),
      p.vaults.length === 0
        ? h('span', { class: 'muted' }, 'none (backs nothing up)')
        : h(
            'ul',
            { class: 'chips' },
            p.vaults.map((v) =>
              h(
                'li',
                {},
                v,
                h('button', { type: 'button', class: 'chip-x', 'aria-label': `Unbind policy ${p.name} from vault ${v}`, onclick: () => bind(p, v, 'unbind') }, '×'),
              ),
            ),
          ),
      bindControl(p, vaults),
      h(
        'div',
        { class: 'row-actions' },
        h('button', { type: 'button', class: 'secondary', 'aria-label': `Edit policy ${p.name}`, onclick: () => showForm(p) }, 'Edit'),
        h('button', { type: 'button', class: 'danger', 'aria-label': `Delete policy ${p.name}`, onclick: () => remove(p) }, 'Delete'),
      ),
    ]);
    replace(
      list,
      table(`Policies (version ${policyVersion})`, ['Name', 'Enabled', 'Trigger', 'Retention', 'Vaults', 'Bind', ''], rows, 'No policies yet.'),
      h('div', { class: 'toolbar' }, h('button', { type: 'button', onclick: () => showForm(null) }, 'New policy')),
    );
  }

  function bindControl(policy, vaults) {
    const free = vaults.map((v) => v.name).filter((n) => !policy.vaults.includes(n));
    if (free.length === 0) return h('span', { class: 'muted' }, vaults.length === 0 ? 'no vaults' : 'bound to all');
    const choice = select({ 'aria-label': `Vault to bind policy ${policy.name} to` }, free);
    return h(
      'div',
      { class: 'row-actions' },
      choice,
      h('button', { type: 'button', 'aria-label': `Bind policy ${policy.name}`, onclick: () => bind(policy, choice.value, 'bind') }, 'Bind'),
    );
  }

  async function bind(policy, vault, action) {
    const done = action === 'bind' ? `Policy ${policy.name} bound to vault ${vault}.` : `Policy ${policy.name} unbound from vault ${vault}.`;
    if (await ctx.run(() => api('POST', `/v1/policies/${seg(policy.name)}/${action}`, { vault }), done)) await ctx.run(load);
  }

  async function remove(policy) {
    if (!confirm(`Delete policy ${policy.name}? Agents stop running it; its backups stay.`)) return;
    if (await ctx.run(() => api('DELETE', `/v1/policies/${seg(policy.name)}`), `Policy ${policy.name} deleted.`)) await ctx.run(load);
  }

  function showForm(policy) {
    const trigger = policy?.trigger ?? { timezone: Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC' };
    const retention = policy?.retention ?? {};
    const name = h('input', { type: 'text', required: true, value: policy?.name ?? '', readonly: policy !== null });
    const enabled = h('input', { type: 'checkbox', checked: policy ? policy.enabled : true });
    const patterns = h('textarea', { rows: 2, placeholder: 'FREQ=DAILY;BYHOUR=02;BYMINUTE=00', value: (trigger.patterns ?? []).join('\n') });
    const cron = h('input', { type: 'text', placeholder: '0 2 * * *', value: trigger.cron ?? '' });
    const timezone = h('input', { type: 'text', required: true, value: trigger.timezone ?? 'UTC' });
    const counts = RETENTION_COUNTS.map(([key, label]) => [
      key,
      label,
      h('input', { type: 'number', min: 0, step: 1, value: retention[key] === undefined ? '' : String(retention[key]) }),
    ]);
    const retentionZone = h('input', { type: 'text', value: retention.timezone ?? '', placeholder: 'as the trigger' });
    const form = h(
      'form',
      { class: 'card', 'aria-labelledby': 'policy-form-title' },
      h('h2', { id: 'policy-form-title' }, policy ? `Edit policy ${policy.name}` : 'New policy'),
      h('div', { class: 'grid' }, field('Policy name', name), h('div', { class: 'field check' }, h('label', {}, enabled, ' Enabled'))),
      h(
        'fieldset',
        {},
        h('legend', {}, 'When'),
        h(
          'div',
          { class: 'grid' },
          field('Trigger patterns', patterns, 'One RRULE-style pattern per line, as CBR: FREQ=WEEKLY;BYDAY=MO;BYHOUR=02;BYMINUTE=00'),
          field('Cron expression', cron, 'Optional, e.g. 0 2 * * * (min hour day month weekday)'),
          field('Time zone', timezone, 'IANA name, e.g. Europe/Berlin'),
        ),
      ),
      h(
        'fieldset',
        {},
        h('legend', {}, 'Retention'),
        h('div', { class: 'grid' }, counts.map(([, label, input]) => field(label, input)), field('Retention time zone', retentionZone)),
      ),
      h(
        'div',
        { class: 'actions' },
        h('button', { type: 'submit' }, policy ? 'Save policy' : 'Create policy'),
        h('button', { type: 'button', class: 'secondary', onclick: () => replace(formBox) }, 'Cancel'),
      ),
    );
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const t = { timezone: timezone.value.trim() };
      const lines = patterns.value.split('\n').map((x) => x.trim()).filter(Boolean);
      if (lines.length) t.patterns = lines;
      if (cron.value.trim()) t.cron = cron.value.trim();
      const r = {};
      for (const [key, , input] of counts) if (input.value !== '') r[key] = Number(input.value);
      if (retentionZone.value.trim()) r.timezone = retentionZone.value.trim();
      const body = { enabled: enabled.checked, trigger: t, retention: r };
      const policyName = name.value.trim();
      const ok = await ctx.run(
        () => (policy ? api('PUT', `/v1/policies/${seg(policyName)}`, body) : api('POST', '/v1/policies', { name: policyName, ...body })),
        `Policy ${policyName} ${policy ? 'saved' : 'created'}.`,
      );
      if (ok) {
        replace(formBox);
        await ctx.run(load);
      }
    });
    replace(formBox, form);
    (policy ? enabled : name).focus();
  }

  await load();
}

function triggerText(t) {
  const parts = [...(t.patterns ?? [])];
  if (t.cron) parts.push(`cron ${t.cron}`);
  return h('div', {}, parts.map((p) => h('div', {}, h('code', {}, p))), h('small', { class: 'muted' }, t.timezone));
}

function retentionText(r) {
  const parts = [];
  if (r.max_backups !== undefined) parts.push(`max ${r.max_backups}`);
  if (r.retention_duration_days !== undefined) parts.push(`${r.retention_duration_days} days`);
  for (const [key, label] of [['day_backups', 'daily'], ['week_backups', 'weekly'], ['month_backups', 'monthly'], ['year_backups', 'yearly']]) {
    if (r[key] !== undefined) parts.push(`${r[key]} ${label}`);
  }
  if (r.timezone) parts.push(`(${r.timezone})`);
  return parts.length ? parts.join(', ') : 'keep all';
}
