/*
 * PyTorch entry points: the two functions torch.cuda.memory.
 * CUDAPluggableAllocator(path, "cumem_torch_malloc", "cumem_torch_free")
 * loads from the shared object that holds the cumem core: libcumem.so.0 (in
 * the Python package, cumem/libcumem.so.0 = cumem._C.LIBRARY).
 *
 * No Python and no GIL here: PyTorch calls these from C++ on the allocating
 * thread, and the tag comes from that thread's current tag
 * (cumem_set_current_tag, set by the Python layer around a MemPool region).
 *
 * Signatures, from torch/csrc/cuda/CUDAPluggableAllocator.cpp:
 *   void *alloc_fn(ssize_t size, int device, cudaStream_t stream);
 *   void  free_fn(void *ptr, ssize_t size, int device, cudaStream_t stream);
 * A cudaStream_t is a CUstream; both are pointers, so void * here keeps the
 * CUDA runtime headers out.
 */
#include "internal.h"

#include <sys/types.h>

CUMEM_API void *cumem_torch_malloc(ssize_t size, int device, void *stream);
CUMEM_API void cumem_torch_free(void *ptr, ssize_t size, int device,
                                void *stream);

/* A failed allocation returns NULL: PyTorch's caching allocator then frees
 * its cached blocks, retries, and finally raises torch.OutOfMemoryError. The
 * cause stays in this thread's cumem_last_error(). */
CUMEM_API void *cumem_torch_malloc(ssize_t size, int device, void *stream) {
  (void)stream; /* the memory is usable from any stream once mapped */
  if (size <= 0) {
    CUMEM_FAIL(CUMEM_EINVAL, "cumem_torch_malloc: size %zd", size);
    return NULL;
  }
  cumem_t *cm = NULL;
  if (cumem_default(&cm) != CUMEM_OK) return NULL;
  void *ptr = NULL;
  if (cumem_alloc(cm, &ptr, (size_t)size, device, NULL) != CUMEM_OK)
    return NULL;
  return ptr;
}

/* PyTorch hands back the stream the block was allocated on; kernels queued
 * there may still use the memory, so the free waits for that stream only
 * (cumem_free_on_stream), never for the whole device. Work on other streams
 * is PyTorch's to order (recordStream events, which it syncs before freeing
 * a segment). A free cannot report failure to PyTorch: the detail stays in
 * cumem_last_error() and is printed with CUMEM_VERBOSE. */
CUMEM_API void cumem_torch_free(void *ptr, ssize_t size, int device,
                                void *stream) {
  (void)size;
  (void)device;
  if (!ptr) return;
  cumem_t *cm = NULL;
  if (cumem_default(&cm) != CUMEM_OK) return;
  (void)cumem_free_on_stream(cm, ptr, stream);
}
