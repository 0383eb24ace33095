/* Pinned host memory for backups, prepared fast: an anonymous mapping with
 * transparent huge pages, first-touched segment by segment by several
 * threads and page-locked (host_register) just before each segment's copy,
 * while the copies of the segments already prepared run. Freed with munmap,
 * so process RSS really drops. */
#ifndef CUMEM_HOSTMEM_H
#define CUMEM_HOSTMEM_H

#include "internal.h"

#include <pthread.h>

typedef struct hostbuf {
  unsigned char *ptr;   /* NULL = no memory */
  size_t size;          /* usable bytes */
  size_t map_size;      /* bytes mapped (aligned) */
  void *map_base;
  size_t seg;           /* bytes per segment (the last may be shorter) */
  size_t nseg;
  unsigned char *ready; /* per segment: touched and registered */
  int filled;           /* holds the content saved by the last sleep */
  /* Skip unchanged (skip.h): the fingerprints of the content held, two
   * values per segment, valid while `fingerprinted`; `viewed` once a
   * writable view was handed out (the content may change behind cumem). */
  uint64_t *fingerprints;
  int fingerprinted;
  int viewed;
} hostbuf_t;

/* Map (not yet touch) `size` bytes in segments of `seg`. Pre: hb is empty. */
int cumem__hostbuf_map(hostbuf_t *hb, size_t size, size_t seg);
/* First touch of segment i: the kernel allocates its pages. Safe from
 * several threads on distinct i. */
void cumem__hostbuf_touch_segment(hostbuf_t *hb, size_t i);
/* Page-lock segment i (after its touch); one thread at a time. */
int cumem__hostbuf_register_segment(cumem_backend_t *b, hostbuf_t *hb, size_t i);
size_t cumem__hostbuf_segment_size(const hostbuf_t *hb, size_t i);
/* Unregister and unmap. On failure the buffer is kept as it was (a
 * registration that cannot be undone is never unmapped under the driver). */
int cumem__hostbuf_free(cumem_backend_t *b, hostbuf_t *hb);
size_t cumem__hostbuf_held(const hostbuf_t *hb); /* bytes held (0 when none) */

/* A pool of threads touching a list of segments, first to last, while the
 * consumer registers and copies the ones already touched. */
typedef struct prep_job { hostbuf_t *hb; size_t seg; } prep_job_t;

typedef struct preparer {
  cumem_backend_t *backend;
  prep_job_t *jobs;
  size_t njobs, next;
  unsigned char *touched; /* per job */
  double t_register;      /* seconds the consumer spent registering */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t *threads;
  int nthreads;           /* 0: the consumer touches inline */
} preparer_t;

/* Start up to `threads` workers over jobs[0..njobs). jobs must outlive the
 * preparer. With 0 jobs nothing starts. */
int cumem__preparer_start(preparer_t *p, cumem_backend_t *b, prep_job_t *jobs, size_t njobs, int threads);
/* Wait until job k is touched, then register it on this thread. Jobs are
 * waited for in order; a failure is the registration's. */
int cumem__preparer_wait(preparer_t *p, size_t k);
/* Stop handing out jobs, join the workers, free the pool. */
void cumem__preparer_finish(preparer_t *p);

#endif
