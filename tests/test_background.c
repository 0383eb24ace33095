/* The background worker (src/background.c): giving backups back after a
 * wake without retention, preparing backups ahead, and what happens when
 * either races a caller or fails. Every test checks content bit for bit and
 * that nothing leaks (the backend's live objects).
 *
 * The backend under test is wrapped twice: in the fault backend (to fail
 * calls) and in a counting one that counts page-lockings, so that a test can
 * tell a reused backup from one pinned anew. */
#include "harness.h"

#include <pthread.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- a backend that counts host registrations ---------------------------- */

typedef struct counting {
  cumem_backend_t base, *inner;
  long registers, unregisters;      /* calls that succeeded */
  cumem_backend_counters_t at_destroy; /* the inner backend's, when destroyed */
} counting_t;

static counting_t *last_counting; /* the one open_counting made last */

static int count_register(cumem_backend_t *b, void *p, size_t n) {
  counting_t *c = b->self;
  int rc = c->inner->host_register(c->inner, p, n);
  if (!rc) __atomic_add_fetch(&c->registers, 1, __ATOMIC_RELAXED);
  return rc;
}

static int count_unregister(cumem_backend_t *b, void *p) {
  counting_t *c = b->self;
  int rc = c->inner->host_unregister(c->inner, p);
  if (!rc) __atomic_add_fetch(&c->unregisters, 1, __ATOMIC_RELAXED);
  return rc;
}

static void count_destroy(cumem_backend_t *b) {
  counting_t *c = b->self;
  c->inner->counters(c->inner, &c->at_destroy);
  c->inner->destroy(c->inner);
  /* the record stays for the test to read (freed at the next open) */
}

/* Pass every other operation through to the inner backend. */
#define FWD(name, ret, params, args)                   \
  static ret fwd_##name params {                       \
    counting_t *c = b->self;                           \
    return c->inner->name args;                        \
  }
FWD(device_count, int, (cumem_backend_t *b, int *n), (c->inner, n))
FWD(device_info, int, (cumem_backend_t *b, int d, cumem_device_info_t *i), (c->inner, d, i))
FWD(reserve, int, (cumem_backend_t *b, int d, size_t n, uintptr_t *va), (c->inner, d, n, va))
FWD(unreserve, int, (cumem_backend_t *b, uintptr_t va, size_t n), (c->inner, va, n))
FWD(create, int, (cumem_backend_t *b, int d, size_t n, cumem_handle_t *h), (c->inner, d, n, h))
FWD(release, int, (cumem_backend_t *b, cumem_handle_t h), (c->inner, h))
FWD(map, int, (cumem_backend_t *b, uintptr_t va, size_t n, cumem_handle_t h), (c->inner, va, n, h))
FWD(unmap, int, (cumem_backend_t *b, uintptr_t va, size_t n), (c->inner, va, n))
FWD(set_access, int, (cumem_backend_t *b, uintptr_t va, size_t n, int d, uint64_t m), (c->inner, va, n, d, m))
FWD(synchronize, int, (cumem_backend_t *b, int d), (c->inner, d))
FWD(stream_create, int, (cumem_backend_t *b, int d, void **s), (c->inner, d, s))
FWD(stream_destroy, int, (cumem_backend_t *b, void *s), (c->inner, s))
FWD(stream_synchronize, int, (cumem_backend_t *b, void *s), (c->inner, s))
FWD(event_create, int, (cumem_backend_t *b, int d, void **e), (c->inner, d, e))
FWD(event_destroy, int, (cumem_backend_t *b, void *e), (c->inner, e))
FWD(event_record, int, (cumem_backend_t *b, void *e, void *s), (c->inner, e, s))
FWD(event_synchronize, int, (cumem_backend_t *b, void *e), (c->inner, e))
FWD(copy_to_host, int, (cumem_backend_t *b, void *d, uintptr_t s, size_t n, void *st), (c->inner, d, s, n, st))
FWD(copy_to_device, int, (cumem_backend_t *b, uintptr_t d, const void *s, size_t n, void *st), (c->inner, d, s, n, st))
FWD(memset, int, (cumem_backend_t *b, uintptr_t d, unsigned char v, size_t n, void *st), (c->inner, d, v, n, st))
FWD(counters, void, (cumem_backend_t *b, cumem_backend_counters_t *o), (c->inner, o))

