/* The addresses the interposer allocated through cumem: a hash set of
 * pointers (open addressing, linear probing) under a mutex.
 *
 * cudaFree asks this set, not the cumem core, whether a pointer is cumem's:
 * most frees a program makes are of memory cumem never saw, and asking the
 * core would make each of them wait for the core's lock (held for the whole
 * of a sleep or wake) and overwrite the thread's cumem_last_error() with a
 * "not found". Only the interposer's own allocations are freed through it. */
#include "preload.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#define EMPTY ((uintptr_t)0)
#define GONE ((uintptr_t)1) /* a removed entry: probing goes on past it */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static uintptr_t *slots;
static size_t nslots, used; /* used counts live and GONE entries */
static _Atomic size_t live;  /* lets frees skip the lock while it is 0 */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* A fork child may copy the mutex held by a parent thread; it cannot use
 * the parent's CUDA memory anyway (cumem answers CUMEM_EFORKED), but its
 * frees must not hang. */
static void on_fork_child(void) { pthread_mutex_init(&mu, NULL); }
static void install_atfork(void) { pthread_atfork(NULL, NULL, on_fork_child); }

static size_t slot_of(uintptr_t p, size_t n) {
  uint64_t x = (uint64_t)p * 0x9E3779B97F4A7C15ull; /* Fibonacci hashing */
  return (size_t)(x >> 17) & (n - 1);
}

/* Rebuild with room for twice the live entries. Pre: mu held. */
static int grow(void) {
  size_t n = nslots ? nslots : 64;
  while (n < 4 * (atomic_load(&live) + 1)) n *= 2;
  uintptr_t *fresh = calloc(n, sizeof *fresh);
  if (!fresh) return CUMEM_FAIL(CUMEM_ENOHOST, "cumem preload: out of host memory for its address set");
  for (size_t i = 0; i < nslots; i++) {
    if (slots[i] <= GONE) continue;
    size_t j = slot_of(slots[i], n);
    while (fresh[j] != EMPTY) j = (j + 1) & (n - 1);
    fresh[j] = slots[i];
  }
  free(slots);
  slots = fresh;
  nslots = n;
  used = atomic_load(&live);
  return 0;
}

int cumem__preload_owned_add(uintptr_t ptr) {
  pthread_once(&atfork_once, install_atfork);
  pthread_mutex_lock(&mu);
  int rc = 2 * (used + 1) > nslots ? grow() : 0;
  if (!rc) {
    size_t i = slot_of(ptr, nslots);
    while (slots[i] > GONE) i = (i + 1) & (nslots - 1);
    if (slots[i] == EMPTY) used++;
    slots[i] = ptr;
    atomic_fetch_add(&live, 1);
  }
  pthread_mutex_unlock(&mu);
  return rc;
}

int cumem__preload_owned_take(uintptr_t ptr) {
  if (atomic_load(&live) == 0 || ptr <= GONE) return 0;
  pthread_mutex_lock(&mu);
  int found = 0;
  for (size_t i = slot_of(ptr, nslots); slots[i] != EMPTY; i = (i + 1) & (nslots - 1)) {
    if (slots[i] == ptr) {
      slots[i] = GONE;
      atomic_fetch_sub(&live, 1);
      found = 1;
      break;
    }
  }
  pthread_mutex_unlock(&mu);
  return found;
}
