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
 * each (at most DISK_PIECE_MAX), used in turn, and DISK_IO_THREADS I/O
 * threads (the engine's worker pool, pool.c: one item per piece, released
 * once its buffer is set up). Sleep: the calling thread queues the device-to-staging copy of
 * each piece on its device's stream and hands the buffer to the I/O
 * threads, which wait for that copy and write the buffer to its file, so
 * that copies and several writes are in flight at once. Wake: the I/O
 * threads read pieces ahead into free buffers; the calling thread queues
 * each piece's staging-to-device copy, in order, once it has been read, and
 * a buffer is read into again once its copy is done. Several transfers in
 * flight matter: one thread's 64 MiB O_DIRECT writes one after another
 * measured 2.0 GB/s on a virtio disk where four threads wrote 2.7 (bench/
 * bench_disk prints both figures for the disk at hand). The staging
 * buffers are the only host memory the tier holds, and only during a call.
 */
#define _GNU_SOURCE /* O_TMPFILE, O_DIRECT, fallocate, mkostemp */
#include "core.h"
#include "pool.h"
#include "cumem_testing.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/vfs.h>
#include <unistd.h>

#define DISK_ALIGN ((size_t)4096)
#define DISK_SLOTS 8                     /* staging buffers */
#define DISK_IO_THREADS 4                /* transfers in flight at most */
#define DISK_PIECE_MAX ((size_t)32 << 20) /* bytes per buffer at most */
#define TMPFS_MAGIC_ 0x01021994

static size_t align_up(size_t n) { return cumem__ceil_div(n, DISK_ALIGN) * DISK_ALIGN; }

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
  /* Each sleeping allocation of a disk tag holds one open file: running
   * out of descriptors is the process's limit, not the disk failing. */
  if (err == EMFILE || err == ENFILE)
    return CUMEM_FAIL(CUMEM_ENOHOST,
                      "disk backup of %zu bytes under %s: %s: %s (each sleeping allocation of a disk tag "
                      "holds one open file: raise the limit, ulimit -n, or back fewer allocations up to disk)",
                      bytes, dir, what, strerror(err));
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
  atomic_store(&f->direct, 0);
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
  atomic_store(&f->direct, try_direct(fd));
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
    if (err == EINVAL && atomic_load(&f->direct)) {
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
             tmpfs ? "tmpfs (backups stay in RAM)" : "on disk", atomic_load(&probe.direct) ? "on" : "off");
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

/* One piece of one allocation: what a staging buffer carries at a time. */
typedef struct piece {
  alloc_t *a;
  size_t off, len;
} piece_t;

/* One staging buffer. The calling thread owns it until the transfer of its
 * piece is released to the I/O threads, and again once that is done. */
typedef struct slot {
  unsigned char *buf;
  void *event;       /* recorded after the last copy into or out of buf */
  int event_device;  /* the device event was made for */
  int dirty;         /* that copy may still run: wait for event first */
  int write;         /* the transfer: buf to file, or file to buf */
  diskfile_t *file;
  size_t off, len;
} slot_t;

typedef struct stager {
  cumem_t *cm;
  const char *dir;   /* for messages */
  hostbuf_t *mem;    /* the buffers, one segment each, page-locked:
                        cm->disk_staging, given back at the end of each call */
  size_t seg;        /* bytes per buffer: a multiple of DISK_ALIGN */
  slot_t slot[DISK_SLOTS];
  streams_t streams;
  /* The I/O threads: the worker pool (pool.c), one item per piece, piece k
   * in buffer k % DISK_SLOTS, released once that buffer is set up. */
  cumem__pool_t io;
  int io_started;
} stager_t;

/* The transfer of a slot: wait for the copy that last used its buffer, then
 * write or read. On an I/O thread (or the caller when there is none). */
static int slot_transfer(stager_t *s, slot_t *sl) {
  if (sl->dirty) {
    int rc = s->cm->backend->event_synchronize(s->cm->backend, sl->event);
    if (rc) return rc;
    sl->dirty = 0;
  }
  return file_io(sl->file, sl->write, sl->buf, align_up(sl->len), sl->off, s->dir);
}

