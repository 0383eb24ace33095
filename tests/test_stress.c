/* Model-checked stress test: random sequences of alloc, free, write, read,
 * sleep (random offload sets), wake (random tag sets), prepare/release of
 * backups, the seed ABI calls, figures and bad input, checked against the
 * reference model of tests/fuzz/api_model.h after every operation.
 *
 *   single   one thread, the full model: every figure of cumem_stats per tag,
 *            cumem_backend_counters and (host backend) the device's free
 *            memory are checked after every operation, and random failures
 *            are injected with the fault backend (one-shot and persistent).
 *            Runs in episodes of 400 operations, each with fresh options
 *            (chunking, copy segments, zero-on-wake, retention).
 *   threads  several threads on one instance. Each thread owns its tags and
 *            allocations, so its content and per-tag figures stay exact while
 *            the others run; now and then a thread takes a test-wide write
 *            lock and sleeps/wakes across every thread's tags, then checks
 *            every model plus the backend counters and device memory.
 *
 * Replay: the seed is printed. CUMEM_STRESS_SEED=<n> (or "random") sets it,
 * CUMEM_STRESS_OPS the number of operations per mode, CUMEM_STRESS_MODE
 * single|threads|all, CUMEM_STRESS_THREADS the threads, CUMEM_STRESS_SECONDS
 * a time limit per mode (a limit hit is reported, not a failure). A failing
 * single-thread episode prints the command that replays exactly it; with
 * CUMEM_STRESS_DUMP=<dir> it is also written as a fuzz input that
 * tests/fuzz/fuzz_replay replays (put it in tests/fuzz/regressions/).
 *
 * On the host backend the emulated machine is set here: 4 KiB granularity
 * (many small allocations), two devices, 1 MiB each in single mode (running
 * out of device memory is frequent, and predicted exactly by the model). */
#define _GNU_SOURCE /* pthread_rwlockattr_setkind_np */
#include "harness.h"
#include "fuzz/api_model.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <time.h>

#define EPISODE_OPS 400

static long env_long(const char *name, long fallback) {
  const char *s = getenv(name);
  return s && *s ? strtol(s, NULL, 0) : fallback;
}

static uint64_t base_seed(void) {
  static uint64_t seed;
  static int known;
  if (!known) {
    const char *s = getenv("CUMEM_STRESS_SEED");
    if (s && strcmp(s, "random") == 0) seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    else seed = s && *s ? strtoull(s, NULL, 0) : 20250611;
    known = 1;
  }
  return seed;
}

static int is_cuda(void) { return strcmp(test_backend(), "cuda") == 0; }

/* Write the choices of a failed episode as a fuzz input. */
static void dump_episode(const src_t *s, uint64_t seed) {
  const char *dir = getenv("CUMEM_STRESS_DUMP");
  if (!dir || !*dir || !s->rec) return;
  mkdir(dir, 0777);
  char path[4096];
  snprintf(path, sizeof path, "%s/stress-%llu.bin", dir, (unsigned long long)seed);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(s->rec, 1, s->rec_n, f) != s->rec_n) fprintf(stderr, "  cannot write %s\n", path);
  else fprintf(stderr, "  choices written to %s (replay: fuzz_replay %s)\n", path, path);
  if (f) fclose(f);
}

/* ---- single: one thread, full model, fault injection ---------------------- */

TEST(single_thread_full_model_with_faults) {
  long ops = env_long("CUMEM_STRESS_OPS", is_cuda() ? 1200 : 8000);
  double limit = (double)env_long("CUMEM_STRESS_SECONDS", 120), t0 = now_s();
  uint64_t seed = base_seed();
  printf("  single: seed %llu, %ld operations in episodes of %d\n", (unsigned long long)seed, ops, EPISODE_OPS);
  fflush(stdout);
  long done = 0, faults = 0;
  for (uint64_t e = 0; done < ops; e++) {
    if (now_s() - t0 > limit) {
      printf("  single: time limit of %.0f s reached after %ld operations\n", limit, done);
      break;
    }
    /* Episode e replays alone as seed + e (same options, same choices). */
    src_t s;
    src_init_rng(&s, seed + e, getenv("CUMEM_STRESS_DUMP") != NULL);
    char name[80];
    snprintf(name, sizeof name, "single seed %llu", (unsigned long long)(seed + e));
    long n = ops - done < EPISODE_OPS ? ops - done : EPISODE_OPS;
    int rc = model_episode(&s, name, is_cuda(), n, &done, &faults);
    if (rc) {
      fprintf(stderr, "  replay exactly this episode: CUMEM_STRESS_MODE=single CUMEM_STRESS_SEED=%llu "
                      "CUMEM_STRESS_OPS=%ld CUMEM_TEST_BACKEND=%s ./test_stress\n",
              (unsigned long long)(seed + e), n, test_backend());
      dump_episode(&s, seed + e);
    }
    src_free(&s);
    CHECK(rc == 0);
  }
  printf("  single: %ld operations, %ld with an injected failure, %.2f s\n", done, faults, now_s() - t0);
}

