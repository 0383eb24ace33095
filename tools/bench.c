/* `cumem bench`: measure the host link first (pinned copies, in the same
 * run), then sleep and wake a model-shaped workload — by default 16 GiB of
 * Llama-3-8B-shaped bf16 weights (offloaded) and a 32 GiB KV cache
 * (discarded) — and print one table (or, with --json, one document):
 * seconds, GB/s and percent of the link for the cold sleep (nothing pinned
 * yet), warm sleeps, wakes, the discard-only sleep and wake; then, with
 * retention off and the weights in prepare-ahead mode, the first sleep
 * (pinned ahead in the background), the wake, and how long after it the host
 * memory is back (RSS); then pinning ahead with a call and the first sleep
 * after it; and the sleeps that skip unchanged copy chunks (weights
 * unchanged, 1% of the chunks changed, every chunk changed: the cost of
 * fingerprinting), beside the fingerprint kernel's own rate. The restored
 * weights are verified byte for byte.
 *
 * For the several-GPU runs (bench/multi_gpu.py): CUMEM_BENCH_BARRIER=DIR:N
 * lines the N processes up before each timed phase; CUMEM_BENCH_PRETOUCH_GIB
 * touches that much fresh host memory (and gives it back) first. */
#include "cumem_backend.h"
#include "internal.h" /* cumem__parse_size */
#include "tool.h"

#include <dirent.h>
#include <pthread.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---- the link, through the backend directly ---- */

typedef struct link {
  double d2h, h2d;
  double fingerprint; /* GB/s of the backend's fingerprint (the GPU kernel); 0: unavailable */
} link_t;

/* Fingerprint the link's buffer on the device in copy-chunk pieces: best of
 * 3 passes after one that warms up (and loads the kernel). Not fatal: the
 * skip rows then show what sleep does without it. */
static void measure_fingerprint(cumem_backend_t *b, uintptr_t va, size_t total, uint64_t *out, void *stream,
                                link_t *link) {
  const size_t chunk = 64 * MiB;
  double best = 1e30;
  int rc = b->fingerprint ? 0 : CUMEM_ENOTSUP;
  for (int pass = 0; pass < 4 && !rc; pass++) {
    double t0 = now_seconds();
    rc = b->fingerprint(b, va, chunk, total, out, stream);
    if (!rc) rc = b->stream_synchronize(b, stream);
    double t = now_seconds() - t0;
    if (pass > 0 && t < best) best = t;
  }
  if (rc) tool_fail("fingerprint (sleep then copies every chunk)", rc);
  link->fingerprint = rc ? 0 : (double)total / best / 1e9;
}

/* Best of 3 passes of `want` bytes (rounded up to the granularity) in
 * copies of up to 256 MiB on one stream, on a backend of its own of the
 * kind named (the instance's). */
static int measure_link(const char *backend, size_t want, link_t *out) {
  cumem_backend_t *b = NULL;
  int rc = cumem_backend_open(backend, &b);
  if (rc) return rc;
  cumem_device_info_t info;
  size_t total = 0, piece = 0;
  uintptr_t va = 0;
  cumem_handle_t h = 0;
  void *stream = NULL;
  unsigned char *host = MAP_FAILED;
  int reserved = 0, mapped = 0, registered = 0;
  rc = b->device_info(b, 0, &info);
  if (!rc) {
    total = (want + info.granularity - 1) / info.granularity * info.granularity;
    piece = total < 256 * MiB ? total : 256 * MiB;
    rc = b->reserve(b, 0, total, &va);
  }
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
      for (size_t off = 0; off < total && !rc; off += piece) {
        size_t n = total - off < piece ? total - off : piece;
        rc = dir == 0 ? b->copy_to_host(b, host + off, va + off, n, stream)
                      : b->copy_to_device(b, va + off, host + off, n, stream);
      }
      if (!rc) rc = b->stream_synchronize(b, stream);
      double t = now_seconds() - t0;
      if (pass > 0 && t < best) best = t;
    }
    if (dir == 0) out->d2h = (double)total / best / 1e9;
    else out->h2d = (double)total / best / 1e9;
  }
  if (!rc) measure_fingerprint(b, va, total, (uint64_t *)host, stream, out);
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

