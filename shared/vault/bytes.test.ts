import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { copyInto } from './bytes.js';

describe('copyInto', () => {
  it('copies exactly the source at any offset, between shared and plain memory both ways', () => {
    const shared = Buffer.from(new SharedArrayBuffer(1 << 20));
    const plain = Buffer.alloc(1 << 20);
    for (const [from, to] of [
      [plain, shared],
      [shared, plain],
      [shared, Buffer.from(new SharedArrayBuffer(1 << 20))],
    ] as const) {
      const src = from.subarray(3, 3 + 100_001);
      randomBytes(src.length).copy(src);
      to.fill(0xee);
      expect(copyInto(src, to, 7)).toBe(100_001);
      expect(to.subarray(7, 7 + 100_001).equals(src)).toBe(true);
      // Nothing before or after the range is touched.
      expect(to[6]).toBe(0xee);
      expect(to[7 + 100_001]).toBe(0xee);
    }
  });

  it('copies nothing for an empty source and refuses a range past the end', () => {
    const to = Buffer.alloc(8, 1);
    expect(copyInto(Buffer.alloc(0), to, 8)).toBe(0);
    expect(to.equals(Buffer.alloc(8, 1))).toBe(true);
    expect(() => copyInto(Buffer.alloc(4), to, 5)).toThrow(RangeError);
  });
});
