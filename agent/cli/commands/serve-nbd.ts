import { connect } from 'node:net';
import { lstat, unlink } from 'node:fs/promises';
import { resolve } from 'node:path';
import { CairnError, fromSystemError } from '../../../shared/errors.js';
import { onInterrupt } from '../../../shared/interrupt.js';
import { BackupDisk } from '../../../shared/vault/backup-disk.js';
import { BackupExport, type BlockExport } from '../../nbd-server/block-export.js';
import { NbdServer } from '../../nbd-server/nbd-server.js';
import { OverlayExport } from '../../nbd-server/overlay.js';
import { formatNbdUrl, NBD_DEFAULT_PORT, type NbdTarget } from '../../source/nbd/nbd-url.js';
import { parse, parseSize, vaultOptions } from '../args.js';
import { openVault } from '../context.js';
import { formatBytes } from '../format.js';

export const serveNbdHelp = `Usage:
  cairn serve-nbd <id|name> --vault <vault> [--listen unix:PATH | HOST:PORT] [--disk N]
                  [--overlay FILE] [--cache SIZE] [--json]

Instant recovery: exports the disks of a backup over NBD, straight from the vault, until stopped
(Ctrl-C or SIGTERM). Chunks are fetched when first read, checked against their ids and cached;
all-zero chunks are reported as holes (base:allocation). Each disk is an export named disk0,
disk1, ...; the default export ("") is disk 0, or disk N with --disk. Exports are read-only.
  --listen unix:PATH   a Unix socket (connect with nbd+unix:///disk0?socket=PATH)
  --listen HOST:PORT   a TCP address (default 127.0.0.1:${NBD_DEFAULT_PORT}; port 0 picks a free one).
                       NBD has no authentication here: listen only where you trust every client.
  --disk N             the default export, and the disk --overlay applies to
  --overlay FILE       make that disk writable: writes go to FILE (sparse, copy-on-write) and its map
                       FILE.cairn-map; the backup is never changed. Serving the same backup and disk
                       with the same FILE again continues where it stopped.
  --cache SIZE         memory for decoded chunks, shared by the disks (default 256M)
  --json               print the exports as one JSON line instead of text`;

export async function serveNbdCommand(
  argv: string[],
  out: (s: string) => void,
  err: (s: string) => void = (s) => process.stderr.write(s + '\n'),
): Promise<number> {
  const { values, positionals } = parse('serve-nbd', argv, {
    ...vaultOptions,
    listen: { type: 'string' },
    disk: { type: 'string' },
    overlay: { type: 'string' },
    cache: { type: 'string' },
  });
  if (values.help) return (out(serveNbdHelp), 0);
  if (positionals.length !== 1) throw new CairnError('USAGE', `serve-nbd: give exactly one backup id or name; see 'cairn backups list'`);
  const target = parseListen(values.listen ?? `127.0.0.1:${NBD_DEFAULT_PORT}`);
  const cache = values.cache === undefined ? 256 * 1024 * 1024 : parseSize(values.cache, '--cache');

  // Bound first: a taken address fails at once, before the passphrase and the index.
  const log = (line: string) => err(`cairn serve-nbd: ${line}`);
  const server = new NbdServer({ log });
  const bound = await listen(server, target);
  const exports: BlockExport[] = [];
  const stop = async () => {
    await server.close();
    for (const e of exports) await e.close().catch(() => undefined);
    if ('unix' in bound) await unlink(bound.unix).catch(() => undefined);
  };
  let forget = (): unknown => undefined;
  const stopped = new Promise<void>((done) => {
    forget = onInterrupt(async () => {
      await stop();
      log('stopped');
      done();
    });
  });

  let m;
  try {
    const vault = await openVault(values, 'serve-nbd');
    m = await vault.findBackup(positionals[0]);
    let defaultDisk = m.disks[0]?.index ?? 0;
    if (values.disk !== undefined) {
      const d = m.disks.find((x) => String(x.index) === values.disk);
      if (!d) throw new CairnError('USAGE', `serve-nbd: backup ${m.name} has no disk '${values.disk}'; it has disks 0 to ${m.disks.length - 1}`);
      defaultDisk = d.index;
    }
    if (values.overlay !== undefined && values.disk === undefined && m.disks.length > 1) {
      throw new CairnError('USAGE', `serve-nbd: backup ${m.name} has ${m.disks.length} disks; say which one --overlay is for with --disk N`);
    }
    const { index } = await vault.loadIndex({ includeCondemned: true });
    for (const d of m.disks) {
      const disk = await BackupDisk.open(vault, index, d, { cacheBytes: Math.floor(cache / m.disks.length), readAhead: 1024 * 1024 });
      const name = `disk${d.index}`;
      const description = `disk ${d.index} of backup ${m.name} (${m.id}), ${d.source}`;
      if (values.overlay !== undefined && d.index === defaultDisk) {
        exports.push(
          await OverlayExport.open(name, description, disk, resolve(values.overlay), { vault: vault.config.id, backup: m.id, disk: d.index, size: d.size }),
        );
      } else exports.push(new BackupExport(name, description, disk));
    }
    server.setExports(exports, `disk${defaultDisk}`);
    if (!values.json) out(`serving backup ${m.name} (${m.id}) from ${vault.store.location}:`);
  } catch (e) {
    forget();
    await stop();
    throw e;
  }

  const list = exports.map((e) => ({
    name: e.name,
    size: e.size,
    writable: e.writable,
    default: server.find('') === e,
    url: formatNbdUrl(bound, e.name),
    ...(e.writable ? { overlay: resolve(values.overlay!) } : {}),
  }));
  if (values.json) out(JSON.stringify({ id: m.id, name: m.name, exports: list }));
  else {
    for (const e of list) {
      out(`  ${e.url}   ${formatBytes(e.size)}, ${e.writable ? `writable, overlay ${e.overlay}` : 'read-only'}${e.default ? ', default export' : ''}`);
    }
    out('stop with Ctrl-C or SIGTERM');
  }

  await stopped;
  return 0;
}

