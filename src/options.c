/* Options: the table of cumem_options_t (defaults, CUMEM_* environment
 * variables, allowed values) and the row machinery that reads, sets and
 * validates options from it. The one place where the library reads its
 * environment (the host backend reads its own emulation settings,
 * CUMEM_HOST_*, with rows of its own in its file).
 *
 * Every option is checked at open, wherever its value came from (the
 * environment, the struct, cumem_options_set, Python keywords): an option
 * nobody validated once made the engine wrap a segment count to zero and
 * lose 99.6% of a backup (issue 13). A malformed or out-of-range CUMEM_*
 * value is never ignored: cumem_options_init records it in invalid_env and
 * cumem_open refuses it. */
#include "options.h"
#include "core.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

/* ---- the rows of cumem_options_t -------------------------------------------- */

/* 8 touching threads measured fastest on a 16-core H200 host (cold sleep
 * 28.3 GB/s, against 26.0 with 12 and 27.2 with 16; again 28–29 against
 * 23–26 with 16 later): with 8 the touching already stays ahead of the
 * registering, and more threads only compete with it. */
static long long default_host_threads(void) {
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  return cores < 1 ? 1 : cores > 8 ? 8 : cores;
}

/* Skip unchanged copy chunks at sleep (CUMEM_SKIP_UNCHANGED). On by
 * default: on an H200 (bench/RESULTS.md, 2026-11-30) a sleep after changing
 * every chunk took 1.013x a plain warm sleep with 16 GiB of weights and
 * 1.004x with 4 GiB, within the 2% that issue 11 allows; unchanged weights
 * sleep 7x faster. */
#define SKIP_UNCHANGED_DEFAULT 1

static const char *const backend_names[] = {"auto", "cuda", "host", NULL};
static const struct cumem__opt_word numa_words[] = {{"auto", -1}, {NULL, 0}};

/* A row of cumem_options_t; the type is checked against the field's size at
 * compile time (a negative array size otherwise). */
#define FIELD_(field, ctype) \
  .name = #field,            \
  .offset = offsetof(cumem_options_t, field) + 0 * sizeof(char[sizeof(((cumem_options_t *)0)->field) == sizeof(ctype) ? 1 : -1])
#define SIZE_ROW(field, ...) {FIELD_(field, size_t), .type = CUMEM__OPT_SIZE, __VA_ARGS__}
#define INT_ROW(field, ...) {FIELD_(field, int), .type = CUMEM__OPT_INT, .env_unit = 1, __VA_ARGS__}
#define STRING_ROW(field, ...) {FIELD_(field, const char *), .type = CUMEM__OPT_STRING, __VA_ARGS__}

/* Add an option here (and its field in include/cumem.h): the environment,
 * cumem_options_set, Python's Instance(**options) and the validation at
 * open follow from the row. */
static const cumem__option_t option_rows[] = {
    STRING_ROW(backend, .env = "CUMEM_BACKEND", .def_str = "auto", .choices = backend_names),
    SIZE_ROW(chunk_size, .env = "CUMEM_CHUNK_SIZE_MB", .env_unit = MiB, .min = 1,
             .max = CUMEM__OPT_SIZE_LIMIT, .flags = CUMEM__OPT_ZERO_OFF, .def = 0,
             .note = "rounded up to the device's allocation granularity"),
    INT_ROW(zero_on_wake, .env = "CUMEM_ZERO_ON_WAKE", .min = 0, .max = 1, .def = 0),
    INT_ROW(retain_backup, .env = "CUMEM_RETAIN_BACKUP", .min = 0, .max = 1, .def = 1),
    /* Host segments are page-locked one by one: two segments must never
     * share a page (the driver refuses a second registration of a page). */
    SIZE_ROW(copy_chunk, .env = "CUMEM_COPY_CHUNK_MB", .env_unit = MiB, .min = 4 * KiB,
             .max = CUMEM__OPT_SIZE_LIMIT, .flags = CUMEM__OPT_PAGE, .def = 64 * MiB),
    INT_ROW(host_threads, .env = "CUMEM_HOST_THREADS", .min = 1, .max = 256, .def_fn = default_host_threads),
    INT_ROW(release_threads, .env = "CUMEM_RELEASE_THREADS", .min = 1, .max = 64, .def = 4),
    INT_ROW(verbose, .env = "CUMEM_VERBOSE", .min = 0, .max = 1, .def = 0),
    STRING_ROW(prepare_ahead, .env = "CUMEM_PREPARE_AHEAD", .note = "tag names separated by commas, or all"),
    INT_ROW(prepare_ahead_delay_ms, .env = "CUMEM_PREPARE_AHEAD_DELAY_MS", .min = 0, .max = 86400000,
            .def = 1000),
    INT_ROW(numa, .env = "CUMEM_NUMA", .min = -1, .max = 1, .def = -1, .words = numa_words,
            .note = "-1 where the machine has several nodes"),
    STRING_ROW(register_lock, .env = "CUMEM_REGISTER_LOCK", .note = "a file path"),
    STRING_ROW(disk_dir, .env = "CUMEM_DISK_DIR", .note = "an existing directory that takes new files"),
    INT_ROW(skip_unchanged, .env = "CUMEM_SKIP_UNCHANGED", .min = 0, .max = 1, .def = SKIP_UNCHANGED_DEFAULT),
};
#define NROWS (sizeof option_rows / sizeof option_rows[0])

