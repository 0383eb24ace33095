/* Pinned host memory for backups (see hostmem.h for why it is built so). */
#include "hostmem.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define HUGE_PAGE ((size_t)2 << 20)

int cumem__hostbuf_map(hostbuf_t *hb, size_t size, size_t seg) {
  memset(hb, 0, sizeof *hb);
  if (size == 0 || seg == 0) return CUMEM_FAIL(CUMEM_EINVAL, "empty host buffer");
  hb->nseg = (size + seg - 1) / seg;
  hb->ready = calloc(hb->nseg, 1);
  if (!hb->ready) return CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory for %zu segment flags", hb->nseg);
  /* Align to a huge page so that the kernel can back it with THP. */
  size_t map_size = size + HUGE_PAGE;
  void *base = mmap(NULL, map_size, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) {
    int e = errno;
    free(hb->ready);
    hb->ready = NULL;
    return CUMEM_FAIL(CUMEM_ENOHOST, "mmap of %zu bytes of host backup failed: %s", map_size, strerror(e));
  }
  uintptr_t p = ((uintptr_t)base + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1);
#ifdef MADV_HUGEPAGE
  (void)madvise((void *)p, size, MADV_HUGEPAGE); /* a hint: fine if refused */
#endif
  hb->map_base = base;
  hb->map_size = map_size;
  hb->ptr = (unsigned char *)p;
  hb->size = size;
  hb->seg = seg;
  return 0;
}

size_t cumem__hostbuf_segment_size(const hostbuf_t *hb, size_t i) {
  size_t off = i * hb->seg;
  return hb->size - off < hb->seg ? hb->size - off : hb->seg;
}

void cumem__hostbuf_touch_segment(hostbuf_t *hb, size_t i) {
  unsigned char *p = hb->ptr + i * hb->seg;
  size_t n = cumem__hostbuf_segment_size(hb, i);
  long page = sysconf(_SC_PAGESIZE);
  for (size_t off = 0; off < n; off += (size_t)page) p[off] = 0;
}

int cumem__hostbuf_register_segment(cumem_backend_t *b, hostbuf_t *hb, size_t i) {
  if (hb->ready[i]) return 0;
  int rc = b->host_register(b, hb->ptr + i * hb->seg, cumem__hostbuf_segment_size(hb, i));
  if (!rc) hb->ready[i] = 1;
  return rc;
}

int cumem__hostbuf_free(cumem_backend_t *b, hostbuf_t *hb) {
  if (!hb->ptr) return 0;
  for (size_t i = 0; i < hb->nseg; i++) {
    if (!hb->ready[i]) continue;
    int rc = b->host_unregister(b, hb->ptr + i * hb->seg);
    if (rc) return rc;
    hb->ready[i] = 0;
  }
  if (munmap(hb->map_base, hb->map_size) != 0)
    return CUMEM_FAIL(CUMEM_ENOHOST, "munmap of host backup failed: %s", strerror(errno));
  free(hb->ready);
  free(hb->fingerprints);
  memset(hb, 0, sizeof *hb);
  return 0;
}

size_t cumem__hostbuf_held(const hostbuf_t *hb) { return hb->ptr ? hb->size : 0; }

/* ---- the preparer pool ----
 * Workers only touch: that is where the kernel allocates and zeroes pages,
 * and it scales with threads. Registration happens on the consumer's thread,
 * right before the segment's copy: measured on an H200, registrations from
 * worker threads stalled the consumer's own driver calls (releasing the
 * copied allocations took 549 ms instead of 40), so they go one at a time
 * between the copies, which run on the device meanwhile. Registering is
 * the slow part of a cold sleep (about 40 GB/s in an H200 VM, where the
 * hypervisor pins pages for DMA) and more threads do not speed it up
 * (bench/RESULTS.md); the way around it is to prepare a backup ahead. */

static void *prep_worker(void *arg) {
  preparer_t *p = arg;
  pthread_mutex_lock(&p->mu);
  while (p->next < p->njobs) {
    size_t k = p->next++;
    pthread_mutex_unlock(&p->mu);
    cumem__hostbuf_touch_segment(p->jobs[k].hb, p->jobs[k].seg);
    pthread_mutex_lock(&p->mu);
    p->touched[k] = 1;
    pthread_cond_broadcast(&p->cv);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

int cumem__preparer_start(preparer_t *p, cumem_backend_t *b, prep_job_t *jobs, size_t njobs, int threads) {
  memset(p, 0, sizeof *p);
  p->backend = b;
  p->jobs = jobs;
  p->njobs = njobs;
  if (njobs == 0) return 0;
  if ((size_t)threads > njobs) threads = (int)njobs;
  if (threads < 1) threads = 1;
  p->touched = calloc(njobs, 1);
  p->threads = calloc((size_t)threads, sizeof *p->threads);
  if (!p->touched || !p->threads) {
    free(p->touched);
    free(p->threads);
    memset(p, 0, sizeof *p);
    return CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory for the backup preparer");
  }
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  for (int i = 0; i < threads; i++) {
    if (pthread_create(&p->threads[i], NULL, prep_worker, p) != 0) break; /* fewer is slower, not wrong */
    p->nthreads++;
  }
  if (p->nthreads == 0) cumem__log("no preparer threads could start; touching inline");
  return 0;
}

int cumem__preparer_wait(preparer_t *p, size_t k) {
  if (p->nthreads == 0) {
    cumem__hostbuf_touch_segment(p->jobs[k].hb, p->jobs[k].seg);
  } else {
    pthread_mutex_lock(&p->mu);
    while (!p->touched[k]) pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
  }
  double t0 = cumem__now();
  int rc = cumem__hostbuf_register_segment(p->backend, p->jobs[k].hb, p->jobs[k].seg);
  p->t_register += cumem__now() - t0;
  return rc;
}

void cumem__preparer_finish(preparer_t *p) {
  if (p->njobs == 0) return;
  if (p->nthreads) {
    pthread_mutex_lock(&p->mu);
    p->next = p->njobs; /* hand out nothing more */
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
  }
  free(p->touched);
  free(p->threads);
  memset(p, 0, sizeof *p);
}