/* An instance over counting(fault(backend under test)). */
static int open_counting(cumem_t **cm, cumem_backend_t **fault, const cumem_options_t *o) {
  cumem_backend_t *f;
  int rc = test_backend_new(&f);
  if (rc) return rc;
  free(last_counting);
  counting_t *c = last_counting = calloc(1, sizeof *c);
  if (!c) return CUMEM_ENOHOST;
  c->inner = f;
  c->base = (cumem_backend_t){
      .name = f->name, .self = c, .destroy = count_destroy,
      .device_count = fwd_device_count, .device_info = fwd_device_info,
      .reserve = fwd_reserve, .unreserve = fwd_unreserve, .create = fwd_create, .release = fwd_release,
      .map = fwd_map, .unmap = fwd_unmap, .set_access = fwd_set_access, .synchronize = fwd_synchronize,
      .stream_create = fwd_stream_create, .stream_destroy = fwd_stream_destroy,
      .stream_synchronize = fwd_stream_synchronize, .event_create = fwd_event_create,
      .event_destroy = fwd_event_destroy, .event_record = fwd_event_record,
      .event_synchronize = fwd_event_synchronize, .host_register = count_register,
      .host_unregister = count_unregister, .copy_to_host = fwd_copy_to_host,
      .copy_to_device = fwd_copy_to_device, .memset = fwd_memset, .counters = fwd_counters,
  };
  if (fault) *fault = f;
  return cumem_open_backend(cm, o, &c->base);
}

static long registers(void) { return __atomic_load_n(&last_counting->registers, __ATOMIC_RELAXED); }

/* The device's allocation granularity (0 if the backend cannot say). */
static size_t granularity(void) {
  cumem_backend_t *probe;
  cumem_device_info_t info;
  if (test_backend_new(&probe)) return 0;
  int rc = probe->device_info(probe, 0, &info);
  probe->destroy(probe);
  return rc ? 0 : info.granularity;
}

/* Options for these tests: host backups in segments of one granularity
 * (many small steps), the environment's prepare-ahead list ignored. */
static void options(cumem_options_t *o, int retain) {
  cumem_options_init(o);
  o->retain_backup = retain;
  o->host_threads = 2;
  o->copy_chunk = granularity();
  o->prepare_ahead = NULL;
  o->register_lock = NULL;
}

/* Wait (up to 10 s) until tag's pinned host bytes equal `want`. */
static int wait_pinned(cumem_t *cm, const char *tag, size_t want, size_t held_want) {
  for (double end = now_s() + 10; now_s() < end; usleep(1000)) {
    cumem_stats_t s;
    if (cumem_stats(cm, tag, &s)) return 0;
    if (s.bytes_host_pinned == want && s.bytes_host_held == held_want) return 1;
  }
  return 0;
}

static const char *W[] = {"w", NULL};

/* ---- giving back after wake ---------------------------------------------- */

TEST(wake_without_retention_gives_back_in_the_background) {
  cumem_options_t o;
  options(&o, 0);
  cumem_t *cm;
  size_t g = granularity(), n = 8 * g + 100; /* 9 backup segments */
  CHECK_OK(open_counting(&cm, NULL, &o));
  void *w;
  CHECK_OK(cumem_alloc(cm, &w, n, 0, "w"));
  CHECK_OK(fill_pattern(cm, w, n, 1));
  CHECK_OK(cumem_sleep(cm, NULL, W));
  cumem_stats_t s;
  CHECK_OK(cumem_stats(cm, "w", &s));
  size_t rounded = s.bytes_allocated;
  CHECK(s.bytes_host_pinned == rounded && registers() == 9);
  CHECK_OK(cumem_wake(cm, NULL));
  void *view;
  size_t len;
  CHECK_RC(cumem_backup_view(cm, w, &view, &len), CUMEM_ENOTFOUND); /* spent at once */
  CHECK(has_pattern(cm, w, n, 1));
  /* Nobody calls anything: the worker gives it all back by itself. */
  CHECK(wait_pinned(cm, "w", 0, 0));
  cumem_backend_counters_t c;
  CHECK_OK(cumem_backend_counters(cm, &c));
  CHECK(c.host_registrations == 0 && last_counting->unregisters == 9);
  CHECK_OK(cumem_drain(cm)); /* nothing left, nothing failed */
  CHECK_OK(cumem_free(cm, w));
  CHECK(counters_zero(cm));
  CHECK_OK(cumem_close(cm));
}

