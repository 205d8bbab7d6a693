import { CairnError } from '../errors.js';

/**
 * A message, or a frame, that one side of the agent <-> control plane link refuses. `field` is the
 * path of the offending value (`policy-push.policies[2].trigger.timezone`), `v` or `type` for the
 * envelope, or null when the frame as a whole is wrong (too big, not UTF-8, not JSON, not an object).
 * `messageId` is the id of the refused message when it could be read, so the peer can be answered
 * with an `error` that names it. The message is always one line and never echoes a string value
 * other than a short, escaped enum or type name (a frame may carry a credential).
 */
export class ProtocolError extends CairnError {
  readonly field: string | null;
  /** What is wrong with `field`, without the context (e.g. `is missing`). */
  readonly problem: string;
  readonly messageId: string | null;

  constructor(
    field: string | null,
    problem: string,
    options: { context?: string; messageId?: string | null; cause?: unknown } = {},
  ) {
    const what = field === null ? problem : `${field} ${problem}`;
    // TODO(issue 6): a PROTOCOL code in shared/errors.ts; USAGE (HTTP 400) until then.
    super('USAGE', options.context === undefined ? what : `${options.context}: ${what}`, { cause: options.cause });
    this.name = 'ProtocolError';
    this.field = field;
    this.problem = problem;
    this.messageId = options.messageId ?? null;
  }
}
