import { ProtocolError } from './protocol-error.js';

/**
 * A tiny schema language for the protocol: each combinator checks an untrusted value (from
 * JSON.parse, or from a caller about to send) and returns a fresh, typed copy, or throws a
 * ProtocolError naming the path of the first offending value. Contracts every schema keeps:
 * - strict: objects refuse unknown fields, strings and arrays have a maximum length, numbers are
 *   finite; nothing is coerced or defaulted;
 * - the result shares no objects or arrays with the input (the input may be mutated afterwards);
 * - work is bounded by the schema, not by the input: a length is checked before items are visited,
 *   and only declared fields are descended into;
 * - only ProtocolError is thrown, whatever the input.
 */
export interface Schema<T> {
  /** For messages: 'a string', 'an object', ... */
  readonly expected: string;
  parse(value: unknown, path: string): T;
}

/** A field that may be absent (see `optional`); only meaningful inside `object`. */
export interface OptionalSchema<T> extends Schema<T | undefined> {
  readonly optional: true;
}

export type Infer<S> = S extends Schema<infer T> ? T : never;

type Shape = Record<string, Schema<unknown>>;
type Simplify<T> = { [K in keyof T]: T[K] } & {};
type RequiredKeys<S extends Shape> = { [K in keyof S]: S[K] extends OptionalSchema<unknown> ? never : K }[keyof S];
type OptionalKeys<S extends Shape> = { [K in keyof S]: S[K] extends OptionalSchema<unknown> ? K : never }[keyof S];
export type ObjectOf<S extends Shape> = Simplify<
  { [K in RequiredKeys<S>]: Infer<S[K]> } & { [K in OptionalKeys<S>]?: Exclude<Infer<S[K]>, undefined> }
>;

/** `a`, `an array`, ... of a value, for "must be X, not Y". Never shows the value itself. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  switch (typeof value) {
    case 'string':
      return 'a string';
    case 'number':
      return Number.isFinite(value) ? 'a number' : String(value);
    case 'boolean':
      return value ? 'true' : 'false';
    case 'object':
      return 'an object';
    case 'undefined':
      return 'undefined';
    default:
      return `a ${typeof value}`;
  }
}

/** A short, escaped, one-line rendering of a value the caller chose to show (enum values, type names). */
export function quote(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 32 ? `${value.slice(0, 32)}...` : value);
  if (typeof value === 'number') return String(value);
  return describe(value);
}

function fail(path: string, problem: string): never {
  throw new ProtocolError(path, problem);
}

