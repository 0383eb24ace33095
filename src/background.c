/* The background worker: work that should not sit on a caller's critical
 * path, done by one thread per instance.
 *
 *  - Giving host backups back. A wake with retention off (and
 *    cumem_release_backup_async) only marks the backups; the worker then
 *    unregisters them one segment per step and unmaps them, so the wake
 *    returns as soon as the content is restored. A sleep that comes first
 *    takes a backup back from the worker and reuses what is still pinned.
 *  - Preparing backups ahead (prepare-ahead tags, cumem_prepare_backup_async):
 *    first-touching a few pages per step and registering each segment once
 *    touched, so that the first sleep only copies. Only allocations that are
 *    awake and not yet prepared; sleep, free and release simply take over.
 *
 * Why steps under the instance lock: every step is short (touching 2 MiB,
 * or one cuMemHostRegister / cuMemHostUnregister of a copy segment, or one
 * munmap) and runs with the fair lock held, so the worker never races a
 * caller — it sees the allocation table between calls, as a caller does —
 * and a caller waits for at most one step. The worker yields between steps.
 *
 * Failures (a registration or unregistration the driver refuses) lose
 * nothing: the backup stays as it was and is accounted as held (retained).
 * The first one is kept and reported by the next cumem_sleep, cumem_wake,
 * cumem_prepare_backup[_async], cumem_release_backup[_async] or cumem_drain
 * of the instance, which then fails with it without doing anything else.
 *
 * fork(): a child does not get the thread, and every call on an instance
 * opened before the fork fails with CUMEM_EFORKED in the child (lock.c), so
 * the child never waits for a worker that is not there. At process exit the
 * workers are stopped (after their current step) before the driver tears
 * itself down. */
#include "core.h"
#include "cumem_testing.h"

#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>

#define TOUCH_STEP ((size_t)2 << 20) /* bytes first-touched per step */

/* ---- the steps (instance lock held) ------------------------------------ */

/* Keep the first failure (what failed, and the backend's detail) for the
 * next reporting call. */
static void note_failure(cumem_t *cm, int rc, int giving_back, alloc_t *a) {
  cumem__error_save_t cause;
  cumem__error_save(&cause);
  if (giving_back)
    CUMEM_FAIL(rc, "background worker: giving back the host backup of %p failed; it stays held, as a "
                   "retained one: %s", (void *)a->va, cause.text);
  else
    CUMEM_FAIL(rc, "background worker: preparing the host backup of %p ahead failed; the sleep prepares "
                   "what is missing: %s", (void *)a->va, cause.text);
  if (cm->bg.error) return;
  cm->bg.error = rc;
  cumem__error_save(&cm->bg.detail);
}

static void give_back_step(cumem_t *cm, alloc_t *a) {
  size_t size = a->backup.size;
  int done, rc = cumem__hostbuf_give_back_step(cm->backend, &a->backup, &done);
  if (rc) {
    note_failure(cm, rc, 1, a);
    a->backup.give_back = 0;
  } else if (done) {
    cm->bg.given_back += size;
  }
}

static void prepare_step(cumem_t *cm, alloc_t *a) {
  int done = 0, rc = cumem__backup_map(cm, a);
  if (!rc) rc = cumem__hostbuf_prepare_step(cm->backend, &a->backup, TOUCH_STEP, cm->register_lock_fd, &done);
  if (rc) {
    note_failure(cm, rc, 0, a);
    a->ahead = AHEAD_DONE;
  } else if (done) {
    a->ahead = AHEAD_DONE;
    cm->bg.prepared += a->backup.size;
  }
}

static void log_idle(cumem_t *cm) {
  if (!cm->bg.busy_since) return;
  cumem__log("background worker idle after %.1f ms: gave back %.2f GiB of host backups, prepared %.2f GiB ahead",
             (cumem__now() - cm->bg.busy_since) * 1e3, (double)cm->bg.given_back / (1 << 30),
             (double)cm->bg.prepared / (1 << 30));
  cm->bg.busy_since = 0;
  cm->bg.given_back = cm->bg.prepared = 0;
}

/* The allocations in table order, starting at the one whose address is
 * *resume (the one the last step of this kind worked on, if it still
 * exists) and wrapping around, until `wants` accepts one: it becomes the
 * resume point. Work is found where the last was, so a pass over N
 * allocations costs O(N) in all, not O(N) per step; by address, because
 * an allocation freed between steps must not be dereferenced. */