/* ---- threads: own tags per thread, global sleep/wake under a write lock --- */

#define MAX_WORKERS 16

typedef struct worker worker_t;

typedef struct stress {
  cumem_t *cm;
  pthread_rwlock_t lock; /* read: one thread's own operations; write: global */
  worker_t *w;
  int nw;
  atomic_int failed;
  atomic_long global_ops;
  double deadline;
} stress_t;

struct worker {
  stress_t *st;
  model_t m;
  src_t src;
  char prefix[16], name[32];
  long ops;
  pthread_t th;
};

/* Sleep or wake across the tags of every thread, while no other operation
 * runs. Choices come from the calling worker's source. */
static void global_step(stress_t *st, worker_t *self) {
  src_t *s = &self->src;
  int wake = chance(s, 50), all = chance(s, 30);
  unsigned sel[MAX_WORKERS], off[MAX_WORKERS];
  const char *names[MAX_WORKERS * M_TAGS + 1], *offn[MAX_WORKERS * M_TAGS + 1];
  int k = 0, ko = 0;
  for (int i = 0; i < st->nw; i++) {
    model_t *m = &st->w[i].m;
    sel[i] = pick(s, 1u << M_TAGS);
    off[i] = pick(s, 1u << M_TAGS);
    for (int t = 0; t < M_TAGS; t++) {
      if (!m->known[t]) { /* naming an unused tag would be refused */
        sel[i] &= ~(1u << t);
        off[i] &= ~(1u << t);
      }
      if (sel[i] >> t & 1) names[k++] = m->tags[t];
      if (off[i] >> t & 1) offn[ko++] = m->tags[t];
    }
    if (all) sel[i] = (1u << M_TAGS) - 1;
  }
  names[k] = offn[ko] = NULL;
  int rc = wake ? cumem_wake(st->cm, all ? NULL : names) : cumem_sleep(st->cm, all ? NULL : names, offn);
  if (m_drain_after_wake(&self->m, wake, rc)) rc = -1; /* no faults here: giving back must work */
  atomic_fetch_add(&st->global_ops, 1);
  for (int i = 0; i < st->nw; i++) {
    model_t *m = &st->w[i].m;
    m->step++;
    mlog(m, "GLOBAL %s by %s over %d tags%s (offload %d tags) -> %d", wake ? "wake" : "sleep", self->name, k,
         all ? " (ALL)" : "", ko, rc);
    if (rc) {
      model_fail(m, "global %s failed: %d", wake ? "wake" : "sleep", rc);
      continue;
    }
    if (wake) m_apply_wake_ok(m, sel[i], 0, NULL);
    else m_apply_sleep_ok(m, sel[i], off[i], NULL);
  }
  /* Everything, now that nobody else runs: each model, and the world. */
  model_t *ms[MAX_WORKERS];
  for (int i = 0; i < st->nw; i++) {
    ms[i] = &st->w[i].m;
    model_check(ms[i]);
  }
  if (!self->m.failed) m_check_world(&self->m, ms, st->nw);
  for (int i = 0; i < st->nw; i++)
    if (ms[i]->failed) atomic_store(&st->failed, 1);
}

static void *worker_main(void *arg) {
  worker_t *w = arg;
  stress_t *st = w->st;
  cumem_set_current_tag(w->m.tags[w->m.cur]); /* thread-local */
  for (long i = 0; i < w->ops && !atomic_load(&st->failed); i++) {
    if (i % 64 == 0 && now_s() > st->deadline) break;
    int global = chance(&w->src, 3);
    if (global) {
      pthread_rwlock_wrlock(&st->lock);
      global_step(st, w);
    } else {
      pthread_rwlock_rdlock(&st->lock);
      model_step(&w->m);
      if (w->m.failed) atomic_store(&st->failed, 1);
    }
    pthread_rwlock_unlock(&st->lock);
  }
  return NULL;
}

