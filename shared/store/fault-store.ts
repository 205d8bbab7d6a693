import { CairnError } from '../errors.js';
import type { Body, ByteRange, ObjectInfo, ObjectStore, PutOptions } from './object-store.js';

export type StoreMethod = 'put' | 'get' | 'stat' | 'list' | 'delete';

interface Fault {
  method: StoreMethod;
  when: number | RegExp;
  error?: Error;
}

/**
 * A test double around a real store that makes chosen calls fail, to reach error paths (full disk,
 * outage) without breaking a disk. A fault fires before the inner store is called, so a failed call
 * changes nothing. Every call is counted, failed ones included.
 */
export class FaultInjectingStore implements ObjectStore {
  readonly location: string;
  /** Calls made so far per method, failed ones included; a list counts when its iteration starts. */
  readonly calls: Record<StoreMethod, number> = { put: 0, get: 0, stat: 0, list: 0, delete: 0 };
  private readonly inner: ObjectStore;
  private readonly faults: Fault[] = [];

  get requests() {
    return this.inner.requests;
  }

  constructor(inner: ObjectStore) {
    this.inner = inner;
    this.location = inner.location;
  }

  /**
   * Makes calls of `method` fail: the nth one (1-based, counted since construction) when `when` is a
   * number, or every one whose key (the prefix, for list) matches when it is a RegExp. Without `error`,
   * put fails like a full disk (NO_SPACE) and the others like an outage (retryable STORE_UNAVAILABLE).
   */
  fail(method: StoreMethod, when: number | RegExp, error?: Error): this {
    this.faults.push({ method, when, error });
    return this;
  }

  async put(key: string, body: Body, options?: PutOptions): Promise<void> {
    this.enter('put', key);
    return this.inner.put(key, body, options);
  }

  async get(key: string, range?: ByteRange, into?: Buffer): Promise<Buffer> {
    this.enter('get', key);
    return this.inner.get(key, range, into);
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    this.enter('stat', key);
    return this.inner.stat(key);
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    this.enter('list', prefix);
    yield* this.inner.list(prefix);
  }

  async delete(key: string): Promise<void> {
    this.enter('delete', key);
    return this.inner.delete(key);
  }

  private enter(method: StoreMethod, key: string): void {
    const n = ++this.calls[method];
    // search() ignores a RegExp's lastIndex, so /g patterns match every call, not every other one.
    const fault = this.faults.find(
      (f) => f.method === method && (typeof f.when === 'number' ? f.when === n : key.search(f.when) >= 0),
    );
    if (!fault) return;
    if (fault.error) throw fault.error;
    throw method === 'put'
      ? new CairnError('NO_SPACE', `put ${key}: no space left on ${this.location} (injected fault)`)
      : new CairnError('STORE_UNAVAILABLE', `${method} ${key}: ${this.location} did not answer (injected fault)`, {
          retryable: true,
        });
  }
}
