/* A reference model of the public C API, and a driver that plays random
 * operation sequences against it. Shared by tests/test_stress.c (choices from
 * a seeded PRNG) and tests/fuzz/fuzz_api.c (choices decoded from the fuzzer's
 * input bytes), so that both explore the same operation space and check the
 * same invariants:
 *
 *   - content: every byte the model knows (written, restored from a backup,
 *     or zeroed on wake) reads back bit-exact from every awake allocation;
 *   - state: cumem_query agrees with the model (asleep, backed_up, size, tag);
 *   - accounting: cumem_stats per tag, and (when the model sees the whole
 *     instance) cumem_backend_counters and the host backend's free device
 *     memory agree with the model after every operation;
 *   - errors: bad input returns the documented code and changes nothing;
 *   - faults (fault backend): after an injected failure the state is one the
 *     header documents, nothing is leaked, and a later successful wake
 *     restores every offloaded allocation bit-exact.
 *
 * After an injected failure some figures are not determined by the contract
 * (how far a sleep got, which backup segments were registered); the model
 * then holds a range [lo, hi] for them, and the next successful operation on
 * the allocation makes it exact again.
 *
 * Header-only (static functions), C11. A violation calls model_fail(), which
 * prints the last operations and marks the model failed; the driver stops. */
#ifndef CUMEM_API_MODEL_H
#define CUMEM_API_MODEL_H

#include "cumem.h"
#include "cumem_backend.h"
#include "cumem_testing.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- choices ------------------------------------------------------------- */

/* Where the driver's decisions come from: a PRNG (stress) or input bytes
 * (fuzzer). pick(n) consumes 1, 2 or 4 bytes depending on n, in both modes,
 * so a PRNG run can be recorded as bytes and replayed as a fuzz input. */
typedef struct src {
  int bytes_mode;
  uint64_t rng;          /* PRNG state */
  const uint8_t *data;   /* bytes mode */
  size_t size, pos;
  int done;              /* input exhausted (bytes mode) */
  uint8_t *rec;          /* recording of every choice, when enabled */
  size_t rec_n, rec_cap;
} src_t;

