/**
 * Retries with capped exponential backoff and full jitter (AWS Architecture Blog, "Exponential Backoff
 * and Jitter"): attempt n waits a random time in [0, min(cap, base * 2^n)). Full jitter spreads a burst
 * of clients that failed together, which is what a throttling server (503 SlowDown) needs.
 */
export interface RetryPolicy {
  /** Attempts in all, the first one included. */
  attempts: number;
  baseMs: number;
  capMs: number;
}

export const defaultRetryPolicy: RetryPolicy = { attempts: 8, baseMs: 200, capMs: 20_000 };

export interface RetryHooks {
  sleep?: (ms: number) => Promise<void>;
  random?: () => number;
  /** Called before each wait, e.g. to log "retrying put packs/ab… in 0.8 s: 503 SlowDown". */
  onRetry?: (err: unknown, attempt: number, waitMs: number) => void;
}

export function backoffMs(policy: RetryPolicy, attempt: number, random: () => number = Math.random): number {
  return Math.floor(random() * Math.min(policy.capMs, policy.baseMs * 2 ** attempt));
}

/**
 * Runs `fn` until it succeeds, `retryable(err)` says no, or the attempts are used up; then throws the
 * last error. `fn` gets the attempt number (0-based).
 */
export async function withRetry<T>(
  fn: (attempt: number) => Promise<T>,
  retryable: (err: unknown) => boolean,
  policy: RetryPolicy = defaultRetryPolicy,
  hooks: RetryHooks = {},
): Promise<T> {
  const sleep = hooks.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (err) {
      if (attempt + 1 >= policy.attempts || !retryable(err)) throw err;
      const wait = backoffMs(policy, attempt, hooks.random);
      hooks.onRetry?.(err, attempt, wait);
      await sleep(wait);
    }
  }
}
