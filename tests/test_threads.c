/* Many threads at once: allocations, frees, figures and data access from
 * workers while another thread keeps sleeping (with backup) and waking
 * everything. Every byte a worker wrote must read back intact. Also the
 * lock's promises (include/cumem.h): fair service while a thread sleeps and
 * wakes back to back, close refusing while others wait, and fork() while a
 * thread is inside sleep (issue 13, items 2-5). */
#include "harness.h"
#include "../src/core.h" /* cumem__lock_waiters, to order threads exactly */

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
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

/* ---- starvation (item 4) ----
 * One thread sleeps (with backup) and wakes back to back, never pausing;
 * workers poll cumem_stats and allocate and free a little, as a server's
 * threads do. With an unfair lock the cycler took the lock again before
 * any waiter ran: a stats call waited up to 14.8 s, and 8 workers made no
 * progress for 300 s. Here every worker must finish its calls; a watchdog
 * stops the cycler if one waits for 20 s, so that a starved worker fails the
 * test instead of hanging it. How many cycler calls overtook a worker's
 * call is printed (with FIFO service, about one: the race between reading
 * the counter and queueing; more when the machine preempts a worker in that
 * window, so it is not asserted here; the exact order is, below with the
 * gate). */
#define STARVE_WORKERS 4
#define STARVE_CALLS 60

typedef struct starve {
  cumem_t *cm;
  size_t g;
  atomic_int stop, workers_done, errors;
  atomic_long started, done;   /* cycler calls begun / ended */
  atomic_long worst_overtakes; /* most cycler calls overtaking one worker call */
  _Atomic double call_started[STARVE_WORKERS]; /* 0 when no call runs */
  _Atomic double worst_wait;
} starve_t;

static void atomic_max(_Atomic double *a, double v) {
  double old = atomic_load(a);
  while (v > old && !atomic_compare_exchange_weak(a, &old, v)) {}
}

static void *cycler(void *arg) {
  starve_t *s = arg;
  const char *W[] = {"c", NULL};
  for (long k = 0; !atomic_load(&s->stop); k++) {
    atomic_fetch_add(&s->started, 1);
    int rc = k % 2 == 0 ? cumem_sleep(s->cm, W, W) : cumem_wake(s->cm, W);
    atomic_fetch_add(&s->done, 1);
    if (rc) atomic_fetch_add(&s->errors, 1);
  }
  return NULL;
}

typedef struct starve_worker { starve_t *s; int id; } starve_worker_t;

static void *starve_worker(void *arg) {
  starve_worker_t *w = arg;
  starve_t *s = w->s;
  for (int i = 0; i < STARVE_CALLS && !atomic_load(&s->stop); i++) {
    cumem_stats_t st;
    void *p = NULL;
    for (int call = 0; call < 3; call++) {
      double t0 = now_s();
      long s0 = atomic_load(&s->started);
      atomic_store(&s->call_started[w->id], t0);
      int rc = call == 0 ? cumem_stats(s->cm, NULL, &st)
               : call == 1 ? cumem_alloc(s->cm, &p, s->g, 0, "w")
                           : cumem_free(s->cm, p);
      long overtakes = atomic_load(&s->done) - s0;
      atomic_store(&s->call_started[w->id], 0.0);
      atomic_max(&s->worst_wait, now_s() - t0);
      long worst = atomic_load(&s->worst_overtakes);
      while (overtakes > worst && !atomic_compare_exchange_weak(&s->worst_overtakes, &worst, overtakes)) {}
      if (rc) atomic_fetch_add(&s->errors, 1);
    }
    usleep(1000); /* a poller's pause: the cycler never pauses */
  }
  atomic_fetch_add(&s->workers_done, 1);
  return NULL;
}

