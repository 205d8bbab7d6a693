/*
 * cairn_walk: the per-folder work of a file-system backup's walk (walker.ts), done with openat,
 * readdir and fstatat on one open descriptor.
 *
 * listDir(path: Buffer, followRoot: boolean, expectDev: number, expectIno: bigint)
 *   Opens the folder `path` (O_NOFOLLOW unless followRoot), checks that the open folder is the one
 *   the caller's lstat saw (same st_dev and st_ino), and lists it: every child (not . and ..) is
 *   fstatat'ed (AT_SYMLINK_NOFOLLOW) and, if a symlink, readlinkat'ed, all relative to the open
 *   descriptor, so a swap of the folder or of one above it after the check redirects nothing.
 *   A child gone between the listing and its fstatat (ENOENT) is left out.
 *
 *   Returns, on success, an ArrayBuffer of one record per child (layout below), in the order the
 *   kernel listed them; on failure a number:
 *     errno > 0   the open failed with errno
 *     -errno < 0  the open folder could not be fstat'ed or listed
 *     0           the open folder is not the one expected (another folder took its place)
 *
 * Record (native byte order; every record starts at a multiple of 8 bytes):
 *     0 u64 st_ino
 *     8 i64 atime, 16 i64 mtime, 24 i64 ctime: sec * 1e9 + nsec, or sec alone when that overflows
 *           (flag bits TIME_SEC << 0..2 for atime, mtime, ctime; the nsec are at 92, 96, 100)
 *    32 f64 st_size, 40 f64 st_dev, 48 f64 st_rdev, 56 f64 st_nlink (as Node's numbers are)
 *    64 u32 st_mode, 68 u32 st_uid, 72 u32 st_gid
 *    76 u32 errno of the failed call (0: none)
 *    80 u32 flags: STAT_FAILED (the stat fields are zero), LINK_FAILED, TIME_SEC bits
 *    84 u32 name length, 88 u32 target length (a symlink's target; 0 otherwise)
 *    92 u32 atime nsec, 96 u32 mtime nsec, 100 u32 ctime nsec
 *   104 name bytes, then target bytes, then zeros up to the next multiple of 8
 */
#define NAPI_VERSION 8
#include <node_api.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { HEADER = 104 };
enum { STAT_FAILED = 1, LINK_FAILED = 2, TIME_SEC = 4 };

/* A growable byte buffer, one per Node-API environment (thread), kept between calls. */
typedef struct {
  uint8_t *data;
  size_t cap;
  size_t len;
} Out;

static int reserve(Out *out, size_t more) {
  if (out->len + more <= out->cap) return 0;
  size_t cap = out->cap ? out->cap : 65536;
  while (cap < out->len + more) cap *= 2;
  uint8_t *data = realloc(out->data, cap);
  if (!data) return -1;
  out->data = data;
  out->cap = cap;
  return 0;
}

static void put_u32(uint8_t *rec, size_t at, uint32_t v) { memcpy(rec + at, &v, 4); }
static void put_u64(uint8_t *rec, size_t at, uint64_t v) { memcpy(rec + at, &v, 8); }
static void put_f64(uint8_t *rec, size_t at, double v) { memcpy(rec + at, &v, 8); }

/* Stores a time as ns at `at` and its nsec at `nsec_at`; sets `bit` in *flags when ns overflows. */
static void put_time(uint8_t *rec, size_t at, size_t nsec_at, struct timespec t, uint32_t bit, uint32_t *flags) {
  int64_t ns;
  if (__builtin_mul_overflow((int64_t)t.tv_sec, (int64_t)1000000000, &ns) || __builtin_add_overflow(ns, (int64_t)t.tv_nsec, &ns)) {
    ns = (int64_t)t.tv_sec;
    *flags |= bit;
  }
  put_u64(rec, at, (uint64_t)ns);
  put_u32(rec, nsec_at, (uint32_t)t.tv_nsec);
}

/* Reads the link `name` in `dirfd` into *buf (grown as needed); returns its length or -1 (errno). */
static ssize_t read_link(int dirfd, const char *name, char **buf, size_t *cap) {
  for (;;) {
    ssize_t n = readlinkat(dirfd, name, *buf, *cap);
    if (n < 0) return -1;
    if ((size_t)n < *cap) return n;
    char *bigger = realloc(*buf, *cap * 2);
    if (!bigger) {
      errno = ENOMEM;
      return -1;
    }
    *buf = bigger;
    *cap *= 2;
  }
}

