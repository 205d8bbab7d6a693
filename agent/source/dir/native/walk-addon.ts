/**
 * The native addon `cairn_walk` (walk.c beside this file, built by binding.gyp at the repo root into
 * build/Release/cairn_walk.node; loaded by load-walk-addon.ts): one call per folder does its open,
 * check, listing and the children's lstat and readlink, all relative to one descriptor. walk.c's
 * header describes the call and its records; the offsets below are those of a record.
 */
export interface WalkAddon {
  /**
   * The records of the folder's children, or a number: errno of a failed open (> 0), -errno of a
   * failed fstat or listing of the open folder (< 0), 0 when the open folder is not the one expected.
   */
  listDir(path: Buffer, followRoot: boolean, expectDev: number, expectIno: bigint): ArrayBuffer | number;
}

/** Byte offsets in a record (8-byte aligned; atime, mtime, ctime follow each other, as do their nsec). */
export const RECORD = {
  ino: 0,
  atime: 8,
  mtime: 16,
  ctime: 24,
  size: 32,
  dev: 40,
  rdev: 48,
  nlink: 56,
  mode: 64,
  uid: 68,
  gid: 72,
  errno: 76,
  flags: 80,
  nameLength: 84,
  targetLength: 88,
  atimeNsec: 92,
  mtimeNsec: 96,
  ctimeNsec: 100,
  header: 104,
} as const;

/** The bits of a record's flags. */
export const RECORD_FLAGS = {
  /** fstatat failed (errno): the stat fields are zero. */
  statFailed: 1,
  /** readlinkat failed (errno). */
  linkFailed: 2,
  /** Shifted by 0, 1, 2 for atime, mtime, ctime: the slot holds seconds (ns overflowed 64 bits). */
  timeInSeconds: 4,
} as const;
