/* Skip unchanged copy chunks at sleep: the sleep engine's hooks (skip.c).
 *
 * The invariant: while a backup's `fingerprinted` flag is set, its
 * `fingerprints` are those of the content it holds, segment by segment (a
 * segment is a copy chunk, copy_chunk bytes). Whatever writes into a backup
 * clears the flag first: a sleep's copies (the flag comes back, with the new
 * fingerprints, once all of them completed) and a writable view handed out
 * by cumem_backup_view (that backup is then never trusted again, until it is
 * given back). A new or freed backup has none. Wake only reads the backup,
 * so its fingerprints survive: after a wake they describe the backup, and so
 * also the content restored from it; no kernel runs at wake. What the device
 * did meanwhile (writes, a discarding sleep, zeroing on wake) does not touch
 * the backup and so cannot break the invariant: the next sleep compares the
 * device's content of that moment with the backup.
 *
 * At sleep, every allocation to copy whose tag skips unchanged chunks, while
 * backups are retained, is fingerprinted on its device: one kernel per
 * allocation on a stream of its own, queued a few allocations ahead of the
 * copy loop, so that they run while earlier allocations copy or release. Where its backup has fingerprints, only
 * the segments whose fingerprints differ are copied, and an allocation with
 * no changed segment is released at once; elsewhere everything is copied and
 * the fingerprints are recorded for the next sleep. When fingerprinting
 * fails (or the backend cannot), everything is copied.
 */
#ifndef CUMEM_SKIP_H
#define CUMEM_SKIP_H

#include "core.h"

typedef struct skip_item {
  uint64_t *fp;     /* its fingerprints of this sleep (in the arena); NULL:
                       skipping does not apply to it */
  int compare;      /* its backup's fingerprints are valid: compare */
  int queued;       /* its kernel is queued, `event` recorded behind it */
  int waited;       /* the event completed: fp holds the fingerprints */
  void *event;      /* one of the ring's (skip_event_t) */
} skip_item_t;

/* Events behind the kernels, reused in turn (the driver calls to create and
 * destroy one per allocation are not free): an event is taken over only
 * once its previous owner's kernel was waited for. */
#define SKIP_EVENTS 20
typedef struct skip_event {
  void *event;
  int device;
  skip_item_t *owner;
} skip_event_t;

typedef struct skip {
  cumem_t *cm;
  skip_item_t *items;       /* per list index; NULL: nothing fingerprinted */
  alloc_t **list;           /* the sleep's (valid until skip_end) */
  size_t n, next;           /* next: the first item whose kernel is not queued */
  skip_event_t events[SKIP_EVENTS];
  size_t nqueued;
  streams_t streams;        /* the kernels run on, one per device */
  uint64_t disabled;        /* devices where fingerprinting failed this sleep */
  uint64_t *arena;          /* this sleep's fingerprints (cm->fp_arena) */
  unsigned char *changed;   /* per segment, for skip_plan's answer */
  size_t nfingerprinted, bytes_fingerprinted, bytes_skipped;
  double t_queue, t_wait;   /* seconds queueing the kernels, waiting for them */
} skip_t;

/* Prepare to fingerprint the allocations to copy (copy[i]) that skipping
 * applies to, and queue the first kernels (skip_plan queues the others).
 * Where fingerprinting cannot be done, it is not (everything is then
 * copied). Fails only when a kernel may still be running and cannot be
 * waited for: the sleep must then release nothing. Pre: backup buffers
 * exist (collect_jobs); list and copy outlive the skip_t. Always pair with
 * cumem__skip_end. */
int cumem__skip_begin(skip_t *sk, cumem_t *cm, alloc_t **list, size_t n, const unsigned char *copy);

/* Which segments of list[i] = a to copy: *changed = NULL for all of them,
 * else changed[s] != 0 for those to copy (valid until the next call);
 * *ncopy counts them (0: the backup already holds everything). Waits for
 * a's fingerprints when they are compared. When some segment is to be
 * copied, the backup's fingerprints are dropped (the caller writes it).
 * Sets a->skipped. Fails only when waiting for the device failed. */
int cumem__skip_plan(skip_t *sk, size_t i, alloc_t *a, const unsigned char **changed, size_t *ncopy);

/* a's copies are complete (or none were needed): record its new
 * fingerprints with the backup. Waits for its kernel, so a fingerprinted
 * allocation must not be released before this returned 0. */
int cumem__skip_record(skip_t *sk, size_t i, alloc_t *a);

/* Wait for every kernel, free everything; the first failure. */
int cumem__skip_end(skip_t *sk);

#endif
