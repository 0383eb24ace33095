/*
 * The cuda backend: the CUDA driver API, loaded at run time.
 *
 * Why it looks the way it does:
 *  - The library must build and load where no driver is installed, so nothing
 *    here links against libcuda: <cuda.h> is included for types and enums
 *    only, libcuda.so.1 is dlopen'ed on first use and every entry point is
 *    resolved through cuGetProcAddress into the table `cu`.
 *  - Entry points are asked for as of CUDA 12.0 (CUDA_ABI_VERSION), each with
 *    the pointer type of the ABI that 12.0 returns (cudaTypedefs.h's
 *    PFN_<name>_v<version>). Asking for the header's CUDA_VERSION would be
 *    wrong twice: cuGetProcAddress refuses versions newer than the installed
 *    driver, and as of 13.0 some old names return new ABIs (cuCtxSynchronize
 *    takes a CUcontext there). The symbols are searched with
 *    CU_GET_PROC_ADDRESS_LEGACY_STREAM, so a NULL stream means the legacy
 *    default stream, never the per-thread one.
 *  - All work happens in each device's primary context, the one the CUDA
 *    runtime (and so PyTorch) uses, retained lazily by this backend. Every
 *    operation makes the right context current on the calling thread (only
 *    when another one is current) and puts the caller's context back before
 *    returning: a PyTorch thread whose current device is 0 must not find
 *    itself on device 1 after a cumem call touched memory there.
 *  - Operations that name no device (map, unmap, release, unreserve, host
 *    registration) only need some context: the caller's if it has one, else
 *    the primary context of a device this backend has opened.
 *  - Streams are raw CUstreams (the core passes PyTorch's streams through).
 *    NULL means the legacy default stream: a copy or memset on NULL is queued
 *    on the legacy stream of the device that owns the device memory, and
 *    stream_synchronize(NULL) waits for the legacy stream of every device
 *    this backend has opened. Copies and memsets are always asynchronous,
 *    also on NULL: callers synchronize.
 *  - Events are small backend objects (a CUevent and its device), not raw
 *    CUevents, so that recording on the NULL stream knows its device.
 *  - A driver failure becomes a CUMEM_E* code with a detail naming the call,
 *    its arguments, the CUresult name and its text (CUDA_CHECK below).
 */
#include "internal.h"
#include "fingerprint.h"
#include "fingerprint_def.h" /* the kernel's name and block size */
#include "fingerprint_ptx.h" /* the kernel, as PTX (scripts/gen_fingerprint_ptx.sh) */

#include <cuda.h>         /* types and enums only: no cu* symbol is linked */
#include <cudaTypedefs.h> /* PFN_cu<name>_v<version>: entry point types */

#include <ctype.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CUDA_ABI_VERSION 12000
#define CUDA_MAX_DEVICES 64 /* peer_mask has 64 bits */

/* ---- the driver, loaded once per process ------------------------------- */

/* X(name, version): cu<name> with the ABI of PFN_cu<name>_v<version>, which
 * is the one cuGetProcAddress returns for CUDA_ABI_VERSION. */
#define CUDA_ENTRY_POINTS(X)        \
  X(GetErrorName, 6000)             \
  X(GetErrorString, 6000)           \
  X(Init, 2000)                     \
  X(DriverGetVersion, 2020)         \
  X(DeviceGetCount, 2000)           \
  X(DeviceGet, 2000)                \
  X(DeviceGetName, 2000)            \
  X(DeviceTotalMem, 3020)           \
  X(DeviceGetAttribute, 2000)       \
  X(DeviceGetPCIBusId, 4010)        \
  X(DevicePrimaryCtxRetain, 7000)   \
  X(DevicePrimaryCtxRelease, 11000) \
  X(CtxGetCurrent, 4000)            \
  X(CtxSetCurrent, 4000)            \
  X(CtxSynchronize, 2000)           \
  X(MemGetInfo, 3020)               \
  X(MemGetAllocationGranularity, 10020) \
  X(MemAddressReserve, 10020)       \
  X(MemAddressFree, 10020)          \
  X(MemCreate, 10020)               \
  X(MemRelease, 10020)              \
  X(MemMap, 10020)                  \
  X(MemUnmap, 10020)                \
  X(MemSetAccess, 10020)            \
  X(PointerGetAttribute, 4000)      \
  X(StreamCreate, 2000)             \
  X(StreamDestroy, 4000)            \
  X(StreamSynchronize, 2000)        \
  X(StreamGetCtx, 9020)             \
  X(EventCreate, 2000)              \
  X(EventDestroy, 4000)             \
  X(EventRecord, 2000)              \
  X(EventSynchronize, 2000)         \
  X(MemHostRegister, 6050)          \
  X(ThreadExchangeStreamCaptureMode, 10010) \
  X(MemHostUnregister, 4000)        \
  X(MemcpyDtoHAsync, 3020)          \
  X(MemcpyHtoDAsync, 3020)          \
  X(MemsetD8Async, 3020)            \
  X(CtxGetDevice, 2000)             \
  X(ModuleLoadData, 2000)           \
  X(ModuleUnload, 2000)             \
  X(ModuleGetFunction, 2000)        \
  X(LaunchKernel, 4000)             \
  X(MemAlloc, 3020)                 \
  X(MemFree, 3020)                  \
  X(StreamWaitEvent, 3020)

#define CUDA_DECLARE(name, version) PFN_cu##name##_v##version name;

/* Written once by cuda_load (under pthread_once), read-only afterwards. The
 * library is never dlclose'd: unloading a driver that other code in the
 * process (PyTorch) uses is never safe. */
static struct {
  int ok;         /* 1 when loaded and cuInit succeeded */
  char why[320];  /* why not, when ok == 0 */
  int driver_version;
  CUDA_ENTRY_POINTS(CUDA_DECLARE)
} cu;
static pthread_once_t cu_once = PTHREAD_ONCE_INIT;

/* cuGetProcAddress exists in two ABIs: _v2 (CUDA 12.0+) has a status out
 * parameter, the first (11.3+) has not. */
static PFN_cuGetProcAddress_v12000 gpa_v2;
static PFN_cuGetProcAddress_v11030 gpa_v1;

static void *cuda_resolve(const char *symbol) {
  void *fn = NULL;
  CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SUCCESS;
  CUresult r;
  if (gpa_v2)
    r = gpa_v2(symbol, &fn, CUDA_ABI_VERSION, CU_GET_PROC_ADDRESS_LEGACY_STREAM,
               &status);
  else
    r = gpa_v1(symbol, &fn, CUDA_ABI_VERSION, CU_GET_PROC_ADDRESS_LEGACY_STREAM);
  if (r != CUDA_SUCCESS || status != CU_GET_PROC_ADDRESS_SUCCESS || !fn) {
    const char *hint = "the NVIDIA driver is older than CUDA 12.0";
    if (r == CUDA_ERROR_STUB_LIBRARY)
      hint = "libcuda.so.1 is the CUDA toolkit's stub library, not a driver";
    else if (r == CUDA_SUCCESS && status == CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND)
      hint = "the NVIDIA driver lacks this entry point";
    snprintf(cu.why, sizeof cu.why,
             "cuGetProcAddress(\"%s\", %d) failed (CUresult %d, status %d): %s",
             symbol, CUDA_ABI_VERSION, (int)r, (int)status, hint);
    return NULL;
  }
  return fn;
}

