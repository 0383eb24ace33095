/* Many threads at once: allocations, frees, figures and data access from
 * workers while another thread keeps sleeping (with backup) and waking
 * everything. Every byte a worker wrote must read back intact. */
#include "harness.h"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#define WORKERS 4
#define ROUNDS 20

typedef struct shared {
  cumem_t *cm;
  size_t g;
  int stop;
  pthread_mutex_t mu;
  int errors;
} shared_t;

static void note_error(shared_t *s, const char *what, int rc) {
  pthread_mutex_lock(&s->mu);
  s->errors++;
  fprintf(stderr, "  thread error: %s: %s (%s)\n", what, cumem_strerror(rc), cumem_last_error());
  pthread_mutex_unlock(&s->mu);
}

/* Retry a data access that may meet the memory asleep (EINVAL) until the
 * sleeper wakes it again. */
static int until_awake(int (*fn)(cumem_t *, void *, size_t, unsigned), cumem_t *cm, void *p, size_t n,
                       unsigned seed) {
  for (;;) {
    int rc = fn(cm, p, n, seed);
    if (rc != CUMEM_EINVAL) return rc;
    sched_yield();
  }
}

static int do_fill(cumem_t *cm, void *p, size_t n, unsigned seed) { return fill_pattern(cm, p, n, seed); }

static int do_check(cumem_t *cm, void *p, size_t n, unsigned seed) {
  unsigned char *h = malloc(n);
  if (!h) return CUMEM_ENOHOST;
  int rc = cumem_copy_to_host(cm, h, p, n);
  for (size_t i = 0; !rc && i < n; i++)
    if (h[i] != pattern_byte(i, seed)) rc = CUMEM_EDRIVER; /* corrupted */
  free(h);
  return rc;
}

static void *worker(void *arg) {
  shared_t *s = arg;
  unsigned id = (unsigned)(uintptr_t)pthread_self();
  cumem_set_current_tag("w"); /* the tag the sleeper offloads */
  for (int r = 0; r < ROUNDS; r++) {
    void *p[3] = {0};
    size_t n[3];
    for (int i = 0; i < 3; i++) {
      n[i] = (size_t)(i + 1) * s->g - (size_t)r;
      int rc = cumem_alloc(s->cm, &p[i], n[i], 0, NULL);
      if (rc) { note_error(s, "alloc", rc); return NULL; }
      rc = until_awake(do_fill, s->cm, p[i], n[i], id + (unsigned)(r * 3 + i));
      if (rc) { note_error(s, "fill", rc); return NULL; }
    }
    cumem_stats_t st;
    int rc = cumem_stats(s->cm, "w", &st);
    if (rc) note_error(s, "stats", rc);
    for (int i = 0; i < 3; i++) {
      rc = until_awake(do_check, s->cm, p[i], n[i], id + (unsigned)(r * 3 + i));
      if (rc) note_error(s, "content check", rc);
      rc = cumem_free(s->cm, p[i]);
      if (rc) note_error(s, "free", rc);
    }
  }
  return NULL;
}

static void *sleeper(void *arg) {
  shared_t *s = arg;
  const char *W[] = {"w", NULL};
  while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
    int rc = cumem_sleep(s->cm, NULL, W);
    if (rc) note_error(s, "sleep", rc);
    sched_yield();
    rc = cumem_wake(s->cm, NULL);
    if (rc) note_error(s, "wake", rc);
    usleep(2000); /* let the workers get some work done while awake */
  }
  return NULL;
}

TEST(workers_and_sleeper_race_without_loss) {
  shared_t s = {0};
  pthread_mutex_init(&s.mu, NULL);
  cumem_options_t o;
  cumem_options_init(&o);
  o.host_threads = 2;
  CHECK_OK(test_open(&s.cm, NULL, &o));
  cumem_device_info_t info;
  CHECK_OK(cumem_device_info(s.cm, 0, &info));
  s.g = info.granularity;
  void *anchor; /* makes tag "w" known before the sleeper starts */
  CHECK_OK(cumem_alloc(s.cm, &anchor, s.g, 0, "w"));
  pthread_t t[WORKERS], sl;
  for (int i = 0; i < WORKERS; i++) CHECK(pthread_create(&t[i], NULL, worker, &s) == 0);
  CHECK(pthread_create(&sl, NULL, sleeper, &s) == 0);
  for (int i = 0; i < WORKERS; i++) pthread_join(t[i], NULL);
  __atomic_store_n(&s.stop, 1, __ATOMIC_RELEASE);
  pthread_join(sl, NULL);
  CHECK(s.errors == 0);
  CHECK_OK(cumem_wake(s.cm, NULL));
  CHECK_OK(cumem_free(s.cm, anchor));
  CHECK(counters_zero(s.cm));
  CHECK_OK(cumem_close(s.cm));
  pthread_mutex_destroy(&s.mu);
}

static void *opener(void *arg) {
  cumem_t **out = arg;
  cumem_default(out);
  return NULL;
}

TEST(default_instance_is_opened_once) {
  if (strcmp(test_backend(), "cuda") != 0) setenv("CUMEM_BACKEND", "host", 1);
  else setenv("CUMEM_BACKEND", "cuda", 1);
  cumem_t *got[8] = {0};
  pthread_t t[8];
  for (int i = 0; i < 8; i++) CHECK(pthread_create(&t[i], NULL, opener, &got[i]) == 0);
  for (int i = 0; i < 8; i++) pthread_join(t[i], NULL);
  for (int i = 0; i < 8; i++) CHECK(got[i] && got[i] == got[0]);
  CHECK(strcmp(cumem_backend_name(got[0]), test_backend()) == 0);
  CHECK_OK(cumem_close(got[0]));
}

RUN_TESTS("threads", T(workers_and_sleeper_race_without_loss), T(default_instance_is_opened_once))
