import { afterEach, describe, expect, it, vi } from 'vitest';

import { CairnError } from '../errors.js';
import {
  chooseProtocolVersion,
  decodeMessage,
  encodeMessage,
  errorReplyFor,
  LIMITS,
  MAX_FRAME_BYTES,
  MESSAGE_TYPES,
  ProtocolError,
  type Direction,
  type Message,
  type MessageType,
} from './messages.js';

const T0 = '2024-05-01T02:00:00.000Z';
const T1 = '2024-05-01T02:03:10.250Z';

const inventory = {
  hostname: 'pve-01',
  os: { platform: 'linux', distro: 'Debian GNU/Linux', release: '12', kernel: '6.1.0-18-amd64', arch: 'x64' },
  cpus: { model: 'AMD EPYC 7302P', cores: 32, physicalCores: 16 },
  memoryBytes: 137_438_953_472,
  disks: [{ name: '/dev/nvme0n1', type: 'NVMe', sizeBytes: 1_000_204_886_016, model: 'Samsung SSD 980' }],
  network: [{ iface: 'eno1', mac: '3c:ec:ef:00:11:22', ip4: ['10.0.0.5'], ip6: ['fe80::3eec:efff:fe00:1122'] }],
};

const backup = {
  id: '9f2c4b7d1e0a4c3b8d6e5f4a3b2c1d0e',
  name: 'autobk_k3x9qz',
  vault: 'offsite',
  resource: 'db-01',
  kind: 'incremental' as const,
  startedAt: T0,
  finishedAt: T1,
  bytesRead: 64 * 1024 * 1024,
  bytesStored: 12 * 1024 * 1024,
};

const policy = (name: string) => ({
  name,
  enabled: true,
  vaults: ['offsite'],
  trigger: { patterns: ['FREQ=DAILY;INTERVAL=1;BYHOUR=2;BYMINUTE=00'], timezone: 'Europe/Berlin' },
  retention: { max_backups: 14, week_backups: 4, timezone: 'Europe/Berlin' },
});