TEST(threads_own_tags_and_global_sleep_wake) {
  long ops = env_long("CUMEM_STRESS_OPS", is_cuda() ? 1200 : 8000);
  int nw = (int)env_long("CUMEM_STRESS_THREADS", 4);
  if (nw < 1) nw = 1;
  if (nw > MAX_WORKERS) nw = MAX_WORKERS;
  double limit = (double)env_long("CUMEM_STRESS_SECONDS", 120), t0 = now_s();
  uint64_t seed = base_seed();
  printf("  threads: seed %llu, %d threads, %ld operations\n", (unsigned long long)seed, nw, ops);
  fflush(stdout);
  setenv("CUMEM_HOST_MEMORY_MB", "256", 1); /* no thread may run another out of memory */

  static stress_t st;
  static worker_t w[MAX_WORKERS];
  memset(&st, 0, sizeof st);
  st.w = w;
  st.nw = nw;
  st.deadline = t0 + limit;
  pthread_rwlockattr_t attr;
  pthread_rwlockattr_init(&attr);
  pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(&st.lock, &attr);
  pthread_rwlockattr_destroy(&attr);

  src_t opt_src;
  src_init_rng(&opt_src, seed ^ 0x7468726561647321ull, 0);
  cumem_options_t o;
  cumem_device_info_t info;
  cumem_backend_t *probe;
  CHECK_OK(test_backend_new(&probe));
  int rc = probe->device_info(probe, 0, &info);
  probe->destroy(probe);
  CHECK_OK(rc);
  model_pick_options(&opt_src, &o, info.granularity);
  CHECK_OK(test_open(&st.cm, NULL, &o));
  for (int i = 0; i < nw; i++) {
    memset(&w[i], 0, sizeof w[i]);
    w[i].st = &st;
    w[i].ops = ops / nw;
    snprintf(w[i].prefix, sizeof w[i].prefix, "t%d.", i);
    snprintf(w[i].name, sizeof w[i].name, "thread %d", i);
    uint64_t x = seed + (uint64_t)(i + 1);
    src_init_rng(&w[i].src, src_splitmix(&x), 0);
    CHECK_OK(model_init(&w[i].m, w[i].name, st.cm, NULL, &w[i].src, &o, 0, w[i].prefix));
  }
  cumem_set_current_tag(NULL); /* (model_init set this thread's) */
  for (int i = 0; i < nw; i++) CHECK(pthread_create(&w[i].th, NULL, worker_main, &w[i]) == 0);
  for (int i = 0; i < nw; i++) pthread_join(w[i].th, NULL);
  long total = 0;
  for (int i = 0; i < nw; i++) total += w[i].m.step;
  if (now_s() > st.deadline) printf("  threads: time limit of %.0f s reached\n", limit);

  int failed = atomic_load(&st.failed);
  if (!failed) {
    /* Everyone stopped: the world is exact again; then each thread's end. */
    model_t *ms[MAX_WORKERS];
    for (int i = 0; i < nw; i++) ms[i] = &w[i].m;
    m_check_world(ms[0], ms, nw);
    for (int i = 0; i < nw && !failed; i++) {
      model_finish(ms[i]);
      failed |= ms[i]->failed;
    }
  }
  if (failed)
    fprintf(stderr, "  replay: CUMEM_STRESS_MODE=threads CUMEM_STRESS_SEED=%llu CUMEM_STRESS_OPS=%ld "
                    "CUMEM_STRESS_THREADS=%d ./test_stress (thread interleaving varies)\n",
            (unsigned long long)seed, ops, nw);
  for (int i = 0; i < nw; i++) model_release(&w[i].m);
  if (!failed) CHECK(counters_zero(st.cm));
  CHECK_OK(cumem_close(st.cm));
  pthread_rwlock_destroy(&st.lock);
  printf("  threads: %ld operations (%ld global), %.2f s\n", total, atomic_load(&st.global_ops), now_s() - t0);
  CHECK(!failed);
}

/* ---- regressions the model found, as short deterministic tests ------------ */

static int fresh(cumem_t **cm, cumem_backend_t **fault) {
  cumem_options_t o;
  cumem_options_init(&o);
  o.skip_unchanged = 0; /* as in model_pick_options */
  return test_open(cm, fault, &o);
}

/* One transient unmap failure while a sleep releases an offloaded
 * allocation: it stays mapped with its backup complete. It must not be
 * reported awake and writable, or a write made now is lost: the retried
 * sleep does not copy it again and the wake restores the older backup. */
TEST(write_after_failed_sleep_is_not_lost) {
  cumem_t *cm;
  cumem_backend_t *f;
  CHECK_OK(fresh(&cm, &f));
  cumem_device_info_t info;
  CHECK_OK(cumem_device_info(cm, 0, &info));
  size_t n = info.granularity;
  void *a;
  CHECK_OK(cumem_alloc(cm, &a, n, 0, "w"));
  CHECK_OK(fill_pattern(cm, a, n, 1));
  const char *W[] = {"w", NULL};
  cumem_fault_arm(f, 1, "unmap", CUMEM_EDRIVER, 0);
  CHECK_RC(cumem_sleep(cm, W, W), CUMEM_EDRIVER);
  cumem_fault_arm(f, 0, NULL, 0, 0);
  int wrote = fill_pattern(cm, a, n, 2) == 0; /* refused, or kept */
  CHECK_OK(cumem_sleep(cm, W, W));
  CHECK_OK(cumem_wake(cm, W));
  CHECK(has_pattern(cm, a, n, wrote ? 2 : 1));
  CHECK_OK(cumem_free(cm, a));
  CHECK(counters_zero(cm));
  CHECK_OK(cumem_close(cm));
}