/* Appends the record of `name` in the open folder `dirfd`; 0, 1 when gone (ENOENT), -1 out of memory. */
static int add_child(Out *out, int dirfd, const char *name, char **link, size_t *link_cap) {
  struct stat st;
  uint32_t flags = 0, err = 0;
  ssize_t target_len = 0;
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return 1;
    err = (uint32_t)errno;
    flags = STAT_FAILED;
  } else if (S_ISLNK(st.st_mode)) {
    target_len = read_link(dirfd, name, link, link_cap);
    if (target_len < 0) {
      err = (uint32_t)errno;
      flags = LINK_FAILED;
      target_len = 0;
    }
  }
  size_t name_len = strlen(name);
  size_t size = (HEADER + name_len + (size_t)target_len + 7) & ~(size_t)7;
  if (reserve(out, size) != 0) return -1;
  uint8_t *rec = out->data + out->len;
  memset(rec, 0, size);
  if (!(flags & STAT_FAILED)) {
    put_u64(rec, 0, (uint64_t)st.st_ino);
    put_time(rec, 8, 92, st.st_atim, TIME_SEC << 0, &flags);
    put_time(rec, 16, 96, st.st_mtim, TIME_SEC << 1, &flags);
    put_time(rec, 24, 100, st.st_ctim, TIME_SEC << 2, &flags);
    put_f64(rec, 32, (double)st.st_size);
    put_f64(rec, 40, (double)st.st_dev);
    put_f64(rec, 48, (double)st.st_rdev);
    put_f64(rec, 56, (double)st.st_nlink);
    put_u32(rec, 64, st.st_mode);
    put_u32(rec, 68, st.st_uid);
    put_u32(rec, 72, st.st_gid);
  }
  put_u32(rec, 76, err);
  put_u32(rec, 80, flags);
  put_u32(rec, 84, (uint32_t)name_len);
  put_u32(rec, 88, (uint32_t)target_len);
  memcpy(rec + HEADER, name, name_len);
  if (target_len > 0) memcpy(rec + HEADER + name_len, *link, (size_t)target_len);
  out->len += size;
  return 0;
}

/* Lists the open folder `fd` (closed here) into `out`; 0 or an errno. */
static int list_open(int fd, Out *out) {
  DIR *dir = fdopendir(fd);
  if (!dir) {
    int e = errno;
    close(fd);
    return e;
  }
  size_t link_cap = 256;
  char *link = malloc(link_cap);
  int result = link ? 0 : ENOMEM;
  while (result == 0) {
    errno = 0;
    struct dirent *d = readdir(dir);
    if (!d) {
      result = errno;
      break;
    }
    const char *n = d->d_name;
    if (n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0))) continue;
    if (add_child(out, dirfd(dir), n, &link, &link_cap) < 0) result = ENOMEM;
  }
  free(link);
  closedir(dir);
  return result;
}

static void free_out(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  Out *out = data;
  free(out->data);
  free(out);
}

#define CHECK(call)                                 \
  do {                                              \
    if ((call) != napi_ok) goto napi_failed;        \
  } while (0)

static napi_value list_dir(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], result = NULL;
  char *path = NULL;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 4) {
    napi_throw_type_error(env, NULL, "listDir(path, followRoot, expectDev, expectIno)");
    return NULL;
  }
  void *bytes;
  size_t bytes_len;
  bool follow_root, lossless;
  double expect_dev;
  uint64_t expect_ino;
  CHECK(napi_get_buffer_info(env, argv[0], &bytes, &bytes_len));
  CHECK(napi_get_value_bool(env, argv[1], &follow_root));
  CHECK(napi_get_value_double(env, argv[2], &expect_dev));
  CHECK(napi_get_value_bigint_uint64(env, argv[3], &expect_ino, &lossless));
  Out *out;
  CHECK(napi_get_instance_data(env, (void **)&out));

  path = malloc(bytes_len + 1);
  if (!path) {
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  memcpy(path, bytes, bytes_len);
  path[bytes_len] = 0;

  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | (follow_root ? 0 : O_NOFOLLOW));
  if (fd < 0) {
    int e = errno;
    CHECK(napi_create_int32(env, e, &result));
    goto done;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    CHECK(napi_create_int32(env, -e, &result));
    goto done;
  }
  if ((double)st.st_dev != expect_dev || (uint64_t)st.st_ino != expect_ino) {
    close(fd);
    CHECK(napi_create_int32(env, 0, &result));
    goto done;
  }
  out->len = 0;
  int e = list_open(fd, out);
  if (e != 0) {
    CHECK(napi_create_int32(env, -e, &result));
    goto done;
  }
  void *data;
  CHECK(napi_create_arraybuffer(env, out->len, &data, &result));
  if (out->len) memcpy(data, out->data, out->len);
  // A huge folder's buffer is not kept for the rest of the walk.
  if (out->cap > (4u << 20)) {
    free(out->data);
    out->data = NULL;
    out->cap = 0;
  }
done:
  free(path);
  return result;

napi_failed:
  free(path);
  {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) napi_throw_error(env, NULL, "cairn_walk: a Node-API call failed");
  }
  return NULL;
}

NAPI_MODULE_INIT() {
  Out *out = calloc(1, sizeof(Out));
  if (!out || napi_set_instance_data(env, out, free_out, NULL) != napi_ok) {
    free(out);
    napi_throw_error(env, NULL, "cairn_walk: cannot initialise");
    return NULL;
  }
  napi_value fn;
  if (napi_create_function(env, "listDir", NAPI_AUTO_LENGTH, list_dir, NULL, &fn) != napi_ok ||
      napi_set_named_property(env, exports, "listDir", fn) != napi_ok) {
    return NULL;
  }
  return exports;
}