/** One valid message of every type (three commands), with the direction it travels in. */
const samples: { direction: Direction; message: Message }[] = [
  {
    direction: 'to-server',
    message: {
      v: 1,
      type: 'hello',
      id: 'a-1',
      agentId: 'agent-7f3e',
      token: 'c2VjcmV0LXRva2VuLXZhbHVl',
      agentVersion: '0.1.0',
      protocolVersions: [1],
      inventory,
      policyVersion: 3,
    },
  },
  {
    direction: 'to-server',
    message: {
      v: 1,
      type: 'heartbeat',
      id: 'a-2',
      jobs: [
        { id: 'job-1', kind: 'backup', resource: 'db-01', percent: 42.5 },
        { id: 'job-2', kind: 'gc', resource: null, percent: null },
      ],
    },
  },
  { direction: 'to-server', message: { v: 1, type: 'policy-ack', id: 'a-3', version: 4, error: null } },
  {
    direction: 'to-server',
    message: {
      v: 1,
      type: 'job-progress',
      id: 'a-4',
      jobId: 'job-1',
      percent: 42.5,
      bytesDone: 1_000_000,
      bytesTotal: 2_352_941,
      rateBytesPerSecond: 350_000_000.5,
    },
  },
  {
    direction: 'to-server',
    message: { v: 1, type: 'job-result', id: 'a-5', jobId: 'job-1', commandId: 'cmd-9', status: 'ok', backup, error: null },
  },
  {
    direction: 'to-server',
    message: {
      v: 1,
      type: 'job-result',
      id: 'a-6',
      jobId: 'job-3',
      commandId: null,
      status: 'failed',
      backup: null,
      error: { code: 'STORE_UNAVAILABLE', message: 'put packs/ab12: the object store did not answer' },
    },
  },
  {
    direction: 'to-server',
    message: { v: 1, type: 'catalog-sync', id: 'a-7', vault: 'offsite', syncId: 's-1', part: 0, last: true, backups: [backup] },
  },
  {
    direction: 'to-server',
    message: { v: 1, type: 'error', id: 'a-8', code: 'USAGE', message: 'v 2 is not supported', inReplyTo: 's-9', supportedVersions: [1] },
  },
  {
    direction: 'to-agent',
    message: { v: 1, type: 'welcome', id: 's-1', agentId: 'agent-7f3e', serverTime: T0, heartbeatSeconds: 30, protocolVersion: 1 },
  },
  {
    direction: 'to-agent',
    message: {
      v: 1,
      type: 'policy-push',
      id: 's-2',
      version: 5,
      policies: [
        policy('daily'),
        { name: 'hourly', enabled: false, vaults: ['local', 'offsite'], trigger: { cron: '0 * * * *', timezone: 'UTC' }, retention: {} },
      ],
    },
  },
  {
    direction: 'to-agent',
    message: {
      v: 1,
      type: 'command',
      id: 's-3',
      commandId: 'cmd-9',
      action: 'backup-now',
      resource: 'db-01',
      vault: 'offsite',
      args: { full: false, name: null },
    },
  },
  {
    direction: 'to-agent',
    message: {
      v: 1,
      type: 'command',
      id: 's-4',
      commandId: 'cmd-10',
      action: 'restore',
      resource: 'db-01',
      vault: 'offsite',
      args: { backupId: backup.id, target: '/srv/restore/db-01.img', disk: 0, force: false },
    },
  },
  {
    direction: 'to-agent',
    message: { v: 1, type: 'command', id: 's-5', commandId: 'cmd-11', action: 'verify', resource: null, vault: 'offsite', args: { readData: true } },
  },
  {
    direction: 'to-agent',
    message: { v: 1, type: 'command', id: 's-8', commandId: 'cmd-12', action: 'delete', resource: 'db-01', vault: 'offsite', args: { backupId: backup.id } },
  },
  {
    direction: 'to-agent',
    message: { v: 1, type: 'command', id: 's-9', commandId: 'cmd-13', action: 'catalog-sync', resource: null, vault: 'offsite', args: {} },
  },
  {
    direction: 'to-server',
    message: {
      v: 1,
      type: 'resources',
      id: 'a-9',
      resources: [
        { name: 'db-01', vault: 'offsite', disks: ['/dev/vg0/db-data', '/dev/vg0/db-log'] },
        { name: 'web-01', vault: 'local', disks: ['nbd+unix:///web?socket=/run/web.sock'] },
      ],
    },
  },
  { direction: 'to-agent', message: { v: 1, type: 'ack', id: 's-6', messageId: 'a-5' } },
  { direction: 'to-agent', message: { v: 1, type: 'error', id: 's-7', code: 'NOT_FOUND', message: 'no backup 9f2c in vault offsite', inReplyTo: null } },
];

const clone = <T>(v: T): T => structuredClone(v);
const sample = (type: MessageType): Record<string, any> => clone(samples.find((s) => s.message.type === type)!.message) as Record<string, any>;
const directionOf = (type: MessageType): Direction => samples.find((s) => s.message.type === type)!.direction;

/** The ProtocolError that decoding `value` (a frame or an object to serialise) in `direction` throws. */
function refusal(value: unknown, direction: Direction): ProtocolError {
  const frame = typeof value === 'string' || Buffer.isBuffer(value) ? value : JSON.stringify(value);
  try {
    decodeMessage(frame, direction);
  } catch (err) {
    expect(err).toBeInstanceOf(ProtocolError);
    expect(err).toBeInstanceOf(CairnError);
    const e = err as ProtocolError;
    expect(e.code).toBe('USAGE');
    expect(e.message).not.toMatch(/[\r\n]/);
    return e;
  }
  throw new Error(`expected a ProtocolError for ${String(frame).slice(0, 200)}`);
}

/** Expects the refusal of `message` (mutated by `mutate`) to name `field` (as err.field and in the message). */
function expectRefused(type: MessageType, mutate: (m: Record<string, any>) => void, field: string, problem?: RegExp): ProtocolError {
  const m = sample(type);
  mutate(m);
  const err = refusal(m, directionOf(type));
  expect(err.field).toBe(field);
  expect(err.message).toContain(`${field} `);
  if (problem) expect(err.problem).toMatch(problem);
  expect(err.messageId).toBe(m.id);
  return err;
}

afterEach(() => {
  vi.restoreAllMocks();
});

