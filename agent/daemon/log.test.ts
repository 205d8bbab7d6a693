import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';

import { afterEach, describe, expect, it, vi } from 'vitest';

import { ManualClock } from '../../shared/clock.js';
import { isCairnError } from '../../shared/errors.js';
import { createLogger, redact } from './log.js';

const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'cairn-log-'));
  dirs.push(d);
  return d;
}

/** A console stand-in that keeps what was written. */
function captureStream(): { stream: Writable; text: () => string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(String(chunk));
      cb();
    },
  });
  return { stream, text: () => chunks.join('') };
}

const clock = new ManualClock(Date.parse('2026-11-25T10:00:00.123Z'));

describe('agent log', () => {
  it('writes JSON lines with timestamp, level, message and fields', async () => {
    const dir = await tempDir();
    const log = createLogger({ dir, console: false, clock, level: 'debug' });
    log.info('backup finished', { resource: 'web-01', bytes: 42, level: 'shadowed' });
    log.warn('slow store', { ms: 1500 });
    log.debug('detail');
    log.error('backup failed', { error: new Error('disk gone') });
    await log.close();

    const lines = (await readFile(join(dir, 'agent.log'), 'utf8')).trimEnd().split('\n');
    expect(lines.map((l) => JSON.parse(l))).toEqual([
      { timestamp: '2026-11-25T10:00:00.123Z', level: 'info', message: 'backup finished', resource: 'web-01', bytes: 42, level_: 'shadowed' },
      { timestamp: '2026-11-25T10:00:00.123Z', level: 'warn', message: 'slow store', ms: 1500 },
      { timestamp: '2026-11-25T10:00:00.123Z', level: 'debug', message: 'detail' },
      { timestamp: '2026-11-25T10:00:00.123Z', level: 'error', message: 'backup failed', error: 'disk gone' },
    ]);
    expect(Object.keys(JSON.parse(lines[0])).slice(0, 3)).toEqual(['timestamp', 'level', 'message']);
  });

  it('drops lines below the level and refuses an unknown level', async () => {
    const dir = await tempDir();
    const log = createLogger({ dir, console: false, level: 'warn' });
    log.info('not written');
    log.debug('not written');
    log.warn('written');
    await log.close();
    const lines = (await readFile(join(dir, 'agent.log'), 'utf8')).trimEnd().split('\n');
    expect(lines.map((l) => JSON.parse(l).message)).toEqual(['written']);
    expect(() => createLogger({ level: 'verbose' })).toThrow(/log level "verbose" is not known/);
    try {
      createLogger({ level: 'loud' });
    } catch (err) {
      expect(isCairnError(err, 'USAGE')).toBe(true);
    }
  });

  it('rotates at maxBytes and keeps maxFiles files, the newest in agent.log', async () => {
    const dir = await tempDir();
    const maxBytes = 2000;
    const log = createLogger({ dir, console: false, maxBytes, maxFiles: 3, clock });
    const lineOf = (i: number) => `line ${String(i).padStart(4, '0')} ${'x'.repeat(60)}`;
    const count = 200; // about 100 bytes each: ten times maxBytes
    for (let i = 0; i < count; i++) log.info(lineOf(i));
    await log.close();

    const files = (await readdir(dir)).sort();
    expect(files).toEqual(['agent.log', 'agent1.log', 'agent2.log']);
    const messages = async (f: string) =>
      (await readFile(join(dir, f), 'utf8'))
        .trimEnd()
        .split('\n')
        .map((l) => JSON.parse(l).message as string);
    const current = await messages('agent.log');
    const older = await messages('agent1.log');
    const oldest = await messages('agent2.log');
    // agent.log holds the last line; together the files hold a contiguous run of the newest lines.
    expect(current.at(-1)).toBe(lineOf(count - 1));
    const kept = [...oldest, ...older, ...current];
    const first = Number(kept[0].slice(5, 9));
    expect(kept).toEqual(Array.from({ length: kept.length }, (_, k) => lineOf(first + k)));
    expect(first).toBeGreaterThan(0);
    // A rotated file was full: the next line would have taken it past maxBytes.
    const lineBytes = Buffer.byteLength((await readFile(join(dir, 'agent.log'), 'utf8')).split('\n')[0]) + 1;
    for (const f of ['agent1.log', 'agent2.log']) {
      const size = (await stat(join(dir, f))).size;
      expect(size).toBeLessThanOrEqual(maxBytes);
      expect(size).toBeGreaterThan(maxBytes - lineBytes);
    }
    expect((await stat(join(dir, 'agent.log'))).size).toBeLessThanOrEqual(maxBytes);
  });

  it('redacts secret fields at any depth', async () => {
    const dir = await tempDir();
    const log = createLogger({ dir, console: false, clock });
    log.info('vault opened', {
      vault: 'offsite',
      passphrase: 'hunter2',
      store: { accessKeyId: 'AKIA123', secret_access_key: 'abc', sessionToken: 't', region: 'eu' },
      list: [{ password: 'p' }],
      apiKey: 'k',
      Token: 'T',
    });
    await log.close();
    const text = await readFile(join(dir, 'agent.log'), 'utf8');
    for (const secret of ['hunter2', 'AKIA123', '"abc"', '"t"', '"p"', '"k"', '"T"']) expect(text).not.toContain(secret);
    expect(JSON.parse(text)).toMatchObject({
      vault: 'offsite',
      passphrase: '[redacted]',
      store: { accessKeyId: '[redacted]', secret_access_key: '[redacted]', sessionToken: '[redacted]', region: 'eu' },
      list: [{ password: '[redacted]' }],
      apiKey: '[redacted]',
      Token: '[redacted]',
    });
    // Words that only contain a secret word are kept.
    expect(redact({ keyboard: 1, monkey: 2, tokens_used: 3 })).toEqual({ keyboard: 1, monkey: 2, tokens_used: 3 });
  });

  it('writes readable console lines with a timestamp outside systemd', async () => {
    const out = captureStream();
    const log = createLogger({ consoleStream: out.stream, env: {}, clock });
    log.info('backup started', { resource: 'web-01', vault: 'off site', password: 'x', n: 3 });
    log.error('backup failed', { error: new Error('read error at 4096') });
    await log.close();
    expect(out.text()).toBe(
      '2026-11-25T10:00:00Z info backup started resource=web-01 vault="off site" password=[redacted] n=3\n' +
        '2026-11-25T10:00:00Z error backup failed error="read error at 4096"\n',
    );
  });

  it('leaves the timestamp out under systemd, and marks the priority when the console is the journal', async () => {
    const service = captureStream();
    const log = createLogger({ consoleStream: service.stream, env: { INVOCATION_ID: 'abc' }, clock });
    log.info('agent started', { port: 9810 });
    await log.close();
    expect(service.text()).toBe('info agent started port=9810\n');

    const journal = captureStream();
    const jlog = createLogger({ consoleStream: journal.stream, env: { JOURNAL_STREAM: '8:12345' }, clock });
    jlog.info('agent started');
    jlog.error('vault unreachable');
    await jlog.close();
    expect(journal.text()).toBe('<6>info agent started\n<3>error vault unreachable\n');
  });

  it('appends to an existing agent.log and counts its size towards rotation', async () => {
    const dir = await tempDir();
    const first = createLogger({ dir, console: false, clock });
    first.info('from the last run');
    await first.close();
    const size = (await stat(join(dir, 'agent.log'))).size;

    const second = createLogger({ dir, console: false, clock, maxBytes: size + 10, maxFiles: 2 });
    second.info('from this run');
    await second.close();
    expect((await readdir(dir)).sort()).toEqual(['agent.log', 'agent1.log']);
    expect(JSON.parse(await readFile(join(dir, 'agent1.log'), 'utf8')).message).toBe('from the last run');
    expect(JSON.parse(await readFile(join(dir, 'agent.log'), 'utf8')).message).toBe('from this run');
  });

  it('keeps running when the log folder cannot be written', async () => {
    const dir = await tempDir();
    const blocked = join(dir, 'not-a-folder');
    await writeFile(blocked, 'a file where the log folder should be');
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      const log = createLogger({ dir: blocked, console: false });
      log.info('lost');
      log.info('lost too');
      await log.close();
      // One message for the streak of failures, naming the folder.
      expect(stderr.mock.calls.map((c) => String(c[0]))).toEqual([
        expect.stringMatching(/^cairn: the agent log in .*not-a-folder cannot be written: EEXIST/),
      ]);
    } finally {
      stderr.mockRestore();
    }
  });

  it('close is idempotent and later lines are dropped', async () => {
    const dir = await tempDir();
    const log = createLogger({ dir, console: false, clock });
    log.info('one');
    await Promise.all([log.close(), log.close()]);
    log.info('after close');
    await log.close();
    expect((await readFile(join(dir, 'agent.log'), 'utf8')).trimEnd().split('\n')).toHaveLength(1);
  });
});
