/* Counts of every interposed call, and the driver entry points asked for.
 *
 * Always counted (relaxed atomic adds, next to a CUDA call that costs
 * microseconds); with CUMEM_PRELOAD_TRACE=1 they are printed to stderr at
 * exit, one `key=value` line per function, so that a run of a real job says
 * which of these calls it makes and where each one went:
 *
 *   cumem-preload pid=4242 fn=cudaMalloc calls=12 to_cumem=9 cumem_bytes=...
 *       forwarded=3 forwarded_bytes=... failed=0 real=RTLD_NEXT:/.../libcudart.so.13
 *   cumem-preload pid=4242 entry-point=cuMemCreate requests=1 */
#define _GNU_SOURCE
#include "preload.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
  _Atomic unsigned long long calls, to_cumem, forwarded, failed, cumem_bytes, forwarded_bytes;
} counter_t;

static counter_t counters[PRELOAD_NFUNCTIONS];

/* Entry point names, first come first listed; the rest are counted as
 * "other". Written under the mutex, read at exit or by the API. */
#define MAX_ENTRY_POINTS 256
static struct { char name[64]; unsigned long long requests; } entry_points[MAX_ENTRY_POINTS];
static size_t n_entry_points;
static unsigned long long other_entry_points;
static pthread_mutex_t entry_mu = PTHREAD_MUTEX_INITIALIZER;

void cumem__preload_count(enum preload_fn fn, enum preload_outcome how, int failed,
                          unsigned long long bytes) {
  counter_t *c = &counters[fn];
  atomic_fetch_add_explicit(&c->calls, 1, memory_order_relaxed);
  if (failed) atomic_fetch_add_explicit(&c->failed, 1, memory_order_relaxed);
  if (how == PRELOAD_TO_CUMEM) {
    atomic_fetch_add_explicit(&c->to_cumem, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&c->cumem_bytes, bytes, memory_order_relaxed);
  } else if (how == PRELOAD_FORWARDED) {
    atomic_fetch_add_explicit(&c->forwarded, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&c->forwarded_bytes, bytes, memory_order_relaxed);
  }
}

void cumem__preload_count_entry_point(const char *symbol) {
  if (!symbol) return;
  pthread_mutex_lock(&entry_mu);
  size_t i = 0;
  while (i < n_entry_points && strcmp(entry_points[i].name, symbol)) i++;
  if (i == n_entry_points && i < MAX_ENTRY_POINTS && strlen(symbol) < sizeof entry_points[i].name) {
    strcpy(entry_points[i].name, symbol);
    n_entry_points++;
  }
  if (i < n_entry_points) entry_points[i].requests++;
  else other_entry_points++;
  pthread_mutex_unlock(&entry_mu);
}

unsigned long long cumem_preload_entry_point_requests(const char *symbol) {
  unsigned long long n = 0;
  pthread_mutex_lock(&entry_mu);
  for (size_t i = 0; symbol && i < n_entry_points; i++)
    if (!strcmp(entry_points[i].name, symbol)) n = entry_points[i].requests;
  pthread_mutex_unlock(&entry_mu);
  return n;
}

/* *origin (when not NULL): the file the real function came from. */
static void read_counter(enum preload_fn fn, cumem_preload_count_t *out, const char **origin) {
  counter_t *c = &counters[fn];
  out->calls = atomic_load(&c->calls);
  out->to_cumem = atomic_load(&c->to_cumem);
  out->forwarded = atomic_load(&c->forwarded);
  out->failed = atomic_load(&c->failed);
  out->cumem_bytes = atomic_load(&c->cumem_bytes);
  out->forwarded_bytes = atomic_load(&c->forwarded_bytes);
  out->resolved = cumem__preload_real_how(fn, origin);
}

int cumem_preload_count(const char *fn, cumem_preload_count_t *out) {
  if (!fn || !out) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_preload_count: NULL argument");
  for (int i = 0; i < PRELOAD_NFUNCTIONS; i++) {
    if (!strcmp(fn, cumem__preload_fn_name(i))) {
      read_counter(i, out, NULL);
      return 0;
    }
  }
  return CUMEM_FAIL(CUMEM_EINVAL, "cumem_preload_count: the interposer does not define %.40s", fn);
}

/* ---- the summary at exit ------------------------------------------------- */

static int trace_at_exit;

__attribute__((constructor)) static void read_trace_switch(void) {
  const char *v = getenv("CUMEM_PRELOAD_TRACE");
  trace_at_exit = v && *v && strcmp(v, "0") != 0;
}

__attribute__((destructor)) static void print_summary(void) {
  if (!trace_at_exit) return;
  static const char *const how_names[] = {"not-looked-up", "RTLD_NEXT", "search"};
  long pid = (long)getpid();
  for (int i = 0; i < PRELOAD_NFUNCTIONS; i++) {
    cumem_preload_count_t c;
    const char *origin = NULL;
    read_counter(i, &c, &origin);
    int how = c.resolved;
    fprintf(stderr,
            "cumem-preload pid=%ld fn=%s calls=%llu to_cumem=%llu cumem_bytes=%llu forwarded=%llu "
            "forwarded_bytes=%llu failed=%llu real=%s%s%s\n",
            pid, cumem__preload_fn_name(i), c.calls, c.to_cumem, c.cumem_bytes, c.forwarded,
            c.forwarded_bytes, c.failed, how < 0 ? "not-found" : how_names[how], origin ? ":" : "",
            origin ? origin : "");
  }
  pthread_mutex_lock(&entry_mu);
  for (size_t i = 0; i < n_entry_points; i++)
    fprintf(stderr, "cumem-preload pid=%ld entry-point=%s requests=%llu\n", pid, entry_points[i].name,
            entry_points[i].requests);
  if (other_entry_points)
    fprintf(stderr, "cumem-preload pid=%ld entry-point=(others) requests=%llu\n", pid, other_entry_points);
  pthread_mutex_unlock(&entry_mu);
}
