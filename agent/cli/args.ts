import { parseArgs, type ParseArgsConfig } from 'node:util';
import { CairnError } from '../../shared/errors.js';

export type Options = NonNullable<ParseArgsConfig['options']>;

/** Options every command that opens a vault accepts. */
export const vaultOptions = {
  vault: { type: 'string' },
  'passphrase-file': { type: 'string' },
  'limit-upload': { type: 'string' },
  'limit-download': { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies Options;

/** parseArgs in strict mode, with its errors turned into USAGE errors that name the command. */
export function parse<T extends Options>(command: string, argv: string[], options: T) {
  try {
    return parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new CairnError('USAGE', `${command}: ${(err as Error).message.replace(/\. To specify a positional.*$/s, '')}; see 'cairn ${command} --help'`);
  }
}

export function requireOption(command: string, value: string | undefined, name: string): string {
  if (!value) throw new CairnError('USAGE', `${command}: --${name} is required; see 'cairn ${command} --help'`);
  return value;
}

const units: Record<string, number> = { '': 1, b: 1, k: 1024, kb: 1024, kib: 1024, m: 1024 ** 2, mb: 1024 ** 2, mib: 1024 ** 2, g: 1024 ** 3, gb: 1024 ** 3, gib: 1024 ** 3 };

/** Parses sizes such as 65536, 64K, 64KiB, 1M (binary units). */
export function parseSize(text: string, what: string): number {
  const m = /^(\d+)\s*([a-z]*)$/i.exec(text.trim());
  const unit = m ? units[m[2].toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new CairnError('USAGE', `${what} '${text}' is not a size; write e.g. 64K or 1M`);
  return Number(m[1]) * unit;
}

const durations: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parses durations such as 0, 30s, 15m, 24h, 7d. */
export function parseDuration(text: string, what: string): number {
  if (text === '0') return 0;
  const m = /^(\d+)([smhd])$/.exec(text.trim());
  if (!m) throw new CairnError('USAGE', `${what} '${text}' is not a duration; write e.g. 30s, 15m, 24h or 0`);
  return Number(m[1]) * durations[m[2]];
}