/* The pool's task: the transfer of piece k. */
static int transfer_task(void *ctx, size_t k) {
  stager_t *s = ctx;
  return slot_transfer(s, &s->slot[k % DISK_SLOTS]);
}

/* Page-locked buffers for pieces of at most `largest` bytes (the I/O
 * threads start in stager_run, once the pieces are counted). Whether or not
 * it succeeds, stager_finish must follow. */
static int stager_open(stager_t *s, cumem_t *cm, size_t largest) {
  memset(s, 0, sizeof *s);
  s->cm = cm;
  s->dir = cm->disk_dir ? cm->disk_dir : "(no disk_dir now)";
  size_t piece = cm->opts.copy_chunk < DISK_PIECE_MAX ? cm->opts.copy_chunk : DISK_PIECE_MAX;
  s->seg = align_up(piece < largest ? piece : largest);
  s->mem = &cm->disk_staging;
  /* Buffers an earlier call could not give back go first. */
  int rc = cumem__disk_staging_free(cm);
  if (!rc) rc = cumem__hostbuf_map(s->mem, DISK_SLOTS * s->seg, s->seg, -1);
  for (int i = 0; !rc && i < DISK_SLOTS; i++) {
    cumem__hostbuf_touch_segment(s->mem, (size_t)i);
    rc = cumem__hostbuf_register_segment(cm->backend, s->mem, (size_t)i, cm->register_lock_fd);
    s->slot[i].buf = s->mem->ptr + (size_t)i * s->seg;
  }
  return rc;
}

int cumem__disk_staging_free(cumem_t *cm) { return cumem__hostbuf_free(cm->backend, &cm->disk_staging); }

/* Queue the copy of piece p between the device and slot i's buffer, and
 * record the slot's event after it (an event belongs to one device). */
static int slot_copy(stager_t *s, int i, const piece_t *p, int to_host) {
  cumem_backend_t *b = s->cm->backend;
  slot_t *sl = &s->slot[i];
  void *stream;
  int rc = cumem__streams_get(s->cm, &s->streams, p->a->device, &stream);
  if (!rc) rc = to_host ? b->copy_to_host(b, sl->buf, p->a->va + p->off, p->len, stream)
                        : b->copy_to_device(b, p->a->va + p->off, sl->buf, p->len, stream);
  if (!rc && sl->event && sl->event_device != p->a->device) {
    b->event_destroy(b, sl->event);
    sl->event = NULL;
  }
  if (!rc && !sl->event) {
    rc = b->event_create(b, p->a->device, &sl->event);
    if (!rc) sl->event_device = p->a->device;
  }
  if (!rc) rc = b->event_record(b, sl->event, stream);
  sl->dirty = 1; /* even on failure: a copy may have been queued */
  return rc;
}

static void slot_set(slot_t *sl, const piece_t *p, int write) {
  sl->write = write;
  sl->file = &p->a->disk;
  sl->off = p->off;
  sl->len = p->len;
}

/* Sleep: each piece is copied into the next buffer once that buffer's last
 * write is done, then written by an I/O thread while the next copies run. */
static int stage_out(stager_t *s, const piece_t *pieces, size_t n) {
  int rc = 0;
  for (size_t k = 0; !rc && k < n; k++) {
    int i = (int)(k % DISK_SLOTS);
    if (k >= DISK_SLOTS) rc = cumem__pool_wait(&s->io, k - DISK_SLOTS); /* the buffer's last write */
    if (!rc) rc = slot_copy(s, i, &pieces[k], 1);
    if (rc) break;
    slot_set(&s->slot[i], &pieces[k], 1);
    cumem__pool_release(&s->io, k + 1);
  }
  return rc;
}

/* Wake: the I/O threads read up to DISK_SLOTS pieces ahead; each piece's
 * copy to the device is queued, in order, once it has been read. A buffer
 * is read into again once its copy is done (the I/O thread waits for it). */
