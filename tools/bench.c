/* `cumem bench`: measure the host link first (pinned copies, in the same
 * run), then sleep and wake a model-shaped workload — by default 16 GiB of
 * Llama-3-8B-shaped bf16 weights (offloaded) and a 32 GiB KV cache
 * (discarded) — and print one table: seconds, GB/s and percent of the link
 * for the cold sleep (nothing pinned yet), warm sleeps, wakes, the
 * discard-only sleep and wake; then, with retention off and the weights in
 * prepare-ahead mode, the first sleep (pinned ahead in the background), the
 * wake, and how long after it the host memory is back (RSS); then pinning
 * ahead with a call and the first sleep after it. The restored weights are
 * verified byte for byte.
 *
 * For the several-GPU runs (bench/concurrent.py): CUMEM_BENCH_BARRIER=DIR:N
 * lines the N processes up before each timed phase; CUMEM_BENCH_PRETOUCH_GIB
 * touches that much fresh host memory (and gives it back) first. */
#include "cumem_backend.h"
#include "tool.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---- the link, through the backend directly ---- */

typedef struct link { double d2h, h2d; } link_t;

/* Best of 3 passes of `total` bytes in 256 MiB copies on one stream. */
static int measure_link(const tool_args_t *a, link_t *out) {
  cumem_backend_t *b = NULL;
  cumem_options_t o;
  cumem_options_init(&o); /* the backend the instance will use: --backend, else CUMEM_BACKEND */
  int rc = cumem_backend_open(a->backend ? a->backend : o.backend, &b);
  if (rc) return rc;
  cumem_device_info_t info;
  const size_t total = 2 * GiB, piece = 256 * MiB;
  uintptr_t va = 0;
  cumem_handle_t h = 0;
  void *stream = NULL;
  unsigned char *host = MAP_FAILED;
  int reserved = 0, mapped = 0, registered = 0;
  rc = b->device_info(b, 0, &info);
  if (!rc) rc = b->reserve(b, 0, total, &va);
  reserved = !rc;
  if (!rc) rc = b->create(b, 0, total, &h);
  if (!rc) rc = b->map(b, va, total, h);
  mapped = !rc;
  if (!rc) rc = b->set_access(b, va, total, 0, 0);
  if (!rc) {
    host = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (host == MAP_FAILED) rc = CUMEM_ENOHOST;
    else memset(host, 0x5a, total);
  }
  if (!rc) rc = b->host_register(b, host, total);
  registered = !rc;
  if (!rc) rc = b->stream_create(b, 0, &stream);
  for (int dir = 0; dir < 2 && !rc; dir++) {
    double best = 1e30;
    for (int pass = 0; pass < 4 && !rc; pass++) { /* the first pass warms up */
      double t0 = now_seconds();
      for (size_t off = 0; off < total && !rc; off += piece)
        rc = dir == 0 ? b->copy_to_host(b, host + off, va + off, piece, stream)
                      : b->copy_to_device(b, va + off, host + off, piece, stream);
      if (!rc) rc = b->stream_synchronize(b, stream);
      double t = now_seconds() - t0;
      if (pass > 0 && t < best) best = t;
    }
    if (dir == 0) out->d2h = (double)total / best / 1e9;
    else out->h2d = (double)total / best / 1e9;
  }
  if (stream) b->stream_destroy(b, stream);
  if (registered) b->host_unregister(b, host);
  if (host != MAP_FAILED) munmap(host, total);
  if (mapped) b->unmap(b, va, total);
  if (h) b->release(b, h);
  if (reserved) b->unreserve(b, va, total);
  b->destroy(b);
  return rc;
}

/* ---- the workload ---- */

static size_t rss_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  unsigned long size = 0, resident = 0;
  if (f) {
    if (fscanf(f, "%lu %lu", &size, &resident) != 2) resident = 0;
    fclose(f);
  }
  return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

typedef struct row {
  const char *step;
  size_t bytes;   /* bytes moved (0: nothing to copy) */
  double seconds;
  double link;    /* the link's GB/s in that direction, 0 = n/a */
} row_t;

