/* The disk tier (see disk.h for where the engine calls in).
 *
 * Files. One per allocation, created without a name: open(dir, O_TMPFILE |
 * O_EXCL), which can never be linked into the directory. Nothing is ever
 * opened by name, so nothing another process (or an earlier, crashed one)
 * left in the directory can be read as a backup, and the file's space goes
 * back to the filesystem when its descriptor is closed — by cumem on wake,
 * free and close, or by the kernel when the process dies, however it dies.
 * Where the filesystem has no O_TMPFILE, a named file is created (mkostemp,
 * ".cumem-disk-XXXXXX") and unlinked at once: a crash between the two
 * leaves an empty file of that name, still never read.
 *
 * Space for the whole file is reserved (fallocate) before any content is
 * copied, so a full disk is normally found before anything moved; where
 * fallocate is not supported the writes find it. ENOSPC, EDQUOT and EFBIG
 * (a file size limit) are CUMEM_ENOSPC, other I/O errors CUMEM_EIO, each
 * with the directory and the bytes. A sleep writes all of its disk backups
 * before the engine releases anything (sleep.c), so a failure changes
 * nothing on the device.
 *
 * O_DIRECT where the filesystem takes it (not on tmpfs before Linux 6.6,
 * for instance): the content does not pass through the page cache, so the
 * tier holds no host copy of it there either, and its speed is the disk's.
 * I/O lengths and offsets are multiples of DISK_ALIGN (the logical block
 * size of every common device) and the staging buffers are aligned to it;
 * the last piece of a file is padded. A write or read that O_DIRECT refuses
 * anyway (EINVAL) is done again without it.
 *
 * Pipeline. DISK_SLOTS page-locked staging buffers of copy_chunk bytes
 * each (at most DISK_PIECE_MAX), used in turn: sleep queues the device-to-staging copy of the next
 * piece on the device's stream and, while it runs, writes the previous
 * buffer to its file; wake reads the next piece from its file while the
 * staging-to-device copies of the previous ones run. The calling thread does
 * the I/O; the staging buffers are the only host memory the tier holds, and
 * only during the call (the copies are far faster than a disk, so a few
 * buffers keep the disk busy all the time).
 */
#define _GNU_SOURCE /* O_TMPFILE, O_DIRECT, fallocate, mkostemp */
#include "core.h"
#include "cumem_testing.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#define DISK_ALIGN ((size_t)4096)
#define DISK_SLOTS 4
#define DISK_PIECE_MAX ((size_t)64 << 20) /* larger transfers gain nothing */
#define TMPFS_MAGIC_ 0x01021994

static size_t align_up(size_t n) { return (n + DISK_ALIGN - 1) / DISK_ALIGN * DISK_ALIGN; }

/* ---- the test hook (cumem_testing.h) -------------------------------------- */

static _Atomic(cumem_disk_fault_fn) fault_fn;
static _Atomic(void *) fault_arg;

void cumem_fault_disk(cumem_disk_fault_fn fn, void *arg) {
  atomic_store(&fault_fn, NULL);
  atomic_store(&fault_arg, arg);
  atomic_store(&fault_fn, fn);
}

/* The errno a test injects into `op`, or 0: make the call. */
static int injected(const char *op) {
  cumem_disk_fault_fn fn = atomic_load(&fault_fn);
  return fn ? fn(op, atomic_load(&fault_arg)) : 0;
}

/* ---- files ---------------------------------------------------------------- */

/* A failed file operation as a cumem error: what was done, where, for how
 * many bytes. */
static int disk_fail(int err, const char *dir, size_t bytes, const char *what) {
  int code = err == ENOSPC || err == EDQUOT || err == EFBIG ? CUMEM_ENOSPC
             : err == ENOMEM                                ? CUMEM_ENOHOST
                                                            : CUMEM_EIO;
  return CUMEM_FAIL(code, "disk backup of %zu bytes under %s: %s: %s", bytes, dir, what, strerror(err));
}

void cumem__disk_close(diskfile_t *f) {
  if (f->open && close(f->fd) != 0)
    cumem__log("closing a disk backup file failed (%s); its space is given back anyway", strerror(errno));
  memset(f, 0, sizeof *f);
}

