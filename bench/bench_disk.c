/* bench_disk: the disk tier's speed beside the disk's own, in one run.
 *
 *   bench_disk DIR [--size GiB] [--alloc MiB] [--rounds N] [--backend auto|cuda|host]
 *
 * 1. The disk: DIR's filesystem, whether it takes O_DIRECT, then a sequential
 *    write and read of --size GiB in one unnamed file, in 64 MiB O_DIRECT
 *    transfers from one thread (what the tier does), and again from 4
 *    threads (what the disk can do with more requests in flight).
 * 2. The tier: --size GiB in allocations of --alloc MiB under a tag whose
 *    backup is CUMEM_BACKUP_DISK, each 8-byte word holding its own address;
 *    sleep (device -> staging -> files) and wake (files -> staging ->
 *    device), --rounds times, every byte verified after each wake.
 *
 * Page cache: with O_DIRECT (said in the output) neither the disk's figures
 * nor the tier's pass through it, so a read is a read of the disk; nothing
 * here drops caches. Without O_DIRECT (tmpfs, some overlay filesystems) the
 * figures are those of the page cache, and the output says so.
 */
#define _GNU_SOURCE
#include "cumem.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#define MiB ((size_t)1 << 20)
#define GiB ((size_t)1 << 30)
#define PIECE (64 * MiB)

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what, int rc) {
  fprintf(stderr, "bench_disk: %s failed: %s: %s\n", what, cumem_strerror(rc), cumem_last_error());
  exit(1);
}

/* ---- the disk on its own ---- */

typedef struct io_job {
  int fd, write;
  size_t off, len;
  unsigned char *buf;
  int err;
} io_job_t;

static void *io_run(void *arg) {
  io_job_t *j = arg;
  for (size_t done = 0; done < j->len && !j->err;) {
    size_t n = j->len - done < PIECE ? j->len - done : PIECE;
    ssize_t r = j->write ? pwrite(j->fd, j->buf, n, (off_t)(j->off + done))
                         : pread(j->fd, j->buf, n, (off_t)(j->off + done));
    if (r <= 0) j->err = r < 0 ? errno : EIO;
    else done += (size_t)r;
  }
  return NULL;
}

/* Seconds to write or read `total` bytes of fd with `threads` threads, each
 * over its own contiguous part, PIECE bytes per call. */
static double disk_pass(int fd, int write, size_t total, int threads, unsigned char **bufs) {
  pthread_t t[8];
  io_job_t j[8];
  size_t part = total / (size_t)threads;
  double t0 = now();
  for (int i = 0; i < threads; i++) {
    j[i] = (io_job_t){fd, write, (size_t)i * part, part, bufs[i], 0};
    pthread_create(&t[i], NULL, io_run, &j[i]);
  }
  for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
  double s = now() - t0;
  for (int i = 0; i < threads; i++)
    if (j[i].err) {
      fprintf(stderr, "bench_disk: %s of the disk test file: %s\n", write ? "write" : "read", strerror(j[i].err));
      exit(1);
    }
  if (write && fdatasync(fd) != 0) perror("fdatasync");
  return write ? now() - t0 : s;
}

typedef struct disk_speed { double write1, read1, write4, read4; int direct; } disk_speed_t;

