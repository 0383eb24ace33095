/* A worker pool: a few threads that run one task over the items 0..n-1 of a
 * list, while the calling thread waits for the items it needs, in order, or
 * helps with what is left. The engine's only thread pool: sleep uses it to
 * first-touch host segments (the caller registers and copies each one as
 * soon as it is touched) and to release discarded allocations while the
 * copies run; the disk tier for its file transfers.
 *
 * Items are handed out in order, and only once released: all at once
 * (cumem__pool_start), or as the caller makes them ready
 * (cumem__pool_start_gated, then cumem__pool_release: the disk tier
 * releases a piece once its staging buffer is filled). A task that fails
 * stops the pool handing out more; the first failure (code and detail) is
 * what wait and join return. With no thread started (pthread_create
 * failing, or threads = 0) everything runs on the caller, in wait and join:
 * slower, never wrong. Tasks log as the caller does: each worker takes the
 * log scope (internal.h) of the thread that started the pool. */
#ifndef CUMEM_POOL_H
#define CUMEM_POOL_H

#include "internal.h"

#include <pthread.h>

/* Work on item i of ctx's list; 0 or a CUMEM_E* code (detail set). */
typedef int (*cumem__task_fn)(void *ctx, size_t i);

typedef struct cumem__pool {
  cumem__task_fn fn;
  void *ctx;
  size_t n, next;       /* items; the next one to hand out */
  size_t released;      /* items below this may be handed out */
  unsigned char *done;  /* per item: finished (successfully or not) */
  int error;            /* first failure; no item is handed out after it */
  cumem__error_save_t detail;
  pthread_mutex_t mu;
  pthread_cond_t cv;    /* an item finished, or more were released */
  pthread_t *threads;
  int nthreads;
  int log_scope;        /* the starting thread's, taken by each worker */
} cumem__pool_t;

/* Start up to `threads` workers (never more than items) over items
 * 0..n-1, all released. Out of host memory is the only failure; nothing
 * runs then. */
int cumem__pool_start(cumem__pool_t *p, cumem__task_fn fn, void *ctx, size_t n, int threads);
/* The same with no item released yet. */
int cumem__pool_start_gated(cumem__pool_t *p, cumem__task_fn fn, void *ctx, size_t n, int threads);
/* Release the items below `upto` to the workers. */
void cumem__pool_release(cumem__pool_t *p, size_t upto);
/* Wait until item k is finished (releasing the items up to it), running it
 * on this thread if no worker has taken it yet. Returns the pool's first
 * failure so far (0 if none), with its detail on this thread. */
int cumem__pool_wait(cumem__pool_t *p, size_t k);
/* Release all, run the items not yet taken on this thread too, join the
 * workers, free the pool. Returns the first failure, with its detail on
 * this thread. */
int cumem__pool_join(cumem__pool_t *p);
/* Hand out nothing more, join the workers, free the pool (items never
 * started are skipped). */
void cumem__pool_cancel(cumem__pool_t *p);

#endif
