import { CairnError, exitCodeFor } from '../../shared/errors.js';
import { cairnVersion } from '../../shared/runtime/version.js';
import { closeState, closeStores } from './context.js';
import { runInterruptHandlers } from '../../shared/interrupt.js';

const help = `cairn: block-level backups of disks into deduplicated, compressed, encrypted vaults

Usage:
  cairn vault init <vault> [--type disk|server|filesystem|hybrid] [--chunk-size SIZE]
  cairn backup <source>... --vault <vault> [--name NAME] [--json]
  cairn backups list --vault <vault> [--json]
  cairn backups show <id|name> --vault <vault> [--json]
  cairn backups delete <id|name> --vault <vault>
  cairn restore <id|name> --vault <vault> --to <path> [--disk N] [--force]
  cairn restore <id|name> --vault <vault> --to <folder> [--path P]... [--force]   (file-system backups)
  cairn ls <id|name> --vault <vault> [path] [-l] [--json]   (browse a file-system backup)
  cairn serve-nbd <id|name> --vault <vault> [--listen unix:PATH | HOST:PORT] [--overlay FILE]   (instant recovery over NBD)
  cairn vault gc --vault <vault>
  cairn vault verify --vault <vault> [--read-data]
  cairn quickstart [--dir DIR]
  cairn agent run --config FILE        (the daemon: policies on schedule, status endpoint)
  cairn agent status [--config FILE | --address HOST:PORT] [--json]
  cairn agent enroll TOKEN --config FILE   (join a control plane: policies, commands, catalog)
  cairn control-plane run|token create ...   (the control plane: REST API, web console, agents' WebSocket)

<vault> is a folder path, file:///path or s3://bucket/prefix[?endpoint=URL&region=R&path-style=true]
(S3 credentials from the standard AWS chain). The passphrase comes from the CAIRN_PASSPHRASE environment
variable or --passphrase-file FILE. Local state (history, caches) lives in CAIRN_STATE_DIR, by default
~/.local/state/cairn. 'cairn COMMAND --help' tells more about each command.`;


const INTERRUPT_GRACE_MS = 10_000;

/**
 * Ctrl-C or a service stop: say what state things are in, undo what is registered (leases, so gc
 * need not wait for them to expire; partial restore files) and exit 130/143. Nothing half-written
 * is ever visible in a vault.
 */
function handleSignals(command: string | undefined): void {
  const after: Record<string, string> = {
    backup: '; nothing was committed, and the next backup reuses the data already uploaded',
    // A file-system restore adds what it leaves (agent/cli/commands/restore.ts).
    restore: '; partial files removed, uploads aborted',
    'serve-nbd': '; the export is closed (flushed overlay writes are kept)',
  };
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
    process.once(signal, () => {
      process.stderr.write(`\ncairn: interrupted by ${signal}${after[command ?? ''] ?? ''}\n`);
      // Cleanup gets up to INTERRUPT_GRACE_MS (a multipart upload is aborted again once its parts in
      // flight have settled, which a slow server takes seconds for); a second signal ends the
      // process at once (the handler is gone, so the default action applies).
      setTimeout(() => process.exit(code), INTERRUPT_GRACE_MS).unref();
      void runInterruptHandlers().finally(() => process.exit(code));
    });
  }
}

/**
 * Runs one command. Each command's module is imported when it runs: loading every command's
 * dependencies (the S3 SDK, the daemon, every block source) cost about 1 s of each run.
 */
export async function main(argv: string[]): Promise<number> {
  const out = (s: string) => process.stdout.write(s + '\n');
  const [command, ...rest] = argv;
  handleSignals(command);
  try {
    switch (command) {
      case 'vault':
        return await (await import('./commands/vault.js')).vaultCommand(rest, out);
      case 'backup':
        return await (await import('./commands/backup.js')).backupCommand(rest, out);
      case 'backups':
        return await (await import('./commands/backups.js')).backupsCommand(rest, out);
      case 'restore':
        return await (await import('./commands/restore.js')).restoreCommand(rest, out);
      case 'ls':
        return await (await import('./commands/ls.js')).lsCommand(rest, out);
      case 'serve-nbd':
        return await (await import('./commands/serve-nbd.js')).serveNbdCommand(rest, out);
      case 'agent':
        return await (await import('./commands/agent.js')).agentCommand(rest, out);
      case 'control-plane':
        // Loaded only when asked for: the agent's commands never load the control plane.
        return await (await import('../../control-plane/cli/control-plane-command.js')).controlPlaneCommand(rest, out);
      case 'quickstart':
        return await (await import('./commands/quickstart.js')).quickstartCommand(rest, out);
      case '--version':
      case '-V':
        out(cairnVersion());
        return 0;
      case undefined:
      case '--help':
      case '-h':
      case 'help':
        out(help);
        return 0;
      default:
        throw new CairnError('USAGE', `unknown command '${command}'; see 'cairn --help'`);
    }
  } catch (err) {
    reportError(err);
    return exitCodeFor(err);
  } finally {
    closeState();
    closeStores();
  }
}

/** One line for the user; the stack only with CAIRN_DEBUG=1. */
export function reportError(err: unknown): void {
  if (err instanceof CairnError) {
    process.stderr.write(`cairn: error: ${err.message}\n`);
  } else {
    process.stderr.write(`cairn: internal error: ${(err as Error)?.message ?? String(err)} (set CAIRN_DEBUG=1 for details and report it)\n`);
  }
  if (process.env.CAIRN_DEBUG) process.stderr.write(`${(err as Error)?.stack ?? ''}\n`);
}
