/*
 * pinprobe — how fast can a program get pinned host memory for backups of GPU
 * memory, and how fast does it then copy?
 *
 *   pinprobe [SIZE] [DEVICE] [EXPERIMENTS]
 *     SIZE         bytes to move per measurement: 8G (default), 512M, 16G...
 *                  (K/M/G/T suffixes are powers of 1024; a bare number is GiB)
 *     DEVICE       CUDA device ordinal (default 0)
 *     EXPERIMENTS  digits of the experiments to run (default 1234567):
 *       1,2  cuMemHostAlloc of SIZE (2), then the pinned link bandwidth with it
 *            (1): D2H/H2D in 64/256 MiB chunks on 1 and 2 streams, both ways
 *            at once; cuMemFreeHost and whether RSS drops
 *       3    mmap + MADV_HUGEPAGE + first touch by T threads + one
 *            cuMemHostRegister of the whole range (touch, register timed
 *            apart); register without touching; copy into registered memory
 *       4    the same, registering 64 MiB / 256 MiB / 1 GiB chunks from T
 *            threads in parallel (each touches then registers its chunks)
 *       5    MAP_POPULATE + register; MADV_POPULATE_WRITE after MADV_HUGEPAGE
 *       6    host memory from the driver: cuMemCreate(CU_MEM_LOCATION_TYPE_HOST)
 *            + reserve + map + access, then D2H into it
 *       7    the cold pipeline: workers touch+register chunk k+1.. while chunk k
 *            is copied D2H (PORTABLE vs 0 flags)
 *     (8, unregister/munmap cost and RSS, is part of 2..7.)
 *
 * GB/s is 1e9 bytes per second. The driver is loaded with dlopen, as the
 * library does; the program links only libdl and pthread. Every CUDA call is
 * checked: a failure prints the call and exits 1 (experiment 6 only reports
 * and skips, as host VMM memory is optional).
 */
#define _GNU_SOURCE
#include <cuda.h>         /* types and enums only */
#include <cudaTypedefs.h> /* PFN_cu<name>_v<version> */

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)
#define GiB ((size_t)1 << 30)
#define MAX_THREADS 64

/* ---- the driver (same scheme as src/backend_cuda.c) -------------------- */

#define CU_ABI 12000
#define ENTRY_POINTS(X)                   \
  X(GetErrorName, 6000)                   \
  X(GetErrorString, 6000)                 \
  X(Init, 2000)                           \
  X(DriverGetVersion, 2020)               \
  X(DeviceGetCount, 2000)                 \
  X(DeviceGet, 2000)                      \
  X(DeviceGetName, 2000)                  \
  X(DeviceGetAttribute, 2000)             \
  X(DevicePrimaryCtxRetain, 7000)         \
  X(DevicePrimaryCtxRelease, 11000)       \
  X(CtxSetCurrent, 4000)                  \
  X(MemGetAllocationGranularity, 10020)   \
  X(MemAddressReserve, 10020)             \
  X(MemAddressFree, 10020)                \
  X(MemCreate, 10020)                     \
  X(MemRelease, 10020)                    \
  X(MemMap, 10020)                        \
  X(MemUnmap, 10020)                      \
  X(MemSetAccess, 10020)                  \
  X(MemHostAlloc, 2020)                   \
  X(MemFreeHost, 2000)                    \
  X(MemHostRegister, 6050)                \
  X(MemHostUnregister, 4000)              \
  X(MemcpyDtoHAsync, 3020)                \
  X(MemcpyHtoDAsync, 3020)                \
  X(MemcpyAsync, 4000)                    \
  X(MemsetD8Async, 3020)                  \
  X(StreamCreate, 2000)                   \
  X(StreamDestroy, 4000)                  \
  X(StreamSynchronize, 2000)

#define DECLARE(name, version) PFN_cu##name##_v##version name;
static struct { ENTRY_POINTS(DECLARE) } cu;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void print_table(void);

static void load_driver(void) {
  void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) die("libcuda.so.1 not found: no NVIDIA driver (%s)", dlerror());
  PFN_cuGetProcAddress_v12000 gpa2 =
      (PFN_cuGetProcAddress_v12000)dlsym(lib, "cuGetProcAddress_v2");
  PFN_cuGetProcAddress_v11030 gpa1 =
      gpa2 ? NULL : (PFN_cuGetProcAddress_v11030)dlsym(lib, "cuGetProcAddress");
  if (!gpa2 && !gpa1) die("libcuda.so.1 has no cuGetProcAddress (driver older than 11.3)");
  void *fn;
  CUresult r;
  CUdriverProcAddressQueryResult st;