/* A sleep that comes while the worker is giving a backup back takes it
 * back: the segments still pinned are reused, only those already
 * unregistered are pinned again, and the buffer itself is the same. */
TEST(sleep_reuses_a_backup_being_given_back) {
  cumem_options_t o;
  options(&o, 0);
  cumem_t *cm;
  size_t g = granularity(), n = 8 * g;
  CHECK_OK(open_counting(&cm, NULL, &o));
  void *w, *kv;
  CHECK_OK(cumem_alloc(cm, &w, n, 0, "w"));
  CHECK_OK(cumem_alloc(cm, &kv, 2 * g, 0, "kv"));
  CHECK_OK(fill_pattern(cm, w, n, 2));
  for (int round = 0; round < 3; round++) {
    CHECK_OK(cumem_sleep(cm, NULL, W));
    void *before, *after;
    size_t len;
    CHECK_OK(cumem_backup_view(cm, w, &before, &len));
    cumem_testing_hold_background(cm, 1);
    CHECK_OK(cumem_wake(cm, NULL));
    CHECK(has_pattern(cm, w, n, 2 + (unsigned)round));
    CHECK_OK(fill_pattern(cm, w, n, 3 + (unsigned)round)); /* new content for the next sleep */
    int steps = round + 2; /* unregister that many segments, then sleep */
    CHECK(cumem_testing_background_steps(cm, steps) == steps);
    cumem_stats_t s;
    CHECK_OK(cumem_stats(cm, "w", &s));
    CHECK(s.bytes_host_held == n && s.bytes_host_pinned == n - (size_t)steps * g);
    long reg0 = registers();
    CHECK_OK(cumem_sleep(cm, NULL, W));
    CHECK(registers() - reg0 == steps); /* only what was given back is pinned again */
    CHECK_OK(cumem_backup_view(cm, w, &after, &len));
    CHECK(after == before); /* the same buffer, never unmapped */
    CHECK(cumem_testing_background_steps(cm, 1000) == 0); /* the sleep took the work over */
    cumem_testing_hold_background(cm, 0);
    CHECK_OK(cumem_wake(cm, NULL));
    CHECK(has_pattern(cm, w, n, 3 + (unsigned)round));
    CHECK_OK(cumem_drain(cm));
  }
  CHECK_OK(cumem_free(cm, w));
  CHECK_OK(cumem_free(cm, kv));
  CHECK(counters_zero(cm));
  CHECK_OK(cumem_close(cm));
}

/* cumem_release_backup_async: retained backups go in the background, and
 * a sleeping content is never one of them. */
TEST(release_backup_async_gives_back_only_spent_backups) {
  cumem_options_t o;
  options(&o, 1);
  cumem_t *cm;
  CHECK_OK(open_counting(&cm, NULL, &o));
  size_t g = granularity();
  void *a, *b;
  CHECK_OK(cumem_alloc(cm, &a, 3 * g, 0, "w"));
  CHECK_OK(cumem_alloc(cm, &b, 2 * g, 0, "z"));
  CHECK_OK(fill_pattern(cm, a, 3 * g, 4));
  CHECK_OK(fill_pattern(cm, b, 2 * g, 5));
  const char *WZ[] = {"w", "z", NULL}, *Z[] = {"z", NULL};
  CHECK_OK(cumem_sleep(cm, NULL, WZ));
  CHECK_OK(cumem_wake(cm, W)); /* z stays asleep, backed up */
  CHECK_OK(cumem_release_backup_async(cm, NULL));
  CHECK_OK(cumem_drain(cm));
  cumem_stats_t s;
  CHECK_OK(cumem_stats(cm, "w", &s));
  CHECK(s.bytes_host_held == 0);
  CHECK_OK(cumem_stats(cm, "z", &s));
  CHECK(s.bytes_host_held == 2 * g && s.bytes_backed_up == 2 * g); /* asleep: kept */
  CHECK_OK(cumem_wake(cm, Z));
  CHECK(has_pattern(cm, a, 3 * g, 4) && has_pattern(cm, b, 2 * g, 5));
  CHECK_OK(cumem_free(cm, a));
  CHECK_OK(cumem_free(cm, b));
  CHECK(counters_zero(cm));
  CHECK_OK(cumem_close(cm));
}

