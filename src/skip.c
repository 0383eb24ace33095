/* Skip unchanged copy chunks at sleep (see skip.h for the invariant). */
#include "skip.h"
#include "fingerprint.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The tag's choice, else the instance's. */
static int skip_wanted(const cumem_t *cm, const alloc_t *a) {
  int t = a->tag->opts.skip_unchanged;
  return t == CUMEM_TAG_INHERIT ? cm->opts.skip_unchanged : t;
}

/* Worth fingerprinting: the fingerprints can serve a later sleep. (Disk
 * tags never reach here: their backups are written before, whole.) */
static int skip_applies(const cumem_t *cm, const alloc_t *a) {
  return skip_wanted(cm, a) && cm->opts.retain_backup && cm->backend->fingerprint && a->backup.ptr &&
         !a->backup.viewed;
}

/* The backup holds content whose fingerprints are known. */
static int backup_comparable(const alloc_t *a) {
  const hostbuf_t *hb = &a->backup;
  if (!hb->filled || !hb->fingerprinted || !hb->fingerprints) return 0;
  for (size_t s = 0; s < hb->nseg; s++)
    if (!hb->ready[s]) return 0;
  return 1;
}

/* Skipping is an optimization: where it fails, the sleep copies and
 * succeeds, so the failure is logged and the thread's error detail is put
 * back as it was (it describes failed calls only). */
static void log_fallback(const cumem__error_save_t *before, const char *what) {
  cumem__log("skip unchanged: %s (%s)", what, cumem_last_error());
  cumem__error_restore(before);
}

static void skip_forget(skip_t *sk, const cumem__error_save_t *before, const char *why) {
  log_fallback(before, why);
  free(sk->items);
  sk->items = NULL;
}

/* The arena: room for a sleep's fingerprints, page-locked so that the
 * device's copies into it are asynchronous. Made for each sleep that
 * fingerprints and given back at its end, so that an instance whose
 * allocations are all freed holds nothing; one that could not be unlocked
 * stays in cm->fp_arena and is given back later. */
static int arena_free(cumem_t *cm) {
  if (!cm->fp_arena) return 0;
  int rc = cm->backend->host_unregister(cm->backend, cm->fp_arena);
  if (rc) return rc; /* never free memory the driver may still have locked */
  free(cm->fp_arena);
  cm->fp_arena = NULL;
  return 0;
}

static int arena_make(cumem_t *cm, size_t values) {
  int rc = arena_free(cm); /* one a sleep could not give back */
  if (rc) return rc;
  size_t page = (size_t)sysconf(_SC_PAGESIZE), size = cumem__ceil_div(values * sizeof(uint64_t), page) * page;
  void *p = NULL;
  if (posix_memalign(&p, page, size) != 0)
    return CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory for %zu fingerprints", values);
  memset(p, 0, size);
  rc = cm->backend->host_register(cm->backend, p, size);
  if (rc) {
    free(p);
    return rc;
  }
  cm->fp_arena = p;
  return 0;
}

int cumem__skip_give_back(cumem_t *cm) { return arena_free(cm); }

static int wait_for(skip_t *sk, skip_item_t *it);

/* Record the ring's next event behind its item's kernel on `stream`. */
static int event_behind(skip_t *sk, skip_item_t *it, int device, void *stream) {
  cumem_backend_t *b = sk->cm->backend;
  skip_event_t *e = &sk->events[sk->nqueued % SKIP_EVENTS];
  int rc = e->owner ? wait_for(sk, e->owner) : 0; /* (long done, in practice) */
  if (rc) return rc;
  if (e->event && e->device != device) {
    b->event_destroy(b, e->event);
    e->event = NULL;
  }
  if (!e->event) rc = b->event_create(b, device, &e->event);
  if (rc) return rc;
  e->device = device;
  e->owner = NULL;
  rc = b->event_record(b, e->event, stream);
  if (rc) return rc;
  e->owner = it;
  it->event = e->event;
  it->queued = 1;
  sk->nqueued++;
  return 0;
}

/* Queue a's kernel and an event behind it. A failure before the kernel is
 * queued only leaves a unfingerprinted; once it may run, the stream must be
 * waited for (a failure of that is the caller's). */
static int queue_one(skip_t *sk, skip_item_t *it, alloc_t *a) {
  cumem_backend_t *b = sk->cm->backend;
  void *stream = NULL;
  cumem__error_save_t before;
  cumem__error_save(&before);
  int rc = cumem__streams_get(sk->cm, &sk->streams, a->device, &stream);
  if (!rc) rc = b->fingerprint(b, a->va, a->backup.seg, a->size, it->fp, stream);
  if (rc) {
    log_fallback(&before, "cannot fingerprint on this device; this sleep copies its allocations whole");
    sk->disabled |= (uint64_t)1 << a->device;
    /* A launch that failed half-way may have queued work: wait for it. */
    return stream ? b->stream_synchronize(b, stream) : 0;
  }
  rc = event_behind(sk, it, a->device, stream);
  if (rc) {
    log_fallback(&before, "no event behind a fingerprint; its kernel is waited for now, the allocation copied");
    return b->stream_synchronize(b, stream);
  }
  sk->nfingerprinted++;
  sk->bytes_fingerprinted += a->size;
  return 0;
}

/* Kernels are queued this many allocations ahead of the one the copy loop
 * is at: enough to keep the device busy (an allocation's kernel takes less
 * time than its release on the host), while the first copies need not wait
 * for hundreds of launches to be queued. */
#define SKIP_LOOKAHEAD 8

