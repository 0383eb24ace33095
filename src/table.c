/* A hash table of allocations keyed by start address, plus a list in
 * creation order (sleep and wake walk allocations oldest first, so that
 * results are reproducible). */
#include "core.h"

#include <stdlib.h>

static size_t bucket_of(const table_t *t, uintptr_t va) {
  /* Addresses are granularity-aligned: mix the high bits. */
  uint64_t h = (uint64_t)va * 0x9E3779B97F4A7C15ull;
  return (size_t)(h >> 32) & (t->nbuckets - 1);
}

int cumem__table_init(table_t *t) {
  t->nbuckets = 64;
  t->count = 0;
  t->first = t->last = NULL;
  t->buckets = calloc(t->nbuckets, sizeof *t->buckets);
  return t->buckets ? 0 : CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory for the allocation table");
}

void cumem__table_destroy(table_t *t) {
  free(t->buckets);
  t->buckets = NULL;
}

static int grow(table_t *t) {
  size_t n = t->nbuckets * 2;
  alloc_t **b = calloc(n, sizeof *b);
  if (!b) return CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory growing the allocation table");
  free(t->buckets);
  t->buckets = b;
  t->nbuckets = n;
  for (alloc_t *a = t->first; a; a = a->next) {
    size_t i = bucket_of(t, a->va);
    a->hash_next = b[i];
    b[i] = a;
  }
  return 0;
}

int cumem__table_insert(table_t *t, alloc_t *a) {
  if (t->count + 1 > t->nbuckets) {
    int rc = grow(t);
    if (rc) return rc;
  }
  size_t i = bucket_of(t, a->va);
  a->hash_next = t->buckets[i];
  t->buckets[i] = a;
  a->prev = t->last;
  a->next = NULL;
  if (t->last) t->last->next = a; else t->first = a;
  t->last = a;
  t->count++;
  return 0;
}

void cumem__table_remove(table_t *t, alloc_t *a) {
  alloc_t **p = &t->buckets[bucket_of(t, a->va)];
  while (*p && *p != a) p = &(*p)->hash_next;
  if (*p) *p = a->hash_next;
  if (a->prev) a->prev->next = a->next; else t->first = a->next;
  if (a->next) a->next->prev = a->prev; else t->last = a->prev;
  t->count--;
}

alloc_t *cumem__table_find(const table_t *t, uintptr_t va) {
  for (alloc_t *a = t->buckets[bucket_of(t, va)]; a; a = a->hash_next)
    if (a->va == va) return a;
  return NULL;
}

alloc_t *cumem__table_find_containing(const table_t *t, uintptr_t addr) {
  alloc_t *a = cumem__table_find(t, addr);
  if (a) return a;
  for (a = t->first; a; a = a->next)
    if (addr >= a->va && addr - a->va < a->size) return a;
  return NULL;
}