describe('round trip', () => {
  it('covers every message type of both directions', () => {
    const covered = new Set(samples.map((s) => `${s.direction}:${s.message.type}`));
    for (const direction of ['to-server', 'to-agent'] as const) {
      for (const type of MESSAGE_TYPES[direction]) expect(covered, `${direction}:${type}`).toContain(`${direction}:${type}`);
    }
  });

  it.each(samples.map((s) => [`${s.message.type} ${'action' in s.message ? s.message.action : ''}`.trim(), s] as const))(
    '%s: encode, then decode from a string and from a Buffer',
    (_, { direction, message }) => {
      const frame = encodeMessage(message);
      expect(JSON.parse(frame)).toEqual(message);
      expect(decodeMessage(frame, direction)).toEqual(message);
      expect(decodeMessage(Buffer.from(frame), direction)).toEqual(message);
    },
  );

  it('returns a fresh copy: mutating the decoded message does not touch the input', () => {
    const m = sample('policy-push');
    const decoded = decodeMessage(JSON.stringify(m), 'to-agent');
    expect(decoded).not.toBe(m);
    if (decoded.type !== 'policy-push') throw new Error('wrong type');
    decoded.policies[0]!.vaults.push('x');
    expect(m.policies[0].vaults).toEqual(['offsite']);
  });

  it('narrows by direction and by type, action', () => {
    const m = decodeMessage(encodeMessage(sample('command') as Message), 'to-agent');
    if (m.type === 'command' && m.action === 'backup-now') expect(m.args.full).toBe(false);
    else throw new Error('expected backup-now');
  });

  it('accepts a frame of exactly MAX_FRAME_BYTES (trailing white space pads it)', () => {
    const frame = encodeMessage(sample('ack') as Message);
    const padded = frame + ' '.repeat(MAX_FRAME_BYTES - frame.length);
    expect(Buffer.byteLength(padded)).toBe(MAX_FRAME_BYTES);
    expect(decodeMessage(padded, 'to-agent').type).toBe('ack');
    expect(decodeMessage(Buffer.from(padded), 'to-agent').type).toBe('ack');
  });

  it('chooses the highest envelope version both sides speak', () => {
    expect(chooseProtocolVersion([1])).toBe(1);
    expect(chooseProtocolVersion([3, 1, 2])).toBe(1);
    expect(chooseProtocolVersion([2, 3])).toBeUndefined();
  });
});

describe('frames refused before their fields are read', () => {
  it('refuses a 300 KiB frame before parsing JSON, as a string and as a Buffer', () => {
    const parse = vi.spyOn(JSON, 'parse');
    const frame = `{"v":1,"type":"hello","id":"a-1","token":"${'x'.repeat(300 * 1024)}"}`;
    for (const raw of [frame, Buffer.from(frame)]) {
      const err = refusal(raw, 'to-server');
      expect(err.field).toBeNull();
      expect(err.message).toBe(`message to the control plane refused: frame is ${frame.length} bytes; at most 262144 (256 KiB) allowed`);
    }
    expect(parse).not.toHaveBeenCalled();
  });

  it('counts bytes of UTF-8, not characters', () => {
    const m = sample('error');
    m.message = 'é'.repeat(1000);
    const json = JSON.stringify(m);
    const frame = json + ' '.repeat(MAX_FRAME_BYTES + 1 - Buffer.byteLength(json));
    expect(frame.length).toBeLessThan(MAX_FRAME_BYTES);
    expect(refusal(frame, 'to-server').problem).toMatch(/^frame is \d+ bytes; at most 262144/);
    expect(MAX_FRAME_BYTES).toBe(256 * 1024);
  });

  it('refuses invalid UTF-8', () => {
    const frame = Buffer.concat([Buffer.from('{"v":1,"type":"ack","id":"s-1","messageId":"'), Buffer.from([0xc3, 0x28]), Buffer.from('"}')]);
    expect(refusal(frame, 'to-agent').message).toBe('message to the agent refused: frame is not valid UTF-8');
  });

  it('refuses non-JSON without quoting the frame (it may hold a credential)', () => {
    const err = refusal('{"v":1,"type":"hello","token":"s3cret-token",', 'to-server');
    expect(err.field).toBeNull();
    expect(err.problem).toMatch(/^frame is not JSON/);
    expect(err.message).not.toContain('s3cret');
    expect(err.cause).toBeInstanceOf(SyntaxError);
  });

  it.each([
    ['[]', 'an array'],
    ['"hello"', 'a string'],
    ['null', 'null'],
    ['42', 'a number'],
  ])('refuses %s: not an object', (frame, what) => {
    expect(refusal(frame, 'to-server').problem).toBe(`message must be a JSON object, not ${what}`);
  });

  it('refuses a frame that is neither a string nor a Buffer', () => {
    expect(() => decodeMessage(42 as unknown as string, 'to-agent')).toThrow(/frame must be a string or a Buffer, not a number/);
  });
});