/* ---- failures in the background -------------------------------------------- */

/* An unregistration the driver refuses: the backup stays held (accounted,
 * reused by the next sleep), the next reporting call fails with it once and
 * changes nothing, and every byte survives. */
TEST(failed_give_back_is_reported_once_and_loses_nothing) {
  cumem_options_t o;
  options(&o, 0);
  cumem_t *cm;
  cumem_backend_t *f;
  size_t g = granularity(), n = 4 * g;
  CHECK_OK(open_counting(&cm, &f, &o));
  void *w;
  CHECK_OK(cumem_alloc(cm, &w, n, 0, "w"));
  CHECK_OK(fill_pattern(cm, w, n, 6));
  /* Each reporting call in turn meets the failure. */
  for (int which = 0; which < 4; which++) {
    CHECK_OK(cumem_sleep(cm, NULL, W));
    cumem_testing_hold_background(cm, 1);
    CHECK_OK(cumem_wake(cm, NULL));
    cumem_fault_arm(f, 2, "host_unregister", CUMEM_EDRIVER, 0); /* the second segment */
    CHECK(cumem_testing_background_steps(cm, 100) >= 2);
    CHECK(cumem_fault_injected(f) == 1);
    cumem_fault_arm(f, 0, NULL, 0, 0);
    cumem_stats_t s;
    CHECK_OK(cumem_stats(cm, "w", &s));
    CHECK(s.bytes_host_held == n && s.bytes_host_pinned == n - g); /* held, accounted */
    CHECK(cumem_testing_background_steps(cm, 100) == 0);          /* not retried behind our back */
    int rc = which == 0 ? cumem_sleep(cm, NULL, W)
           : which == 1 ? cumem_wake(cm, NULL)
           : which == 2 ? cumem_release_backup_async(cm, W)
                        : cumem_drain(cm);
    CHECK_RC(rc, CUMEM_EDRIVER);
    CHECK(strstr(cumem_last_error(), "background worker") && strstr(cumem_last_error(), "giving back"));
    CHECK_OK(cumem_stats(cm, "w", &s));
    CHECK(s.bytes_mapped == n && s.bytes_host_held == n); /* the failing call did nothing */
    CHECK_OK(cumem_drain(cm)); /* reported once only */
    cumem_testing_hold_background(cm, 0);
    CHECK(has_pattern(cm, w, n, 6));
  }
  /* The held backup is reused: only the given-back segment is pinned again. */
  long reg0 = registers();
  CHECK_OK(cumem_sleep(cm, NULL, W));
  CHECK(registers() - reg0 == 1);
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK(has_pattern(cm, w, n, 6));
  CHECK_OK(cumem_drain(cm));
  CHECK_OK(cumem_free(cm, w));
  CHECK(counters_zero(cm));
  CHECK_OK(cumem_close(cm));
}

/* A registration the driver refuses while preparing ahead: reported by the
 * next call; the sleep prepares what is missing itself. */
TEST(failed_prepare_ahead_is_reported_and_the_sleep_prepares) {
  cumem_options_t o;
  options(&o, 1);
  o.prepare_ahead = "w";
  o.prepare_ahead_delay_ms = 0;
  cumem_t *cm;
  cumem_backend_t *f;
  size_t g = granularity(), n = 4 * g;
  CHECK_OK(open_counting(&cm, &f, &o));
  cumem_testing_hold_background(cm, 1);
  void *w;
  CHECK_OK(cumem_alloc(cm, &w, n, 0, "w"));
  CHECK_OK(fill_pattern(cm, w, n, 7));
  cumem_fault_arm(f, 3, "host_register", CUMEM_EDRIVER, 1); /* from the third segment on */
  CHECK(cumem_testing_background_steps(cm, 10000) > 0);
  CHECK(cumem_fault_injected(f) == 1); /* it stops at the first failure */
  cumem_fault_arm(f, 0, NULL, 0, 0);
  cumem_stats_t s;
  CHECK_OK(cumem_stats(cm, "w", &s));
  CHECK(s.bytes_host_pinned == 2 * g);
  CHECK_RC(cumem_wake(cm, NULL), CUMEM_EDRIVER);
  CHECK(strstr(cumem_last_error(), "preparing"));
  long reg0 = registers();
  CHECK_OK(cumem_sleep(cm, NULL, W));
  CHECK(registers() - reg0 == 2); /* the two that were missing */
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK(has_pattern(cm, w, n, 7));
  cumem_testing_hold_background(cm, 0);
  CHECK_OK(cumem_free(cm, w));
  CHECK(counters_zero(cm));
  CHECK_OK(cumem_close(cm));
}

