/* The LD_PRELOAD interposer against a stand-in CUDA runtime (fake_cudart.c),
 * on the host backend. The program links the stand-in and libcumem.so.0 and
 * is run with LD_PRELOAD=libcumem_preload.so (by CTest, or by `cumem run`),
 * as a CUDA program would be: its cudaMalloc calls reach the interposer, and
 * it finds the interposer's region API with dlsym(RTLD_DEFAULT), as a C user
 * who does not link the interposer does.
 *
 *   test_preload regions         the switch is off: forwarding, regions,
 *                                nesting, frees, errors, counts, threads
 *   test_preload switch TAG      the switch is on and tags allocations TAG
 *   test_preload off             the switch is off (or was refused)
 *   test_preload trace           a fixed set of calls; CTest matches the
 *                                CUMEM_PRELOAD_TRACE summary printed at exit */
#define _GNU_SOURCE
#include "cumem_preload.h"
#include "harness.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>

/* The CUDA runtime and driver calls, declared as a program would see them. */
typedef int cudaError_t;
cudaError_t cudaMalloc(void **p, size_t n);
cudaError_t cudaMallocAsync(void **p, size_t n, void *stream);
cudaError_t cudaMallocPitch(void **p, size_t *pitch, size_t w, size_t h);
cudaError_t cudaFree(void *p);
cudaError_t cudaFreeAsync(void *p, void *stream);
cudaError_t cudaGetDriverEntryPointByVersion(const char *sym, void **fn, unsigned version,
                                             unsigned long long flags, int *status);
int cuMemAlloc_v2(unsigned long long *p, size_t n);
int cuMemFree_v2(unsigned long long p);
/* The stand-in's own. */
void fake_cudart_set_device(int d);
void *fake_cudart_stream(int d);
long fake_cudart_calls(const char *kind);
int fake_cudart_owns(const void *p);

#define MiB ((size_t)1 << 20)

/* The interposer's API, looked up in the process. */
static struct {
  int (*begin)(const char *, cumem_preload_region_t *);
  void (*end)(const cumem_preload_region_t *);
  void (*current)(cumem_preload_region_t *);
  void (*defaults)(cumem_preload_region_t *);
  int (*count)(const char *, cumem_preload_count_t *);
  unsigned long long (*entry_point_requests)(const char *);
} P;

static int load_interposer(void) {
  P.begin = (int (*)(const char *, cumem_preload_region_t *))dlsym(RTLD_DEFAULT, "cumem_preload_begin");
  P.end = (void (*)(const cumem_preload_region_t *))dlsym(RTLD_DEFAULT, "cumem_preload_end");
  P.current = (void (*)(cumem_preload_region_t *))dlsym(RTLD_DEFAULT, "cumem_preload_current");
  P.defaults = (void (*)(cumem_preload_region_t *))dlsym(RTLD_DEFAULT, "cumem_preload_default");
  P.count = (int (*)(const char *, cumem_preload_count_t *))dlsym(RTLD_DEFAULT, "cumem_preload_count");
  P.entry_point_requests =
      (unsigned long long (*)(const char *))dlsym(RTLD_DEFAULT, "cumem_preload_entry_point_requests");
  if (P.begin && P.end && P.current && P.defaults && P.count && P.entry_point_requests) return 0;
  fprintf(stderr, "test_preload: the interposer is not loaded; run with LD_PRELOAD=libcumem_preload.so\n");
  return -1;
}

static cumem_t *core(void) {
  cumem_t *cm = NULL;
  return cumem_default(&cm) == 0 ? cm : NULL;
}

static cumem_preload_count_t count_of(const char *fn) {
  cumem_preload_count_t c;
  memset(&c, 0, sizeof c);
  if (P.count(fn, &c)) c.calls = ~0ull;
  return c;
}

/* The tag cumem gave the allocation at p ("" if it is not cumem's). */
static const char *tag_of(const void *p) {
  static _Thread_local cumem_alloc_info_t info;
  return cumem_query(core(), p, &info) == 0 ? info.tag : "";
}

/* ---- with the switch off ---------------------------------------------------- */

