/* `cumem bench`: measure the host link first (pinned copies, in the same
 * run), then sleep and wake a model-shaped workload — by default 16 GiB of
 * Llama-3-8B-shaped bf16 weights (offloaded) and a 32 GiB KV cache
 * (discarded) — and print one table: seconds, GB/s and percent of the link
 * for the cold sleep (nothing pinned yet), warm sleeps, wakes, the
 * discard-only sleep and wake, the sleeps that skip unchanged copy chunks
 * (weights unchanged, 1% of the chunks changed, every chunk changed: the
 * cost of fingerprinting), and the host memory held after a wake with
 * retention off. The restored weights are verified byte for byte. */
#include "cumem_backend.h"
#include "tool.h"

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

/* Fingerprint the 2 GiB on the device in copy-chunk pieces: best of 3
 * passes after one that warms up (and loads the kernel). Not fatal: the
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

#define MAX_ROWS 16
static row_t rows[MAX_ROWS];
static int nrows;

static void add_row(const char *step, size_t bytes, double seconds, double link) {
  if (nrows < MAX_ROWS) rows[nrows++] = (row_t){step, bytes, seconds, link};
}

static void progress(const tool_args_t *a, const char *msg) {
  if (!a->quiet) {
    fprintf(stderr, "[bench] %s\n", msg);
    fflush(stderr);
  }
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

typedef struct skip_result {
  double record, unchanged, one_percent, everything; /* seconds, medians */
  size_t chunks, changed, copied_one_percent;        /* copy chunks; of them changed (1%); bytes copied */
  int verified;
} skip_result_t;

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
 * what it held), or check that it holds `value`. */
static int mark_chunks(cumem_t *cm, mark_t *m, size_t n, size_t every, int value, int check, size_t *bad) {
  unsigned char page[4096];
  int rc = 0;
  for (size_t i = 0; !rc && i < n; i += every) {
    if (check) {
      rc = cumem_copy_to_host(cm, page, m[i].at, m[i].len);
      for (size_t j = 0; !rc && j < m[i].len; j++) *bad += page[j] != (unsigned char)value;
    } else if (value) {
      rc = cumem_memset(cm, m[i].at, value, m[i].len);
    } else {
      rc = cumem_copy_to_device(cm, m[i].at, m[i].saved, m[i].len);
    }
  }
  return rc;
}

/* Sleep (weights offloaded, cache discarded), wake, `rounds` times, changing
 * the first page of every `every`-th chunk before each sleep (every = 0:
 * nothing); the median sleep, the bytes the last one copied, and whether the
 * changed pages came back. */
static int skip_rounds(cumem_t *cm, mark_t *m, size_t n, size_t every, int rounds, int first_value, size_t moved,
                       double *median_s, size_t *copied, int *ok) {
  const char *W[] = {"weights", NULL};
  double t[64];
  int rc = 0;
  for (int r = 0; !rc && r < rounds; r++) {
    int value = first_value + r;
    if (every) rc = mark_chunks(cm, m, n, every, value, 0, NULL);
    if (!rc) TIMED(t[r], cumem_sleep(cm, NULL, W));
    cumem_stats_t s;
    if (!rc) rc = cumem_stats(cm, "weights", &s);
    if (!rc) *copied = s.bytes_backed_up - s.bytes_skipped;
    if (!rc && s.bytes_backed_up != moved) *ok = 0;
    if (!rc) rc = cumem_wake(cm, NULL);
    size_t bad = 0;
    if (!rc && every) rc = mark_chunks(cm, m, n, every, value, 1, &bad);
    if (bad) *ok = 0;
  }
  if (!rc) *median_s = median(t, rounds);
  return rc;
}