/* ---- prepare-ahead -------------------------------------------------------------- */

TEST(prepare_ahead_pins_the_listed_tags_once_they_stop_growing) {
  cumem_options_t o;
  options(&o, 1);
  o.prepare_ahead = "x,w"; /* the instance keeps its own copy */
  o.prepare_ahead_delay_ms = 30;
  cumem_t *cm;
  CHECK_OK(open_counting(&cm, NULL, &o));
  size_t g = granularity();
  void *w1, *w2, *kv, *y;
  CHECK_OK(cumem_alloc(cm, &w1, 3 * g, 0, "w"));
  CHECK_OK(cumem_alloc(cm, &w2, 2 * g + 1, 0, "w"));
  CHECK_OK(cumem_alloc(cm, &kv, 2 * g, 0, "kv"));
  cumem_tag_options_t to;
  cumem_tag_options_init(&to);
  to.prepare_ahead = 1; /* a tag's own option overrides the list */
  CHECK_OK(cumem_tag_set_options(cm, "y", &to));
  CHECK_OK(cumem_alloc(cm, &y, g, 0, "y"));
  CHECK_OK(fill_pattern(cm, w1, 3 * g, 8));
  CHECK_OK(fill_pattern(cm, w2, 2 * g + 1, 9));
  CHECK(wait_pinned(cm, "w", 6 * g, 6 * g));
  CHECK(wait_pinned(cm, "y", g, g));
  cumem_stats_t s;
  CHECK_OK(cumem_stats(cm, "kv", &s));
  CHECK(s.bytes_host_held == 0); /* not listed */
  /* The first sleep only copies. */
  long reg0 = registers();
  const char *WY[] = {"w", "y", NULL};
  CHECK_OK(cumem_sleep(cm, NULL, WY));
  CHECK(registers() == reg0);
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK(has_pattern(cm, w1, 3 * g, 8) && has_pattern(cm, w2, 2 * g + 1, 9));
  /* Opted out per tag: not prepared. */
  to.prepare_ahead = 0;
  CHECK_OK(cumem_tag_set_options(cm, "w", &to));
  void *w3;
  CHECK_OK(cumem_alloc(cm, &w3, g, 0, "w"));
  CHECK_OK(cumem_drain(cm));
  CHECK_OK(cumem_stats(cm, "w", &s));
  CHECK(s.bytes_host_held == 6 * g);
  void *ptrs[] = {w1, w2, w3, kv, y};
  for (int i = 0; i < 5; i++) CHECK_OK(cumem_free(cm, ptrs[i]));
  CHECK(counters_zero(cm));
  CHECK_OK(cumem_close(cm));
}

/* A prepare_ahead list that could never match is refused at open, naming
 * the option; "" names nothing, for register_lock too. */
TEST(prepare_ahead_lists_that_could_never_match_are_refused) {
  char long_name[80];
  memset(long_name, 'x', 64);
  long_name[64] = '\0';
  static const struct { const char *list; int ok; } cases[] = {
      {"weights, kv", 0}, {" weights", 0}, {"weights ", 0}, {"all,weights", 0}, {"kv,all", 0},
      {"a,,b", 0},        {"w,", 0},       {",w", 0},       {"all", 1},         {"weights,kv", 1},
      {"ALL", 1} /* a tag may be named so */, {"", 1},
  };
  for (size_t i = 0; i <= sizeof cases / sizeof cases[0]; i++) {
    const char *list = i < sizeof cases / sizeof cases[0] ? cases[i].list : long_name;
    int ok = i < sizeof cases / sizeof cases[0] ? cases[i].ok : 0;
    cumem_options_t o;
    options(&o, 1);
    o.prepare_ahead = list;
    o.register_lock = "";
    cumem_t *cm = NULL;
    int rc = test_open(&cm, NULL, &o);
    if (ok) {
      if (rc) fprintf(stderr, "  \"%s\": %s\n", list, cumem_last_error());
      CHECK_OK(rc);
      CHECK_OK(cumem_close(cm));
    } else {
      if (rc != CUMEM_EINVAL) fprintf(stderr, "  \"%s\" was accepted\n", list);
      CHECK_RC(rc, CUMEM_EINVAL);
      CHECK(strstr(cumem_last_error(), "CUMEM_PREPARE_AHEAD") != NULL);
    }
  }
}

