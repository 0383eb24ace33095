/* Several devices: allocations on each device with peer access
 * (cumem_alloc_ex's peer_mask), and one device's memory put to sleep and
 * woken by tag while the other device's stays awake and usable.
 *
 * Host backend: CTest sets CUMEM_HOST_DEVICES=2 (two emulated devices, each
 * with its own memory). cuda: runs with two or more GPUs, else exits 77.
 *
 * Peer access cannot be observed through cumem's API, so a thin recording
 * backend sits between the core and the backend under test and keeps every
 * set_access call: the test checks that each chunk of an allocation gets
 * its device and peers when allocated and again after every wake. On cuda
 * the driver is also asked directly (cuMemGetAccess). */
#include "harness.h"

#include <cuda.h>
#include <dlfcn.h>

/* ---- a backend that records set_access ------------------------------------ */

#define MAX_RECORDS 256

typedef struct access_record {
  uintptr_t va;
  size_t size;
  int device;
  uint64_t peers;
} access_record_t;

typedef struct recorder {
  cumem_backend_t b; /* first: the core's pointer is ours */
  cumem_backend_t *inner;
  access_record_t rec[MAX_RECORDS];
  int n;
} recorder_t;

static int rec_set_access(cumem_backend_t *b, uintptr_t va, size_t size, int device, uint64_t peers) {
  recorder_t *r = (recorder_t *)b;
  int rc = r->inner->set_access(r->inner, va, size, device, peers);
  if (!rc && r->n < MAX_RECORDS) r->rec[r->n++] = (access_record_t){va, size, device, peers};
  return rc;
}

static void rec_destroy(cumem_backend_t *b) {
  recorder_t *r = (recorder_t *)b;
  r->inner->destroy(r->inner);
  free(r);
}

/* Every other operation is the inner backend's own function: they only use
 * b->self, which the recorder shares with the inner backend. */
static recorder_t *recorder_new(cumem_backend_t *inner) {
  recorder_t *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->b = *inner;
  r->inner = inner;
  r->b.set_access = rec_set_access;
  r->b.destroy = rec_destroy;
  return r;
}

/* Each chunk of [p, p + size) was given access for `device` and `peers`
 * since the last reset; chunk = the option's chunk size (0: one). */
static int access_granted(const recorder_t *r, void *p, size_t size, size_t chunk, int device, uint64_t peers) {
  if (!chunk || chunk > size) chunk = size;
  for (size_t off = 0; off < size; off += chunk) {
    size_t n = size - off < chunk ? size - off : chunk;
    int found = 0;
    for (int i = 0; i < r->n && !found; i++)
      found = r->rec[i].va == (uintptr_t)p + off && r->rec[i].size == n && r->rec[i].device == device &&
              r->rec[i].peers == peers;
    if (!found) {
      fprintf(stderr, "  no set_access(%p + %zu, %zu, device %d, peers %#llx) among %d calls\n", p, off, n, device,
              (unsigned long long)peers, r->n);
      return 0;
    }
  }
  return 1;
}

/* ---- on cuda: ask the driver ---------------------------------------------- */

typedef CUresult (*pfn_get_access)(unsigned long long *, const CUmemLocation *, CUdeviceptr);
typedef CUresult (*pfn_device_get)(CUdevice *, int);
typedef CUresult (*pfn_retain)(CUcontext *, CUdevice);
typedef CUresult (*pfn_release)(CUdevice);
typedef CUresult (*pfn_set_current)(CUcontext);
typedef CUresult (*pfn_get_current)(CUcontext *);

/* 1 when `device` may read and write p, 0 when not, -1 when the driver
 * cannot be asked (host backend). */