describe('envelope', () => {
  it('refuses an unknown v, says which versions are supported, and the reply names them', () => {
    const err = expectRefused('hello', (m) => (m.v = 2), 'v');
    expect(err.message).toBe('message to the control plane refused: v 2 is not a supported envelope version; supported: 1');
    const reply = errorReplyFor(err, 's-100');
    expect(reply).toMatchObject({ type: 'error', code: 'USAGE', inReplyTo: 'a-1', supportedVersions: [1] });
    expect(decodeMessage(encodeMessage(reply), 'to-server')).toEqual(reply);
  });

  it('refuses a missing or mistyped v', () => {
    expect(expectRefused('ack', (m) => delete m.v, 'v').problem).toBe('is missing; supported envelope versions: 1');
    expect(expectRefused('ack', (m) => (m.v = '1'), 'v').problem).toBe('must be a number, not a string; supported envelope versions: 1');
  });

  it('refuses a type that does not travel in that direction, naming the ones that do', () => {
    const err = expectRefused('hello', (m) => (m.type = 'welcome'), 'type');
    expect(err.message).toBe(
      'message to the control plane refused: type "welcome" is not a message to the control plane; ' +
        'expected one of hello, heartbeat, resources, policy-ack, job-progress, job-result, catalog-sync, error',
    );
    expect(refusal(sample('hello'), 'to-agent').problem).toMatch(/^"hello" is not a message to the agent; expected one of welcome, policy-push, command, ack, error$/);
    expect(refusal(sample('ack'), 'to-server').field).toBe('type');
    expect(expectRefused('ack', (m) => (m.type = 'x'.repeat(1000)), 'type').problem).toMatch(/^"x{32}\.\.\." is not a message/);
    expect(expectRefused('ack', (m) => delete m.type, 'type').problem).toMatch(/^is missing; a message to the agent is one of welcome/);
  });

  it('refuses a bad message id, and then cannot name it', () => {
    const err = refusal({ ...sample('ack'), id: 'x'.repeat(LIMITS.id + 1) }, 'to-agent');
    expect(err.field).toBe('ack.id');
    expect(err.problem).toBe('is 65 characters long; at most 64 allowed');
    expect(err.messageId).toBeNull();
    expect(errorReplyFor(err, 's-1').inReplyTo).toBeNull();
    expect(refusal({ ...sample('ack'), id: 'a b' }, 'to-agent').message).toBe(
      "message to the agent refused: ack.id must be letters, digits, '.', '_', ':' and '-'",
    );
  });
});

