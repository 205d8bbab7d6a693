import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, isAbsolute, join } from 'node:path';
import type { Readable, Writable } from 'node:stream';

/** Extended attributes of one entry, name -> raw value, in name order. */
export type Xattrs = [string, Buffer][];

// Large batches: each costs a sh and a getfattr start (getfattr over a copy of /usr/lib, 73 000
// paths: 2.2 s of CPU in batches of 512, 1.1 s in batches of 4096).
const BATCH_PATHS = 2048;
const BATCH_BYTES = 256 * 1024;
/** End of one batch's output: not a line getfattr's dump format can produce. */
const BATCH_END = '# cairn-batch-end';

/**
 * Reads extended attributes with the `attr` package's getfattr (Node has no xattr API), many paths
 * per run, through one helper started at the beginning: `xargs -0 -n 2048 sh -c 'getfattr ...;
 * echo END'`. Paths go NUL-separated on its stdin (names with any bytes survive); a batch shorter
 * than 2048 paths is padded with empty arguments (getfattr skips them), so every batch runs at once
 * and ends with a marker line. One long-lived helper matters: spawning from a process holding
 * hundreds of MiB costs far more than from xargs. Kept: `user.*`, `trusted.*`, and `security.*`
 * when running as root; others (`system.*`: ACLs) are skipped and counted, so the backup can say so
 * once. Symlinks are not followed.
 *
 * Contract: `read` resolves once the batch holding the path has run (call `flush` before waiting
 * on it when no more paths may come soon); a path that vanished or cannot be read has no
 * attributes (its data read reports the problem). Without getfattr every read resolves to
 * undefined and `unavailable` says why. `close` ends the helper.
 */
export class XattrReader {
  /** Why no attributes are read at all (getfattr missing), for one warning. */
  readonly unavailable: string | undefined;
  /** Attribute names skipped, with how many entries had them. */
  readonly skipped = new Map<string, number>();
  private batch: Batch = newBatch();
  /** Batches sent to the helper, oldest first; each ends with one BATCH_END line. */
  private readonly sent: Batch[] = [];
  private readonly keepSecurity = process.getuid?.() === 0;
  private helper: ChildProcessByStdio<Writable, Readable, null> | undefined;
  private failure: string | undefined;
  private pending = '';
  private found = new Map<string, Xattrs>();
  private current: Xattrs | undefined;

  constructor(private readonly command = 'getfattr') {
    this.unavailable = onPath(command) ? undefined : `extended attributes were not backed up: ${command} was not found (install the 'attr' package)`;
    if (this.unavailable) return;
    const script = `${command} --absolute-names --no-dereference --dump --match=- --encoding=base64 -- "$@" 2>/dev/null; echo '${BATCH_END}'`;
    const helper = spawn('xargs', ['-0', '-n', String(BATCH_PATHS), '-s', String(4 * BATCH_BYTES), 'sh', '-c', script, 'sh'], {
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    helper.stdin.on('error', () => undefined);
    helper.stdout.setEncoding('latin1');
    helper.stdout.on('data', (text: string) => this.onOutput(text));
    helper.on('error', (err) => this.fail(`getfattr could not run: ${err.message}`));
    helper.on('close', () => this.fail('the getfattr helper ended early'));
    this.helper = helper;
  }

  /** Why attributes stopped being read part way (the helper failed), for one warning. */
  get broken(): string | undefined {
    return this.failure === 'closed' ? undefined : this.failure;
  }

  /** The attributes of `absPath` (raw bytes), or undefined when it has none. */
  read(absPath: Buffer): Promise<Xattrs | undefined> {
    if (this.unavailable || this.failure !== undefined) return Promise.resolve(undefined);
    const b = this.batch;
    const p = new Promise<Xattrs | undefined>((resolve) => b.waiters.push([absPath.toString('latin1'), resolve]));
    b.paths.push(absPath, NUL);
    b.bytes += absPath.length + 1;
    if (b.waiters.length >= BATCH_PATHS || b.bytes >= BATCH_BYTES) this.flush();
    return p;
  }

  /** Sends the pending paths now, padded to a full batch so the helper runs them at once. */
  flush(): void {
    const b = this.batch;
    if (b.waiters.length === 0) return;
    this.batch = newBatch();
    if (this.failure !== undefined) return settle(b, new Map());
    for (let n = b.waiters.length; n < BATCH_PATHS; n++) b.paths.push(NUL);
    this.sent.push(b);
    this.helper!.stdin.write(Buffer.concat(b.paths));
  }

  /** Ends the helper (pending reads resolve without attributes). */
  close(): void {
    this.fail('closed');
    this.helper?.stdin.end();
  }

  private fail(why: string): void {
    this.failure ??= why;
    for (const b of this.sent.splice(0)) settle(b, new Map());
    settle(this.batch, new Map());
    this.batch = newBatch();
  }

  /** getfattr's dump format: `# file: PATH`, then `name=0sBASE64` lines, a blank line; `\ooo` escapes. */
  private onOutput(text: string): void {
    const lines = (this.pending + text).split('\n');
    this.pending = lines.pop()!;
    for (const line of lines) {
      if (line === BATCH_END) {
        const b = this.sent.shift();
        if (b) settle(b, this.found);
        this.found = new Map();
        this.current = undefined;
        continue;
      }
      if (line.startsWith('# file: ')) {
        this.current = [];
        this.found.set(unescape(line.slice(8)), this.current);
        continue;
      }
      if (!this.current || line === '') continue;
      const eq = line.indexOf('=');
      const name = Buffer.from(unescape(eq < 0 ? line : line.slice(0, eq)), 'latin1').toString('utf8');
      if (!this.keeps(name)) {
        this.skipped.set(name, (this.skipped.get(name) ?? 0) + 1);
        continue;
      }
      this.current.push([name, decodeValue(eq < 0 ? '' : line.slice(eq + 1))]);
    }
  }

  private keeps(name: string): boolean {
    return name.startsWith('user.') || name.startsWith('trusted.') || (this.keepSecurity && name.startsWith('security.'));
  }
}

interface Batch {
  paths: Buffer[];
  bytes: number;
  waiters: [string, (x: Xattrs | undefined) => void][];
}

function newBatch(): Batch {
  return { paths: [], bytes: 0, waiters: [] };
}

function settle(b: Batch, found: Map<string, Xattrs>): void {
  for (const [key, resolve] of b.waiters) {
    const list = found.get(key);
    if (list && list.length) resolve(list.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0)));
    else resolve(undefined);
  }
  b.waiters = [];
}

const NUL = Buffer.from([0]);

/** Undoes getfattr's `\ooo` escapes on a latin1 string (one char per byte). */
function unescape(s: string): string {
  return s.includes('\\') ? s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))) : s;
}

/** `0s` base64, `0x` hex, or a quoted text value. */
function decodeValue(text: string): Buffer {
  if (text.startsWith('0s')) return Buffer.from(text.slice(2), 'base64');
  if (text.startsWith('0x')) return Buffer.from(text.slice(2), 'hex');
  if (text.startsWith('"') && text.endsWith('"')) return Buffer.from(unescape(text.slice(1, -1)), 'latin1');
  return Buffer.from(text, 'latin1');
}

/** Whether `command` is an executable file: itself when it has a slash, else in a folder of PATH (as a shell finds it). */
function onPath(command: string): boolean {
  const candidates = command.includes('/') ? [command] : (process.env.PATH ?? '').split(delimiter).filter((d) => isAbsolute(d)).map((d) => join(d, command));
  return candidates.some((file) => {
    try {
      accessSync(file, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}