/* cumem_prepare_backup_async: due at once, whatever the tag's options. */
TEST(prepare_backup_async_pins_now) {
  cumem_options_t o;
  options(&o, 1);
  o.prepare_ahead_delay_ms = 100000; /* would never come */
  cumem_t *cm;
  CHECK_OK(open_counting(&cm, NULL, &o));
  size_t g = granularity();
  void *w;
  CHECK_OK(cumem_alloc(cm, &w, 5 * g, 0, "w"));
  CHECK_OK(fill_pattern(cm, w, 5 * g, 10));
  CHECK_OK(cumem_prepare_backup_async(cm, W));
  CHECK(wait_pinned(cm, "w", 5 * g, 5 * g));
  long reg0 = registers();
  CHECK_OK(cumem_sleep(cm, NULL, W));
  CHECK(registers() == reg0);
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK(has_pattern(cm, w, 5 * g, 10));
  CHECK_OK(cumem_free(cm, w));
  CHECK(counters_zero(cm));
  CHECK_OK(cumem_close(cm));
}

/* The worker resumes where its last step worked, found again by address:
 * an allocation freed between two steps is never touched, and work asked
 * for earlier in the table is found once the scan wraps around. */
TEST(work_resumes_after_a_free_and_wraps_around) {
  cumem_options_t o;
  options(&o, 1);
  cumem_t *cm;
  CHECK_OK(open_counting(&cm, NULL, &o));
  cumem_testing_hold_background(cm, 1);
  size_t g = granularity();
  void *a, *b, *c;
  CHECK_OK(cumem_alloc(cm, &a, 4 * g, 0, "p"));
  CHECK_OK(cumem_alloc(cm, &b, 4 * g, 0, "q"));
  CHECK_OK(cumem_alloc(cm, &c, 4 * g, 0, "p"));
  const char *P[] = {"p", NULL}, *Q[] = {"q", NULL};
  CHECK_OK(cumem_prepare_backup_async(cm, P));
  CHECK(cumem_testing_background_steps(cm, 1) == 1); /* a begun */
  CHECK_OK(cumem_free(cm, a));                         /* under the worker's resume point */
  cumem_stats_t s = {0};
  for (int i = 0; i < 1000 && s.bytes_host_pinned == 0; i++) { /* until c is partly pinned */
    CHECK(cumem_testing_background_steps(cm, 1) == 1);
    CHECK_OK(cumem_stats(cm, "p", &s));
  }
  CHECK(s.bytes_host_pinned > 0 && s.bytes_host_pinned < 4 * g);
  CHECK_OK(cumem_prepare_backup_async(cm, Q)); /* b: before c in the table */
  CHECK(cumem_testing_background_steps(cm, 10000) > 0);
  CHECK(cumem_testing_background_steps(cm, 1) == 0); /* all done */
  CHECK_OK(cumem_stats(cm, "p", &s));
  CHECK(s.bytes_host_pinned == 4 * g);
  CHECK_OK(cumem_stats(cm, "q", &s));
  CHECK(s.bytes_host_pinned == 4 * g);
  cumem_testing_hold_background(cm, 0);
  CHECK_OK(cumem_free(cm, b));
  CHECK_OK(cumem_free(cm, c));
  CHECK(counters_zero(cm));
  CHECK_OK(cumem_close(cm));
}

/* Prepare-ahead racing allocation, free, sleep and wake from other threads:
 * every byte survives, nothing leaks, and retention off gives it all back. */
typedef struct race {
  cumem_t *cm;
  size_t g;
  int stop, errors;
} race_t;