TEST(workers_progress_while_a_thread_sleeps_and_wakes) {
  starve_t s;
  memset(&s, 0, sizeof s);
  cumem_options_t o;
  cumem_options_init(&o);
  o.host_threads = 1;
  o.release_threads = 1;
  CHECK_OK(test_open(&s.cm, NULL, &o));
  cumem_device_info_t info;
  CHECK_OK(cumem_device_info(s.cm, 0, &info));
  s.g = info.granularity;
  void *c = NULL;
  size_t csize = s.g; /* small: the cycler comes back for the lock at once */
  CHECK_OK(cumem_alloc(s.cm, &c, csize, 0, "c"));
  CHECK_OK(fill_pattern(s.cm, c, csize, 3));
  pthread_t cy, wt[STARVE_WORKERS];
  starve_worker_t wa[STARVE_WORKERS];
  CHECK(pthread_create(&cy, NULL, cycler, &s) == 0);
  while (atomic_load(&s.done) < 4) usleep(1000); /* the loop is running */
  for (int i = 0; i < STARVE_WORKERS; i++) {
    wa[i] = (starve_worker_t){&s, i};
    CHECK(pthread_create(&wt[i], NULL, starve_worker, &wa[i]) == 0);
  }
  double starved = 0;
  while (atomic_load(&s.workers_done) < STARVE_WORKERS && !starved) {
    usleep(10000);
    double t = now_s();
    for (int i = 0; i < STARVE_WORKERS; i++) {
      double started = atomic_load(&s.call_started[i]);
      if (started > 0 && t - started > 20) starved = t - started;
    }
  }
  atomic_store(&s.stop, 1); /* a starved worker gets the lock once the cycler stops */
  pthread_join(cy, NULL);
  for (int i = 0; i < STARVE_WORKERS; i++) pthread_join(wt[i], NULL);
  long worst = atomic_load(&s.worst_overtakes);
  printf("  %ld sleep/wake calls; a worker's call waited at most %.1f ms, overtaken by at most %ld of them\n",
         atomic_load(&s.done), atomic_load(&s.worst_wait) * 1e3, worst);
  if (starved) fprintf(stderr, "  a worker's call waited %.1f s\n", starved);
  CHECK(!starved);
  CHECK(atomic_load(&s.errors) == 0);
  CHECK_OK(cumem_wake(s.cm, NULL));
  CHECK(has_pattern(s.cm, c, csize, 3));
  CHECK_OK(cumem_free(s.cm, c));
  CHECK(counters_zero(s.cm));
  CHECK_OK(cumem_close(s.cm));
}

/* ---- gates in a backend: hold a call inside sleep, wake or close --------
 * The backend under test, with copy_to_host (gate 0: inside a sleep that
 * offloads), copy_to_device (gate 1: inside a wake that restores) and
 * synchronize (gate 2: inside close) held while armed: the call stops
 * there, holding the instance. */
typedef struct gate {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int armed;              /* bit k: gate k holds its calls */
  int inside[3], open[3];
  cumem_backend_t *inner;
} gate_t;

static gate_t gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, {0, 0, 0}, {0, 0, 0}, NULL};

static void gate_pass(int k) {
  pthread_mutex_lock(&gate.mu);
  if (gate.armed >> k & 1) {
    gate.inside[k] = 1;
    pthread_cond_broadcast(&gate.cv);
    while (!gate.open[k]) pthread_cond_wait(&gate.cv, &gate.mu);
  }
  pthread_mutex_unlock(&gate.mu);
}

static int gated_copy_to_host(cumem_backend_t *b, void *dst, uintptr_t src, size_t n, void *stream) {
  (void)b;
  gate_pass(0);
  return gate.inner->copy_to_host(gate.inner, dst, src, n, stream);
}

static int gated_copy_to_device(cumem_backend_t *b, uintptr_t dst, const void *src, size_t n, void *stream) {
  (void)b;
  gate_pass(1);
  return gate.inner->copy_to_device(gate.inner, dst, src, n, stream);
}

static int gated_synchronize(cumem_backend_t *b, int device) {
  (void)b;
  gate_pass(2);
  return gate.inner->synchronize(gate.inner, device);
}

static void gated_destroy(cumem_backend_t *b) {
  gate.inner->destroy(gate.inner);
  free(b);
}

/* An instance whose copies stop at the gates once armed, holding one
 * allocation of n bytes under tag "w", filled with pattern `seed`. */
static int open_gated(cumem_t **cm, void **p, size_t n, unsigned seed) {
  cumem_backend_t *inner = NULL;
  int rc = cumem_backend_open(test_backend(), &inner);
  if (rc) return rc;
  cumem_backend_t *b = malloc(sizeof *b);
  if (!b) {
    inner->destroy(inner);
    return CUMEM_ENOHOST;
  }
  *b = *inner; /* same state (b->self): every other call goes straight through */
  b->copy_to_host = gated_copy_to_host;
  b->copy_to_device = gated_copy_to_device;
  b->synchronize = gated_synchronize;
  b->destroy = gated_destroy;
  gate.inner = inner;
  gate.armed = 0;
  memset(gate.inside, 0, sizeof gate.inside);
  memset(gate.open, 0, sizeof gate.open);
  /* Every sleep copies (skipping unchanged chunks off): the copies are
   * where the gates stop a call. */
  cumem_options_t o;
  cumem_options_init(&o);
  o.skip_unchanged = 0;
  rc = cumem_open_backend(cm, &o, b);
  if (!rc) rc = cumem_alloc(*cm, p, n, 0, "w");
  if (!rc) rc = fill_pattern(*cm, *p, n, seed);
  return rc;
}