/* The bench's own variables, read once before anything runs: a malformed
 * value is refused with the variable named (exit 2), never half-read. */
static struct {
  size_t pretouch;      /* CUMEM_BENCH_PRETOUCH_GIB, in bytes (0: none) */
  char barrier_dir[512]; /* CUMEM_BENCH_BARRIER=DIR:N ("": none) */
  long barrier_n;
} bench_env;

static int read_bench_env(void) {
  memset(&bench_env, 0, sizeof bench_env);
  const char *s = getenv("CUMEM_BENCH_PRETOUCH_GIB"), *why = NULL;
  if (s && *s && cumem__parse_size(s, GiB, &bench_env.pretouch, &why) != 0) {
    fprintf(stderr, "cumem bench: CUMEM_BENCH_PRETOUCH_GIB=%s: %s (a bare number is GiB)\n", s, why);
    return -1;
  }
  const char *spec = getenv("CUMEM_BENCH_BARRIER");
  if (!spec || !*spec) return 0;
  const char *colon = strrchr(spec, ':');
  char *end = NULL;
  long n = colon && colon[1] >= '0' && colon[1] <= '9' ? strtol(colon + 1, &end, 10) : 0;
  if (!colon || colon == spec || !end || *end || n < 1 || n > 1024 ||
      (size_t)(colon - spec) >= sizeof bench_env.barrier_dir) {
    fprintf(stderr, "cumem bench: CUMEM_BENCH_BARRIER=%s: expected DIR:N, N from 1 to 1024\n", spec);
    return -1;
  }
  snprintf(bench_env.barrier_dir, sizeof bench_env.barrier_dir, "%.*s", (int)(colon - spec), spec);
  bench_env.barrier_n = n;
  return 0;
}

/* CUMEM_BENCH_BARRIER=DIR:N (bench/multi_gpu.py sets it): the N bench
 * processes of one run meet before each timed phase, so that their cold
 * sleeps (or pinning) really overlap. Each leaves a file DIR/<phase>.<pid>
 * and waits until N are there (two minutes at most). */
