/* Pinned host memory for backups (see hostmem.h for why it is built so). */
#include "hostmem.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define HUGE_PAGE ((size_t)2 << 20)
#define MPOL_PREFERRED_ 1 /* <linux/mempolicy.h>; no libnuma dependency */

/* Prefer NUMA node `node` for the pages of [p, p + n): a hint, like
 * MADV_HUGEPAGE — where the kernel refuses, the pages land anywhere. */
static void prefer_node(void *p, size_t n, int node) {
#ifdef SYS_mbind
  unsigned long mask[16] = {0}; /* nodes 0..1023 */
  if (node < 0 || (size_t)node >= sizeof mask * 8) return;
  mask[node / (8 * sizeof mask[0])] |= 1ul << (node % (8 * sizeof mask[0]));
  /* maxnode counts one more than the bits the kernel reads (mbind(2)). */
  if (syscall(SYS_mbind, p, n, MPOL_PREFERRED_, mask, sizeof mask * 8 + 1, 0) != 0)
    cumem__log("mbind to NUMA node %d refused (%s); backup placed by the kernel", node, strerror(errno));
#else
  (void)p, (void)n, (void)node;
#endif
}

int cumem__hostbuf_map(hostbuf_t *hb, size_t size, size_t seg, int numa_node) {
  memset(hb, 0, sizeof *hb);
  if (size == 0 || seg == 0) return CUMEM_FAIL(CUMEM_EINVAL, "empty host buffer");
  if (size > SIZE_MAX - HUGE_PAGE)
    return CUMEM_FAIL(CUMEM_ENOHOST, "a host backup of %zu bytes cannot be mapped", size);
  hb->nseg = cumem__ceil_div(size, seg);
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
  if (numa_node >= 0) prefer_node((void *)p, cumem__ceil_div(size, HUGE_PAGE) * HUGE_PAGE, numa_node);
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

/* Write one byte per page of [off, off + n) of segment i. */
static void touch_range(hostbuf_t *hb, size_t i, size_t off, size_t n) {
  unsigned char *p = hb->ptr + i * hb->seg;
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  for (size_t o = off; o < off + n; o += page) p[o] = 0;
}

void cumem__hostbuf_touch_segment(hostbuf_t *hb, size_t i) {
  touch_range(hb, i, 0, cumem__hostbuf_segment_size(hb, i));
}

int cumem__hostbuf_register_segment(cumem_backend_t *b, hostbuf_t *hb, size_t i, int lock_fd) {
  if (hb->ready[i]) return 0;
  if (lock_fd >= 0) (void)flock(lock_fd, LOCK_EX); /* an experiment: unlocked if refused */
  size_t n = cumem__hostbuf_segment_size(hb, i);
  int rc = b->host_register(b, hb->ptr + i * hb->seg, n);
  if (lock_fd >= 0) (void)flock(lock_fd, LOCK_UN);
  if (!rc) {
    hb->ready[i] = 1;
    hb->pinned += n;
  }
  return rc;
}

static int unregister_segment(cumem_backend_t *b, hostbuf_t *hb, size_t i) {
  int rc = b->host_unregister(b, hb->ptr + i * hb->seg);
  if (!rc) {
    hb->ready[i] = 0;
    hb->pinned -= cumem__hostbuf_segment_size(hb, i);
  }
  return rc;
}

/* The one place a backup is unmapped: memory with pins is handed to them
 * instead (pin.c), and unmapped with the last one. */
static int unmap(hostbuf_t *hb) {
  if (!cumem__pin_detach(hb) && munmap(hb->map_base, hb->map_size) != 0)
    return CUMEM_FAIL(CUMEM_ENOHOST, "munmap of host backup failed: %s", strerror(errno));
  free(hb->ready);
  free(hb->fingerprints);
  memset(hb, 0, sizeof *hb);
  return 0;
}

int cumem__hostbuf_free(cumem_backend_t *b, hostbuf_t *hb) {
  if (!hb->ptr) return 0;
  for (size_t i = 0; i < hb->nseg; i++) {
    int rc = hb->ready[i] ? unregister_segment(b, hb, i) : 0;
    if (rc) return rc;
  }
  return unmap(hb);
}

size_t cumem__hostbuf_held(const hostbuf_t *hb) { return hb->ptr ? hb->size : 0; }

int cumem__hostbuf_prepare_step(cumem_backend_t *b, hostbuf_t *hb, size_t bytes, int lock_fd, int *done) {
  *done = 0;
  if (hb->step_seg >= hb->nseg || hb->ready[hb->step_seg]) { /* moved on, or a sleep did it */
    hb->step_seg = 0;
    hb->step_off = 0;
    while (hb->step_seg < hb->nseg && hb->ready[hb->step_seg]) hb->step_seg++;
    if (hb->step_seg == hb->nseg) {
      *done = 1;
      return 0;
    }
  }
  size_t i = hb->step_seg, n = cumem__hostbuf_segment_size(hb, i);
  if (hb->step_off < n) {
    size_t piece = n - hb->step_off < bytes ? n - hb->step_off : bytes;
    touch_range(hb, i, hb->step_off, piece);
    hb->step_off += piece;
    return 0;
  }
  return cumem__hostbuf_register_segment(b, hb, i, lock_fd); /* the next step moves on */
}

int cumem__hostbuf_give_back_step(cumem_backend_t *b, hostbuf_t *hb, int *done) {
  *done = 0;
  if (!hb->ptr) {
    *done = 1;
    return 0;
  }
  for (size_t i = hb->nseg; i-- > 0;)
    if (hb->ready[i]) return unregister_segment(b, hb, i);
  int rc = unmap(hb);
  *done = !rc;
  return rc;
}