TEST(outside_a_region_calls_go_to_the_real_runtime) {
  long mallocs = fake_cudart_calls("malloc"), frees = fake_cudart_calls("free");
  cumem_preload_count_t before = count_of("cudaMalloc");
  void *p = NULL;
  CHECK(cudaMalloc(&p, 1000) == 0);
  CHECK(fake_cudart_owns(p));
  CHECK(fake_cudart_calls("malloc") == mallocs + 1);
  cumem_alloc_info_t info;
  CHECK_RC(cumem_query(core(), p, &info), CUMEM_ENOTFOUND);
  CHECK(cudaFree(p) == 0);
  CHECK(fake_cudart_calls("free") == frees + 1);
  cumem_preload_count_t after = count_of("cudaMalloc");
  CHECK(after.calls == before.calls + 1 && after.forwarded == before.forwarded + 1);
  CHECK(after.forwarded_bytes == before.forwarded_bytes + 1000);
  CHECK(after.to_cumem == before.to_cumem && after.resolved == 1); /* RTLD_NEXT found it */
}

TEST(in_a_region_cudaMalloc_is_a_cumem_allocation_of_its_tag_and_device) {
  long mallocs = fake_cudart_calls("malloc"), frees = fake_cudart_calls("free");
  cumem_preload_region_t saved;
  CHECK_OK(P.begin("weights", &saved));
  void *a = NULL, *b = NULL;
  CHECK(cudaMalloc(&a, 3 * MiB) == 0);
  fake_cudart_set_device(1);
  int rc = cudaMalloc(&b, 5000);
  fake_cudart_set_device(0);
  P.end(&saved);
  CHECK(rc == 0);
  CHECK(fake_cudart_calls("malloc") == mallocs); /* the runtime never saw them */
  cumem_alloc_info_t info;
  CHECK_OK(cumem_query(core(), a, &info));
  CHECK(!strcmp(info.tag, "weights") && info.device == 0 && info.requested == 3 * MiB && info.ptr == a);
  CHECK_OK(cumem_query(core(), b, &info));
  CHECK(!strcmp(info.tag, "weights") && info.device == 1 && info.requested == 5000);
  CHECK(cudaFree(a) == 0 && cudaFree(b) == 0);
  CHECK(fake_cudart_calls("free") == frees); /* freed by cumem */
  CHECK_RC(cumem_query(core(), a, &info), CUMEM_ENOTFOUND);
}

TEST(region_memory_sleeps_and_wakes_bit_exact_through_the_c_api) {
  cumem_t *cm = core();
  CHECK(cm);
  cumem_preload_region_t saved;
  void *w = NULL, *kv = NULL;
  CHECK_OK(P.begin("tms+cpu:model", &saved));
  CHECK(cudaMalloc(&w, 4 * MiB + 123) == 0);
  CHECK_OK(P.begin("tms:kv", &(cumem_preload_region_t){0}));
  CHECK(cudaMalloc(&kv, 2 * MiB) == 0);
  P.end(&saved);
  CHECK_OK(fill_pattern(cm, w, 4 * MiB + 123, 7));
  const char *tags[] = {"tms+cpu:model", "tms:kv", NULL}, *offload[] = {"tms+cpu:model", NULL};
  CHECK_OK(cumem_sleep(cm, tags, offload));
  cumem_stats_t s;
  CHECK_OK(cumem_stats(cm, "tms+cpu:model", &s));
  CHECK(s.bytes_asleep == s.bytes_allocated && s.bytes_backed_up == s.bytes_allocated && s.allocations == 1);
  CHECK_OK(cumem_stats(cm, "tms:kv", &s));
  CHECK(s.bytes_asleep == 2 * MiB && s.bytes_backed_up == 0);
  CHECK_OK(cumem_wake(cm, tags));
  CHECK(has_pattern(cm, w, 4 * MiB + 123, 7));
  CHECK(cudaFree(w) == 0 && cudaFree(kv) == 0);
}