/* ---- the row machinery ------------------------------------------------------ */

static size_t page_size(void) {
  long p = sysconf(_SC_PAGESIZE);
  return p > 0 ? (size_t)p : 4096;
}

/* "64 MiB", "4 KiB", "1 TiB", "12345 bytes". */
static void fmt_size(char *buf, size_t cap, unsigned long long v) {
  static const struct { unsigned shift; const char *unit; } units[] = {
      {40, "TiB"}, {30, "GiB"}, {20, "MiB"}, {10, "KiB"}};
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
    if (v && v % (1ull << units[i].shift) == 0) {
      snprintf(buf, cap, "%llu %s", v >> units[i].shift, units[i].unit);
      return;
    }
  snprintf(buf, cap, "%llu byte%s", v, v == 1 ? "" : "s");
}

/* What the row allows, in words: "from 4 KiB to 1 TiB, a multiple of the
 * page size (4 KiB)", "0 or 1", "auto, cuda or host". */
static void describe_allowed(const cumem__option_t *o, char *buf, size_t cap) {
  size_t n = 0;
#define ADD(...) (n += (size_t)snprintf(buf + n, n < cap ? cap - n : 0, __VA_ARGS__))
  if (o->type == CUMEM__OPT_STRING) {
    if (!o->choices) ADD("any string");
    for (size_t i = 0; o->choices && o->choices[i]; i++)
      ADD("%s%s", i == 0 ? "" : o->choices[i + 1] ? ", " : " or ", o->choices[i]);
  } else {
    if (o->flags & CUMEM__OPT_ZERO_OFF) ADD("0 (off), or ");
    if (o->type == CUMEM__OPT_INT && o->max == o->min + 1) {
      ADD("%lld or %lld", o->min, o->max);
    } else if (o->type == CUMEM__OPT_INT) {
      ADD("from %lld to %lld", o->min, o->max);
      for (size_t i = 0; o->words && o->words[i].word; i++) ADD(", or %s (%lld)", o->words[i].word, o->words[i].value);
    } else {
      char lo[32], hi[32];
      fmt_size(lo, sizeof lo, (unsigned long long)o->min);
      fmt_size(hi, sizeof hi, (unsigned long long)o->max);
      ADD("from %s to %s", lo, hi);
    }
    if (o->flags & CUMEM__OPT_PAGE) {
      char pg[32];
      fmt_size(pg, sizeof pg, page_size());
      ADD(", a multiple of the page size (%s)", pg);
    }
    if (o->flags & CUMEM__OPT_POW2) ADD(", a power of two");
  }
  if (o->note) ADD(", %s", o->note);
#undef ADD
  if (n >= cap && cap > 4) strcpy(buf + cap - 4, "...");
}

/* The name to show: the field's, or the variable's for rows without one. */
static const char *label(const cumem__option_t *o) { return o->name ? o->name : o->env; }

/* What is wrong with a value already parsed, or NULL. */
static const char *range_problem(const cumem__option_t *o, long long v) {
  if (v == 0 && (o->flags & CUMEM__OPT_ZERO_OFF)) return NULL;
  if (v < o->min) return o->type == CUMEM__OPT_SIZE && v == 0 ? "0 is not allowed" : "too small";
  if (v > o->max) return "too large";
  if (o->type == CUMEM__OPT_SIZE) {
    size_t s = (size_t)v;
    if ((o->flags & CUMEM__OPT_PAGE) && s % page_size()) return "not a multiple of the page size";
    if ((o->flags & CUMEM__OPT_POW2) && (s & (s - 1))) return "not a power of two";
  }
  return NULL;
}

static const char not_a_choice[] = "not one of the choices";

static const char *string_problem(const cumem__option_t *o, const char *s) {
  if (!s || !o->choices) return NULL; /* NULL: the default */
  for (size_t i = 0; o->choices[i]; i++)
    if (strcmp(s, o->choices[i]) == 0) return NULL;
  return not_a_choice;
}

