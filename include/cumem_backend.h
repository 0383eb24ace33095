/*
 * The backend interface: the only layer that knows CUDA (like SQLite's VFS or
 * mimalloc's prim layer). Three ship with cumem:
 *   cuda  — the CUDA driver API, loaded at run time, primary contexts;
 *   host  — the same VMM semantics on host memory (mmap, memfd, MAP_FIXED);
 *   fault — wraps another backend and fails chosen calls, for tests
 *           (declared in cumem_testing.h).
 *
 * Every operation returns 0 or a negative CUMEM_E* code and, on failure, sets
 * the thread's detail (cumem_last_error; inside cumem, CUMEM_FAIL in
 * src/internal.h). A failed
 * operation has no effect (its post-condition is simply not reached).
 *
 * Sizes and addresses handed to reserve/create/map/unmap/set_access are
 * multiples of the device's granularity (device_info's), checked by the core.
 * "stream" and "event" values are opaque (CUstream / CUevent in cuda); the
 * host backend does its copies synchronously and its streams are tokens.
 */
#ifndef CUMEM_BACKEND_H
#define CUMEM_BACKEND_H

#include "cumem.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef uint64_t cumem_handle_t; /* physical memory; 0 is never a handle */

typedef struct cumem_backend cumem_backend_t;

struct cumem_backend {
  const char *name;
  void *self; /* the backend's own state */

  /* Release the backend itself. Pre: nothing it created is still alive. */
  void (*destroy)(cumem_backend_t *b);

  int (*device_count)(cumem_backend_t *b, int *count);
  /* Post: info filled; free_bytes is the device's free memory now. */
  int (*device_info)(cumem_backend_t *b, int device, cumem_device_info_t *info);

  /* Post: [*va, *va + size) is reserved for `device`, mapped to nothing. */
  int (*reserve)(cumem_backend_t *b, int device, size_t size, uintptr_t *va);
  /* Pre: the range was reserved whole and nothing is mapped inside it. */
  int (*unreserve)(cumem_backend_t *b, uintptr_t va, size_t size);

  /* Post: *h holds `size` bytes of physical memory on `device`.
   * Out of memory is CUMEM_ENOMEM. */
  int (*create)(cumem_backend_t *b, int device, size_t size, cumem_handle_t *h);
  /* Pre: h is not mapped anywhere. */
  int (*release)(cumem_backend_t *b, cumem_handle_t h);

  /* Pre: [va, va + size) reserved and unmapped; h has exactly `size` bytes.
   * Post: mapped, but not yet accessible (see set_access). */
  int (*map)(cumem_backend_t *b, uintptr_t va, size_t size, cumem_handle_t h);
  /* Pre: [va, va + size) is exactly one earlier map. Post: unmapped; no
   * waiting for work that still uses it (callers synchronize first). */
  int (*unmap)(cumem_backend_t *b, uintptr_t va, size_t size);
  /* Post: `device` and every device in peer_mask may read and write. */
  int (*set_access)(cumem_backend_t *b, uintptr_t va, size_t size, int device,
                    uint64_t peer_mask);

  /* Post: all work queued on the device so far has completed. */
  int (*synchronize)(cumem_backend_t *b, int device);

  /* Streams and events for asynchronous copies on one device. */
  int (*stream_create)(cumem_backend_t *b, int device, void **stream);
  int (*stream_destroy)(cumem_backend_t *b, void *stream);
  /* Post: work queued on stream so far has completed. NULL = legacy default
   * stream. */
  int (*stream_synchronize)(cumem_backend_t *b, void *stream);
  int (*event_create)(cumem_backend_t *b, int device, void **event);
  int (*event_destroy)(cumem_backend_t *b, void *event);
  int (*event_record)(cumem_backend_t *b, void *event, void *stream);
  /* Post: the work before the event's record has completed. */
  int (*event_synchronize)(cumem_backend_t *b, void *event);

  /* Page-lock [ptr, ptr + size) of host memory for fast copies. */
  int (*host_register)(cumem_backend_t *b, void *ptr, size_t size);
  int (*host_unregister)(cumem_backend_t *b, void *ptr);

  /* Queue a copy on stream (may complete before returning). */
  int (*copy_to_host)(cumem_backend_t *b, void *dst, uintptr_t src, size_t n,
                      void *stream);
  int (*copy_to_device)(cumem_backend_t *b, uintptr_t dst, const void *src,
                        size_t n, void *stream);
  int (*memset)(cumem_backend_t *b, uintptr_t dst, unsigned char value,
                size_t n, void *stream);

  /* Live objects this backend has created and not destroyed. */
  void (*counters)(cumem_backend_t *b, cumem_backend_counters_t *out);

  /* Fingerprint [va, va + n) in chunks of chunk_bytes (the last one may be
   * shorter): out[2c] and out[2c + 1] receive the 128-bit fingerprint of
   * chunk c, for every c < ceil(n / chunk_bytes). The function is defined in
   * src/fingerprint_def.h; every backend computes it bit for bit (cumem
   * compares fingerprints a backend computed at different times, never
   * across backends).
   * Pre: [va, va + n) is mapped and accessible memory of one device; va and
   *   chunk_bytes are multiples of 16 (CUMEM_EINVAL otherwise); out has room
   *   for 2 * ceil(n / chunk_bytes) values, is page-locked with
   *   host_register (else the call may wait for the stream), and is neither
   *   read nor written until the work queued on `stream` so far has
   *   completed.
   * Post: queued on `stream` (the host backend computes at once): once that
   *   work has completed (stream_synchronize, or an event recorded after
   *   it), out holds the fingerprints. The memory is only read.
   * Optional: NULL, or CUMEM_ENOTSUP, where a backend or device cannot
   *   compute them; cumem then copies every chunk at sleep. */
  int (*fingerprint)(cumem_backend_t *b, uintptr_t va, size_t chunk_bytes, size_t n,
                     uint64_t *out, void *stream);
};

/* Record this thread's error detail (what cumem_last_error() returns next:
 * "<file>:<line>: <message>") and return `code`. For backends and other code
 * built on cumem whose failures should read like cumem's own:
 *   return cumem_set_error(CUMEM_EDRIVER, __FILE__, __LINE__, "x failed: %d", e); */
CUMEM_API int cumem_set_error(int code, const char *file, int line, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/* The shipped backends. Each returns 0 and a new backend, or an error
 * (cuda: CUMEM_ENODRIVER where no driver or device answers). */
CUMEM_API int cumem_backend_cuda(cumem_backend_t **out);
CUMEM_API int cumem_backend_host(cumem_backend_t **out);
/* A backend by name: "cuda", "host", or "auto" (NULL): cuda where a driver
 * and a device answer, else host. The one place names are resolved. */
CUMEM_API int cumem_backend_open(const char *name, cumem_backend_t **out);

/* Open an instance over a given backend; the instance owns it afterwards
 * (it is destroyed by cumem_close, or here on failure). */
CUMEM_API int cumem_open_backend(cumem_t **out, const cumem_options_t *opts,
                                 cumem_backend_t *backend);

#ifdef __cplusplus
}
#endif
#endif /* CUMEM_BACKEND_H */
