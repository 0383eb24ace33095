/* Sleep and wake: the engine, and the public calls that pick allocations.
 *
 * Sleep, for a list of allocations:
 *   1. wait for every device involved (unmap does not wait for kernels),
 *      then write the backups of disk tags (disk.c), before anything of the
 *      call is released: a disk that cannot take them refuses the whole
 *      call, which then changes nothing;
 *   2. for the allocations to offload, first-touch host segments on a pool
 *      of threads; this thread page-locks each touched segment and queues
 *      its device-to-host copy (one stream per device), so preparing and
 *      copying overlap (prepare_job says why registration stays here);
 *   3. release each allocation's physical memory as soon as its own copies
 *      are done (an event per allocation), overlapped with the next copies;
 *      discarded allocations are released at once, by other threads, while
 *      the copies run.
 *   Skipping unchanged chunks (skip.h) hooks into 2 and 3: the allocations
 *   it applies to are fingerprinted on the device meanwhile; only their
 *   changed chunks are copied, and those with none are released at once.
 * Wake, for a list of allocations:
 *   1. create and map the missing chunks of each allocation, queue the
 *      host-to-device copy of its backup and go on to map the next one
 *      while that copy runs;
 *   2. read the disk backups back (disk.c) while those copies run;
 *   3. wait for all copies; only then are backups marked spent (and given
 *      back when retention is off; disk backups always). On any failure
 *      everything this wake mapped is released again and every backup is
 *      kept.
 */
#include "core.h"
#include "pool.h"
#include "skip.h"

#include <stdlib.h>
#include <string.h>

static int release_alloc_memory(cumem_t *cm, alloc_t *a) {
  for (size_t i = 0; i < a->nchunks; i++) { /* handles left by failures too */
    int rc = cumem__unmap_chunk(cm, a, i);
    if (rc) return rc;
  }
  return 0;
}

/* A host segment to prepare: first-touched by the pool, registered by the
 * thread that copies into it. */
typedef struct prep_job { hostbuf_t *hb; size_t seg; } prep_job_t;

static int touch_job(void *jobs, size_t k) {
  prep_job_t *j = (prep_job_t *)jobs + k;
  cumem__hostbuf_touch_segment(j->hb, j->seg);
  return 0;
}

/* The segments of the listed allocations' backups still to prepare. */
static int collect_jobs(cumem_t *cm, alloc_t **list, size_t n, const unsigned char *want,
                        prep_job_t **jobs_out, size_t *njobs_out, size_t *first_job) {
  size_t njobs = 0;
  for (size_t i = 0; i < n; i++) {
    if (!want[i]) continue;
    int rc = cumem__backup_map(cm, list[i]);
    if (rc) return rc;
    list[i]->backup.give_back = 0; /* the background worker's to give back: taken back */
    for (size_t s = 0; s < list[i]->backup.nseg; s++) njobs += !list[i]->backup.ready[s];
  }
  prep_job_t *jobs = calloc(njobs ? njobs : 1, sizeof *jobs);
  if (!jobs) return CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory for %zu backup jobs", njobs);
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    first_job[i] = k;
    if (!want[i]) continue;
    for (size_t s = 0; s < list[i]->backup.nseg; s++)
      if (!list[i]->backup.ready[s]) jobs[k++] = (prep_job_t){&list[i]->backup, s};
  }
  *jobs_out = jobs;
  *njobs_out = njobs;
  return 0;
}

/* Job k touched (by the pool, or here), then registered on this thread, the
 * one that copies: registrations from the pool's threads stalled the
 * copying thread's driver calls on an H200 (releasing the copied
 * allocations took 549 ms instead of 40), so they go one at a time between
 * the copies, which run on the device meanwhile. Registering is the slow
 * part of a cold sleep (about 40 GB/s in an H200 VM, where the hypervisor
 * pins pages for DMA) and more threads do not speed it up
 * (bench/RESULTS.md); the way around it is to prepare a backup ahead. */
static int prepare_job(cumem_t *cm, cumem__pool_t *pool, prep_job_t *jobs, size_t k, double *t_register) {
  int rc = cumem__pool_wait(pool, k);
  double t0 = cumem__now();
  if (!rc) rc = cumem__hostbuf_register_segment(cm->backend, jobs[k].hb, jobs[k].seg, cm->register_lock_fd);
  *t_register += cumem__now() - t0;
  return rc;
}

