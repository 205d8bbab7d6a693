import { CairnError } from '../../../shared/errors.js';

/**
 * Numbers of the NBD protocol (NetworkBlockDevice/nbd, doc/proto.md), named as the document names
 * them. Everything on the wire is big-endian. What Cairn's read-only client sends or must understand
 * comes first; what only the server (agent/nbd-server) answers is at the end. Neither negotiates TLS
 * or extended headers.
 */

// Handshake.
export const NBDMAGIC = 0x4e42444d41474943n; // 'NBDMAGIC', first 8 bytes from every server
export const IHAVEOPT = 0x49484156454f5054n; // 'IHAVEOPT': newstyle server; also prefixes each option
export const CLISERV_MAGIC = 0x00420281861253n; // oldstyle server (size and flags follow at once)
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;

/** Handshake flags (16 bits, from the server). */
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
/** Client flags (32 bits); a client may only set what the server advertised. */
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

/** Transmission flags (16 bits, per export). */
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;

/** Options (option haggling). */
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_SET_META_CONTEXT = 10;

/** Option reply types; errors have bit 31 set. */
export const NBD_REP_ACK = 1;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
export const NBD_REP_FLAG_ERROR = 0x80000000;
export const NBD_REP_ERR_UNSUP = 0x80000001;
export const NBD_REP_ERR_POLICY = 0x80000002;
export const NBD_REP_ERR_INVALID = 0x80000003;
export const NBD_REP_ERR_PLATFORM = 0x80000004;
export const NBD_REP_ERR_TLS_REQD = 0x80000005;
export const NBD_REP_ERR_UNKNOWN = 0x80000006;
export const NBD_REP_ERR_SHUTDOWN = 0x80000007;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = 0x80000008;
export const NBD_REP_ERR_TOO_BIG = 0x80000009;

export const optionReplyErrorNames: Record<number, string> = {
  [NBD_REP_ERR_UNSUP]: 'NBD_REP_ERR_UNSUP',
  [NBD_REP_ERR_POLICY]: 'NBD_REP_ERR_POLICY',
  [NBD_REP_ERR_INVALID]: 'NBD_REP_ERR_INVALID',
  [NBD_REP_ERR_PLATFORM]: 'NBD_REP_ERR_PLATFORM',
  [NBD_REP_ERR_TLS_REQD]: 'NBD_REP_ERR_TLS_REQD',
  [NBD_REP_ERR_UNKNOWN]: 'NBD_REP_ERR_UNKNOWN',
  [NBD_REP_ERR_SHUTDOWN]: 'NBD_REP_ERR_SHUTDOWN',
  [NBD_REP_ERR_BLOCK_SIZE_REQD]: 'NBD_REP_ERR_BLOCK_SIZE_REQD',
  [NBD_REP_ERR_TOO_BIG]: 'NBD_REP_ERR_TOO_BIG',
};

/** Information types asked for with NBD_OPT_GO and answered in NBD_REP_INFO. */
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_BLOCK_SIZE = 3;

// Transmission.
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;
export const REQUEST_HEADER_SIZE = 28; // magic 4, flags 2, type 2, handle 8, offset 8, length 4

export const NBD_CMD_READ = 0;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_BLOCK_STATUS = 7;

/** Structured reply chunk flags and types; error types have bit 15 set. */
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_FLAG_ERROR = 1 << 15;
export const NBD_REPLY_TYPE_ERROR = NBD_REPLY_TYPE_FLAG_ERROR + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = NBD_REPLY_TYPE_FLAG_ERROR + 2;

/** Error values of replies. A client treats a value it does not know as NBD_EINVAL. */
export const NBD_ESHUTDOWN = 108;
export const replyErrorNames: Record<number, string> = {
  1: 'EPERM (operation not permitted)',
  5: 'EIO (input/output error)',
  12: 'ENOMEM (cannot allocate memory)',
  22: 'EINVAL (invalid argument)',
  28: 'ENOSPC (no space left on device)',
  75: 'EOVERFLOW (value too large)',
  95: 'ENOTSUP (operation not supported)',
  [NBD_ESHUTDOWN]: 'ESHUTDOWN (server is shutting down)',
};

/**
 * Flags of `base:allocation` extents. HOLE: not allocated in the server's storage. ZERO: reads as
 * zeros. A hole that is not ZERO has undefined contents (rare; a data extent may also be ZERO).
 */
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;
/** Flag of `qemu:dirty-bitmap:NAME` extents: written since the bitmap was created or last cleared. */
export const NBD_STATE_DIRTY = 1 << 0;

/**
 * Block size constraints the client keeps when the server advertises none: any alignment, and
 * reads of at most 32 MiB, which the protocol says no server may treat as a denial of service.
 */
export const DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024;

/** The error for a server that breaks a MUST of the protocol (after which the client hangs up). */
export function protocolViolation(url: string, what: string): CairnError {
  return new CairnError(
    'SOURCE_UNREADABLE',
    `NBD server ${url} broke the NBD protocol: ${what}; check that an NBD server (qemu-nbd, qemu-storage-daemon) listens there, and report the server's version if it does`,
  );
}

// ---- Server side (agent/nbd-server): what Cairn's NBD server answers and understands. ----

/** Transmission flags a server sets (bit 0 must always be set). */
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_SEND_CACHE = 1 << 10;

export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_LIST_META_CONTEXT = 9;

export const NBD_REP_SERVER = 2;

export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;

export const NBD_CMD_WRITE = 1;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;

/** Command flags. */
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

/** Error values of replies (doc/proto.md, "Error values"). */
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;

/** The one metadata context Cairn's server offers. */
export const BASE_ALLOCATION = 'base:allocation';