/* Queue the kernels of the allocations up to index `last`. */
static int queue_upto(skip_t *sk, size_t last) {
  int rc = 0;
  double t0 = cumem__now();
  for (; !rc && sk->next < sk->n && sk->next <= last; sk->next++) {
    skip_item_t *it = &sk->items[sk->next];
    alloc_t *a = sk->list[sk->next];
    if (it->fp && !(sk->disabled >> a->device & 1)) rc = queue_one(sk, it, a);
  }
  sk->t_queue += cumem__now() - t0;
  return rc;
}

int cumem__skip_begin(skip_t *sk, cumem_t *cm, alloc_t **list, size_t n, const unsigned char *copy) {
  memset(sk, 0, sizeof *sk);
  sk->cm = cm;
  size_t values = 0, most_segments = 0;
  for (size_t i = 0; i < n; i++) {
    if (!copy[i] || !skip_applies(cm, list[i])) continue;
    values += CUMEM_FP_VALUES * list[i]->backup.nseg;
    if (list[i]->backup.nseg > most_segments) most_segments = list[i]->backup.nseg;
  }
  if (values == 0) return 0;
  sk->items = calloc(n, sizeof *sk->items);
  sk->list = list;
  sk->n = n;
  sk->changed = malloc(most_segments);
  cumem__error_save_t before;
  cumem__error_save(&before);
  if (!sk->items || !sk->changed) {
    CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory for the fingerprints of %zu allocations", n);
    skip_forget(sk, &before, "no host memory for this sleep's fingerprints; it copies everything");
    return 0;
  }
  if (arena_make(cm, values) != 0) {
    skip_forget(sk, &before, "cannot page-lock room for this sleep's fingerprints; it copies everything");
    return 0;
  }
  sk->arena = cm->fp_arena;
  for (size_t i = 0, off = 0; i < n; i++) {
    alloc_t *a = list[i];
    if (!copy[i] || !skip_applies(cm, a)) continue;
    skip_item_t *it = &sk->items[i];
    it->fp = sk->arena + off; /* fingerprinted: has room */
    off += CUMEM_FP_VALUES * a->backup.nseg;
    it->compare = backup_comparable(a); /* as the sleep found it */
  }
  return queue_upto(sk, SKIP_LOOKAHEAD - 1);
}

/* Wait for an item's kernel (once). */
static int wait_for(skip_t *sk, skip_item_t *it) {
  if (it->waited) return 0;
  double t0 = cumem__now();
  int rc = sk->cm->backend->event_synchronize(sk->cm->backend, it->event);
  sk->t_wait += cumem__now() - t0;
  it->waited = !rc;
  return rc;
}

int cumem__skip_plan(skip_t *sk, size_t i, alloc_t *a, const unsigned char **changed, size_t *ncopy) {
  skip_item_t *it = sk->items ? &sk->items[i] : NULL;
  *changed = NULL;
  *ncopy = a->backup.nseg;
  a->skipped = 0;
  if (it) {
    int rc = queue_upto(sk, i + SKIP_LOOKAHEAD);
    if (rc) return rc;
  }
  if (it && it->queued && it->compare) {
    int rc = wait_for(sk, it);
    if (rc) return rc;
    const uint64_t *old = a->backup.fingerprints;
    *ncopy = 0;
    for (size_t s = 0; s < a->backup.nseg; s++) {
      const uint64_t *now = it->fp + CUMEM_FP_VALUES * s, *was = old + CUMEM_FP_VALUES * s;
      sk->changed[s] = now[0] != was[0] || now[1] != was[1];
      *ncopy += sk->changed[s];
      if (!sk->changed[s]) a->skipped += cumem__hostbuf_segment_size(&a->backup, s);
    }
    *changed = sk->changed;
    sk->bytes_skipped += a->skipped;
  }
  if (*ncopy) a->backup.fingerprinted = 0; /* about to be written */
  return 0;
}

int cumem__skip_record(skip_t *sk, size_t i, alloc_t *a) {
  skip_item_t *it = sk->items ? &sk->items[i] : NULL;
  int rc = it ? queue_upto(sk, i) : 0; /* (plan queued it already) */
  if (rc) return rc;
  if (!it || !it->queued) return 0; /* nothing known: the backup stays unfingerprinted */
  rc = wait_for(sk, it);
  if (rc) return rc;
  hostbuf_t *hb = &a->backup;
  size_t bytes = CUMEM_FP_VALUES * hb->nseg * sizeof *hb->fingerprints;
  if (!hb->fingerprints && !(hb->fingerprints = malloc(bytes))) {
    cumem__log("skip unchanged: out of host memory to keep %zu fingerprints; the next sleep copies it all",
               CUMEM_FP_VALUES * hb->nseg);
    return 0;
  }
  memcpy(hb->fingerprints, it->fp, bytes);
  hb->fingerprinted = 1;
  return 0;
}

int cumem__skip_end(skip_t *sk) {
  cumem_backend_t *b = sk->cm ? sk->cm->backend : NULL;
  int first = sk->cm ? cumem__streams_finish(sk->cm, &sk->streams) : 0;
  for (int e = 0; e < SKIP_EVENTS; e++)
    if (sk->events[e].event) b->event_destroy(b, sk->events[e].event);
  /* After a failed wait the device might still write into the arena: keep
   * it then too. (Given back by the next sleep, release_backup or close.) */
  cumem__error_save_t before;
  cumem__error_save(&before);
  if (sk->arena && !first && arena_free(sk->cm) != 0)
    log_fallback(&before, "the fingerprint arena stays page-locked for now");
  free(sk->items);
  free(sk->changed);
  memset(sk, 0, sizeof *sk);
  return first;
}