#define RESOLVE(name, version)                                                   \
  fn = NULL;                                                                     \
  st = CU_GET_PROC_ADDRESS_SUCCESS;                                              \
  r = gpa2 ? gpa2("cu" #name, &fn, CU_ABI, CU_GET_PROC_ADDRESS_LEGACY_STREAM, &st) \
           : gpa1("cu" #name, &fn, CU_ABI, CU_GET_PROC_ADDRESS_LEGACY_STREAM);   \
  if (r != CUDA_SUCCESS || st != CU_GET_PROC_ADDRESS_SUCCESS || !fn)             \
    die("cuGetProcAddress(cu" #name ", %d) failed: CUresult %d, status %d",       \
        CU_ABI, (int)r, (int)st);                                                \
  cu.name = (PFN_cu##name##_v##version)fn;
  ENTRY_POINTS(RESOLVE)
#undef RESOLVE
}

static const char *cu_err(CUresult r) {
  static _Thread_local char buf[160];
  const char *n = NULL, *s = NULL;
  if (cu.GetErrorName(r, &n) != CUDA_SUCCESS) n = NULL;
  if (cu.GetErrorString(r, &s) != CUDA_SUCCESS) s = NULL;
  snprintf(buf, sizeof buf, "%s (%s)", n ? n : "CUDA_ERROR_?", s ? s : "?");
  return buf;
}

/* Every CUDA call: CK(call) exits on failure, SOFT(call) reports and returns -1. */
static void ck(CUresult r, const char *call, int line) {
  if (r == CUDA_SUCCESS) return;
  die("line %d: %s failed: %s", line, call, cu_err(r));
}
#define CK(call) ck((call), #call, __LINE__)
static int soft(CUresult r, const char *call, int line) {
  if (r == CUDA_SUCCESS) return 0;
  printf("  note: line %d: %s failed: %s\n", line, call, cu_err(r));
  return -1;
}
#define SOFT(call) soft((call), #call, __LINE__)

/* ---- results ----------------------------------------------------------- */

typedef struct result {
  char method[48];
  int threads;   /* 0 = not threaded */
  size_t chunk;  /* 0 = whole range */
  double gbps;
  double secs;
  char note[96];
} result_t;

static result_t results[256];
static int nresults;
static pthread_mutex_t results_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *size_str(size_t n, char *buf, size_t cap) {
  if (n == 0) snprintf(buf, cap, "whole");
  else if (n % GiB == 0) snprintf(buf, cap, "%zuG", n / GiB);
  else if (n % MiB == 0) snprintf(buf, cap, "%zuM", n / MiB);
  else snprintf(buf, cap, "%zuK", n / KiB);
  return buf;
}

static void print_row(const result_t *r) {
  char c[24], t[16];
  if (r->threads) snprintf(t, sizeof t, "%d", r->threads);
  else snprintf(t, sizeof t, "-");
  printf("%-40s %4s %6s %9.2f %9.3f  %s\n", r->method, t, size_str(r->chunk, c, sizeof c),
         r->gbps, r->secs, r->note);
}

static void print_header(void) {
  printf("%-40s %4s %6s %9s %9s  %s\n", "method", "thr", "chunk", "GB/s", "seconds", "note");
}

/* Record and print one measurement: `bytes` moved or prepared in `secs`. */
__attribute__((format(printf, 6, 7)))
static void add(const char *method, int threads, size_t chunk, size_t bytes, double secs,
                const char *fmt, ...) {
  pthread_mutex_lock(&results_lock);
  if (nresults < (int)(sizeof results / sizeof results[0])) {
    result_t *r = &results[nresults++];
    snprintf(r->method, sizeof r->method, "%s", method);
    r->threads = threads;
    r->chunk = chunk;
    r->secs = secs;
    r->gbps = secs > 0 ? (double)bytes / secs / 1e9 : 0;
    r->note[0] = '\0';
    if (fmt) {
      va_list ap;
      va_start(ap, fmt);
      vsnprintf(r->note, sizeof r->note, fmt, ap);
      va_end(ap);
    }
    print_row(r);
  }
  pthread_mutex_unlock(&results_lock);
}

static void print_table(void) {
  pthread_mutex_lock(&results_lock);
  if (nresults == 0) {
    pthread_mutex_unlock(&results_lock);
    return;
  }
  printf("\n==== pinprobe summary ====\n");
  print_header();
  for (int i = 0; i < nresults; i++) print_row(&results[i]);
  pthread_mutex_unlock(&results_lock);
  fflush(stdout);
}

static void die(const char *fmt, ...) {
  fflush(stdout);
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "pinprobe: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  print_table();
  exit(1);
}

/* ---- helpers ----------------------------------------------------------- */

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }
static size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

/* Resident set size in GiB (/proc/self/statm). */
static double rss_gib(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long total = 0, resident = 0;
  if (!f) return -1;
  if (fscanf(f, "%ld %ld", &total, &resident) != 2) resident = -1;
  fclose(f);
  return resident < 0 ? -1 : (double)resident * (double)sysconf(_SC_PAGESIZE) / (double)GiB;
}

/* Anonymous memory backed by transparent huge pages, GiB; -1 if unknown. */
static double thp_gib(void) {
  FILE *f = fopen("/proc/self/smaps_rollup", "r");
  if (!f) return -1;
  char line[256];
  double v = -1;
  while (fgets(line, sizeof line, f)) {
    long kb;
    if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1) {
      v = (double)kb * 1024.0 / (double)GiB;
      break;
    }
  }
  fclose(f);
  return v;
}

