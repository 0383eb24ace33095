/* The interposer's pieces (libcumem_preload.so):
 *   interpose.c  the CUDA entry points it defines
 *   region.c     each thread's region, the environment switch, the region API
 *   real.c       finding the real functions to forward to
 *   owned.c      which addresses it allocated through cumem
 *   trace.c      per-function counts, printed at exit with CUMEM_PRELOAD_TRACE
 * It links libcumem.so.0, the process's one cumem core. */
#ifndef CUMEM_PRELOAD_INTERNAL_H
#define CUMEM_PRELOAD_INTERNAL_H

#include "cumem_preload.h"
#include "internal.h" /* CUMEM_FAIL: details land in cumem_last_error() */

#include <stdint.h>

/* Every function the interposer defines, once. The first group can turn an
 * allocation into a cumem allocation; the second frees cumem allocations;
 * the third is only counted (and forwarded) so that a trace shows whether a
 * program uses them. */
#define PRELOAD_FUNCTIONS(XX)         \
  XX(cudaMalloc)                      \
  XX(cudaMallocAsync)                 \
  XX(cudaMallocPitch)                 \
  XX(cuMemAlloc_v2)                   \
  XX(cudaFree)                        \
  XX(cudaFreeAsync)                   \
  XX(cuMemFree_v2)                    \
  XX(cudaMallocManaged)               \
  XX(cudaMallocFromPoolAsync)         \
  XX(cudaGetDriverEntryPoint)         \
  XX(cudaGetDriverEntryPointByVersion)

/* Real functions the interposer calls: the ones above, the two that say
 * which device is current, and the one that says a stream's. */
#define PRELOAD_REAL_FUNCTIONS(XX) \
  PRELOAD_FUNCTIONS(XX)            \
  XX(cudaGetDevice)                \
  XX(cuCtxGetDevice)               \
  XX(cudaStreamGetDevice)

enum preload_fn {
#define PRELOAD_XX_(name) PRELOAD_##name,
  PRELOAD_REAL_FUNCTIONS(PRELOAD_XX_)
#undef PRELOAD_XX_
  PRELOAD_NREAL,
};
/* The interposed ones come first: 0 .. PRELOAD_NFUNCTIONS-1. */
#define PRELOAD_NFUNCTIONS PRELOAD_cudaGetDevice

/* real.c: the real function, found on first use (thread-safe); NULL with a
 * detail when no loaded library defines it (looked up again next time). */
void *cumem__preload_real(enum preload_fn fn);
/* The same for a function some runtimes lack: NULL without a detail. */
void *cumem__preload_real_optional(enum preload_fn fn);
const char *cumem__preload_fn_name(enum preload_fn fn);
/* How it was found (cumem_preload_count_t.resolved) and from which file. */
int cumem__preload_real_how(enum preload_fn fn, const char **origin);

/* region.c: the calling thread's region (never NULL). */
const cumem_preload_region_t *cumem__preload_region(void);

/* owned.c: addresses the interposer allocated through cumem. add: 0 or
 * CUMEM_ENOHOST. take: 1 and forgotten when ptr was one, else 0. */
int cumem__preload_owned_add(uintptr_t ptr);
int cumem__preload_owned_take(uintptr_t ptr);

/* trace.c */
/* Each call is counted once, when it returns: handled by cumem, forwarded,
 * or refused before either (a NULL output pointer). */
enum preload_outcome { PRELOAD_TO_CUMEM, PRELOAD_FORWARDED, PRELOAD_REFUSED };
void cumem__preload_count(enum preload_fn fn, enum preload_outcome how, int failed,
                          unsigned long long bytes);
void cumem__preload_count_entry_point(const char *symbol);

#endif