static alloc_t *next_work(cumem_t *cm, uintptr_t *resume, int (*wants)(alloc_t *a, void *ctx), void *ctx) {
  alloc_t *start = *resume ? cumem__table_find(&cm->table, *resume) : NULL;
  if (!start) start = cm->table.first;
  for (int lap = 0; lap < 2; lap++) {
    for (alloc_t *a = lap ? cm->table.first : start; a && (!lap || a != start); a = a->next) {
      if (wants(a, ctx)) {
        *resume = a->va;
        return a;
      }
    }
  }
  *resume = 0;
  return NULL;
}

static int wants_give_back(alloc_t *a, void *ctx) {
  (void)ctx;
  return a->backup.give_back;
}

typedef struct ahead_scan {
  double now, *due;
  int ignore_delay;
} ahead_scan_t;

/* An allocation to prepare ahead now. Those a sleep or free took over (or
 * whose backup is a file) are marked done on the way; those whose tag is
 * not due yet set *due to the earliest time one is. */
static int wants_prepare(alloc_t *a, void *ctx) {
  ahead_scan_t *scan = ctx;
  if (a->ahead != AHEAD_WANTED) return 0;
  if (a->freeing || cumem__is_asleep(a) || cumem__backs_up_to_disk(a)) {
    a->ahead = AHEAD_DONE;
    return 0;
  }
  if (!scan->ignore_delay && a->tag->ahead_due > scan->now) {
    if (!*scan->due || a->tag->ahead_due < *scan->due) *scan->due = a->tag->ahead_due;
    return 0;
  }
  return 1;
}

int cumem__background_step(cumem_t *cm, int ignore_delay, double *due) {
  *due = 0;
  /* Giving back first: that is host memory the user waits for. */
  alloc_t *work = next_work(cm, &cm->bg.give_back_at, wants_give_back, NULL);
  if (work) {
    if (!cm->bg.busy_since) cm->bg.busy_since = cumem__now();
    give_back_step(cm, work);
    return 1;
  }
  ahead_scan_t scan = {cumem__now(), due, ignore_delay};
  work = next_work(cm, &cm->bg.prepare_at, wants_prepare, &scan);
  if (!work) {
    log_idle(cm);
    return 0;
  }
  if (!cm->bg.busy_since) cm->bg.busy_since = scan.now;
  prepare_step(cm, work);
  return 1;
}

int cumem__background_take_error(cumem_t *cm) {
  int rc = cm->bg.error;
  if (rc) {
    cumem__error_restore(&cm->bg.detail);
    cm->bg.error = 0;
  }
  return rc;
}

/* ---- the thread ---------------------------------------------------------- */

/* Instances whose worker runs, for stopping them all at exit: a list
 * linked through bg.next_running, as long as there are instances. */
static pthread_mutex_t running_mu = PTHREAD_MUTEX_INITIALIZER;
static cumem_t *running;
static pthread_once_t atexit_once = PTHREAD_ONCE_INIT;

static void stop_all_at_exit(void) {
  for (;;) {
    pthread_mutex_lock(&running_mu);
    cumem_t *cm = running;
    pthread_mutex_unlock(&running_mu);
    if (!cm) return;
    cumem__background_stop(cm); /* removes it from the list */
  }
}

/* A fork child's copy of the list may have been locked by another thread. */
static void on_fork_child(void) { pthread_mutex_init(&running_mu, NULL); }

static void install_atexit(void) {
  atexit(stop_all_at_exit);
  pthread_atfork(NULL, NULL, on_fork_child);
}

static void list_running(cumem_t *cm, int add) {
  pthread_mutex_lock(&running_mu);
  cumem_t **at = &running;
  while (*at && *at != cm) at = &(*at)->bg.next_running;
  if (add && !*at) {
    cm->bg.next_running = NULL;
    *at = cm;
  } else if (!add && *at) {
    *at = cm->bg.next_running;
  }
  pthread_mutex_unlock(&running_mu);
}

static int stopping(cumem_t *cm) {
  pthread_mutex_lock(&cm->bg.mu);
  int stop = cm->bg.stop;
  pthread_mutex_unlock(&cm->bg.mu);
  return stop;
}

