import { describe, expect, expectTypeOf, it } from 'vitest';

import { ProtocolError } from './protocol-error.js';
import { array, boolean, enumOf, int, literal, nullable, number, object, optional, refine, string, variants, type Infer } from './schema.js';

function problemOf(run: () => unknown): { field: string | null; problem: string } {
  try {
    run();
  } catch (err) {
    expect(err).toBeInstanceOf(ProtocolError);
    const { field, problem } = err as ProtocolError;
    return { field, problem };
  }
  throw new Error('expected a ProtocolError');
}

describe('schema combinators', () => {
  const point = object({ x: int(), y: int(), label: optional(string({ max: 8 })), note: nullable(string({ max: 8 })) });

  it('infer required, optional and nullable fields', () => {
    expectTypeOf<Infer<typeof point>>().toEqualTypeOf<{ x: number; y: number; label?: string; note: string | null }>();
    expect(point.parse({ x: 1, y: 2, note: null }, 'p')).toEqual({ x: 1, y: 2, note: null });
    expect(point.parse({ x: 1, y: 2, label: 'a', note: 'b' }, 'p')).toEqual({ x: 1, y: 2, label: 'a', note: 'b' });
  });

  it('copy: the result shares nothing with the input', () => {
    const list = array(object({ a: array(int(), { max: 3 }) }), { max: 3 });
    const input = [{ a: [1, 2] }];
    const out = list.parse(input, 'l');
    expect(out).toEqual(input);
    expect(out).not.toBe(input);
    expect(out[0]).not.toBe(input[0]);
    expect(out[0]!.a).not.toBe(input[0]!.a);
  });

  it('report the path and the problem', () => {
    expect(problemOf(() => point.parse({ x: 1, note: null }, 'p'))).toEqual({ field: 'p.y', problem: 'is missing (a whole number)' });
    expect(problemOf(() => point.parse({ x: 1, y: 2, z: 3, note: null }, 'p'))).toEqual({
      field: 'p.z',
      problem: 'is not a known field (known: x, y, label, note)',
    });
    expect(problemOf(() => point.parse({ x: 1, y: 2, label: 'too long!', note: null }, 'p')).problem).toBe('is 9 characters long; at most 8 allowed');
    expect(problemOf(() => array(int(), { max: 2 }).parse([1, 'a'], 'l'))).toEqual({ field: 'l[1]', problem: 'must be a whole number, not a string' });
    expect(problemOf(() => number({ min: 0 }).parse(-1, 'n')).problem).toBe('must be a number of at least 0, not -1');
    expect(problemOf(() => int({ max: 9 }).parse(10, 'n')).problem).toBe('must be a whole number of at most 9, not 10');
    expect(problemOf(() => boolean().parse(1, 'b')).problem).toBe('must be true or false, not a number');
    expect(problemOf(() => literal(1).parse(2, 'v')).problem).toBe('must be 1, not 2');
    expect(problemOf(() => enumOf(['a', 'b']).parse(null, 'e')).problem).toBe('must be one of "a", "b", not null');
    expect(problemOf(() => string({ max: 4, pattern: /^\d+$/, hint: 'digits' }).parse('12a', 's')).problem).toBe('must be digits');
  });

  it('variants: choose the shape by a tag field', () => {
    const shape = variants('kind', {
      circle: object({ kind: literal('circle'), r: number() }),
      square: object({ kind: literal('square'), side: number() }),
    });
    expectTypeOf<Infer<typeof shape>>().toEqualTypeOf<{ kind: 'circle'; r: number } | { kind: 'square'; side: number }>();
    expect(shape.parse({ kind: 'square', side: 2 }, 's')).toEqual({ kind: 'square', side: 2 });
    expect(problemOf(() => shape.parse({ kind: 'square', r: 2 }, 's')).field).toBe('s.r');
    expect(problemOf(() => shape.parse({ kind: 'hexagon' }, 's'))).toEqual({ field: 's.kind', problem: 'must be one of "circle", "square", not "hexagon"' });
    expect(problemOf(() => shape.parse({}, 's')).field).toBe('s.kind');
  });

  it('refine: a rule across fields, reported where it applies', () => {
    const span = refine(object({ from: int(), to: int() }), (s) => (s.to < s.from ? { at: '.to', problem: 'must not be before from' } : undefined));
    expect(span.parse({ from: 1, to: 2 }, 'span')).toEqual({ from: 1, to: 2 });
    expect(problemOf(() => span.parse({ from: 2, to: 1 }, 'span'))).toEqual({ field: 'span.to', problem: 'must not be before from' });
  });
});