static void progress(const tool_args_t *a, const char *msg) {
  if (!a->quiet) {
    fprintf(stderr, "[bench] %s\n", msg);
    fflush(stderr);
  }
}

/* When the stats say tag's backup is all pinned (or after `limit` s). */
static double wait_pinned(cumem_t *cm, const char *tag, size_t bytes, double limit) {
  double end = now_seconds() + limit;
  cumem_stats_t s;
  while (now_seconds() < end && !cumem_stats(cm, tag, &s) && s.bytes_host_pinned < bytes) usleep(1000);
  return now_seconds();
}

/* When the stats say tag holds no host backup (or after `limit` s). */
static double wait_given_back(cumem_t *cm, const char *tag, double limit) {
  double end = now_seconds() + limit;
  cumem_stats_t s;
  while (now_seconds() < end && !cumem_stats(cm, tag, &s) && s.bytes_host_held > 0) usleep(500);
  return now_seconds();
}

/* When RSS is at most `bytes` (or after `limit` s). */
static double wait_rss_below(size_t bytes, double limit) {
  double end = now_seconds() + limit;
  while (now_seconds() < end && rss_bytes() > bytes) usleep(1000);
  return now_seconds();
}

/* CUMEM_BENCH_BARRIER=DIR:N (bench/concurrent.py sets it): the N bench
 * processes of one run meet before each timed phase, so that their cold
 * sleeps (or pinning) really overlap. Each leaves a file DIR/<phase>.<pid>
 * and waits until N are there (two minutes at most). */
static void barrier(const char *phase) {
  const char *spec = getenv("CUMEM_BENCH_BARRIER");
  const char *colon = spec ? strrchr(spec, ':') : NULL;
  if (!colon) return;
  int n = atoi(colon + 1);
  char dir[512], path[600];
  snprintf(dir, sizeof dir, "%.*s", (int)(colon - spec), spec);
  snprintf(path, sizeof path, "%s/%s.%d", dir, phase, (int)getpid());
  FILE *f = fopen(path, "w");
  if (f) fclose(f);
  size_t plen = strlen(phase);
  for (double end = now_seconds() + 120; now_seconds() < end; usleep(500)) {
    DIR *d = opendir(dir);
    int seen = 0;
    for (struct dirent *e; d && (e = readdir(d));) seen += !strncmp(e->d_name, phase, plen) && e->d_name[plen] == '.';
    if (d) closedir(d);
    if (seen >= n) return;
  }
  fprintf(stderr, "[bench] barrier %s: gave up waiting for %d processes\n", phase, n);
}

/* CUMEM_BENCH_PRETOUCH_GIB=N: touch N GiB of fresh host memory and give it
 * back before the benchmark, so the backups meet memory the VM has already
 * grown (the "pre-touched" case of the several-GPU experiments). */
typedef struct toucher { unsigned char *p; size_t n; } toucher_t;

static void *touch_part(void *arg) {
  toucher_t *t = arg;
  for (size_t off = 0; off < t->n; off += 4096) t->p[off] = 1;
  return NULL;
}

static void pretouch(const tool_args_t *a) {
  const char *s = getenv("CUMEM_BENCH_PRETOUCH_GIB");
  double gib = s ? atof(s) : 0;
  if (gib <= 0) return;
  size_t n = (size_t)(gib * (double)GiB) & ~(size_t)4095;
  unsigned char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return;
  char msg[100];
  snprintf(msg, sizeof msg, "pre-touching %.1f GiB of host memory", gib);
  progress(a, msg);
  enum { T = 8 };
  pthread_t th[T];
  toucher_t parts[T];
  size_t part = n / T & ~(size_t)4095;
  for (int i = 0; i < T; i++) {
    parts[i] = (toucher_t){p + part * (size_t)i, i == T - 1 ? n - part * (size_t)i : part};
    if (pthread_create(&th[i], NULL, touch_part, &parts[i]) != 0) touch_part(&parts[i]), th[i] = 0;
  }
  for (int i = 0; i < T; i++)
    if (th[i]) pthread_join(th[i], NULL);
  munmap(p, n);
}