static void barrier(const char *phase) {
  if (!bench_env.barrier_n) return;
  const char *dir = bench_env.barrier_dir;
  long n = bench_env.barrier_n;
  char path[600];
  snprintf(path, sizeof path, "%s/%s.%d", dir, phase, (int)getpid());
  FILE *f = fopen(path, "w");
  if (f) fclose(f);
  size_t plen = strlen(phase);
  for (double end = now_seconds() + 120; now_seconds() < end; usleep(500)) {
    DIR *d = opendir(dir);
    long seen = 0;
    for (struct dirent *e; d && (e = readdir(d));) seen += !strncmp(e->d_name, phase, plen) && e->d_name[plen] == '.';
    if (d) closedir(d);
    if (seen >= n) return;
  }
  fprintf(stderr, "[bench] barrier %s: gave up waiting for %ld processes\n", phase, n);
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

static void pretouch(void) {
  size_t n = bench_env.pretouch & ~(size_t)4095;
  if (!n) return;
  double gib = (double)n / (double)GiB;
  unsigned char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return;
  tool_progress("pre-touching %.1f GiB of host memory", gib);
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

#define MAX_ROWS 20

/* The sleeps that skip unchanged copy chunks (medians, seconds). */
typedef struct skip_result {
  double record, unchanged, one_percent, everything;
  double plain_warm;                          /* the warm sleep they compare with */
  size_t chunks, changed, copied_one_percent; /* copy chunks; of them changed (1%); bytes copied */
  size_t copy_chunk;
} skip_result_t;

/* Everything bench measured, for the table or the JSON document. */
typedef struct results {
  char device[96];
  const char *backend;
  link_t link;
  size_t link_bytes; /* copied each way per pass */
  size_t moved;    /* weights' bytes that a sleep copies (rounded sizes) */
  size_t kv_bytes;
  row_t rows[MAX_ROWS];
  int nrows;
  int rounds;
  int verified;    /* every check so far read the weights back intact */
  int checked;     /* at least one check ran */
  double rss_held; /* host memory still held after a wake, retention off */
  double rss_held_at_wake; /* ... when that wake returned */
  size_t rss_asleep;
  double give_back_s;  /* wake's return to the backup given back (retention off) */
  double rss_drop_s;   /* wake's return to RSS within 1% of the backup (-1: not measured) */
  double ahead_s;      /* allocation to the backup pinned, prepare-ahead mode */
  double fill_s, fill_alone_s; /* filling the weights with / without pinning meanwhile */
  int numa_node;
  int on_gpu;
  skip_result_t skip;
} results_t;

static void add_row(results_t *r, const char *step, size_t bytes, double seconds, double link) {
  if (r->nrows < MAX_ROWS) r->rows[r->nrows++] = (row_t){step, bytes, seconds, link};
}

static double gbps(const row_t *row) {
  return row->bytes && row->seconds > 0 ? (double)row->bytes / row->seconds / 1e9 : 0;
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

/* Check the weights; a mismatch clears r->verified. */
static int verify(cumem_t *cm, const workload_t *w, unsigned seed, results_t *r) {
  size_t bad = 0;
  tool_progress("verifying the restored weights");
  int rc = workload_check(cm, w, seed, &bad);
  if (rc) tool_fail("verify", rc);
  r->checked = 1;
  r->verified = r->verified && !rc && bad == 0;
  return rc;
}

#define TIMED(var, call)               \
  do {                                 \
    double t0_ = now_seconds();        \
    rc = (call);                       \
    var = now_seconds() - t0_;         \
  } while (0)

/* ---- skipping unchanged copy chunks ---- */

static int set_skip(cumem_t *cm, const char *tag, int on) {
  cumem_tag_options_t t;
  int rc = cumem_tag_get_options(cm, tag, &t);
  if (rc) return rc;
  t.skip_unchanged = on;
  return cumem_tag_set_options(cm, tag, &t);
}

/* The first page of one copy chunk of the weights: what a round changes. */
typedef struct mark {
  char *at;
  size_t len;
  unsigned char saved[4096]; /* the content before */
} mark_t;

/* The copy chunks of the weights, in order. */
static mark_t *list_chunks(cumem_t *cm, const workload_t *w, size_t copy_chunk, size_t *count) {
  size_t n = 0, cap = 1024;
  mark_t *m = malloc(cap * sizeof *m);
  for (size_t t = 0; m && t < w->n; t++) {
    cumem_alloc_info_t info;
    if (cumem_query(cm, w->ptr[t], &info)) break;
    for (size_t off = 0; off < info.size; off += copy_chunk) {
      if (n == cap) {
        mark_t *bigger = realloc(m, 2 * cap * sizeof *m);
        if (!bigger) {
          free(m);
          return NULL;
        }
        m = bigger;
        cap *= 2;
      }
      size_t len = info.size - off < sizeof m->saved ? info.size - off : sizeof m->saved;
      m[n++] = (mark_t){(char *)info.ptr + off, len, {0}};
    }
  }
  *count = n;
  return m;
}

/* Change the first page of every `every`-th chunk to `value` (0: back to
 * what it held), or check that it holds `value` (mismatches clear *ok). */
static int mark_chunks(cumem_t *cm, mark_t *m, size_t n, size_t every, int value, int check, int *ok) {
  unsigned char page[4096];
  int rc = 0;
  for (size_t i = 0; !rc && i < n; i += every) {
    if (check) {
      rc = cumem_copy_to_host(cm, page, m[i].at, m[i].len);
      for (size_t j = 0; !rc && j < m[i].len; j++)
        if (page[j] != (unsigned char)value) *ok = 0;
    } else if (value) {
      rc = cumem_memset(cm, m[i].at, value, m[i].len);
    } else {
      rc = cumem_copy_to_device(cm, m[i].at, m[i].saved, m[i].len);
    }
  }
  return rc;
}

/* Sleep (weights offloaded, cache discarded) and wake, r->rounds times,
 * changing the first page of every `every`-th chunk before each sleep
 * (every = 0: nothing): the median sleep, and the bytes each copied must
 * equal `want_copied` (SIZE_MAX: not checked; the last one's is returned). */
static int skip_rounds(cumem_t *cm, mark_t *m, size_t every, int first_value, size_t want_copied, double *sl,
                       results_t *r, double *median_s, size_t *copied) {
  const char *W[] = {"weights", NULL};
  int rc = 0;
  for (int i = 0; !rc && i < r->rounds; i++) {
    int value = first_value + i;
    if (every) rc = mark_chunks(cm, m, r->skip.chunks, every, value, 0, NULL);
    if (!rc) TIMED(sl[i], cumem_sleep(cm, NULL, W));
    cumem_stats_t s;
    if (!rc) rc = cumem_stats(cm, "weights", &s);
    if (!rc) {
      *copied = s.bytes_backed_up - s.bytes_skipped;
      if (s.bytes_backed_up != r->moved || (want_copied != SIZE_MAX && *copied != want_copied)) r->verified = 0;
    }
    if (!rc) rc = cumem_wake(cm, NULL);
    if (!rc && every) rc = mark_chunks(cm, m, r->skip.chunks, every, value, 1, &r->verified);
  }
  if (rc) tool_fail("skip unchanged", rc);
  else *median_s = median(sl, r->rounds);
  return rc;
}

/* The skip rows: the first sleep records fingerprints, then unchanged, 1%
 * of the copy chunks changed, every chunk changed; then the weights back to
 * their pattern through one more skipping cycle, and checked. */
static int bench_skip(cumem_t *cm, const workload_t *w, size_t copy_chunk, double *sl, results_t *r) {
  const char *W[] = {"weights", NULL};
  skip_result_t *k = &r->skip;
  k->copy_chunk = copy_chunk;
  mark_t *m = list_chunks(cm, w, copy_chunk, &k->chunks);
  int rc = m ? 0 : CUMEM_ENOHOST;
  for (size_t i = 0; !rc && i < k->chunks; i++) rc = cumem_copy_to_host(cm, m[i].saved, m[i].at, m[i].len);
  if (!rc) rc = set_skip(cm, "weights", 1);
  if (rc) tool_fail("skip unchanged", rc);
  double t;
  size_t copied = 0;
  if (!rc) {
    tool_progress("skip unchanged: the first sleep records fingerprints");
    TIMED(t, cumem_sleep(cm, NULL, W));
    if (!rc) rc = cumem_wake(cm, NULL);
    if (rc) tool_fail("skip unchanged", rc);
    k->record = t;
  }
  if (!rc) {
    tool_progress("skip unchanged: weights unchanged");
    rc = skip_rounds(cm, m, 0, 0, 0, sl, r, &k->unchanged, &copied);
  }
  if (!rc) rc = verify(cm, w, 1, r);
  k->changed = (k->chunks + 99) / 100;
  if (!rc) {
    tool_progress("skip unchanged: 1%% of the copy chunks changed");
    rc = skip_rounds(cm, m, 100, 0x11, SIZE_MAX, sl, r, &k->one_percent, &k->copied_one_percent);
  }
  if (!rc) {
    tool_progress("skip unchanged: every copy chunk changed (the cost of fingerprinting)");
    rc = skip_rounds(cm, m, 1, 0x61, r->moved, sl, r, &k->everything, &copied);
  }
  if (!rc) { /* every failure above is already reported; these are not */
    rc = mark_chunks(cm, m, k->chunks, 1, 0, 0, NULL);
    if (!rc) rc = cumem_sleep(cm, NULL, W);
    if (!rc) rc = cumem_wake(cm, NULL);
    if (rc) tool_fail("skip unchanged", rc);
  }
  if (!rc) rc = verify(cm, w, 1, r);
  free(m);
  if (!rc) {
    add_row(r, "skip: first sleep, fingerprints recorded", r->moved, k->record, r->link.d2h);
    add_row(r, "skip: sleep, weights unchanged (median)", r->moved, k->unchanged, r->link.d2h);
    add_row(r, "skip: sleep, 1% of chunks changed (median)", r->moved, k->one_percent, r->link.d2h);
    add_row(r, "skip: sleep, every chunk changed (median)", r->moved, k->everything, r->link.d2h);
  }
  return rc;
}

/* The measurements, in order; returns 0 or the first cumem error (already
 * reported). `*cm` may be reopened (retention off). */
static int run_bench(const tool_args_t *a, cumem_options_t *o, cumem_t **cm, workload_t *w, workload_t *kv,
                     double *sl, double *wk, results_t *r) {
  cumem_device_info_t info;
  int rc = cumem_device_info(*cm, 0, &info);
  if (rc) { tool_fail("device info", rc); return rc; }
  snprintf(r->device, sizeof r->device, "%s", info.name);
  r->numa_node = info.numa_node;
  int on_gpu = r->on_gpu = !strcmp(r->backend, "cuda");
  size_t wbytes = a->weights ? a->weights : on_gpu ? 16 * GiB : GiB / 4;
  size_t kbytes = a->kv ? a->kv : 2 * wbytes;
  char b1[32], b2[32];

  /* The link first, with copies of 2 GiB (or of the weights' size when
   * smaller, but no less than 256 MiB). */
  size_t link_bytes = wbytes < 256 * MiB ? 256 * MiB : wbytes > 2 * GiB ? 2 * GiB : wbytes;
  tool_progress("measuring the host link (pinned copies, %s each way)", fmt_bytes(link_bytes, b1));
  if ((rc = measure_link(r->backend, link_bytes, &r->link))) { tool_fail("link measurement", rc); return rc; }
  r->link_bytes = link_bytes;

  tool_progress("allocating %s of weights and %s of KV cache on %s", fmt_bytes(wbytes, b1),
                fmt_bytes(kbytes, b2), info.name);
  rc = workload_alloc_weights(*cm, w, wbytes, "weights");
  if (!rc) rc = workload_alloc_kv(*cm, kv, kbytes, "kv_cache");
  if (!rc) rc = set_skip(*cm, "weights", 0); /* plain copies, whatever the default; the skip rows turn it on */
  if (rc) { tool_fail("allocate", rc); return rc; }
  tool_progress("filling the weights with a known pattern");
  double fill0 = now_seconds();
  if ((rc = workload_fill(*cm, w, 1))) { tool_fail("fill", rc); return rc; }
  r->fill_alone_s = now_seconds() - fill0;
  cumem_stats_t s;
  if ((rc = cumem_stats(*cm, "weights", &s))) { tool_fail("stats", rc); return rc; }
  r->moved = s.bytes_allocated;
  if ((rc = cumem_stats(*cm, "kv_cache", &s))) { tool_fail("stats", rc); return rc; }
  r->kv_bytes = s.bytes_allocated;

  const char *W[] = {"weights", NULL}, *K[] = {"kv_cache", NULL};
  double t;
  pretouch();
  barrier("cold");
  tool_progress("cold sleep (no host memory pinned yet)");
  TIMED(t, cumem_sleep(*cm, NULL, W));
  if (rc) { tool_fail("cold sleep", rc); return rc; }
  add_row(r, "cold sleep (weights offloaded, cache discarded)", r->moved, t, r->link.d2h);
  tool_progress("wake after the cold sleep");
  TIMED(t, cumem_wake(*cm, NULL));
  if (rc) { tool_fail("wake", rc); return rc; }
  add_row(r, "wake after cold sleep", r->moved, t, r->link.h2d);
  if ((rc = verify(*cm, w, 1, r))) return rc;

  for (int i = 0; i < r->rounds; i++) {
    tool_progress("warm cycle %d/%d", i + 1, r->rounds);
    TIMED(sl[i], cumem_sleep(*cm, NULL, W));
    if (rc) { tool_fail("warm sleep", rc); return rc; }
    TIMED(wk[i], cumem_wake(*cm, NULL));
    if (rc) { tool_fail("wake", rc); return rc; }
  }
  r->skip.plain_warm = median(sl, r->rounds); /* what the skip rows compare with */
  add_row(r, "warm sleep (median)", r->moved, r->skip.plain_warm, r->link.d2h);
  add_row(r, "wake (median)", r->moved, median(wk, r->rounds), r->link.h2d);
  if ((rc = verify(*cm, w, 1, r))) return rc;

  for (int i = 0; i < r->rounds; i++) {
    tool_progress("discard-only sleep and wake of the KV cache %d/%d", i + 1, r->rounds);
    TIMED(sl[i], cumem_sleep(*cm, K, NULL));
    if (rc) { tool_fail("discard sleep", rc); return rc; }
    TIMED(wk[i], cumem_wake(*cm, K));
    if (rc) { tool_fail("discard wake", rc); return rc; }
  }
  add_row(r, "discard-only sleep, KV cache (median)", 0, median(sl, r->rounds), 0);
  add_row(r, "discard-only wake, KV cache (median)", 0, median(wk, r->rounds), 0);

  /* Skipping unchanged copy chunks: GB/s are effective (bytes put to sleep
   * per second), so they can exceed the link. */
  if ((rc = bench_skip(*cm, w, o->copy_chunk, sl, r))) return rc;

  /* Retention off, prepare-ahead mode for the weights: the background
   * worker pins their backup once the tag stops growing (no call), the wake
   * returns once the content is back and the worker gives the backup back
   * after it. */
  tool_progress("retention off, weights prepared ahead in the background");
  cumem_close(*cm); /* frees the workload's memory */
  *cm = NULL;
  workload_free(NULL, w);
  workload_free(NULL, kv);
  o->retain_backup = 0;
  o->prepare_ahead = "weights";
  if ((rc = cumem_open(cm, o))) { tool_fail("open", rc); return rc; }
  if ((rc = workload_alloc_weights(*cm, w, wbytes, "weights"))) { tool_fail("allocate", rc); return rc; }
  double loaded = now_seconds();
  tool_progress("retention off: filling the weights again (pinning ahead meanwhile)");
  if ((rc = workload_fill(*cm, w, 2))) { tool_fail("fill", rc); return rc; }
  r->fill_s = now_seconds() - loaded;
  r->ahead_s = wait_pinned(*cm, "weights", r->moved, 600) - loaded;
  barrier("ahead");
  tool_progress("first sleep in prepare-ahead mode, wake, host memory given back");
  if ((rc = cumem_stats(*cm, "weights", &s))) { tool_fail("stats", rc); return rc; }
  size_t rss_now = rss_bytes(); /* the backup's pages are all resident: the rest is the base */
  size_t rss_base = rss_now > s.bytes_host_held ? rss_now - s.bytes_host_held : 0;
  TIMED(t, cumem_sleep(*cm, NULL, W));
  if (rc) { tool_fail("sleep", rc); return rc; }
  add_row(r, "first sleep, prepare-ahead mode (no call)", r->moved, t, r->link.d2h);
  TIMED(t, cumem_wake(*cm, NULL));
  if (rc) { tool_fail("wake", rc); return rc; }
  double woke = now_seconds();
  add_row(r, "wake, retention off (given back after)", r->moved, t, r->link.h2d);
  size_t rss_at_wake = rss_bytes();
  r->give_back_s = wait_given_back(*cm, "weights", 30) - woke;
  /* RSS is the host's own view on cuda (the host backend's device memory is
   * host memory too: its RSS says nothing about backups). */
  r->rss_drop_s = on_gpu ? wait_rss_below(rss_base + r->moved / 100, 30) - woke : -1;
  size_t rss_after = rss_bytes();
  r->rss_held = rss_after > rss_base ? (double)(rss_after - rss_base) : 0;
  r->rss_held_at_wake = rss_at_wake > rss_base ? (double)(rss_at_wake - rss_base) : 0;
  if ((rc = verify(*cm, w, 2, r))) return rc;

  /* Pinning ahead with a call (right after loading), then the first sleep. */
  barrier("pin");
  tool_progress("backup prepared ahead by a call, then the first sleep");
  TIMED(t, cumem_prepare_backup(*cm, W));
  if (rc) { tool_fail("prepare backup", rc); return rc; }
  add_row(r, "prepare backup ahead (pin only, no copy)", r->moved, t, r->link.d2h);
  TIMED(t, cumem_sleep(*cm, NULL, W));
  if (rc) { tool_fail("sleep", rc); return rc; }
  add_row(r, "first sleep after prepare", r->moved, t, r->link.d2h);
  r->rss_asleep = rss_bytes();
  if ((rc = cumem_wake(*cm, NULL))) { tool_fail("wake", rc); return rc; }
  return verify(*cm, w, 2, r);
}

static void print_json(const results_t *r, int exit_code) {
  json_t j;
  tool_json_begin(&j, stdout, "bench");
  json_string(&j, "backend", r->backend);
  json_string(&j, "device", r->device[0] ? r->device : NULL);
  json_uint(&j, "weights_bytes", r->moved);
  json_uint(&j, "kv_bytes", r->kv_bytes);
  json_int(&j, "rounds", r->rounds);
  json_uint(&j, "link_bytes", r->link_bytes);
  json_number(&j, "link_d2h_gbps", r->link.d2h);
  json_number(&j, "link_h2d_gbps", r->link.h2d);
  json_number(&j, "fingerprint_gbps", r->link.fingerprint);
  json_array(&j, "steps");
  for (int i = 0; i < r->nrows; i++) {
    const row_t *row = &r->rows[i];
    json_object(&j, NULL);
    json_string(&j, "step", row->step);
    json_number(&j, "seconds", row->seconds);
    if (row->bytes) {
      json_uint(&j, "bytes", row->bytes);
      json_number(&j, "gbps", gbps(row));
      if (row->link > 0) json_number(&j, "percent_of_link", 100 * gbps(row) / row->link);
    }
    json_end(&j);
  }
  json_end(&j);
  json_uint(&j, "rss_held_after_wake_retention_off_bytes", (uint64_t)r->rss_held);
  json_uint(&j, "rss_held_at_wake_return_bytes", (uint64_t)r->rss_held_at_wake);
  json_uint(&j, "rss_asleep_bytes", r->rss_asleep);
  json_number(&j, "give_back_seconds", r->give_back_s);
  json_number(&j, "rss_drop_seconds", r->rss_drop_s);
  json_number(&j, "prepare_ahead_ready_seconds", r->ahead_s);
  json_number(&j, "fill_seconds", r->fill_s);
  json_number(&j, "fill_alone_seconds", r->fill_alone_s);
  json_int(&j, "numa_node", r->numa_node);
  json_object(&j, "skip");
  json_uint(&j, "copy_chunk_bytes", r->skip.copy_chunk);
  json_uint(&j, "copy_chunks", r->skip.chunks);
  json_uint(&j, "changed_chunks_1pct", r->skip.changed);
  json_uint(&j, "bytes_copied_1pct", r->skip.copied_one_percent);
  json_number(&j, "record_seconds", r->skip.record);
  json_number(&j, "unchanged_seconds", r->skip.unchanged);
  json_number(&j, "one_percent_seconds", r->skip.one_percent);
  json_number(&j, "every_chunk_seconds", r->skip.everything);
  json_number(&j, "plain_warm_seconds", r->skip.plain_warm);
  json_number(&j, "every_chunk_over_plain", r->skip.plain_warm > 0 ? r->skip.everything / r->skip.plain_warm : 0);
  json_end(&j);
  json_bool(&j, "verified", r->checked && r->verified);
  tool_json_end(&j, exit_code);
}

static void print_table(const results_t *r) {
  char b1[32], b2[32];
  printf("\ncumem bench on %s (%s backend)\n", r->device, r->backend);
  printf("weights %s (offloaded), KV cache %s (discarded)\n", fmt_bytes(r->moved, b1), fmt_bytes(r->kv_bytes, b2));
  printf("link (pinned, %s each way): device->host %.1f GB/s, host->device %.1f GB/s\n",
         fmt_bytes(r->link_bytes, b1), r->link.d2h, r->link.h2d);
  printf("fingerprint on the device (%s in 64 MiB chunks): %.1f GB/s\n\n", fmt_bytes(r->link_bytes, b1),
         r->link.fingerprint);
  printf("| %-48s | %9s | %8s | %9s |\n", "step", "seconds", "GB/s", "% of link");
  printf("|%s|%s|%s|%s|\n", "--------------------------------------------------", "-----------", "----------",
         "-----------");
  for (int i = 0; i < r->nrows; i++) {
    const row_t *row = &r->rows[i];
    if (row->bytes)
      printf("| %-48s | %9.4f | %8.1f | %8.0f%% |\n", row->step, row->seconds, gbps(row),
             row->link > 0 ? 100 * gbps(row) / row->link : 0);
    else
      printf("| %-48s | %9.4f | %8s | %9s |\n", row->step, row->seconds, "-", "-");
  }
  const skip_result_t *k = &r->skip;
  printf("\nskip unchanged (%zu copy chunks of %s): unchanged %.1f ms (target <= 30), 1%% changed %.1f ms "
         "(%zu chunks, %s copied; target <= 40), every chunk changed %.1f ms = %.3f x the plain warm sleep "
         "(target <= 1.05; on by default if <= 1.02)\n",
         k->chunks, fmt_bytes(k->copy_chunk, b1), k->unchanged * 1e3, k->one_percent * 1e3, k->changed,
         fmt_bytes(k->copied_one_percent, b2), k->everything * 1e3,
         k->plain_warm > 0 ? k->everything / k->plain_warm : 0);
  printf("retention off: the backup was given back %.0f ms after wake returned", r->give_back_s * 1e3);
  if (r->on_gpu)
    printf(" (RSS within 1%% %.0f ms after); RSS held when wake returned: %s, after: %s (%.2f%% of the "
           "backup)\n", r->rss_drop_s * 1e3, fmt_bytes((size_t)r->rss_held_at_wake, b1),
           fmt_bytes((size_t)r->rss_held, b2), r->moved ? 100 * r->rss_held / (double)r->moved : 0);
  else
    printf(" (RSS not measured: the host backend's device memory is host memory)\n");
  printf("prepare-ahead mode: the weights' backup was pinned %.2f s after their allocation; filling them took "
         "%.2f s meanwhile (%.2f s with no pinning, in the first part)\n", r->ahead_s, r->fill_s,
         r->fill_alone_s);
  printf("verified: %s\n", r->verified ? "every byte of the weights restored, every round" : "FAILED: bytes differ");
}

int cmd_bench(const tool_args_t *a) {
  results_t r = {.rounds = a->rounds, .verified = 1, .backend = "none"};
  workload_t w = {0}, kv = {0};
  if (read_bench_env()) return TOOL_EXIT_USAGE;
  cumem_options_t o;
  cumem_t *cm = NULL;
  double *sl = calloc((size_t)a->rounds, sizeof *sl), *wk = calloc((size_t)a->rounds, sizeof *wk);
  int rc = sl && wk ? 0 : CUMEM_ENOHOST;
  if (rc) fprintf(stderr, "cumem: out of host memory for %d rounds\n", a->rounds);
  if (!rc && (rc = tool_options(a, &o))) tool_fail("open", rc);
  o.prepare_ahead = NULL; /* the cold sleep is cold, whatever CUMEM_PREPARE_AHEAD says */
  if (!rc && (rc = cumem_open(&cm, &o))) tool_fail("open", rc);
  if (!rc) {
    r.backend = cumem_backend_name(cm);
    rc = run_bench(a, &o, &cm, &w, &kv, sl, wk, &r);
  }
  tool_progress_done();
  int exit_code = rc ? TOOL_EXIT_FAILED : r.verified ? TOOL_EXIT_OK : TOOL_EXIT_MISMATCH;
  if (a->json) print_json(&r, exit_code);
  else if (!rc) print_table(&r);
  if (cm) {
    workload_free(cm, &w);
    workload_free(cm, &kv);
    cumem_close(cm);
  }
  free(sl);
  free(wk);
  return exit_code;
}
