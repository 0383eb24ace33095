/* Finding the real CUDA functions to forward to.
 *
 * First dlsym(RTLD_NEXT): the next definition after this library in the
 * process's global scope, which is where a runtime linked by the program (or
 * loaded with RTLD_GLOBAL, as PyTorch loads its CUDA libraries) lives.
 *
 * A runtime that came in with dlopen(RTLD_LOCAL), e.g. as a dependency of a
 * Python extension, is not in the global scope, yet its callers still reach
 * this library (the global scope is searched first). For those, every loaded
 * library is asked in turn, in load order, for the symbol; a definition in
 * this library or in another copy of the interposer is skipped (forwarding
 * to one could come back here forever).
 *
 * Nothing is linked against libcudart or libcuda: the real functions are
 * found when first needed, and looked up again while none is found (a
 * runtime may be loaded later). */
#define _GNU_SOURCE
#include "preload.h"

#include <dlfcn.h>
#include <link.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static const char *const fn_names[PRELOAD_NREAL] = {
#define PRELOAD_XX_(name) #name,
    PRELOAD_REAL_FUNCTIONS(PRELOAD_XX_)
#undef PRELOAD_XX_
};

static void *_Atomic real_fn[PRELOAD_NREAL];
static _Atomic int real_how[PRELOAD_NREAL];
static const char *_Atomic real_origin[PRELOAD_NREAL];

const char *cumem__preload_fn_name(enum preload_fn fn) { return fn_names[fn]; }

int cumem__preload_real_how(enum preload_fn fn, const char **origin) {
  if (origin) *origin = atomic_load(&real_origin[fn]);
  return atomic_load(&real_how[fn]);
}

/* The base address of the object that defines `addr` (NULL if none). */
static void *object_base(const void *addr) {
  Dl_info info;
  return dladdr(addr, &info) ? info.dli_fbase : NULL;
}

/* Whether `sym` is defined in a copy of the interposer (this one or another):
 * its own object also defines cumem_preload_begin. */
static int in_an_interposer(void *sym) {
  Dl_info info;
  if (!dladdr(sym, &info) || !info.dli_fname) return 0;
  if (info.dli_fbase == object_base((const void *)cumem_preload_begin)) return 1;
  void *h = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  if (!h) return 0;
  void *marker = dlsym(h, "cumem_preload_begin");
  int yes = marker && object_base(marker) == info.dli_fbase;
  dlclose(h);
  return yes;
}

typedef struct { char **names; size_t n, cap; } name_list_t;

static int collect_name(struct dl_phdr_info *info, size_t size, void *data) {
  (void)size;
  name_list_t *l = data;
  if (!info->dlpi_name || !*info->dlpi_name) return 0; /* the program, the vDSO */
  if (l->n == l->cap) {
    size_t cap = l->cap ? 2 * l->cap : 64;
    char **p = realloc(l->names, cap * sizeof *p);
    if (!p) return 1;
    l->names = p;
    l->cap = cap;
  }
  if ((l->names[l->n] = strdup(info->dlpi_name))) l->n++;
  return 0;
}

/* Ask every loaded library for `name`. The names are collected first: the
 * loader's lock is held during dl_iterate_phdr, and dlopen takes it too. */
static void *search_loaded(const char *name) {
  name_list_t l = {0};
  dl_iterate_phdr(collect_name, &l);
  void *found = NULL;
  for (size_t i = 0; i < l.n; i++) {
    if (!found) {
      void *h = dlopen(l.names[i], RTLD_LAZY | RTLD_NOLOAD);
      if (h) {
        void *sym = dlsym(h, name);
        if (sym && !in_an_interposer(sym)) found = sym;
        dlclose(h);
      }
    }
    free(l.names[i]);
  }
  free(l.names);
  return found;
}

/* The lookup, without a detail when nothing defines it. */
static void *lookup(enum preload_fn fn) {
  void *p = atomic_load_explicit(&real_fn[fn], memory_order_acquire);
  if (p) return p;
  /* Two threads may both look it up; they find the same function. */
  int how = 1;
  p = dlsym(RTLD_NEXT, fn_names[fn]);
  if (!p) {
    how = 2;
    p = search_loaded(fn_names[fn]);
  }
  if (!p) {
    atomic_store(&real_how[fn], -1);
    return NULL;
  }
  Dl_info info;
  atomic_store(&real_origin[fn], dladdr(p, &info) && info.dli_fname ? info.dli_fname : "?");
  atomic_store(&real_how[fn], how);
  atomic_store_explicit(&real_fn[fn], p, memory_order_release);
  return p;
}

void *cumem__preload_real(enum preload_fn fn) {
  void *p = lookup(fn);
  if (!p)
    CUMEM_FAIL(CUMEM_ENODRIVER,
               "cumem preload: no loaded library defines %s (is the CUDA runtime loaded, and "
               "shared? a program built with nvcc's default static runtime cannot be interposed)",
               fn_names[fn]);
  return p;
}

void *cumem__preload_real_optional(enum preload_fn fn) { return lookup(fn); }
