import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const script = join(dirname(fileURLToPath(import.meta.url)), 'systemd-root.sh');

export interface CommandResult {
  code: number;
  out: string;
  err: string;
}

/**
 * A real systemd, PID 1 of its own namespaces, on a throw-away overlay of this machine's root with
 * a Cairn .deb installed (see systemd-root.sh). `run` executes a command inside (its mount, PID,
 * UTS and IPC namespaces); `close` ends every process in it and with them the overlay.
 */
export class SystemdRoot {
  private constructor(
    private readonly child: ChildProcess,
    /** systemd's PID as this machine sees it. */
    readonly pid: number,
    private readonly log: () => string,
  ) {}

  static async boot(deb: string, base: string): Promise<SystemdRoot> {
    mkdirSync(base, { recursive: true });
    const logFile = join(base, '..', `${base.split('/').pop()}.log`);
    const child = spawn('sh', ['-c', `exec unshare --pid --fork --mount --uts --ipc ${script} "$0" "$1" > "$2" 2>&1`, base, deb, logFile], {
      stdio: 'ignore',
      detached: true,
    });
    const log = (): string => {
      try {
        return readFileSync(logFile, 'utf8');
      } catch {
        return '';
      }
    };
    const deadline = Date.now() + 60_000;
    // systemd is the child of unshare (which is the child of sh's exec, so `child.pid`).
    let pid: number | undefined;
    while (Date.now() < deadline) {
      const children = spawnSync('pgrep', ['-P', String(child.pid)], { encoding: 'utf8' }).stdout.trim();
      const candidate = children === '' ? undefined : Number(children.split('\n')[0]);
      if (candidate !== undefined && readFileSync(`/proc/${candidate}/comm`, 'utf8').trim() === 'systemd') {
        pid = candidate;
        const root = new SystemdRoot(child, pid, log);
        const state = root.run(['systemctl', 'is-system-running', '--wait']);
        if (['running', 'degraded'].includes(state.out.trim())) return root;
      }
      if (child.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    if (pid !== undefined) process.kill(pid, 'SIGKILL');
    throw new Error(`systemd did not come up in its namespaces (needs root, overlayfs, cgroups); output:\n${log()}`);
  }

  /** Runs `argv` inside the root (as root), to its end. */
  run(argv: string[], input?: string): CommandResult {
    const r = spawnSync('nsenter', ['-t', String(this.pid), '-m', '-p', '-u', '-i', '--', ...argv], {
      encoding: 'utf8',
      input,
      timeout: 120_000,
      maxBuffer: 64 << 20,
    });
    return { code: r.status ?? 128, out: r.stdout ?? '', err: (r.stderr ?? '') + (r.error ? String(r.error) : '') };
  }

  /** `run`, failing with the command's output unless it exits 0. */
  must(argv: string[], input?: string): string {
    const r = this.run(argv, input);
    if (r.code !== 0) throw new Error(`${argv.join(' ')} exited ${r.code} in the systemd root:\n${r.out}${r.err}\nboot log:\n${this.log()}`);
    return r.out;
  }

  close(): void {
    try {
      process.kill(this.pid, 'SIGKILL');
    } catch {
      // gone already
    }
    this.child.kill('SIGKILL');
  }
}