static void gate_wait_inside(int k) {
  pthread_mutex_lock(&gate.mu);
  while (!gate.inside[k]) pthread_cond_wait(&gate.cv, &gate.mu);
  pthread_mutex_unlock(&gate.mu);
}

static void gate_open(int k) {
  pthread_mutex_lock(&gate.mu);
  gate.open[k] = 1;
  pthread_cond_broadcast(&gate.cv);
  pthread_mutex_unlock(&gate.mu);
}

typedef struct call { cumem_t *cm; int rc; } call_t;

static void *sleep_offloading(void *arg) {
  call_t *c = arg;
  const char *W[] = {"w", NULL};
  c->rc = cumem_sleep(c->cm, NULL, W);
  return NULL;
}

static void *close_call(void *arg) {
  call_t *c = arg;
  c->rc = cumem_close(c->cm);
  return NULL;
}

static void wait_for_waiters(cumem_t *cm, unsigned long n) {
  while (cumem__lock_waiters(&cm->lock) < n) usleep(1000);
}

/* ---- the order of service, exactly (item 4) ----
 * A sleep holds the instance (at gate 0); a stats call queues behind it;
 * the sleep is let go and its thread calls wake at once, back to back. The
 * wake must be served after the waiting stats call: it is held at gate 1
 * once inside, so if it had gone first, holding the instance, the stats
 * call could not complete. With a plain mutex the sleeping thread took the
 * lock again before the waiter woke up, round after round. */
#define ORDER_ROUNDS 20

typedef struct order {
  cumem_t *cm;
  int errors;
} order_t;

static void *sleep_wake_rounds(void *arg) {
  order_t *o = arg;
  const char *W[] = {"w", NULL};
  for (int r = 0; r < ORDER_ROUNDS; r++) {
    if (cumem_sleep(o->cm, W, W) != 0) o->errors++;
    if (cumem_wake(o->cm, W) != 0) o->errors++; /* back to back */
  }
  return NULL;
}

/* cumem_stats(cm, NULL) on a thread of its own: rc, the figures, and a
 * flag that says it returned. */
typedef struct stats_call { cumem_t *cm; int rc; cumem_stats_t st; atomic_int done; } stats_call_t;

static void *stats_of_all(void *arg) {
  stats_call_t *c = arg;
  c->rc = cumem_stats(c->cm, NULL, &c->st);
  atomic_store(&c->done, 1);
  return NULL;
}

TEST(a_waiting_call_goes_before_the_next_sleep_or_wake) {
  cumem_t *cm = NULL;
  void *p;
  CHECK_OK(open_gated(&cm, &p, 2 << 20, 4));
  gate.armed = 3;
  order_t o = {cm, 0};
  pthread_t cy;
  CHECK(pthread_create(&cy, NULL, sleep_wake_rounds, &o) == 0);
  int overtaken = 0;
  for (int r = 0; r < ORDER_ROUNDS; r++) {
    gate_wait_inside(0); /* this round's sleep holds the instance */
    pthread_mutex_lock(&gate.mu);
    gate.inside[0] = 0;
    gate.open[1] = 0; /* this round's wake will stop at gate 1 */
    gate.inside[1] = 0;
    pthread_mutex_unlock(&gate.mu);
    stats_call_t st = {cm, 1, {0}, 0};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, stats_of_all, &st) == 0);
    wait_for_waiters(cm, 1); /* stats is queued */
    gate_open(0);            /* the sleep ends; its thread calls wake */
    double deadline = now_s() + 10;
    while (!atomic_load(&st.done) && now_s() < deadline) usleep(500);
    overtaken = !atomic_load(&st.done); /* the wake went first and holds it */
    pthread_mutex_lock(&gate.mu);
    if (overtaken) { /* let everything run to the end */
      gate.armed = 0;
      gate.open[0] = 1;
    } else {
      gate.open[0] = 0; /* the next round's sleep stops at gate 0 */
    }
    gate.open[1] = 1; /* let the wake finish */
    pthread_cond_broadcast(&gate.cv);
    pthread_mutex_unlock(&gate.mu);
    pthread_join(t, NULL);
    CHECK_OK(st.rc);
    if (overtaken) {
      fprintf(stderr, "  round %d: the wake that came after a waiting stats call was served first\n", r + 1);
      break;
    }
  }
  pthread_join(cy, NULL);
  gate.armed = 0;
  CHECK(!overtaken);
  CHECK(o.errors == 0);
  CHECK(has_pattern(cm, p, 2 << 20, 4));
  CHECK_OK(cumem_close(cm));
}