static void print_file(const char *label, const char *path) {
  char buf[256] = "?";
  FILE *f = fopen(path, "r");
  if (f) {
    if (!fgets(buf, sizeof buf, f)) snprintf(buf, sizeof buf, "?");
    fclose(f);
  }
  buf[strcspn(buf, "\n")] = '\0';
  printf("%-14s %s\n", label, buf);
}

static char *map_anon(size_t size, int extra_flags, int hugepage) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | extra_flags, -1, 0);
  if (p == MAP_FAILED) die("mmap(%zu bytes) failed: %s", size, strerror(errno));
  if (hugepage && madvise(p, size, MADV_HUGEPAGE) != 0)
    printf("  note: madvise(MADV_HUGEPAGE) failed: %s\n", strerror(errno));
  return p;
}

static void unmap_anon(char *p, size_t size) {
  if (munmap(p, size) != 0) die("munmap failed: %s", strerror(errno));
}

/* First touch: one write per 4 KiB page (a huge page faults on its first). */
static void touch(char *p, size_t n) {
  volatile char *v = p;
  for (size_t off = 0; off < n; off += 4096) v[off] = 1;
}

/* ---- global setup ------------------------------------------------------ */

static size_t g_size;      /* bytes per measurement */
static int g_device;
static CUdevice g_dev;
static CUcontext g_ctx;
static CUdeviceptr g_dmem; /* g_size bytes of device memory filled with PATTERN */
static CUmemGenericAllocationHandle g_dhandle;
static size_t g_dsize;
static CUstream g_stream[2];
static int g_failed_checks;
#define PATTERN 0xA5

/* ---- worker threads: touch (and register) chunks ----------------------- */

typedef struct work {
  char *base;
  size_t size, chunk;
  size_t nchunks;
  int do_register;
  unsigned flags;        /* cuMemHostRegister flags */
  atomic_size_t next;    /* next chunk to claim */
  double touch_s[MAX_THREADS], reg_s[MAX_THREADS];
  /* the pipeline's hand-off to the copying thread */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  unsigned char *ready;  /* per chunk; NULL outside the pipeline */
} work_t;

typedef struct worker_arg {
  work_t *w;
  int id;
} worker_arg_t;

static void *worker(void *arg) {
  worker_arg_t *a = arg;
  work_t *w = a->w;
  CK(cu.CtxSetCurrent(g_ctx));
  for (;;) {
    size_t k = atomic_fetch_add(&w->next, 1);
    if (k >= w->nchunks) break;
    char *p = w->base + k * w->chunk;
    size_t n = min_sz(w->chunk, w->size - k * w->chunk);
    double t0 = now();
    touch(p, n);
    double t1 = now();
    if (w->do_register) CK(cu.MemHostRegister(p, n, w->flags));
    double t2 = now();
    w->touch_s[a->id] += t1 - t0;
    w->reg_s[a->id] += t2 - t1;
    if (w->ready) {
      pthread_mutex_lock(&w->mu);
      w->ready[k] = 1;
      pthread_cond_broadcast(&w->cv);
      pthread_mutex_unlock(&w->mu);
    }
  }
  return NULL;
}

static void work_init(work_t *w, char *base, size_t size, size_t chunk, int do_register,
                      unsigned flags) {
  memset(w, 0, sizeof *w);
  w->base = base;
  w->size = size;
  w->chunk = chunk;
  w->nchunks = (size + chunk - 1) / chunk;
  w->do_register = do_register;
  w->flags = flags;
  atomic_init(&w->next, 0);
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
}

static void work_destroy(work_t *w) {
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
  free(w->ready);
  w->ready = NULL;
}