int cumem__engine_prepare(cumem_t *cm, alloc_t **list, size_t n) {
  unsigned char *want = calloc(n ? n : 1, 1);
  size_t *first = malloc((n ? n : 1) * sizeof *first);
  prep_job_t *jobs = NULL;
  size_t njobs = 0;
  double t0 = cumem__now(), t_register = 0;
  int rc = want && first ? 0 : CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory");
  if (!rc) {
    for (size_t i = 0; i < n; i++) want[i] = !cumem__backs_up_to_disk(list[i]); /* no host copy */
    rc = collect_jobs(cm, list, n, want, &jobs, &njobs, first);
  }
  for (size_t i = 0; !rc && i < n; i++) list[i]->ahead = AHEAD_DONE; /* done here, not in the background */
  cumem__pool_t pool;
  if (!rc) rc = cumem__pool_start(&pool, touch_job, jobs, njobs, cm->opts.host_threads);
  if (!rc) {
    for (size_t k = 0; k < njobs && !rc; k++) rc = prepare_job(cm, &pool, jobs, k, &t_register);
    cumem__pool_cancel(&pool);
    cumem__log("prepared %zu host segments in %.1f ms (%.1f ms of it registering)", njobs,
               (cumem__now() - t0) * 1e3, t_register * 1e3);
  }
  free(jobs);
  free(first);
  free(want);
  return rc;
}

/* The discarded allocations of a sleep, released by the pool while the
 * copies run: releasing 32 GiB takes the driver tens of milliseconds, which
 * would otherwise come after the copies. */
typedef struct discards { cumem_t *cm; alloc_t **list; } discards_t;

static int release_job(void *ctx, size_t i) {
  discards_t *d = ctx;
  return release_alloc_memory(d->cm, d->list[i]);
}

/* An allocation whose copies are queued and whose release waits for them. */
typedef struct pending {
  alloc_t *a;
  size_t index; /* in the sleep's list */
  void *event;  /* NULL: nothing was copied */
} pending_t;

/* Wait for p's copies, then mark it backed up, record its fingerprints and
 * release its memory. */
static int complete_offload(cumem_t *cm, skip_t *sk, pending_t *p, double *t_copy, double *t_release) {
  double t0 = cumem__now();
  int rc = p->event ? cm->backend->event_synchronize(cm->backend, p->event) : 0;
  double t1 = cumem__now();
  *t_copy += t1 - t0;
  if (rc) return rc;
  p->a->backed_up = 1;
  p->a->backup.filled = 1;
  rc = cumem__skip_record(sk, p->index, p->a);
  if (!rc) rc = release_alloc_memory(cm, p->a);
  *t_release += cumem__now() - t1;
  return rc;
}