/* A new file under dir that has no name (see the top of this file). */
static int open_unnamed(const char *dir, size_t bytes, int *out) {
  int err = injected("tmpfile");
  int fd = err ? -1 : open(dir, O_TMPFILE | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0) {
    *out = fd;
    return 0;
  }
  if (!err) err = errno;
  /* EOPNOTSUPP: this filesystem has no O_TMPFILE; EISDIR: nor the kernel. */
  if (err != EOPNOTSUPP && err != EISDIR) return disk_fail(err, dir, bytes, "creating an unnamed file");

  size_t cap = strlen(dir) + sizeof "/.cumem-disk-XXXXXX";
  char *path = malloc(cap);
  if (!path) return CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory for a file name");
  snprintf(path, cap, "%s/.cumem-disk-XXXXXX", dir);
  err = injected("mkstemp");
  fd = err ? -1 : mkostemp(path, O_CLOEXEC);
  if (fd < 0) {
    if (!err) err = errno;
    free(path);
    return disk_fail(err, dir, bytes, "creating a file");
  }
  err = injected("unlink");
  if (err || unlink(path) != 0) {
    if (!err) err = errno;
    (void)unlink(path);
    close(fd);
    int rc = disk_fail(err, dir, bytes, "unlinking a new file");
    free(path);
    return rc;
  }
  free(path);
  *out = fd;
  return 0;
}

/* O_DIRECT on fd where its filesystem takes it; 1 when on. */
static int try_direct(int fd) {
  if (injected("direct")) return 0;
  int fl = fcntl(fd, F_GETFL);
  return fl >= 0 && fcntl(fd, F_SETFL, fl | O_DIRECT) == 0;
}

static void drop_direct(diskfile_t *f) {
  int fl = fcntl(f->fd, F_GETFL);
  if (fl >= 0) (void)fcntl(f->fd, F_SETFL, fl & ~O_DIRECT);
  f->direct = 0;
  cumem__log("disk: O_DIRECT refused a transfer (EINVAL); going on through the page cache");
}

/* A new file for `size` bytes of content, its space reserved. */
static int file_create(const char *dir, size_t size, diskfile_t *f) {
  memset(f, 0, sizeof *f);
  int fd = -1, rc = open_unnamed(dir, size, &fd);
  if (rc) return rc;
  size_t padded = align_up(size);
  int err = 0;
  if (padded) {
    do {
      err = injected("allocate");
      if (!err && fallocate(fd, 0, 0, (off_t)padded) != 0) err = errno;
    } while (err == EINTR);
  }
  /* Not supported here (tmpfs before 3.5, some network filesystems): the
   * writes will find a full disk instead. */
  if (err && err != EOPNOTSUPP && err != ENOSYS) {
    close(fd);
    return disk_fail(err, dir, size, "reserving the space");
  }
  f->fd = fd;
  f->open = 1;
  f->size = size;
  f->direct = try_direct(fd);
  return 0;
}

/* Write or read exactly len bytes at off, going on after short transfers and
 * signals; without O_DIRECT when it refuses the transfer. */
static int file_io(diskfile_t *f, int write, unsigned char *buf, size_t len, size_t off, const char *dir) {
  size_t done = 0;
  while (done < len) {
    int err = injected(write ? "write" : "read");
    ssize_t r = -1;
    if (!err) {
      r = write ? pwrite(f->fd, buf + done, len - done, (off_t)(off + done))
                : pread(f->fd, buf + done, len - done, (off_t)(off + done));
      if (r > 0) {
        done += (size_t)r;
        continue;
      }
      err = r == 0 ? 0 : errno;
    }
    if (err == EINTR) continue;
    if (err == EINVAL && f->direct) {
      drop_direct(f);
      continue;
    }
    char what[96];
    snprintf(what, sizeof what, "%s at offset %zu", write ? "write" : "read", off + done);
    if (err == 0) /* read: the file ends early; write: nothing written */
      return CUMEM_FAIL(CUMEM_EIO, "disk backup of %zu bytes under %s: %s: the %s", f->size, dir, what,
                        write ? "disk took no bytes" : "file ends there");
    return disk_fail(err, dir, f->size, what);
  }
  return 0;
}

/* ---- the directory -------------------------------------------------------- */

