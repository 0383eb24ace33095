/* The host backend: CUDA's VMM semantics on host memory, so that the whole
 * library runs (and is tested) where there is no GPU.
 *   reserve  = mmap PROT_NONE          create  = memfd_create + ftruncate
 *   map      = mmap MAP_FIXED|SHARED   unmap   = mmap PROT_NONE over it
 *   access   = mprotect RW             release = close
 * Physical memory really goes away on release, so discarded content is gone.
 * It also checks the pre-conditions of the backend interface (mapping outside
 * a reservation, releasing a mapped handle, unreserving a range that still
 * has mappings...) and fails such calls, so that core bugs surface in tests
 * instead of corrupting memory. Copies are synchronous; streams and events
 * are tokens.
 *
 * Emulation settings: CUMEM_HOST_DEVICES (1 to 64, default 1),
 * CUMEM_HOST_MEMORY_MB per device (default 8192; units allowed, "16G"),
 * CUMEM_HOST_GRANULARITY_KB (a power of two and a multiple of the page size;
 * default 2048, as on an H200), CUMEM_HOST_POISON=1, which fills new
 * physical memory with 0xA5 instead of zeros (fresh memfd pages read zero,
 * which would hide a missing zeroing), and CUMEM_HOST_NUMA_NODE, the NUMA
 * node the devices report (default -1, unknown). A value that is not
 * allowed makes cumem_backend_host fail with CUMEM_EINVAL naming it. */
#define _GNU_SOURCE /* memfd_create */
#include "internal.h"
#include "fingerprint.h"
#include "options.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#define HOST_MAX_DEVICES 64

typedef struct host_handle {
  int fd;
  int device;
  size_t size;
} host_handle_t;

typedef struct range {
  uintptr_t start;
  size_t size;
  uintptr_t owner; /* mappings: the handle; otherwise 0 */
} range_t;

typedef struct ranges {
  range_t *v;
  size_t n, cap;
} ranges_t;

typedef struct host {
  pthread_mutex_t mu; /* guards everything below */
  int ndevices;
  size_t capacity, granularity;
  int poison;
  int numa_node;        /* what device_info reports (CUMEM_HOST_NUMA_NODE) */
  size_t used[HOST_MAX_DEVICES];
  ranges_t reservations, mappings, registrations;
  long handles, streams, events;
} host_t;

#define SELF(b) ((host_t *)(b)->self)

/* ---- range bookkeeping ---- */

static int ranges_add(ranges_t *r, uintptr_t start, size_t size, uintptr_t owner) {
  if (r->n == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 64;
    range_t *v = realloc(r->v, cap * sizeof *v);
    if (!v) return CUMEM_FAIL(CUMEM_ENOHOST, "host backend: out of host memory for bookkeeping");
    r->v = v;
    r->cap = cap;
  }
  r->v[r->n++] = (range_t){start, size, owner};
  return 0;
}

/* Index of the range starting at `start` (and of `size`, unless 0), or -1. */
static long ranges_find(const ranges_t *r, uintptr_t start, size_t size) {
  for (size_t i = 0; i < r->n; i++)
    if (r->v[i].start == start && (!size || r->v[i].size == size)) return (long)i;
  return -1;
}

/* Index of a range that overlaps [start, start + size), or -1. */
static long ranges_overlap(const ranges_t *r, uintptr_t start, size_t size) {
  for (size_t i = 0; i < r->n; i++)
    if (start < r->v[i].start + r->v[i].size && r->v[i].start < start + size) return (long)i;
  return -1;
}

static int ranges_contain(const ranges_t *r, uintptr_t start, size_t size) {
  for (size_t i = 0; i < r->n; i++)
    if (start >= r->v[i].start && start + size <= r->v[i].start + r->v[i].size) return 1;
  return 0;
}

static void ranges_remove(ranges_t *r, long i) { r->v[i] = r->v[--r->n]; }

/* ---- devices ---- */