static void start_workers(work_t *w, int threads, pthread_t *tids, worker_arg_t *args) {
  for (int i = 0; i < threads; i++) {
    args[i].w = w;
    args[i].id = i;
    int e = pthread_create(&tids[i], NULL, worker, &args[i]);
    if (e) die("pthread_create failed: %s", strerror(e));
  }
}

static void join_workers(int threads, pthread_t *tids) {
  for (int i = 0; i < threads; i++) pthread_join(tids[i], NULL);
}

/* Run `threads` workers over w to completion; seconds elapsed. */
static double run_workers(work_t *w, int threads) {
  pthread_t tids[MAX_THREADS];
  worker_arg_t args[MAX_THREADS];
  double t0 = now();
  start_workers(w, threads, tids, args);
  join_workers(threads, tids);
  return now() - t0;
}

static double sum(const double *v, int n) {
  double s = 0;
  for (int i = 0; i < n; i++) s += v[i];
  return s;
}

/* Unregister every chunk of w (or the whole range when chunk == size) and
 * munmap, recording the cost and the RSS around it when `report`. */
static void release_range(const char *what, char *base, size_t size, size_t chunk,
                          int registered, int report) {
  double rss0 = rss_gib();
  double t0 = now();
  size_t n = 0;
  if (registered)
    for (size_t off = 0; off < size; off += chunk, n++) CK(cu.MemHostUnregister(base + off));
  double t1 = now();
  double rss1 = rss_gib();
  unmap_anon(base, size);
  double t2 = now();
  double rss2 = rss_gib();
  if (!report) return;
  char m[64];
  if (registered) {
    snprintf(m, sizeof m, "cuMemHostUnregister (%s)", what);
    add(m, 0, chunk == size ? 0 : chunk, size, t1 - t0, "%zu calls; RSS %.2f -> %.2f GiB", n,
        rss0, rss1);
  }
  snprintf(m, sizeof m, "munmap (%s)", what);
  add(m, 0, 0, size, t2 - t1, "RSS %.2f -> %.2f GiB", rss1, rss2);
}

/* Copy D2H (dir 0) or H2D (dir 1) of `bytes` in `chunk` pieces round-robin
 * on `nstreams` streams; seconds including the final synchronization. */
static double copy_pass(int dir, char *host, size_t bytes, size_t chunk, int nstreams) {
  double t0 = now();
  size_t i = 0;
  for (size_t off = 0; off < bytes; off += chunk, i++) {
    size_t n = min_sz(chunk, bytes - off);
    CUstream s = g_stream[i % (size_t)nstreams];
    if (dir == 0) CK(cu.MemcpyDtoHAsync(host + off, g_dmem + off, n, s));
    else CK(cu.MemcpyHtoDAsync(g_dmem + off, host + off, n, s));
  }
  for (int k = 0; k < nstreams; k++) CK(cu.StreamSynchronize(g_stream[k]));
  return now() - t0;
}

/* Both directions at once: D2H of the first half on stream 0 interleaved
 * with H2D of the second half on stream 1. Returns seconds; moves 2*half. */
static double copy_bidir(char *host, size_t half, size_t chunk) {
  double t0 = now();
  for (size_t off = 0; off < half; off += chunk) {
    size_t n = min_sz(chunk, half - off);
    CK(cu.MemcpyDtoHAsync(host + off, g_dmem + off, n, g_stream[0]));
    CK(cu.MemcpyHtoDAsync(g_dmem + half + off, host + half + off, n, g_stream[1]));
  }
  CK(cu.StreamSynchronize(g_stream[0]));
  CK(cu.StreamSynchronize(g_stream[1]));
  return now() - t0;
}

/* Check that host holds PATTERN at the start and end of every chunk. */
static void verify(const char *what, const char *host, size_t bytes, size_t chunk) {
  for (size_t off = 0; off < bytes; off += chunk) {
    size_t n = min_sz(chunk, bytes - off);
    if ((unsigned char)host[off] != PATTERN || (unsigned char)host[off + n - 1] != PATTERN) {
      printf("  VERIFY FAILED (%s): byte at offset %zu is 0x%02x, expected 0x%02x\n", what,
             off, (unsigned char)host[off], PATTERN);
      g_failed_checks++;
      return;
    }
  }
}

/* Restore the device pattern (H2D runs overwrite device memory). */
static void refill_device(void) {
  CK(cu.MemsetD8Async(g_dmem, PATTERN, g_dsize, g_stream[0]));
  CK(cu.StreamSynchronize(g_stream[0]));
}

/* ---- experiments ------------------------------------------------------- */

static const int thread_counts[] = {1, 4, 8, 16};
#define NTHREAD_COUNTS (int)(sizeof thread_counts / sizeof thread_counts[0])