static disk_speed_t measure_disk(const char *dir, size_t total) {
  disk_speed_t d = {0};
  int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) {
    char path[4200];
    snprintf(path, sizeof path, "%s/.bench-disk-XXXXXX", dir);
    fd = mkstemp(path);
    if (fd >= 0) unlink(path);
  }
  if (fd < 0) {
    perror("bench_disk: a file in DIR");
    exit(1);
  }
  int fl = fcntl(fd, F_GETFL);
  d.direct = fcntl(fd, F_SETFL, fl | O_DIRECT) == 0;
  unsigned char *bufs[4];
  for (int i = 0; i < 4; i++) {
    bufs[i] = mmap(NULL, PIECE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (bufs[i] == MAP_FAILED) exit(1);
    for (size_t k = 0; k < PIECE; k++) bufs[i][k] = (unsigned char)(k * 131 + (k >> 12) + (size_t)i); /* not zeros */
  }
  if (fallocate(fd, 0, 0, (off_t)total) != 0 && errno != EOPNOTSUPP) {
    perror("bench_disk: fallocate of the disk test file");
    exit(1);
  }
  /* Written twice each way: the first write allocates blocks (as the tier's
   * first write into a fresh, reserved file does), so both are shown. */
  d.write1 = (double)total / disk_pass(fd, 1, total, 1, bufs) / 1e9;
  d.read1 = (double)total / disk_pass(fd, 0, total, 1, bufs) / 1e9;
  d.write4 = (double)total / disk_pass(fd, 1, total, 4, bufs) / 1e9;
  d.read4 = (double)total / disk_pass(fd, 0, total, 4, bufs) / 1e9;
  for (int i = 0; i < 4; i++) munmap(bufs[i], PIECE);
  close(fd);
  return d;
}

/* ---- the tier ---- */

/* Each 8-byte word holds its own device address, xor a round's salt. */
static void fill(uint64_t *h, uintptr_t va, size_t n, uint64_t salt) {
  for (size_t i = 0; i < n / 8; i++) h[i] = (va + i * 8) ^ salt;
}

static int check(cumem_t *cm, void **ptrs, size_t nalloc, size_t asize, uint64_t salt, uint64_t *h) {
  for (size_t a = 0; a < nalloc; a++)
    for (size_t off = 0; off < asize; off += PIECE) {
      size_t n = asize - off < PIECE ? asize - off : PIECE;
      uintptr_t va = (uintptr_t)ptrs[a] + off;
      int rc = cumem_copy_to_host(cm, h, (void *)va, n);
      if (rc) die("cumem_copy_to_host", rc);
      for (size_t i = 0; i < n / 8; i++)
        if (h[i] != ((va + i * 8) ^ salt)) {
          fprintf(stderr, "bench_disk: MISMATCH at %#lx: %#llx\n", (unsigned long)(va + i * 8),
                  (unsigned long long)h[i]);
          return 0;
        }
    }
  return 1;
}

