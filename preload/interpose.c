/* The CUDA entry points the interposer defines (see include/cumem_preload.h).
 *
 * Allocating calls: in a region, a cumem allocation on the current device
 * (cudaMallocAsync: the stream's) under the region's tag, remembered in the
 * owned set; otherwise the real function. A zero-byte request is always
 * forwarded (it holds no memory).
 * Freeing calls: an address from the owned set is freed by cumem, anything
 * else goes to the real function. Trace-only calls are counted and
 * forwarded.
 *
 * The CUDA headers are not included: the few types these signatures need are
 * declared here with the ABI the runtime and the driver give them, so that
 * building the interposer needs no toolkit. */
#include "preload.h"

#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef int cudaError_t;             /* enum cudaError: int-sized */
typedef int CUresult;                /* enum cudaError_enum */
typedef unsigned long long CUdeviceptr; /* CUdeviceptr_v2 on 64-bit hosts */
typedef int CUdevice;                /* the device ordinal */
typedef void *cudaStream_t;          /* == CUstream */
typedef void *cudaMemPool_t;

enum {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  CUDA_SUCCESS = 0,
  CUDA_ERROR_INVALID_VALUE = 1,
  CUDA_ERROR_OUT_OF_MEMORY = 2,
};

/* cudaMallocPitch's rows: the real runtime aligns them to the device's
 * texture pitch alignment, at most 512 bytes on every GPU so far. */
#define PITCH_ALIGN 512

#define API __attribute__((visibility("default")))

/* The real function `name`, with its own type. */
#define REAL(name) ((name##_fn)cumem__preload_real(PRELOAD_##name))
typedef cudaError_t (*cudaMalloc_fn)(void **, size_t);
typedef cudaError_t (*cudaMallocAsync_fn)(void **, size_t, cudaStream_t);
typedef cudaError_t (*cudaMallocPitch_fn)(void **, size_t *, size_t, size_t);
typedef CUresult (*cuMemAlloc_v2_fn)(CUdeviceptr *, size_t);
typedef cudaError_t (*cudaFree_fn)(void *);
typedef cudaError_t (*cudaFreeAsync_fn)(void *, cudaStream_t);
typedef CUresult (*cuMemFree_v2_fn)(CUdeviceptr);
typedef cudaError_t (*cudaMallocManaged_fn)(void **, size_t, unsigned int);
typedef cudaError_t (*cudaMallocFromPoolAsync_fn)(void **, size_t, cudaMemPool_t, cudaStream_t);
typedef cudaError_t (*cudaGetDriverEntryPoint_fn)(const char *, void **, unsigned long long, int *);
typedef cudaError_t (*cudaGetDriverEntryPointByVersion_fn)(const char *, void **, unsigned int,
                                                           unsigned long long, int *);
typedef cudaError_t (*cudaGetDevice_fn)(int *);
typedef CUresult (*cuCtxGetDevice_fn)(CUdevice *);
typedef cudaError_t (*cudaStreamGetDevice_fn)(cudaStream_t, int *);

/* ---- the cumem side ------------------------------------------------------ */

/* The current device, as the runtime or the driver sees it. */
static int runtime_device(int *dev) {
  cudaGetDevice_fn get = REAL(cudaGetDevice);
  if (!get) return CUMEM_ENODRIVER;
  cudaError_t e = get(dev);
  return e == cudaSuccess ? 0 : CUMEM_FAIL(CUMEM_ENODEV, "cumem preload: cudaGetDevice failed (%d)", e);
}

static int driver_device(int *dev) {
  cuCtxGetDevice_fn get = REAL(cuCtxGetDevice);
  if (!get) return CUMEM_ENODRIVER;
  CUdevice d = 0;
  CUresult e = get(&d);
  if (e != CUDA_SUCCESS)
    return CUMEM_FAIL(CUMEM_ENODEV, "cumem preload: cuCtxGetDevice failed (%d): no current context?", e);
  *dev = d;
  return 0;
}

/* The device of `stream`, where cudaMallocAsync allocates whichever device
 * is current (the default streams are the current device's). A runtime
 * older than CUDA 12.8 has no cudaStreamGetDevice: there the current device
 * is the answer, looked for once, without leaving a detail behind. */
static int stream_device(cudaStream_t stream, int *dev) {
  static _Atomic int missing;
  cudaStreamGetDevice_fn get = NULL;
  if (!atomic_load_explicit(&missing, memory_order_relaxed) &&
      !(get = (cudaStreamGetDevice_fn)cumem__preload_real_optional(PRELOAD_cudaStreamGetDevice)))
    atomic_store_explicit(&missing, 1, memory_order_relaxed);
  if (!get) return runtime_device(dev);
  cudaError_t e = get(stream, dev);
  return e == cudaSuccess ? 0
                          : CUMEM_FAIL(CUMEM_ENODEV, "cumem preload: cudaStreamGetDevice(%p) failed (%d)",
                                       stream, e);
}

