/*
 * cumem's LD_PRELOAD interposer, libcumem_preload.so: sleepable memory for
 * programs that allocate through the CUDA runtime (or driver) themselves.
 *
 *   LD_PRELOAD=/path/to/libcumem_preload.so CUMEM_PRELOAD=1 ./program
 *   cumem run [--tag T] [--backup cpu|disk|none] -- ./program     (the same)
 *
 * The library defines cudaMalloc, cudaMallocAsync, cudaMallocPitch and
 * cuMemAlloc_v2. While the calling thread is in a region (below), they make a
 * cumem allocation on the current device (cudaMallocAsync: the stream's)
 * under the region's tag; otherwise they call the real function. cudaFree, cudaFreeAsync and cuMemFree_v2 free
 * what the interposer allocated through cumem and pass everything else on.
 * The cumem core is the process's one libcumem.so.0, so cumem_default() in
 * the program (or cumem.sleep / torch_memory_saver.pause in Python) sleeps
 * and wakes that memory.
 *
 * Failures never abort: an allocating call returns cudaErrorMemoryAllocation
 * (CUDA_ERROR_OUT_OF_MEMORY for cuMemAlloc_v2), a free of cumem memory that
 * fails returns cudaErrorInvalidValue, and the detail is this thread's
 * cumem_last_error().
 *
 * Environment (read once, at the first use):
 *   CUMEM_PRELOAD=1          every thread starts in a region: everything the
 *                            process allocates is sleepable from its start
 *   CUMEM_PRELOAD_TAG=T      that region's tag (default "default")
 *   CUMEM_PRELOAD_BACKUP=cpu|disk|none   where that memory's content goes at
 *                            sleep: host memory, files, nowhere (default
 *                            none); see the tag names. Disk backups go under
 *                            the core's disk_dir (CUMEM_DISK_DIR), else under
 *                            TMS_DISK_BACKUP_DIR (created if missing)
 *   TMS_INIT_ENABLE, TMS_INIT_ENABLE_CPU_BACKUP, TMS_INIT_ENABLE_DISK_BACKUP
 *                            torch_memory_saver's names for the same switch
 *                            (CUMEM_* win when both are set)
 *   CUMEM_PRELOAD_TRACE=1    count every interposed call and print the counts
 *                            to stderr at exit (cumem_preload_count reads
 *                            them at any time, traced or not)
 * A malformed value is reported on stderr and leaves the switch off.
 *
 * Tag names. The switch's allocations are tagged the way torch_memory_saver's
 * regions are in cumem (python/cumem/_tms.py): "tms:<T>" without backup,
 * "tms+cpu:<T>" with a CPU backup, "tms+disk:<T>" with a disk backup (the
 * interposer gives such a tag the option backup = CUMEM_BACKUP_DISK), so
 * torch_memory_saver.pause(T) in Python finds them and a C program sleeps
 * them with, e.g.,
 *     const char *offload[] = {"tms+cpu:default", NULL};
 *     cumem_sleep(cm, NULL, offload);
 * Regions begun through this API take their tag verbatim.
 *
 * What can and cannot be interposed: LD_PRELOAD replaces a function only for
 * callers that reach it through the dynamic linker, i.e. that link the shared
 * CUDA runtime (libcudart.so, PyTorch does) or libcuda.so. Code linked with
 * the static runtime (nvcc's default: build with -cudart shared), and driver
 * entry points obtained through cuGetProcAddress / cudaGetDriverEntryPoint
 * (NCCL's cuMem* calls, PyTorch's expandable segments) never reach it.
 *
 * The functions below are exported by libcumem_preload.so. A program that is
 * run under the interposer without linking it finds them with
 * dlsym(RTLD_DEFAULT, "cumem_preload_begin").
 */
#ifndef CUMEM_PRELOAD_H
#define CUMEM_PRELOAD_H

#include "cumem.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The tag prefixes of the environment switch (see "Tag names"). */
#define CUMEM_PRELOAD_TAG_PLAIN "tms:"
#define CUMEM_PRELOAD_TAG_CPU "tms+cpu:"
#define CUMEM_PRELOAD_TAG_DISK "tms+disk:"
/* The longest tag CUMEM_PRELOAD_TAG may name (the longest prefix must fit
 * too). */
#define CUMEM_PRELOAD_USER_TAG_MAX (CUMEM_TAG_MAX - (int)sizeof(CUMEM_PRELOAD_TAG_DISK) + 1)

/* A thread's region: whether its allocations become cumem allocations, and
 * under which cumem tag. */
typedef struct cumem_preload_region {
  int enabled;
  char tag[CUMEM_TAG_MAX + 1]; /* "" when not enabled */
} cumem_preload_region_t;

/* Enter a region on the calling thread: from now on its allocations are
 * cumem allocations tagged `tag` (verbatim); tag NULL enters a region where
 * nothing is (torch_memory_saver's disable()). *saved receives the state to
 * restore with cumem_preload_end, so regions nest. CUMEM_EINVAL (and no
 * change) for a tag that is empty or longer than CUMEM_TAG_MAX. */
CUMEM_API int cumem_preload_begin(const char *tag, cumem_preload_region_t *saved);
/* Leave a region: restore the state cumem_preload_begin saved. NULL restores
 * the process's default (the environment switch). */
CUMEM_API void cumem_preload_end(const cumem_preload_region_t *saved);
/* The calling thread's region now. */
CUMEM_API void cumem_preload_current(cumem_preload_region_t *out);
/* The region every thread starts in: the environment switch. */
CUMEM_API void cumem_preload_default(cumem_preload_region_t *out);

/* What the interposer did with the calls to one function. */
typedef struct cumem_preload_count {
  unsigned long long calls;           /* every call */
  unsigned long long to_cumem;        /* handled by cumem: allocations in a
                                         region, frees of cumem memory */
  unsigned long long forwarded;       /* passed to the real function */
  unsigned long long failed;          /* returned an error, either way */
  unsigned long long cumem_bytes;     /* bytes allocated through cumem */
  unsigned long long forwarded_bytes; /* bytes asked of the real function */
  int resolved; /* how the real function was found: 0 not looked up yet,
                   1 dlsym(RTLD_NEXT), 2 by searching the loaded libraries
                   (a runtime loaded with RTLD_LOCAL), -1 not found */
} cumem_preload_count_t;

/* The counts of `fn` ("cudaMalloc", "cuMemFree_v2", ...); CUMEM_EINVAL for a
 * function the interposer does not define. */
CUMEM_API int cumem_preload_count(const char *fn, cumem_preload_count_t *out);
/* How many times a driver entry point named `symbol` was asked for through
 * cudaGetDriverEntryPoint[ByVersion] (how PyTorch reaches cuMemCreate). */
CUMEM_API unsigned long long cumem_preload_entry_point_requests(const char *symbol);

#ifdef __cplusplus
}
#endif
#endif /* CUMEM_PRELOAD_H */