int main(int argc, char **argv) {
  const char *dir = NULL, *backend = NULL;
  double size_gib = 4, alloc_mib = 1024;
  int rounds = 2;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--size") && i + 1 < argc) size_gib = atof(argv[++i]);
    else if (!strcmp(argv[i], "--alloc") && i + 1 < argc) alloc_mib = atof(argv[++i]);
    else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--backend") && i + 1 < argc) backend = argv[++i];
    else if (argv[i][0] != '-' && !dir) dir = argv[i];
    else {
      fprintf(stderr, "usage: bench_disk DIR [--size GiB] [--alloc MiB] [--rounds N] [--backend auto|cuda|host]\n");
      return 2;
    }
  }
  if (!dir || size_gib <= 0 || alloc_mib < 2 || rounds < 1) {
    fprintf(stderr, "usage: bench_disk DIR [--size GiB] [--alloc MiB] [--rounds N] [--backend auto|cuda|host]\n");
    return 2;
  }
  size_t asize = (size_t)(alloc_mib * (double)MiB) / (2 * MiB) * (2 * MiB);
  size_t nalloc = (size_t)(size_gib * (double)GiB) / asize;
  if (nalloc == 0) nalloc = 1;
  size_t total = nalloc * asize;

  struct statfs fs;
  const char *kind = statfs(dir, &fs) != 0 ? "?" : fs.f_type == 0x01021994 ? "tmpfs (RAM!)"
                                                : fs.f_type == 0xEF53     ? "ext4"
                                                : fs.f_type == 0x58465342 ? "xfs"
                                                : fs.f_type == 0x794c7630 ? "overlayfs"
                                                                          : "other";
  printf("bench_disk: %s (%s), %.2f GiB in %zu allocations of %zu MiB, %d rounds\n", dir, kind,
         (double)total / (double)GiB, nalloc, asize / MiB, rounds);
  disk_speed_t d = measure_disk(dir, total);
  printf("disk alone: O_DIRECT %s%s\n", d.direct ? "on" : "OFF",
         d.direct ? "" : " (figures below are the page cache's, not the disk's)");
  printf("  sequential write, 1 thread : %6.2f GB/s   read: %6.2f GB/s\n", d.write1, d.read1);
  printf("  sequential write, 4 threads: %6.2f GB/s   read: %6.2f GB/s\n", d.write4, d.read4);

  cumem_options_t o;
  cumem_options_init(&o);
  if (backend) o.backend = backend;
  o.disk_dir = dir;
  cumem_t *cm;
  int rc = cumem_open(&cm, &o);
  if (rc) die("cumem_open", rc);
  cumem_tag_options_t to;
  cumem_tag_options_init(&to);
  to.backup = CUMEM_BACKUP_DISK;
  if ((rc = cumem_tag_set_options(cm, "disk", &to))) die("cumem_tag_set_options", rc);
  void **ptrs = calloc(nalloc, sizeof *ptrs);
  uint64_t *h = malloc(PIECE);
  if (!ptrs || !h) return 1;
  for (size_t a = 0; a < nalloc; a++)
    if ((rc = cumem_alloc(cm, &ptrs[a], asize, 0, "disk"))) die("cumem_alloc", rc);
  printf("tier (backend %s):\n", cumem_backend_name(cm));
  const char *tags[] = {"disk", NULL};
  int ok = 1;
  double best_sleep = 0, best_wake = 0;
  for (int r = 0; r < rounds && ok; r++) {
    uint64_t salt = 0x9E3779B97F4A7C15ull * (uint64_t)(r + 1);
    for (size_t a = 0; a < nalloc; a++)
      for (size_t off = 0; off < asize; off += PIECE) {
        size_t n = asize - off < PIECE ? asize - off : PIECE;
        fill(h, (uintptr_t)ptrs[a] + off, n, salt);
        if ((rc = cumem_copy_to_device(cm, (char *)ptrs[a] + off, h, n))) die("cumem_copy_to_device", rc);
      }
    double t0 = now();
    if ((rc = cumem_sleep(cm, tags, tags))) die("cumem_sleep", rc);
    double ts = now() - t0;
    cumem_stats_t s;
    cumem_stats(cm, "disk", &s);
    t0 = now();
    if ((rc = cumem_wake(cm, tags))) die("cumem_wake", rc);
    double tw = now() - t0;
    ok = check(cm, ptrs, nalloc, asize, salt, h);
    double gs = (double)total / ts / 1e9, gw = (double)total / tw / 1e9;
    if (gs > best_sleep) best_sleep = gs;
    if (gw > best_wake) best_wake = gw;
    printf("  round %d: sleep %6.3f s %6.2f GB/s (on disk %.2f GiB, host backup held %zu B)  "
           "wake %6.3f s %6.2f GB/s  verified: %s\n", r + 1, ts, gs, (double)s.bytes_on_disk / (double)GiB,
           s.bytes_host_held, tw, gw, ok ? "OK" : "MISMATCH");
  }
  printf("verdict: disk tier sleep %.2f GB/s = %.0f%% of the disk's 1-thread write, wake %.2f GB/s = %.0f%% of "
         "its 1-thread read (O_DIRECT %s); data %s\n", best_sleep, 100 * best_sleep / d.write1, best_wake,
         100 * best_wake / d.read1, d.direct ? "on" : "off", ok ? "verified" : "MISMATCH");
  for (size_t a = 0; a < nalloc; a++) cumem_free(cm, ptrs[a]);
  cumem_close(cm);
  free(ptrs);
  free(h);
  return ok ? 0 : 1;
}