int cumem__engine_sleep(cumem_t *cm, alloc_t **list, size_t n, const unsigned char *offload) {
  cumem_backend_t *b = cm->backend;
  int rc = 0;

  /* 1. Quiesce the devices. */
  uint64_t devices = 0;
  for (size_t i = 0; i < n; i++)
    if (cumem__holds_memory(list[i])) devices |= (uint64_t)1 << list[i]->device;
  double t0 = cumem__now();
  for (int d = 0; d < cm->ndevices && !rc; d++)
    if (devices >> d & 1) rc = b->synchronize(b, d);
  if (rc) return rc;
  double t_sync = cumem__now() - t0, t_wait = 0, t_discards = 0, t_copy = 0, t_release_copied = 0;

  /* 2. What to copy: offloaded allocations, fully mapped, not yet backed up.
   * (One that is partly released already lost or saved its content.) */
  unsigned char *copy = calloc(n ? n : 1, 1);
  size_t *first = calloc(n ? n : 1, sizeof *first);
  if (!copy || !first) rc = CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory");
  for (size_t i = 0; !rc && i < n; i++) {
    copy[i] = offload[i] && !cumem__is_asleep(list[i]);
    list[i]->ahead = AHEAD_DONE; /* this sleep takes over from the background */
  }
  /* Disk backups first; those written leave `copy` and go with the discards. */
  if (!rc) rc = cumem__disk_sleep(cm, list, n, copy);
  prep_job_t *jobs = NULL;
  size_t njobs = 0;
  double t_register = 0;
  if (!rc) rc = collect_jobs(cm, list, n, copy, &jobs, &njobs, first);
  cumem__pool_t touchers;
  int touching = 0;
  if (!rc) {
    rc = cumem__pool_start(&touchers, touch_job, jobs, njobs, cm->opts.host_threads);
    touching = !rc;
  }
  /* Discarded (or already backed up) allocations go at once, on threads. */
  alloc_t **discard = rc ? NULL : malloc((n ? n : 1) * sizeof *discard);
  size_t ndiscard = 0;
  if (!rc && !discard) rc = CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory");
  for (size_t i = 0; !rc && i < n; i++) {
    if (copy[i]) continue;
    discard[ndiscard++] = list[i];
    /* Its content goes: a retained backup may stay for the next offloading
     * sleep (pinned already: that sleep only copies), never as content. */
    if (!list[i]->backed_up) list[i]->backup.filled = 0;
  }
  discards_t discards = {cm, discard};
  cumem__pool_t releasers;
  int releasing = 0;
  if (!rc && ndiscard > 0) {
    rc = cumem__pool_start(&releasers, release_job, &discards, ndiscard, cm->opts.release_threads);
    releasing = !rc;
  }
  skip_t sk; /* fingerprints, queued now (none after a failure) */
  int rc_skip = cumem__skip_begin(&sk, cm, list, rc ? 0 : n, copy);
  if (!rc) rc = rc_skip;

  /* 3. Copy, and release behind the copies. */
  streams_t st = {0};
  pending_t pend = {0}; /* at most one allocation waits for its copies */
  for (size_t i = 0; !rc && i < n; i++) {
    alloc_t *a = list[i];
    if (!copy[i]) continue; /* the releaser's */
    void *stream, *event = NULL;
    const unsigned char *changed = NULL; /* NULL: every segment */
    size_t ncopy = 0;
    rc = cumem__streams_get(cm, &st, a->device, &stream);
    if (!rc) rc = cumem__skip_plan(&sk, i, a, &changed, &ncopy);
    size_t k = first[i];
    for (size_t s = 0; !rc && s < a->backup.nseg; s++) {
      /* Segments prepared by this call are waited for; others were ready. */
      if (k < njobs && jobs[k].hb == &a->backup && jobs[k].seg == s) {
        double t1 = cumem__now();
        rc = prepare_job(cm, &touchers, jobs, k++, &t_register);
        t_wait += cumem__now() - t1;
      }
      if (!rc && (!changed || changed[s]))
        rc = b->copy_to_host(b, a->backup.ptr + s * a->backup.seg, a->va + s * a->backup.seg,
                             cumem__hostbuf_segment_size(&a->backup, s), stream);
    }
    if (!rc && ncopy == 0) { /* the backup holds all of it already: release now */
      pending_t done = {a, i, NULL};
      rc = complete_offload(cm, &sk, &done, &t_copy, &t_release_copied);
      continue;
    }
    if (!rc) rc = b->event_create(b, a->device, &event);
    if (!rc) rc = b->event_record(b, event, stream);
    if (rc) {
      if (event) b->event_destroy(b, event);
      break;
    }
    if (pend.a) {
      rc = complete_offload(cm, &sk, &pend, &t_copy, &t_release_copied);
      b->event_destroy(b, pend.event);
      pend.a = NULL;
    }
    pend = (pending_t){a, i, event};
  }
  if (pend.a) {
    if (!rc) rc = complete_offload(cm, &sk, &pend, &t_copy, &t_release_copied);
    b->event_destroy(b, pend.event);
  }

  /* Never return while copies into host memory are still running. */
  cumem__error_save_t e;
  cumem__error_save(&e);
  if (releasing) {
    double t1 = cumem__now();
    int rc3 = cumem__pool_join(&releasers);
    t_discards = cumem__now() - t1;
    if (!rc && rc3) {
      rc = rc3;
      cumem__error_save(&e);
    }
  }
  int rc2 = cumem__streams_finish(cm, &st);
  skip_t sk_log = sk; /* its figures, for the log */
  int rc_end = cumem__skip_end(&sk);
  if (!rc2) rc2 = rc_end;
  if (touching) cumem__pool_cancel(&touchers);
  if (rc) cumem__error_restore(&e); else rc = rc2;
  cumem__log("sleep of %zu allocations: %.1f ms device sync, %.1f ms preparing %zu host segments "
             "(%.1f ms of it registering), %.1f ms waiting for copies, %.1f ms releasing copied ones, "
             "%.1f ms finishing discards, %.1f ms in all", n, t_sync * 1e3, t_wait * 1e3, njobs,
             t_register * 1e3, t_copy * 1e3, t_release_copied * 1e3, t_discards * 1e3,
             (cumem__now() - t0) * 1e3);
  if (sk_log.nfingerprinted)
    cumem__log("skip unchanged: %zu allocations (%.2f GiB) fingerprinted, %.1f ms queueing, %.1f ms waiting; "
               "%.2f GiB not copied", sk_log.nfingerprinted, sk_log.bytes_fingerprinted / 1073741824.0,
               sk_log.t_queue * 1e3, sk_log.t_wait * 1e3, sk_log.bytes_skipped / 1073741824.0);
  free(discard);
  free(jobs);
  free(first);
  free(copy);
  return rc;
}