/* A decimal int: optional '-', digits, nothing else. */
static const char *parse_int(const char *text, long long *out) {
  const char *p = text;
  if (*p == '-') p++;
  if (*p < '0' || *p > '9') return *text ? "not an integer" : "empty";
  for (const char *q = p; *q; q++)
    if (*q < '0' || *q > '9') return "not an integer";
  errno = 0;
  long long v = strtoll(text, NULL, 10);
  if (errno == ERANGE) return text[0] == '-' ? "too small" : "too large";
  *out = v;
  return NULL;
}

/* The detail of a refusal. `text` is the value as written (NULL: a value
 * from the struct, shown as `v`/`s`); `source` the variable it came from. */
static int refuse(const cumem__option_t *o, const char *source, const char *text, long long v,
                  const char *s, const char *why, int env_unit) {
  char allowed[256];
  describe_allowed(o, allowed, sizeof allowed);
  const char *unit_hint = "";
  if (o->type == CUMEM__OPT_SIZE && env_unit && o->env_unit == MiB)
    unit_hint = "; a number without a unit counts MiB";
  else if (o->type == CUMEM__OPT_SIZE && env_unit && o->env_unit == KiB)
    unit_hint = "; a number without a unit counts KiB";
  /* User text may be long: show at most 64 bytes of it, never half a
   * UTF-8 character (the detail must stay valid UTF-8). */
  char shown[80];
  if (text) snprintf(shown, sizeof shown, "\"%.*s%s\"", (int)cumem__utf8_prefix(text, 64), text,
                     strlen(text) > 64 ? "..." : "");
  else if (o->type == CUMEM__OPT_STRING) snprintf(shown, sizeof shown, "\"%.*s\"", (int)cumem__utf8_prefix(s, 64), s);
  else if (o->type == CUMEM__OPT_SIZE) snprintf(shown, sizeof shown, "%zu", (size_t)v);
  else snprintf(shown, sizeof shown, "%lld", v);
  if (why == not_a_choice) /* 'unknown backend "gpu"', as users expect it said */
    return source ? CUMEM_FAIL(CUMEM_EINVAL, "unknown %s %s (from %s); allowed: %s", label(o), shown, source, allowed)
                  : CUMEM_FAIL(CUMEM_EINVAL, "unknown %s %s; allowed: %s", label(o), shown, allowed);
  if (source && o->name)
    return CUMEM_FAIL(CUMEM_EINVAL, "%s=%s (option %s): %s; allowed: %s%s", source, shown, o->name, why, allowed,
                      unit_hint);
  if (source) return CUMEM_FAIL(CUMEM_EINVAL, "%s=%s: %s; allowed: %s%s", source, shown, why, allowed, unit_hint);
  return CUMEM_FAIL(CUMEM_EINVAL, "option %s = %s: %s; allowed: %s", label(o), shown, why, allowed);
}

void cumem__options_defaults(const cumem__option_t *rows, size_t n, void *base) {
  for (size_t i = 0; i < n; i++) {
    const cumem__option_t *o = &rows[i];
    char *field = (char *)base + o->offset;
    long long v = o->def_fn ? o->def_fn() : o->def;
    if (o->type == CUMEM__OPT_SIZE) *(size_t *)field = (size_t)v;
    else if (o->type == CUMEM__OPT_INT) *(int *)field = (int)v;
    else *(const char **)field = o->def_str;
  }
}

int cumem__option_set_text(const cumem__option_t *o, void *base, const char *text, int env_unit,
                           const char *source) {
  char *field = (char *)base + o->offset;
  if (!text) return refuse(o, source, "", 0, NULL, "no value", env_unit);
  if (o->type == CUMEM__OPT_STRING) {
    const char *why = string_problem(o, text);
    if (why) return refuse(o, source, text, 0, NULL, why, env_unit);
    *(const char **)field = text;
    return 0;
  }
  long long v = 0;
  const char *why = NULL;
  if (o->type == CUMEM__OPT_SIZE) {
    size_t bytes = 0;
    if (text[0] == '-') why = "negative";
    else if (cumem__parse_size(text, env_unit ? o->env_unit : 1, &bytes, &why) == 0 && bytes > (size_t)LLONG_MAX)
      why = "too large";
    v = (long long)bytes;
  } else {
    const struct cumem__opt_word *w = o->words;
    while (w && w->word && strcmp(w->word, text) != 0) w++;
    if (w && w->word) v = w->value;
    else why = parse_int(text, &v);
    if (!why && v < 0 && o->min >= 0) why = "negative";
  }
  if (!why) why = range_problem(o, v);
  if (why) return refuse(o, source, text, v, NULL, why, env_unit);
  if (o->type == CUMEM__OPT_SIZE) *(size_t *)field = (size_t)v;
  else *(int *)field = (int)v;
  return 0;
}