int cumem__disk_dir_check(const char *dir, char **abs_out) {
  *abs_out = NULL;
  struct stat st;
  if (stat(dir, &st) != 0)
    return CUMEM_FAIL(CUMEM_EINVAL, "disk_dir \"%s\": %s", dir, strerror(errno));
  if (!S_ISDIR(st.st_mode)) return CUMEM_FAIL(CUMEM_EINVAL, "disk_dir \"%s\" is not a directory", dir);
  char *abs = realpath(dir, NULL); /* a later chdir must not move the backups */
  if (!abs) return CUMEM_FAIL(CUMEM_EINVAL, "disk_dir \"%s\": %s", dir, strerror(errno));
  /* Creating a file is the one test of "writable" that every permission
   * model, read-only mount and quota agrees with. */
  diskfile_t probe;
  int rc = file_create(abs, 0, &probe);
  if (rc) {
    char why[512];
    snprintf(why, sizeof why, "%s", cumem_last_error());
    rc = CUMEM_FAIL(CUMEM_EINVAL, "disk_dir \"%s\" does not take new files (%s)", abs, why);
    free(abs);
    return rc;
  }
  struct statfs fs;
  int tmpfs = statfs(abs, &fs) == 0 && fs.f_type == TMPFS_MAGIC_;
  cumem__log("disk_dir %s: %s, O_DIRECT %s", abs,
             tmpfs ? "tmpfs (backups stay in RAM)" : "on disk", probe.direct ? "on" : "off");
  cumem__disk_close(&probe);
  *abs_out = abs;
  return 0;
}

int cumem_set_disk_dir(cumem_t *cm, const char *dir) {
  if (!cm) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_set_disk_dir: instance is NULL");
  char *abs = NULL;
  int rc = cumem__check_process(cm); /* the check does I/O: outside the lock */
  if (!rc && dir && *dir) rc = cumem__disk_dir_check(dir, &abs);
  if (!rc) rc = cumem__enter(cm);
  if (rc) {
    free(abs);
    return rc;
  }
  free(cm->disk_dir);
  cm->disk_dir = abs;
  cumem__leave(cm);
  return 0;
}

int cumem_get_disk_dir(cumem_t *cm, char *buf, size_t cap) {
  if (!cm || !buf) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_get_disk_dir: NULL argument");
  int rc = cumem__enter(cm);
  if (rc) return rc;
  const char *d = cm->disk_dir ? cm->disk_dir : "";
  size_t need = strlen(d) + 1;
  if (need > cap) rc = CUMEM_FAIL(CUMEM_EINVAL, "cumem_get_disk_dir: the path needs %zu bytes, got %zu", need, cap);
  else memcpy(buf, d, need);
  cumem__leave(cm);
  return rc;
}

int cumem__backs_up_to_disk(const alloc_t *a) { return a->tag && a->tag->opts.backup == CUMEM_BACKUP_DISK; }

/* ---- staging -------------------------------------------------------------- */

/* One staging buffer and the piece it carries. */
typedef struct slot {
  unsigned char *buf;
  void *event;       /* recorded after the piece's copy */
  int event_device;  /* the device event was made for */
  int busy;          /* a copy into or out of buf is queued */
  diskfile_t *file;  /* sleep: where the piece goes once copied */
  size_t off, len;
} slot_t;

typedef struct stager {
  cumem_t *cm;
  const char *dir;
  hostbuf_t *mem; /* the slots' buffers, one segment each, page-locked:
                     cm->disk_staging, given back at the end of each call */
  size_t seg;    /* bytes per buffer: a multiple of DISK_ALIGN */
  slot_t slot[DISK_SLOTS];
  size_t next;   /* slots are used in turn: slot[next % DISK_SLOTS] */
  void *stream[CUMEM_MAX_DEVICES];
} stager_t;

/* Page-locked buffers for pieces of at most `largest` bytes. Whether or not
 * it succeeds, stager_finish must follow. */
static int stager_open(stager_t *s, cumem_t *cm, size_t largest) {
  memset(s, 0, sizeof *s);
  s->cm = cm;
  s->dir = cm->disk_dir ? cm->disk_dir : "(no disk_dir now)"; /* for messages only */
  size_t piece = cm->opts.copy_chunk < DISK_PIECE_MAX ? cm->opts.copy_chunk : DISK_PIECE_MAX;
  s->seg = align_up(piece < largest ? piece : largest);
  s->mem = &cm->disk_staging;
  /* Buffers an earlier call could not give back go first. */
  int rc = cumem__disk_staging_free(cm);
  if (!rc) rc = cumem__hostbuf_map(s->mem, DISK_SLOTS * s->seg, s->seg);
  for (int i = 0; !rc && i < DISK_SLOTS; i++) {
    cumem__hostbuf_touch_segment(s->mem, (size_t)i);
    rc = cumem__hostbuf_register_segment(cm->backend, s->mem, (size_t)i);
    s->slot[i].buf = s->mem->ptr + (size_t)i * s->seg;
  }
  return rc;
}