static void *worker_main(void *arg) {
  cumem_t *cm = arg;
  (void)cumem__log_scope(cm->opts.verbose); /* it logs as its instance does */
  for (;;) {
    pthread_mutex_lock(&cm->bg.mu);
    cm->bg.kicked = 0; /* a kick from now on is seen by the wait below */
    pthread_mutex_unlock(&cm->bg.mu);
    double due = 0;
    int busy = 1;
    while (busy && !stopping(cm)) {
      cumem__lock_acquire(&cm->lock);
      busy = !cm->bg.held && cumem__background_step(cm, 0, &due);
      cumem__lock_release(&cm->lock);
      if (busy) sched_yield(); /* callers first */
    }
    pthread_mutex_lock(&cm->bg.mu);
    while (!cm->bg.kicked && !cm->bg.stop) {
      if (!due) {
        pthread_cond_wait(&cm->bg.cv, &cm->bg.mu);
        continue;
      }
      /* Delayed work: wake when it is due (the cv runs on CLOCK_MONOTONIC). */
      time_t sec = (time_t)due;
      struct timespec ts = {sec, (long)((due - (double)sec) * 1e9)};
      if (pthread_cond_timedwait(&cm->bg.cv, &cm->bg.mu, &ts) == ETIMEDOUT) break;
    }
    int stop = cm->bg.stop;
    pthread_mutex_unlock(&cm->bg.mu);
    if (stop) return NULL;
  }
}

void cumem__background_init(cumem_t *cm) {
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC); /* cumem__now's clock */
  pthread_mutex_init(&cm->bg.mu, NULL);
  pthread_cond_init(&cm->bg.cv, &attr);
  pthread_condattr_destroy(&attr);
}

void cumem__background_kick(cumem_t *cm) {
  if (!cm->bg.started) {
    pthread_once(&atexit_once, install_atexit);
    if (pthread_create(&cm->bg.thread, NULL, worker_main, cm) != 0) {
      /* The work stays marked: cumem_drain, a sleep or close finishes it. */
      cumem__log("could not start the background worker; its work waits for cumem_drain or close");
      return;
    }
    cm->bg.started = 1;
    list_running(cm, 1);
  }
  pthread_mutex_lock(&cm->bg.mu);
  cm->bg.kicked = 1;
  pthread_cond_signal(&cm->bg.cv);
  pthread_mutex_unlock(&cm->bg.mu);
}

void cumem__background_stop(cumem_t *cm) {
  list_running(cm, 0);
  cumem__error_save_t e;
  cumem__error_save(&e);
  int forked = cumem__check_process(cm) != 0; /* a child has no worker to stop */
  cumem__error_restore(&e);
  if (forked) return;
  cumem__lock_acquire(&cm->lock);
  int started = cm->bg.started;
  pthread_t thread = cm->bg.thread;
  cm->bg.started = 0; /* a later kick starts a new one */
  cumem__lock_release(&cm->lock);
  if (!started) return;
  pthread_mutex_lock(&cm->bg.mu);
  cm->bg.stop = 1;
  pthread_cond_signal(&cm->bg.cv);
  pthread_mutex_unlock(&cm->bg.mu);
  pthread_join(thread, NULL);
  pthread_mutex_lock(&cm->bg.mu);
  cm->bg.stop = 0;
  pthread_mutex_unlock(&cm->bg.mu);
}

void cumem__background_destroy(cumem_t *cm) {
  pthread_cond_destroy(&cm->bg.cv);
  pthread_mutex_destroy(&cm->bg.mu);
}

/* ---- the public calls ---------------------------------------------------- */

int cumem_drain(cumem_t *cm) {
  if (!cm) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_drain: instance is NULL");
  int rc = cumem__enter(cm);
  double due;
  while (!rc && cumem__background_step(cm, 1, &due)) {
    cumem__leave(cm); /* other callers between the steps, as with the worker */
    rc = cumem__enter(cm);
  }
  if (rc) return rc;
  rc = cumem__background_take_error(cm);
  cumem__leave(cm);
  return rc;
}

/* ---- for tests (cumem_testing.h) ------------------------------------------ */

void cumem_testing_hold_background(cumem_t *cm, int hold) {
  cumem__lock_acquire(&cm->lock);
  cm->bg.held = hold != 0;
  if (!hold) cumem__background_kick(cm);
  cumem__lock_release(&cm->lock);
}

int cumem_testing_running_workers(void) {
  int n = 0;
  pthread_mutex_lock(&running_mu);
  for (cumem_t *cm = running; cm; cm = cm->bg.next_running) n++;
  pthread_mutex_unlock(&running_mu);
  return n;
}

int cumem_testing_background_steps(cumem_t *cm, int n) {
  int done = 0;
  double due;
  for (; done < n; done++) {
    cumem__lock_acquire(&cm->lock);
    int busy = cumem__background_step(cm, 1, &due);
    cumem__lock_release(&cm->lock);
    if (!busy) break;
  }
  return done;
}