/* A chunk this wake mapped, to undo on failure. */
typedef struct mapped_chunk { alloc_t *a; size_t i; } mapped_chunk_t;

/* Map the missing chunks of a, recording them for undo. */
static int map_alloc(cumem_t *cm, alloc_t *a, mapped_chunk_t *undo, size_t *nundo) {
  for (size_t c = 0; c < a->nchunks; c++) {
    if (a->state[c] == CHUNK_READY) continue;
    int rc = cumem__map_chunk(cm, a, c);
    if (rc) return rc;
    undo[(*nundo)++] = (mapped_chunk_t){a, c};
  }
  return 0;
}

/* Queue the copy of a's backup back to the device (or its zeroing). */
static int queue_restore(cumem_t *cm, streams_t *st, alloc_t *a) {
  cumem_backend_t *b = cm->backend;
  void *stream;
  if (cumem__on_disk(a)) return 0; /* read back by cumem__disk_wake */
  if (!a->backed_up && !cm->opts.zero_on_wake) return 0;
  int rc = cumem__streams_get(cm, st, a->device, &stream);
  if (rc) return rc;
  if (!a->backed_up) return b->memset(b, a->va, 0, a->size, stream);
  for (size_t s = 0; !rc && s < a->backup.nseg; s++)
    rc = b->copy_to_device(b, a->va + s * a->backup.seg, a->backup.ptr + s * a->backup.seg,
                           cumem__hostbuf_segment_size(&a->backup, s), stream);
  return rc;
}

