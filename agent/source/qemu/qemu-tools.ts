import { execFile } from 'node:child_process';
import { CairnError } from '../../../shared/errors.js';
import { childEnv } from '../../../shared/runtime/child-env.js';

const PACKAGES: Record<string, string> = {
  'qemu-img': 'qemu-utils',
  'qemu-nbd': 'qemu-utils',
  'qemu-storage-daemon': 'qemu-system-common',
};

/**
 * Runs a QEMU tool (qemu-img, qemu-nbd) and returns its stdout. Failures are SOURCE_UNREADABLE
 * errors that say `what` was being done and carry the tool's own message (its stderr).
 */
export function runQemuTool(tool: string, args: string[], what: string, timeoutMs = 120_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(tool, args, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024, env: childEnv() }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      const sys = err as NodeJS.ErrnoException & { killed?: boolean };
      if (sys.code === 'ENOENT') {
        return reject(
          new CairnError('SOURCE_UNREADABLE', `${what}: ${tool} is not installed; install the Debian package ${PACKAGES[tool] ?? tool}`, { cause: err }),
        );
      }
      const said = stderr.trim().split('\n').filter(Boolean).slice(-3).join(' ') || (sys.killed ? `killed after ${timeoutMs / 1000} s` : err.message);
      reject(new CairnError('SOURCE_UNREADABLE', `${what}: ${tool} failed: ${said.replace(/^(qemu-img|qemu-nbd): /, '')}`, { cause: err }));
    });
  });
}