static int driver_says_rw(const void *p, int device) {
  if (strcmp(test_backend(), "cuda") != 0) return -1;
  void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) return -1;
  pfn_get_access get_access = (pfn_get_access)dlsym(lib, "cuMemGetAccess");
  pfn_device_get device_get = (pfn_device_get)dlsym(lib, "cuDeviceGet");
  pfn_retain retain = (pfn_retain)dlsym(lib, "cuDevicePrimaryCtxRetain");
  pfn_release release = (pfn_release)dlsym(lib, "cuDevicePrimaryCtxRelease_v2");
  if (!release) release = (pfn_release)dlsym(lib, "cuDevicePrimaryCtxRelease");
  pfn_set_current set_current = (pfn_set_current)dlsym(lib, "cuCtxSetCurrent");
  pfn_get_current get_current = (pfn_get_current)dlsym(lib, "cuCtxGetCurrent");
  int result = -1;
  CUdevice dev0;
  CUcontext ctx, prev = NULL;
  if (get_access && device_get && retain && release && set_current && get_current &&
      device_get(&dev0, 0) == CUDA_SUCCESS && retain(&ctx, dev0) == CUDA_SUCCESS) {
    get_current(&prev);
    set_current(ctx);
    CUmemLocation loc = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = device};
    unsigned long long flags = 0;
    if (get_access(&flags, &loc, (CUdeviceptr)(uintptr_t)p) == CUDA_SUCCESS)
      result = flags == CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    set_current(prev);
    release(dev0);
  }
  dlclose(lib);
  return result;
}

/* ---- set-up ------------------------------------------------------------------ */

static recorder_t *last_recorder;

/* An instance over recorder(fault(backend under test)). */
static cumem_t *open_recorded(size_t chunk) {
  cumem_backend_t *inner;
  if (test_backend_new(&inner)) return NULL;
  recorder_t *r = recorder_new(inner);
  if (!r) {
    inner->destroy(inner);
    return NULL;
  }
  cumem_options_t o;
  cumem_options_init(&o);
  o.chunk_size = chunk;
  cumem_t *cm = NULL;
  if (cumem_open_backend(&cm, &o, &r->b)) return NULL;
  last_recorder = r;
  return cm;
}

static size_t granularity(cumem_t *cm, int device) {
  cumem_device_info_t info;
  return cumem_device_info(cm, device, &info) == 0 ? info.granularity : 0;
}

static size_t free_bytes(cumem_t *cm, int device) {
  cumem_device_info_t info;
  return cumem_device_info(cm, device, &info) == 0 ? info.free_bytes : 0;
}

static int is_host(void) { return strcmp(test_backend(), "host") == 0; }

/* ---- tests -------------------------------------------------------------------- */

TEST(peer_masks_are_checked) {
  cumem_t *cm = open_recorded(0);
  CHECK(cm);
  int ndev = 0;
  CHECK_OK(cumem_device_count(cm, &ndev));
  size_t g = granularity(cm, 0);
  void *p = NULL;
  CHECK_RC(cumem_alloc_ex(cm, &p, g, 0, "x", (uint64_t)1 << ndev), CUMEM_ENODEV);
  CHECK(p == NULL);
  /* Its own device in the mask is allowed (and not a peer). */
  CHECK_OK(cumem_alloc_ex(cm, &p, g, 1, "x", 0x3));
  cumem_alloc_info_t info;
  CHECK_OK(cumem_query(cm, p, &info));
  CHECK(info.device == 1);
  CHECK(access_granted(last_recorder, p, info.size, 0, 1, 0x1));
  CHECK_OK(cumem_free(cm, p));
  CHECK(counters_zero(cm));
  CHECK_OK(cumem_close(cm));
}

/* Device 0 sleeps (weights offloaded, cache discarded) while device 1's
 * allocations are written and read; then the other way round. */