#define CUMEM_FAIL_CONTENT 1 /* not a cumem code: the bytes differ */

static void race_error(race_t *r, const char *what, int rc) {
  fprintf(stderr, "  race: %s: %s (%s)\n", what, cumem_strerror(rc), cumem_last_error());
  __atomic_add_fetch(&r->errors, 1, __ATOMIC_RELAXED);
}

static void *race_allocator(void *arg) {
  race_t *r = arg;
  for (unsigned i = 0; !__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE) && i < 60; i++) {
    void *p;
    size_t n = (1 + i % 4) * r->g - i;
    int rc = cumem_alloc(r->cm, &p, n, 0, "w");
    if (rc) {
      race_error(r, "alloc", rc);
      continue;
    }
    while ((rc = fill_pattern(r->cm, p, n, 100 + i)) == CUMEM_EINVAL) sched_yield(); /* asleep: wait */
    if (rc) race_error(r, "fill", rc);
    unsigned char *h = malloc(n);
    while (!rc && (rc = cumem_copy_to_host(r->cm, h, p, n)) == CUMEM_EINVAL) { /* asleep: wait */
      sched_yield();
      rc = 0;
    }
    for (size_t k = 0; !rc && k < n; k++)
      if (h[k] != pattern_byte(k, 100 + i)) rc = CUMEM_FAIL_CONTENT;
    if (rc) race_error(r, "content", rc);
    free(h);
    if (i % 3 == 0) usleep(500); /* let the worker prepare some */
    if ((rc = cumem_free(r->cm, p))) race_error(r, "free", rc);
  }
  return NULL;
}

static void *race_sleeper(void *arg) {
  race_t *r = arg;
  while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
    int rc = cumem_sleep(r->cm, NULL, W);
    if (rc) race_error(r, "sleep", rc);
    sched_yield();
    if ((rc = cumem_wake(r->cm, NULL))) race_error(r, "wake", rc);
    usleep(1000);
  }
  return NULL;
}

TEST(prepare_ahead_races_alloc_free_and_sleep) {
  for (int retain = 0; retain < 2; retain++) {
    cumem_options_t o;
    options(&o, retain);
    o.prepare_ahead = "all";
    o.prepare_ahead_delay_ms = 0;
    race_t r = {0};
    r.g = granularity();
    CHECK_OK(open_counting(&r.cm, NULL, &o));
    void *anchor; /* tag "w" known to the sleeper from the start */
    CHECK_OK(cumem_alloc(r.cm, &anchor, r.g, 0, "w"));
    CHECK_OK(fill_pattern(r.cm, anchor, r.g, 99));
    pthread_t t[3];
    CHECK(pthread_create(&t[0], NULL, race_allocator, &r) == 0);
    CHECK(pthread_create(&t[1], NULL, race_allocator, &r) == 0);
    CHECK(pthread_create(&t[2], NULL, race_sleeper, &r) == 0);
    pthread_join(t[0], NULL);
    pthread_join(t[1], NULL);
    __atomic_store_n(&r.stop, 1, __ATOMIC_RELEASE);
    pthread_join(t[2], NULL);
    CHECK(r.errors == 0);
    CHECK_OK(cumem_wake(r.cm, NULL));
    CHECK(has_pattern(r.cm, anchor, r.g, 99));
    CHECK_OK(cumem_drain(r.cm));
    cumem_stats_t s;
    CHECK_OK(cumem_stats(r.cm, NULL, &s));
    /* The one left is prepared (retained) or given back (not retained). */
    CHECK(s.allocations == 1 && s.bytes_host_held == s.bytes_host_pinned);
    CHECK_OK(cumem_free(r.cm, anchor));
    CHECK(counters_zero(r.cm));
    CHECK_OK(cumem_close(r.cm));
  }
}

/* ---- the worker's life ---------------------------------------------------------- */