function joinKey(path: string, key: string): string {
  if (/^[A-Za-z_$][\w$-]{0,63}$/.test(key)) return path === '' ? key : `${path}.${key}`;
  return `${path}[${quote(key)}]`;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export interface StringOptions {
  /** Longest allowed, in UTF-16 code units (what `.length` says); required so no string is unbounded. */
  max: number;
  /** Shortest allowed; default 0. */
  min?: number;
  /** A pattern the whole string must match, and how to say so (`must be ${hint}`). */
  pattern?: RegExp;
  hint?: string;
  /** A last check on the value (e.g. a date that parses); returns the problem, or undefined. */
  check?: (value: string) => string | undefined;
}

export function string(options: StringOptions): Schema<string> {
  const min = options.min ?? 0;
  return {
    expected: 'a string',
    parse(value, path) {
      if (typeof value !== 'string') fail(path, `must be a string, not ${describe(value)}`);
      if (value.length > options.max) fail(path, `is ${value.length} characters long; at most ${options.max} allowed`);
      if (value.length < min) fail(path, min === 1 ? 'must not be empty' : `is ${value.length} characters long; at least ${min} needed`);
      if (options.pattern && !options.pattern.test(value)) fail(path, `must be ${options.hint ?? `a string matching ${options.pattern}`}`);
      const problem = options.check?.(value);
      if (problem !== undefined) fail(path, problem);
      return value;
    },
  };
}

export interface NumberOptions {
  min?: number;
  max?: number;
}

function range(path: string, value: number, options: NumberOptions, whole: boolean): void {
  const { min, max } = options;
  if ((min !== undefined && value < min) || (max !== undefined && value > max)) {
    const kind = whole ? 'a whole number' : 'a number';
    if (min !== undefined && max !== undefined) fail(path, `must be ${kind} from ${min} to ${max}, not ${value}`);
    if (min !== undefined) fail(path, `must be ${kind} of at least ${min}, not ${value}`);
    fail(path, `must be ${kind} of at most ${max}, not ${value}`);
  }
}

/** A finite number (JSON.parse turns 1e400 into Infinity: refused). */
export function number(options: NumberOptions = {}): Schema<number> {
  return {
    expected: 'a number',
    parse(value, path) {
      if (typeof value !== 'number' || !Number.isFinite(value)) fail(path, `must be a number, not ${describe(value)}`);
      range(path, value, options, false);
      return value;
    },
  };
}

/** A safe integer (|n| < 2^53), so it survives JSON both ways. */
export function int(options: NumberOptions = {}): Schema<number> {
  return {
    expected: 'a whole number',
    parse(value, path) {
      if (typeof value !== 'number' || !Number.isSafeInteger(value)) {
        fail(path, `must be a whole number, not ${typeof value === 'number' && Number.isFinite(value) ? value : describe(value)}`);
      }
      range(path, value, options, true);
      return value;
    },
  };
}

export function boolean(): Schema<boolean> {
  return {
    expected: 'true or false',
    parse(value, path) {
      if (typeof value !== 'boolean') fail(path, `must be true or false, not ${describe(value)}`);
      return value;
    },
  };
}

export function literal<const T extends string | number | boolean>(expected: T): Schema<T> {
  return {
    expected: quote(expected),
    parse(value, path) {
      if (value !== expected) fail(path, `must be ${quote(expected)}, not ${quote(value)}`);
      return expected;
    },
  };
}

/** Only `null`. */
export const nullOnly: Schema<null> = {
  expected: 'null',
  parse(value, path) {
    if (value !== null) fail(path, `must be null, not ${describe(value)}`);
    return null;
  },
};

export function enumOf<const T extends string>(values: readonly T[]): Schema<T> {
  const allowed = new Set<string>(values);
  const list = values.map((v) => quote(v)).join(', ');
  return {
    expected: `one of ${list}`,
    parse(value, path) {
      if (typeof value !== 'string' || !allowed.has(value)) fail(path, `must be one of ${list}, not ${quote(value)}`);
      return value as T;
    },
  };
}

export interface ArrayOptions {
  /** Most items allowed; required so no array is unbounded. */
  max: number;
  min?: number;
}

export function array<T>(item: Schema<T>, options: ArrayOptions): Schema<T[]> {
  const min = options.min ?? 0;
  return {
    expected: 'an array',
    parse(value, path) {
      if (!Array.isArray(value)) fail(path, `must be an array, not ${describe(value)}`);
      if (value.length > options.max) fail(path, `has ${value.length} items; at most ${options.max} allowed`);
      if (value.length < min) fail(path, min === 1 ? 'must not be empty' : `has ${value.length} items; at least ${min} needed`);
      const out: T[] = [];
      for (let i = 0; i < value.length; i++) out.push(item.parse(value[i], `${path}[${i}]`));
      return out;
    },
  };
}

/** The field may be absent. Present, it must be valid: `undefined` counts as absent (JSON drops it). */
export function optional<T>(inner: Schema<T>): OptionalSchema<T> {
  return {
    optional: true,
    expected: inner.expected,
    parse(value, path) {
      return value === undefined ? undefined : inner.parse(value, path);
    },
  };
}

export function nullable<T>(inner: Schema<T>): Schema<T | null> {
  return {
    expected: `${inner.expected} or null`,
    parse(value, path) {
      return value === null ? null : inner.parse(value, path);
    },
  };
}

/**
 * An object with exactly these fields: unknown fields are refused (checked first, so a misspelt
 * field is reported as unknown, not as the one it should have been), required fields must be present.
 */
export function object<S extends Shape>(shape: S): Schema<ObjectOf<S>> {
  const keys = Object.keys(shape);
  const known = new Set(keys);
  return {
    expected: 'an object',
    parse(value, path) {
      if (!isPlainObject(value)) fail(path, `must be an object, not ${describe(value)}`);
      for (const key of Object.keys(value)) {
        if (!known.has(key)) fail(joinKey(path, key), `is not a known field (known: ${keys.join(', ')})`);
      }
      const out: Record<string, unknown> = {};
      for (const key of keys) {
        const schema = shape[key] as Schema<unknown> & { optional?: true };
        const present = Object.prototype.hasOwnProperty.call(value, key) && value[key] !== undefined;
        if (!present) {
          if (schema.optional) continue;
          fail(joinKey(path, key), `is missing (${schema.expected})`);
        }
        out[key] = schema.parse(value[key], joinKey(path, key));
      }
      return out as ObjectOf<S>;
    },
  };
}

/**
 * One of several object shapes, chosen by the string field `tag` (every variant must declare it,
 * e.g. as a literal). An unknown tag is reported at `path.tag`.
 */
export function variants<K extends string, V extends Record<string, Schema<Record<string, unknown>>>>(
  tag: K,
  shapes: V,
): Schema<Infer<V[keyof V]>> {
  const names = Object.keys(shapes);
  const tagSchema = enumOf(names);
  return {
    expected: `an object with ${tag} ${tagSchema.expected}`,
    parse(value, path) {
      if (!isPlainObject(value)) fail(path, `must be an object, not ${describe(value)}`);
      if (value[tag] === undefined) fail(joinKey(path, tag), `is missing (${tagSchema.expected})`);
      const name = tagSchema.parse(value[tag], joinKey(path, tag));
      return shapes[name]!.parse(value, path) as Infer<V[keyof V]>;
    },
  };
}

/**
 * Adds a check across fields to a schema. `check` returns undefined when the value is fine, or the
 * problem and where: `at` is appended to the path (`.error`, `[3].name`; empty: the value itself).
 */
export function refine<T>(inner: Schema<T>, check: (value: T) => { at: string; problem: string } | undefined): Schema<T> {
  return {
    expected: inner.expected,
    parse(value, path) {
      const parsed = inner.parse(value, path);
      const issue = check(parsed);
      if (issue !== undefined) fail(`${path}${issue.at}`, issue.problem);
      return parsed;
    },
  };
}