int cumem__disk_staging_free(cumem_t *cm) { return cumem__hostbuf_free(cm->backend, &cm->disk_staging); }

static int stream_of(stager_t *s, int device, void **out) {
  if (!s->stream[device]) {
    int rc = s->cm->backend->stream_create(s->cm->backend, device, &s->stream[device]);
    if (rc) return rc;
  }
  *out = s->stream[device];
  return 0;
}

/* Record sl's event on stream (an event belongs to one device). */
static int slot_record(stager_t *s, slot_t *sl, int device, void *stream) {
  cumem_backend_t *b = s->cm->backend;
  if (sl->event && sl->event_device != device) {
    b->event_destroy(b, sl->event);
    sl->event = NULL;
  }
  if (!sl->event) {
    int rc = b->event_create(b, device, &sl->event);
    if (rc) return rc;
    sl->event_device = device;
  }
  return b->event_record(b, sl->event, stream);
}

/* Sleep: wait for the copy into sl, then write it to its file. */
static int slot_flush(stager_t *s, slot_t *sl) {
  sl->busy = 0;
  int rc = s->cm->backend->event_synchronize(s->cm->backend, sl->event);
  return rc ? rc : file_io(sl->file, 1, sl->buf, align_up(sl->len), sl->off, s->dir);
}

/* Sleep: queue the copy of [off, off + len) of a into the next buffer, after
 * writing out what that buffer held. */
static int stage_out(stager_t *s, alloc_t *a, size_t off, size_t len) {
  cumem_backend_t *b = s->cm->backend;
  slot_t *sl = &s->slot[s->next++ % DISK_SLOTS];
  void *stream;
  int rc = sl->busy ? slot_flush(s, sl) : 0;
  if (!rc) rc = stream_of(s, a->device, &stream);
  if (!rc) rc = b->copy_to_host(b, sl->buf, a->va + off, len, stream);
  if (!rc) rc = slot_record(s, sl, a->device, stream);
  if (!rc) *sl = (slot_t){sl->buf, sl->event, sl->event_device, 1, &a->disk, off, len};
  return rc;
}

/* Wake: read [off, off + len) of a's file into the next buffer (once the
 * copy out of it is done) and queue its copy to the device. */
static int stage_in(stager_t *s, alloc_t *a, size_t off, size_t len) {
  cumem_backend_t *b = s->cm->backend;
  slot_t *sl = &s->slot[s->next++ % DISK_SLOTS];
  void *stream;
  int rc = 0;
  if (sl->busy) {
    sl->busy = 0;
    rc = b->event_synchronize(b, sl->event);
  }
  if (!rc) rc = file_io(&a->disk, 0, sl->buf, align_up(len), off, s->dir);
  if (!rc) rc = stream_of(s, a->device, &stream);
  if (!rc) rc = b->copy_to_device(b, a->va + off, sl->buf, len, stream);
  if (!rc) rc = slot_record(s, sl, a->device, stream);
  sl->busy = !rc;
  return rc;
}

/* Keep the first failure (code and detail) of several steps. */
static void keep_first(int *rc, int r, cumem__error_save_t *e) {
  if (!*rc && r) {
    *rc = r;
    cumem__error_save(e);
  }
}

/* Finish: after a successful sleep (rc == 0) write out the buffers still
 * held, oldest first; in any case wait until no copy touches the buffers,
 * then give them back. Returns the first failure, rc's included. Buffers
 * that cannot be given back (or that a copy may still use: a stream that
 * could not be synchronized) stay in cm->disk_staging for the next call or
 * cumem_close. */
static int stager_finish(stager_t *s, int rc) {
  cumem_backend_t *b = s->cm->backend;
  cumem__error_save_t e;
  if (rc) cumem__error_save(&e);
  for (size_t k = 0; k < DISK_SLOTS; k++) {
    slot_t *sl = &s->slot[(s->next + k) % DISK_SLOTS];
    if (sl->busy && !rc) keep_first(&rc, slot_flush(s, sl), &e);
  }
  int idle = 1;
  for (int d = 0; d < CUMEM_MAX_DEVICES; d++) {
    if (!s->stream[d]) continue;
    int r = b->stream_synchronize(b, s->stream[d]);
    if (r) idle = 0;
    keep_first(&rc, r, &e);
    b->stream_destroy(b, s->stream[d]);
  }
  for (int i = 0; i < DISK_SLOTS; i++)
    if (s->slot[i].event) b->event_destroy(b, s->slot[i].event);
  if (idle) keep_first(&rc, cumem__disk_staging_free(s->cm), &e);
  else cumem__log("disk: a copy may still use the staging buffers; they are kept for now");
  if (rc) cumem__error_restore(&e);
  return rc;
}

