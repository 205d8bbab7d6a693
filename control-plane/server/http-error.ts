import { CairnError, errorCatalogue, type ErrorCode } from '../../shared/errors.js';

/**
 * Codes the REST API answers with besides those of shared/errors.ts. They belong in that catalogue
 * (TODO issue 6: move them there, with the PROTOCOL code); until then they live here, in one place.
 */
export const apiErrorCatalogue = {
  UNAUTHENTICATED: { http: 401, summary: 'no valid admin token in the Authorization header' },
  ENROLLMENT_WRONG: { http: 401, summary: 'the enrollment token is unknown or its secret is wrong' },
  ENROLLMENT_EXPIRED: { http: 401, summary: 'the enrollment token has expired' },
  ENROLLMENT_REUSED: { http: 401, summary: 'the enrollment token was used already' },
  ROUTE_NOT_FOUND: { http: 404, summary: 'no such API route' },
  CONFLICT: { http: 409, summary: 'the request does not fit the current state (a revoked or unknown agent, a deleted backup)' },
  TOO_LARGE: { http: 413, summary: 'the request body is larger than the API accepts' },
} as const;

export type ApiErrorCode = ErrorCode | keyof typeof apiErrorCatalogue;

/** An error answered as `{ error: { code, message } }` with the status of its code. */
export class ApiError extends Error {
  constructor(
    readonly code: ApiErrorCode,
    message: string,
    /** Overrides the code's status (BUSY is 503 when the server, not a vault, is busy) and adds headers such as Retry-After. */
    readonly options: { status?: number; headers?: Record<string, string> } = {},
  ) {
    super(message);
    this.name = 'ApiError';
  }

  get status(): number {
    return this.options.status ?? statusOf(this.code);
  }

  get headers(): Record<string, string> {
    return this.options.headers ?? {};
  }
}

export function statusOf(code: ApiErrorCode): number {
  return code in apiErrorCatalogue
    ? apiErrorCatalogue[code as keyof typeof apiErrorCatalogue].http
    : errorCatalogue[code as ErrorCode].http;
}

/**
 * What a failed request is answered with. CairnErrors keep their code and message (they are written
 * for users); anything else is INTERNAL with a fixed message, so no stack trace or internal detail
 * reaches a client. `internal` is true when the caller should log the original.
 */
export function toApiError(err: unknown): { error: ApiError; internal: boolean } {
  if (err instanceof ApiError) return { error: err, internal: false };
  if (err instanceof CairnError && err.code !== 'INTERNAL') return { error: new ApiError(err.code, err.message), internal: false };
  return { error: new ApiError('INTERNAL', 'internal error in the control plane; see its log'), internal: true };
}