static int bench_skip(const tool_args_t *a, cumem_t *cm, const workload_t *w, size_t copy_chunk, size_t moved,
                      skip_result_t *out) {
  const char *W[] = {"weights", NULL};
  int rounds = a->rounds > 64 ? 64 : a->rounds;
  memset(out, 0, sizeof *out);
  out->verified = 1;
  mark_t *m = list_chunks(cm, w, copy_chunk, &out->chunks);
  if (!m) return CUMEM_ENOHOST;
  int rc = 0;
  for (size_t i = 0; !rc && i < out->chunks; i++) rc = cumem_copy_to_host(cm, m[i].saved, m[i].at, m[i].len);
  if (!rc) rc = set_skip(cm, "weights", 1);
  progress(a, "skip unchanged: the first sleep records fingerprints");
  if (!rc) TIMED(out->record, cumem_sleep(cm, NULL, W));
  if (!rc) rc = cumem_wake(cm, NULL);
  size_t copied = 0;
  progress(a, "skip unchanged: weights unchanged");
  if (!rc) rc = skip_rounds(cm, m, out->chunks, 0, rounds, 0, moved, &out->unchanged, &copied, &out->verified);
  if (!rc && copied != 0) out->verified = 0; /* nothing changed: nothing may be copied */
  size_t bad = 0;
  if (!rc) rc = workload_check(cm, w, 1, &bad);
  if (bad) out->verified = 0;
  progress(a, "skip unchanged: 1% of the copy chunks changed");
  size_t every = 100;
  out->changed = (out->chunks + every - 1) / every;
  if (!rc) rc = skip_rounds(cm, m, out->chunks, every, rounds, 0x11, moved, &out->one_percent,
                            &out->copied_one_percent, &out->verified);
  progress(a, "skip unchanged: every copy chunk changed (the cost of fingerprinting)");
  if (!rc) rc = skip_rounds(cm, m, out->chunks, 1, rounds, 0x61, moved, &out->everything, &copied, &out->verified);
  if (!rc && copied != moved) out->verified = 0; /* everything changed: everything copied */
  /* Back to the pattern, through one more skipping cycle, and check all of it. */
  if (!rc) rc = mark_chunks(cm, m, out->chunks, 1, 0, 0, NULL);
  if (!rc) rc = cumem_sleep(cm, NULL, W);
  if (!rc) rc = cumem_wake(cm, NULL);
  bad = 0;
  if (!rc) rc = workload_check(cm, w, 1, &bad);
  if (bad) out->verified = 0;
  free(m);
  return rc;
}