TEST(nested_regions_restore_the_outer_one) {
  cumem_preload_region_t outer, inner, off, now;
  void *a = NULL, *b = NULL, *c = NULL, *d = NULL;
  CHECK_OK(P.begin("outer", &outer));
  CHECK(cudaMalloc(&a, 4096) == 0);
  CHECK_OK(P.begin("inner", &inner));
  CHECK(cudaMalloc(&b, 4096) == 0);
  CHECK_OK(P.begin(NULL, &off)); /* torch_memory_saver's disable() */
  P.current(&now);
  CHECK(!now.enabled && !now.tag[0]);
  CHECK(cudaMalloc(&c, 4096) == 0);
  P.end(&off);
  P.current(&now);
  CHECK(now.enabled && !strcmp(now.tag, "inner"));
  P.end(&inner);
  CHECK(cudaMalloc(&d, 4096) == 0);
  P.end(&outer);
  P.current(&now);
  CHECK(!now.enabled);
  CHECK(!strcmp(tag_of(a), "outer") && !strcmp(tag_of(b), "inner") && !strcmp(tag_of(d), "outer"));
  CHECK(fake_cudart_owns(c) && !tag_of(c)[0]);
  CHECK(cudaFree(a) == 0 && cudaFree(b) == 0 && cudaFree(c) == 0 && cudaFree(d) == 0);
  CHECK(!fake_cudart_owns(c));
}

TEST(async_pitch_and_driver_allocations_follow_the_region) {
  cumem_preload_region_t saved;
  void *a = NULL, *p = NULL, *fa = NULL, *fp = NULL;
  size_t pitch = 0, fpitch = 0;
  unsigned long long d = 0, fd = 0;
  CHECK_OK(P.begin("mixed", &saved));
  int ra = cudaMallocAsync(&a, 10000, NULL);
  int rp = cudaMallocPitch(&p, &pitch, 1000, 3);
  int rd = cuMemAlloc_v2(&d, 777);
  P.end(&saved);
  CHECK(ra == 0 && rp == 0 && rd == 0);
  CHECK(pitch == 1024);
  cumem_alloc_info_t info;
  CHECK_OK(cumem_query(core(), p, &info));
  CHECK(info.requested == 3 * 1024 && !strcmp(info.tag, "mixed"));
  CHECK(!strcmp(tag_of(a), "mixed") && !strcmp(tag_of((void *)(uintptr_t)d), "mixed"));
  /* Outside the region the same calls reach the runtime. */
  CHECK(cudaMallocAsync(&fa, 100, NULL) == 0 && fake_cudart_owns(fa));
  CHECK(cudaMallocPitch(&fp, &fpitch, 10, 2) == 0 && fake_cudart_owns(fp) && fpitch == 512);
  CHECK(cuMemAlloc_v2(&fd, 10) == 0 && fake_cudart_owns((void *)(uintptr_t)fd));
  long frees = fake_cudart_calls("free");
  CHECK(cudaFreeAsync(a, NULL) == 0 && cudaFree(p) == 0 && cuMemFree_v2(d) == 0);
  CHECK(fake_cudart_calls("free") == frees);
  CHECK(cudaFreeAsync(fa, NULL) == 0 && cudaFree(fp) == 0 && cuMemFree_v2(fd) == 0);
  CHECK(fake_cudart_calls("free") == frees + 3);
  CHECK(count_of("cudaFreeAsync").to_cumem >= 1 && count_of("cuMemFree_v2").to_cumem >= 1);
}

/* cudaMallocAsync allocates on the stream's device, not the current one;
 * the default stream is the current device's. */
TEST(cudaMallocAsync_allocates_on_the_streams_device) {
  cumem_preload_region_t saved;
  void *on1 = NULL, *on0 = NULL, *dflt = NULL;
  CHECK_OK(P.begin("async", &saved));
  int r1 = cudaMallocAsync(&on1, 4096, fake_cudart_stream(1)); /* device 0 is current */
  fake_cudart_set_device(1);
  int r0 = cudaMallocAsync(&on0, 4096, fake_cudart_stream(0));
  int rd = cudaMallocAsync(&dflt, 4096, NULL);
  fake_cudart_set_device(0);
  P.end(&saved);
  CHECK(r1 == 0 && r0 == 0 && rd == 0);
  cumem_alloc_info_t info;
  CHECK_OK(cumem_query(core(), on1, &info));
  CHECK(info.device == 1 && !strcmp(info.tag, "async"));
  CHECK_OK(cumem_query(core(), on0, &info));
  CHECK(info.device == 0);
  CHECK_OK(cumem_query(core(), dflt, &info));
  CHECK(info.device == 1);
  CHECK(cudaFreeAsync(on1, fake_cudart_stream(1)) == 0 && cudaFreeAsync(on0, NULL) == 0 &&
        cudaFreeAsync(dflt, NULL) == 0);
}