describe('fields', () => {
  it('names the path of a missing field', () => {
    const err = expectRefused(
      'policy-push',
      (m) => {
        m.policies.push(policy('weekly'));
        delete m.policies[2].trigger.timezone;
      },
      'policy-push.policies[2].trigger.timezone',
    );
    expect(err.message).toBe('message to the agent refused: policy-push.policies[2].trigger.timezone is missing (a string)');
    expectRefused('command', (m) => delete m.args.name, 'command.args.name', /^is missing \(a string or null\)$/);
    expectRefused('hello', (m) => delete m.inventory.cpus.cores, 'hello.inventory.cpus.cores', /whole number/);
  });

  it('refuses unknown fields, at any depth, naming them and the known ones', () => {
    expectRefused('ack', (m) => (m.extra = 1), 'ack.extra', /^is not a known field \(known: v, type, id, messageId\)$/);
    expectRefused('hello', (m) => (m.inventory.os.codename = 'bookworm'), 'hello.inventory.os.codename');
    expectRefused('policy-push', (m) => (m.policies[1].retention.keep = 3), 'policy-push.policies[1].retention.keep');
    // A key that is not an identifier is quoted and escaped, so the message stays on one line.
    expectRefused('ack', (m) => (m['bad\nkey'] = 1), 'ack["bad\\nkey"]');
    // JSON.parse makes "__proto__" an own field: refused like any other.
    const err = refusal('{"v":1,"type":"ack","id":"s-1","messageId":"a-1","__proto__":{"x":1}}', 'to-agent');
    expect(err.field).toBe('ack.__proto__');
  });

  it('refuses wrongly typed fields, saying what was expected and what came', () => {
    expectRefused('job-progress', (m) => (m.percent = '50'), 'job-progress.percent', /^must be a number, not a string$/);
    expectRefused('heartbeat', (m) => (m.jobs[1].percent = 150), 'heartbeat.jobs[1].percent', /^must be a number from 0 to 100, not 150$/);
    expectRefused('command', (m) => (m.args.full = 'yes'), 'command.args.full', /^must be true or false, not a string$/);
    expectRefused('job-result', (m) => (m.status = 'done'), 'job-result.status', /^must be one of "ok", "failed", "cancelled", not "done"$/);
    expectRefused('job-result', (m) => (m.backup.kind = 'differential'), 'job-result.backup.kind');
    expectRefused('welcome', (m) => (m.serverTime = 'yesterday'), 'welcome.serverTime', /ISO 8601/);
    expectRefused('welcome', (m) => (m.serverTime = '2024-13-45T99:00:00Z'), 'welcome.serverTime', /^is not a valid date and time$/);
    expectRefused('welcome', (m) => (m.heartbeatSeconds = 0), 'welcome.heartbeatSeconds', /^must be a whole number from 1 to 3600, not 0$/);
    expectRefused('error', (m) => (m.code = 'NOPE'), 'error.code', /^must be one of "USAGE", "NOT_FOUND"/);
    expectRefused('catalog-sync', (m) => (m.backups[0].bytesStored = -1), 'catalog-sync.backups[0].bytesStored');
    expectRefused('hello', (m) => (m.policyVersion = 1.5), 'hello.policyVersion', /^must be a whole number, not 1.5$/);
    expectRefused('hello', (m) => (m.inventory = []), 'hello.inventory', /^must be an object, not an array$/);
    expectRefused('hello', (m) => (m.protocolVersions = 1), 'hello.protocolVersions', /^must be an array, not a number$/);
    expectRefused('policy-push', (m) => (m.policies[0].vaults = []), 'policy-push.policies[0].vaults', /^must not be empty$/);
    expectRefused('policy-push', (m) => (m.policies[0].retention.day_backups = 101), 'policy-push.policies[0].retention.day_backups');
    // JSON turns 1e400 into Infinity: refused.
    const frame = JSON.stringify(sample('job-progress')).replace('"bytesDone":1000000', '"bytesDone":1e400');
    expect(refusal(frame, 'to-server')).toMatchObject({ field: 'job-progress.bytesDone', problem: 'must be a whole number, not Infinity' });
  });

  it('checks command args by action', () => {
    expectRefused('command', (m) => (m.action = 'reboot'), 'command.action', /^must be one of "backup-now", "restore", "verify", "delete", "catalog-sync", not "reboot"$/);
    const sync = samples.find((s) => s.message.type === 'command' && s.message.action === 'catalog-sync')!.message;
    expect(refusal({ ...clone(sync), resource: 'db-01' }, 'to-agent').field).toBe('command.resource');
    expect(refusal({ ...clone(sync), args: { full: true } }, 'to-agent').field).toBe('command.args.full');
    const restore = (mutate: (m: Record<string, any>) => void) => {
      const m = clone(samples.find((s) => s.message.type === 'command' && s.message.action === 'restore')!.message) as Record<string, any>;
      mutate(m);
      return refusal(m, 'to-agent');
    };
    expect(restore((m) => delete m.args.target).field).toBe('command.args.target');
    expect(restore((m) => (m.args.disk = 1.5)).field).toBe('command.args.disk');
    // backup-now's args are not restore's.
    expect(restore((m) => (m.action = 'backup-now')).field).toBe('command.args.backupId');
    expect(restore((m) => (m.resource = null)).message).toBe('message to the agent refused: command.resource must be a string, not null');
  });

  it('refuses strings over their limits without echoing them', () => {
    const err = expectRefused('hello', (m) => (m.token = 'SECRET'.repeat(1000)), 'hello.token', /^is 6000 characters long; at most 4096 allowed$/);
    expect(err.message).not.toContain('SECRET');
    expectRefused('hello', (m) => (m.agentId = 'a'.repeat(65)), 'hello.agentId');
    expectRefused('error', (m) => (m.message = 'x'.repeat(LIMITS.errorMessage + 1)), 'error.message');
    expectRefused('command', (m) => (m.vault = 'v'.repeat(LIMITS.name + 1)), 'command.vault');
    expectRefused('hello', (m) => (m.inventory.network[0].ip6[0] = 'f'.repeat(LIMITS.text + 1)), 'hello.inventory.network[0].ip6[0]');
    expectRefused('command', (m) => (m.vault = ''), 'command.vault', /^must not be empty$/);
    expectRefused('command', (m) => (m.resource = 'db\n01'), 'command.resource', /control characters/);
  });

  it('refuses arrays over their limits before reading their items', () => {
    expectRefused(
      'policy-push',
      (m) => (m.policies = Array.from({ length: LIMITS.policies + 1 }, () => 'not even a policy')),
      'policy-push.policies',
      /^has 257 items; at most 256 allowed$/,
    );
    expectRefused('policy-push', (m) => (m.policies[0].trigger.patterns = Array(25).fill('FREQ=DAILY')), 'policy-push.policies[0].trigger.patterns');
    expectRefused('catalog-sync', (m) => (m.backups = Array(LIMITS.catalogBackups + 1).fill(backup)), 'catalog-sync.backups');
    expectRefused('heartbeat', (m) => (m.jobs = Array(LIMITS.runningJobs + 1).fill(m.jobs[0])), 'heartbeat.jobs');
    expectRefused('hello', (m) => (m.protocolVersions = []), 'hello.protocolVersions', /^must not be empty$/);
  });

  it('checks rules across fields', () => {
    expectRefused('job-result', (m) => (m.error = { code: 'INTERNAL', message: 'x' }), 'job-result.error', /^must be null when status is 'ok'$/);
    const failed = samples.find((s) => s.message.type === 'job-result' && s.message.status === 'failed')!.message;
    expect(refusal({ ...failed, error: null }, 'to-server')).toMatchObject({
      field: 'job-result.error',
      problem: "must say what failed when status is 'failed'",
    });
    expectRefused('policy-push', (m) => (m.policies[1].trigger = { timezone: 'UTC' }), 'policy-push.policies[1].trigger', /^needs 'patterns' or 'cron'$/);
    expectRefused('policy-push', (m) => (m.policies[1].name = 'daily'), 'policy-push.policies[1].name', /^repeats \[0\]\.name "daily"$/);
  });
});

