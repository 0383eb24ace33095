/* Internal helpers shared by the core and the backends. */
#ifndef CUMEM_INTERNAL_H
#define CUMEM_INTERNAL_H

#include "cumem.h"
#include "cumem_backend.h"

#include <stdarg.h>
#include <time.h>

/* A failure reads `return CUMEM_FAIL(CUMEM_EINVAL, "...", ...)`: it records
 * this thread's detail ("<file>:<line>: <message>") with cumem_set_error
 * (public in cumem_backend.h, for backends and companions such as the
 * LD_PRELOAD interposer) and returns the code. */
#define CUMEM_FAIL(code, ...) \
  cumem_set_error((code), __FILE__, __LINE__, __VA_ARGS__)

/* Save and restore this thread's detail around clean-up code, so that the
 * first failure's detail is the one the caller sees. */
typedef struct { char text[512]; } cumem__error_save_t;
void cumem__error_save(cumem__error_save_t *s);
void cumem__error_restore(const cumem__error_save_t *s);

/* units.c: a size with an optional unit ("512M", "1.5GiB"; binary units;
 * `default_unit` bytes per unit when none is written). CUMEM_EINVAL with
 * *why saying what is wrong (no detail is recorded: callers name the option
 * in theirs). */
int cumem__parse_size(const char *text, size_t default_unit, size_t *out, const char **why);

/* Verbose logging. Each instance has its own `verbose` option: a log line
 * (and the echo of an error detail) prints when the instance whose call is
 * running on this thread is verbose. cumem__enter / cumem__leave (and open)
 * set that scope, a worker pool's threads take the scope of the thread
 * that started the pool (pool.c), and an instance's background worker its
 * instance's; outside any instance (a backend used alone) the environment's
 * CUMEM_VERBOSE decides. */
void cumem__log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int cumem__logging(void);
/* Enter an instance's verbosity on this thread; returns the previous scope
 * for cumem__log_scope_restore (-1: none). */
int cumem__log_scope(int verbose);
void cumem__log_scope_restore(int previous);
/* This thread's scope as it is (-1: none), for cumem__log_scope_restore on
 * another thread. */
int cumem__log_scope_current(void);

/* The longest prefix of s, at most max bytes, that does not end inside a
 * UTF-8 character: for "%.*s" of user text in a detail, which must stay
 * valid UTF-8 (Python decodes it). */
size_t cumem__utf8_prefix(const char *s, size_t max);

/* a / b rounded up, without the a + b - 1 that wraps near SIZE_MAX. */
static inline size_t cumem__ceil_div(size_t a, size_t b) { return a / b + (a % b != 0); }

/* Seconds on the monotonic clock, for the phase timings of the log. */
static inline double cumem__now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