/* ---- the engine's hooks ---------------------------------------------------- */

/* The allocations a disk call works on: count, bytes, largest. */
typedef struct disk_set {
  size_t n, bytes, largest;
  alloc_t *first;
} disk_set_t;

static void set_add(disk_set_t *set, alloc_t *a) {
  if (!set->n++) set->first = a;
  set->bytes += a->size;
  if (a->size > set->largest) set->largest = a->size;
}

static int in_sleep(alloc_t *a, const unsigned char *copy, size_t i) {
  return copy[i] && cumem__backs_up_to_disk(a);
}

int cumem__disk_sleep(cumem_t *cm, alloc_t **list, size_t n, unsigned char *copy) {
  disk_set_t set = {0};
  for (size_t i = 0; i < n; i++)
    if (in_sleep(list[i], copy, i)) set_add(&set, list[i]);
  if (!set.n) return 0;
  if (!cm->disk_dir)
    return CUMEM_FAIL(CUMEM_EINVAL,
                      "tag \"%s\" backs up to disk, but this instance has no disk_dir "
                      "(set CUMEM_DISK_DIR, the disk_dir option, or call cumem_set_disk_dir)",
                      set.first->tag->name);
  double t0 = cumem__now();
  /* 1. Every file first, its space reserved: a full disk is found before
   * anything is copied. */
  int rc = 0;
  for (size_t i = 0; !rc && i < n; i++) {
    if (!in_sleep(list[i], copy, i)) continue;
    cumem__disk_close(&list[i]->disk); /* (none is open: a sleep that failed closed its own) */
    rc = file_create(cm->disk_dir, list[i]->size, &list[i]->disk);
  }
  double t1 = cumem__now();
  /* 2. Through the staging buffers. */
  stager_t st;
  if (!rc) {
    rc = stager_open(&st, cm, set.largest);
    for (size_t i = 0; !rc && i < n; i++) {
      alloc_t *a = list[i];
      if (!in_sleep(a, copy, i)) continue;
      for (size_t off = 0; !rc && off < a->size; off += st.seg)
        rc = stage_out(&st, a, off, a->size - off < st.seg ? a->size - off : st.seg);
    }
    rc = stager_finish(&st, rc);
  }
  /* 3. All written, or none kept. */
  size_t direct = 0;
  for (size_t i = 0; i < n; i++) {
    alloc_t *a = list[i];
    if (!in_sleep(a, copy, i)) continue;
    if (rc) {
      cumem__disk_close(&a->disk);
      continue;
    }
    direct += a->disk.direct;
    a->disk.filled = 1;
    a->backed_up = 1;
    a->backup.filled = 0; /* a host backup retained from before is stale now */
    copy[i] = 0;
  }
  double t = cumem__now() - t0;
  if (!rc)
    cumem__log("disk: wrote %zu backups, %zu bytes, to %s in %.1f ms (%.1f ms creating files; %.2f GB/s; "
               "O_DIRECT for %zu of them)", set.n, set.bytes, cm->disk_dir, t * 1e3, (t1 - t0) * 1e3,
               t > 0 ? (double)set.bytes / t / 1e9 : 0.0, direct);
  return rc;
}

int cumem__disk_wake(cumem_t *cm, alloc_t **list, size_t n) {
  disk_set_t set = {0};
  for (size_t i = 0; i < n; i++)
    if (list[i]->backed_up && list[i]->disk.filled) set_add(&set, list[i]);
  if (!set.n) return 0;
  double t0 = cumem__now();
  stager_t st;
  int rc = stager_open(&st, cm, set.largest);
  for (size_t i = 0; !rc && i < n; i++) {
    alloc_t *a = list[i];
    if (!a->backed_up || !a->disk.filled) continue;
    for (size_t off = 0; !rc && off < a->size; off += st.seg)
      rc = stage_in(&st, a, off, a->size - off < st.seg ? a->size - off : st.seg);
  }
  rc = stager_finish(&st, rc);
  double t = cumem__now() - t0;
  if (!rc)
    cumem__log("disk: read %zu backups, %zu bytes, in %.1f ms (%.2f GB/s)", set.n, set.bytes, t * 1e3,
               t > 0 ? (double)set.bytes / t / 1e9 : 0.0);
  return rc;
}