static void cuda_load(void) {
  void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char *e = dlerror();
    snprintf(cu.why, sizeof cu.why, "libcuda.so.1 not found: no NVIDIA driver (%s)",
             e ? e : "dlopen failed");
    return;
  }
  gpa_v2 = (PFN_cuGetProcAddress_v12000)dlsym(lib, "cuGetProcAddress_v2");
  if (!gpa_v2) gpa_v1 = (PFN_cuGetProcAddress_v11030)dlsym(lib, "cuGetProcAddress");
  if (!gpa_v2 && !gpa_v1) {
    snprintf(cu.why, sizeof cu.why,
             "libcuda.so.1 has no cuGetProcAddress: the NVIDIA driver is older "
             "than CUDA 11.3");
    return;
  }
  void *fn;
#define CUDA_RESOLVE(name, version)                \
  if (!(fn = cuda_resolve("cu" #name))) return;    \
  cu.name = (PFN_cu##name##_v##version)fn;
  CUDA_ENTRY_POINTS(CUDA_RESOLVE)
#undef CUDA_RESOLVE

  CUresult r = cu.Init(0);
  if (r != CUDA_SUCCESS) {
    const char *name = NULL, *text = NULL;
    if (cu.GetErrorName(r, &name) != CUDA_SUCCESS) name = NULL;
    if (cu.GetErrorString(r, &text) != CUDA_SUCCESS) text = NULL;
    snprintf(cu.why, sizeof cu.why, "cuInit(0) failed: %s (%s)",
             name ? name : "CUDA_ERROR_?", text ? text : "unknown error");
    return;
  }
  if (cu.DriverGetVersion(&cu.driver_version) != CUDA_SUCCESS) cu.driver_version = 0;
  cu.ok = 1;
}

/* ---- errors ------------------------------------------------------------ */

static int cuda_code(CUresult r) {
  switch (r) {
  case CUDA_ERROR_OUT_OF_MEMORY: return CUMEM_ENOMEM;
  case CUDA_ERROR_INVALID_DEVICE: return CUMEM_ENODEV;
  case CUDA_ERROR_NOT_SUPPORTED: return CUMEM_ENOTSUP;
  default: return CUMEM_EDRIVER;
  }
}

/* 0 when r is CUDA_SUCCESS; otherwise record "<call> failed: <NAME> (<text>)"
 * as this thread's detail, at the caller's file and line, and return the
 * mapped CUMEM_E* code. `fmt` describes the call with its arguments. */
__attribute__((format(printf, 4, 5)))
static int cuda_check(CUresult r, const char *file, int line, const char *fmt, ...) {
  if (r == CUDA_SUCCESS) return 0;
  char call[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(call, sizeof call, fmt, ap);
  va_end(ap);
  const char *name = NULL, *text = NULL;
  if (cu.GetErrorName(r, &name) != CUDA_SUCCESS) name = NULL;
  if (cu.GetErrorString(r, &text) != CUDA_SUCCESS) text = NULL;
  char unknown[32];
  if (!name) {
    snprintf(unknown, sizeof unknown, "CUresult %d", (int)r);
    name = unknown;
  }
  return cumem_set_error(cuda_code(r), file, line, "%s failed: %s (%s)", call,
                          name, text ? text : "unknown error");
}
#define CUDA_CHECK(call, ...) cuda_check((call), __FILE__, __LINE__, __VA_ARGS__)

/* ---- state ------------------------------------------------------------- */

typedef struct cuda_device {
  atomic_int ready; /* 1 once every field below is set (release/acquire) */
  CUdevice dev;
  CUcontext ctx;    /* primary context, retained by this backend */
  char name[96];
  size_t total;
  size_t granularity; /* covers every handle type create may use */
  int rdma, fabric, posix_fd;
  int numa_node;    /* nearest host NUMA node, -1 unknown */
  atomic_int handle_type; /* CUmemAllocationHandleType asked of cuMemCreate */
  /* The fingerprint kernel, loaded into the primary context on first use
   * (cuda_fingerprint_load): 0 = not loaded (not tried, or the last try
   * failed in a way a later one may not), 1 = loaded, -1 = unavailable. */
  atomic_int fp_state;
  char fp_why[256];   /* why the last try failed */
  CUmodule fp_module;
  CUfunction fp_kernel;
  int sm_count;
  /* Where the kernel's blocks add up their sums (under fp_lock): device
   * memory kept from call to call, and an event recorded after the last
   * call's use of it, which the next call's stream waits for. */
  CUdeviceptr fp_sums;
  size_t fp_sums_size;
  CUevent fp_sums_free;
} cuda_device_t;

typedef struct cuda_backend {
  cumem_backend_t base;
  pthread_mutex_t open_lock; /* serializes the lazy opening of devices */
  pthread_mutex_t fp_lock;   /* guards the devices' fingerprint sums */
  int count;
  cuda_device_t *devices;
  atomic_long reservations, handles, mappings, host_registrations, streams,
      events;
} cuda_backend_t;

typedef struct cuda_event {
  CUevent ev;
  int device;
} cuda_event_t;

static cuda_backend_t *cuda_self(cumem_backend_t *b) { return b->self; }

static int cuda_is_legacy(void *stream) {
  return stream == NULL || (CUstream)stream == CU_STREAM_LEGACY;
}

static const char *cuda_handle_type_name(int t) {
  switch (t) {
  case CU_MEM_HANDLE_TYPE_NONE: return "none";
  case CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR: return "posix-fd";
  case CU_MEM_HANDLE_TYPE_FABRIC: return "fabric";
  default: return "other";
  }
}

/* ---- current context --------------------------------------------------- */

/* What was current on this thread before an operation switched contexts. */
typedef struct cuda_scope {
  CUcontext prev;
  int saved;   /* prev holds the caller's context */
  int changed; /* the caller's context must be put back */
} cuda_scope_t;
#define CUDA_SCOPE_INIT {NULL, 0, 0}

/* Make ctx current on this thread (only if another one is). */
static int cuda_switch(cuda_scope_t *s, CUcontext ctx) {
  CUcontext cur = NULL;
  int rc = CUDA_CHECK(cu.CtxGetCurrent(&cur), "cuCtxGetCurrent()");
  if (rc) return rc;
  if (!s->saved) {
    s->prev = cur;
    s->saved = 1;
  }
  if (cur == ctx) return 0;
  rc = CUDA_CHECK(cu.CtxSetCurrent(ctx), "cuCtxSetCurrent(ctx=%p)", (void *)ctx);
  if (!rc) s->changed = 1;
  return rc;
}

/* Put the caller's context back. Cannot fail in a way the caller could act
 * on, so its result is ignored and the thread's error detail kept. */
static void cuda_leave(cuda_scope_t *s) {
  if (s->changed) (void)cu.CtxSetCurrent(s->prev);
  s->changed = 0;
}

/* ---- devices ----------------------------------------------------------- */

static int cuda_fallback_handle_type(const cuda_device_t *d) {
  return d->posix_fd ? CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR : CU_MEM_HANDLE_TYPE_NONE;
}

static void cuda_prop(CUmemAllocationProp *p, const cuda_device_t *d, int device,
                      int handle_type) {
  memset(p, 0, sizeof *p);
  p->type = CU_MEM_ALLOCATION_TYPE_PINNED;
  p->location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  p->location.id = device;
  p->requestedHandleTypes = (CUmemAllocationHandleType)handle_type;
  p->allocFlags.gpuDirectRDMACapable = d->rdma ? 1 : 0;
}

/* An attribute a driver does not know (an older one) reads as 0: every one
 * asked here is an optional capability. */
static int cuda_attribute(CUdevice dev, CUdevice_attribute attr) {
  int v = 0;
  if (cu.DeviceGetAttribute(&v, attr, dev) != CUDA_SUCCESS) return 0;
  return v;
}

/* Minimum granularity for the properties create uses. When create may have
 * to fall back from fabric handles, take the larger of both, so that sizes
 * rounded before a fallback stay valid after it (both are powers of two). */
static int cuda_granularity(cuda_device_t *d, int device) {
  int primary = atomic_load(&d->handle_type);
  int types[2] = {primary, cuda_fallback_handle_type(d)};
  int n = primary == CU_MEM_HANDLE_TYPE_FABRIC ? 2 : 1;
  size_t best = 0;
  for (int i = 0; i < n; i++) {
    CUmemAllocationProp prop;
    cuda_prop(&prop, d, device, types[i]);
    size_t g = 0;
    CUresult r = cu.MemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
    if (i == 0 && types[0] == CU_MEM_HANDLE_TYPE_FABRIC &&
        (r == CUDA_ERROR_NOT_PERMITTED || r == CUDA_ERROR_NOT_SUPPORTED)) {
      cumem__log("device %d: fabric handles refused (CUresult %d); using %s handles",
                 device, (int)r, cuda_handle_type_name(types[1]));
      atomic_store(&d->handle_type, types[1]);
      continue;
    }
    int rc = CUDA_CHECK(r, "cuMemGetAllocationGranularity(device=%d, handle type=%s)",
                        device, cuda_handle_type_name(types[i]));
    if (rc) return rc;
    if (g > best) best = g;
  }
  d->granularity = best;
  return 0;
}

/* The host NUMA node nearest the device: the kernel's numa_node of its PCI
 * function (sysfs), -1 where unknown (no sysfs, or one node: the kernel
 * says -1 then too). */
static int cuda_numa_node(CUdevice dev) {
  char bus[32], path[96];
  if (cu.DeviceGetPCIBusId(bus, (int)sizeof bus, dev) != CUDA_SUCCESS) return -1;
  for (char *c = bus; *c; c++) *c = (char)tolower((unsigned char)*c); /* sysfs names are lower case */
  snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/numa_node", bus);
  FILE *f = fopen(path, "r");
  int node = -1;
  if (f) {
    if (fscanf(f, "%d", &node) != 1) node = -1;
    fclose(f);
  }
  return node;
}

/* Fill *d and retain the device's primary context. Called once per device,
 * under open_lock. On failure nothing is retained and a later call retries. */
static int cuda_device_init(cuda_device_t *d, int device) {
  CUdevice dev;
  int rc = CUDA_CHECK(cu.DeviceGet(&dev, device), "cuDeviceGet(%d)", device);
  if (!rc) rc = CUDA_CHECK(cu.DeviceGetName(d->name, (int)sizeof d->name, dev),
                           "cuDeviceGetName(device=%d)", device);
  if (!rc) rc = CUDA_CHECK(cu.DeviceTotalMem(&d->total, dev),
                           "cuDeviceTotalMem(device=%d)", device);
  if (rc) return rc;
  d->name[sizeof d->name - 1] = '\0';
  d->dev = dev;
  d->rdma = cuda_attribute(dev, CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED);
  d->fabric = cuda_attribute(dev, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED);
  d->posix_fd = cuda_attribute(dev, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED);
  d->numa_node = cuda_numa_node(dev);
  atomic_store(&d->handle_type, d->fabric ? CU_MEM_HANDLE_TYPE_FABRIC
                                          : cuda_fallback_handle_type(d));

  CUcontext ctx = NULL;
  rc = CUDA_CHECK(cu.DevicePrimaryCtxRetain(&ctx, dev),
                  "cuDevicePrimaryCtxRetain(device=%d)", device);
  if (rc) return rc;
  cuda_scope_t s = CUDA_SCOPE_INIT;
  rc = cuda_switch(&s, ctx);
  if (!rc) rc = cuda_granularity(d, device);
  cuda_leave(&s);
  if (rc) {
    (void)cu.DevicePrimaryCtxRelease(dev);
    return rc;
  }
  d->ctx = ctx;
  cumem__log("device %d: %s, %zu MiB, granularity %zu KiB, rdma %d, fabric %d, "
             "posix-fd %d, handles %s, NUMA node %d",
             device, d->name, d->total >> 20, d->granularity >> 10, d->rdma,
             d->fabric, d->posix_fd, cuda_handle_type_name(atomic_load(&d->handle_type)),
             d->numa_node);
  atomic_store_explicit(&d->ready, 1, memory_order_release);
  return 0;
}

/* The device, opened on first use (thread-safe, double-checked). */
static int cuda_device(cuda_backend_t *cb, int device, cuda_device_t **out) {
  if (device < 0 || device >= cb->count)
    return CUMEM_FAIL(CUMEM_ENODEV, "device %d does not exist (%d CUDA devices)",
                      device, cb->count);
  cuda_device_t *d = &cb->devices[device];
  if (!atomic_load_explicit(&d->ready, memory_order_acquire)) {
    int rc = 0;
    pthread_mutex_lock(&cb->open_lock);
    if (!atomic_load_explicit(&d->ready, memory_order_relaxed))
      rc = cuda_device_init(d, device);
    pthread_mutex_unlock(&cb->open_lock);
    if (rc) return rc;
  }
  *out = d;
  return 0;
}

/* Enter `device`'s primary context. */
static int cuda_enter_device(cuda_backend_t *cb, int device, cuda_device_t **d,
                             cuda_scope_t *s) {
  cuda_device_t *dd = NULL;
  int rc = cuda_device(cb, device, &dd);
  if (!rc) rc = cuda_switch(s, dd->ctx);
  if (!rc && d) *d = dd;
  return rc;
}

/* Make sure some context is current: the caller's when it has one, else the
 * primary context of the first device opened (device 0 if none is). For
 * operations that work in any context (VMM mapping calls, portable host
 * registration). */
static int cuda_enter_any(cuda_backend_t *cb, cuda_scope_t *s) {
  CUcontext cur = NULL;
  int rc = CUDA_CHECK(cu.CtxGetCurrent(&cur), "cuCtxGetCurrent()");
  if (rc) return rc;
  if (cur) {
    s->prev = cur;
    s->saved = 1;
    return 0;
  }
  int device = 0;
  for (int i = 0; i < cb->count; i++)
    if (atomic_load_explicit(&cb->devices[i].ready, memory_order_acquire)) {
      device = i;
      break;
    }
  return cuda_enter_device(cb, device, NULL, s);
}

/* Enter the context a (non-legacy) stream belongs to. */
static int cuda_enter_stream(cuda_backend_t *cb, CUstream stream, cuda_scope_t *s) {
  int rc = cuda_enter_any(cb, s);
  CUcontext ctx = NULL;
  if (!rc) rc = CUDA_CHECK(cu.StreamGetCtx(stream, &ctx), "cuStreamGetCtx(stream=%p)",
                           (void *)stream);
  if (!rc) rc = cuda_switch(s, ctx);
  return rc;
}

/* Enter the context for a copy or memset touching device memory at `va` on
 * `stream`, and return the stream to queue it on: the stream's own context,
 * or for NULL the legacy stream of the device that owns `va`. */
static int cuda_enter_copy(cuda_backend_t *cb, uintptr_t va, void *stream,
                           cuda_scope_t *s, CUstream *use) {
  if (!cuda_is_legacy(stream)) {
    *use = (CUstream)stream;
    return cuda_enter_stream(cb, (CUstream)stream, s);
  }
  *use = CU_STREAM_LEGACY;
  int rc = cuda_enter_any(cb, s);
  if (rc) return rc;
  int device = -1;
  /* VMM memory answers with the device of its physical memory. If the
   * pointer is unknown to the driver, stay in the current context and let
   * the copy itself report the failure. */
  if (cu.PointerGetAttribute(&device, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                             (CUdeviceptr)va) != CUDA_SUCCESS ||
      device < 0 || device >= cb->count)
    return 0;
  return cuda_enter_device(cb, device, NULL, s);
}

/* ---- operations -------------------------------------------------------- */

static int cuda_device_count(cumem_backend_t *b, int *count) {
  *count = cuda_self(b)->count;
  return 0;
}

static int cuda_device_info(cumem_backend_t *b, int device, cumem_device_info_t *info) {
  cuda_backend_t *cb = cuda_self(b);
  cuda_scope_t s = CUDA_SCOPE_INIT;
  cuda_device_t *d = NULL;
  size_t free_bytes = 0, total = 0;
  int rc = cuda_enter_device(cb, device, &d, &s);
  if (!rc) rc = CUDA_CHECK(cu.MemGetInfo(&free_bytes, &total),
                           "cuMemGetInfo(device=%d)", device);
  cuda_leave(&s);
  if (rc) return rc;
  memset(info, 0, sizeof *info);
  snprintf(info->name, sizeof info->name, "%s", d->name);
  info->total_bytes = d->total;
  info->free_bytes = free_bytes;
  info->granularity = d->granularity;
  info->rdma = d->rdma;
  info->fabric = d->fabric;
  info->posix_fd = d->posix_fd;
  info->numa_node = d->numa_node;
  return 0;
}

static int cuda_reserve(cumem_backend_t *b, int device, size_t size, uintptr_t *va) {
  cuda_backend_t *cb = cuda_self(b);
  cuda_scope_t s = CUDA_SCOPE_INIT;
  cuda_device_t *d = NULL;
  CUdeviceptr p = 0;
  int rc = cuda_enter_device(cb, device, &d, &s);
  if (!rc) rc = CUDA_CHECK(cu.MemAddressReserve(&p, size, d->granularity, 0, 0),
                           "cuMemAddressReserve(size=%zu, device=%d)", size, device);
  cuda_leave(&s);
  if (rc) return rc;
  *va = (uintptr_t)p;
  atomic_fetch_add(&cb->reservations, 1);
  return 0;
}

static int cuda_unreserve(cumem_backend_t *b, uintptr_t va, size_t size) {
  cuda_backend_t *cb = cuda_self(b);
  cuda_scope_t s = CUDA_SCOPE_INIT;
  int rc = cuda_enter_any(cb, &s);
  if (!rc) rc = CUDA_CHECK(cu.MemAddressFree((CUdeviceptr)va, size),
                           "cuMemAddressFree(va=0x%jx, size=%zu)", (uintmax_t)va, size);
  cuda_leave(&s);
  if (!rc) atomic_fetch_sub(&cb->reservations, 1);
  return rc;
}

static int cuda_create(cumem_backend_t *b, int device, size_t size, cumem_handle_t *h) {
  cuda_backend_t *cb = cuda_self(b);
  cuda_scope_t s = CUDA_SCOPE_INIT;
  cuda_device_t *d = NULL;
  int rc = cuda_enter_device(cb, device, &d, &s);
  if (rc) {
    cuda_leave(&s);
    return rc;
  }
  CUmemGenericAllocationHandle mh = 0;
  int type = atomic_load(&d->handle_type);
  CUmemAllocationProp prop;
  cuda_prop(&prop, d, device, type);
  CUresult r = cu.MemCreate(&mh, size, &prop, 0);
  if (type == CU_MEM_HANDLE_TYPE_FABRIC &&
      (r == CUDA_ERROR_NOT_PERMITTED || r == CUDA_ERROR_NOT_SUPPORTED)) {
    /* The device can export fabric handles but this node cannot (no IMEX
     * channel, as on a lone H200): use POSIX fds for this and every later
     * allocation on the device. */
    int fallback = cuda_fallback_handle_type(d);
    int expected = type;
    if (atomic_compare_exchange_strong(&d->handle_type, &expected, fallback))
      cumem__log("device %d: cuMemCreate with fabric handles failed (CUresult %d); "
                 "using %s handles from now on",
                 device, (int)r, cuda_handle_type_name(fallback));
    type = fallback;
    prop.requestedHandleTypes = (CUmemAllocationHandleType)type;
    r = cu.MemCreate(&mh, size, &prop, 0);
  }
  rc = CUDA_CHECK(r, "cuMemCreate(size=%zu, device=%d, handles=%s, rdma=%d)", size,
                  device, cuda_handle_type_name(type), d->rdma);
  cuda_leave(&s);
  if (rc) return rc;
  *h = (cumem_handle_t)mh;
  atomic_fetch_add(&cb->handles, 1);
  return 0;
}

static int cuda_release(cumem_backend_t *b, cumem_handle_t h) {
  cuda_backend_t *cb = cuda_self(b);
  cuda_scope_t s = CUDA_SCOPE_INIT;
  int rc = cuda_enter_any(cb, &s);
  if (!rc) rc = CUDA_CHECK(cu.MemRelease((CUmemGenericAllocationHandle)h),
                           "cuMemRelease(handle=0x%jx)", (uintmax_t)h);
  cuda_leave(&s);
  if (!rc) atomic_fetch_sub(&cb->handles, 1);
  return rc;
}

static int cuda_map(cumem_backend_t *b, uintptr_t va, size_t size, cumem_handle_t h) {
  cuda_backend_t *cb = cuda_self(b);
  cuda_scope_t s = CUDA_SCOPE_INIT;
  int rc = cuda_enter_any(cb, &s);
  if (!rc) rc = CUDA_CHECK(cu.MemMap((CUdeviceptr)va, size, 0, (CUmemGenericAllocationHandle)h, 0),
                           "cuMemMap(va=0x%jx, size=%zu, handle=0x%jx)", (uintmax_t)va,
                           size, (uintmax_t)h);
  cuda_leave(&s);
  if (!rc) atomic_fetch_add(&cb->mappings, 1);
  return rc;
}

static int cuda_unmap(cumem_backend_t *b, uintptr_t va, size_t size) {
  cuda_backend_t *cb = cuda_self(b);
  cuda_scope_t s = CUDA_SCOPE_INIT;
  int rc = cuda_enter_any(cb, &s);
  if (!rc) rc = CUDA_CHECK(cu.MemUnmap((CUdeviceptr)va, size),
                           "cuMemUnmap(va=0x%jx, size=%zu)", (uintmax_t)va, size);
  cuda_leave(&s);
  if (!rc) atomic_fetch_sub(&cb->mappings, 1);
  return rc;
}

static int cuda_set_access(cumem_backend_t *b, uintptr_t va, size_t size, int device,
                           uint64_t peer_mask) {
  cuda_backend_t *cb = cuda_self(b);
  CUmemAccessDesc desc[CUDA_MAX_DEVICES + 1];
  size_t n = 0;
  memset(desc, 0, sizeof desc);
  desc[n].location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  desc[n].location.id = device;
  desc[n++].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  for (int p = 0; p < CUDA_MAX_DEVICES; p++) {
    if (!(peer_mask >> p & 1) || p == device) continue;
    if (p >= cb->count)
      return CUMEM_FAIL(CUMEM_ENODEV, "peer device %d does not exist (%d CUDA devices)",
                        p, cb->count);
    desc[n].location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    desc[n].location.id = p;
    desc[n++].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  }
  cuda_scope_t s = CUDA_SCOPE_INIT;
  int rc = cuda_enter_device(cb, device, NULL, &s);
  if (!rc) rc = CUDA_CHECK(cu.MemSetAccess((CUdeviceptr)va, size, desc, n),
                           "cuMemSetAccess(va=0x%jx, size=%zu, device=%d, peers=0x%jx)",
                           (uintmax_t)va, size, device, (uintmax_t)peer_mask);
  cuda_leave(&s);
  return rc;
}

static int cuda_synchronize(cumem_backend_t *b, int device) {
  cuda_scope_t s = CUDA_SCOPE_INIT;
  int rc = cuda_enter_device(cuda_self(b), device, NULL, &s);
  if (!rc) rc = CUDA_CHECK(cu.CtxSynchronize(), "cuCtxSynchronize(device=%d)", device);
  cuda_leave(&s);
  return rc;
}

static int cuda_stream_create(cumem_backend_t *b, int device, void **stream) {
  cuda_backend_t *cb = cuda_self(b);
  cuda_scope_t s = CUDA_SCOPE_INIT;
  CUstream st = NULL;
  int rc = cuda_enter_device(cb, device, NULL, &s);
  if (!rc) rc = CUDA_CHECK(cu.StreamCreate(&st, CU_STREAM_NON_BLOCKING),
                           "cuStreamCreate(device=%d)", device);
  cuda_leave(&s);
  if (rc) return rc;
  *stream = st;
  atomic_fetch_add(&cb->streams, 1);
  return 0;
}

static int cuda_stream_destroy(cumem_backend_t *b, void *stream) {
  cuda_backend_t *cb = cuda_self(b);
  if (cuda_is_legacy(stream))
    return CUMEM_FAIL(CUMEM_EINVAL, "stream_destroy: the legacy default stream cannot be destroyed");
  cuda_scope_t s = CUDA_SCOPE_INIT;
  int rc = cuda_enter_stream(cb, (CUstream)stream, &s);
  if (!rc) rc = CUDA_CHECK(cu.StreamDestroy((CUstream)stream), "cuStreamDestroy(stream=%p)", stream);
  cuda_leave(&s);
  if (!rc) atomic_fetch_sub(&cb->streams, 1);
  return rc;
}

static int cuda_stream_synchronize(cumem_backend_t *b, void *stream) {
  cuda_backend_t *cb = cuda_self(b);
  cuda_scope_t s = CUDA_SCOPE_INIT;
  int rc = 0;
  if (!cuda_is_legacy(stream)) {
    rc = cuda_enter_stream(cb, (CUstream)stream, &s);
    if (!rc) rc = CUDA_CHECK(cu.StreamSynchronize((CUstream)stream),
                             "cuStreamSynchronize(stream=%p)", stream);
    cuda_leave(&s);
    return rc;
  }
  /* The legacy stream is per context, and the caller did not say which
   * device: wait for it on every device this backend has opened (a device
   * never opened here holds no work of ours). */
  for (int i = 0; i < cb->count && !rc; i++) {
    if (!atomic_load_explicit(&cb->devices[i].ready, memory_order_acquire)) continue;
    rc = cuda_enter_device(cb, i, NULL, &s);
    if (!rc) rc = CUDA_CHECK(cu.StreamSynchronize(CU_STREAM_LEGACY),
                             "cuStreamSynchronize(legacy stream, device=%d)", i);
  }
  cuda_leave(&s);
  return rc;
}

static int cuda_event_create(cumem_backend_t *b, int device, void **event) {
  cuda_backend_t *cb = cuda_self(b);
  cuda_event_t *e = calloc(1, sizeof *e);
  if (!e) return CUMEM_FAIL(CUMEM_ENOHOST, "event_create: out of host memory");
  e->device = device;
  cuda_scope_t s = CUDA_SCOPE_INIT;
  int rc = cuda_enter_device(cb, device, NULL, &s);
  if (!rc) rc = CUDA_CHECK(cu.EventCreate(&e->ev, CU_EVENT_DISABLE_TIMING),
                           "cuEventCreate(device=%d)", device);
  cuda_leave(&s);
  if (rc) {
    free(e);
    return rc;
  }
  *event = e;
  atomic_fetch_add(&cb->events, 1);
  return 0;
}

static int cuda_event_destroy(cumem_backend_t *b, void *event) {
  cuda_backend_t *cb = cuda_self(b);
  cuda_event_t *e = event;
  if (!e) return CUMEM_FAIL(CUMEM_EINVAL, "event_destroy: NULL event");
  cuda_scope_t s = CUDA_SCOPE_INIT;
  int rc = cuda_enter_device(cb, e->device, NULL, &s);
  if (!rc) rc = CUDA_CHECK(cu.EventDestroy(e->ev), "cuEventDestroy(device=%d)", e->device);
  cuda_leave(&s);
  if (rc) return rc;
  free(e);
  atomic_fetch_sub(&cb->events, 1);
  return 0;
}

static int cuda_event_record(cumem_backend_t *b, void *event, void *stream) {
  cuda_event_t *e = event;
  if (!e) return CUMEM_FAIL(CUMEM_EINVAL, "event_record: NULL event");
  /* The event's context: a stream given must belong to it (the driver
   * checks); NULL is that device's legacy stream. */
  CUstream st = cuda_is_legacy(stream) ? CU_STREAM_LEGACY : (CUstream)stream;
  cuda_scope_t s = CUDA_SCOPE_INIT;
  int rc = cuda_enter_device(cuda_self(b), e->device, NULL, &s);
  if (!rc) rc = CUDA_CHECK(cu.EventRecord(e->ev, st), "cuEventRecord(device=%d, stream=%p)",
                           e->device, stream);
  cuda_leave(&s);
  return rc;
}

static int cuda_event_synchronize(cumem_backend_t *b, void *event) {
  cuda_event_t *e = event;
  if (!e) return CUMEM_FAIL(CUMEM_EINVAL, "event_synchronize: NULL event");
  cuda_scope_t s = CUDA_SCOPE_INIT;
  int rc = cuda_enter_device(cuda_self(b), e->device, NULL, &s);
  if (!rc) rc = CUDA_CHECK(cu.EventSynchronize(e->ev), "cuEventSynchronize(device=%d)",
                           e->device);
  cuda_leave(&s);
  return rc;
}

/* Page-locking touches no stream, so it is safe while another thread
 * captures a CUDA graph; but in the default (global) capture mode the
 * driver refuses it then as "potentially unsafe" (cumem's background
 * worker pins while vLLM captures its graphs). The calling thread is
 * relaxed for the call, as PyTorch does around cudaMalloc. */
static CUstreamCaptureMode cuda_relax_capture(void) {
  CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
  if (cu.ThreadExchangeStreamCaptureMode(&mode) != CUDA_SUCCESS) mode = CU_STREAM_CAPTURE_MODE_RELAXED;
  return mode;
}

static void cuda_restore_capture(CUstreamCaptureMode mode) {
  if (mode != CU_STREAM_CAPTURE_MODE_RELAXED) (void)cu.ThreadExchangeStreamCaptureMode(&mode);
}

static int cuda_host_register(cumem_backend_t *b, void *ptr, size_t size) {
  cuda_backend_t *cb = cuda_self(b);
  cuda_scope_t s = CUDA_SCOPE_INIT;
  /* PORTABLE: pinned for every context, whichever one is current here. */
  int rc = cuda_enter_any(cb, &s);
  CUstreamCaptureMode mode = cuda_relax_capture();
  if (!rc) rc = CUDA_CHECK(cu.MemHostRegister(ptr, size, CU_MEMHOSTREGISTER_PORTABLE),
                           "cuMemHostRegister(ptr=%p, size=%zu)", ptr, size);
  cuda_restore_capture(mode);
  cuda_leave(&s);
  if (rc == CUMEM_ENOMEM) rc = CUMEM_ENOHOST; /* it is host memory that ran out */
  if (!rc) atomic_fetch_add(&cb->host_registrations, 1);
  return rc;
}

static int cuda_host_unregister(cumem_backend_t *b, void *ptr) {
  cuda_backend_t *cb = cuda_self(b);
  cuda_scope_t s = CUDA_SCOPE_INIT;
  int rc = cuda_enter_any(cb, &s);
  CUstreamCaptureMode mode = cuda_relax_capture();
  if (!rc) rc = CUDA_CHECK(cu.MemHostUnregister(ptr), "cuMemHostUnregister(ptr=%p)", ptr);
  cuda_restore_capture(mode);
  cuda_leave(&s);
  if (!rc) atomic_fetch_sub(&cb->host_registrations, 1);
  return rc;
}

static int cuda_copy_to_host(cumem_backend_t *b, void *dst, uintptr_t src, size_t n,
                             void *stream) {
  if (n == 0) return 0;
  cuda_scope_t s = CUDA_SCOPE_INIT;
  CUstream st;
  int rc = cuda_enter_copy(cuda_self(b), src, stream, &s, &st);
  if (!rc) rc = CUDA_CHECK(cu.MemcpyDtoHAsync(dst, (CUdeviceptr)src, n, st),
                           "cuMemcpyDtoHAsync(dst=%p, src=0x%jx, n=%zu, stream=%p)", dst,
                           (uintmax_t)src, n, stream);
  cuda_leave(&s);
  return rc;
}

static int cuda_copy_to_device(cumem_backend_t *b, uintptr_t dst, const void *src,
                               size_t n, void *stream) {
  if (n == 0) return 0;
  cuda_scope_t s = CUDA_SCOPE_INIT;
  CUstream st;
  int rc = cuda_enter_copy(cuda_self(b), dst, stream, &s, &st);
  if (!rc) rc = CUDA_CHECK(cu.MemcpyHtoDAsync((CUdeviceptr)dst, src, n, st),
                           "cuMemcpyHtoDAsync(dst=0x%jx, src=%p, n=%zu, stream=%p)",
                           (uintmax_t)dst, src, n, stream);
  cuda_leave(&s);
  return rc;
}

static int cuda_memset(cumem_backend_t *b, uintptr_t dst, unsigned char value, size_t n,
                       void *stream) {
  if (n == 0) return 0;
  cuda_scope_t s = CUDA_SCOPE_INIT;
  CUstream st;
  int rc = cuda_enter_copy(cuda_self(b), dst, stream, &s, &st);
  if (!rc) rc = CUDA_CHECK(cu.MemsetD8Async((CUdeviceptr)dst, value, n, st),
                           "cuMemsetD8Async(dst=0x%jx, value=%u, n=%zu, stream=%p)",
                           (uintmax_t)dst, (unsigned)value, n, stream);
  cuda_leave(&s);
  return rc;
}

/* ---- fingerprints (the kernel: src/fingerprint.cu) ------------------- */

/* Failures to load the kernel that no later try can cure within this
 * process: the PTX, the GPU and the driver's JIT do not change. */
static int cuda_fingerprint_never_loads(CUresult r) {
  switch (r) {
  case CUDA_ERROR_UNSUPPORTED_PTX_VERSION: /* a driver older than the PTX ISA of src/fingerprint.ptx */
  case CUDA_ERROR_INVALID_PTX:
  case CUDA_ERROR_INVALID_IMAGE:
  case CUDA_ERROR_NO_BINARY_FOR_GPU:
  case CUDA_ERROR_JIT_COMPILER_NOT_FOUND:
  case CUDA_ERROR_JIT_COMPILATION_DISABLED:
  case CUDA_ERROR_NOT_FOUND: /* no kernel of that name in the module */
    return 1;
  default:
    return 0;
  }
}

/* Load the fingerprint kernel into d's primary context, once. A device
 * where it can never load (cuda_fingerprint_never_loads) answers
 * CUMEM_ENOTSUP from then on: sleep copies everything there. Any other
 * failure (out of memory at sleep time, say) is this call's, and the next
 * call tries again. Pre: d's context is current. */
static int cuda_fingerprint_load(cuda_backend_t *cb, cuda_device_t *d, int device) {
  if (atomic_load_explicit(&d->fp_state, memory_order_acquire) == 1) return 0;
  pthread_mutex_lock(&cb->open_lock);
  int state = atomic_load_explicit(&d->fp_state, memory_order_relaxed), rc = 0;
  if (state == 0) {
    CUmodule mod = NULL;
    double t0 = cumem__now();
    CUresult r = cu.ModuleLoadData(&mod, cumem__fingerprint_ptx);
    rc = CUDA_CHECK(r, "cuModuleLoadData(src/fingerprint.ptx)");
    if (!rc) {
      r = cu.ModuleGetFunction(&d->fp_kernel, mod, CUMEM_FP_KERNEL);
      rc = CUDA_CHECK(r, "cuModuleGetFunction(\"%s\")", CUMEM_FP_KERNEL);
      if (rc) (void)cu.ModuleUnload(mod);
    }
    if (!rc) {
      d->fp_module = mod;
      d->sm_count = cuda_attribute(d->dev, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
      state = 1;
    } else {
      snprintf(d->fp_why, sizeof d->fp_why, "%s", cumem_last_error());
      if (cuda_fingerprint_never_loads(r)) state = -1; /* else it stays 0: tried again */
    }
    cumem__log("device %d: fingerprint kernel %s (%.1f ms)%s%s", device,
               state == 1 ? "loaded" : state == -1 ? "unavailable" : "not loaded, tried again next time",
               (cumem__now() - t0) * 1e3, state == 1 ? "" : ": ", state == 1 ? "" : d->fp_why);
    atomic_store_explicit(&d->fp_state, state, memory_order_release);
  }
  pthread_mutex_unlock(&cb->open_lock);
  if (state == -1)
    return CUMEM_FAIL(CUMEM_ENOTSUP, "device %d: the fingerprint kernel is unavailable: %s", device, d->fp_why);
  return rc; /* 0, or this try's failure, its detail set by CUDA_CHECK */
}

/* The index of the device whose primary context is current. */
static int cuda_current_device(cuda_backend_t *cb, int *out) {
  CUdevice dev;
  int rc = CUDA_CHECK(cu.CtxGetDevice(&dev), "cuCtxGetDevice()");
  if (rc) return rc;
  for (int i = 0; i < cb->count; i++)
    if (atomic_load_explicit(&cb->devices[i].ready, memory_order_acquire) && cb->devices[i].dev == dev) {
      *out = i;
      return 0;
    }
  return CUMEM_FAIL(CUMEM_ENOTSUP, "fingerprint: the stream's device (CUdevice %d) is not one cumem opened", (int)dev);
}

/* Blocks per chunk: enough blocks in all to fill the GPU (8 resident per
 * SM), but at least CUMEM_FP_THREADS * 4 words per block. */
static unsigned cuda_fingerprint_blocks(const cuda_device_t *d, size_t nchunks, size_t chunk_words) {
  size_t target = (size_t)(d->sm_count > 0 ? d->sm_count : 1) * 8;
  size_t want = (target + nchunks - 1) / nchunks;
  size_t most = (chunk_words + CUMEM_FP_THREADS * 4 - 1) / (CUMEM_FP_THREADS * 4);
  if (want > most) want = most;
  return want ? (unsigned)want : 1;
}

/* d's sums, at least `bytes` of them, zeroed and ordered after their last
 * use on `st`. Pre: fp_lock held, d's context current. A new buffer is only
 * needed when a call has more chunks than any before (it starts at 64 KiB:
 * 4096 chunks). */
static int cuda_fingerprint_sums(cuda_device_t *d, size_t bytes, CUstream st) {
  int rc = 0;
  if (!d->fp_sums_free)
    rc = CUDA_CHECK(cu.EventCreate(&d->fp_sums_free, CU_EVENT_DISABLE_TIMING), "cuEventCreate(fingerprint sums)");
  if (!rc && bytes > d->fp_sums_size) {
    size_t size = 64 * 1024;
    while (size < bytes) size *= 2;
    if (d->fp_sums) { /* the old one may still be in use: wait, then free */
      rc = CUDA_CHECK(cu.EventSynchronize(d->fp_sums_free), "cuEventSynchronize(fingerprint sums)");
      if (!rc) rc = CUDA_CHECK(cu.MemFree(d->fp_sums), "cuMemFree(fingerprint sums)");
      if (!rc) d->fp_sums = 0, d->fp_sums_size = 0;
    }
    CUdeviceptr p = 0;
    if (!rc) rc = CUDA_CHECK(cu.MemAlloc(&p, size), "cuMemAlloc(%zu bytes of fingerprint sums)", size);
    if (!rc) d->fp_sums = p, d->fp_sums_size = size;
  }
  /* Another stream's call may still be reading the sums: wait on the device. */
  if (!rc) rc = CUDA_CHECK(cu.StreamWaitEvent(st, d->fp_sums_free, 0), "cuStreamWaitEvent(fingerprint sums)");
  if (!rc) rc = CUDA_CHECK(cu.MemsetD8Async(d->fp_sums, 0, bytes, st), "cuMemsetD8Async(%zu bytes)", bytes);
  return rc;
}

static int cuda_fingerprint(cumem_backend_t *b, uintptr_t va, size_t chunk, size_t n, uint64_t *out,
                            void *stream) {
  int rc = cumem__fingerprint_check_args("cuda", va, chunk, n, out);
  if (rc || n == 0) return rc;
  cuda_backend_t *cb = cuda_self(b);
  cuda_scope_t s = CUDA_SCOPE_INIT;
  CUstream st;
  int device = -1;
  rc = cuda_enter_copy(cb, va, stream, &s, &st);
  if (!rc) rc = cuda_current_device(cb, &device);
  cuda_device_t *d = rc ? NULL : &cb->devices[device];
  if (!rc) rc = cuda_fingerprint_load(cb, d, device);
  size_t nchunks = cumem__fp_chunks(n, chunk), bytes = nchunks * CUMEM_FP_VALUES * sizeof *out;
  size_t chunk_words = cumem__ceil_div(n < chunk ? n : chunk, CUMEM_FP_WORD);
  unsigned per_chunk = rc ? 1 : cuda_fingerprint_blocks(d, nchunks, chunk_words);
  if (!rc && nchunks > 0x7fffffffu / per_chunk)
    rc = CUMEM_FAIL(CUMEM_EINVAL, "fingerprint: %zu chunks of %zu bytes are too many for one launch", nchunks,
                    chunk);
  if (rc) {
    cuda_leave(&s);
    return rc;
  }
  /* The blocks add into zeroed device memory, which is then copied to out. */
  pthread_mutex_lock(&cb->fp_lock);
  rc = cuda_fingerprint_sums(d, bytes, st);
  if (!rc) {
    CUdeviceptr base = (CUdeviceptr)va, sums = d->fp_sums;
    unsigned long long chunk_bytes = chunk, n_bytes = n;
    void *args[] = {&base, &chunk_bytes, &n_bytes, &sums, &per_chunk};
    unsigned grid = (unsigned)(nchunks * per_chunk);
    rc = CUDA_CHECK(cu.LaunchKernel(d->fp_kernel, grid, 1, 1, CUMEM_FP_THREADS, 1, 1, 0, st, args, NULL),
                    "cuLaunchKernel(%s, grid=%u, block=%d, va=0x%jx, n=%zu, chunk=%zu)", CUMEM_FP_KERNEL, grid,
                    CUMEM_FP_THREADS, (uintmax_t)va, n, chunk);
  }
  if (!rc) rc = CUDA_CHECK(cu.MemcpyDtoHAsync(out, d->fp_sums, bytes, st),
                           "cuMemcpyDtoHAsync(fingerprints, %zu bytes)", bytes);
  /* Whatever was queued, the next call waits for it. */
  int rc2 = d->fp_sums_free ? CUDA_CHECK(cu.EventRecord(d->fp_sums_free, st), "cuEventRecord(fingerprint sums)") : 0;
  if (!rc) rc = rc2;
  pthread_mutex_unlock(&cb->fp_lock);
  cuda_leave(&s);
  return rc;
}

static void cuda_counters(cumem_backend_t *b, cumem_backend_counters_t *out) {
  cuda_backend_t *cb = cuda_self(b);
  out->reservations = atomic_load(&cb->reservations);
  out->handles = atomic_load(&cb->handles);
  out->mappings = atomic_load(&cb->mappings);
  out->host_registrations = atomic_load(&cb->host_registrations);
  out->streams = atomic_load(&cb->streams);
  out->events = atomic_load(&cb->events);
}

static void cuda_destroy(cumem_backend_t *b) {
  if (!b) return;
  cuda_backend_t *cb = cuda_self(b);
  cumem_backend_counters_t c;
  cuda_counters(b, &c);
  if (c.reservations || c.handles || c.mappings || c.host_registrations || c.streams ||
      c.events)
    cumem__log("cuda backend destroyed with live objects: %ld reservations, %ld handles, "
               "%ld mappings, %ld host registrations, %ld streams, %ld events",
               c.reservations, c.handles, c.mappings, c.host_registrations, c.streams,
               c.events);
  for (int i = 0; i < cb->count; i++) {
    cuda_device_t *d = &cb->devices[i];
    if (!atomic_load(&d->ready)) continue;
    if (atomic_load(&d->fp_state) == 1 || d->fp_sums_free) { /* they live in the context */
      cuda_scope_t s = CUDA_SCOPE_INIT;
      if (cuda_switch(&s, d->ctx) == 0) {
        if (d->fp_sums_free) (void)cu.EventSynchronize(d->fp_sums_free);
        if (d->fp_sums) (void)cu.MemFree(d->fp_sums);
        if (d->fp_sums_free) (void)cu.EventDestroy(d->fp_sums_free);
        if (atomic_load(&d->fp_state) == 1) (void)cu.ModuleUnload(d->fp_module);
      }
      cuda_leave(&s);
    }
    (void)cu.DevicePrimaryCtxRelease(d->dev);
  }
  pthread_mutex_destroy(&cb->open_lock);
  pthread_mutex_destroy(&cb->fp_lock);
  free(cb->devices);
  free(cb);
}

/* ---- construction ------------------------------------------------------ */

int cumem_backend_cuda(cumem_backend_t **out) {
  if (!out) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_backend_cuda: out is NULL");
  *out = NULL;
  pthread_once(&cu_once, cuda_load);
  if (!cu.ok) return CUMEM_FAIL(CUMEM_ENODRIVER, "%s", cu.why);

  int count = 0;
  CUresult r = cu.DeviceGetCount(&count);
  if (CUDA_CHECK(r, "cuDeviceGetCount(): no usable CUDA device")) return CUMEM_ENODRIVER;
  if (count <= 0)
    return CUMEM_FAIL(CUMEM_ENODRIVER, "the NVIDIA driver reports no CUDA device");
  if (count > CUDA_MAX_DEVICES) {
    cumem__log("%d CUDA devices; using the first %d", count, CUDA_MAX_DEVICES);
    count = CUDA_MAX_DEVICES;
  }

  cuda_backend_t *cb = calloc(1, sizeof *cb);
  cuda_device_t *devices = calloc((size_t)count, sizeof *devices);
  if (!cb || !devices) {
    free(cb);
    free(devices);
    return CUMEM_FAIL(CUMEM_ENOHOST, "cumem_backend_cuda: out of host memory");
  }
  if (pthread_mutex_init(&cb->open_lock, NULL) != 0) {
    free(cb);
    free(devices);
    return CUMEM_FAIL(CUMEM_ENOHOST, "cumem_backend_cuda: pthread_mutex_init failed");
  }
  if (pthread_mutex_init(&cb->fp_lock, NULL) != 0) {
    pthread_mutex_destroy(&cb->open_lock);
    free(cb);
    free(devices);
    return CUMEM_FAIL(CUMEM_ENOHOST, "cumem_backend_cuda: pthread_mutex_init failed");
  }
  cb->count = count;
  cb->devices = devices; /* calloc: every device not ready */

  cumem_backend_t *b = &cb->base;
  b->name = "cuda";
  b->self = cb;
  b->destroy = cuda_destroy;
  b->device_count = cuda_device_count;
  b->device_info = cuda_device_info;
  b->reserve = cuda_reserve;
  b->unreserve = cuda_unreserve;
  b->create = cuda_create;
  b->release = cuda_release;
  b->map = cuda_map;
  b->unmap = cuda_unmap;
  b->set_access = cuda_set_access;
  b->synchronize = cuda_synchronize;
  b->stream_create = cuda_stream_create;
  b->stream_destroy = cuda_stream_destroy;
  b->stream_synchronize = cuda_stream_synchronize;
  b->event_create = cuda_event_create;
  b->event_destroy = cuda_event_destroy;
  b->event_record = cuda_event_record;
  b->event_synchronize = cuda_event_synchronize;
  b->host_register = cuda_host_register;
  b->host_unregister = cuda_host_unregister;
  b->copy_to_host = cuda_copy_to_host;
  b->copy_to_device = cuda_copy_to_device;
  b->memset = cuda_memset;
  b->counters = cuda_counters;
  b->fingerprint = cuda_fingerprint;
  cumem__log("cuda backend: driver %d.%d, %d device(s)", cu.driver_version / 1000,
             cu.driver_version % 1000 / 10, count);
  *out = b;
  return 0;
}
