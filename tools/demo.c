/* `cumem demo`: the whole story in a few seconds. Allocate a model-shaped
 * workload (weights in one tag, a KV cache in another), fill it with a known
 * pattern, sleep with the weights offloaded and the cache discarded, show the
 * memory freed and the time of each step, wake, verify every byte of the
 * weights at the same addresses, and print a one-line verdict. */
#include "tool.h"

#include <stdio.h>
#include <string.h>

static size_t device_free(cumem_t *cm) {
  cumem_device_info_t info;
  return cumem_device_info(cm, 0, &info) == 0 ? info.free_bytes : 0;
}

int cmd_demo(const tool_args_t *a) {
  cumem_t *cm;
  if (tool_open(a, &cm)) return 1;
  int on_gpu = strcmp(cumem_backend_name(cm), "cuda") == 0;
  size_t wbytes = a->weights ? a->weights : on_gpu ? 2 * GiB : GiB / 4;
  size_t kbytes = a->kv ? a->kv : 2 * wbytes;
  cumem_device_info_t info;
  int rc = cumem_device_info(cm, 0, &info);
  if (rc) { tool_fail("device info", rc); cumem_close(cm); return 1; }
  char b1[32], b2[32], b3[32], b4[32];
  printf("cumem demo on the %s backend: %s (%s, %s granularity)\n", cumem_backend_name(cm), info.name,
         fmt_bytes(info.total_bytes, b1), fmt_bytes(info.granularity, b2));

  workload_t w = {0}, kv = {0};
  double t0 = now_seconds();
  rc = workload_alloc_weights(cm, &w, wbytes, "weights");
  if (!rc) rc = workload_alloc_kv(cm, &kv, kbytes, "kv_cache");
  if (rc) { tool_fail("allocate", rc); goto out; }
  double t1 = now_seconds();
  printf("  allocate  %s of weights in %zu tensors (tag \"weights\"), %s of KV cache in %zu blocks (tag \"kv_cache\")  %.3f s\n",
         fmt_bytes(w.total, b1), w.n, fmt_bytes(kv.total, b2), kv.n, t1 - t0);
  rc = workload_fill(cm, &w, 42);
  if (!rc) rc = workload_fill(cm, &kv, 43);
  if (rc) { tool_fail("fill", rc); goto out; }
  printf("  fill      every byte with a known pattern  %.3f s\n", now_seconds() - t1);

  size_t free_awake = device_free(cm);
  const char *offload[] = {"weights", NULL};
  t0 = now_seconds();
  rc = cumem_sleep(cm, NULL, offload);
  double t_sleep = now_seconds() - t0;
  if (rc) { tool_fail("sleep", rc); goto out; }
  size_t free_asleep = device_free(cm);
  cumem_stats_t s;
  cumem_stats(cm, NULL, &s);
  printf("  sleep     weights offloaded, cache discarded  %.3f s  (%.1f GB/s)\n", t_sleep,
         (double)s.bytes_backed_up / t_sleep / 1e9);
  printf("            device memory freed: %s (free %s -> %s); host backup: %s\n",
         fmt_bytes(free_asleep > free_awake ? free_asleep - free_awake : 0, b1), fmt_bytes(free_awake, b2),
         fmt_bytes(free_asleep, b3), fmt_bytes(s.bytes_backed_up, b4));

  t0 = now_seconds();
  rc = cumem_wake(cm, NULL);
  double t_wake = now_seconds() - t0;
  if (rc) { tool_fail("wake", rc); goto out; }
  printf("  wake      memory back at the same addresses, weights restored  %.3f s  (%.1f GB/s)\n", t_wake,
         (double)w.total / t_wake / 1e9);

  size_t bad = 0, moved = 0;
  t0 = now_seconds();
  rc = workload_check(cm, &w, 42, &bad);
  if (rc) { tool_fail("verify", rc); goto out; }
  for (size_t i = 0; i < w.n; i++) {
    cumem_alloc_info_t q;
    if (cumem_query(cm, w.ptr[i], &q) != 0 || q.ptr != w.ptr[i] || q.asleep) moved++;
  }
  printf("  verify    %s of weights read back and compared  %.3f s\n", fmt_bytes(w.total, b1),
         now_seconds() - t0);
  if (bad || moved) {
    printf("FAIL: %zu bytes differ, %zu tensors not at their address\n", bad, moved);
    rc = 1;
  } else {
    printf("PASS: %s freed during sleep; %s of weights restored bit-exact at the same %zu addresses\n",
           fmt_bytes(free_asleep > free_awake ? free_asleep - free_awake : 0, b1), fmt_bytes(w.total, b2),
           w.n);
  }
out:
  workload_free(cm, &w);
  workload_free(cm, &kv);
  cumem_close(cm);
  return rc ? 1 : 0;
}