int cumem__engine_wake(cumem_t *cm, alloc_t **list, size_t n) {
  size_t cap = 0;
  for (size_t i = 0; i < n; i++) cap += list[i]->nchunks - list[i]->nmapped;
  /* (chunks already READY are neither mapped nor undone here) */
  mapped_chunk_t *undo = malloc((cap ? cap : 1) * sizeof *undo);
  if (!undo) return CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory");
  size_t nundo = 0;
  streams_t st = {0};
  int rc = 0;

  /* Map an allocation, queue its restore, go on to map the next one while
   * that copy runs. (Mapping everything first measured slower on an H200:
   * 52.5 against 54.5 GB/s, bench/RESULTS.md.) */
  double t0 = cumem__now(), t_map = 0;
  for (size_t i = 0; !rc && i < n; i++) {
    double t1 = cumem__now();
    rc = map_alloc(cm, list[i], undo, &nundo);
    t_map += cumem__now() - t1;
    if (!rc) rc = queue_restore(cm, &st, list[i]);
  }
  if (!rc) rc = cumem__disk_wake(cm, list, n);
  double t_queued = cumem__now();
  cumem__error_save_t e;
  cumem__error_save(&e);
  int rc2 = cumem__streams_finish(cm, &st);
  if (rc) cumem__error_restore(&e); else rc = rc2;
  cumem__log("wake of %zu allocations: %.1f ms mapping, %.1f ms queueing in all, %.1f ms waiting for copies",
             n, t_map * 1e3, (t_queued - t0) * 1e3, (cumem__now() - t_queued) * 1e3);

  if (rc) {
    /* Undo only what this call mapped; the backups are untouched. */
    cumem__error_save(&e);
    for (size_t k = nundo; k-- > 0;)
      if (cumem__unmap_chunk(cm, undo[k].a, undo[k].i) != 0)
        cumem__log("could not undo a mapping of a failed wake; it stays mapped");
    cumem__error_restore(&e);
  } else {
    /* Without retention the backups go back in the background: the wake
     * is done once the content is restored. */
    int give_back = 0;
    for (size_t i = 0; i < n; i++) {
      alloc_t *a = list[i];
      a->backed_up = 0;
      cumem__disk_close(&a->disk); /* disk backups are never retained */
      if (!cm->opts.retain_backup && a->backup.ptr) {
        a->backup.filled = 0;
        a->backup.give_back = give_back = 1;
      }
    }
    if (give_back) cumem__background_kick(cm);
  }
  free(undo);
  return rc;
}

/* ---- the public calls ---------------------------------------------------- */

/* Which allocations of the tag set a call takes. */
enum { HOLDING = 0, /* holding physical memory (sleep, prepare) */
       ASLEEP = 1,  /* not fully awake (wake) */
       EVERY = 2 }; /* all of them (release_backup) */

static int select_allocs(cumem_t *cm, tag_t **set, size_t nset, int all, int which,
                         alloc_t ***out, size_t *n) {
  size_t count = 0;
  for (alloc_t *a = cm->table.first; a; a = a->next) count++;
  alloc_t **list = malloc((count ? count : 1) * sizeof *list);
  if (!list) return CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory");
  size_t k = 0;
  for (alloc_t *a = cm->table.first; a; a = a->next) {
    if (a->freeing || !cumem__tag_in(a->tag, set, nset, all)) continue;
    int wanted = which == EVERY || (which == ASLEEP ? cumem__is_asleep(a) : cumem__holds_memory(a));
    if (wanted) list[k++] = a;
  }
  *out = list;
  *n = k;
  return 0;
}

int cumem_sleep(cumem_t *cm, const char *const *tags, const char *const *offload_tags) {
  if (!cm) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_sleep: instance is NULL");
  int rc = cumem__enter(cm);
  if (rc) return rc;
  tag_t **set = NULL, **off = NULL;
  size_t nset = 0, noff = 0, n = 0;
  int all = 0, off_all = 0;
  alloc_t **list = NULL;
  unsigned char *offload = NULL;
  rc = cumem__background_take_error(cm);
  if (!rc) rc = cumem__tag_set(cm, tags, &set, &nset, &all);
  if (!rc && offload_tags) rc = cumem__tag_set(cm, offload_tags, &off, &noff, &off_all);
  if (!rc) rc = select_allocs(cm, set, nset, all, HOLDING, &list, &n);
  if (!rc && !(offload = calloc(n ? n : 1, 1))) rc = CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory");
  for (size_t i = 0; !rc && i < n; i++)
    offload[i] = offload_tags && cumem__tag_in(list[i]->tag, off, noff, off_all);
  if (!rc) rc = cumem__engine_sleep(cm, list, n, offload);
  cumem__leave(cm);
  free(offload);
  free(list);
  free(off);
  free(set);
  return rc;
}

/* Wake (or prepare, or release) the allocations of a tag list that `which`
 * selects. A failure of background work not yet reported is reported
 * instead. */
static int run_on_tags(cumem_t *cm, const char *const *tags, int which,
                       int (*engine)(cumem_t *, alloc_t **, size_t)) {
  int rc = cumem__enter(cm);
  if (rc) return rc;
  tag_t **set = NULL;
  size_t nset = 0, n = 0;
  int all = 0;
  alloc_t **list = NULL;
  rc = cumem__background_take_error(cm);
  if (!rc) rc = cumem__tag_set(cm, tags, &set, &nset, &all);
  if (!rc) rc = select_allocs(cm, set, nset, all, which, &list, &n);
  if (!rc) rc = engine(cm, list, n);
  cumem__leave(cm);
  free(list);
  free(set);
  return rc;
}