/* A free that fails half-way (here: the host backup cannot be unregistered)
 * leaves the allocation for a retry; until then every other call on its tag
 * must keep working, and its address range must not go to someone else. */
TEST(half_freed_allocation_leaves_its_tag_working) {
  for (long k = 1; k < 8; k++) {
    cumem_t *cm;
    cumem_backend_t *f;
    CHECK_OK(fresh(&cm, &f));
    cumem_device_info_t info;
    CHECK_OK(cumem_device_info(cm, 0, &info));
    size_t n = info.granularity;
    void *a, *b, *c = NULL;
    CHECK_OK(cumem_alloc(cm, &a, n, 0, "w"));
    CHECK_OK(cumem_alloc(cm, &b, n, 0, "w"));
    CHECK_OK(fill_pattern(cm, b, n, 2));
    const char *W[] = {"w", NULL};
    CHECK_OK(cumem_sleep(cm, W, W));
    cumem_fault_arm(f, k, NULL, CUMEM_EDRIVER, 0);
    int rc = cumem_free(cm, a);
    long injected = cumem_fault_injected(f);
    cumem_fault_arm(f, 0, NULL, 0, 0);
    if (rc) {
      CHECK_OK(cumem_alloc(cm, &c, n, 0, "other"));
      CHECK(c != a); /* a's range is still a's */
      CHECK_OK(cumem_wake(cm, W));
      CHECK(has_pattern(cm, b, n, 2));
      CHECK_OK(cumem_free(cm, a)); /* the retry completes */
      CHECK_OK(cumem_free(cm, c));
    }
    CHECK_OK(cumem_free(cm, b));
    CHECK(counters_zero(cm));
    CHECK_OK(cumem_close(cm));
    if (!injected) return;
  }
}

/* An allocation failing with a driver that keeps failing cannot undo
 * itself; what it leaves must still be given back (by a later allocation or
 * by cumem_close), never leak with nothing pointing at it. */
TEST(failed_allocation_leaks_nothing_even_if_its_undo_fails) {
  for (long k = 1; k < 8; k++) {
    cumem_t *cm;
    cumem_backend_t *f;
    CHECK_OK(fresh(&cm, &f));
    cumem_device_info_t info;
    CHECK_OK(cumem_device_info(cm, 0, &info));
    void *p = NULL, *q = NULL;
    cumem_fault_arm(f, k, NULL, CUMEM_EDRIVER, 1);
    int rc = cumem_alloc(cm, &p, 3 * info.granularity, 0, "x");
    cumem_fault_arm(f, 0, NULL, 0, 0);
    if (rc == 0) {
      CHECK_OK(cumem_free(cm, p));
      CHECK(counters_zero(cm));
      CHECK_OK(cumem_close(cm));
      return;
    }
    CHECK(p == NULL);
    cumem_stats_t s;
    CHECK_OK(cumem_stats(cm, NULL, &s));
    CHECK(s.allocations == 0 && s.bytes_allocated == 0);
    CHECK_OK(cumem_alloc(cm, &q, info.granularity, 0, "y")); /* retries the leftovers */
    CHECK_OK(cumem_free(cm, q));
    CHECK(counters_zero(cm));
    CHECK_OK(cumem_close(cm));
  }
}

int main(void) {
  /* The emulated machine (host backend); see the top of tests/fuzz/api_model.h. */
  if (!is_cuda()) model_host_env();
  const char *mode = getenv("CUMEM_STRESS_MODE");
  static const test_case_t single[] = {T(single_thread_full_model_with_faults)};
  static const test_case_t threads[] = {T(threads_own_tags_and_global_sleep_wake)};
  static const test_case_t all[] = {
      T(write_after_failed_sleep_is_not_lost),
      T(half_freed_allocation_leaves_its_tag_working),
      T(failed_allocation_leaks_nothing_even_if_its_undo_fails),
      T(single_thread_full_model_with_faults),
      T(threads_own_tags_and_global_sleep_wake),
  };
  if (mode && strcmp(mode, "single") == 0) return run_tests("stress", single, 1);
  if (mode && strcmp(mode, "threads") == 0) return run_tests("stress", threads, 1);
  return run_tests("stress", all, sizeof all / sizeof all[0]);
}