describe('encodeMessage', () => {
  it('refuses what the peer would refuse, with the same field path', () => {
    const bad = { ...sample('job-progress'), percent: Number.NaN } as Message;
    expect(() => encodeMessage(bad)).toThrow(ProtocolError);
    expect(() => encodeMessage(bad)).toThrow('message not sent: job-progress.percent must be a number, not NaN');
    const missing = { ...sample('hello'), token: undefined } as unknown as Message;
    expect(() => encodeMessage(missing)).toThrow('message not sent: hello.token is missing (a string)');
    expect(() => encodeMessage({ ...sample('ack'), v: 2 } as unknown as Message)).toThrow(/v 2 is not a supported envelope version/);
    expect(() => encodeMessage({ ...sample('ack'), messageId: 10n } as unknown as Message)).toThrow(/ack.messageId must be a string, not a bigint/);
  });

  it('drops optional fields that are undefined', () => {
    const m = { ...sample('error'), supportedVersions: undefined } as Message;
    expect(JSON.parse(encodeMessage(m))).not.toHaveProperty('supportedVersions');
  });

  it('refuses a message whose frame would exceed MAX_FRAME_BYTES', () => {
    // 500 backups with long names: every field within its limit, the whole too big for one frame
    // (so the sender splits a catalog into parts by size, not only by count).
    const backups = Array.from({ length: LIMITS.catalogBackups }, (_, i) => ({ ...backup, name: `${'€'.repeat(120)}${i}`, resource: '€'.repeat(128) }));
    const m = { ...sample('catalog-sync'), backups } as Message;
    expect(() => encodeMessage(m)).toThrow(/^message not sent: frame is \d+ bytes; at most 262144 \(256 KiB\) allowed$/);
  });
});

