/* The worker pool (see pool.h). */
#include "pool.h"

#include <stdlib.h>
#include <string.h>

/* Take the next item, if one is released and nothing failed. Pre: p->mu
 * held. */
static int take(cumem__pool_t *p, size_t *i) {
  if (p->error || p->next >= p->released) return 0;
  *i = p->next++;
  return 1;
}

/* Run item i outside the lock, then record it. Pre and post: p->mu held. */
static void run(cumem__pool_t *p, size_t i) {
  pthread_mutex_unlock(&p->mu);
  int rc = p->fn(p->ctx, i);
  cumem__error_save_t detail;
  if (rc) cumem__error_save(&detail);
  pthread_mutex_lock(&p->mu);
  if (rc && !p->error) {
    p->error = rc;
    p->detail = detail;
  }
  p->done[i] = 1;
  pthread_cond_broadcast(&p->cv);
}

/* Nothing more will be handed out: all taken, or a failure. */
static int finished(const cumem__pool_t *p) { return p->error || p->next >= p->n; }

static void *worker(void *arg) {
  cumem__pool_t *p = arg;
  size_t i;
  cumem__log_scope_restore(p->log_scope); /* log as the instance whose call started the pool */
  pthread_mutex_lock(&p->mu);
  while (!finished(p)) {
    if (take(p, &i)) run(p, i);
    else pthread_cond_wait(&p->cv, &p->mu); /* until more are released */
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

int cumem__pool_start_gated(cumem__pool_t *p, cumem__task_fn fn, void *ctx, size_t n, int threads) {
  memset(p, 0, sizeof *p);
  p->fn = fn;
  p->ctx = ctx;
  p->n = n;
  p->log_scope = cumem__log_scope_current();
  if ((size_t)threads > n) threads = (int)n;
  if (threads < 0) threads = 0;
  p->done = calloc(n ? n : 1, 1);
  p->threads = calloc(threads ? (size_t)threads : 1, sizeof *p->threads);
  if (!p->done || !p->threads) {
    free(p->done);
    free(p->threads);
    memset(p, 0, sizeof *p);
    return CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory for a worker pool of %d threads", threads);
  }
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  for (int t = 0; t < threads; t++) {
    if (pthread_create(&p->threads[t], NULL, worker, p) != 0) break; /* fewer is slower, not wrong */
    p->nthreads++;
  }
  if (p->nthreads < threads) cumem__log("worker pool: %d of %d threads started", p->nthreads, threads);
  return 0;
}

int cumem__pool_start(cumem__pool_t *p, cumem__task_fn fn, void *ctx, size_t n, int threads) {
  int rc = cumem__pool_start_gated(p, fn, ctx, n, threads);
  if (!rc) cumem__pool_release(p, n);
  return rc;
}

/* Pre: p->mu held. */
static void release_locked(cumem__pool_t *p, size_t upto) {
  if (upto > p->n) upto = p->n;
  if (upto <= p->released) return;
  p->released = upto;
  pthread_cond_broadcast(&p->cv);
}

void cumem__pool_release(cumem__pool_t *p, size_t upto) {
  pthread_mutex_lock(&p->mu);
  release_locked(p, upto);
  pthread_mutex_unlock(&p->mu);
}

/* The first failure, with its detail on this thread. Pre: p->mu held. */
static int failure(cumem__pool_t *p) {
  if (p->error) cumem__error_restore(&p->detail);
  return p->error;
}

int cumem__pool_wait(cumem__pool_t *p, size_t k) {
  pthread_mutex_lock(&p->mu);
  release_locked(p, k + 1);
  while (!p->done[k]) {
    size_t i;
    if (p->next <= k && take(p, &i)) run(p, i); /* nobody took it yet: help, in order */
    else if (p->next <= k) break;               /* never to run: a task failed */
    else pthread_cond_wait(&p->cv, &p->mu);
  }
  int rc = failure(p);
  pthread_mutex_unlock(&p->mu);
  return rc;
}

static void finish(cumem__pool_t *p) {
  for (int t = 0; t < p->nthreads; t++) pthread_join(p->threads[t], NULL);
  pthread_cond_destroy(&p->cv);
  pthread_mutex_destroy(&p->mu);
  free(p->done);
  free(p->threads);
}

int cumem__pool_join(cumem__pool_t *p) {
  size_t i;
  pthread_mutex_lock(&p->mu);
  release_locked(p, p->n);
  while (take(p, &i)) run(p, i);
  pthread_mutex_unlock(&p->mu);
  finish(p); /* workers leave once nothing is left to take */
  int rc = p->error;
  if (rc) cumem__error_restore(&p->detail);
  memset(p, 0, sizeof *p);
  return rc;
}

void cumem__pool_cancel(cumem__pool_t *p) {
  pthread_mutex_lock(&p->mu);
  p->next = p->n;
  pthread_cond_broadcast(&p->cv); /* workers waiting for a release leave */
  pthread_mutex_unlock(&p->mu);
  finish(p);
  memset(p, 0, sizeof *p);
}