/* Host memory warm-up: some VMs grow their memory on first use, which would
 * be charged to whichever experiment comes first. */
static void prewarm(void) {
  char *p = map_anon(g_size, 0, 1);
  work_t w;
  work_init(&w, p, g_size, 64 * MiB, 0, 0);
  double t = run_workers(&w, 16);
  work_destroy(&w);
  add("prewarm: mmap+touch (discarded)", 16, 64 * MiB, g_size, t, "THP %.2f GiB", thp_gib());
  unmap_anon(p, g_size);
}

/* 2 then 1: cuMemHostAlloc, the link with pinned memory, cuMemFreeHost. */
static void exp_hostalloc_and_link(void) {
  printf("\n-- 2: cuMemHostAlloc; 1: pinned link bandwidth --\n");
  double rss0 = rss_gib();
  void *hp = NULL;
  double t0 = now();
  CK(cu.MemHostAlloc(&hp, g_size, 0));
  double t1 = now();
  double rss1 = rss_gib();
  add("cuMemHostAlloc", 0, 0, g_size, t1 - t0, "RSS %.2f -> %.2f GiB", rss0, rss1);
  char *host = hp;

  const size_t chunks[] = {64 * MiB, 256 * MiB};
  for (int c = 0; c < 2; c++)
    for (int dir = 0; dir < 2; dir++)
      for (int ns = 1; ns <= 2; ns++) {
        copy_pass(dir, host, g_size, chunks[c], ns); /* warm-up */
        double t = 0;
        for (int rep = 0; rep < 3; rep++) t += copy_pass(dir, host, g_size, chunks[c], ns);
        char m[48];
        snprintf(m, sizeof m, "pinned %s, %d stream%s", dir == 0 ? "D2H" : "H2D", ns,
                 ns > 1 ? "s" : "");
        add(m, 0, chunks[c], 3 * g_size, t, "mean of 3 passes");
      }
  refill_device();
  copy_pass(0, host, g_size, 256 * MiB, 1);
  verify("pinned D2H", host, g_size, 256 * MiB);

  size_t half = g_size / 2 / (2 * MiB) * (2 * MiB);
  copy_bidir(host, half, 256 * MiB); /* warm-up */
  double t = 0;
  for (int rep = 0; rep < 3; rep++) t += copy_bidir(host, half, 256 * MiB);
  add("pinned D2H+H2D at once (sum)", 0, 256 * MiB, 3 * 2 * half, t, "half each way");
  refill_device();

  double rss2 = rss_gib();
  t0 = now();
  CK(cu.MemFreeHost(hp));
  t1 = now();
  add("cuMemFreeHost", 0, 0, g_size, t1 - t0, "RSS %.2f -> %.2f GiB", rss2, rss_gib());
}

/* 3: mmap + hugepages + touch by T threads + one whole-range register. */
static void exp_whole_register(void) {
  printf("\n-- 3: mmap + MADV_HUGEPAGE + touch (T threads) + cuMemHostRegister(whole) --\n");
  for (int i = 0; i < NTHREAD_COUNTS; i++) {
    int T = thread_counts[i];
    char *p = map_anon(g_size, 0, 1);
    work_t w;
    work_init(&w, p, g_size, 64 * MiB, 0, 0);
    double tt = run_workers(&w, T);
    work_destroy(&w);
    double thp = thp_gib();
    double t0 = now();
    CK(cu.MemHostRegister(p, g_size, CU_MEMHOSTREGISTER_PORTABLE));
    double tr = now() - t0;
    add("touch (THP)", T, 0, g_size, tt, "THP %.2f GiB", thp);
    add("cuMemHostRegister whole, after touch", T, 0, g_size, tr, "PORTABLE");
    add("touch + register whole", T, 0, g_size, tt + tr, NULL);
    if (i == NTHREAD_COUNTS - 1) {
      /* Is registered THP memory as fast a copy target as cuMemHostAlloc's? */
      copy_pass(0, p, g_size, 256 * MiB, 1);
      double t = 0;
      for (int rep = 0; rep < 3; rep++) t += copy_pass(0, p, g_size, 256 * MiB, 1);
      add("D2H into registered mmap, 1 stream", 0, 256 * MiB, 3 * g_size, t, "mean of 3");
      verify("registered mmap", p, g_size, 256 * MiB);
    }
    release_range("whole", p, g_size, g_size, 1, i == 0 || i == NTHREAD_COUNTS - 1);
  }
  /* The naive way: register untouched memory, the driver faults it in. */
  char *p = map_anon(g_size, 0, 1);
  double t0 = now();
  CK(cu.MemHostRegister(p, g_size, CU_MEMHOSTREGISTER_PORTABLE));
  double t = now() - t0;
  add("cuMemHostRegister whole, untouched", 1, 0, g_size, t, "THP %.2f GiB", thp_gib());
  release_range("whole, untouched", p, g_size, g_size, 1, 0);
}

