/*
 * For tests only: the fault backend, which wraps another backend and fails
 * chosen calls, as SQLite's test VFS does. With it a test fails every
 * backend call of an operation in turn and checks that nothing is lost.
 * Not part of the production API: its behaviour may change between versions.
 */
#ifndef CUMEM_TESTING_H
#define CUMEM_TESTING_H

#include "cumem_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The fault backend wraps `inner` (and destroys it when destroyed). */
CUMEM_API int cumem_backend_fault(cumem_backend_t **out, cumem_backend_t *inner);
/* Fail the nth call (1-based, counted from now) of operation `op` (its field
 * name, e.g. "create"), or of any operation when op is NULL, with `code`.
 * persistent != 0 fails that call and every later matching one. n = 0 turns
 * faults off. */
CUMEM_API void cumem_fault_arm(cumem_backend_t *fault, long n, const char *op,
                               int code, int persistent);
/* Calls seen (of any operation) since the last arm. */
CUMEM_API long cumem_fault_calls(const cumem_backend_t *fault);
/* Failures injected since the last arm. */
CUMEM_API long cumem_fault_injected(const cumem_backend_t *fault);

/* Hold the instance's background worker (hold = 1: it does no step, its
 * work waits) or let it go again (0). cumem_drain and the call below still
 * do the work, on the calling thread. */
CUMEM_API void cumem_testing_hold_background(cumem_t *cm, int hold);
/* Run up to n steps of background work on this thread (delays ignored);
 * returns how many ran (fewer: nothing was left). */
CUMEM_API int cumem_testing_background_steps(cumem_t *cm, int n);
/* How many instances' background workers are running, process-wide: the
 * ones stopped at exit. */
CUMEM_API int cumem_testing_running_workers(void);
/* The disk tier's file operations, for tests: before each one, `fn` (when
 * set) is called with its name — "tmpfile" (create an unnamed file),
 * "mkstemp" (the named fallback), "unlink", "direct" (turn on O_DIRECT),
 * "allocate" (reserve space), "write", "read" — and a non-zero return is
 * taken as that call's errno, without making the call. Process-wide; NULL
 * turns it off. */
typedef int (*cumem_disk_fault_fn)(const char *op, void *arg);
CUMEM_API void cumem_fault_disk(cumem_disk_fault_fn fn, void *arg);

#ifdef __cplusplus
}
#endif
#endif /* CUMEM_TESTING_H */
