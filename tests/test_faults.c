/* Fault injection, SQLite-style: for every k, fail the k-th backend call of an
 * operation (alloc, sleep, wake, free, prepare). Each time: the call reports
 * the error, the backend's live objects match the state the library reports
 * (nothing leaked), and a retry without faults succeeds with every byte
 * intact. The loop ends when an operation completes with no fault reached. */
#include "harness.h"

typedef struct world {
  cumem_t *cm;
  cumem_backend_t *fault;
  size_t g;
  void *w1, *w2, *kv;
  size_t n1, n2, nk;
} world_t;

/* Two chunked weight allocations (several copy segments each) and a cache. */
static int world_open(world_t *w) {
  memset(w, 0, sizeof *w);
  cumem_backend_t *probe;
  int rc = test_backend_new(&probe);
  if (rc) return rc;
  cumem_device_info_t info;
  rc = probe->device_info(probe, 0, &info);
  probe->destroy(probe);
  if (rc) return rc;
  w->g = info.granularity;
  cumem_options_t o;
  cumem_options_init(&o);
  o.chunk_size = 2 * w->g;
  o.copy_chunk = w->g;
  o.host_threads = 3;
  /* Skipping unchanged chunks off: these sweeps expect every injected fault
   * to fail its call, and a sleep whose fingerprinting fails copies
   * everything and succeeds instead. The skip path has its own fault sweeps
   * (test_skip.c). */
  o.skip_unchanged = 0;
  rc = test_open(&w->cm, &w->fault, &o);
  if (rc) return rc;
  w->n1 = 3 * w->g + 100;
  w->n2 = 2 * w->g;
  w->nk = 3 * w->g;
  if ((rc = cumem_alloc(w->cm, &w->w1, w->n1, 0, "weights")) ||
      (rc = cumem_alloc(w->cm, &w->w2, w->n2, 0, "weights")) ||
      (rc = cumem_alloc(w->cm, &w->kv, w->nk, 0, "kv")) ||
      (rc = fill_pattern(w->cm, w->w1, w->n1, 1)) || (rc = fill_pattern(w->cm, w->w2, w->n2, 2)) ||
      (rc = fill_pattern(w->cm, w->kv, w->nk, 3)))
    return rc;
  return 0;
}

static const char *WEIGHTS[] = {"weights", NULL};

static int weights_intact(world_t *w) {
  return has_pattern(w->cm, w->w1, w->n1, 1) && has_pattern(w->cm, w->w2, w->n2, 2);
}

/* The backend's live objects agree with the library's own figures. */
static int consistent(world_t *w) {
  cumem_backend_counters_t c;
  cumem_stats_t s;
  if (cumem_backend_counters(w->cm, &c) || cumem_stats(w->cm, NULL, &s)) return 0;
  return c.streams == 0 && c.events == 0 && (size_t)c.reservations == s.allocations &&
         c.handles >= c.mappings && (size_t)c.mappings * w->g * 2 >= s.bytes_mapped;
}

/* Close and check that everything was given back. */
static int world_close(world_t *w) {
  int ok = 1;
  void *ptrs[] = {w->w1, w->w2, w->kv};
  for (int i = 0; i < 3; i++)
    if (ptrs[i] && cumem_free(w->cm, ptrs[i]) != 0) ok = 0;
  ok = ok && counters_zero(w->cm);
  cumem_close(w->cm);
  return ok;
}

enum op { OP_SLEEP, OP_WAKE, OP_ALLOC, OP_FREE, OP_PREPARE };

/* Bring the world to the state before op. */
static int setup(world_t *w, enum op op) {
  if (op == OP_WAKE) return cumem_sleep(w->cm, NULL, WEIGHTS);
  return 0;
}

static int do_op(world_t *w, enum op op, void **extra) {
  switch (op) {
  case OP_SLEEP: return cumem_sleep(w->cm, NULL, WEIGHTS);
  case OP_WAKE: return cumem_wake(w->cm, NULL);
  case OP_ALLOC: return cumem_alloc(w->cm, extra, 3 * w->g, 0, "new");
  case OP_FREE: {
    int rc = cumem_free(w->cm, w->w2);
    if (!rc) w->w2 = NULL;
    return rc;
  }
  case OP_PREPARE: return cumem_prepare_backup(w->cm, WEIGHTS);
  }
  return CUMEM_EINVAL;
}