static int stage_in(stager_t *s, const piece_t *pieces, size_t n) {
  int rc = 0;
  size_t copied = 0; /* pieces whose copy to the device is queued */
  for (size_t k = 0; !rc && k <= n; k++) {
    /* Before reusing a buffer (or at the end, for all), queue the copies of
     * the pieces read so far that used it. */
    size_t upto = k < n ? (k >= DISK_SLOTS ? k - DISK_SLOTS + 1 : 0) : n;
    for (; !rc && copied < upto; copied++) {
      rc = cumem__pool_wait(&s->io, copied); /* read */
      if (!rc) rc = slot_copy(s, (int)(copied % DISK_SLOTS), &pieces[copied], 0);
    }
    if (rc || k == n) break;
    slot_set(&s->slot[k % DISK_SLOTS], &pieces[k], 0);
    cumem__pool_release(&s->io, k + 1);
  }
  return rc;
}

/* Keep the first failure (code and detail) of several steps. */
static void keep_first(int *rc, int r, cumem__error_save_t *e) {
  if (!*rc && r) {
    *rc = r;
    cumem__error_save(e);
  }
}

/* Finish: let the I/O threads complete what is queued (skip it when rc says
 * the call failed) and stop; wait until no copy touches the buffers; give
 * them back. Returns the first failure, rc's included. Buffers that cannot
 * be given back (or that a copy may still use: a stream that could not be
 * synchronized) stay in cm->disk_staging for the next call,
 * cumem_release_backup or cumem_close. */
static int stager_finish(stager_t *s, int rc) {
  cumem_backend_t *b = s->cm->backend;
  cumem__error_save_t e;
  if (rc) cumem__error_save(&e);
  if (s->io_started && rc) cumem__pool_cancel(&s->io); /* the call failed: skip what is left */
  else if (s->io_started) keep_first(&rc, cumem__pool_join(&s->io), &e);
  int idle = 1;
  /* Not cumem__streams_finish: whether each stream synchronized decides
   * whether the buffers can go, and a stream that synchronized but could
   * not be destroyed fails nothing here. */
  for (int d = 0; d < CUMEM_MAX_DEVICES; d++) {
    if (!s->streams.s[d]) continue;
    int r = b->stream_synchronize(b, s->streams.s[d]);
    if (r) idle = 0;
    keep_first(&rc, r, &e);
    b->stream_destroy(b, s->streams.s[d]);
  }
  for (int i = 0; i < DISK_SLOTS; i++)
    if (s->slot[i].event) b->event_destroy(b, s->slot[i].event);
  if (idle) keep_first(&rc, cumem__disk_staging_free(s->cm), &e);
  else cumem__log("disk: a copy may still use the staging buffers; they are kept for now");
  if (rc) cumem__error_restore(&e);
  return rc;
}

/* Open the stager, move the pieces of the listed allocations (sleep: to
 * disk, wake: back), finish. */
static int stager_run(cumem_t *cm, alloc_t **list, size_t n, const unsigned char *which, size_t largest,
                      int to_disk) {
  stager_t st;
  piece_t *pieces = NULL;
  int rc = stager_open(&st, cm, largest);
  size_t count = 0;
  for (size_t i = 0; !rc && i < n; i++)
    if (which[i]) count += cumem__ceil_div(list[i]->size, st.seg);
  if (!rc && !(pieces = malloc((count ? count : 1) * sizeof *pieces)))
    rc = CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory for %zu disk pieces", count);
  if (!rc) rc = cumem__pool_start_gated(&st.io, transfer_task, &st, count, DISK_IO_THREADS);
  st.io_started = !rc;
  size_t k = 0;
  for (size_t i = 0; !rc && i < n; i++)
    for (size_t off = 0; which[i] && off < list[i]->size; off += st.seg)
      pieces[k++] = (piece_t){list[i], off, list[i]->size - off < st.seg ? list[i]->size - off : st.seg};
  if (!rc) rc = to_disk ? stage_out(&st, pieces, count) : stage_in(&st, pieces, count);
  rc = stager_finish(&st, rc);
  free(pieces);
  return rc;
}

/* ---- the engine's hooks ---------------------------------------------------- */

/* A detail without its "file.c:line: " (when it is to be wrapped). */
static const char *without_location(const char *detail) {
  const char *c = strstr(detail, ".c:");
  const char *sep = c ? strstr(c, ": ") : NULL;
  return sep && (size_t)(sep - detail) < 40 ? sep + 2 : detail;
}

