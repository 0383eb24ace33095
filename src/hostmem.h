/* Pinned host memory for backups, prepared fast: an anonymous mapping with
 * transparent huge pages (placed on the GPU's NUMA node where that is
 * known), first-touched segment by segment and page-locked (host_register)
 * segment by segment. Sleep touches on a worker pool and registers each
 * segment just before its copy (sleep.c); the background worker prepares
 * and gives back in small steps (background.c). Freed with munmap, so
 * process RSS really drops. */
#ifndef CUMEM_HOSTMEM_H
#define CUMEM_HOSTMEM_H

#include "internal.h"

typedef struct hostbuf {
  unsigned char *ptr;   /* NULL = no memory */
  size_t size;          /* usable bytes */
  size_t map_size;      /* bytes mapped (aligned) */
  void *map_base;
  size_t seg;           /* bytes per segment (the last may be shorter) */
  size_t nseg;
  unsigned char *ready; /* per segment: touched and registered */
  size_t pinned;        /* bytes of the ready segments */
  int filled;           /* holds the content saved by the last sleep */
  int give_back;        /* the background worker is giving it back */
  size_t step_seg, step_off; /* prepare_step's place: bytes of step_seg touched */
  /* Skip unchanged (skip.h): the fingerprints of the content held, two
   * values per segment, valid while `fingerprinted`; `viewed` once a
   * writable view was handed out (the content may change behind cumem). */
  uint64_t *fingerprints;
  int fingerprinted;
  int viewed;
  cumem_backup_pin_t *pin; /* pins on this memory (pin.c), or NULL */
} hostbuf_t;

/* Map (not yet touch) `size` bytes in segments of `seg`, preferably on NUMA
 * node `numa_node` (-1: wherever the kernel likes). Pre: hb is empty. */
int cumem__hostbuf_map(hostbuf_t *hb, size_t size, size_t seg, int numa_node);
/* First touch of segment i: the kernel allocates its pages. Safe from
 * several threads on distinct i. */
void cumem__hostbuf_touch_segment(hostbuf_t *hb, size_t i);
/* Page-lock segment i (after its touch); one thread at a time per buffer.
 * lock_fd >= 0: hold an exclusive flock on it meanwhile (the
 * CUMEM_REGISTER_LOCK experiment: processes register one at a time). */
int cumem__hostbuf_register_segment(cumem_backend_t *b, hostbuf_t *hb, size_t i, int lock_fd);
size_t cumem__hostbuf_segment_size(const hostbuf_t *hb, size_t i);
/* Unregister and unmap (every backup is given back here, nowhere else). On
 * failure the buffer is kept as it was (a registration that cannot be undone
 * is never unmapped under the driver). Memory with pins is not unmapped but
 * handed to them (pin.c); hb is empty afterwards either way. */
int cumem__hostbuf_free(cumem_backend_t *b, hostbuf_t *hb);
size_t cumem__hostbuf_held(const hostbuf_t *hb); /* bytes held (0 when none) */

/* One small step of preparing hb: touch up to `bytes` more of its first
 * segment not yet ready, and register that segment once it is all touched.
 * *done = 1 when every segment is ready. On failure nothing is lost: the
 * segment stays unregistered. */
int cumem__hostbuf_prepare_step(cumem_backend_t *b, hostbuf_t *hb, size_t bytes, int lock_fd, int *done);
/* One small step of giving hb back: unregister its last ready segment, or,
 * once none is left, unmap it. *done = 1 when it is gone. On failure hb is
 * as it was before the step (still held and accounted). */
int cumem__hostbuf_give_back_step(cumem_backend_t *b, hostbuf_t *hb, int *done);

/* pin.c. Pre for both: the instance's lock is held. */
/* One more pin on hb's memory (the record is made on first use). */
int cumem__pin_take(hostbuf_t *hb, cumem_backup_pin_t **out);
/* hb's memory is being given back: 1 when pins hold it (they own the
 * mapping now: do not unmap it), 0 when the caller unmaps. */
int cumem__pin_detach(hostbuf_t *hb);

#endif
