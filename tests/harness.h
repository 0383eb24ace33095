/* A small test harness (in the spirit of mimalloc's): CHECK macros, a list of
 * test functions, a summary line, and the backend every test runs on.
 *
 * Every test program runs on the backend named by CUMEM_TEST_BACKEND (host by
 * default). When that is "cuda" and no GPU answers, the program prints
 * "skipped" and exits 77, which CTest reports as skipped, never as passed. */
#ifndef CUMEM_TEST_HARNESS_H
#define CUMEM_TEST_HARNESS_H

#include "cumem.h"
#include "cumem_backend.h"
#include "cumem_testing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int harness_failures;

#define CHECK(cond)                                                                   \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      fprintf(stderr, "  FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);             \
      harness_failures++;                                                             \
      return;                                                                         \
    }                                                                                 \
  } while (0)

/* A cumem call expected to return `want`. */
#define CHECK_RC(call, want)                                                          \
  do {                                                                                \
    int rc_ = (call);                                                                 \
    if (rc_ != (want)) {                                                              \
      fprintf(stderr, "  FAILED %s:%d: %s returned %d (%s), expected %d; detail: %s\n", \
              __FILE__, __LINE__, #call, rc_, cumem_strerror(rc_), (want),            \
              cumem_last_error());                                                    \
      harness_failures++;                                                             \
      return;                                                                         \
    }                                                                                 \
  } while (0)
#define CHECK_OK(call) CHECK_RC(call, CUMEM_OK)

typedef struct test_case {
  const char *name;
  void (*fn)(void);
} test_case_t;

static const char *test_backend(void) {
  const char *b = getenv("CUMEM_TEST_BACKEND");
  return b && *b ? b : "host";
}

/* A fresh backend of the kind under test, wrapped in the fault backend. */
static int test_backend_new(cumem_backend_t **fault) {
  cumem_backend_t *inner = NULL;
  int rc = cumem_backend_open(test_backend(), &inner);
  if (rc) return rc;
  return cumem_backend_fault(fault, inner);
}

/* An instance over a fault-wrapped backend; *fault may be NULL. */
static inline int test_open(cumem_t **cm, cumem_backend_t **fault, const cumem_options_t *opts) {
  cumem_backend_t *f;
  int rc = test_backend_new(&f);
  if (rc) return rc;
  if (fault) *fault = f;
  return cumem_open_backend(cm, opts, f);
}

/* The allocation granularity of cm's device 0 (0 if it cannot be read). */
static inline size_t granularity_of(cumem_t *cm) {
  cumem_device_info_t info;
  return cumem_device_info(cm, 0, &info) == 0 ? info.granularity : 0;
}

/* Seconds on the monotonic clock. */
static inline double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The device memory pattern used across tests: byte i of a buffer seeded s. */
static inline unsigned char pattern_byte(size_t i, unsigned seed) {
  uint64_t x = (uint64_t)i * 0x9E3779B97F4A7C15ull + seed * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return (unsigned char)(x ^ (x >> 8));
}

static inline int fill_pattern(cumem_t *cm, void *dev, size_t n, unsigned seed) {
  unsigned char *h = malloc(n);
  if (!h) return CUMEM_ENOHOST;
  for (size_t i = 0; i < n; i++) h[i] = pattern_byte(i, seed);
  int rc = cumem_copy_to_device(cm, dev, h, n);
  free(h);
  return rc;
}

/* 1 when dev holds the pattern, 0 when not (or when it cannot be read). */
static inline int has_pattern(cumem_t *cm, const void *dev, size_t n, unsigned seed) {
  unsigned char *h = malloc(n);
  if (!h) return 0;
  int ok = cumem_copy_to_host(cm, h, dev, n) == 0;
  for (size_t i = 0; ok && i < n; i++) ok = h[i] == pattern_byte(i, seed);
  free(h);
  return ok;
}

static inline int counters_zero(cumem_t *cm) {
  cumem_backend_counters_t c;
  if (cumem_backend_counters(cm, &c)) return 0;
  return !c.reservations && !c.handles && !c.mappings && !c.host_registrations && !c.streams && !c.events;
}

static inline int counters_equal(const cumem_backend_counters_t *a, const cumem_backend_counters_t *b) {
  return a->reservations == b->reservations && a->handles == b->handles && a->mappings == b->mappings &&
         a->host_registrations == b->host_registrations && a->streams == b->streams && a->events == b->events;
}

static int run_tests(const char *suite, const test_case_t *tests, size_t n) {
  cumem_backend_t *probe;
  int rc = test_backend_new(&probe);
  if (rc == CUMEM_ENODRIVER) {
    printf("%s on %s: skipped (%s)\n", suite, test_backend(), cumem_last_error());
    printf("0 passed, 0 failed, %zu skipped\n", n);
    return 77;
  }
  if (rc) {
    printf("%s: cannot create backend %s: %s\n", suite, test_backend(), cumem_last_error());
    return 1;
  }
  /* The probe stays alive across the tests: on cuda it keeps the primary
   * context retained, so instances opened by each test do not re-create it. */
  int passed = 0, failed = 0;
  for (size_t i = 0; i < n; i++) {
    int before = harness_failures;
    printf("[ RUN  ] %s.%s (%s)\n", suite, tests[i].name, test_backend());
    fflush(stdout);
    double t0 = now_s();
    tests[i].fn();
    double took = now_s() - t0; /* where a slow suite spends its time */
    if (harness_failures == before) { passed++; printf("[  OK  ] %s.%s (%.2f s)\n", suite, tests[i].name, took); }
    else { failed++; printf("[ FAIL ] %s.%s (%.2f s)\n", suite, tests[i].name, took); }
  }
  probe->destroy(probe);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}

#define TEST(name) static void name(void)
#define T(name) {#name, name}
#define RUN_TESTS(suite, ...)                                                \
  int main(void) {                                                          \
    static const test_case_t tests_[] = {__VA_ARGS__};                      \
    return run_tests(suite, tests_, sizeof tests_ / sizeof tests_[0]);      \
  }

#endif