/* 4: chunked registration from T threads in parallel. */
static void exp_chunked_register(void) {
  printf("\n-- 4: touch + cuMemHostRegister per chunk, T threads in parallel --\n");
  const size_t chunks[] = {64 * MiB, 256 * MiB, 1 * GiB};
  for (int c = 0; c < 3; c++)
    for (int i = 0; i < NTHREAD_COUNTS; i++) {
      int T = thread_counts[i];
      char *p = map_anon(g_size, 0, 1);
      work_t w;
      work_init(&w, p, g_size, chunks[c], 1, CU_MEMHOSTREGISTER_PORTABLE);
      double t = run_workers(&w, T);
      double touch_s = sum(w.touch_s, T) / T, reg_s = sum(w.reg_s, T) / T;
      work_destroy(&w);
      add("touch + register chunks", T, chunks[c], g_size, t,
          "per thread: touch %.3fs, register %.3fs", touch_s, reg_s);
      add("  register part (size / mean reg time)", T, chunks[c], g_size, reg_s, NULL);
      release_range("chunks", p, g_size, chunks[c], 1, i == NTHREAD_COUNTS - 1);
    }
}

/* 5: MAP_POPULATE, and MADV_POPULATE_WRITE after MADV_HUGEPAGE. */
static void exp_populate(void) {
  printf("\n-- 5: MAP_POPULATE / MADV_POPULATE_WRITE + register --\n");
  double t0 = now();
  char *p = map_anon(g_size, MAP_POPULATE, 0);
  double t1 = now();
  double thp = thp_gib();
  CK(cu.MemHostRegister(p, g_size, CU_MEMHOSTREGISTER_PORTABLE));
  double t2 = now();
  add("mmap MAP_POPULATE", 1, 0, g_size, t1 - t0, "THP %.2f GiB", thp);
  add("cuMemHostRegister whole, populated", 1, 0, g_size, t2 - t1, NULL);
  add("MAP_POPULATE + register", 1, 0, g_size, t2 - t0, NULL);
  release_range("populated", p, g_size, g_size, 1, 1);

  t0 = now();
  p = map_anon(g_size, 0, 1);
  int e = madvise(p, g_size, MADV_POPULATE_WRITE) ? errno : 0;
  t1 = now();
  if (e) {
    printf("  note: madvise(MADV_POPULATE_WRITE) failed: %s (kernel older than 5.14?)\n",
           strerror(e));
    unmap_anon(p, g_size);
    return;
  }
  thp = thp_gib();
  CK(cu.MemHostRegister(p, g_size, CU_MEMHOSTREGISTER_PORTABLE));
  t2 = now();
  add("MADV_HUGEPAGE + MADV_POPULATE_WRITE", 1, 0, g_size, t1 - t0, "THP %.2f GiB", thp);
  add("cuMemHostRegister whole, populated", 1, 0, g_size, t2 - t1, NULL);
  add("POPULATE_WRITE + register", 1, 0, g_size, t2 - t0, NULL);
  release_range("populate-write", p, g_size, g_size, 1, 0);
}

static sigjmp_buf g_fault_jmp;
static void on_fault(int sig) { siglongjmp(g_fault_jmp, sig); }