/* Closing while the worker is busy: it stops, close frees the rest. */
TEST(close_while_the_worker_is_busy_leaks_nothing) {
  for (int k = 0; k < 4; k++) {
    cumem_options_t o;
    options(&o, 0);
    o.prepare_ahead = "p";
    o.prepare_ahead_delay_ms = 0;
    cumem_t *cm;
    CHECK_OK(open_counting(&cm, NULL, &o));
    size_t g = granularity();
    void *w, *p;
    CHECK_OK(cumem_alloc(cm, &w, 16 * g, 0, "w"));
    CHECK_OK(cumem_alloc(cm, &p, 16 * g, 0, "p")); /* prepared ahead meanwhile */
    CHECK_OK(cumem_sleep(cm, NULL, W));
    CHECK_OK(cumem_wake(cm, NULL)); /* and given back meanwhile */
    if (k) usleep(200 * (useconds_t)k);
    CHECK_OK(cumem_close(cm));
    cumem_backend_counters_t *c = &last_counting->at_destroy;
    CHECK(!c->reservations && !c->handles && !c->mappings && !c->host_registrations && !c->streams &&
          !c->events);
  }
}

/* Every running worker is on the list that exit stops (a fixed table once
 * held 64: the 65th instance's worker ran on while the process exited). */
TEST(every_running_worker_is_listed_for_exit) {
  enum { N = 70 };
  cumem_t *cms[N];
  void *ptrs[N];
  int base = cumem_testing_running_workers();
  size_t g = granularity();
  for (int i = 0; i < N; i++) {
    cumem_options_t o;
    options(&o, 1);
    CHECK_OK(test_open(&cms[i], NULL, &o));
    CHECK_OK(cumem_alloc(cms[i], &ptrs[i], g, 0, "w"));
    CHECK_OK(cumem_prepare_backup_async(cms[i], W)); /* starts its worker */
  }
  CHECK(cumem_testing_running_workers() == base + N);
  for (int i = 0; i < N; i++) {
    CHECK_OK(cumem_drain(cms[i]));
    CHECK_OK(cumem_free(cms[i], ptrs[i]));
    CHECK_OK(cumem_close(cms[i])); /* stops it and takes it off the list */
  }
  CHECK(cumem_testing_running_workers() == base);
}

/* A fork child has no worker: its calls fail with CUMEM_EFORKED and it
 * exits without waiting for one (the exit handler skips its instances). */
TEST(fork_child_neither_waits_for_nor_touches_the_worker) {
  cumem_options_t o;
  options(&o, 0);
  cumem_t *cm;
  CHECK_OK(open_counting(&cm, NULL, &o));
  size_t g = granularity();
  void *w;
  CHECK_OK(cumem_alloc(cm, &w, 64 * g, 0, "w"));
  CHECK_OK(cumem_sleep(cm, NULL, W));
  CHECK_OK(cumem_wake(cm, NULL)); /* the worker is giving back now */
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    int ok = cumem_drain(cm) == CUMEM_EFORKED && cumem_close(cm) == CUMEM_EFORKED;
    /* exit() runs cumem's exit handler (it must skip the parent's worker);
     * on cuda the driver's own state in a fork child is not ours to test. */
    if (strcmp(test_backend(), "cuda") == 0) _exit(ok ? 0 : 3);
    exit(ok ? 0 : 3);
  }
  CHECK(pid > 0);
  int status = 0;
  for (int i = 0; i < 1000 && waitpid(pid, &status, WNOHANG) == 0; i++) usleep(10000);
  if (waitpid(pid, &status, WNOHANG) == 0) {
    kill(pid, 9);
    waitpid(pid, &status, 0);
    CHECK(!"the child hung at exit");
  }
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK_OK(cumem_drain(cm));
  CHECK_OK(cumem_free(cm, w));
  CHECK(counters_zero(cm));
  CHECK_OK(cumem_close(cm));
}

RUN_TESTS("background", T(wake_without_retention_gives_back_in_the_background),
          T(sleep_reuses_a_backup_being_given_back), T(release_backup_async_gives_back_only_spent_backups),
          T(failed_give_back_is_reported_once_and_loses_nothing),
          T(failed_prepare_ahead_is_reported_and_the_sleep_prepares),
          T(prepare_ahead_pins_the_listed_tags_once_they_stop_growing), T(prepare_backup_async_pins_now),
          T(prepare_ahead_lists_that_could_never_match_are_refused),
          T(work_resumes_after_a_free_and_wraps_around), T(prepare_ahead_races_alloc_free_and_sleep), T(close_while_the_worker_is_busy_leaks_nothing),
          T(every_running_worker_is_listed_for_exit),
          T(fork_child_neither_waits_for_nor_touches_the_worker))