/** mulberry32: a small seeded PRNG, so a failing case can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('fuzz: random mutations of valid messages', () => {
  const odd: unknown[] = [
    null, true, false, 0, -1, 1.5, 2 ** 53, -0, 1e308, Number.NaN, Number.POSITIVE_INFINITY, '', 'x', 'x'.repeat(5000),
    'ok', 'full', 'USAGE', T0, [], [1], ['a'], {}, { a: 1 }, { v: 1 }, undefined, 'backup-now', 'restore', 2, '\u0000', '\ud800',
  ];

  /** Every (container, key) in a JSON value, depth first. */
  function slots(value: unknown, out: [Record<string, unknown> | unknown[], string | number][] = []) {
    if (Array.isArray(value)) value.forEach((v, i) => (out.push([value, i]), slots(v, out)));
    else if (typeof value === 'object' && value !== null) {
      for (const [k, v] of Object.entries(value)) (out.push([value as Record<string, unknown>, k]), slots(v, out));
    }
    return out;
  }

  it('200 mutations: only ProtocolError is thrown, and what is accepted encodes and decodes to itself', () => {
    const random = prng(0xca1e);
    const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
    let refused = 0; // in the direction the message travels
    let accepted = 0;
    for (let round = 0; round < 200; round++) {
      const { direction, message } = pick(samples);
      const m = clone(message) as unknown as Record<string, unknown>;
      let frame: string | Buffer | undefined;
      const mutations = 1 + Math.floor(random() * 3);
      for (let k = 0; k < mutations; k++) {
        const all = slots(m);
        const [container, key] = pick(all);
        switch (Math.floor(random() * 6)) {
          case 0: // remove a field or an item
            if (Array.isArray(container)) container.splice(key as number, 1);
            else delete container[key as string];
            break;
          case 1: // replace a value
            (container as Record<string | number, unknown>)[key] = clone(pick(odd));
            break;
          case 2: // add a field to an object
            if (!Array.isArray(container)) container[pick(['extra', 'v', 'type', '__proto__', 'constructor', 'id'])] = clone(pick(odd));
            break;
          case 3: // swap the type, keep the body
            m.type = pick([...MESSAGE_TYPES['to-server'], ...MESSAGE_TYPES['to-agent']]);
            break;
          case 4: // grow an array
            if (Array.isArray(container)) container.push(...Array(Math.floor(random() * 600)).fill(container[0]));
            else (container as Record<string, unknown>)[key] = Array(Math.floor(random() * 600)).fill(container[key]);
            break;
          default: // damage the frame itself
            {
              const bytes = Buffer.from(JSON.stringify(m));
              const at = Math.floor(random() * bytes.length);
              if (random() < 0.5) frame = bytes.subarray(0, at);
              else {
                bytes[at] = Math.floor(random() * 256);
                frame = bytes;
              }
            }
            break;
        }
      }
      const attempts: [string | Buffer, Direction][] = [
        [frame ?? JSON.stringify(m), direction],
        [frame ?? JSON.stringify(m), direction === 'to-agent' ? 'to-server' : 'to-agent'],
      ];
      for (const [raw, dir] of attempts) {
        let decoded: Message;
        try {
          decoded = decodeMessage(raw, dir);
        } catch (err) {
          expect(err, `round ${round}`).toBeInstanceOf(ProtocolError);
          expect((err as Error).message).not.toMatch(/[\r\n]/);
          if (dir === direction) refused++;
          continue;
        }
        accepted++;
        expect(decodeMessage(encodeMessage(decoded), dir)).toEqual(decoded);
      }
      // The sender's side: the mutated object itself (with undefined, NaN and the like) is checked too.
      try {
        encodeMessage(m as unknown as Message);
      } catch (err) {
        expect(err, `round ${round} (encode)`).toBeInstanceOf(ProtocolError);
      }
    }
    // Most mutations must be caught (the rest replace a value by an equally valid one, or move an
    // `error` to the other direction); both outcomes must occur for the test to mean something.
    expect(refused).toBeGreaterThan(150);
    expect(accepted).toBeGreaterThan(0);
  });
});

describe('resources', () => {
  it('refuses a repeated resource name and a resource without disks', () => {
    const m = clone(samples.find((s) => s.message.type === 'resources')!.message) as Record<string, any>;
    m.resources[1].name = 'db-01';
    expect(refusal(m, 'to-server')).toMatchObject({ field: 'resources.resources[1].name' });
    m.resources[1] = { name: 'web-01', vault: 'local', disks: [] };
    expect(refusal(m, 'to-server')).toMatchObject({ field: 'resources.resources[1].disks' });
  });
});