TEST(cudaFree_hands_cumem_memory_to_cumem_and_the_rest_to_the_runtime) {
  cumem_preload_region_t saved;
  void *mine = NULL, *theirs = NULL;
  CHECK(cudaMalloc(&theirs, 64) == 0);
  CHECK_OK(P.begin("f", &saved));
  CHECK(cudaMalloc(&mine, 64) == 0);
  P.end(&saved);
  cumem_stats_t s;
  CHECK_OK(cumem_stats(core(), "f", &s));
  size_t live = s.allocations;
  long frees = fake_cudart_calls("free");
  /* Freed in the other order, outside any region: a free needs no region. */
  CHECK(cudaFree(theirs) == 0 && fake_cudart_calls("free") == frees + 1);
  CHECK(cudaFree(mine) == 0 && fake_cudart_calls("free") == frees + 1);
  CHECK_OK(cumem_stats(core(), "f", &s));
  CHECK(s.allocations == live - 1);
  CHECK(cudaFree(NULL) == 0 && fake_cudart_calls("free") == frees + 2); /* context creation */
  /* A second free of a cumem address is the runtime's to refuse. */
  CHECK(cudaFree(mine) == 1);
}

TEST(errors_return_codes_keep_the_detail_and_never_abort) {
  cumem_preload_region_t saved, now;
  void *p = (void *)1, *ok = NULL;
  CHECK_OK(P.begin("err", &saved));
  int rc = cudaMalloc(&p, (size_t)1 << 60);
  CHECK(rc == 2); /* cudaErrorMemoryAllocation */
  CHECK(p == NULL);
  char detail[512];
  snprintf(detail, sizeof detail, "%s", cumem_last_error());
  CHECK(detail[0]);
  CHECK(cuMemAlloc_v2((unsigned long long *)&ok, (size_t)1 << 60) == 2); /* CUDA_ERROR_OUT_OF_MEMORY */
  CHECK(cudaMalloc(NULL, 10) == 1);                                         /* cudaErrorInvalidValue */
  CHECK(cudaMalloc(&ok, 0) == 0 && ok == NULL); /* nothing to allocate: the runtime answers */
  P.end(&saved);
  /* Frees of foreign memory do not touch the thread's detail. */
  CHECK(cudaMalloc(&p, 16) == 0);
  (void)cumem_query(core(), (void *)16, &(cumem_alloc_info_t){0}); /* sets a fresh detail */
  snprintf(detail, sizeof detail, "%s", cumem_last_error());
  CHECK(cudaFree(p) == 0);
  CHECK(!strcmp(detail, cumem_last_error()));
  /* Bad tags change nothing. */
  char long_tag[CUMEM_TAG_MAX + 2];
  memset(long_tag, 'x', sizeof long_tag - 1);
  long_tag[sizeof long_tag - 1] = '\0';
  CHECK_RC(P.begin("", &saved), CUMEM_EINVAL);
  CHECK_RC(P.begin(long_tag, &saved), CUMEM_EINVAL);
  CHECK_RC(P.begin("t", NULL), CUMEM_EINVAL);
  P.current(&now);
  CHECK(!now.enabled);
  CHECK(count_of("cudaMalloc").failed >= 2);
}

TEST(counts_say_where_each_call_went) {
  cumem_preload_count_t m0 = count_of("cudaMalloc"), f0 = count_of("cudaFree");
  cumem_preload_region_t saved;
  void *a = NULL, *b = NULL, *c = NULL;
  CHECK(cudaMalloc(&a, 100) == 0);
  CHECK_OK(P.begin("counted", &saved));
  CHECK(cudaMalloc(&b, 3000) == 0);
  CHECK(cudaMalloc(&c, (size_t)1 << 60) == 2);
  P.end(&saved);
  CHECK(cudaFree(a) == 0 && cudaFree(b) == 0);
  cumem_preload_count_t m = count_of("cudaMalloc"), f = count_of("cudaFree");
  CHECK(m.calls - m0.calls == 3 && m.to_cumem - m0.to_cumem == 2 && m.forwarded - m0.forwarded == 1);
  CHECK(m.failed - m0.failed == 1 && m.cumem_bytes - m0.cumem_bytes == 3000);
  CHECK(m.forwarded_bytes - m0.forwarded_bytes == 100);
  CHECK(f.calls - f0.calls == 2 && f.to_cumem - f0.to_cumem == 1 && f.forwarded - f0.forwarded == 1);
  cumem_preload_count_t none;
  CHECK_RC(P.count("cudaMemcpy", &none), CUMEM_EINVAL);
  /* Driver entry points are counted by name and forwarded. */
  unsigned long long r0 = P.entry_point_requests("cuMemCreate");
  void *fn = NULL;
  int status = -1;
  CHECK(cudaGetDriverEntryPointByVersion("cuMemCreate", &fn, 12000, 0, &status) == 0);
  CHECK(fn != NULL && status == 0); /* the stand-in answered */
  CHECK(P.entry_point_requests("cuMemCreate") == r0 + 1 && P.entry_point_requests("cuMemMap") == 0);
}