static int host_device_count(cumem_backend_t *b, int *count) {
  *count = SELF(b)->ndevices;
  return 0;
}

static int host_device_info(cumem_backend_t *b, int device, cumem_device_info_t *info) {
  host_t *h = SELF(b);
  if (device < 0 || device >= h->ndevices)
    return CUMEM_FAIL(CUMEM_ENODEV, "host backend: no device %d", device);
  memset(info, 0, sizeof *info);
  snprintf(info->name, sizeof info->name, "host-emulated device %d", device);
  pthread_mutex_lock(&h->mu);
  info->total_bytes = h->capacity;
  info->free_bytes = h->capacity - h->used[device];
  pthread_mutex_unlock(&h->mu);
  info->granularity = h->granularity;
  info->posix_fd = 1; /* handles are memfds */
  info->numa_node = h->numa_node;
  return 0;
}

static int check_aligned(host_t *h, const char *op, uintptr_t va, size_t size) {
  if (size == 0 || size % h->granularity || va % h->granularity)
    return CUMEM_FAIL(CUMEM_EINVAL, "host backend: %s(%#lx, %zu) is not granularity-aligned", op,
                      (unsigned long)va, size);
  return 0;
}

/* ---- address ranges ---- */

static int host_reserve(cumem_backend_t *b, int device, size_t size, uintptr_t *va) {
  host_t *h = SELF(b);
  (void)device;
  int rc = check_aligned(h, "reserve", 0, size);
  if (rc) return rc;
  /* size + granularity cannot wrap: sizes reach the backend rounded and
   * below the device's memory (at most 1 TiB here). */
  /* Over-reserve, then trim to a granularity-aligned range. */
  size_t span = size + h->granularity;
  void *p = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    return CUMEM_FAIL(CUMEM_ENOMEM, "host backend: reserving %zu bytes failed: %s", size, strerror(errno));
  uintptr_t base = (uintptr_t)p, start = (base + h->granularity - 1) & ~(uintptr_t)(h->granularity - 1);
  if (start > base) munmap(p, start - base);
  if (base + span > start + size) munmap((void *)(start + size), base + span - (start + size));
  pthread_mutex_lock(&h->mu);
  rc = ranges_add(&h->reservations, start, size, 0);
  pthread_mutex_unlock(&h->mu);
  if (rc) {
    munmap((void *)start, size);
    return rc;
  }
  *va = start;
  return 0;
}

static int host_unreserve(cumem_backend_t *b, uintptr_t va, size_t size) {
  host_t *h = SELF(b);
  pthread_mutex_lock(&h->mu);
  long i = ranges_find(&h->reservations, va, size);
  int rc = 0;
  if (i < 0) rc = CUMEM_FAIL(CUMEM_EINVAL, "host backend: unreserve of %#lx, not a reservation", (unsigned long)va);
  else if (ranges_overlap(&h->mappings, va, size) >= 0)
    rc = CUMEM_FAIL(CUMEM_EINVAL, "host backend: unreserve of %#lx while memory is mapped in it", (unsigned long)va);
  else {
    ranges_remove(&h->reservations, i);
    munmap((void *)va, size);
  }
  pthread_mutex_unlock(&h->mu);
  return rc;
}

/* ---- physical memory ---- */