TEST(one_device_sleeps_while_the_other_works) {
  cumem_t *cm = open_recorded(0);
  CHECK(cm);
  size_t g = granularity(cm, 0), wn = 3 * g + 777, kn = 4 * g;
  void *w[2], *kv[2];
  const char *wt[2] = {"dev0.weights", "dev1.weights"}, *kt[2] = {"dev0.kv", "dev1.kv"};
  for (int d = 0; d < 2; d++) {
    uint64_t other = (uint64_t)1 << (1 - d);
    CHECK_OK(cumem_alloc_ex(cm, &w[d], wn, d, wt[d], other));
    CHECK_OK(cumem_alloc_ex(cm, &kv[d], kn, d, kt[d], other));
    CHECK_OK(fill_pattern(cm, w[d], wn, 10 + d));
    CHECK_OK(fill_pattern(cm, kv[d], kn, 20 + d));
  }
  for (int d = 0; d < 2; d++) {
    int o = 1 - d;
    size_t before_d = free_bytes(cm, d), before_o = free_bytes(cm, o);
    const char *tags[] = {wt[d], kt[d], NULL}, *off[] = {wt[d], NULL};
    CHECK_OK(cumem_sleep(cm, tags, off));

    /* d gave its memory back; o did not. On a GPU other processes may
     * allocate, so allow slack there; the host backend is exact. */
    size_t released = 3 * g + g + 4 * g; /* rounded weights + cache */
    size_t after_d = free_bytes(cm, d), after_o = free_bytes(cm, o);
    if (is_host()) {
      CHECK(after_d == before_d + released);
      CHECK(after_o == before_o);
    } else {
      CHECK(after_d >= before_d + released * 3 / 4);
      CHECK(after_o < before_o + released / 4);
    }
    cumem_alloc_info_t info;
    CHECK_OK(cumem_query(cm, w[d], &info));
    CHECK(info.asleep && info.backed_up);
    CHECK_OK(cumem_query(cm, w[o], &info));
    CHECK(!info.asleep);
    cumem_stats_t s;
    CHECK_OK(cumem_stats(cm, wt[o], &s));
    CHECK(s.bytes_mapped == s.bytes_allocated && s.bytes_asleep == 0);

    /* o stays usable: new content in, read back. */
    CHECK(has_pattern(cm, w[o], wn, 10 + o));
    CHECK_OK(fill_pattern(cm, kv[o], kn, 30 + o));
    CHECK(has_pattern(cm, kv[o], kn, 30 + o));
    CHECK_OK(fill_pattern(cm, kv[o], kn, 20 + o)); /* as it was */
    /* d's memory cannot be touched while asleep. */
    unsigned char byte;
    CHECK_RC(cumem_copy_to_host(cm, &byte, w[d], 1), CUMEM_EINVAL);

    last_recorder->n = 0;
    CHECK_OK(cumem_wake(cm, tags));
    CHECK(has_pattern(cm, w[d], wn, 10 + d)); /* restored bit-exact */
    CHECK(has_pattern(cm, w[o], wn, 10 + o)); /* untouched */
    CHECK(has_pattern(cm, kv[o], kn, 20 + o));
    /* Woken memory gets its peer again; o's memory was not remapped. */
    CHECK(access_granted(last_recorder, w[d], 4 * g, 0, d, (uint64_t)1 << o));
    CHECK(access_granted(last_recorder, kv[d], kn, 0, d, (uint64_t)1 << o));
    for (int i = 0; i < last_recorder->n; i++) CHECK(last_recorder->rec[i].device == d);
    if (is_host()) CHECK(free_bytes(cm, d) == before_d);
    CHECK_OK(fill_pattern(cm, kv[d], kn, 20 + d)); /* discarded: refill */
  }
  for (int d = 0; d < 2; d++) {
    CHECK_OK(cumem_free(cm, w[d]));
    CHECK_OK(cumem_free(cm, kv[d]));
  }
  CHECK(counters_zero(cm));
  CHECK_OK(cumem_close(cm));
}

/* Chunked backing: every chunk gets the device and its peers when
 * allocated, after a wake by tag, and after the seed ABI's create_map. */
