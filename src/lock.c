/* The instance lock: fair, and aware of fork().
 *
 * Fair: a ticket lock (FIFO). A plain mutex let a thread that calls sleep and
 * wake back to back take the lock again before any waiter woke up, and other
 * threads' cumem_stats or cumem_alloc waited for many seconds (issue 13). With
 * tickets, a waiter waits at most for the calls that queued before it.
 *
 * fork(): a child gets a copy of every instance, but not the threads that may
 * have held its lock, nor a usable CUDA context, and the host backend's
 * mappings are shared with the parent. So in a child every call on an
 * instance opened before the fork returns CUMEM_EFORKED instead of hanging
 * or touching the parent's memory: a handler bumps a process-wide fork
 * generation that each instance compares with the one it was opened in. */
#include "core.h"

#include <unistd.h>

static _Atomic unsigned fork_generation;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void) {
  fork_generation++;
  /* Another thread of the parent may have held it at the fork. */
  pthread_mutex_init(&cumem__default_lock, NULL);
}
static void install_atfork(void) { pthread_atfork(NULL, NULL, on_fork_child); }

unsigned cumem__fork_generation(void) {
  pthread_once(&atfork_once, install_atfork);
  return fork_generation;
}

int cumem__check_process(const cumem_t *cm) {
  if (cm->fork_generation == fork_generation) return 0;
  return CUMEM_FAIL(CUMEM_EFORKED,
                    "this instance was opened before a fork(), by the parent process; "
                    "in a child, open a new one (CUDA itself does not survive fork)");
}

void cumem__lock_init(cumem__lock_t *l) {
  pthread_mutex_init(&l->mu, NULL);
  pthread_cond_init(&l->cv, NULL);
  l->next = l->serving = 0;
}

void cumem__lock_destroy(cumem__lock_t *l) {
  pthread_cond_destroy(&l->cv);
  pthread_mutex_destroy(&l->mu);
}

void cumem__lock_acquire(cumem__lock_t *l) {
  pthread_mutex_lock(&l->mu);
  unsigned long ticket = l->next++;
  while (l->serving != ticket) pthread_cond_wait(&l->cv, &l->mu);
  pthread_mutex_unlock(&l->mu);
}

void cumem__lock_release(cumem__lock_t *l) {
  pthread_mutex_lock(&l->mu);
  l->serving++;
  pthread_cond_broadcast(&l->cv);
  pthread_mutex_unlock(&l->mu);
}

unsigned long cumem__lock_waiters(cumem__lock_t *l) {
  pthread_mutex_lock(&l->mu);
  unsigned long waiting = l->next - l->serving - 1; /* the holder has `serving` */
  pthread_mutex_unlock(&l->mu);
  return waiting;
}

int cumem__enter(cumem_t *cm) {
  int rc = cumem__check_process(cm);
  if (rc) return rc;
  cumem__lock_acquire(&cm->lock);
  (void)cumem__log_scope(cm->opts.verbose); /* this instance's verbosity */
  return 0;
}

void cumem__leave(cumem_t *cm) {
  cumem__log_scope_restore(-1);
  cumem__lock_release(&cm->lock);
}