/** `unix:PATH`, `HOST:PORT`, `[IPv6]:PORT` or `:PORT` (loopback). */
export function parseListen(text: string): NbdTarget {
  if (text.startsWith('unix:')) {
    const path = text.slice('unix:'.length);
    if (!path) throw new CairnError('USAGE', `--listen ${text}: give the socket path, e.g. unix:/run/cairn-nbd.sock`);
    return { unix: resolve(path) };
  }
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d+)$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !Number.isInteger(port) || port > 65535) {
    throw new CairnError('USAGE', `--listen '${text}' is not an address; give HOST:PORT (e.g. 127.0.0.1:${NBD_DEFAULT_PORT}) or unix:PATH`);
  }
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

/** Binds the server; a stale Unix socket (nobody listening) is replaced, anything else is an error. */
async function listen(server: NbdServer, target: NbdTarget): Promise<NbdTarget> {
  if ('unix' in target) {
    const existing = await lstat(target.unix).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return undefined;
      throw fromSystemError(e, 'cannot use the socket path', target.unix);
    });
    if (existing && !existing.isSocket()) {
      throw new CairnError('ALREADY_EXISTS', `--listen unix:${target.unix}: the path exists and is not a socket; choose another path`);
    }
    if (existing) {
      if (await answers(target.unix)) {
        throw new CairnError('BUSY', `--listen unix:${target.unix}: another server listens on that socket; stop it or choose another path`);
      }
      await unlink(target.unix).catch(() => undefined);
    }
  }
  try {
    const s = await server.listen(target);
    if ('unix' in target) return target;
    const addr = s.address();
    return { host: target.host, port: typeof addr === 'object' && addr ? addr.port : target.port };
  } catch (e) {
    const where = 'unix' in target ? `unix:${target.unix}` : `${target.host}:${target.port}`;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE') throw new CairnError('BUSY', `--listen ${where}: the address is in use by another program; choose another port or stop that program`);
    if (code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND' || code === 'EAI_AGAIN') {
      throw new CairnError('USAGE', `--listen ${where}: this machine has no such address; give one of its addresses, e.g. 127.0.0.1`);
    }
    throw fromSystemError(e, 'cannot listen', where);
  }
}

function answers(path: string): Promise<boolean> {
  return new Promise((done) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      done(true);
    });
    s.once('error', () => done(false));
  });
}