static inline uint64_t src_splitmix(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static inline void src_init_rng(src_t *s, uint64_t seed, int record) {
  memset(s, 0, sizeof *s);
  s->rng = seed;
  if (record) {
    s->rec_cap = 1 << 16;
    s->rec = malloc(s->rec_cap);
  }
}

static inline void src_init_bytes(src_t *s, const uint8_t *data, size_t size) {
  memset(s, 0, sizeof *s);
  s->bytes_mode = 1;
  s->data = data;
  s->size = size;
}

static inline void src_free(src_t *s) { free(s->rec); s->rec = NULL; }

/* A value in [0, n). */
static inline uint32_t pick(src_t *s, uint32_t n) {
  if (n <= 1) return 0;
  int nb = n <= 256 ? 1 : n <= 65536 ? 2 : 4;
  uint32_t v = 0;
  if (s->bytes_mode) {
    if (s->done || s->pos + (size_t)nb > s->size) {
      s->done = 1;
      return 0;
    }
    for (int i = 0; i < nb; i++) v = v << 8 | s->data[s->pos++];
    v %= n;
  } else {
    v = (uint32_t)(src_splitmix(&s->rng) % n);
  }
  if (s->rec) {
    if (s->rec_n + 4 > s->rec_cap) {
      uint8_t *r = realloc(s->rec, s->rec_cap * 2);
      if (!r) { free(s->rec); s->rec = NULL; return v; }
      s->rec = r;
      s->rec_cap *= 2;
    }
    for (int i = nb - 1; i >= 0; i--) s->rec[s->rec_n++] = (uint8_t)(v >> (8 * i));
  }
  return v;
}

static inline int chance(src_t *s, unsigned percent) { return pick(s, 100) < percent; }

/* ---- the model ------------------------------------------------------------ */

#define M_TAGS 4         /* tags a model owns */
#define M_MAX_ALLOCS 48
#define M_LOG 48
#define M_STALE 8

/* Physical memory of an allocation, as far as the model knows. */
enum { PHYS_NONE, PHYS_ALL, PHYS_UNKNOWN };

typedef struct m_alloc {
  void *ptr;
  size_t size, requested;
  int device, tag;
  int awake;        /* content accessible: query must say asleep == 0 */
  int backed;       /* the backup holds the content (query's backed_up) */
  int phys;         /* PHYS_*: what the backend holds for it */
  int held;         /* host backup held: 0, 1, or -1 unknown */
  int zombie;       /* a free failed: only a free (retry) may follow */
  unsigned char *shadow, *defined; /* expected bytes; which are known */
} m_alloc_t;

typedef struct model {
  const char *name;
  cumem_t *cm;
  cumem_backend_t *fault; /* faults are injected when set (single thread) */
  src_t *src;
  cumem_options_t opts;
  size_t g, max_granules;
  int ndev;         /* devices the model uses (at most 2) */
  int ndev_real;    /* devices the instance has: the first invalid ordinal */
  int whole;        /* this model sees every allocation of cm: counters exact */
  int host;         /* host backend: device memory exact, ENOMEM predictable */
  size_t capacity;  /* per device, host backend */
  char tags[M_TAGS][24];
  int known[M_TAGS];   /* the tag has been used by a successful allocation */
  char unknown_tag[24];/* never used: naming it is CUMEM_ENOTAG */
  int cur;             /* index of this thread's current tag */
  m_alloc_t a[M_MAX_ALLOCS];
  int n;
  void *stale[M_STALE]; /* freed pointers, for double frees */
  int nstale;
  /* What failed allocations could not undo (their undo failed too): the
   * header allows it to stay until a retry, which the next allocation makes.
   * Upper bounds of reservations, chunks, bytes per device. */
  size_t limbo_res, limbo_chunks, limbo_bytes[2];
  long step, faults_injected, faults_failed;
  char log[M_LOG][200];
  long nlog;
  int failed;
} model_t;

static inline void mlog(model_t *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void mlog(model_t *m, const char *fmt, ...) {
  char *line = m->log[m->nlog++ % M_LOG];
  int k = snprintf(line, 200, "#%ld ", m->step);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line + k, (size_t)(200 - k), fmt, ap);
  va_end(ap);
}

static inline void model_fail(model_t *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void model_fail(model_t *m, const char *fmt, ...) {
  if (m->failed) return;
  m->failed = 1;
  fprintf(stderr, "  MODEL VIOLATION [%s] at step %ld: ", m->name, m->step);
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n    cumem_last_error: %s\n    last operations (oldest first):\n", cumem_last_error());
  long first = m->nlog > M_LOG ? m->nlog - M_LOG : 0;
  for (long i = first; i < m->nlog; i++) fprintf(stderr, "      %s\n", m->log[i % M_LOG]);
}

#define MCHECK(m, cond, ...)               \
  do {                                     \
    if (!(cond)) {                         \
      model_fail((m), __VA_ARGS__);        \
      return;                              \
    }                                      \
  } while (0)

/* ---- allocation geometry (mirrors what the header promises) -------------- */

static inline size_t m_chunks_of(const model_t *m, size_t size) {
  size_t chunk = size;
  if (m->opts.chunk_size && m->opts.chunk_size < size) chunk = (m->opts.chunk_size + m->g - 1) / m->g * m->g;
  return (size + chunk - 1) / chunk;
}

static inline size_t m_nchunks(const model_t *m, const m_alloc_t *a) { return m_chunks_of(m, a->size); }

static inline size_t m_nseg(const model_t *m, const m_alloc_t *a) {
  return (a->size + m->opts.copy_chunk - 1) / m->opts.copy_chunk;
}

/* ---- expected figures, as ranges ------------------------------------------ */

typedef struct range { size_t lo, hi; } range_t;
static inline void r_add(range_t *r, size_t lo, size_t hi) { r->lo += lo; r->hi += hi; }
static inline int r_has(range_t r, size_t v) { return v >= r.lo && v <= r.hi; }

typedef struct totals {
  size_t allocations, bytes_allocated;
  range_t mapped, backed, held;                     /* bytes */
  range_t reservations, handles, mappings, regs;    /* backend objects */
  range_t used[64];                                 /* device memory */
} totals_t;

/* Add the model's allocations (of tag `tag`, or all when tag < 0; then
 * also what failed allocations left for a retry). */
static inline void m_totals(const model_t *m, int tag, totals_t *t) {
  if (tag < 0) {
    r_add(&t->reservations, 0, m->limbo_res);
    r_add(&t->handles, 0, m->limbo_chunks);
    r_add(&t->mappings, 0, m->limbo_chunks);
    for (int d = 0; d < 2; d++) r_add(&t->used[d], 0, m->limbo_bytes[d]);
  }
  for (int i = 0; i < m->n; i++) {
    const m_alloc_t *a = &m->a[i];
    if (tag >= 0 && a->tag != tag) continue;
    size_t nc = m_nchunks(m, a), ns = m_nseg(m, a), sz = a->size;
    t->allocations++;
    t->bytes_allocated += sz;
    if (a->zombie) { /* half freed: anything between nothing and everything */
      r_add(&t->mapped, 0, sz);
      r_add(&t->backed, 0, sz);
      r_add(&t->held, 0, sz);
      r_add(&t->reservations, 0, 1);
      r_add(&t->handles, 0, nc);
      r_add(&t->mappings, 0, nc);
      r_add(&t->regs, 0, ns);
      r_add(&t->used[a->device], 0, sz);
      continue;
    }
    r_add(&t->reservations, 1, 1);
    if (a->phys == PHYS_ALL) {
      r_add(&t->mapped, sz, sz);
      r_add(&t->handles, nc, nc);
      r_add(&t->mappings, nc, nc);
      r_add(&t->used[a->device], sz, sz);
    } else if (a->phys == PHYS_UNKNOWN) {
      /* Part released: at least one chunk is not READY. */
      r_add(&t->mapped, 0, sz);
      r_add(&t->handles, 0, nc);
      r_add(&t->mappings, 0, nc);
      r_add(&t->used[a->device], 0, sz);
    }
    if (a->backed) r_add(&t->backed, sz, sz);
    if (a->held == 1) {
      r_add(&t->held, sz, sz);
      r_add(&t->regs, ns, ns);
    } else if (a->held < 0) {
      r_add(&t->held, 0, sz);
      r_add(&t->regs, 0, ns);
    }
  }
}

/* ---- checks ---------------------------------------------------------------- */

static inline int m_find_tag(const model_t *m, const char *name) {
  for (int t = 0; t < M_TAGS; t++)
    if (strcmp(m->tags[t], name) == 0) return t;
  return -1;
}

/* Read the whole allocation and compare every byte the model knows. */
static inline void m_check_content(model_t *m, m_alloc_t *a) {
  if (!a->awake || a->zombie) return;
  size_t nknown = 0;
  for (size_t i = 0; i < a->size; i++) nknown += a->defined[i];
  if (!nknown) return;
  unsigned char *buf = malloc(a->size);
  MCHECK(m, buf, "out of host memory");
  int rc = cumem_copy_to_host(m->cm, buf, a->ptr, a->size);
  if (rc) {
    free(buf);
    MCHECK(m, 0, "reading awake allocation %p (%zu bytes) failed: %d", a->ptr, a->size, rc);
  }
  size_t bad = a->size;
  if (nknown == a->size) {
    if (memcmp(buf, a->shadow, a->size) != 0)
      for (bad = 0; buf[bad] == a->shadow[bad]; bad++) {}
  } else {
    for (size_t i = 0; i < a->size && bad == a->size; i++)
      if (a->defined[i] && buf[i] != a->shadow[i]) bad = i;
  }
  unsigned got = bad < a->size ? buf[bad] : 0;
  free(buf);
  MCHECK(m, bad == a->size, "content of %p (tag %s, %zu bytes) differs at offset %zu: read %#x, expected %#x",
         a->ptr, m->tags[a->tag], a->size, bad, got, a->shadow[bad]);
}

static inline void m_check_query(model_t *m, m_alloc_t *a, size_t inner) {
  cumem_alloc_info_t info;
  int rc = cumem_query(m->cm, (char *)a->ptr + inner % a->size, &info);
  MCHECK(m, rc == 0, "query(%p + %zu) failed: %d", a->ptr, inner % a->size, rc);
  MCHECK(m, info.ptr == a->ptr && info.size == a->size && info.requested == a->requested &&
                info.device == a->device && strcmp(info.tag, m->tags[a->tag]) == 0,
         "query(%p) describes another allocation (ptr %p size %zu tag %s)", a->ptr, info.ptr, info.size, info.tag);
  if (a->zombie) return;
  MCHECK(m, info.asleep == !a->awake, "query(%p): asleep=%d, model says %s (backed_up=%d)", a->ptr, info.asleep,
         a->awake ? "awake" : "asleep", info.backed_up);
  MCHECK(m, info.backed_up == a->backed, "query(%p): backed_up=%d, model says %d", a->ptr, info.backed_up,
         a->backed);
}

static inline void m_check_totals(model_t *m, const cumem_stats_t *s, const totals_t *t, const char *what) {
  MCHECK(m, s->allocations == t->allocations && s->bytes_allocated == t->bytes_allocated,
         "stats(%s): %zu allocations / %zu bytes, model %zu / %zu", what, s->allocations, s->bytes_allocated,
         t->allocations, t->bytes_allocated);
  MCHECK(m, r_has(t->mapped, s->bytes_mapped), "stats(%s): bytes_mapped %zu, model [%zu, %zu]", what,
         s->bytes_mapped, t->mapped.lo, t->mapped.hi);
  MCHECK(m, s->bytes_asleep == s->bytes_allocated - s->bytes_mapped, "stats(%s): asleep + mapped != allocated",
         what);
  MCHECK(m, r_has(t->backed, s->bytes_backed_up), "stats(%s): bytes_backed_up %zu, model [%zu, %zu]", what,
         s->bytes_backed_up, t->backed.lo, t->backed.hi);
  MCHECK(m, r_has(t->held, s->bytes_host_held), "stats(%s): bytes_host_held %zu, model [%zu, %zu]", what,
         s->bytes_host_held, t->held.lo, t->held.hi);
}

/* Backend objects and device memory for the models that, together, own every
 * allocation of cm. */
static inline void m_check_world(model_t *report, model_t **ms, int nm) {
  totals_t t;
  memset(&t, 0, sizeof t);
  for (int i = 0; i < nm; i++) m_totals(ms[i], -1, &t);
  cumem_backend_counters_t c;
  MCHECK(report, cumem_backend_counters(report->cm, &c) == 0, "backend_counters failed");
  MCHECK(report, c.streams == 0 && c.events == 0, "%ld streams / %ld events left alive between calls", c.streams,
         c.events);
  MCHECK(report, r_has(t.reservations, (size_t)c.reservations), "%ld reservations alive, model [%zu, %zu]",
         c.reservations, t.reservations.lo, t.reservations.hi);
  MCHECK(report, r_has(t.handles, (size_t)c.handles) && r_has(t.mappings, (size_t)c.mappings) &&
                     c.mappings <= c.handles,
         "%ld handles / %ld mappings alive, model [%zu, %zu] / [%zu, %zu]", c.handles, c.mappings, t.handles.lo,
         t.handles.hi, t.mappings.lo, t.mappings.hi);
  MCHECK(report, r_has(t.regs, (size_t)c.host_registrations), "%ld host registrations alive, model [%zu, %zu]",
         c.host_registrations, t.regs.lo, t.regs.hi);
  cumem_stats_t s;
  MCHECK(report, cumem_stats(report->cm, NULL, &s) == 0, "stats(NULL) failed");
  m_check_totals(report, &s, &t, "all");
  if (!report->host) return;
  for (int d = 0; d < report->ndev; d++) {
    cumem_device_info_t info;
    MCHECK(report, cumem_device_info(report->cm, d, &info) == 0, "device_info(%d) failed", d);
    size_t used = info.total_bytes - info.free_bytes;
    MCHECK(report, r_has(t.used[d], used), "device %d: %zu bytes in use, model [%zu, %zu]", d, used,
           t.used[d].lo, t.used[d].hi);
  }
}

/* Everything this model can see, after every step. */
static inline void model_check(model_t *m) {
  for (int i = 0; i < m->n && !m->failed; i++) {
    m_check_query(m, &m->a[i], (size_t)m->step * 4099);
    m_check_content(m, &m->a[i]);
  }
  for (int t = 0; t < M_TAGS && !m->failed; t++) {
    cumem_stats_t s;
    int rc = cumem_stats(m->cm, m->tags[t], &s);
    if (!m->known[t]) {
      MCHECK(m, rc == CUMEM_ENOTAG, "stats(%s) of a tag never used returned %d", m->tags[t], rc);
      continue;
    }
    MCHECK(m, rc == 0, "stats(%s) failed: %d", m->tags[t], rc);
    totals_t tt;
    memset(&tt, 0, sizeof tt);
    m_totals(m, t, &tt);
    m_check_totals(m, &s, &tt, m->tags[t]);
  }
  if (m->whole && !m->failed) m_check_world(m, &m, 1);
}

/* ---- model updates shared by single-model and multi-model operations ------ */

static inline void m_forget_content(m_alloc_t *a) { memset(a->defined, 0, a->size); }

/* What an allocation's query says now (zombies are not asked). */
static inline int m_observe(model_t *m, m_alloc_t *a, cumem_alloc_info_t *info) {
  int rc = cumem_query(m->cm, a->ptr, info);
  if (rc) model_fail(m, "query(%p) of a live allocation failed: %d", a->ptr, rc);
  return rc == 0;
}

/* Whether a call over tag set `sel` (bit t = tag t) works on a; or, for
 * the one-allocation calls of the seed ABI, whether a is `only`. */
static inline int m_sel(const m_alloc_t *a, unsigned sel, const m_alloc_t *only) {
  return only ? a == only : (sel >> a->tag & 1);
}

/* Sleep succeeded for the allocations of `sel`, offloading those of `off`. */
static inline void m_apply_sleep_ok(model_t *m, unsigned sel, unsigned off, const m_alloc_t *only) {
  for (int i = 0; i < m->n; i++) {
    m_alloc_t *a = &m->a[i];
    if (!m_sel(a, sel, only) || a->zombie) continue;
    if (a->awake) {
      if (off >> a->tag & 1) {
        a->backed = 1;
        a->held = 1;
      } else if (!a->backed) {
        m_forget_content(a);
      }
      a->awake = 0;
      a->phys = PHYS_NONE;
    } else if (a->phys == PHYS_UNKNOWN) {
      a->phys = PHYS_NONE; /* the rest released */
    }
  }
}

/* Sleep failed (injected fault): reconcile with what the contract allows.
 * "On failure the allocations already asleep stay asleep (with their
 * backups) and the rest stay awake" and "an allocation is released only
 * after its backup is complete". */
static inline void m_apply_sleep_failed(model_t *m, unsigned sel, unsigned off, const m_alloc_t *only) {
  for (int i = 0; i < m->n && !m->failed; i++) {
    m_alloc_t *a = &m->a[i];
    if (!m_sel(a, sel, only) || a->zombie) continue;
    cumem_alloc_info_t info;
    if (!m_observe(m, a, &info)) return;
    if (a->awake) {
      if (info.asleep) {
        MCHECK(m, !(off >> a->tag & 1) || info.backed_up,
               "failed sleep released offloaded %p (tag %s) without a backup", a->ptr, m->tags[a->tag]);
        MCHECK(m, (off >> a->tag & 1) || !info.backed_up, "failed sleep backed up discarded %p", a->ptr);
        a->backed = info.backed_up;
        if (!a->backed) m_forget_content(a);
        a->awake = 0;
        a->phys = PHYS_UNKNOWN;
        if (a->held != 1) a->held = -1;
      } else {
        MCHECK(m, !info.backed_up,
               "failed sleep left %p (tag %s) reported awake (writable) but backed_up=1: a write now would be "
               "lost by the next sleep/wake",
               a->ptr, m->tags[a->tag]);
        if (a->held != 1) a->held = -1; /* its backup buffer may be mapped */
      }
    } else {
      MCHECK(m, info.asleep && info.backed_up == a->backed, "failed sleep changed asleep %p: asleep=%d backed=%d",
             a->ptr, info.asleep, info.backed_up);
      if (a->phys == PHYS_UNKNOWN && a->held != 1) a->held = -1;
    }
  }
}

/* Which allocations a wake of `sel` works on: those not awake. */
static inline int m_wake_candidate(const m_alloc_t *a, unsigned sel, const m_alloc_t *only) {
  return m_sel(a, sel, only) && !a->zombie && !a->awake;
}

static inline void m_apply_wake_ok(model_t *m, unsigned sel, int swallowed, const m_alloc_t *only) {
  for (int i = 0; i < m->n; i++) {
    m_alloc_t *a = &m->a[i];
    if (!m_wake_candidate(a, sel, only)) continue;
    if (!a->backed) {
      if (m->opts.zero_on_wake) {
        memset(a->shadow, 0, a->size);
        memset(a->defined, 1, a->size);
      } else {
        m_forget_content(a);
      }
    }
    a->awake = 1;
    a->backed = 0;
    a->phys = PHYS_ALL;
    if (!m->opts.retain_backup) a->held = swallowed ? -1 : 0;
  }
}

/* Wake failed: "everything this call mapped is released again, every backup
 * is kept, and a later wake restores all of it". With a one-shot fault the
 * undo itself succeeds, so the state is exactly the one before. */
static inline void m_apply_wake_failed(model_t *m, unsigned sel, int persistent, const m_alloc_t *only) {
  for (int i = 0; i < m->n && !m->failed; i++) {
    m_alloc_t *a = &m->a[i];
    if (!m_wake_candidate(a, sel, only)) continue;
    cumem_alloc_info_t info;
    if (!m_observe(m, a, &info)) return;
    MCHECK(m, info.backed_up == a->backed, "failed wake changed backed_up of %p to %d", a->ptr, info.backed_up);
    if (info.asleep) {
      if (persistent) a->phys = PHYS_UNKNOWN; /* the undo may have failed too */
      continue;
    }
    /* Still mapped: only possible when the undo failed too. */
    MCHECK(m, persistent, "failed wake left %p mapped although its undo could not fail", a->ptr);
    MCHECK(m, !a->backed,
           "failed wake left %p reported awake (readable, writable) with backed_up=1: its content is not "
           "restored yet",
           a->ptr);
    m_forget_content(a); /* discarded content: whatever the new memory holds */
    a->awake = 1;
    a->phys = PHYS_ALL;
  }
}

/* ---- the driver's operations ------------------------------------------------ */

static inline void fill_bytes(unsigned char *p, size_t n, uint32_t seed) {
  uint64_t x = seed * 0x2545F4914F6CDD1Dull + 1;
  for (size_t i = 0; i < n; i++) {
    if (i % 8 == 0) src_splitmix(&x);
    p[i] = (unsigned char)(x >> (8 * (i % 8)));
  }
}

/* A tag set as bits, or "all" (NULL list) when allowed. unknown: add the
 * never-used tag. Returns the NULL-terminated list (NULL = all). */
static inline const char *const *m_tag_list(model_t *m, unsigned bits, int all, int unknown, const char **buf) {
  if (all) return NULL;
  int k = 0;
  for (int t = 0; t < M_TAGS; t++)
    if (bits >> t & 1) buf[k++] = m->tags[t];
  if (unknown) buf[k++] = m->unknown_tag;
  buf[k] = NULL;
  return buf;
}

/* CUMEM_ENOTAG when a listed tag was never used. */
static inline int m_tags_known(const model_t *m, unsigned bits, int unknown) {
  if (unknown) return 0;
  for (int t = 0; t < M_TAGS; t++)
    if ((bits >> t & 1) && !m->known[t]) return 0;
  return 1;
}

static inline void m_fmt_bits(const model_t *m, unsigned bits, int all, int unknown, char *out, size_t cap) {
  if (all) { snprintf(out, cap, "ALL"); return; }
  size_t k = 0;
  out[0] = 0;
  for (int t = 0; t < M_TAGS && k < cap; t++)
    if (bits >> t & 1) k += (size_t)snprintf(out + k, cap - k, "%s%s", k ? "," : "", m->tags[t]);
  if (unknown && k < cap) snprintf(out + k, cap - k, "%s%s", k ? "," : "", m->unknown_tag);
}

/* Free device memory per device, as a range (host backend). */
static inline range_t m_free_range(model_t *m, int device) {
  totals_t t;
  memset(&t, 0, sizeof t);
  m_totals(m, -1, &t);
  size_t hi = t.used[device].hi, lo = t.used[device].lo;
  range_t r = {hi > m->capacity ? 0 : m->capacity - hi, lo > m->capacity ? 0 : m->capacity - lo};
  return r;
}

static inline int m_pick_alloc(model_t *m, int awake_only) {
  if (!m->n) return -1;
  int i = (int)pick(m->src, (uint32_t)m->n);
  if (awake_only && (!m->a[i].awake || m->a[i].zombie)) {
    for (int k = 0; k < m->n; k++) {
      int j = (i + k) % m->n;
      if (m->a[j].awake && !m->a[j].zombie) return j;
    }
    return -1;
  }
  return i;
}

static inline void m_remove(model_t *m, int i) {
  free(m->a[i].shadow);
  free(m->a[i].defined);
  if (m->nstale < M_STALE) m->stale[m->nstale++] = m->a[i].ptr;
  else m->stale[m->step % M_STALE] = m->a[i].ptr;
  m->a[i] = m->a[--m->n];
}

/* p lies inside a live allocation (a freed address can be reused). */
static inline int m_is_live(const model_t *m, const void *p) {
  for (int i = 0; i < m->n; i++)
    if ((const char *)p >= (const char *)m->a[i].ptr && (const char *)p < (const char *)m->a[i].ptr + m->a[i].size)
      return 1;
  return 0;
}

/* Faults: planned with the other choices of an operation (so the choice
 * stream does not depend on what the call does), armed right before the
 * call and disarmed right after, so that the checks never meet a fault. */
typedef struct fault_plan {
  int armed, persistent, code, op;
  long k, injected;
} fault_plan_t;

static const char *const m_fault_ops[] = {
    NULL, "reserve", "unreserve", "create", "release", "map", "unmap", "set_access",
    "synchronize", "stream_create", "stream_synchronize", "event_create", "event_record",
    "event_synchronize", "host_register", "host_unregister", "copy_to_host", "copy_to_device", "memset",
};
#define M_NFAULT_OPS (sizeof m_fault_ops / sizeof m_fault_ops[0])

static inline void m_plan_fault(model_t *m, fault_plan_t *f) {
  memset(f, 0, sizeof *f);
  if (!m->fault) return;
  static const int codes[] = {CUMEM_EDRIVER, CUMEM_ENOMEM, CUMEM_ENOHOST};
  f->armed = chance(m->src, 15);
  f->k = 1 + (long)pick(m->src, 10);
  /* 0 = "any operation": fail the k-th backend call of whatever kind */
  f->op = chance(m->src, 40) ? 0 : (int)pick(m->src, M_NFAULT_OPS);
  f->code = codes[pick(m->src, 3)];
  f->persistent = chance(m->src, 20);
  if (!f->armed) f->persistent = 0;
}

static inline void m_arm(model_t *m, fault_plan_t *f) {
  if (!f->armed) return;
  mlog(m, "  arm fault: call %ld of %s, code %d%s", f->k, m_fault_ops[f->op] ? m_fault_ops[f->op] : "any",
       f->code, f->persistent ? ", persistent" : "");
  cumem_fault_arm(m->fault, f->k, m_fault_ops[f->op], f->code, f->persistent);
}

static inline void m_disarm(model_t *m, fault_plan_t *f) {
  if (!f->armed) return;
  f->injected = cumem_fault_injected(m->fault);
  cumem_fault_arm(m->fault, 0, NULL, 0, 0);
  if (f->injected) m->faults_injected++;
}

static inline const char *m_injected(const fault_plan_t *f) { return f->injected ? " [fault injected]" : ""; }

/* Snapshot of what a failed call must not change: everything when the
 * model sees the whole instance; else the figures of its own tags (other
 * threads change the rest meanwhile). */
typedef struct snapshot {
  cumem_stats_t stats, tag_stats[M_TAGS];
  cumem_backend_counters_t counters;
  size_t ntags;
} snapshot_t;

static inline void m_snapshot(model_t *m, snapshot_t *s) {
  memset(s, 0, sizeof *s);
  for (int t = 0; t < M_TAGS; t++)
    if (m->known[t]) cumem_stats(m->cm, m->tags[t], &s->tag_stats[t]);
  if (!m->whole) return;
  cumem_stats(m->cm, NULL, &s->stats);
  cumem_backend_counters(m->cm, &s->counters);
  cumem_tags(m->cm, NULL, 0, &s->ntags);
}

/* Same figures and tags; counters too unless `objects` is 0. */
static inline int m_same_as(model_t *m, const snapshot_t *before, int objects) {
  snapshot_t now;
  m_snapshot(m, &now);
  return memcmp(&now.stats, &before->stats, sizeof now.stats) == 0 &&
         memcmp(now.tag_stats, before->tag_stats, sizeof now.tag_stats) == 0 && now.ntags == before->ntags &&
         (!objects || memcmp(&now.counters, &before->counters, sizeof now.counters) == 0);
}

static inline int m_same(model_t *m, const snapshot_t *before) { return m_same_as(m, before, 1); }

/* -- alloc -- */
static inline void op_alloc(model_t *m) {
  src_t *s = m->src;
  int tag_mode = (int)pick(s, 10); /* 0..5, 9: a named tag; 6..7: the current tag; 8: a bad tag */
  int t = (int)pick(s, M_TAGS);
  int device = (int)pick(s, (uint32_t)m->ndev);
  uint64_t mask = pick(s, 1u << m->ndev);
  size_t granules = 1 + pick(s, (uint32_t)m->max_granules);
  size_t size = granules * m->g - pick(s, (uint32_t)m->g);
  int weird = (int)pick(s, 40); /* 0..4: one invalid argument */
  int fill = chance(s, 70);
  uint32_t seed = pick(s, 1u << 16);
  fault_plan_t f;
  m_plan_fault(m, &f);
  if (s->done || m->n == M_MAX_ALLOCS) return;

  cumem_device_info_t info;
  if (cumem_device_info(m->cm, device, &info)) { model_fail(m, "device_info(%d) failed", device); return; }
  const char *tag = m->tags[t];
  int tag_i = t;
  char longtag[CUMEM_TAG_MAX + 2];
  memset(longtag, 'x', sizeof longtag - 1);
  longtag[sizeof longtag - 1] = 0;
  if (tag_mode == 6 || tag_mode == 7) { tag = NULL; tag_i = m->cur; }
  if (tag_mode == 8) tag = weird % 2 ? "" : longtag;
  if (weird == 0) size = 0;
  else if (weird == 1) size = info.total_bytes + 1;
  else if (weird == 2) size = SIZE_MAX;
  else if (weird == 3) device = m->ndev_real;
  else if (weird == 4 && m->ndev_real < 64) mask |= (uint64_t)1 << m->ndev_real;
  /* The order in which cumem_alloc_ex validates: size, device, tag, peers,
   * then the size against the device. */
  int expect = size == 0 ? CUMEM_EINVAL
             : weird == 3 ? CUMEM_ENODEV
             : tag_mode == 8 ? CUMEM_EINVAL
             : weird == 4 && m->ndev_real < 64 ? CUMEM_ENODEV
             : weird == 1 || weird == 2 ? CUMEM_E2BIG : 0;
  size_t rounded = expect ? 0 : (size + m->g - 1) / m->g * m->g;
  int maybe_enomem = 0;
  if (!expect && m->host && m->whole) {
    range_t fr = m_free_range(m, device);
    if (rounded > fr.hi) expect = CUMEM_ENOMEM;
    else if (rounded > fr.lo) maybe_enomem = 1;
  }
  snapshot_t before;
  m_snapshot(m, &before);
  void *p = (void *)1;
  m_arm(m, &f);
  int rc = cumem_alloc_ex(m->cm, &p, size, device, tag, mask);
  m_disarm(m, &f);
  mlog(m, "alloc(%zu, dev %d, tag %s, peers %#llx) -> %d %p%s", size, device, tag ? tag : "(current)",
       (unsigned long long)mask, rc, p, m_injected(&f));
  if (rc) {
    MCHECK(m, p == NULL, "failed alloc left *out = %p", p);
    if (f.injected) m->faults_failed++;
    else MCHECK(m, rc == expect || (maybe_enomem && rc == CUMEM_ENOMEM), "alloc returned %d, expected %d", rc,
                expect);
    if (f.injected && f.persistent) {
      /* The undo failed too: what it could not release may stay until a
       * retry; but the allocation must not show in figures or tags. */
      MCHECK(m, m_same_as(m, &before, 0), "failed alloc (persistent fault) changed stats or tags");
      m->limbo_res++;
      m->limbo_chunks += m_chunks_of(m, rounded);
      if (device < 2) m->limbo_bytes[device] += rounded;
      return;
    }
    /* "A failed call changes nothing": no figure, no backend object, no tag.
     * (Except that it may have retried what earlier failures left.) */
    if (m->limbo_res) {
      MCHECK(m, m_same_as(m, &before, 0), "failed alloc (rc %d) changed stats or tags", rc);
    } else {
      MCHECK(m, m_same(m, &before), "failed alloc (rc %d) changed stats, backend objects or tags", rc);
    }
    return;
  }
  MCHECK(m, !expect, "alloc succeeded, expected %d", expect);
  /* The one quiet failure allowed: retrying what failed allocations left
   * (the fault hit the retry; it stays for the next one). */
  MCHECK(m, !f.injected || m->limbo_res, "alloc succeeded although an injected fault hit one of its calls");
  if (!f.injected) m->limbo_res = m->limbo_chunks = m->limbo_bytes[0] = m->limbo_bytes[1] = 0;
  MCHECK(m, p && (uintptr_t)p % m->g == 0, "alloc returned a misaligned %p", p);
  for (int i = 0; i < m->n; i++)
    MCHECK(m, (char *)p + rounded <= (char *)m->a[i].ptr || (char *)m->a[i].ptr + m->a[i].size <= (char *)p,
           "new allocation %p overlaps %p%s", p, m->a[i].ptr, m->a[i].zombie ? " (half freed)" : "");
  m_alloc_t *a = &m->a[m->n];
  memset(a, 0, sizeof *a);
  a->ptr = p;
  a->size = rounded;
  a->requested = size;
  a->device = device;
  a->tag = tag_i;
  a->awake = 1;
  a->phys = PHYS_ALL;
  a->shadow = calloc(rounded, 1);
  a->defined = calloc(rounded, 1);
  MCHECK(m, a->shadow && a->defined, "out of host memory");
  m->n++;
  m->known[tag_i] = 1;
  if (fill) { /* most allocations get their content right away */
    fill_bytes(a->shadow, a->size, seed);
    rc = cumem_copy_to_device(m->cm, a->ptr, a->shadow, a->size);
    MCHECK(m, rc == 0, "filling new allocation %p failed: %d", p, rc);
    memset(a->defined, 1, a->size);
  }
}

/* -- free -- */
static inline void op_free(model_t *m) {
  src_t *s = m->src;
  int i = m_pick_alloc(m, 0);
  int on_stream = chance(s, 30);
  int retry = chance(s, 70); /* a half-freed allocation is retried first, usually */
  fault_plan_t f;
  m_plan_fault(m, &f);
  if (s->done || i < 0) return;
  for (int k = 0; retry && k < m->n; k++)
    if (m->a[k].zombie) { i = k; break; }
  m_alloc_t *a = &m->a[i];
  m_arm(m, &f);
  int rc = on_stream ? cumem_free_on_stream(m->cm, a->ptr, NULL) : cumem_free(m->cm, a->ptr);
  m_disarm(m, &f);
  mlog(m, "free%s(%p tag %s%s) -> %d%s", on_stream ? "_on_stream" : "", a->ptr, m->tags[a->tag],
       a->zombie ? ", half freed" : "", rc, m_injected(&f));
  if (rc == 0) {
    MCHECK(m, !f.injected, "free succeeded although an injected fault hit one of its calls");
    m_remove(m, i);
    return;
  }
  MCHECK(m, f.injected, "free(%p) failed: %d", a->ptr, rc);
  m->faults_failed++;
  /* "still in the table, in a state a retry completes" */
  cumem_alloc_info_t info;
  MCHECK(m, cumem_query(m->cm, a->ptr, &info) == 0, "failed free dropped %p from the table", a->ptr);
  a->zombie = 1;
}

/* -- write / memset / read -- */
static inline void op_data(model_t *m, int kind /* 0 write, 1 memset, 2 read */) {
  static const char *names[] = {"write", "memset", "read"};
  src_t *s = m->src;
  int any = chance(s, 8); /* sometimes an asleep one: must be refused */
  int i = m_pick_alloc(m, !any);
  uint32_t r1 = pick(s, 1u << 30), r2 = pick(s, 1u << 30);
  int small = chance(s, 60), past_end = chance(s, 3);
  uint32_t seed = pick(s, 256);
  fault_plan_t f;
  m_plan_fault(m, &f);
  if (s->done || i < 0 || m->a[i].zombie) return;
  m_alloc_t *a = &m->a[i];
  size_t off = r1 % a->size, len = 1 + r2 % (a->size - off);
  if (small && len > 300) len = 1 + len % 300;
  int expect = a->awake ? 0 : CUMEM_EINVAL;
  if (past_end) { len = a->size - off + 1; expect = CUMEM_EINVAL; }
  unsigned char *buf = malloc(len);
  MCHECK(m, buf, "out of host memory");
  if (kind == 0) fill_bytes(buf, len, seed + (uint32_t)m->step);
  m_arm(m, &f);
  int rc = kind == 0 ? cumem_copy_to_device(m->cm, (char *)a->ptr + off, buf, len)
         : kind == 1 ? cumem_memset(m->cm, (char *)a->ptr + off, (int)seed, len)
                     : cumem_copy_to_host(m->cm, buf, (char *)a->ptr + off, len);
  m_disarm(m, &f);
  if (kind == 1) memset(buf, (int)seed, len);
  mlog(m, "%s(%p + %zu, %zu) -> %d%s", names[kind], a->ptr, off, len, rc, m_injected(&f));
  size_t bad = len;
  if (rc && f.injected && !expect) {
    m->faults_failed++;
    /* The copy may or may not have happened (the failure may come after
     * it): those bytes are unknown now. */
    if (kind != 2) memset(a->defined + off, 0, len);
  } else if (rc == expect && !(rc == 0 && f.injected)) {
    if (!rc && kind != 2) {
      memcpy(a->shadow + off, buf, len);
      memset(a->defined + off, 1, len);
    } else if (!rc) {
      for (size_t k = 0; k < len && bad == len; k++)
        if (a->defined[off + k] && buf[k] != a->shadow[off + k]) bad = k;
    }
  } else {
    free(buf);
    MCHECK(m, 0, "%s returned %d, expected %d%s", names[kind], rc, expect, m_injected(&f));
  }
  unsigned got = bad < len ? buf[bad] : 0;
  free(buf);
  MCHECK(m, bad == len, "read of %p at %zu: %#x, expected %#x", a->ptr, off + bad, got, a->shadow[off + bad]);
}

/* -- sleep / wake / prepare / release over tag sets -- */
enum { SET_SLEEP, SET_WAKE, SET_PREPARE, SET_RELEASE };

/* Device memory a wake of (sel | only) needs beyond what is free:
 * *must: it cannot fit on some device; *maybe: it might not. */
static inline void m_wake_fits(model_t *m, unsigned sel, const m_alloc_t *only, int *must, int *maybe) {
  *must = *maybe = 0;
  if (!m->host || !m->whole) return;
  for (int d = 0; d < m->ndev; d++) {
    range_t need = {0, 0};
    for (int i = 0; i < m->n; i++) {
      m_alloc_t *a = &m->a[i];
      if (a->device == d && m_wake_candidate(a, sel, only)) r_add(&need, a->phys == PHYS_NONE ? a->size : 0, a->size);
    }
    range_t fr = m_free_range(m, d);
    if (need.lo > fr.hi) *must = 1;
    else if (need.hi > fr.lo) *maybe = 1;
  }
}

/* With retention off a successful wake leaves its backups to the background
 * worker to give back: finish that now, inside the caller's fault window
 * (the worker and cumem_drain make the same backend calls in the same
 * order, whichever runs a step), so that the figures are exact again.
 * Returns 1 when giving back failed: a failure the wake swallowed, which
 * leaves those backups held. */
static inline int m_drain_after_wake(model_t *m, int wake, int rc) {
  if (!wake || rc || m->opts.retain_backup) return 0;
  int drc = cumem_drain(m->cm);
  if (drc) mlog(m, "  drain after wake -> %d (%s)", drc, cumem_last_error());
  return drc != 0;
}

static inline void op_tagset(model_t *m, int what) {
  static const char *names[] = {"sleep", "wake", "prepare_backup", "release_backup"};
  src_t *s = m->src;
  unsigned sel = pick(s, 1u << M_TAGS), off = pick(s, 1u << M_TAGS);
  int all = chance(s, 30) && m->whole; /* NULL = every tag: only when we own them all */
  int off_none = chance(s, 25);
  int unknown = chance(s, 4), off_unknown = chance(s, 3);
  fault_plan_t f;
  m_plan_fault(m, &f);
  if (s->done) return;
  const char *b1[M_TAGS + 2], *b2[M_TAGS + 2];
  const char *const *tags = m_tag_list(m, sel, all, unknown, b1);
  const char *const *offl = off_none ? NULL : m_tag_list(m, off, 0, off_unknown, b2);
  if (all) { sel = (1u << M_TAGS) - 1; unknown = 0; }
  if (off_none) { off = 0; off_unknown = 0; }
  int enotag = !m_tags_known(m, all ? 0 : sel, unknown) ||
               (what == SET_SLEEP && !m_tags_known(m, off, off_unknown));
  int must_enomem = 0, maybe_enomem = 0;
  if (!enotag && what == SET_WAKE) m_wake_fits(m, sel, NULL, &must_enomem, &maybe_enomem);
  snapshot_t before;
  m_snapshot(m, &before);
  m_arm(m, &f);
  int rc = what == SET_SLEEP ? cumem_sleep(m->cm, tags, offl)
         : what == SET_WAKE ? cumem_wake(m->cm, tags)
         : what == SET_PREPARE ? cumem_prepare_backup(m->cm, tags)
                               : cumem_release_backup(m->cm, tags);
  int give_back_failed = m_drain_after_wake(m, what == SET_WAKE, rc);
  m_disarm(m, &f);
  char t1[160], t2[160];
  m_fmt_bits(m, sel, all, unknown, t1, sizeof t1);
  m_fmt_bits(m, off, 0, off_unknown, t2, sizeof t2);
  mlog(m, "%s(tags %s%s%s) -> %d%s", names[what], t1, what == SET_SLEEP ? ", offload " : "",
       what == SET_SLEEP ? (off_none ? "NONE" : t2) : "", rc, m_injected(&f));

  if (enotag) {
    MCHECK(m, rc == CUMEM_ENOTAG, "%s naming an unused tag returned %d", names[what], rc);
    MCHECK(m, m_same(m, &before), "%s refused with ENOTAG but changed something", names[what]);
    return;
  }
  if (rc && !f.injected)
    MCHECK(m, rc == CUMEM_ENOMEM && (must_enomem || maybe_enomem), "%s(%s) failed: %d", names[what], t1, rc);
  MCHECK(m, rc || !must_enomem, "wake succeeded although the device cannot hold it");
  if (rc && f.injected) m->faults_failed++;
  /* Swallowed failures: only giving back a backup after a successful wake
   * (retention off) may fail quietly; the backup then stays held. */
  int swallowed = (!rc && f.injected) || give_back_failed;
  MCHECK(m, !swallowed || (what == SET_WAKE && !m->opts.retain_backup),
         "%s succeeded although an injected fault hit one of its calls", names[what]);

  switch (what) {
  case SET_SLEEP:
    if (!rc) m_apply_sleep_ok(m, sel, off, NULL);
    else m_apply_sleep_failed(m, sel, off, NULL);
    break;
  case SET_WAKE:
    if (!rc) {
      m_apply_wake_ok(m, sel, swallowed, NULL);
    } else {
      m_apply_wake_failed(m, sel, f.persistent, NULL);
      /* Out of memory, no fault: undone exactly. */
      if (!f.injected) MCHECK(m, m_same(m, &before), "wake failed with ENOMEM and did not undo everything");
    }
    break;
  case SET_PREPARE:
    for (int i = 0; i < m->n; i++) {
      m_alloc_t *a = &m->a[i];
      /* Prepare works on the allocations that hold device memory. */
      if (!(sel >> a->tag & 1) || a->zombie || a->phys == PHYS_NONE) continue;
      if (rc) a->held = -1;
      else a->held = a->phys == PHYS_ALL || a->held == 1 ? 1 : -1;
    }
    break;
  default:
    for (int i = 0; i < m->n; i++) {
      m_alloc_t *a = &m->a[i];
      /* Release works on every allocation, asleep or not, and keeps the
       * backups that hold content a wake must restore. */
      if (!(sel >> a->tag & 1) || a->zombie || a->backed) continue;
      a->held = rc ? -1 : 0;
    }
  }
}

/* -- the seed ABI: one allocation at a time -- */
static inline void op_one(model_t *m, int wake) {
  const char *name = wake ? "create_map" : "unmap_release";
  src_t *s = m->src;
  int i = m_pick_alloc(m, 0);
  int interior = chance(s, 5);
  fault_plan_t f;
  m_plan_fault(m, &f);
  if (s->done || i < 0 || m->a[i].zombie) return;
  m_alloc_t *a = &m->a[i];
  if (interior) { /* these calls take the start of an allocation only */
    int rc = wake ? cumem_create_map(m->cm, (char *)a->ptr + 1) : cumem_unmap_release(m->cm, (char *)a->ptr + 1);
    mlog(m, "%s(%p + 1) -> %d", name, a->ptr, rc);
    MCHECK(m, rc == CUMEM_EINVAL, "%s on an interior pointer returned %d", name, rc); /* as free */
    return;
  }
  int must_enomem = 0, maybe_enomem = 0;
  if (wake) m_wake_fits(m, 0, a, &must_enomem, &maybe_enomem);
  /* unmap_release skips an allocation with no READY chunk: what a failed
   * sleep left of it then stays. */
  int partial = a->phys == PHYS_UNKNOWN && !a->awake;
  m_arm(m, &f);
  int rc = wake ? cumem_create_map(m->cm, a->ptr) : cumem_unmap_release(m->cm, a->ptr);
  int give_back_failed = m_drain_after_wake(m, wake, rc);
  m_disarm(m, &f);
  mlog(m, "%s(%p tag %s) -> %d%s", name, a->ptr, m->tags[a->tag], rc, m_injected(&f));
  if (rc && !f.injected)
    MCHECK(m, rc == CUMEM_ENOMEM && (must_enomem || maybe_enomem), "%s(%p) failed: %d", name, a->ptr, rc);
  MCHECK(m, rc || !must_enomem, "create_map succeeded although the device cannot hold it");
  if (rc && f.injected) m->faults_failed++;
  int swallowed = (!rc && f.injected) || give_back_failed;
  MCHECK(m, !swallowed || (wake && !m->opts.retain_backup), "%s succeeded despite an injected fault", name);
  if (wake) {
    if (!rc) m_apply_wake_ok(m, 0, swallowed, a);
    else m_apply_wake_failed(m, 0, f.persistent, a);
  } else {
    if (!rc && !partial) m_apply_sleep_ok(m, 0, 0, a);
    else if (rc) m_apply_sleep_failed(m, 0, 0, a);
  }
}

/* -- figures and tags -- */
static inline void op_figures(model_t *m) {
  src_t *s = m->src;
  int what = (int)pick(s, 4);
  uint32_t cap = pick(s, M_TAGS + 3);
  if (s->done) return;
  mlog(m, "figures(%d)", what);
  if (what == 0) {
    const char *names[M_TAGS + 8];
    size_t count = 0;
    MCHECK(m, cumem_tags(m->cm, names, cap, &count) == 0, "cumem_tags failed");
    size_t mine = 0;
    for (int t = 0; t < M_TAGS; t++) mine += (size_t)m->known[t];
    MCHECK(m, m->whole ? count == mine : count >= mine, "cumem_tags: %zu tags, model knows %zu", count, mine);
    for (size_t k = 0; k < count && k < cap; k++) {
      int t = m_find_tag(m, names[k]);
      if (m->whole) MCHECK(m, t >= 0 && m->known[t], "cumem_tags lists \"%s\", unknown to the model", names[k]);
    }
  } else if (what == 1) {
    cumem_stats_t st;
    MCHECK(m, cumem_stats(m->cm, m->unknown_tag, &st) == CUMEM_ENOTAG, "stats of an unused tag");
  } else if (what == 2) {
    int local;
    cumem_alloc_info_t info;
    MCHECK(m, cumem_query(m->cm, &local, &info) == CUMEM_ENOTFOUND, "query of a stack address");
  } else {
    cumem_backend_counters_t c;
    MCHECK(m, cumem_backend_counters(m->cm, &c) == 0, "backend_counters failed");
  }
}

/* -- current tag -- */
static inline void op_set_tag(model_t *m) {
  src_t *s = m->src;
  int t = (int)pick(s, M_TAGS);
  int variant = (int)pick(s, 10);
  if (s->done) return;
  int rc;
  if (variant == 0) {
    rc = cumem_set_current_tag("");
    MCHECK(m, rc == CUMEM_EINVAL, "set_current_tag(\"\") returned %d", rc);
  } else if (variant == 1 && m->whole) {
    rc = cumem_set_current_tag(NULL); /* back to "default", which is tags[0] */
    MCHECK(m, rc == 0, "set_current_tag(NULL) failed");
    m->cur = 0;
  } else {
    rc = cumem_set_current_tag(m->tags[t]);
    MCHECK(m, rc == 0, "set_current_tag failed");
    m->cur = t;
  }
  mlog(m, "set_current_tag(variant %d) -> %d, now %s", variant, rc, m->tags[m->cur]);
  MCHECK(m, strcmp(cumem_current_tag(), m->tags[m->cur]) == 0, "current tag is \"%s\", expected \"%s\"",
         cumem_current_tag(), m->tags[m->cur]);
}

/* -- bad pointers, double frees, refused arguments -- */
static inline void op_bad(model_t *m) {
  src_t *s = m->src;
  int what = (int)pick(s, 8);
  int i = m_pick_alloc(m, 0);
  int k = (int)pick(s, M_STALE);
  if (s->done) return;
  int local = 0, rc = 0, expect = 0;
  const char *label = "";
  switch (what) {
  case 0: label = "free(stack)"; rc = cumem_free(m->cm, &local); expect = CUMEM_ENOTFOUND; break;
  case 1: label = "free(NULL)"; rc = cumem_free(m->cm, NULL); expect = CUMEM_EINVAL; break;
  case 2:
    if (i < 0 || m->a[i].size < 2) return;
    label = "free(interior)";
    rc = cumem_free(m->cm, (char *)m->a[i].ptr + m->a[i].size / 2);
    expect = CUMEM_EINVAL;
    break;
  case 3:
    /* Double free. Only where the model sees every allocation: the address
     * may have been reused by a live one (then it is not a double free). */
    if (!m->whole || k >= m->nstale || m_is_live(m, m->stale[k])) return;
    label = "double free";
    rc = cumem_free(m->cm, m->stale[k]);
    expect = CUMEM_ENOTFOUND;
    break;
  case 4: label = "copy_to_host(stack)"; rc = cumem_copy_to_host(m->cm, &local, &local, 1); expect = CUMEM_ENOTFOUND; break;
  case 5: label = "alloc(NULL out)"; rc = cumem_alloc(m->cm, NULL, 1, 0, NULL); expect = CUMEM_EINVAL; break;
  case 6: label = "sleep(NULL instance)"; rc = cumem_sleep(NULL, NULL, NULL); expect = CUMEM_EINVAL; break;
  default: label = "device_info(bad)"; {
      cumem_device_info_t info;
      rc = cumem_device_info(m->cm, m->ndev_real, &info);
      expect = CUMEM_ENODEV;
    }
  }
  mlog(m, "%s -> %d", label, rc);
  MCHECK(m, rc == expect, "%s returned %d, expected %d", label, rc, expect);
}

/* One random operation, then every check. */
static inline void model_step(model_t *m) {
  m->step++;
  int op = (int)pick(m->src, 100);
  if (m->src->done) return;
  if (op < 16) op_alloc(m);
  else if (op < 26) op_free(m);
  else if (op < 40) op_data(m, 0);
  else if (op < 44) op_data(m, 1);
  else if (op < 50) op_data(m, 2);
  else if (op < 63) op_tagset(m, SET_SLEEP);
  else if (op < 76) op_tagset(m, SET_WAKE);
  else if (op < 79) op_tagset(m, SET_PREPARE);
  else if (op < 82) op_tagset(m, SET_RELEASE);
  else if (op < 85) op_one(m, 0);
  else if (op < 88) op_one(m, 1);
  else if (op < 92) op_figures(m);
  else if (op < 95) op_set_tag(m);
  else op_bad(m);
  if (!m->failed) model_check(m);
}

/* ---- setup and teardown ---------------------------------------------------- */

/* Options from the choice source: chunked or not, several copy segments,
 * zero-on-wake, retention, preparer threads. */
static inline void model_pick_options(src_t *s, cumem_options_t *o, size_t g) {
  cumem_options_init(o);
  static const size_t chunks[] = {0, 0, 1, 2, 3};
  o->chunk_size = chunks[pick(s, 5)] * g;
  /* Copy segments of 1 to 16 pages: several per allocation. copy_chunk must
   * be a multiple of the page size (cumem_open refuses others); the choice
   * that once made odd sizes is still drawn, so that recorded inputs keep
   * their meaning. */
  static const size_t copy[] = {1, 2, 3, 16};
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  o->copy_chunk = copy[pick(s, 4)] * page;
  (void)chance(s, 20);
  o->zero_on_wake = chance(s, 30);
  o->retain_backup = !chance(s, 30);
  /* Skipping unchanged chunks off: this model predicts that every injected
   * fault fails its call, and a sleep whose fingerprinting fails copies
   * everything and succeeds instead. The skip path has its own model and
   * fault sweeps (test_skip.c). */
  o->skip_unchanged = 0;
  o->host_threads = 1 + (int)pick(s, 3);
  o->verbose = 0;
}

/* Set up a model over an open instance. prefix names its tags (tags[0] is
 * "default" when prefix is NULL: the single-thread model owns the default
 * tag). */
static inline int model_init(model_t *m, const char *name, cumem_t *cm, cumem_backend_t *fault, src_t *src,
                      const cumem_options_t *opts, int whole, const char *prefix) {
  memset(m, 0, sizeof *m);
  m->name = name;
  m->cm = cm;
  m->fault = fault;
  m->src = src;
  m->opts = *opts;
  m->whole = whole;
  m->host = strcmp(cumem_backend_name(cm), "host") == 0;
  cumem_device_info_t info;
  int rc = cumem_device_info(cm, 0, &info);
  if (rc) return rc;
  m->g = info.granularity;
  m->capacity = info.total_bytes;
  /* Small on a GPU (2 MiB granularity), many pages on the host backend. */
  m->max_granules = m->g <= 65536 ? 16 : 3;
  rc = cumem_device_count(cm, &m->ndev_real);
  if (rc) return rc;
  m->ndev = m->ndev_real > 2 ? 2 : m->ndev_real;
  for (int t = 0; t < M_TAGS; t++) {
    if (!prefix && t == 0) snprintf(m->tags[t], sizeof m->tags[t], "default");
    else snprintf(m->tags[t], sizeof m->tags[t], "%s%c", prefix ? prefix : "tag.", 'a' + t);
  }
  snprintf(m->unknown_tag, sizeof m->unknown_tag, "%snever", prefix ? prefix : "tag.");
  m->cur = 0;
  return cumem_set_current_tag(m->tags[0]);
}

/* The end of a run, without faults: half-freed allocations are freed by a
 * retry; then every sleeping allocation is woken, and each offloaded one
 * must come back bit-exact, whatever failures came before. Then everything
 * is freed and (whole) no backend object may be left. */
static inline void m_free_at(model_t *m, int i) {
  int rc = cumem_free(m->cm, m->a[i].ptr);
  mlog(m, "final free(%p%s) -> %d", m->a[i].ptr, m->a[i].zombie ? ", half freed" : "", rc);
  MCHECK(m, rc == 0, "final free(%p) failed: %d", m->a[i].ptr, rc);
  m_remove(m, i);
}

static inline void model_finish(model_t *m) {
  m->step++;
  for (int i = m->n - 1; i >= 0 && !m->failed; i--)
    if (m->a[i].zombie) m_free_at(m, i);
  if (m->failed) return;
  model_check(m);
  unsigned known = 0;
  for (int t = 0; t < M_TAGS; t++) known |= (unsigned)m->known[t] << t;
  const char *b[M_TAGS + 2];
  if (m->host && m->whole && known) {
    /* Make room on the small emulated devices: awake allocations were just
     * checked and go; leftovers of failed sleeps are released (a sleep
     * without offload keeps every existing backup). */
    for (int i = m->n - 1; i >= 0 && !m->failed; i--)
      if (m->a[i].awake) m_free_at(m, i);
    int rc = cumem_sleep(m->cm, m_tag_list(m, known, 0, 0, b), NULL);
    mlog(m, "final sleep without offload -> %d", rc);
    MCHECK(m, rc == 0, "final sleep failed: %d", rc);
    m_apply_sleep_ok(m, known, 0, NULL);
    model_check(m);
  }
  int must = 0, maybe = 0;
  m_wake_fits(m, known, NULL, &must, &maybe);
  if (known && !must && !maybe) {
    int rc = cumem_wake(m->cm, m_tag_list(m, known, 0, 0, b));
    mlog(m, "final wake -> %d", rc);
    MCHECK(m, rc == 0, "final wake failed: %d", rc);
    MCHECK(m, !m_drain_after_wake(m, 1, rc), "giving back after the final wake failed");
    m_apply_wake_ok(m, known, 0, NULL);
    model_check(m);
  } else {
    /* Too much asleep for the device at once: one allocation at a time. */
    for (int i = m->n - 1; i >= 0 && !m->failed; i--) {
      m_alloc_t *a = &m->a[i];
      int rc = cumem_create_map(m->cm, a->ptr);
      mlog(m, "final create_map(%p) -> %d", a->ptr, rc);
      MCHECK(m, rc == 0, "final create_map(%p) failed: %d", a->ptr, rc);
      MCHECK(m, !m_drain_after_wake(m, 1, rc), "giving back after the final create_map failed");
      m_apply_wake_ok(m, 0, 0, a);
      m_check_query(m, a, 0);
      m_check_content(m, a);
      if (!m->failed) m_free_at(m, i);
    }
  }
  while (m->n && !m->failed) m_free_at(m, m->n - 1);
  if (m->whole && !m->failed) {
    /* Nothing left, but what failed allocations left for cumem_close. */
    cumem_backend_counters_t c;
    cumem_backend_counters(m->cm, &c);
    MCHECK(m, (size_t)c.reservations <= m->limbo_res && (size_t)c.handles <= m->limbo_chunks &&
                  (size_t)c.mappings <= m->limbo_chunks && !c.host_registrations && !c.streams && !c.events,
           "after freeing everything: %ld reservations, %ld handles, %ld mappings, %ld registrations alive",
           c.reservations, c.handles, c.mappings, c.host_registrations);
  }
}

static inline void model_release(model_t *m) {
  for (int i = 0; i < m->n; i++) {
    free(m->a[i].shadow);
    free(m->a[i].defined);
  }
  m->n = 0;
}

/* ---- one single-threaded episode: the fuzzer's unit and the stress test's --
 * The host backend's emulation is fixed by the caller's environment (see
 * model_host_env). Opens an instance over the fault backend with options
 * from the source, runs up to max_ops operations, finishes and closes.
 * Returns 0, or 1 on a model violation. */

/* The emulated machine the single-thread model expects on the host backend:
 * page granularity (many small allocations), 1 MiB per device (so that
 * running out of device memory is frequent and predictable), two devices. */
static inline void model_host_env(void) {
  setenv("CUMEM_HOST_GRANULARITY_KB", "4", 1);
  setenv("CUMEM_HOST_MEMORY_MB", "1", 1);
  setenv("CUMEM_HOST_DEVICES", "2", 1);
}

static inline int model_episode(src_t *src, const char *name, int use_cuda, long max_ops, long *ops_done,
                         long *faults) {
  cumem_backend_t *inner = NULL, *fault = NULL;
  int rc = use_cuda ? cumem_backend_cuda(&inner) : cumem_backend_host(&inner);
  if (rc) return rc == CUMEM_ENODRIVER ? 77 : 1;
  cumem_device_info_t info;
  if (inner->device_info(inner, 0, &info) || cumem_backend_fault(&fault, inner)) {
    inner->destroy(inner);
    return 1;
  }
  cumem_options_t o;
  model_pick_options(src, &o, info.granularity);
  cumem_t *cm = NULL;
  if (cumem_open_backend(&cm, &o, fault)) return 1;
  static model_t m; /* large: keep it off the stack */
  if (model_init(&m, name, cm, fault, src, &o, 1, NULL)) {
    cumem_close(cm);
    return 1;
  }
  mlog(&m, "options: chunk %zu, copy_chunk %zu, zero_on_wake %d, retain %d, threads %d", o.chunk_size,
       o.copy_chunk, o.zero_on_wake, o.retain_backup, o.host_threads);
  for (long i = 0; i < max_ops && !m.failed && !src->done; i++) model_step(&m);
  if (!m.failed) model_finish(&m);
  int failed = m.failed;
  if (ops_done) *ops_done += m.step;
  if (faults) *faults += m.faults_injected;
  model_release(&m);
  if (!failed && cumem_close(cm) != 0) {
    fprintf(stderr, "  cumem_close failed: %s\n", cumem_last_error());
    failed = 1;
  }
  cumem_set_current_tag(NULL);
  return failed;
}

#endif
