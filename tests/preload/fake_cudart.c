/* A stand-in for the CUDA runtime and driver, for testing the interposer
 * where there is no GPU: cudaMalloc & co. over host memory, with counts of
 * what reached it, so a test can tell a forwarded call from one cumem served.
 *
 * It frees only what it allocated (anything else is cudaErrorInvalidValue),
 * so a cumem address that wrongly reached it is caught. The current device
 * is whatever fake_cudart_set_device() set (0 at start); a stream is NULL
 * (the current device's) or fake_cudart_stream(d), one of device d's.
 * Thread-safe, as the real runtime is. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define API __attribute__((visibility("default")))

typedef int cudaError_t;
typedef int CUresult;
typedef unsigned long long CUdeviceptr;

enum { MAX_LIVE = 1024 };
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static void *live[MAX_LIVE];
static _Atomic int device;
static _Atomic long calls_malloc, calls_free, calls_other;

static cudaError_t host_alloc(void **p, size_t n) {
  if (!p) return 1;
  if (n == 0) return *p = NULL, 0;
  cudaError_t e = 2;
  pthread_mutex_lock(&mu);
  for (int i = 0; i < MAX_LIVE; i++) {
    if (!live[i]) {
      if ((live[i] = aligned_alloc(256, (n + 255) / 256 * 256))) *p = live[i], e = 0;
      break;
    }
  }
  pthread_mutex_unlock(&mu);
  return e;
}

static cudaError_t host_free(void *p) {
  if (!p) return 0;
  cudaError_t e = 1; /* not ours: cudaErrorInvalidValue */
  pthread_mutex_lock(&mu);
  for (int i = 0; i < MAX_LIVE; i++) {
    if (live[i] == p) {
      free(p);
      live[i] = NULL;
      e = 0;
      break;
    }
  }
  pthread_mutex_unlock(&mu);
  return e;
}

API void fake_cudart_set_device(int d) { device = d; }
/* Calls that reached the stand-in: "malloc" (every allocating call),
 * "free" (every freeing call), "other". */
API long fake_cudart_calls(const char *kind) {
  return !strcmp(kind, "malloc") ? calls_malloc : !strcmp(kind, "free") ? calls_free : calls_other;
}
/* Whether p is one of the stand-in's live allocations. */
API int fake_cudart_owns(const void *p) {
  int yes = 0;
  pthread_mutex_lock(&mu);
  for (int i = 0; i < MAX_LIVE; i++) yes |= p && live[i] == p;
  pthread_mutex_unlock(&mu);
  return yes;
}

API cudaError_t cudaGetDevice(int *d) {
  calls_other++;
  return d ? (*d = device, 0) : 1;
}
API CUresult cuCtxGetDevice(int *d) {
  calls_other++;
  return d ? (*d = device, 0) : 1;
}
API void *fake_cudart_stream(int d) { return (void *)(uintptr_t)(0x5000 + d); }
API cudaError_t cudaStreamGetDevice(void *stream, int *d) {
  calls_other++;
  return d ? (*d = stream ? (int)((uintptr_t)stream - 0x5000) : device, 0) : 1;
}
API cudaError_t cudaMalloc(void **p, size_t n) {
  calls_malloc++;
  return host_alloc(p, n);
}
API cudaError_t cudaMallocAsync(void **p, size_t n, void *stream) {
  (void)stream;
  calls_malloc++;
  return host_alloc(p, n);
}
API cudaError_t cudaMallocPitch(void **p, size_t *pitch, size_t w, size_t h) {
  calls_malloc++;
  *pitch = (w + 511) / 512 * 512;
  return host_alloc(p, *pitch * h);
}
API CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) {
  calls_malloc++;
  if (n == 0) return 1; /* CUDA_ERROR_INVALID_VALUE, as the driver says */
  void *q = NULL;
  CUresult e = host_alloc(&q, n);
  *p = (CUdeviceptr)(uintptr_t)q;
  return e;
}
API cudaError_t cudaFree(void *p) {
  calls_free++;
  return host_free(p);
}
API cudaError_t cudaFreeAsync(void *p, void *stream) {
  (void)stream;
  calls_free++;
  return host_free(p);
}
API CUresult cuMemFree_v2(CUdeviceptr p) {
  calls_free++;
  return host_free((void *)(uintptr_t)p);
}
API cudaError_t cudaMallocManaged(void **p, size_t n, unsigned flags) {
  (void)flags;
  calls_malloc++;
  return host_alloc(p, n);
}
/* Hands out the address of a function, as the real one would. */
API cudaError_t cudaGetDriverEntryPointByVersion(const char *sym, void **fn, unsigned version,
                                                 unsigned long long flags, int *status) {
  (void)sym, (void)version, (void)flags;
  calls_other++;
  *fn = (void *)cudaGetDevice;
  if (status) *status = 0;
  return 0;
}