/* 6: host memory allocated by the driver through the VMM API. */
static void exp_host_vmm(void) {
  printf("\n-- 6: cuMemCreate(CU_MEM_LOCATION_TYPE_HOST) + map --\n");
  int supported = 0;
  if (SOFT(cu.DeviceGetAttribute(&supported,
                                 CU_DEVICE_ATTRIBUTE_HOST_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
                                 g_dev)) ||
      !supported) {
    add("host VMM", 0, 0, 0, 0, "not supported by this device/driver");
    return;
  }
  CUmemAllocationProp prop;
  memset(&prop, 0, sizeof prop);
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_HOST;
  prop.location.id = 0; /* ignored for HOST */
  prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_NONE; /* HOST must be 0 */
  size_t gran = 0;
  if (SOFT(cu.MemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM)))
    return;
  size_t size = round_up(g_size, gran);
  printf("  host VMM granularity %zu KiB\n", gran / KiB);

  double rss0 = rss_gib();
  CUmemGenericAllocationHandle h = 0;
  CUdeviceptr va = 0;
  int mapped = 0, host_access = 0;
  double t0 = now();
  if (SOFT(cu.MemCreate(&h, size, &prop, 0))) return;
  double t1 = now();
  add("cuMemCreate HOST", 0, 0, size, t1 - t0, "RSS %.2f -> %.2f GiB", rss0, rss_gib());
  if (SOFT(cu.MemAddressReserve(&va, size, gran, 0, 0))) goto out;
  if (SOFT(cu.MemMap(va, size, 0, h, 0))) goto out;
  mapped = 1;
  CUmemAccessDesc acc[2];
  memset(acc, 0, sizeof acc);
  acc[0].location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  acc[0].location.id = g_device;
  acc[0].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  acc[1].location.type = CU_MEM_LOCATION_TYPE_HOST;
  acc[1].location.id = 0;
  acc[1].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  if (SOFT(cu.MemSetAccess(va, size, &acc[0], 1))) goto out;
  double t2 = now();
  /* CPU access is a separate grant; without it the CPU faults on the range. */
  host_access = SOFT(cu.MemSetAccess(va, size, &acc[1], 1)) == 0;
  double t3 = now();
  add("reserve + map + device access (HOST mem)", 0, 0, size, t2 - t1, NULL);
  add("set host access (HOST mem)", 0, 0, size, t3 - t2, host_access ? "ok" : "FAILED");

  for (int pass = 0; pass < 2; pass++) {
    double c0 = now();
    for (size_t off = 0; off < g_size; off += 256 * MiB)
      if (SOFT(cu.MemcpyAsync(va + off, g_dmem + off, min_sz(256 * MiB, g_size - off),
                              g_stream[0])))
        break;
    if (SOFT(cu.StreamSynchronize(g_stream[0]))) goto out;
    add(pass == 0 ? "D2H into HOST VMM, first pass" : "D2H into HOST VMM, second pass", 0,
        256 * MiB, g_size, now() - c0, NULL);
  }
  if (host_access) {
    /* If the CPU grant did not take, reading faults: report, don't die. */
    struct sigaction sa, old_segv, old_bus;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fault;
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
    if (sigsetjmp(g_fault_jmp, 1) == 0)
      verify("HOST VMM", (const char *)(uintptr_t)va, g_size, 256 * MiB);
    else
      printf("  note: the CPU faulted reading HOST VMM memory despite host access\n");
    sigaction(SIGSEGV, &old_segv, NULL);
    sigaction(SIGBUS, &old_bus, NULL);
  }

out:;
  double rss1 = rss_gib();
  double u0 = now();
  if (mapped) CK(cu.MemUnmap(va, size));
  if (va) CK(cu.MemAddressFree(va, size));
  CK(cu.MemRelease(h));
  double u1 = now();
  add("unmap + release (HOST mem)", 0, 0, size, u1 - u0, "RSS %.2f -> %.2f GiB", rss1,
      rss_gib());
}

/* 7: the cold pipeline: workers prepare chunks ahead of the D2H copies. */
static void pipeline(size_t chunk, int T, unsigned flags) {
  char *p = map_anon(g_size, 0, 1);
  work_t w;
  work_init(&w, p, g_size, chunk, 1, flags);
  w.ready = calloc(w.nchunks, 1);
  if (!w.ready) die("out of memory");
  pthread_t tids[MAX_THREADS];
  worker_arg_t args[MAX_THREADS];
  double t0 = now(), prepared = 0;
  start_workers(&w, T, tids, args);
  for (size_t k = 0; k < w.nchunks; k++) {
    pthread_mutex_lock(&w.mu);
    while (!w.ready[k]) pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    size_t off = k * chunk;
    CK(cu.MemcpyDtoHAsync(p + off, g_dmem + off, min_sz(chunk, g_size - off), g_stream[0]));
  }
  prepared = now() - t0; /* the last chunk was ready (and queued) */
  CK(cu.StreamSynchronize(g_stream[0]));
  double t = now() - t0;
  join_workers(T, tids);
  double reg_s = sum(w.reg_s, T) / T;
  work_destroy(&w);
  verify("pipeline", p, g_size, chunk);
  add(flags ? "cold offload pipeline, PORTABLE" : "cold offload pipeline, flags 0", T, chunk,
      g_size, t, "all prepared at %.3fs; reg %.3fs/thread", prepared, reg_s);
  release_range("pipeline", p, g_size, chunk, 1, 0);
}