int cumem__disk_sleep(cumem_t *cm, alloc_t **list, size_t n, unsigned char *copy) {
  unsigned char *mine = calloc(n ? n : 1, 1);
  if (!mine) return CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory");
  size_t count = 0, bytes = 0, largest = 0;
  alloc_t *first = NULL;
  for (size_t i = 0; i < n; i++) {
    if (!(mine[i] = copy[i] && cumem__backs_up_to_disk(list[i]))) continue;
    if (!count++) first = list[i];
    bytes += list[i]->size;
    if (list[i]->size > largest) largest = list[i]->size;
  }
  int rc = 0;
  if (count && !cm->disk_dir)
    rc = CUMEM_FAIL(CUMEM_EINVAL,
                    "tag \"%s\" backs up to disk, but this instance has no disk_dir "
                    "(set CUMEM_DISK_DIR, the disk_dir option, or call cumem_set_disk_dir)",
                    first->tag->name);
  if (!count || rc) {
    free(mine);
    return rc;
  }
  double t0 = cumem__now();
  /* 1. Every file first, its space reserved: a full disk is found before
   * anything is copied. */
  for (size_t i = 0; !rc && i < n; i++) {
    if (!mine[i]) continue;
    cumem__disk_close(&list[i]->disk); /* (none is open: a sleep that failed closed its own) */
    rc = file_create(cm->disk_dir, list[i]->size, &list[i]->disk);
  }
  double t1 = cumem__now();
  /* 2. Through the staging buffers. */
  if (!rc) rc = stager_run(cm, list, n, mine, largest, 1);
  /* 3. All written, or none kept. */
  size_t direct = 0;
  for (size_t i = 0; i < n; i++) {
    alloc_t *a = list[i];
    if (!mine[i]) continue;
    if (rc) {
      cumem__disk_close(&a->disk);
      continue;
    }
    direct += (size_t)atomic_load(&a->disk.direct);
    a->disk.filled = 1;
    a->backed_up = 1;
    a->backup.filled = 0; /* a host backup retained from before is stale now */
    copy[i] = 0;
  }
  /* A full disk says how much was needed, and how much is free once this
   * call's own files (their reservations) are closed. */
  if (rc == CUMEM_ENOSPC) {
    char why[512];
    struct statvfs vfs;
    snprintf(why, sizeof why, "%s", without_location(cumem_last_error()));
    unsigned long long avail = statvfs(cm->disk_dir, &vfs) == 0 ? (unsigned long long)vfs.f_bavail * vfs.f_frsize : 0;
    rc = CUMEM_FAIL(CUMEM_ENOSPC, "%s; this sleep needs %zu bytes under %s for %zu disk backups, %llu are free; "
                    "nothing was released", why, bytes, cm->disk_dir, count, avail);
  }
  double t = cumem__now() - t0;
  if (!rc)
    cumem__log("disk: wrote %zu backups, %zu bytes, to %s in %.1f ms (%.1f ms creating files; %.2f GB/s; "
               "O_DIRECT for %zu of them)", count, bytes, cm->disk_dir, t * 1e3, (t1 - t0) * 1e3,
               t > 0 ? (double)bytes / t / 1e9 : 0.0, direct);
  free(mine);
  return rc;
}

int cumem__disk_wake(cumem_t *cm, alloc_t **list, size_t n) {
  unsigned char *mine = calloc(n ? n : 1, 1);
  if (!mine) return CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory");
  size_t count = 0, bytes = 0, largest = 0;
  for (size_t i = 0; i < n; i++) {
    if (!(mine[i] = cumem__on_disk(list[i]))) continue;
    count++;
    bytes += list[i]->size;
    if (list[i]->size > largest) largest = list[i]->size;
  }
  double t0 = cumem__now();
  int rc = count ? stager_run(cm, list, n, mine, largest, 0) : 0;
  double t = cumem__now() - t0;
  if (count && !rc)
    cumem__log("disk: read %zu backups, %zu bytes, in %.1f ms (%.2f GB/s)", count, bytes, t * 1e3,
               t > 0 ? (double)bytes / t / 1e9 : 0.0);
  free(mine);
  return rc;
}
