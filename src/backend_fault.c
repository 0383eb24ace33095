/* The fault backend: wraps another backend and fails chosen calls, the way
 * SQLite's test VFS does, so that tests can prove that every failure returns
 * an error, leaks nothing and loses nothing.
 *
 * stream_destroy and event_destroy are never failed: they cannot fail for a
 * valid object in CUDA, and the core relies on that to leak nothing. */
#include "internal.h"
#include "cumem_testing.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

typedef struct fault {
  cumem_backend_t *inner;
  atomic_long calls;    /* every call since the last arm */
  atomic_long matching; /* calls of the armed operation */
  atomic_long injected;
  atomic_long target;   /* fail the target-th matching call; 0 = off */
  atomic_int persistent;
  atomic_int code;
  char op[32];          /* "" = any operation */
} fault_t;

#define SELF(b) ((fault_t *)(b)->self)
#define INNER(b) (SELF(b)->inner)

static int fault_hit(cumem_backend_t *b, const char *op) {
  fault_t *f = SELF(b);
  atomic_fetch_add(&f->calls, 1);
  long target = atomic_load(&f->target);
  if (target <= 0 || (f->op[0] && strcmp(f->op, op) != 0)) return 0;
  long n = atomic_fetch_add(&f->matching, 1) + 1;
  if (n != target && !(atomic_load(&f->persistent) && n > target)) return 0;
  atomic_fetch_add(&f->injected, 1);
  return CUMEM_FAIL(atomic_load(&f->code), "fault injected into %s (call %ld)", op, n);
}

/* Each wrapper: fail if armed for this call, else forward. */
#define WRAP(op, params, args)                       \
  static int fault_##op params {                     \
    int rc_ = fault_hit(b, #op);                     \
    return rc_ ? rc_ : INNER(b)->op args;            \
  }

WRAP(device_count, (cumem_backend_t *b, int *c), (INNER(b), c))
WRAP(device_info, (cumem_backend_t *b, int d, cumem_device_info_t *i), (INNER(b), d, i))
WRAP(reserve, (cumem_backend_t *b, int d, size_t n, uintptr_t *va), (INNER(b), d, n, va))
WRAP(unreserve, (cumem_backend_t *b, uintptr_t va, size_t n), (INNER(b), va, n))
WRAP(create, (cumem_backend_t *b, int d, size_t n, cumem_handle_t *h), (INNER(b), d, n, h))
WRAP(release, (cumem_backend_t *b, cumem_handle_t h), (INNER(b), h))
WRAP(map, (cumem_backend_t *b, uintptr_t va, size_t n, cumem_handle_t h), (INNER(b), va, n, h))
WRAP(unmap, (cumem_backend_t *b, uintptr_t va, size_t n), (INNER(b), va, n))
WRAP(set_access, (cumem_backend_t *b, uintptr_t va, size_t n, int d, uint64_t p), (INNER(b), va, n, d, p))
WRAP(synchronize, (cumem_backend_t *b, int d), (INNER(b), d))
WRAP(stream_create, (cumem_backend_t *b, int d, void **s), (INNER(b), d, s))
WRAP(stream_synchronize, (cumem_backend_t *b, void *s), (INNER(b), s))
WRAP(event_create, (cumem_backend_t *b, int d, void **e), (INNER(b), d, e))
WRAP(event_record, (cumem_backend_t *b, void *e, void *s), (INNER(b), e, s))
WRAP(event_synchronize, (cumem_backend_t *b, void *e), (INNER(b), e))
WRAP(host_register, (cumem_backend_t *b, void *p, size_t n), (INNER(b), p, n))
WRAP(host_unregister, (cumem_backend_t *b, void *p), (INNER(b), p))
WRAP(copy_to_host, (cumem_backend_t *b, void *d, uintptr_t s, size_t n, void *st), (INNER(b), d, s, n, st))
WRAP(copy_to_device, (cumem_backend_t *b, uintptr_t d, const void *s, size_t n, void *st), (INNER(b), d, s, n, st))
WRAP(memset, (cumem_backend_t *b, uintptr_t d, unsigned char v, size_t n, void *st), (INNER(b), d, v, n, st))

/* Optional in the inner backend: without it, as without support. */
static int fault_fingerprint(cumem_backend_t *b, uintptr_t va, size_t chunk, size_t n, uint64_t *out, void *st) {
  int rc = fault_hit(b, "fingerprint");
  if (rc) return rc;
  if (!INNER(b)->fingerprint) return CUMEM_FAIL(CUMEM_ENOTSUP, "backend %s cannot fingerprint", INNER(b)->name);
  return INNER(b)->fingerprint(INNER(b), va, chunk, n, out, st);
}

static int fault_stream_destroy(cumem_backend_t *b, void *s) { return INNER(b)->stream_destroy(INNER(b), s); }
static int fault_event_destroy(cumem_backend_t *b, void *e) { return INNER(b)->event_destroy(INNER(b), e); }
static void fault_counters(cumem_backend_t *b, cumem_backend_counters_t *out) {
  INNER(b)->counters(INNER(b), out);
}

static void fault_destroy(cumem_backend_t *b) {
  INNER(b)->destroy(INNER(b));
  free(b->self);
  free(b);
}

int cumem_backend_fault(cumem_backend_t **out, cumem_backend_t *inner) {
  if (!out || !inner) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_backend_fault: NULL argument");
  fault_t *f = calloc(1, sizeof *f);
  cumem_backend_t *b = calloc(1, sizeof *b);
  if (!f || !b) {
    free(f);
    free(b);
    return CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory");
  }
  f->inner = inner;
  *b = (cumem_backend_t){
      .name = inner->name, .self = f, .destroy = fault_destroy,
      .device_count = fault_device_count, .device_info = fault_device_info,
      .reserve = fault_reserve, .unreserve = fault_unreserve,
      .create = fault_create, .release = fault_release,
      .map = fault_map, .unmap = fault_unmap, .set_access = fault_set_access,
      .synchronize = fault_synchronize,
      .stream_create = fault_stream_create, .stream_destroy = fault_stream_destroy,
      .stream_synchronize = fault_stream_synchronize,
      .event_create = fault_event_create, .event_destroy = fault_event_destroy,
      .event_record = fault_event_record, .event_synchronize = fault_event_synchronize,
      .host_register = fault_host_register, .host_unregister = fault_host_unregister,
      .copy_to_host = fault_copy_to_host, .copy_to_device = fault_copy_to_device,
      .memset = fault_memset, .counters = fault_counters, .fingerprint = fault_fingerprint,
  };
  *out = b;
  return 0;
}

void cumem_fault_arm(cumem_backend_t *b, long n, const char *op, int code, int persistent) {
  fault_t *f = SELF(b);
  atomic_store(&f->target, 0); /* off while the rest changes */
  snprintf(f->op, sizeof f->op, "%s", op ? op : "");
  atomic_store(&f->code, code ? code : CUMEM_EDRIVER);
  atomic_store(&f->persistent, persistent);
  atomic_store(&f->calls, 0);
  atomic_store(&f->matching, 0);
  atomic_store(&f->injected, 0);
  atomic_store(&f->target, n);
}

long cumem_fault_calls(const cumem_backend_t *b) { return atomic_load(&SELF(b)->calls); }
long cumem_fault_injected(const cumem_backend_t *b) { return atomic_load(&SELF(b)->injected); }