TEST(peer_access_is_granted_after_every_wake) {
  cumem_t *probe = open_recorded(0);
  CHECK(probe);
  size_t g = granularity(probe, 0);
  CHECK_OK(cumem_close(probe));
  cumem_t *cm = open_recorded(g);
  CHECK(cm);
  size_t n = 3 * g;
  void *p, *q;
  CHECK_OK(cumem_alloc_ex(cm, &p, n, 1, "peered", 0x1));
  CHECK_OK(cumem_alloc_ex(cm, &q, n, 0, "peered", 0x2));
  CHECK(access_granted(last_recorder, p, n, g, 1, 0x1));
  CHECK(access_granted(last_recorder, q, n, g, 0, 0x2));
  CHECK(driver_says_rw(p, 0) != 0 && driver_says_rw(p, 1) != 0);
  CHECK(driver_says_rw(q, 0) != 0 && driver_says_rw(q, 1) != 0);
  CHECK_OK(fill_pattern(cm, p, n, 5));
  const char *T[] = {"peered", NULL};
  for (int cycle = 0; cycle < 3; cycle++) {
    CHECK_OK(cumem_sleep(cm, T, T));
    last_recorder->n = 0;
    CHECK_OK(cumem_wake(cm, T));
    CHECK(access_granted(last_recorder, p, n, g, 1, 0x1));
    CHECK(access_granted(last_recorder, q, n, g, 0, 0x2));
    CHECK(driver_says_rw(p, 0) != 0 && driver_says_rw(q, 1) != 0);
    CHECK(has_pattern(cm, p, n, 5));
  }
  CHECK_OK(cumem_unmap_release(cm, p));
  last_recorder->n = 0;
  CHECK_OK(cumem_create_map(cm, p));
  CHECK(access_granted(last_recorder, p, n, g, 1, 0x1));
  CHECK(driver_says_rw(p, 0) != 0);
  CHECK_OK(cumem_free(cm, p));
  CHECK_OK(cumem_free(cm, q));
  CHECK(counters_zero(cm));
  CHECK_OK(cumem_close(cm));
}

/* Memory is per device: a full device 1 makes a wake of device 1's tag
 * fail (and lose nothing), never a wake of device 0's. Host backend only:
 * filling a real GPU would disturb everything else on it. */
TEST(a_full_device_does_not_block_the_other) {
  if (!is_host()) return;
  cumem_t *cm = open_recorded(0);
  CHECK(cm);
  size_t g = granularity(cm, 0), n = 8 * g;
  void *a, *b, *filler;
  CHECK_OK(cumem_alloc(cm, &a, n, 0, "d0"));
  CHECK_OK(cumem_alloc(cm, &b, n, 1, "d1"));
  CHECK_OK(fill_pattern(cm, a, n, 1));
  CHECK_OK(fill_pattern(cm, b, n, 2));
  const char *all[] = {"d0", "d1", NULL}, *d0[] = {"d0", NULL}, *d1[] = {"d1", NULL};
  CHECK_OK(cumem_sleep(cm, all, all));
  size_t take = (free_bytes(cm, 1) - n / 2) / g * g; /* leave room for half of b */
  CHECK_OK(cumem_alloc(cm, &filler, take, 1, "filler"));
  CHECK_RC(cumem_wake(cm, d1), CUMEM_ENOMEM);
  CHECK_RC(cumem_wake(cm, all), CUMEM_ENOMEM); /* all or nothing... */
  cumem_alloc_info_t info;
  CHECK_OK(cumem_query(cm, a, &info));
  CHECK(info.asleep && info.backed_up); /* ...so a was not woken either */
  CHECK_OK(cumem_wake(cm, d0));          /* device 0 has room */
  CHECK(has_pattern(cm, a, n, 1));
  CHECK_OK(cumem_free(cm, filler));
  CHECK_OK(cumem_wake(cm, d1));
  CHECK(has_pattern(cm, b, n, 2));
  CHECK_OK(cumem_free(cm, a));
  CHECK_OK(cumem_free(cm, b));
  CHECK(counters_zero(cm));
  CHECK_OK(cumem_close(cm));
}

int main(void) {
  static const test_case_t tests[] = {
      T(peer_masks_are_checked),
      T(one_device_sleeps_while_the_other_works),
      T(peer_access_is_granted_after_every_wake),
      T(a_full_device_does_not_block_the_other),
  };
  /* Two devices or nothing to test. */
  cumem_backend_t *probe;
  int ndev = 0;
  if (test_backend_new(&probe) == 0) {
    probe->device_count(probe, &ndev);
    probe->destroy(probe);
    if (ndev < 2) {
      printf("peers on %s: skipped (%d device%s; set CUMEM_HOST_DEVICES=2 for the host backend)\n",
             test_backend(), ndev, ndev == 1 ? "" : "s");
      return 77;
    }
  }
  return run_tests("peers", tests, sizeof tests / sizeof tests[0]);
}