int cumem__option_from_env(const cumem__option_t *o, void *base) {
  const char *s = getenv(o->env);
  if (!s || !*s) return 0; /* unset, or set empty ("VAR= cmd"): the default */
  return cumem__option_set_text(o, base, s, 1, o->env);
}

int cumem__option_check(const cumem__option_t *o, const void *base) {
  const char *field = (const char *)base + o->offset;
  if (o->type == CUMEM__OPT_STRING) {
    const char *s = *(const char *const *)field;
    const char *why = string_problem(o, s);
    return why ? refuse(o, NULL, NULL, 0, s, why, 0) : 0;
  }
  long long v;
  const char *why = NULL;
  if (o->type == CUMEM__OPT_SIZE) {
    size_t s = *(const size_t *)field;
    v = s > (size_t)LLONG_MAX ? LLONG_MAX : (long long)s;
    if (s > (size_t)LLONG_MAX) why = "too large";
  } else {
    v = *(const int *)field;
    if (v < 0 && o->min >= 0) why = "negative";
  }
  if (!why) why = range_problem(o, v);
  if (!why) return 0;
  if (o->type == CUMEM__OPT_SIZE) { /* show the exact value, not the clamp */
    char shown[32];
    snprintf(shown, sizeof shown, "%zu", *(const size_t *)field);
    char allowed[256];
    describe_allowed(o, allowed, sizeof allowed);
    return CUMEM_FAIL(CUMEM_EINVAL, "option %s = %s: %s; allowed: %s", label(o), shown, why, allowed);
  }
  return refuse(o, NULL, NULL, v, NULL, why, 0);
}

/* ---- cumem_options_t -------------------------------------------------------- */

static const cumem__option_t *row_named(const char *name) {
  for (size_t i = 0; i < NROWS; i++)
    if (strcmp(option_rows[i].name, name) == 0) return &option_rows[i];
  return NULL;
}

static const cumem__option_t *row_of_env(const char *env) {
  for (size_t i = 0; i < NROWS; i++)
    if (strcmp(option_rows[i].env, env) == 0) return &option_rows[i];
  return NULL;
}

void cumem_options_init(cumem_options_t *opts) {
  if (!opts) return;
  memset(opts, 0, sizeof *opts);
  cumem__options_defaults(option_rows, NROWS, opts);
  /* Not a failing call: keep this thread's detail as it was. */
  cumem__error_save_t e;
  cumem__error_save(&e);
  for (size_t i = 0; i < NROWS; i++)
    if (cumem__option_from_env(&option_rows[i], opts) != 0 && !opts->invalid_env)
      opts->invalid_env = option_rows[i].env;
  cumem__error_restore(&e);
}

int cumem_options_set(cumem_options_t *opts, const char *name, const char *value) {
  if (!opts || !name) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_options_set: NULL argument");
  const cumem__option_t *o = row_named(name);
  if (!o) {
    char names[256];
    size_t n = 0;
    for (size_t i = 0; i < NROWS; i++)
      n += (size_t)snprintf(names + n, n < sizeof names ? sizeof names - n : 0, "%s%s", i ? ", " : "",
                            option_rows[i].name);
    return CUMEM_FAIL(CUMEM_EINVAL, "unknown option \"%.*s\"; allowed: %s", (int)cumem__utf8_prefix(name, 64), name,
                      names);
  }
  int rc = cumem__option_set_text(o, opts, value, 0, NULL);
  /* A value set here replaces the malformed one the environment gave. */
  if (!rc && opts->invalid_env && strcmp(opts->invalid_env, o->env) == 0) opts->invalid_env = NULL;
  return rc;
}

int cumem__options_validate(const cumem_options_t *opts) {
  if (opts->invalid_env) {
    const cumem__option_t *o = row_of_env(opts->invalid_env);
    if (o) {
      cumem_options_t scratch = *opts;
      int rc = cumem__option_from_env(o, &scratch);
      if (rc) return rc;
    }
    return CUMEM_FAIL(CUMEM_EINVAL, "%.64s had a malformed value when cumem_options_init read it",
                      opts->invalid_env);
  }
  for (size_t i = 0; i < NROWS; i++) {
    int rc = cumem__option_check(&option_rows[i], opts);
    if (rc) return rc;
  }
  return 0;
}
