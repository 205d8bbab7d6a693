/**
 * Charts as SVG drawn here, no library. Each chart is an `<svg role="img">` whose accessible name says
 * in words what it shows, so a screen reader (and a test) reads the numbers, not the picture.
 * Colours come from CSS classes (console.css), never inline styles (the CSP forbids them).
 */
import { h, s } from './dom.js';
import { bytes, ratio } from './format.js';

/**
 * A ring split into `segments` [{label, value, kind}] (kind picks the colour class), with `centre`
 * text in the middle and a legend beside it.
 */
export function donut(title, segments, centre) {
  const total = segments.reduce((sum, x) => sum + x.value, 0);
  const r = 40;
  const circumference = 2 * Math.PI * r;
  const label = `${title}: ${segments.map((x) => `${x.value} ${x.label}`).join(', ')}`;
  const svg = s('svg', { viewBox: '0 0 120 120', role: 'img', 'aria-label': label, class: 'chart donut' }, s('title', {}, label));
  svg.append(s('circle', { cx: 60, cy: 60, r, class: 'ring-empty' }));
  let offset = 0;
  for (const seg of segments) {
    if (seg.value <= 0 || total === 0) continue;
    const length = (seg.value / total) * circumference;
    svg.append(
      s('circle', {
        cx: 60,
        cy: 60,
        r,
        class: `ring kind-${seg.kind}`,
        'stroke-dasharray': `${length} ${circumference - length}`,
        'stroke-dashoffset': String(-offset),
        transform: 'rotate(-90 60 60)',
      }),
    );
    offset += length;
  }
  svg.append(s('text', { x: 60, y: 66, 'text-anchor': 'middle', class: 'centre' }, centre));
  return h('div', { class: 'chart-box' }, svg, legend(segments));
}

/** Vertical bars for `bars` [{label, value, kind}], each with its number above it. */
export function bars(title, items) {
  const max = Math.max(1, ...items.map((x) => x.value));
  const width = 60 * items.length + 20;
  const label = `${title}: ${items.map((x) => `${x.value} ${x.label}`).join(', ')}`;
  const svg = s('svg', { viewBox: `0 0 ${width} 130`, role: 'img', 'aria-label': label, class: 'chart bars' }, s('title', {}, label));
  items.forEach((item, i) => {
    const height = Math.round((item.value / max) * 90);
    const x = 20 + i * 60;
    svg.append(
      s('rect', { x, y: 105 - height, width: 40, height: Math.max(height, 1), class: `bar kind-${item.kind}` }),
      s('text', { x: x + 20, y: 100 - height, 'text-anchor': 'middle', class: 'value' }, String(item.value)),
      s('text', { x: x + 20, y: 122, 'text-anchor': 'middle', class: 'axis' }, item.label),
    );
  });
  return h('div', { class: 'chart-box' }, svg);
}

/**
 * One vault's storage: a bar of used against capacity (against the largest of used/logical when the
 * vault has no capacity), the logical size as a lighter bar, and the dedup ratio in words.
 */
export function usage(vault) {
  const { name, usedBytes, capacityBytes, logicalBytes, dedupRatio } = vault;
  const scale = capacityBytes ?? Math.max(usedBytes, logicalBytes ?? 0, 1);
  const width = 300;
  const part = (n) => Math.min(width, Math.round((n / scale) * width));
  const capacityText = capacityBytes === null ? 'no capacity limit' : `${bytes(capacityBytes)} capacity`;
  const percent = capacityBytes ? ` (${Math.round((usedBytes / capacityBytes) * 100)} %)` : '';
  const label = `Vault ${name}: ${bytes(usedBytes)} used of ${capacityText}${percent}, dedup ratio ${ratio(dedupRatio)}`;
  const full = capacityBytes !== null && usedBytes >= capacityBytes * 0.9;
  const svg = s(
    'svg',
    { viewBox: `0 0 ${width} 24`, role: 'img', 'aria-label': label, class: 'chart usage', preserveAspectRatio: 'none' },
    s('title', {}, label),
    s('rect', { x: 0, y: 2, width, height: 20, class: 'track' }),
    logicalBytes ? s('rect', { x: 0, y: 2, width: part(logicalBytes), height: 20, class: 'logical' }) : null,
    s('rect', { x: 0, y: 6, width: Math.max(part(usedBytes), usedBytes > 0 ? 1 : 0), height: 12, class: full ? 'used kind-failed' : 'used' }),
  );
  return h(
    'div',
    { class: 'usage-row' },
    h('div', { class: 'usage-head' }, h('strong', {}, name), h('span', {}, `${bytes(usedBytes)} of ${capacityText}${percent}`)),
    svg,
    h('div', { class: 'usage-foot' }, `logical ${bytes(logicalBytes)} · dedup ${ratio(dedupRatio)} · ${vault.backupCount} backups · ${vault.type}`),
  );
}

function legend(segments) {
  return h(
    'ul',
    { class: 'legend' },
    segments.map((x) => h('li', {}, h('span', { class: `swatch kind-${x.kind}`, 'aria-hidden': 'true' }), `${x.label}: ${x.value}`)),
  );
}