int cumem_wake(cumem_t *cm, const char *const *tags) {
  if (!cm) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_wake: instance is NULL");
  return run_on_tags(cm, tags, ASLEEP, cumem__engine_wake);
}

int cumem_prepare_backup(cumem_t *cm, const char *const *tags) {
  if (!cm) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_prepare_backup: instance is NULL");
  return run_on_tags(cm, tags, HOLDING, cumem__engine_prepare);
}

static int release_backups(cumem_t *cm, alloc_t **list, size_t n) {
  int rc = cumem__disk_staging_free(cm); /* what a failed disk transfer kept */
  if (rc) return rc;
  for (size_t i = 0; i < n; i++) {
    if (list[i]->backed_up) continue; /* holds content a wake must restore */
    list[i]->ahead = AHEAD_DONE;
    rc = cumem__hostbuf_free(cm->backend, &list[i]->backup);
    if (rc) return rc;
  }
  return cumem__skip_give_back(cm);
}

int cumem_release_backup(cumem_t *cm, const char *const *tags) {
  if (!cm) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_release_backup: instance is NULL");
  return run_on_tags(cm, tags, EVERY, release_backups); /* asleep or not */
}

/* Mark for the background worker: give back what is not backing up a
 * sleeping content. */
static int release_backups_async(cumem_t *cm, alloc_t **list, size_t n) {
  int queued = 0;
  for (size_t i = 0; i < n; i++) {
    alloc_t *a = list[i];
    if (a->backed_up || !a->backup.ptr) continue;
    a->ahead = AHEAD_DONE;
    a->backup.filled = 0; /* the view goes with it (cumem_backup_view) */
    a->backup.give_back = queued = 1;
  }
  if (queued) cumem__background_kick(cm);
  return 0;
}

int cumem_release_backup_async(cumem_t *cm, const char *const *tags) {
  if (!cm) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_release_backup_async: instance is NULL");
  return run_on_tags(cm, tags, EVERY, release_backups_async); /* asleep or not, as release_backup */
}

/* Mark for the background worker, due now: prepare the backups of awake
 * allocations whose content no backup holds. */
static int prepare_backups_async(cumem_t *cm, alloc_t **list, size_t n) {
  int queued = 0;
  for (size_t i = 0; i < n; i++) {
    alloc_t *a = list[i];
    if (a->backed_up || cumem__is_asleep(a) || cumem__backs_up_to_disk(a)) continue; /* no host backup */
    a->backup.give_back = 0;
    a->ahead = AHEAD_WANTED;
    a->tag->ahead_due = 0;
    queued = 1;
  }
  if (queued) cumem__background_kick(cm);
  return 0;
}

int cumem_prepare_backup_async(cumem_t *cm, const char *const *tags) {
  if (!cm) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_prepare_backup_async: instance is NULL");
  return run_on_tags(cm, tags, HOLDING, prepare_backups_async);
}

/* One allocation, for the seed ABI. */
static int one_alloc(cumem_t *cm, void *ptr, int wake) {
  if (!cm || !ptr) return CUMEM_FAIL(CUMEM_EINVAL, "NULL argument");
  int rc = cumem__enter(cm);
  if (rc) return rc;
  alloc_t *a = NULL;
  rc = cumem__find_start(cm, ptr, wake ? "cumem_create_map" : "cumem_unmap_release", &a);
  unsigned char no_offload = 0;
  if (!rc && wake && cumem__is_asleep(a)) rc = cumem__engine_wake(cm, &a, 1);
  if (!rc && !wake && cumem__holds_memory(a)) rc = cumem__engine_sleep(cm, &a, 1, &no_offload);
  cumem__leave(cm);
  return rc;
}

int cumem_unmap_release(cumem_t *cm, void *ptr) { return one_alloc(cm, ptr, 0); }
int cumem_create_map(cumem_t *cm, void *ptr) { return one_alloc(cm, ptr, 1); }