static void exp_pipeline(void) {
  printf("\n-- 7: cold pipeline: touch+register ahead of D2H copies --\n");
  const size_t chunks[] = {64 * MiB, 256 * MiB};
  const int workers[] = {4, 8, 16};
  for (int c = 0; c < 2; c++)
    for (int i = 0; i < 3; i++) pipeline(chunks[c], workers[i], CU_MEMHOSTREGISTER_PORTABLE);
  for (int c = 0; c < 2; c++) pipeline(chunks[c], 16, 0);
}

/* ---- main -------------------------------------------------------------- */

static size_t parse_size(const char *s) {
  char *end = NULL;
  double v = strtod(s, &end);
  if (end == s || v <= 0) die("bad size '%s' (e.g. 8G, 512M)", s);
  size_t unit = GiB;
  switch (*end) {
  case 'k': case 'K': unit = KiB; break;
  case 'm': case 'M': unit = MiB; break;
  case 'g': case 'G': unit = GiB; break;
  case 't': case 'T': unit = GiB * 1024; break;
  case '\0': break;
  default: die("bad size suffix in '%s'", s);
  }
  return (size_t)(v * (double)unit);
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
    printf("usage: %s [SIZE=8G] [DEVICE=0] [EXPERIMENTS=1234567]\n", argv[0]);
    return 0;
  }
  g_size = argc > 1 ? parse_size(argv[1]) : 8 * GiB;
  g_device = argc > 2 ? atoi(argv[2]) : 0;
  const char *exps = argc > 3 ? argv[3] : "1234567";

  load_driver();
  CK(cu.Init(0));
  int version = 0, count = 0;
  CK(cu.DriverGetVersion(&version));
  CK(cu.DeviceGetCount(&count));
  if (g_device < 0 || g_device >= count) die("device %d does not exist (%d devices)", g_device, count);
  CK(cu.DeviceGet(&g_dev, g_device));
  char name[128];
  CK(cu.DeviceGetName(name, sizeof name, g_dev));
  CK(cu.DevicePrimaryCtxRetain(&g_ctx, g_dev));
  CK(cu.CtxSetCurrent(g_ctx));

  /* Source memory on the device, through the VMM API as the library does. */
  CUmemAllocationProp prop;
  memset(&prop, 0, sizeof prop);
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = g_device;
  size_t gran = 0;
  CK(cu.MemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
  g_size = round_up(g_size, 2 * MiB > gran ? 2 * MiB : gran);
  g_dsize = round_up(g_size, gran);
  CK(cu.MemCreate(&g_dhandle, g_dsize, &prop, 0));
  CK(cu.MemAddressReserve(&g_dmem, g_dsize, gran, 0, 0));
  CK(cu.MemMap(g_dmem, g_dsize, 0, g_dhandle, 0));
  CUmemAccessDesc acc;
  memset(&acc, 0, sizeof acc);
  acc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  acc.location.id = g_device;
  acc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  CK(cu.MemSetAccess(g_dmem, g_dsize, &acc, 1));
  CK(cu.StreamCreate(&g_stream[0], CU_STREAM_NON_BLOCKING));
  CK(cu.StreamCreate(&g_stream[1], CU_STREAM_NON_BLOCKING));
  refill_device();

  printf("pinprobe: device %d (%s), driver %d.%d, size %.2f GiB, cpus %ld, experiments %s\n",
         g_device, name, version / 1000, version % 1000 / 10, (double)g_size / (double)GiB,
         sysconf(_SC_NPROCESSORS_ONLN), exps);
  print_file("THP enabled:", "/sys/kernel/mm/transparent_hugepage/enabled");
  print_file("THP defrag:", "/sys/kernel/mm/transparent_hugepage/defrag");
  print_file("kernel:", "/proc/sys/kernel/osrelease");
  printf("\n");
  print_header();

  prewarm();
  if (strchr(exps, '1') || strchr(exps, '2')) exp_hostalloc_and_link();
  if (strchr(exps, '3')) exp_whole_register();
  if (strchr(exps, '4')) exp_chunked_register();
  if (strchr(exps, '5')) exp_populate();
  if (strchr(exps, '7')) exp_pipeline();
  if (strchr(exps, '6')) exp_host_vmm(); /* last: the least proven path */

  CK(cu.StreamDestroy(g_stream[0]));
  CK(cu.StreamDestroy(g_stream[1]));
  CK(cu.MemUnmap(g_dmem, g_dsize));
  CK(cu.MemAddressFree(g_dmem, g_dsize));
  CK(cu.MemRelease(g_dhandle));
  CK(cu.DevicePrimaryCtxRelease(g_dev));

  print_table();
  if (g_failed_checks) {
    fprintf(stderr, "pinprobe: %d content check(s) failed\n", g_failed_checks);
    return 1;
  }
  return 0;
}