/* ---- close while others wait (items 2, 3 in C) ----
 * close holds the instance (at gate 2, its first device synchronize); a
 * stats call queues behind it. close must not free the instance under the
 * waiting call: it lets it through (stats finds the instance emptied) and
 * frees it only then. Freeing it at once was a use after free (ASan). */

TEST(close_never_frees_under_a_waiting_call) {
  cumem_t *cm = NULL;
  void *p;
  CHECK_OK(open_gated(&cm, &p, 4 << 20, 8));
  gate.armed = 4;
  call_t cl = {cm, 1};
  stats_call_t st = {cm, 1, {0}, 0};
  st.st.allocations = 99;
  pthread_t t1, t2;
  CHECK(pthread_create(&t1, NULL, close_call, &cl) == 0);
  gate_wait_inside(2); /* close holds the instance */
  CHECK(pthread_create(&t2, NULL, stats_of_all, &st) == 0);
  wait_for_waiters(cm, 1); /* stats is queued behind it */
  gate_open(2);
  pthread_join(t2, NULL);
  pthread_join(t1, NULL); /* cm is gone from here on */
  gate.armed = 0;
  CHECK_OK(cl.rc);
  CHECK_OK(st.rc);
  CHECK(st.st.allocations == 0); /* it ran on the emptied instance */
}

/* ---- fork while a thread is inside sleep (item 5) ----
 * The child has no copy of that thread, and the instance's lock is held
 * by it for good: the child's calls must return CUMEM_EFORKED at once. */
TEST(fork_while_a_thread_is_inside_sleep) {
  const char *backend = test_backend();
  setenv("CUMEM_BACKEND", backend, 1);
  cumem_t *def = NULL;
  CHECK_OK(cumem_default(&def)); /* opened before the fork too */
  cumem_t *cm = NULL;
  void *p;
  CHECK_OK(open_gated(&cm, &p, 4 << 20, 9));
  gate.armed = 1;
  call_t sl = {cm, 1};
  pthread_t t1;
  CHECK(pthread_create(&t1, NULL, sleep_offloading, &sl) == 0);
  gate_wait_inside(0);
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    /* The child: every call on the parent's instances is refused, now. */
    int code = 0;
    cumem_stats_t st;
    void *q = NULL;
    const char *W[] = {"w", NULL};
    if (cumem_stats(cm, NULL, &st) != CUMEM_EFORKED) code |= 1;
    if (cumem_alloc(cm, &q, 4096, 0, "w") != CUMEM_EFORKED) code |= 2;
    if (cumem_wake(cm, W) != CUMEM_EFORKED) code |= 4;
    if (cumem_close(cm) != CUMEM_EFORKED) code |= 8;
    cumem_t *d2 = NULL;
    if (cumem_default(&d2) != CUMEM_EFORKED) code |= 16;
    if (!strstr(cumem_last_error(), "fork")) code |= 32;
    /* On the host backend a child may open an instance of its own. */
    if (strcmp(backend, "host") == 0) {
      cumem_t *mine = NULL;
      if (cumem_open(&mine, NULL) != 0 || cumem_alloc(mine, &q, 4096, 0, NULL) != 0 ||
          cumem_free(mine, q) != 0 || cumem_close(mine) != 0)
        code |= 64;
    }
    _exit(code);
  }
  CHECK(pid > 0);
  int status = 0;
  double deadline = now_s() + 30;
  pid_t done = 0;
  while ((done = waitpid(pid, &status, WNOHANG)) == 0 && now_s() < deadline) usleep(2000);
  if (done == 0) { /* hung: that is the failure */
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  gate_open(0);
  pthread_join(t1, NULL);
  CHECK(done == pid);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fprintf(stderr, "  child status %#x (exit code bits: which call did not give EFORKED)\n", status);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  /* The parent is unaffected. */
  CHECK_OK(sl.rc);
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK(has_pattern(cm, p, 4 << 20, 9));
  CHECK_OK(cumem_close(cm));
  CHECK_OK(cumem_close(def));
}

RUN_TESTS("threads", T(workers_and_sleeper_race_without_loss), T(default_instance_is_opened_once),
          T(workers_progress_while_a_thread_sleeps_and_wakes), T(a_waiting_call_goes_before_the_next_sleep_or_wake), T(close_never_frees_under_a_waiting_call),
          T(fork_while_a_thread_is_inside_sleep))