#define MAX_ROWS 16
static row_t rows[MAX_ROWS];
static int nrows;

static void add_row(const char *step, size_t bytes, double seconds, double link) {
  if (nrows < MAX_ROWS) rows[nrows++] = (row_t){step, bytes, seconds, link};
}

static double median(double *v, int n) {
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
      double t = v[j];
      v[j] = v[j - 1];
      v[j - 1] = t;
    }
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

#define TIMED(var, call)               \
  do {                                 \
    double t0_ = now_seconds();        \
    rc = (call);                       \
    var = now_seconds() - t0_;         \
  } while (0)

int cmd_bench(const tool_args_t *a) {
  link_t link = {0};
  progress(a, "measuring the host link (pinned copies, 2 GiB each way)");
  int rc = measure_link(a, &link);
  if (rc) { tool_fail("link measurement", rc); return 1; }

  cumem_options_t o;
  cumem_options_init(&o);
  if (a->backend) o.backend = a->backend;
  o.prepare_ahead = NULL; /* the cold sleep is cold, whatever CUMEM_PREPARE_AHEAD says */
  cumem_t *cm;
  if ((rc = cumem_open(&cm, &o))) { tool_fail("open", rc); return 1; }
  cumem_device_info_t info;
  cumem_device_info(cm, 0, &info);
  int on_gpu = !strcmp(cumem_backend_name(cm), "cuda");
  size_t wbytes = a->weights ? a->weights : on_gpu ? 16 * GiB : GiB / 4;
  size_t kbytes = a->kv ? a->kv : 2 * wbytes;
  char b1[32], b2[32], b3[32], msg[200];
  workload_t w = {0}, kv = {0};
  snprintf(msg, sizeof msg, "allocating %s of weights and %s of KV cache on %s", fmt_bytes(wbytes, b1),
           fmt_bytes(kbytes, b2), info.name);
  progress(a, msg);
  rc = workload_alloc_weights(cm, &w, wbytes, "weights");
  if (!rc) rc = workload_alloc_kv(cm, &kv, kbytes, "kv_cache");
  if (rc) { tool_fail("allocate", rc); goto out; }
  progress(a, "filling the weights with a known pattern");
  double fill0 = now_seconds();
  if ((rc = workload_fill(cm, &w, 1))) { tool_fail("fill", rc); goto out; }
  double fill_alone_s = now_seconds() - fill0;
  cumem_stats_t s;
  cumem_stats(cm, "weights", &s);
  size_t moved = s.bytes_allocated; /* what sleep copies: rounded sizes */

  const char *W[] = {"weights", NULL}, *K[] = {"kv_cache", NULL};
  double t, cold, first_wake;
  pretouch(a);
  barrier("cold");
  progress(a, "cold sleep (no host memory pinned yet)");
  TIMED(cold, cumem_sleep(cm, NULL, W));
  if (rc) { tool_fail("cold sleep", rc); goto out; }
  add_row("cold sleep (weights offloaded, cache discarded)", moved, cold, link.d2h);
  TIMED(first_wake, cumem_wake(cm, NULL));
  if (rc) { tool_fail("wake", rc); goto out; }
  add_row("wake after cold sleep", moved, first_wake, link.h2d);
  progress(a, "verifying the restored weights");
  size_t bad = 0;
  if ((rc = workload_check(cm, &w, 1, &bad))) { tool_fail("verify", rc); goto out; }
  int verified = bad == 0;

  double sl[64], wk[64];
  int rounds = a->rounds > 64 ? 64 : a->rounds;
  for (int r = 0; r < rounds; r++) {
    snprintf(msg, sizeof msg, "warm cycle %d/%d", r + 1, rounds);
    progress(a, msg);
    TIMED(sl[r], cumem_sleep(cm, NULL, W));
    if (rc) { tool_fail("warm sleep", rc); goto out; }
    TIMED(wk[r], cumem_wake(cm, NULL));
    if (rc) { tool_fail("wake", rc); goto out; }
  }
  add_row("warm sleep (median)", moved, median(sl, rounds), link.d2h);
  add_row("wake (median)", moved, median(wk, rounds), link.h2d);
  if ((rc = workload_check(cm, &w, 1, &bad))) { tool_fail("verify", rc); goto out; }
  verified = verified && bad == 0;

  progress(a, "discard-only sleep and wake of the KV cache");
  cumem_stats(cm, "kv_cache", &s);
  for (int r = 0; r < rounds; r++) {
    TIMED(sl[r], cumem_sleep(cm, K, NULL));
    if (rc) { tool_fail("discard sleep", rc); goto out; }
    TIMED(wk[r], cumem_wake(cm, K));
    if (rc) { tool_fail("discard wake", rc); goto out; }
  }
  add_row("discard-only sleep, KV cache (median)", 0, median(sl, rounds), 0);
  add_row("discard-only wake, KV cache (median)", 0, median(wk, rounds), 0);
  size_t kv_bytes = s.bytes_allocated;

  /* Retention off, prepare-ahead mode for the weights: the background
   * worker pins their backup once the tag stops growing (no call), the
   * wake returns once the content is back and the worker gives the backup
   * back after it. */
  progress(a, "retention off, weights prepared ahead in the background");
  cumem_close(cm);
  cm = NULL;
  workload_free(NULL, &w); /* the instance freed the memory */
  workload_free(NULL, &kv);
  o.retain_backup = 0;
  o.prepare_ahead = "weights";
  if ((rc = cumem_open(&cm, &o))) { tool_fail("open", rc); goto out; }
  if ((rc = workload_alloc_weights(cm, &w, wbytes, "weights"))) { tool_fail("allocate", rc); goto out; }
  double loaded = now_seconds();
  if ((rc = workload_fill(cm, &w, 2))) { tool_fail("fill", rc); goto out; }
  double fill_s = now_seconds() - loaded;
  double ahead_s = wait_pinned(cm, "weights", moved, 600) - loaded;
  barrier("ahead");
  progress(a, "first sleep in prepare-ahead mode, wake, host memory given back");
  cumem_stats(cm, "weights", &s);
  size_t rss_now = rss_bytes(); /* the backup's pages are all resident: the rest is the base */
  size_t rss_base = rss_now > s.bytes_host_held ? rss_now - s.bytes_host_held : 0;
  TIMED(t, cumem_sleep(cm, NULL, W));
  if (rc) { tool_fail("sleep", rc); goto out; }
  add_row("first sleep, prepare-ahead mode (no call)", moved, t, link.d2h);
  TIMED(t, cumem_wake(cm, NULL));
  if (rc) { tool_fail("wake", rc); goto out; }
  double woke = now_seconds();
  add_row("wake, retention off (given back after)", moved, t, link.h2d);
  size_t rss_at_wake = rss_bytes();
  double give_back_s = wait_given_back(cm, "weights", 30) - woke;
  /* RSS is the host's own view, on cuda (the host backend's device memory
   * is host memory too: its RSS says nothing about backups). */
  double rss_drop_s = on_gpu ? wait_rss_below(rss_base + moved / 100, 30) - woke : -1;
  size_t rss_after = rss_bytes();
  double held = rss_after > rss_base ? (double)(rss_after - rss_base) : 0;
  double held_at_wake = rss_at_wake > rss_base ? (double)(rss_at_wake - rss_base) : 0;
  /* Pinning ahead with a call (right after loading), then the first sleep. */
  barrier("pin");
  progress(a, "backup prepared ahead by a call, then the first sleep");
  TIMED(t, cumem_prepare_backup(cm, W));
  if (rc) { tool_fail("prepare backup", rc); goto out; }
  add_row("prepare backup ahead (pin only, no copy)", moved, t, link.d2h);
  TIMED(t, cumem_sleep(cm, NULL, W));
  if (rc) { tool_fail("sleep", rc); goto out; }
  add_row("first sleep after prepare", moved, t, link.d2h);
  size_t rss_asleep = rss_bytes();
  if ((rc = cumem_wake(cm, NULL))) { tool_fail("wake", rc); goto out; }
  if ((rc = workload_check(cm, &w, 2, &bad))) { tool_fail("verify", rc); goto out; }
  verified = verified && bad == 0;

  if (a->json) {
    printf("{\n  \"device\": \"%s\", \"backend\": \"%s\", \"weights_bytes\": %zu, \"kv_bytes\": %zu,\n",
           info.name, cumem_backend_name(cm), moved, kv_bytes);
    printf("  \"link_d2h_gbps\": %.2f, \"link_h2d_gbps\": %.2f,\n  \"steps\": [\n", link.d2h, link.h2d);
    for (int i = 0; i < nrows; i++) {
      double gbps = rows[i].bytes ? (double)rows[i].bytes / rows[i].seconds / 1e9 : 0;
      printf("    {\"step\": \"%s\", \"seconds\": %.6f, \"gbps\": %.2f, \"percent_of_link\": %.1f}%s\n",
             rows[i].step, rows[i].seconds, gbps, rows[i].link ? 100 * gbps / rows[i].link : 0,
             i + 1 < nrows ? "," : "");
    }
    printf("  ],\n  \"rss_held_after_wake_retention_off_bytes\": %.0f, \"rss_asleep_bytes\": %zu,\n", held,
           rss_asleep);
    printf("  \"rss_held_at_wake_return_bytes\": %.0f, \"give_back_seconds\": %.4f, "
           "\"rss_drop_seconds\": %.4f,\n", held_at_wake, give_back_s, rss_drop_s);
    printf("  \"prepare_ahead_ready_seconds\": %.4f, \"fill_seconds\": %.4f, \"fill_alone_seconds\": %.4f, "
           "\"numa_node\": %d,\n", ahead_s, fill_s, fill_alone_s, info.numa_node);
    printf("  \"verified\": %s\n}\n", verified ? "true" : "false");
  } else {
    printf("\ncumem bench on %s (%s backend)\n", info.name, cumem_backend_name(cm));
    printf("weights %s (offloaded), KV cache %s (discarded)\n", fmt_bytes(moved, b1), fmt_bytes(kv_bytes, b2));
    printf("link (pinned, 256 MiB copies): device->host %.1f GB/s, host->device %.1f GB/s\n\n", link.d2h,
           link.h2d);
    printf("| %-48s | %9s | %8s | %9s |\n", "step", "seconds", "GB/s", "% of link");
    printf("|%s|%s|%s|%s|\n", "--------------------------------------------------", "-----------",
           "----------", "-----------");
    for (int i = 0; i < nrows; i++) {
      if (rows[i].bytes) {
        double gbps = (double)rows[i].bytes / rows[i].seconds / 1e9;
        printf("| %-48s | %9.4f | %8.1f | %8.0f%% |\n", rows[i].step, rows[i].seconds, gbps,
               100 * gbps / rows[i].link);
      } else {
        printf("| %-48s | %9.4f | %8s | %9s |\n", rows[i].step, rows[i].seconds, "-", "-");
      }
    }
    printf("\nretention off: the backup was given back %.0f ms after wake returned", give_back_s * 1e3);
    if (on_gpu)
      printf(" (RSS within 1%% %.0f ms after); RSS held when wake returned: %s, after: %s (%.2f%% of the %s "
             "backup)\n", rss_drop_s * 1e3, fmt_bytes((size_t)held_at_wake, b1), fmt_bytes((size_t)held, b2),
             100 * held / (double)moved, fmt_bytes(moved, b3));
    else
      printf(" (RSS not measured: the host backend's device memory is host memory)\n");
    printf("prepare-ahead mode: the weights' backup was pinned %.2f s after their allocation; filling them took "
           "%.2f s meanwhile (%.2f s with no pinning, in the first part)\n", ahead_s, fill_s, fill_alone_s);
    printf("verified: %s\n", verified ? "every byte of the weights restored, every round" : "FAILED: bytes differ");
  }
  rc = verified ? 0 : 1;
out:
  if (cm) {
    workload_free(cm, &w);
    workload_free(cm, &kv);
    cumem_close(cm);
  }
  return rc ? 1 : 0;
}
