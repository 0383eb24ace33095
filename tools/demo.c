/* `cumem demo`: the whole story in a few seconds. Allocate a model-shaped
 * workload (weights in one tag, a KV cache in another), fill it with a known
 * pattern, sleep with the weights offloaded and the cache discarded, show the
 * memory freed and the time of each step, wake, verify every byte of the
 * weights at the same addresses, and print a one-line verdict (or, with
 * --json, one document with the same figures). */
#include "tool.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static size_t device_free(cumem_t *cm) {
  cumem_device_info_t info;
  return cumem_device_info(cm, 0, &info) == 0 ? info.free_bytes : 0;
}

/* A line of the story (text mode only). */
static void say(const tool_args_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(const tool_args_t *a, const char *fmt, ...) {
  if (a->json) return;
  tool_progress_done();
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  fflush(stdout);
}

/* What the demo measured, for the JSON document. */
typedef struct demo_figures {
  double allocate, fill, sleep, wake, verify; /* seconds; < 0: not reached */
  size_t freed, free_awake, free_asleep, backed_up;
  size_t weights_allocated, kv_allocated; /* rounded to the granularity */
  size_t bad_bytes, moved_tensors;
} demo_figures_t;

static void json_step(json_t *j, const char *step, double seconds, size_t bytes) {
  if (seconds < 0) return;
  json_object(j, NULL);
  json_string(j, "step", step);
  json_number(j, "seconds", seconds);
  if (bytes) json_number(j, "gbps", seconds > 0 ? (double)bytes / seconds / 1e9 : 0);
  json_end(j);
}

/* info is NULL when the device could not be read. */
static void demo_json(cumem_t *cm, const cumem_device_info_t *info, size_t wbytes, size_t kbytes,
                      const workload_t *w, const workload_t *kv, const demo_figures_t *f, int exit_code) {
  json_t j;
  tool_json_begin(&j, stdout, "demo");
  json_string(&j, "backend", cumem_backend_name(cm));
  json_string(&j, "device", info ? info->name : NULL);
  json_object(&j, "weights");
  json_string(&j, "tag", "weights");
  json_uint(&j, "requested_bytes", wbytes);
  json_uint(&j, "allocated_bytes", f->weights_allocated);
  json_uint(&j, "tensors", w->n);
  json_end(&j);
  json_object(&j, "kv_cache");
  json_string(&j, "tag", "kv_cache");
  json_uint(&j, "requested_bytes", kbytes);
  json_uint(&j, "allocated_bytes", f->kv_allocated);
  json_uint(&j, "blocks", kv->n);
  json_end(&j);
  json_array(&j, "steps");
  json_step(&j, "allocate", f->allocate, 0);
  json_step(&j, "fill", f->fill, 0);
  json_step(&j, "sleep", f->sleep, f->backed_up);
  json_step(&j, "wake", f->wake, f->backed_up);
  json_step(&j, "verify", f->verify, 0);
  json_end(&j);
  json_uint(&j, "device_free_awake_bytes", f->free_awake);
  json_uint(&j, "device_free_asleep_bytes", f->free_asleep);
  json_uint(&j, "device_memory_freed_bytes", f->freed);
  json_uint(&j, "host_backup_bytes", f->backed_up);
  json_bool(&j, "verified", f->verify >= 0 && !f->bad_bytes && !f->moved_tensors);
  json_uint(&j, "bytes_differ", f->bad_bytes);
  json_uint(&j, "tensors_moved", f->moved_tensors);
  tool_json_end(&j, exit_code);
}

int cmd_demo(const tool_args_t *a) {
  cumem_t *cm;
  if (tool_open(a, "demo", &cm)) return TOOL_EXIT_FAILED;
  demo_figures_t f = {.allocate = -1, .fill = -1, .sleep = -1, .wake = -1, .verify = -1};
  int on_gpu = strcmp(cumem_backend_name(cm), "cuda") == 0;
  size_t wbytes = a->weights ? a->weights : on_gpu ? 2 * GiB : GiB / 4;
  size_t kbytes = a->kv ? a->kv : 2 * wbytes;
  workload_t w = {0}, kv = {0};
  char b1[32], b2[32], b3[32], b4[32];
  int exit_code = TOOL_EXIT_FAILED;
  cumem_device_info_t info;
  int rc = cumem_device_info(cm, 0, &info);
  int have_info = rc == 0;
  if (rc) { tool_fail("device info", rc); goto out; }
  say(a, "cumem demo on the %s backend: %s (%s, %s granularity)\n", cumem_backend_name(cm), info.name,
      fmt_bytes(info.total_bytes, b1), fmt_bytes(info.granularity, b2));

  double t0 = now_seconds();
  tool_progress("allocating %s of weights and %s of KV cache", fmt_bytes(wbytes, b1), fmt_bytes(kbytes, b2));
  rc = workload_alloc_weights(cm, &w, wbytes, "weights");
  if (!rc) rc = workload_alloc_kv(cm, &kv, kbytes, "kv_cache");
  if (rc) { tool_fail("allocate", rc); goto out; }
  double t1 = now_seconds();
  f.allocate = t1 - t0;
  cumem_stats_t s;
  if (!(rc = cumem_stats(cm, "weights", &s))) f.weights_allocated = s.bytes_allocated;
  if (!rc && !(rc = cumem_stats(cm, "kv_cache", &s))) f.kv_allocated = s.bytes_allocated;
  if (rc) { tool_fail("stats", rc); goto out; }
  say(a, "  allocate  %s of weights in %zu tensors (tag \"weights\"), %s of KV cache in %zu blocks (tag \"kv_cache\")  %.3f s\n",
      fmt_bytes(w.total, b1), w.n, fmt_bytes(kv.total, b2), kv.n, f.allocate);
  tool_progress("filling the weights and the cache with a known pattern");
  rc = workload_fill(cm, &w, 42);
  if (!rc) rc = workload_fill(cm, &kv, 43);
  if (rc) { tool_fail("fill", rc); goto out; }
  f.fill = now_seconds() - t1;
  say(a, "  fill      every byte with a known pattern  %.3f s\n", f.fill);

  f.free_awake = device_free(cm);
  const char *offload[] = {"weights", NULL};
  tool_progress("sleeping");
  t0 = now_seconds();
  rc = cumem_sleep(cm, NULL, offload);
  if (rc) { tool_fail("sleep", rc); goto out; }
  f.sleep = now_seconds() - t0;
  f.free_asleep = device_free(cm);
  f.freed = f.free_asleep > f.free_awake ? f.free_asleep - f.free_awake : 0;
  if ((rc = cumem_stats(cm, NULL, &s))) { tool_fail("stats", rc); goto out; }
  f.backed_up = s.bytes_backed_up;
  say(a, "  sleep     weights offloaded, cache discarded  %.3f s  (%.1f GB/s)\n", f.sleep,
      (double)s.bytes_backed_up / f.sleep / 1e9);
  say(a, "            device memory freed: %s (free %s -> %s); host backup: %s\n", fmt_bytes(f.freed, b1),
      fmt_bytes(f.free_awake, b2), fmt_bytes(f.free_asleep, b3), fmt_bytes(s.bytes_backed_up, b4));

  tool_progress("waking");
  t0 = now_seconds();
  rc = cumem_wake(cm, NULL);
  if (rc) { tool_fail("wake", rc); goto out; }
  f.wake = now_seconds() - t0;
  say(a, "  wake      memory back at the same addresses, weights restored  %.3f s  (%.1f GB/s)\n", f.wake,
      (double)f.backed_up / f.wake / 1e9);

  tool_progress("verifying the weights");
  t0 = now_seconds();
  rc = workload_check(cm, &w, 42, &f.bad_bytes);
  if (rc) { tool_fail("verify", rc); goto out; }
  for (size_t i = 0; i < w.n; i++) {
    cumem_alloc_info_t q;
    if (cumem_query(cm, w.ptr[i], &q) != 0 || q.ptr != w.ptr[i] || q.asleep) f.moved_tensors++;
  }
  f.verify = now_seconds() - t0;
  say(a, "  verify    %s of weights read back and compared  %.3f s\n", fmt_bytes(w.total, b1), f.verify);
  if (f.bad_bytes || f.moved_tensors) {
    say(a, "FAIL: %zu bytes differ, %zu tensors not at their address\n", f.bad_bytes, f.moved_tensors);
    exit_code = TOOL_EXIT_MISMATCH;
  } else {
    say(a, "PASS: %s freed during sleep; %s of weights restored bit-exact at the same %zu addresses\n",
        fmt_bytes(f.freed, b1), fmt_bytes(w.total, b2), w.n);
    exit_code = TOOL_EXIT_OK;
  }
out:
  tool_progress_done();
  if (a->json) demo_json(cm, have_info ? &info : NULL, wbytes, kbytes, &w, &kv, &f, exit_code);
  workload_free(cm, &w);
  workload_free(cm, &kv);
  cumem_close(cm);
  return exit_code;
}