static int host_create(cumem_backend_t *b, int device, size_t size, cumem_handle_t *out) {
  host_t *h = SELF(b);
  int rc = check_aligned(h, "create", 0, size);
  if (rc) return rc;
  if (device < 0 || device >= h->ndevices) return CUMEM_FAIL(CUMEM_ENODEV, "host backend: no device %d", device);
  host_handle_t *hh = malloc(sizeof *hh);
  if (!hh) return CUMEM_FAIL(CUMEM_ENOHOST, "host backend: out of host memory");
  pthread_mutex_lock(&h->mu);
  if (size > h->capacity - h->used[device]) {
    rc = CUMEM_FAIL(CUMEM_ENOMEM, "host backend: out of memory on device %d (%zu bytes asked, %zu free)",
                    device, size, h->capacity - h->used[device]);
  } else {
    h->used[device] += size;
    h->handles++;
  }
  pthread_mutex_unlock(&h->mu);
  if (rc) {
    free(hh);
    return rc;
  }
  int fd = memfd_create("cumem", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, (off_t)size) != 0) {
    int e = errno;
    if (fd >= 0) close(fd);
    free(hh);
    pthread_mutex_lock(&h->mu);
    h->used[device] -= size;
    h->handles--;
    pthread_mutex_unlock(&h->mu);
    return CUMEM_FAIL(e == EMFILE || e == ENFILE ? CUMEM_ENOHOST : CUMEM_ENOMEM,
                      "host backend: memfd of %zu bytes failed: %s", size, strerror(e));
  }
  if (h->poison) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) {
      memset(p, 0xA5, size);
      munmap(p, size);
    }
  }
  *hh = (host_handle_t){fd, device, size};
  *out = (cumem_handle_t)(uintptr_t)hh;
  return 0;
}

static int host_release(cumem_backend_t *b, cumem_handle_t handle) {
  host_t *h = SELF(b);
  host_handle_t *hh = (host_handle_t *)(uintptr_t)handle;
  if (!hh) return CUMEM_FAIL(CUMEM_EINVAL, "host backend: release of handle 0");
  pthread_mutex_lock(&h->mu);
  int rc = 0;
  for (size_t i = 0; i < h->mappings.n && !rc; i++)
    if (h->mappings.v[i].owner == (uintptr_t)handle)
      rc = CUMEM_FAIL(CUMEM_EINVAL, "host backend: release of a handle that is still mapped");
  if (!rc) {
    h->used[hh->device] -= hh->size;
    h->handles--;
  }
  pthread_mutex_unlock(&h->mu);
  if (rc) return rc;
  close(hh->fd);
  free(hh);
  return 0;
}

