/**
 * One catalogue of error codes for all of Cairn. Every error a user can see is a CairnError with a
 * stable `code`; the CLI maps codes to exit codes here and nowhere else, and (later) the control
 * plane maps them to HTTP status the same way. Messages say what failed, where, and what to do.
 */

export const errorCatalogue = {
  USAGE: { exit: 2, http: 400, summary: 'the command line is not valid' },
  NOT_FOUND: { exit: 3, http: 404, summary: 'an object, backup or file does not exist' },
  ALREADY_EXISTS: { exit: 4, http: 409, summary: 'the target exists already' },
  BUSY: { exit: 5, http: 423, summary: 'another process holds the vault for this operation' },
  PARTIAL: { exit: 9, http: 207, summary: 'the command finished, but some files could not be backed up or restored' },
  VAULT_NOT_FOUND: { exit: 10, http: 404, summary: 'no vault at the given location' },
  VAULT_EXISTS: { exit: 11, http: 409, summary: 'a vault exists already at the location' },
  VAULT_CORRUPT: { exit: 12, http: 500, summary: 'vault data is missing or damaged' },
  VAULT_VERSION: { exit: 13, http: 500, summary: 'the vault was written by a newer Cairn' },
  WRONG_PASSPHRASE: { exit: 14, http: 401, summary: 'the passphrase opens no key of the vault' },
  NO_PASSPHRASE: { exit: 15, http: 401, summary: 'no passphrase was given' },
  PERMISSION_DENIED: { exit: 16, http: 403, summary: 'the operating system refused access' },
  NO_SPACE: { exit: 17, http: 507, summary: 'the storage is full' },
  IMMUTABLE: { exit: 18, http: 423, summary: 'the data is under retention (object lock) and cannot be deleted yet' },
  SOURCE_UNREADABLE: { exit: 20, http: 400, summary: 'a backup source cannot be read' },
  SOURCE_AUTH_FAILED: { exit: 24, http: 502, summary: 'the backup source (vCenter, storage array) refused the credentials' },
  CERT_UNTRUSTED: { exit: 25, http: 502, summary: "a server's TLS certificate is not trusted and no thumbprint pins it" },
  SOURCE_UNSUPPORTED: { exit: 26, http: 400, summary: 'a disk cannot be snapshotted or have its changes tracked' },
  TARGET_UNWRITABLE: { exit: 21, http: 400, summary: 'a restore target cannot be written' },
  CONFIG_INVALID: { exit: 23, http: 400, summary: 'the agent configuration file is not valid' },
  QUIESCE_FAILED: { exit: 22, http: 424, summary: 'the workload could not be quiesced, and an application-consistent backup was required' },
  VERIFY_FAILED: { exit: 30, http: 500, summary: 'verification found damaged or missing data' },
  STORE_UNAVAILABLE: { exit: 40, http: 503, summary: 'the object store did not answer' },
  INTERNAL: { exit: 70, http: 500, summary: 'an unexpected internal error' },
} as const;

export type ErrorCode = keyof typeof errorCatalogue;

export class CairnError extends Error {
  readonly code: ErrorCode;
  /** True when the same call may succeed if tried again (network, throttling). */
  readonly retryable: boolean;

  constructor(code: ErrorCode, message: string, options: { cause?: unknown; retryable?: boolean } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'CairnError';
    this.code = code;
    this.retryable = options.retryable ?? false;
  }
}

export function isCairnError(err: unknown, code?: ErrorCode): err is CairnError {
  return err instanceof CairnError && (code === undefined || err.code === code);
}

export function exitCodeFor(err: unknown): number {
  return err instanceof CairnError ? errorCatalogue[err.code].exit : errorCatalogue.INTERNAL.exit;
}

/**
 * Translates a Node.js system error (ENOENT, EACCES, ENOSPC, ...) raised while doing `what` on
 * `where` into a CairnError. Anything not recognised becomes INTERNAL with the original as cause.
 */
export function fromSystemError(err: unknown, what: string, where: string): CairnError {
  if (err instanceof CairnError) return err;
  const sys = err as NodeJS.ErrnoException;
  switch (sys?.code) {
    case 'ENOENT':
      return new CairnError('NOT_FOUND', `${what}: ${where} does not exist`, { cause: err });
    case 'EEXIST':
      return new CairnError('ALREADY_EXISTS', `${what}: ${where} exists already`, { cause: err });
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return new CairnError(
        'PERMISSION_DENIED',
        `${what}: permission denied on ${where}; check its owner and mode, or run as a user that may write there`,
        { cause: err },
      );
    case 'ENOSPC':
    case 'EDQUOT':
      return new CairnError('NO_SPACE', `${what}: no space left on ${where}; free space or use another location`, {
        cause: err,
      });
    case 'EIO':
      return new CairnError('STORE_UNAVAILABLE', `${what}: I/O error on ${where}`, { cause: err, retryable: true });
    default:
      return new CairnError('INTERNAL', `${what} on ${where} failed: ${sys?.message ?? String(err)}`, { cause: err });
  }
}