/* mkdir -p: `path` and any parent missing (torch_memory_saver users name
 * per-rank subdirectories of directories that may not exist yet). */
static int make_dirs(const char *path) {
  char p[PATH_MAX];
  if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p) return ENAMETOOLONG;
  for (char *c = p + 1;; c++) {
    if (*c != '/' && *c) continue;
    char was = *c;
    *c = '\0';
    if (mkdir(p, 0700) != 0 && errno != EEXIST) return errno;
    if (!was) return 0;
    *c = was;
  }
}

/* A "tms+disk:" tag backs up to files: give it that option (once set, it
 * stays), and the instance a directory from TMS_DISK_BACKUP_DIR when it has
 * none (torch_memory_saver's variable, created with its parents if missing;
 * CUMEM_DISK_DIR is the core's own). */
static int prepare_disk_tag(cumem_t *cm, const char *tag) {
  if (strncmp(tag, CUMEM_PRELOAD_TAG_DISK, sizeof CUMEM_PRELOAD_TAG_DISK - 1) != 0) return 0;
  cumem_tag_options_t o;
  if (cumem_tag_get_options(cm, tag, &o) != 0) cumem_tag_options_init(&o); /* a new tag */
  else if (o.backup == CUMEM_BACKUP_DISK) return 0;
  o.backup = CUMEM_BACKUP_DISK;
  char dir[PATH_MAX];
  const char *tms_dir = getenv("TMS_DISK_BACKUP_DIR");
  int rc = 0;
  if (tms_dir && *tms_dir && cumem_get_disk_dir(cm, dir, sizeof dir) == 0 && !dir[0]) {
    int err = make_dirs(tms_dir);
    if (err)
      return CUMEM_FAIL(CUMEM_EINVAL, "cumem preload: TMS_DISK_BACKUP_DIR=%s: mkdir: %s", tms_dir, strerror(err));
    rc = cumem_set_disk_dir(cm, tms_dir);
  }
  return rc ? rc : cumem_tag_set_options(cm, tag, &o);
}

/* The first failure of a kind, once on stderr: a program sees only
 * cudaErrorMemoryAllocation (PyTorch: "CUDA out of memory"), and the
 * detail in cumem_last_error() is the allocating thread's alone. */
static _Atomic int core_refused, disk_refused;

static void report_once(_Atomic int *reported, const char *what) {
  if (atomic_exchange(reported, 1)) return;
  fprintf(stderr, "cumem preload: %s, so allocations in regions fail as out of memory: %s\n", what,
          cumem_last_error());
}

/* A cumem allocation of `size` bytes on `device` under the thread's region
 * tag, remembered as the interposer's. */
static int region_alloc(void **out, size_t size, int device) {
  const char *tag = cumem__preload_region()->tag;
  cumem_t *cm = NULL;
  int rc = cumem_default(&cm);
  if (rc) report_once(&core_refused, "cannot open the cumem instance");
  if (!rc && (rc = prepare_disk_tag(cm, tag))) report_once(&disk_refused, "cannot set up the disk backup");
  if (!rc) rc = cumem_alloc(cm, out, size, device, tag);
  if (!rc && cumem__preload_owned_add((uintptr_t)*out)) {
    (void)cumem_free(cm, *out); /* a fresh allocation: nothing uses it yet */
    rc = CUMEM_FAIL(CUMEM_ENOHOST, "cumem preload: out of host memory to record %p (given back)", *out);
    *out = NULL;
  }
  return rc;
}

/* Free an owned address through cumem; on failure it stays owned (a retry
 * may succeed) and the detail stays cumem's. on_stream: wait only for
 * `stream`, not for the whole device. */
static int region_free(void *ptr, int on_stream, cudaStream_t stream) {
  cumem_t *cm = NULL;
  int rc = cumem_default(&cm);
  if (!rc) rc = on_stream ? cumem_free_on_stream(cm, ptr, stream) : cumem_free(cm, ptr);
  if (rc) (void)cumem__preload_owned_add((uintptr_t)ptr);
  return rc;
}

static int in_region(size_t size) { return size > 0 && cumem__preload_region()->enabled; }

/* A call refused before anything was done (a NULL output pointer). */
static int refused(enum preload_fn fn) {
  cumem__preload_count(fn, PRELOAD_REFUSED, 1, 0);
  return cudaErrorInvalidValue; /* == CUDA_ERROR_INVALID_VALUE */
}