/* Fail the k-th call, for k = 1, 2, ... until the operation gets through.
 * persistent: fail every call from the k-th on (the retry is then the first
 * call after disarming). */
static void sweep(enum op op, const char *only, int persistent) {
  int reached_end = 0;
  for (long k = 1; k < 10000 && !reached_end; k++) {
    world_t w;
    CHECK_OK(world_open(&w));
    CHECK_OK(setup(&w, op));
    cumem_backend_counters_t before, after;
    CHECK_OK(cumem_backend_counters(w.cm, &before));
    void *extra = NULL;
    cumem_fault_arm(w.fault, k, only, CUMEM_EDRIVER, persistent);
    int rc = do_op(&w, op, &extra);
    long injected = cumem_fault_injected(w.fault);
    cumem_fault_arm(w.fault, 0, NULL, 0, 0);
    if (injected == 0) {
      CHECK_OK(rc);
      reached_end = 1;
    } else {
      if (rc == 0 && op != OP_WAKE && op != OP_SLEEP) {
        fprintf(stderr, "  op %d k=%ld: fault injected but call succeeded\n", op, k);
        CHECK(rc != 0);
      }
      if (rc) {
        CHECK(strstr(cumem_last_error(), "fault injected") != NULL);
        CHECK_OK(cumem_backend_counters(w.cm, &after));
        /* Undone exactly, unless the undo itself kept failing. */
        if (!persistent && (op == OP_ALLOC || op == OP_WAKE)) CHECK(counters_equal(&before, &after));
        CHECK(extra == NULL);
      }
      CHECK(consistent(&w));
      /* Retry without faults: it completes and nothing was lost. */
      CHECK_OK(do_op(&w, op, &extra));
    }
    if (op == OP_SLEEP || op == OP_WAKE) {
      CHECK_OK(cumem_wake(w.cm, NULL));
      CHECK(weights_intact(&w));
    } else if (op != OP_FREE) {
      CHECK(weights_intact(&w));
    }
    if (extra) CHECK_OK(cumem_free(w.cm, extra));
    CHECK(world_close(&w));
  }
  CHECK(reached_end);
}

TEST(every_failure_during_alloc) { sweep(OP_ALLOC, NULL, 0); }
TEST(every_failure_during_sleep) { sweep(OP_SLEEP, NULL, 0); }
TEST(every_failure_during_wake) { sweep(OP_WAKE, NULL, 0); }
TEST(every_failure_during_free) { sweep(OP_FREE, NULL, 0); }
TEST(every_failure_during_prepare) { sweep(OP_PREPARE, NULL, 0); }
TEST(persistent_failures_during_sleep) { sweep(OP_SLEEP, NULL, 1); }
TEST(persistent_failures_during_wake) { sweep(OP_WAKE, NULL, 1); }
TEST(out_of_memory_at_each_create_during_wake) { sweep(OP_WAKE, "create", 0); }
TEST(registration_failures_during_sleep) { sweep(OP_SLEEP, "host_register", 1); }

/* A failed sleep followed by a wake (not a second sleep) still restores:
 * what was released had its backup; what was not is still mapped. */
TEST(wake_after_failed_sleep_restores) {
  for (long k = 1; k < 200; k++) {
    world_t w;
    CHECK_OK(world_open(&w));
    cumem_fault_arm(w.fault, k, NULL, CUMEM_EDRIVER, 0);
    int rc = cumem_sleep(w.cm, NULL, WEIGHTS);
    long injected = cumem_fault_injected(w.fault);
    cumem_fault_arm(w.fault, 0, NULL, 0, 0);
    CHECK_OK(cumem_wake(w.cm, NULL));
    CHECK(weights_intact(&w));
    CHECK(world_close(&w));
    if (!injected) {
      CHECK_OK(rc);
      return;
    }
  }
  CHECK(!"sleep never completed");
}

RUN_TESTS("faults",
          T(every_failure_during_alloc),
          T(every_failure_during_sleep),
          T(every_failure_during_wake),
          T(every_failure_during_free),
          T(every_failure_during_prepare),
          T(persistent_failures_during_sleep),
          T(persistent_failures_during_wake),
          T(out_of_memory_at_each_create_during_wake),
          T(registration_failures_during_sleep),
          T(wake_after_failed_sleep_restores))