static void *region_of_new_thread(void *out) {
  P.current(out);
  return NULL;
}

TEST(a_new_thread_starts_in_the_default_region_not_in_its_creators) {
  cumem_preload_region_t saved, seen, dflt;
  CHECK_OK(P.begin("creator", &saved));
  pthread_t t;
  CHECK(pthread_create(&t, NULL, region_of_new_thread, &seen) == 0);
  pthread_join(t, NULL);
  P.end(&saved);
  P.defaults(&dflt);
  CHECK(seen.enabled == dflt.enabled && !strcmp(seen.tag, dflt.tag));
  CHECK(strcmp(seen.tag, "creator") != 0);
}

/* Threads allocating in their own regions and outside them at once, freeing
 * in another order: every address goes back where it came from. */
enum { THREADS = 4, ROUNDS = 200 };
static void *churn(void *arg) {
  long id = (long)arg, bad = 0;
  char tag[16];
  snprintf(tag, sizeof tag, "churn%ld", id);
  void *mine[8] = {0}, *theirs[8] = {0};
  for (int r = 0; r < ROUNDS; r++) {
    int i = r % 8;
    if (mine[i] && cudaFree(mine[i])) bad++;
    if (theirs[i] && cudaFree(theirs[i])) bad++;
    cumem_preload_region_t saved;
    if (P.begin(tag, &saved)) bad++;
    if (cudaMalloc(&mine[i], 4096 + (size_t)r)) bad++;
    P.end(&saved);
    if (cudaMalloc(&theirs[i], 64)) bad++;
  }
  for (int i = 0; i < 8; i++) {
    if (mine[i] && cudaFree(mine[i])) bad++;
    if (theirs[i] && cudaFree(theirs[i])) bad++;
  }
  return (void *)bad;
}

TEST(threads_allocate_and_free_through_both_paths_at_once) {
  pthread_t t[THREADS];
  for (long i = 0; i < THREADS; i++) CHECK(pthread_create(&t[i], NULL, churn, (void *)i) == 0);
  long bad = 0;
  for (int i = 0; i < THREADS; i++) {
    void *r;
    pthread_join(t[i], &r);
    bad += (long)r;
  }
  CHECK(bad == 0);
  for (int i = 0; i < THREADS; i++) {
    char tag[16];
    snprintf(tag, sizeof tag, "churn%d", i);
    cumem_stats_t s;
    CHECK_OK(cumem_stats(core(), tag, &s));
    CHECK(s.allocations == 0);
  }
}

/* ---- with the switch on ----------------------------------------------------- */

static const char *switch_tag;

