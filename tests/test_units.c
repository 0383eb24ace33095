/* Internal pieces on their own: sizes with units (src/units.c),
 * table-driven: what is accepted, what each refusal says, and that nothing
 * wraps or saturates; the worker pool (src/pool.c). */
#include "harness.h"
#include "../src/internal.h"
#include "../src/pool.h"

#include <sched.h>
#include <unistd.h>

#include <stdint.h>

#define MiB ((size_t)1 << 20)

static const struct {
  const char *text;
  size_t unit; /* the caller's default unit */
  int ok;
  size_t bytes;
} cases[] = {
    {"512M", MiB, 1, 512 * MiB},
    {"16G", 1, 1, (size_t)16 << 30},
    {"1.5GiB", 1, 1, (size_t)3 << 29},
    {"2kb", 1, 1, 2048},
    {"4096", 1, 1, 4096},
    {"64", MiB, 1, 64 * MiB},
    {"1.5", MiB, 1, 3 * MiB / 2},
    {".5M", 1, 1, MiB / 2},
    {"0", MiB, 1, 0},
    {"0.0000001", 1, 1, 0}, /* rounds down: callers refuse 0 where it is no size */
    {"1T", 1, 1, (size_t)1 << 40},
    {"18446744073709551615", 1, 1, SIZE_MAX},
    {"18446744073709551615", MiB, 0, 0}, /* times MiB: overflow, not a wrap */
    {"18446744073709551616", 1, 0, 0},
    {"99999999999999999999", MiB, 0, 0},
    {"17179869184G", 1, 0, 0},
    {"", 1, 0, 0},
    {"nan", 1, 0, 0},
    {"inf", 1, 0, 0},
    {"1e-30", 1, 0, 0},
    {"-1", 1, 0, 0},
    {"+1", 1, 0, 0},
    {" 1", 1, 0, 0},
    {"1 M", 1, 0, 0},
    {"1.", 1, 0, 0},
    {"2x", 1, 0, 0},
    {"0x10", 1, 0, 0},
};

TEST(sizes_parse_or_are_refused_with_a_reason) {
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    size_t v = 12345;
    const char *why = NULL;
    int rc = cumem__parse_size(cases[i].text, cases[i].unit, &v, &why);
    if (cases[i].ok) {
      if (rc != 0 || v != cases[i].bytes || why != NULL) {
        fprintf(stderr, "  \"%s\": rc %d, %zu bytes, want %zu\n", cases[i].text, rc, v, cases[i].bytes);
        CHECK(0);
      }
    } else {
      if (rc != CUMEM_EINVAL || v != 12345 || !why || !*why) {
        fprintf(stderr, "  \"%s\": rc %d, %zu bytes, expected a refusal\n", cases[i].text, rc, v);
        CHECK(0);
      }
    }
  }
}

/* ---- the worker pool ---- */

#define ITEMS 200

typedef struct work {
  int runs[ITEMS]; /* times each item ran */
  long fail_at;    /* the item that fails, or -1 */
} work_t;

static int task(void *ctx, size_t i) {
  work_t *w = ctx;
  if (i % 7 == 0) sched_yield(); /* shuffle the threads a little */
  __atomic_add_fetch(&w->runs[i], 1, __ATOMIC_RELAXED);
  if ((long)i == w->fail_at) return CUMEM_FAIL(CUMEM_EDRIVER, "item %zu failed", i);
  return 0;
}

TEST(pool_runs_every_item_once_and_waits_in_order) {
  for (int threads = 0; threads <= 5; threads++) {
    work_t w = {.fail_at = -1};
    cumem__pool_t p;
    CHECK_OK(cumem__pool_start(&p, task, &w, ITEMS, threads));
    for (size_t k = 0; k < ITEMS; k += 3) {
      CHECK_OK(cumem__pool_wait(&p, k));
      CHECK(__atomic_load_n(&w.runs[k], __ATOMIC_RELAXED) == 1); /* finished when wait returns */
    }
    CHECK_OK(cumem__pool_join(&p));
    for (size_t i = 0; i < ITEMS; i++) CHECK(w.runs[i] == 1);
  }
}

TEST(pool_stops_at_the_first_failure_and_reports_it) {
  for (int threads = 0; threads <= 4; threads++) {
    work_t w = {.fail_at = 50};
    cumem__pool_t p;
    CHECK_OK(cumem__pool_start(&p, task, &w, ITEMS, threads));
    int first = cumem__pool_wait(&p, 10); /* 0, or item 50's failure if that came first */
    int ran10 = w.runs[10];
    /* The caller helps with items no worker took yet, so it may run past 50
     * while a worker is still inside item 50: then nothing has failed yet
     * and the wait returns 0. On the caller alone it stops at 50. */
    int last = cumem__pool_wait(&p, ITEMS - 1);
    cumem_set_error(CUMEM_EINVAL, "here", 1, "something else"); /* join restores the cause */
    int joined = cumem__pool_join(&p); /* checked after the join: no worker outlives the test */
    CHECK(first == 0 || first == CUMEM_EDRIVER);
    CHECK(ran10 == 1);
    CHECK(last == CUMEM_EDRIVER || (threads > 0 && last == 0));
    CHECK_RC(joined, CUMEM_EDRIVER);
    CHECK(strstr(cumem_last_error(), "item 50 failed"));
    int ran = 0;
    for (size_t i = 0; i < ITEMS; i++) {
      CHECK(w.runs[i] <= 1);
      ran += w.runs[i];
    }
    CHECK(w.runs[50] == 1);
    if (threads == 0) CHECK(ran == 51); /* in order on this thread: none after the failure */
  }
}

TEST(pool_cancel_skips_what_was_not_taken) {
  work_t w = {.fail_at = -1};
  cumem__pool_t p;
  CHECK_OK(cumem__pool_start(&p, task, &w, ITEMS, 0)); /* no threads: nothing runs by itself */
  CHECK_OK(cumem__pool_wait(&p, 4));
  cumem__pool_cancel(&p);
  for (size_t i = 0; i < ITEMS; i++) CHECK(w.runs[i] == (i <= 4));
}

/* A gated pool runs only what was released (the disk tier releases a
 * piece once its buffer is filled). */
TEST(pool_gated_runs_only_released_items) {
  for (int threads = 0; threads <= 4; threads++) {
    work_t w = {.fail_at = -1};
    cumem__pool_t p;
    CHECK_OK(cumem__pool_start_gated(&p, task, &w, ITEMS, threads));
    for (size_t upto = 10; upto <= 100; upto += 10) {
      cumem__pool_release(&p, upto);
      if (upto % 20 == 0) CHECK_OK(cumem__pool_wait(&p, upto - 1));
      usleep(200);
      for (size_t i = upto; i < ITEMS; i++) CHECK(__atomic_load_n(&w.runs[i], __ATOMIC_RELAXED) == 0);
    }
    CHECK_OK(cumem__pool_wait(&p, 150)); /* waiting releases up to the item */
    for (size_t i = 151; i < ITEMS; i++) CHECK(__atomic_load_n(&w.runs[i], __ATOMIC_RELAXED) == 0);
    CHECK_OK(cumem__pool_join(&p)); /* releases the rest */
    for (size_t i = 0; i < ITEMS; i++) CHECK(w.runs[i] == 1);
  }
}

RUN_TESTS("units", T(sizes_parse_or_are_refused_with_a_reason), T(pool_runs_every_item_once_and_waits_in_order),
          T(pool_stops_at_the_first_failure_and_reports_it), T(pool_cancel_skips_what_was_not_taken),
          T(pool_gated_runs_only_released_items))