/* In a region: `size` bytes of cumem memory on device `dev`, which the
 * caller looked up first (found: 0, or why it could not say). Returns the
 * cumem rc; each caller turns it into its own API's error value. */
static int alloc_in_region(enum preload_fn fn, int found, int dev, void **out, size_t size) {
  int rc = found ? found : region_alloc(out, size, dev);
  cumem__preload_count(fn, PRELOAD_TO_CUMEM, rc != 0, rc ? 0 : size);
  return rc;
}

/* 1 when ptr was the interposer's and cumem freed it (*failed: whether that
 * failed), 0 when it is someone else's. */
static int free_if_owned(enum preload_fn fn, void *ptr, int on_stream, cudaStream_t stream, int *failed) {
  if (!cumem__preload_owned_take((uintptr_t)ptr)) return 0;
  *failed = region_free(ptr, on_stream, stream) != 0;
  cumem__preload_count(fn, PRELOAD_TO_CUMEM, *failed, 0);
  return 1;
}

/* ---- allocating calls ---------------------------------------------------- */

API cudaError_t cudaMalloc(void **devPtr, size_t size) {
  if (!devPtr) return refused(PRELOAD_cudaMalloc);
  if (in_region(size)) {
    int dev = 0, found = runtime_device(&dev);
    int rc = alloc_in_region(PRELOAD_cudaMalloc, found, dev, devPtr, size);
    return rc ? cudaErrorMemoryAllocation : cudaSuccess;
  }
  cudaMalloc_fn real = REAL(cudaMalloc);
  cudaError_t e = real ? real(devPtr, size) : cudaErrorMemoryAllocation;
  cumem__preload_count(PRELOAD_cudaMalloc, PRELOAD_FORWARDED, e != cudaSuccess, size);
  return e;
}

/* On the stream's device. The memory is usable from every stream once
 * mapped, so beyond that the stream only matters to the real function. */
API cudaError_t cudaMallocAsync(void **devPtr, size_t size, cudaStream_t stream) {
  if (!devPtr) return refused(PRELOAD_cudaMallocAsync);
  if (in_region(size)) {
    int dev = 0, found = stream_device(stream, &dev);
    int rc = alloc_in_region(PRELOAD_cudaMallocAsync, found, dev, devPtr, size);
    return rc ? cudaErrorMemoryAllocation : cudaSuccess;
  }
  cudaMallocAsync_fn real = REAL(cudaMallocAsync);
  cudaError_t e = real ? real(devPtr, size, stream) : cudaErrorMemoryAllocation;
  cumem__preload_count(PRELOAD_cudaMallocAsync, PRELOAD_FORWARDED, e != cudaSuccess, size);
  return e;
}

API cudaError_t cudaMallocPitch(void **devPtr, size_t *pitch, size_t width, size_t height) {
  if (!devPtr || !pitch) return refused(PRELOAD_cudaMallocPitch);
  size_t row = (width + PITCH_ALIGN - 1) / PITCH_ALIGN * PITCH_ALIGN;
  if (width && height && in_region(width) && row >= width && height <= SIZE_MAX / row) {
    int dev = 0, found = runtime_device(&dev);
    if (alloc_in_region(PRELOAD_cudaMallocPitch, found, dev, devPtr, row * height))
      return cudaErrorMemoryAllocation;
    *pitch = row;
    return cudaSuccess;
  }
  /* Empty and overflowing requests: the real function answers them. */
  cudaMallocPitch_fn real = REAL(cudaMallocPitch);
  cudaError_t e = real ? real(devPtr, pitch, width, height) : cudaErrorMemoryAllocation;
  cumem__preload_count(PRELOAD_cudaMallocPitch, PRELOAD_FORWARDED, e != cudaSuccess,
                       e == cudaSuccess ? (unsigned long long)*pitch * height : 0);
  return e;
}

/* The driver's current device is the current context's. */
API CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
  if (!dptr) return refused(PRELOAD_cuMemAlloc_v2);
  if (in_region(bytesize)) {
    void *p = NULL;
    int dev = 0, found = driver_device(&dev);
    if (alloc_in_region(PRELOAD_cuMemAlloc_v2, found, dev, &p, bytesize)) return CUDA_ERROR_OUT_OF_MEMORY;
    *dptr = (CUdeviceptr)(uintptr_t)p;
    return CUDA_SUCCESS;
  }
  cuMemAlloc_v2_fn real = REAL(cuMemAlloc_v2);
  CUresult e = real ? real(dptr, bytesize) : CUDA_ERROR_OUT_OF_MEMORY;
  cumem__preload_count(PRELOAD_cuMemAlloc_v2, PRELOAD_FORWARDED, e != CUDA_SUCCESS, bytesize);
  return e;
}