TEST(the_switch_makes_every_allocation_sleepable_from_the_start) {
  cumem_preload_region_t dflt, now, off, seen;
  P.defaults(&dflt);
  P.current(&now);
  CHECK(dflt.enabled && !strcmp(dflt.tag, switch_tag));
  CHECK(now.enabled && !strcmp(now.tag, switch_tag));
  long mallocs = fake_cudart_calls("malloc");
  void *p = NULL, *q = NULL;
  CHECK(cudaMalloc(&p, 3 * MiB) == 0);
  CHECK(fake_cudart_calls("malloc") == mallocs && !strcmp(tag_of(p), switch_tag));
  /* Other threads start in it too. */
  pthread_t t;
  CHECK(pthread_create(&t, NULL, region_of_new_thread, &seen) == 0);
  pthread_join(t, NULL);
  CHECK(seen.enabled && !strcmp(seen.tag, switch_tag));
  /* disable() still opts out, and the switch comes back after it. */
  CHECK_OK(P.begin(NULL, &off));
  CHECK(cudaMalloc(&q, 100) == 0 && fake_cudart_owns(q));
  P.end(&off);
  P.current(&now);
  CHECK(now.enabled && !strcmp(now.tag, switch_tag));
  /* The program's own C API reaches it: sleep, wake, same bytes. */
  cumem_t *cm = core();
  CHECK_OK(fill_pattern(cm, p, 3 * MiB, 11));
  const char *tags[] = {switch_tag, NULL};
  CHECK_OK(cumem_sleep(cm, tags, tags));
  cumem_stats_t s;
  CHECK_OK(cumem_stats(cm, switch_tag, &s));
  CHECK(s.bytes_mapped == 0 && s.bytes_backed_up == s.bytes_allocated);
  /* A "tms+disk:" tag was given the disk backup: the content is in files. */
  cumem_tag_options_t o;
  CHECK_OK(cumem_tag_get_options(cm, switch_tag, &o));
  int disk = !strncmp(switch_tag, CUMEM_PRELOAD_TAG_DISK, strlen(CUMEM_PRELOAD_TAG_DISK));
  CHECK(o.backup == (disk ? CUMEM_BACKUP_DISK : CUMEM_BACKUP_HOST));
  CHECK(s.bytes_on_disk == (disk ? s.bytes_allocated : 0));
  CHECK_OK(cumem_wake(cm, tags));
  CHECK(has_pattern(cm, p, 3 * MiB, 11));
  CHECK(cudaFree(p) == 0 && cudaFree(q) == 0);
}

TEST(the_switch_is_off) {
  cumem_preload_region_t dflt;
  P.defaults(&dflt);
  CHECK(!dflt.enabled && !dflt.tag[0]);
  void *p = NULL;
  CHECK(cudaMalloc(&p, 100) == 0 && fake_cudart_owns(p));
  CHECK(cudaFree(p) == 0);
}

/* ---- for the trace summary -------------------------------------------------- */

TEST(fixed_calls_for_the_trace) {
  cumem_preload_region_t saved;
  void *a = NULL, *b = NULL, *c = NULL;
  CHECK(cudaMalloc(&a, 100) == 0 && cudaMalloc(&b, 200) == 0);
  CHECK_OK(P.begin("traced", &saved));
  CHECK(cudaMalloc(&c, 4096) == 0);
  P.end(&saved);
  CHECK(cudaFree(a) == 0 && cudaFree(b) == 0 && cudaFree(c) == 0);
  void *fn;
  CHECK(cudaGetDriverEntryPointByVersion("cuMemCreate", &fn, 12000, 0, NULL) == 0);
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "regions";
  if (load_interposer()) return 1;
  if (!strcmp(mode, "regions")) {
    static const test_case_t tests[] = {
        T(outside_a_region_calls_go_to_the_real_runtime),
        T(in_a_region_cudaMalloc_is_a_cumem_allocation_of_its_tag_and_device),
        T(cudaMallocAsync_allocates_on_the_streams_device),
        T(region_memory_sleeps_and_wakes_bit_exact_through_the_c_api),
        T(nested_regions_restore_the_outer_one),
        T(async_pitch_and_driver_allocations_follow_the_region),
        T(cudaFree_hands_cumem_memory_to_cumem_and_the_rest_to_the_runtime),
        T(errors_return_codes_keep_the_detail_and_never_abort),
        T(counts_say_where_each_call_went),
        T(a_new_thread_starts_in_the_default_region_not_in_its_creators),
        T(threads_allocate_and_free_through_both_paths_at_once),
        T(the_switch_is_off),
    };
    return run_tests("preload", tests, sizeof tests / sizeof tests[0]);
  }
  if (!strcmp(mode, "switch") && argc > 2) {
    switch_tag = argv[2];
    static const test_case_t tests[] = {T(the_switch_makes_every_allocation_sleepable_from_the_start)};
    return run_tests("preload.switch", tests, 1);
  }
  if (!strcmp(mode, "off")) {
    static const test_case_t tests[] = {T(the_switch_is_off)};
    return run_tests("preload.off", tests, 1);
  }
  if (!strcmp(mode, "trace")) {
    static const test_case_t tests[] = {T(fixed_calls_for_the_trace)};
    return run_tests("preload.trace", tests, 1);
  }
  fprintf(stderr, "usage: test_preload regions | switch TAG | off | trace\n");
  return 2;
}