int cmd_bench(const tool_args_t *a) {
  link_t link = {0};
  progress(a, "measuring the host link (pinned copies, 2 GiB each way) and the fingerprint kernel");
  int rc = measure_link(a, &link);
  if (rc) { tool_fail("link measurement", rc); return 1; }

  cumem_options_t o;
  cumem_options_init(&o);
  if (a->backend) o.backend = a->backend;
  cumem_t *cm;
  if ((rc = cumem_open(&cm, &o))) { tool_fail("open", rc); return 1; }
  cumem_device_info_t info;
  cumem_device_info(cm, 0, &info);
  int on_gpu = !strcmp(cumem_backend_name(cm), "cuda");
  size_t wbytes = a->weights ? a->weights : on_gpu ? 16 * GiB : GiB / 4;
  size_t kbytes = a->kv ? a->kv : 2 * wbytes;
  char b1[32], b2[32], msg[200];
  workload_t w = {0}, kv = {0};
  snprintf(msg, sizeof msg, "allocating %s of weights and %s of KV cache on %s", fmt_bytes(wbytes, b1),
           fmt_bytes(kbytes, b2), info.name);
  progress(a, msg);
  rc = workload_alloc_weights(cm, &w, wbytes, "weights");
  if (!rc) rc = workload_alloc_kv(cm, &kv, kbytes, "kv_cache");
  if (!rc) rc = set_skip(cm, "weights", 0); /* plain copies, whatever the default; the skip rows turn it on */
  if (rc) { tool_fail("allocate", rc); goto out; }
  progress(a, "filling the weights with a known pattern");
  if ((rc = workload_fill(cm, &w, 1))) { tool_fail("fill", rc); goto out; }
  cumem_stats_t s;
  cumem_stats(cm, "weights", &s);
  size_t moved = s.bytes_allocated; /* what sleep copies: rounded sizes */

  const char *W[] = {"weights", NULL}, *K[] = {"kv_cache", NULL};
  double t, cold, first_wake;
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
  double plain_warm = median(sl, rounds); /* what the skip rows compare with */
  add_row("warm sleep (median)", moved, plain_warm, link.d2h);
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

  /* Skipping unchanged copy chunks: GB/s are effective (bytes put to sleep
   * per second), so they can exceed the link. */
  skip_result_t sk;
  if ((rc = bench_skip(a, cm, &w, o.copy_chunk, moved, &sk))) { tool_fail("skip unchanged", rc); goto out; }
  verified = verified && sk.verified;
  add_row("skip: first sleep, fingerprints recorded", moved, sk.record, link.d2h);
  add_row("skip: sleep, weights unchanged (median)", moved, sk.unchanged, link.d2h);
  add_row("skip: sleep, 1% of chunks changed (median)", moved, sk.one_percent, link.d2h);
  add_row("skip: sleep, every chunk changed (median)", moved, sk.everything, link.d2h);

  /* Retention off: after the wake, the backup's host memory is gone. */
  progress(a, "retention off: host memory held after wake");
  cumem_close(cm);
  cm = NULL;
  workload_free(NULL, &w); /* the instance freed the memory */
  workload_free(NULL, &kv);
  o.retain_backup = 0;
  if ((rc = cumem_open(&cm, &o))) { tool_fail("open", rc); goto out; }
  if ((rc = workload_alloc_weights(cm, &w, wbytes, "weights"))) { tool_fail("allocate", rc); goto out; }
  if ((rc = workload_fill(cm, &w, 2))) { tool_fail("fill", rc); goto out; }
  /* Pinning ahead of time (right after loading), then the first sleep. */
  progress(a, "backup prepared ahead, then the first sleep");
  TIMED(t, cumem_prepare_backup(cm, W));
  if (rc) { tool_fail("prepare backup", rc); goto out; }
  add_row("prepare backup ahead (pin only, no copy)", moved, t, link.d2h);
  size_t rss_before = rss_bytes();
  TIMED(t, cumem_sleep(cm, NULL, W));
  if (rc) { tool_fail("sleep", rc); goto out; }
  add_row("first sleep after prepare", moved, t, link.d2h);
  size_t rss_asleep = rss_bytes();
  if ((rc = cumem_wake(cm, NULL))) { tool_fail("wake", rc); goto out; }
  size_t rss_after = rss_bytes();
  if ((rc = workload_check(cm, &w, 2, &bad))) { tool_fail("verify", rc); goto out; }
  verified = verified && bad == 0;
  double held = rss_after > rss_before ? (double)(rss_after - rss_before) : 0;

  if (a->json) {
    printf("{\n  \"device\": \"%s\", \"backend\": \"%s\", \"weights_bytes\": %zu, \"kv_bytes\": %zu,\n",
           info.name, cumem_backend_name(cm), moved, kv_bytes);
    printf("  \"link_d2h_gbps\": %.2f, \"link_h2d_gbps\": %.2f, \"fingerprint_gbps\": %.2f,\n  \"steps\": [\n",
           link.d2h, link.h2d, link.fingerprint);
    for (int i = 0; i < nrows; i++) {
      double gbps = rows[i].bytes ? (double)rows[i].bytes / rows[i].seconds / 1e9 : 0;
      printf("    {\"step\": \"%s\", \"seconds\": %.6f, \"gbps\": %.2f, \"percent_of_link\": %.1f}%s\n",
             rows[i].step, rows[i].seconds, gbps, rows[i].link ? 100 * gbps / rows[i].link : 0,
             i + 1 < nrows ? "," : "");
    }
    printf("  ],\n  \"skip\": {\"copy_chunks\": %zu, \"changed_chunks_1pct\": %zu, \"bytes_copied_1pct\": %zu, "
           "\"unchanged_s\": %.6f, \"one_percent_s\": %.6f, \"every_chunk_s\": %.6f, \"plain_warm_s\": %.6f, "
           "\"every_chunk_over_plain\": %.4f},\n",
           sk.chunks, sk.changed, sk.copied_one_percent, sk.unchanged, sk.one_percent, sk.everything, plain_warm,
           sk.everything / plain_warm);
    printf("  \"rss_held_after_wake_retention_off_bytes\": %.0f, \"rss_asleep_bytes\": %zu,\n", held,
           rss_asleep);
    printf("  \"verified\": %s\n}\n", verified ? "true" : "false");
  } else {
    printf("\ncumem bench on %s (%s backend)\n", info.name, cumem_backend_name(cm));
    printf("weights %s (offloaded), KV cache %s (discarded)\n", fmt_bytes(moved, b1), fmt_bytes(kv_bytes, b2));
    printf("link (pinned, 256 MiB copies): device->host %.1f GB/s, host->device %.1f GB/s\n", link.d2h,
           link.h2d);
    printf("fingerprint on the device (2 GiB in 64 MiB chunks): %.1f GB/s\n\n", link.fingerprint);
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
    printf("\nskip unchanged (%zu copy chunks of %s): unchanged %.1f ms (target <= 30), 1%% changed %.1f ms "
           "(%zu chunks, %s copied; target <= 40), every chunk changed %.1f ms = %.3f x the plain warm sleep "
           "(target <= 1.05; on by default if <= 1.02)\n",
           sk.chunks, fmt_bytes(o.copy_chunk, b1), sk.unchanged * 1e3, sk.one_percent * 1e3, sk.changed,
           fmt_bytes(sk.copied_one_percent, b2), sk.everything * 1e3, sk.everything / plain_warm);
    printf("retention off: host memory held after wake: %s (%.2f%% of the %s backup)\n",
           fmt_bytes((size_t)held, b1), 100 * held / (double)moved, fmt_bytes(moved, b2));
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