/* ---- freeing calls ------------------------------------------------------- */

/* cudaFree(NULL) is how programs create the context: always forwarded. */
API cudaError_t cudaFree(void *devPtr) {
  int failed;
  if (free_if_owned(PRELOAD_cudaFree, devPtr, 0, NULL, &failed))
    return failed ? cudaErrorInvalidValue : cudaSuccess;
  cudaFree_fn real = REAL(cudaFree);
  cudaError_t e = real ? real(devPtr) : cudaErrorInvalidValue;
  cumem__preload_count(PRELOAD_cudaFree, PRELOAD_FORWARDED, e != cudaSuccess, 0);
  return e;
}

/* Work queued on `stream` may still use the memory: cumem waits for that
 * stream, then frees (synchronously: the memory is unmapped at return). */
API cudaError_t cudaFreeAsync(void *devPtr, cudaStream_t stream) {
  int failed;
  if (free_if_owned(PRELOAD_cudaFreeAsync, devPtr, 1, stream, &failed))
    return failed ? cudaErrorInvalidValue : cudaSuccess;
  cudaFreeAsync_fn real = REAL(cudaFreeAsync);
  cudaError_t e = real ? real(devPtr, stream) : cudaErrorInvalidValue;
  cumem__preload_count(PRELOAD_cudaFreeAsync, PRELOAD_FORWARDED, e != cudaSuccess, 0);
  return e;
}

API CUresult cuMemFree_v2(CUdeviceptr dptr) {
  int failed;
  if (free_if_owned(PRELOAD_cuMemFree_v2, (void *)(uintptr_t)dptr, 0, NULL, &failed))
    return failed ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
  cuMemFree_v2_fn real = REAL(cuMemFree_v2);
  CUresult e = real ? real(dptr) : CUDA_ERROR_INVALID_VALUE;
  cumem__preload_count(PRELOAD_cuMemFree_v2, PRELOAD_FORWARDED, e != CUDA_SUCCESS, 0);
  return e;
}

/* ---- counted only -------------------------------------------------------- */

/* Managed memory migrates between host and device under the driver's
 * control; it has no physical handle to release, so it is never cumem's. */
API cudaError_t cudaMallocManaged(void **devPtr, size_t size, unsigned int flags) {
  cudaMallocManaged_fn real = REAL(cudaMallocManaged);
  cudaError_t e = real ? real(devPtr, size, flags) : cudaErrorMemoryAllocation;
  cumem__preload_count(PRELOAD_cudaMallocManaged, PRELOAD_FORWARDED, e != cudaSuccess, size);
  return e;
}

API cudaError_t cudaMallocFromPoolAsync(void **ptr, size_t size, cudaMemPool_t pool, cudaStream_t stream) {
  cudaMallocFromPoolAsync_fn real = REAL(cudaMallocFromPoolAsync);
  cudaError_t e = real ? real(ptr, size, pool, stream) : cudaErrorMemoryAllocation;
  cumem__preload_count(PRELOAD_cudaMallocFromPoolAsync, PRELOAD_FORWARDED, e != cudaSuccess, size);
  return e;
}

/* How PyTorch's DriverAPI (c10/cuda/driver_api.cpp) obtains cuMemCreate,
 * cuMemMap and friends for expandable segments: counted per symbol, so a
 * trace shows which driver calls escape the interposer. */
API cudaError_t cudaGetDriverEntryPoint(const char *symbol, void **funcPtr, unsigned long long flags,
                                        int *driverStatus) {
  cumem__preload_count_entry_point(symbol);
  cudaGetDriverEntryPoint_fn real = REAL(cudaGetDriverEntryPoint);
  cudaError_t e = real ? real(symbol, funcPtr, flags, driverStatus) : cudaErrorInvalidValue;
  cumem__preload_count(PRELOAD_cudaGetDriverEntryPoint, PRELOAD_FORWARDED, e != cudaSuccess, 0);
  return e;
}

API cudaError_t cudaGetDriverEntryPointByVersion(const char *symbol, void **funcPtr, unsigned int cudaVersion,
                                                 unsigned long long flags, int *driverStatus) {
  cumem__preload_count_entry_point(symbol);
  cudaGetDriverEntryPointByVersion_fn real = REAL(cudaGetDriverEntryPointByVersion);
  cudaError_t e = real ? real(symbol, funcPtr, cudaVersion, flags, driverStatus) : cudaErrorInvalidValue;
  cumem__preload_count(PRELOAD_cudaGetDriverEntryPointByVersion, PRELOAD_FORWARDED, e != cudaSuccess, 0);
  return e;
}