static int host_map(cumem_backend_t *b, uintptr_t va, size_t size, cumem_handle_t handle) {
  host_t *h = SELF(b);
  host_handle_t *hh = (host_handle_t *)(uintptr_t)handle;
  int rc = check_aligned(h, "map", va, size);
  if (rc) return rc;
  if (!hh || hh->size != size)
    return CUMEM_FAIL(CUMEM_EINVAL, "host backend: map of %zu bytes with a handle of another size", size);
  pthread_mutex_lock(&h->mu);
  if (!ranges_contain(&h->reservations, va, size))
    rc = CUMEM_FAIL(CUMEM_EINVAL, "host backend: map at %#lx outside any reservation", (unsigned long)va);
  else if (ranges_overlap(&h->mappings, va, size) >= 0)
    rc = CUMEM_FAIL(CUMEM_EINVAL, "host backend: map at %#lx over an existing mapping", (unsigned long)va);
  else if (mmap((void *)va, size, PROT_NONE, MAP_SHARED | MAP_FIXED, hh->fd, 0) == MAP_FAILED)
    rc = CUMEM_FAIL(CUMEM_ENOMEM, "host backend: mmap at %#lx failed: %s", (unsigned long)va, strerror(errno));
  else if ((rc = ranges_add(&h->mappings, va, size, (uintptr_t)handle)) != 0)
    mmap((void *)va, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
  pthread_mutex_unlock(&h->mu);
  return rc;
}

static int host_unmap(cumem_backend_t *b, uintptr_t va, size_t size) {
  host_t *h = SELF(b);
  pthread_mutex_lock(&h->mu);
  long i = ranges_find(&h->mappings, va, size);
  int rc = 0;
  if (i < 0) rc = CUMEM_FAIL(CUMEM_EINVAL, "host backend: unmap of %#lx, not a mapping", (unsigned long)va);
  /* Replace the mapping by reserved, inaccessible address space. */
  else if (mmap((void *)va, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) ==
           MAP_FAILED)
    rc = CUMEM_FAIL(CUMEM_EDRIVER, "host backend: unmap at %#lx failed: %s", (unsigned long)va, strerror(errno));
  else ranges_remove(&h->mappings, i);
  pthread_mutex_unlock(&h->mu);
  return rc;
}

static int host_set_access(cumem_backend_t *b, uintptr_t va, size_t size, int device, uint64_t peers) {
  host_t *h = SELF(b);
  if (device < 0 || device >= h->ndevices) return CUMEM_FAIL(CUMEM_ENODEV, "host backend: no device %d", device);
  if (h->ndevices < 64 && (peers >> h->ndevices))
    return CUMEM_FAIL(CUMEM_ENODEV, "host backend: peer mask %#llx names a missing device", (unsigned long long)peers);
  pthread_mutex_lock(&h->mu);
  int rc = 0;
  if (ranges_find(&h->mappings, va, size) < 0)
    rc = CUMEM_FAIL(CUMEM_EINVAL, "host backend: set_access on %#lx, not a mapping", (unsigned long)va);
  else if (mprotect((void *)va, size, PROT_READ | PROT_WRITE) != 0)
    rc = CUMEM_FAIL(CUMEM_EDRIVER, "host backend: mprotect failed: %s", strerror(errno));
  pthread_mutex_unlock(&h->mu);
  return rc;
}

/* ---- streams, events: tokens; work is done when queued ---- */

static int host_synchronize(cumem_backend_t *b, int device) {
  return device < 0 || device >= SELF(b)->ndevices
             ? CUMEM_FAIL(CUMEM_ENODEV, "host backend: no device %d", device)
             : 0;
}

static int new_token(host_t *h, long *counter, void **out) {
  void *t = malloc(1);
  if (!t) return CUMEM_FAIL(CUMEM_ENOHOST, "host backend: out of host memory");
  pthread_mutex_lock(&h->mu);
  (*counter)++;
  pthread_mutex_unlock(&h->mu);
  *out = t;
  return 0;
}

static void drop_token(host_t *h, long *counter, void *t) {
  pthread_mutex_lock(&h->mu);
  (*counter)--;
  pthread_mutex_unlock(&h->mu);
  free(t);
}

static int host_stream_create(cumem_backend_t *b, int device, void **s) {
  int rc = host_synchronize(b, device);
  return rc ? rc : new_token(SELF(b), &SELF(b)->streams, s);
}
static int host_stream_destroy(cumem_backend_t *b, void *s) {
  if (!s) return CUMEM_FAIL(CUMEM_EINVAL, "host backend: destroy of stream NULL");
  drop_token(SELF(b), &SELF(b)->streams, s);
  return 0;
}
static int host_stream_synchronize(cumem_backend_t *b, void *s) { (void)b, (void)s; return 0; }
static int host_event_create(cumem_backend_t *b, int device, void **e) {
  int rc = host_synchronize(b, device);
  return rc ? rc : new_token(SELF(b), &SELF(b)->events, e);
}
static int host_event_destroy(cumem_backend_t *b, void *e) {
  if (!e) return CUMEM_FAIL(CUMEM_EINVAL, "host backend: destroy of event NULL");
  drop_token(SELF(b), &SELF(b)->events, e);
  return 0;
}
static int host_event_record(cumem_backend_t *b, void *e, void *s) { (void)b, (void)e, (void)s; return 0; }
static int host_event_synchronize(cumem_backend_t *b, void *e) { (void)b, (void)e; return 0; }

/* ---- host memory and copies ---- */

static int host_host_register(cumem_backend_t *b, void *ptr, size_t size) {
  host_t *h = SELF(b);
  pthread_mutex_lock(&h->mu);
  int rc = ranges_overlap(&h->registrations, (uintptr_t)ptr, size) >= 0
               ? CUMEM_FAIL(CUMEM_EINVAL, "host backend: %p is registered already", ptr)
               : ranges_add(&h->registrations, (uintptr_t)ptr, size, 0);
  pthread_mutex_unlock(&h->mu);
  return rc;
}

static int host_host_unregister(cumem_backend_t *b, void *ptr) {
  host_t *h = SELF(b);
  pthread_mutex_lock(&h->mu);
  long i = ranges_find(&h->registrations, (uintptr_t)ptr, 0);
  int rc = i < 0 ? CUMEM_FAIL(CUMEM_EINVAL, "host backend: %p is not registered", ptr) : 0;
  if (!rc) ranges_remove(&h->registrations, i);
  pthread_mutex_unlock(&h->mu);
  return rc;
}

static int host_copy_to_host(cumem_backend_t *b, void *dst, uintptr_t src, size_t n, void *s) {
  (void)b, (void)s;
  memcpy(dst, (const void *)src, n);
  return 0;
}
static int host_copy_to_device(cumem_backend_t *b, uintptr_t dst, const void *src, size_t n, void *s) {
  (void)b, (void)s;
  memcpy((void *)dst, src, n);
  return 0;
}
static int host_memset(cumem_backend_t *b, uintptr_t dst, unsigned char v, size_t n, void *s) {
  (void)b, (void)s;
  memset((void *)dst, v, n);
  return 0;
}

/* [start, start + size) lies inside mappings (one or several adjacent). */
static int ranges_cover(const ranges_t *r, uintptr_t start, size_t size) {
  uintptr_t pos = start, end = start + size;
  while (pos < end) {
    size_t i = 0;
    while (i < r->n && !(pos >= r->v[i].start && pos < r->v[i].start + r->v[i].size)) i++;
    if (i == r->n) return 0;
    pos = r->v[i].start + r->v[i].size;
  }
  return 1;
}

static int host_fingerprint(cumem_backend_t *b, uintptr_t va, size_t chunk, size_t n, uint64_t *out, void *s) {
  host_t *h = SELF(b);
  (void)s;
  int rc = cumem__fingerprint_check_args("host", va, chunk, n, out);
  if (rc || n == 0) return rc;
  pthread_mutex_lock(&h->mu);
  int mapped = ranges_cover(&h->mappings, va, n);
  pthread_mutex_unlock(&h->mu);
  if (!mapped)
    return CUMEM_FAIL(CUMEM_EINVAL, "host backend: fingerprint of %zu bytes at %#lx, not all mapped", n,
                      (unsigned long)va);
  cumem__fingerprint_host((const void *)va, n, chunk, out);
  return 0;
}

static void host_counters(cumem_backend_t *b, cumem_backend_counters_t *out) {
  host_t *h = SELF(b);
  pthread_mutex_lock(&h->mu);
  out->reservations = (long)h->reservations.n;
  out->handles = h->handles;
  out->mappings = (long)h->mappings.n;
  out->host_registrations = (long)h->registrations.n;
  out->streams = h->streams;
  out->events = h->events;
  pthread_mutex_unlock(&h->mu);
}

static void host_destroy(cumem_backend_t *b) {
  host_t *h = SELF(b);
  free(h->reservations.v);
  free(h->mappings.v);
  free(h->registrations.v);
  pthread_mutex_destroy(&h->mu);
  free(h);
  free(b);
}

/* The emulation settings, as option rows (src/options.h): each is read from
 * its variable and refused, naming it and its allowed values, when
 * malformed or out of range (a granularity of 12 KiB made every allocation
 * fail later; a memory size of 2^64 MiB wrapped to 0 bytes). */
typedef struct host_settings {
  int devices;
  size_t memory, granularity;
  int poison, numa_node;
} host_settings_t;

static const cumem__option_t host_rows[] = {
    {.env = "CUMEM_HOST_DEVICES", .type = CUMEM__OPT_INT, .offset = offsetof(host_settings_t, devices),
     .min = 1, .max = HOST_MAX_DEVICES, .def = 1, .env_unit = 1},
    {.env = "CUMEM_HOST_MEMORY_MB", .type = CUMEM__OPT_SIZE, .offset = offsetof(host_settings_t, memory),
     .min = (long long)1 << 20, .max = CUMEM__OPT_SIZE_LIMIT, .flags = CUMEM__OPT_PAGE,
     .def = (long long)8192 << 20, .env_unit = (size_t)1 << 20, .note = "per device"},
    {.env = "CUMEM_HOST_GRANULARITY_KB", .type = CUMEM__OPT_SIZE, .offset = offsetof(host_settings_t, granularity),
     .min = 4096, .max = (long long)1 << 30, .flags = CUMEM__OPT_PAGE | CUMEM__OPT_POW2,
     .def = (long long)2 << 20, .env_unit = 1024},
    {.env = "CUMEM_HOST_POISON", .type = CUMEM__OPT_INT, .offset = offsetof(host_settings_t, poison), .min = 0,
     .max = 1, .def = 0, .env_unit = 1},
    {.env = "CUMEM_HOST_NUMA_NODE", .type = CUMEM__OPT_INT, .offset = offsetof(host_settings_t, numa_node),
     .min = -1, .max = 1023, .def = -1, .env_unit = 1, .note = "-1 = unknown"},
};

static int host_settings(host_settings_t *hs) {
  size_t n = sizeof host_rows / sizeof host_rows[0];
  cumem__options_defaults(host_rows, n, hs);
  for (size_t i = 0; i < n; i++) {
    int rc = cumem__option_from_env(&host_rows[i], hs);
    if (rc) return rc;
  }
  /* Less memory than one granule: no allocation could ever succeed. */
  if (hs->memory < hs->granularity)
    return CUMEM_FAIL(CUMEM_EINVAL,
                      "CUMEM_HOST_MEMORY_MB: %zu bytes per device is less than one granule, so nothing "
                      "would fit; allowed: at least the granularity (CUMEM_HOST_GRANULARITY_KB: %zu bytes)",
                      hs->memory, hs->granularity);
  return 0;
}

int cumem_backend_host(cumem_backend_t **out) {
  if (!out) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_backend_host: out is NULL");
  host_settings_t hs;
  int rc = host_settings(&hs);
  if (rc) return rc;
  host_t *h = calloc(1, sizeof *h);
  cumem_backend_t *b = calloc(1, sizeof *b);
  if (!h || !b) {
    free(h);
    free(b);
    return CUMEM_FAIL(CUMEM_ENOHOST, "host backend: out of host memory");
  }
  pthread_mutex_init(&h->mu, NULL);
  h->ndevices = hs.devices;
  h->capacity = hs.memory;
  h->granularity = hs.granularity;
  h->poison = hs.poison;
  h->numa_node = hs.numa_node;
  /* Every chunk is a file descriptor: allow as many as the system does. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &rl);
  }
  *b = (cumem_backend_t){
      .name = "host", .self = h, .destroy = host_destroy,
      .device_count = host_device_count, .device_info = host_device_info,
      .reserve = host_reserve, .unreserve = host_unreserve,
      .create = host_create, .release = host_release,
      .map = host_map, .unmap = host_unmap, .set_access = host_set_access,
      .synchronize = host_synchronize,
      .stream_create = host_stream_create, .stream_destroy = host_stream_destroy,
      .stream_synchronize = host_stream_synchronize,
      .event_create = host_event_create, .event_destroy = host_event_destroy,
      .event_record = host_event_record, .event_synchronize = host_event_synchronize,
      .host_register = host_host_register, .host_unregister = host_host_unregister,
      .copy_to_host = host_copy_to_host, .copy_to_device = host_copy_to_device,
      .memset = host_memset, .counters = host_counters, .fingerprint = host_fingerprint,
  };
  *out = b;
  return 0;
}
