import { CairnError } from '../../../shared/errors.js';
import type { Manifest } from '../../../shared/vault/manifest.js';
import { deleteBackup } from '../../backup/delete-backup.js';
import { parse, vaultOptions } from '../args.js';
import { openState, openStore, openVault } from '../context.js';
import { formatBytes, formatTime, table } from '../format.js';

export const backupsHelp = `Usage:
  cairn backups list --vault <vault> [--json]
  cairn backups show <id|name> --vault <vault> [--json]
  cairn backups delete <id|name> --vault <vault> [--json]
  cairn backups history [--vault <vault>] [--json]

Deleting a backup never breaks another: each is a full restore point by reference. The space of data
no remaining backup needs is freed by 'cairn vault gc'. 'history' lists the backup runs of this
machine from its local state, failed ones included (it needs no passphrase).`;

function summary(m: Manifest) {
  return {
    id: m.id,
    name: m.name,
    kind: m.kind,
    parent: m.parent,
    resource: m.resource,
    startedAt: m.startedAt,
    finishedAt: m.finishedAt,
    host: m.host,
    consistency: m.consistency,
    bytesRead: m.bytesRead,
    bytesStored: m.bytesStored,
    size: m.disks.reduce((s, d) => s + d.size, 0),
    usedBytes: m.disks.reduce((s, d) => s + d.usedBytes, 0),
    warnings: m.warnings ?? [],
    disks: m.disks,
  };
}

export async function backupsCommand(argv: string[], out: (s: string) => void): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === '--help' || sub === '-h' || sub === 'help') return (out(backupsHelp), 0);
  if (sub === 'history') return history(rest, out);
  if (!['list', 'show', 'delete'].includes(sub)) {
    throw new CairnError('USAGE', `unknown command 'cairn backups ${sub}'; see 'cairn backups --help'`);
  }
  const command = `backups ${sub}`;
  const { values, positionals } = parse(command, rest, vaultOptions);
  if (values.help) return (out(backupsHelp), 0);
  if (sub === 'list' && positionals.length) throw new CairnError('USAGE', `${command}: unexpected argument '${positionals[0]}'`);
  if (sub !== 'list' && positionals.length !== 1) {
    throw new CairnError('USAGE', `${command}: give exactly one backup id or name; see 'cairn backups list'`);
  }
  const vault = await openVault(values, command);

  if (sub === 'list') {
    const all = await vault.listBackups();
    if (values.json) out(JSON.stringify(all.map(summary)));
    else if (all.length === 0) out(`no backups in ${vault.store.location}`);
    else {
      out(
        table(
          ['ID', 'NAME', 'KIND', 'STARTED', 'DISKS', 'SIZE', 'USED', 'STORED NEW'],
          all.map((m) => {
            const s = summary(m);
            return [m.id, m.name, m.kind, formatTime(m.startedAt), String(m.disks.length), formatBytes(s.size), formatBytes(s.usedBytes), formatBytes(m.bytesStored)];
          }),
        ),
      );
    }
    return 0;
  }

  const m = await vault.findBackup(positionals[0]);
  if (sub === 'show') {
    if (values.json) out(JSON.stringify(summary(m)));
    else {
      out(`backup     ${m.name} (${m.id})`);
      out(`kind       ${m.kind}${m.parent ? `, parent ${m.parent}` : ''}`);
      out(`started    ${m.startedAt}`);
      out(`finished   ${m.finishedAt}`);
      out(`host       ${m.host}, ${m.consistency.replace('_', '-')}`);
      out(`read       ${formatBytes(m.bytesRead)}, stored ${formatBytes(m.bytesStored)} new`);
      for (const d of m.disks) {
        out(
          `disk ${d.index}     ${d.source}: ${formatBytes(d.size)}, ${formatBytes(d.usedBytes)} used, ` +
            `${d.newChunks} new chunks (${formatBytes(d.newBytes)}), changes by ${d.changeDetection}` +
            (d.bytesRead !== undefined ? `, read ${formatBytes(d.bytesRead)}` : ''),
        );
      }
      for (const w of m.warnings ?? []) out(`warning    ${w}`);
    }
    return 0;
  }

  // delete: the manifest first (the backup is gone at once), then its block maps.
  await deleteBackup(vault, m);
  if (values.json) out(JSON.stringify({ deleted: { id: m.id, name: m.name } }));
  else out(`deleted backup ${m.name} (${m.id}); run 'cairn vault gc' to free data no other backup needs`);
  return 0;
}

/** Backup runs recorded in the local state (this machine only), oldest first. */
async function history(argv: string[], out: (s: string) => void): Promise<number> {
  const { values, positionals } = parse('backups history', argv, { vault: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } });
  if (values.help) return (out(backupsHelp), 0);
  if (positionals.length) throw new CairnError('USAGE', `backups history: unexpected argument '${positionals[0]}'`);
  const location = values.vault ? (await openStore(values.vault)).location : undefined;
  const runs = openState()
    .runs()
    .filter((r) => !location || r.vaultLocation === location);
  if (values.json) out(JSON.stringify(runs));
  else if (runs.length === 0) out('no backup runs recorded on this machine' + (location ? ` for ${location}` : ''));
  else {
    out(
      table(
        ['STARTED', 'STATUS', 'NAME', 'KIND', 'VAULT', 'READ', 'STORED', 'ERROR'],
        runs.map((r) => [
          formatTime(r.startedAt),
          r.status,
          r.name ?? '-',
          r.kind ?? '-',
          r.vaultLocation,
          formatBytes(r.bytesRead),
          formatBytes(r.bytesStored),
          r.error ?? '',
        ]),
      ),
    );
  }
  return 0;
}
