/**
 * Work to undo when the process is interrupted (Ctrl-C, a service stop): release leases, remove
 * partial files. Whoever starts such work registers a handler and unregisters it when done; the
 * program's signal handler runs what is registered, each at most once, errors ignored.
 */
const handlers = new Set<() => Promise<unknown> | unknown>();

export function onInterrupt(handler: () => Promise<unknown> | unknown): () => void {
  handlers.add(handler);
  return () => handlers.delete(handler);
}

export async function runInterruptHandlers(): Promise<void> {
  const all = [...handlers];
  handlers.clear();
  await Promise.all(all.map(async (h) => h()).map((p) => p.catch(() => undefined)));
}
