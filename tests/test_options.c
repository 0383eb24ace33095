/* Options are validated at open, from every source (issue 13, items 1 and
 * 11). Table-driven: every option x {garbage, 0, 1, negative, overflow,
 * max, the smallest and largest allowed, just outside them}, through its
 * CUMEM_* variable, through cumem_options_set and through the struct. A
 * refusal is CUMEM_EINVAL with a detail that names the option (and the
 * variable when the value came from there) and what is allowed; an
 * accepted value opens an instance that works. */
#include "harness.h"

#include <limits.h>
#include <stddef.h>
#include <unistd.h>

#define MiB ((size_t)1 << 20)

/* The contract, written independently of src/options.c's table. Sizes are
 * given as they are written in the environment (a bare number counts MiB). */
enum { SIZE_MB, INT, STR };
typedef struct spec {
  const char *name, *env;
  int kind;
  const char *lo, *hi;        /* the smallest and largest allowed values */
  const char *below, *above;  /* just outside them (NULL: nothing there) */
  int zero_ok, one_ok, minus_one_ok;
} spec_t;

static const spec_t specs[] = {
    {"backend", "CUMEM_BACKEND", STR, "host", "host", NULL, NULL, 0, 0, 0},
    {"chunk_size", "CUMEM_CHUNK_SIZE_MB", SIZE_MB, "1", "1048576", NULL, "1048577", 1, 1, 0},
    {"zero_on_wake", "CUMEM_ZERO_ON_WAKE", INT, "0", "1", NULL, "2", 1, 1, 0},
    {"retain_backup", "CUMEM_RETAIN_BACKUP", INT, "0", "1", NULL, "2", 1, 1, 0},
    {"copy_chunk", "CUMEM_COPY_CHUNK_MB", SIZE_MB, "4K", "1048576", "2K", "1048577", 0, 1, 0},
    {"host_threads", "CUMEM_HOST_THREADS", INT, "1", "256", "0", "257", 0, 1, 0},
    {"release_threads", "CUMEM_RELEASE_THREADS", INT, "1", "64", "0", "65", 0, 1, 0},
    {"verbose", "CUMEM_VERBOSE", INT, "0", "1", NULL, "2", 1, 1, 0},
    {"prepare_ahead_delay_ms", "CUMEM_PREPARE_AHEAD_DELAY_MS", INT, "0", "86400000", NULL, "86400001", 1, 1, 0},
    {"numa", "CUMEM_NUMA", INT, "auto", "1", "-2", "2", 1, 1, 1},
    {"skip_unchanged", "CUMEM_SKIP_UNCHANGED", INT, "0", "1", NULL, "2", 1, 1, 0},
};
/* The string options without a fixed set of values (prepare_ahead,
 * register_lock, disk_dir) are checked by the code that uses them at open
 * (test_disk, test_background). */
#define NSPECS (sizeof specs / sizeof specs[0])

/* The values every option is tried with, and whether the spec allows it. */
typedef struct trial {
  const char *text;
  int ok;
} trial_t;

static size_t trials_of(const spec_t *s, trial_t *t) {
  size_t n = 0;
  t[n++] = (trial_t){"garbage", 0};
  t[n++] = (trial_t){"12abc", 0};
  t[n++] = (trial_t){"0", s->zero_ok};
  t[n++] = (trial_t){"1", s->one_ok};
  t[n++] = (trial_t){"-1", s->minus_one_ok};
  t[n++] = (trial_t){"99999999999999999999", 0};                     /* overflow */
  t[n++] = (trial_t){s->kind == INT ? "2147483647" : "18446744073709551615", 0}; /* max */
  t[n++] = (trial_t){"4294967296", 0};                               /* wraps an unsigned int */
  t[n++] = (trial_t){s->lo, 1};
  t[n++] = (trial_t){s->hi, 1};
  if (s->below) t[n++] = (trial_t){s->below, 0};
  if (s->above) t[n++] = (trial_t){s->above, 0};
  if (s->kind == SIZE_MB) {
    t[n++] = (trial_t){"1.5e3", 0};  /* no exponents */
    t[n++] = (trial_t){"nan", 0};
    t[n++] = (trial_t){"0x10", 0};
  }
  if (s->kind == STR) t[n++] = (trial_t){"HOST", 0};
  return n;
}

static int contains(const char *haystack, const char *needle) { return strstr(haystack, needle) != NULL; }

/* A value refused by open: the detail names what it must name. */
#define CHECK_REFUSED(call, must1, must2)                                               \
  do {                                                                                  \
    int r_ = (call);                                                                    \
    if (r_ != CUMEM_EINVAL || !contains(cumem_last_error(), (must1)) ||                 \
        !contains(cumem_last_error(), (must2)) || !contains(cumem_last_error(), "allowed")) { \
      fprintf(stderr, "  %s: rc %d, detail: %s\n", #call, r_, cumem_last_error());      \
      CHECK(0);                                                                         \
    }                                                                                   \
  } while (0)

/* Open with these options on the backend under test, then check the
 * instance works: an allocation round-trips through an offloading sleep. */
static int open_and_use(const cumem_options_t *o) {
  cumem_t *cm = NULL;
  int rc = test_open(&cm, NULL, o);
  if (rc) return rc;
  void *p = NULL;
  const char *W[] = {"w", NULL};
  rc = cumem_alloc(cm, &p, 3 * MiB, 0, "w");
  if (!rc) rc = fill_pattern(cm, p, 3 * MiB, 7);
  if (!rc) rc = cumem_sleep(cm, NULL, W);
  if (!rc) rc = cumem_wake(cm, NULL);
  if (!rc && !has_pattern(cm, p, 3 * MiB, 7)) rc = CUMEM_EDRIVER;
  if (p) cumem_free(cm, p);
  int rc2 = cumem_close(cm);
  return rc ? rc : rc2;
}

static void clear_env(void) {
  for (size_t i = 0; i < NSPECS; i++) unsetenv(specs[i].env);
}

/* Runs fn on every option with every value it is tried with. */
static void for_every_trial(void (*fn)(const spec_t *s, const trial_t *t)) {
  clear_env();
  for (size_t i = 0; i < NSPECS; i++) {
    trial_t t[24];
    size_t n = trials_of(&specs[i], t);
    for (size_t k = 0; k < n; k++) fn(&specs[i], &t[k]);
  }
}

static void through_the_environment(const spec_t *s, const trial_t *t) {
  setenv(s->env, t->text, 1);
  cumem_options_t o;
  cumem_options_init(&o);
  unsetenv(s->env);
  if (t->ok) {
    if (o.invalid_env || open_and_use(&o) != 0) {
      fprintf(stderr, "  %s=\"%s\" should be accepted: %s\n", s->env, t->text, cumem_last_error());
      CHECK(0);
    }
    return;
  }
  if (!o.invalid_env || strcmp(o.invalid_env, s->env) != 0) {
    fprintf(stderr, "  %s=\"%s\" not recorded as invalid\n", s->env, t->text);
    CHECK(0);
  }
  setenv(s->env, t->text, 1); /* open re-reads it to say what is wrong */
  cumem_t *cm = NULL;
  int rc = test_open(&cm, NULL, &o);
  /* cumem_open refuses it too, before any backend is loaded. */
  int rc2 = cumem_open(&cm, &o);
  unsetenv(s->env);
  CHECK_REFUSED(rc2, s->env, s->name);
  CHECK(cm == NULL);
  CHECK(rc == CUMEM_EINVAL);
}

TEST(every_option_from_the_environment) { for_every_trial(through_the_environment); }

static void through_options_set(const spec_t *s, const trial_t *t) {
  /* cumem_options_set counts bytes: write the MiB of the spec out. */
  char text[64];
  int is_number = t->text[0] >= '0' && t->text[0] <= '9' && !strpbrk(t->text, "abcdefxnKGM.");
  snprintf(text, sizeof text, "%s%s", t->text, s->kind == SIZE_MB && is_number ? "M" : "");
  cumem_options_t o, before;
  cumem_options_init(&o);
  before = o;
  int rc = cumem_options_set(&o, s->name, text);
  if (t->ok) {
    if (rc != 0 || open_and_use(&o) != 0) {
      fprintf(stderr, "  %s = \"%s\" should be accepted: %s\n", s->name, text, cumem_last_error());
      CHECK(0);
    }
    return;
  }
  CHECK_REFUSED(rc, s->name, "allowed");
  CHECK(memcmp(&o, &before, sizeof o) == 0); /* unchanged */
}

TEST(every_option_through_options_set) {
  for_every_trial(through_options_set);
  cumem_options_t o;
  cumem_options_init(&o);
  CHECK_REFUSED(cumem_options_set(&o, "no_such_option", "1"), "no_such_option", "copy_chunk");
  CHECK_REFUSED(cumem_options_set(&o, "copy_chunk", ""), "copy_chunk", "empty");
  CHECK_REFUSED(cumem_options_set(&o, "backend", ""), "backend", "auto, cuda or host");
  /* Sizes set by name count bytes unless a unit is written. */
  CHECK_OK(cumem_options_set(&o, "copy_chunk", "65536"));
  CHECK(o.copy_chunk == 65536);
  CHECK_OK(cumem_options_set(&o, "copy_chunk", "1.5G"));
  CHECK(o.copy_chunk == (size_t)3 << 29);
  CHECK_REFUSED(cumem_options_set(&o, "copy_chunk", "4097"), "copy_chunk", "page");
}

/* The struct, as C callers fill it: out-of-range values are refused at
 * open, naming the field (and no variable). */
typedef struct field_trial {
  const char *name;
  size_t offset;
  int is_size;
  long long value;
  size_t size_value;
  int ok;
} field_trial_t;

#define SZ(field, v, ok) {#field, offsetof(cumem_options_t, field), 1, 0, (size_t)(v), ok}
#define IN(field, v, ok) {#field, offsetof(cumem_options_t, field), 0, (long long)(v), 0, ok}

static const field_trial_t fields[] = {
    SZ(chunk_size, 0, 1), SZ(chunk_size, 1, 1), SZ(chunk_size, (size_t)1 << 40, 1),
    SZ(chunk_size, ((size_t)1 << 40) + 1, 0), SZ(chunk_size, SIZE_MAX, 0),
    SZ(copy_chunk, 0, 0), SZ(copy_chunk, 1, 0), SZ(copy_chunk, 4096, 1), SZ(copy_chunk, 4097, 0),
    SZ(copy_chunk, (size_t)1 << 40, 1), SZ(copy_chunk, SIZE_MAX, 0), SZ(copy_chunk, SIZE_MAX / 2 + 1, 0),
    IN(zero_on_wake, 0, 1), IN(zero_on_wake, 1, 1), IN(zero_on_wake, -1, 0), IN(zero_on_wake, 2, 0),
    IN(zero_on_wake, INT_MAX, 0), IN(retain_backup, -1, 0), IN(retain_backup, INT_MAX, 0),
    IN(host_threads, 0, 0), IN(host_threads, 1, 1), IN(host_threads, -1, 0), IN(host_threads, INT_MAX, 0),
    IN(host_threads, INT_MIN, 0), IN(release_threads, 0, 0), IN(release_threads, 64, 1),
    IN(release_threads, 65, 0), IN(release_threads, -1, 0), IN(verbose, -1, 0), IN(verbose, 2, 0),
    IN(verbose, INT_MAX, 0), IN(numa, -1, 1), IN(numa, -2, 0), IN(numa, 2, 0), IN(prepare_ahead_delay_ms, 0, 1),
    IN(prepare_ahead_delay_ms, -1, 0), IN(prepare_ahead_delay_ms, INT_MAX, 0),
};

TEST(every_option_through_the_struct) {
  clear_env();
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    const field_trial_t *f = &fields[i];
    cumem_options_t o;
    cumem_options_init(&o);
    if (f->is_size) *(size_t *)((char *)&o + f->offset) = f->size_value;
    else *(int *)((char *)&o + f->offset) = (int)f->value;
    if (f->ok) {
      if (open_and_use(&o) != 0) {
        fprintf(stderr, "  %s #%zu should be accepted: %s\n", f->name, i, cumem_last_error());
        CHECK(0);
      }
    } else {
      cumem_t *cm = NULL;
      CHECK_REFUSED(test_open(&cm, NULL, &o), f->name, "option");
      CHECK(!contains(cumem_last_error(), "CUMEM_")); /* it did not come from there */
    }
  }
  cumem_options_t o;
  cumem_options_init(&o);
  o.backend = "bogus";
  cumem_t *cm = NULL;
  CHECK_REFUSED(cumem_open(&cm, &o), "backend", "auto, cuda or host");
  o.backend = NULL; /* NULL is the default, auto */
  cumem_backend_t *b = NULL;
  CHECK_OK(test_backend_new(&b));
  CHECK_OK(cumem_open_backend(&cm, &o, b));
  CHECK_OK(cumem_close(cm));
}

/* Units in the environment; the value an instance runs with is what it
 * says (an allocation with chunk_size = 1.5 GiB is in chunks of 1.5 GiB). */
TEST(environment_sizes_take_units) {
  clear_env();
  static const struct { const char *text; size_t bytes; } cases[] = {
      {"1.5G", (size_t)3 << 29}, {"64", 64 * MiB}, {"512K", 512 << 10}, {"1T", (size_t)1 << 40}, {"0.5", MiB / 2}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    setenv("CUMEM_COPY_CHUNK_MB", cases[i].text, 1);
    setenv("CUMEM_CHUNK_SIZE_MB", cases[i].text, 1);
    cumem_options_t o;
    cumem_options_init(&o);
    CHECK(o.invalid_env == NULL);
    CHECK(o.copy_chunk == cases[i].bytes);
    CHECK(o.chunk_size == cases[i].bytes);
  }
  clear_env();
}

/* A variable set empty counts as unset (the shell's "VAR= cmd"). */
TEST(empty_environment_means_default) {
  clear_env();
  for (size_t i = 0; i < NSPECS; i++) setenv(specs[i].env, "", 1);
  cumem_options_t o, d;
  cumem_options_init(&o);
  clear_env();
  cumem_options_init(&d);
  CHECK(o.invalid_env == NULL);
  CHECK(memcmp(&o, &d, sizeof o) == 0);
}

/* A malformed variable is not ignored even when another option is fine,
 * and setting that option by name replaces it. */
TEST(malformed_environment_is_remembered_until_replaced) {
  clear_env();
  setenv("CUMEM_COPY_CHUNK_MB", "99999999999999999999", 1);
  cumem_options_t o;
  cumem_options_init(&o);
  CHECK(o.invalid_env && strcmp(o.invalid_env, "CUMEM_COPY_CHUNK_MB") == 0);
  CHECK(o.copy_chunk == 64 * MiB); /* the default, never a wrapped value */
  cumem_t *cm = NULL;
  CHECK_REFUSED(test_open(&cm, NULL, &o), "CUMEM_COPY_CHUNK_MB=\"99999999999999999999\"", "too large");
  /* Changed since: still refused, saying so. */
  setenv("CUMEM_COPY_CHUNK_MB", "64", 1);
  CHECK_RC(test_open(&cm, NULL, &o), CUMEM_EINVAL);
  CHECK(contains(cumem_last_error(), "CUMEM_COPY_CHUNK_MB"));
  unsetenv("CUMEM_COPY_CHUNK_MB");
  CHECK_OK(cumem_options_set(&o, "copy_chunk", "32M"));
  CHECK(o.invalid_env == NULL);
  CHECK_OK(open_and_use(&o));
  /* The process-wide instance is opened from the environment: refused too. */
  setenv("CUMEM_RETAIN_BACKUP", "yes", 1);
  CHECK_RC(cumem_default(&cm), CUMEM_EINVAL);
  CHECK(contains(cumem_last_error(), "CUMEM_RETAIN_BACKUP"));
  unsetenv("CUMEM_RETAIN_BACKUP");
}

/* The data-loss case of the issue: copy_chunk = SIZE_MAX wrapped the
 * segment count to 0 and sleep + wake returned 0 with the content gone.
 * Now it is refused, and the smallest copy chunk allowed (one page) round
 * trips every byte. */
TEST(copy_chunk_extremes_lose_nothing) {
  clear_env();
  cumem_options_t o;
  cumem_options_init(&o);
  o.copy_chunk = SIZE_MAX;
  cumem_t *cm = NULL;
  CHECK_RC(test_open(&cm, NULL, &o), CUMEM_EINVAL);
  o.copy_chunk = (size_t)sysconf(_SC_PAGESIZE);
  CHECK_OK(open_and_use(&o));
}

/* Item 11: the host backend's own settings. */
typedef struct host_trial {
  const char *env, *text;
  int ok;
} host_trial_t;

static const host_trial_t host_trials[] = {
    {"CUMEM_HOST_GRANULARITY_KB", "12", 0},   {"CUMEM_HOST_GRANULARITY_KB", "3000", 0},
    {"CUMEM_HOST_GRANULARITY_KB", "0", 0},    {"CUMEM_HOST_GRANULARITY_KB", "1", 0},
    {"CUMEM_HOST_GRANULARITY_KB", "-1", 0},   {"CUMEM_HOST_GRANULARITY_KB", "99999999999999999999", 0},
    {"CUMEM_HOST_GRANULARITY_KB", "18446744073709551615", 0},
    {"CUMEM_HOST_GRANULARITY_KB", "x", 0},    {"CUMEM_HOST_GRANULARITY_KB", "4", 1},
    {"CUMEM_HOST_GRANULARITY_KB", "2048", 1}, {"CUMEM_HOST_GRANULARITY_KB", "1048576", 1},
    {"CUMEM_HOST_GRANULARITY_KB", "2097152", 0}, {"CUMEM_HOST_GRANULARITY_KB", "64K", 1},
    {"CUMEM_HOST_MEMORY_MB", "0", 0},          {"CUMEM_HOST_MEMORY_MB", "2", 1},
    {"CUMEM_HOST_MEMORY_MB", "1", 0}, /* less than one granule (2 MiB by default): nothing would fit */
    {"CUMEM_HOST_MEMORY_MB", "-1", 0},         {"CUMEM_HOST_MEMORY_MB", "17592186044416", 0},
    {"CUMEM_HOST_MEMORY_MB", "18446744073709551615", 0}, {"CUMEM_HOST_MEMORY_MB", "1048576", 1},
    {"CUMEM_HOST_MEMORY_MB", "16G", 1},        {"CUMEM_HOST_MEMORY_MB", "lots", 0},
    {"CUMEM_HOST_DEVICES", "0", 0},            {"CUMEM_HOST_DEVICES", "1", 1},
    {"CUMEM_HOST_DEVICES", "64", 1},           {"CUMEM_HOST_DEVICES", "65", 0},
    {"CUMEM_HOST_DEVICES", "-1", 0},           {"CUMEM_HOST_DEVICES", "4294967296", 0},
    {"CUMEM_HOST_DEVICES", "99999999999999999999", 0}, {"CUMEM_HOST_DEVICES", "2x", 0},
    {"CUMEM_HOST_POISON", "0", 1},             {"CUMEM_HOST_POISON", "1", 1},
    {"CUMEM_HOST_POISON", "2", 0},             {"CUMEM_HOST_POISON", "on", 0},
    {"CUMEM_HOST_POISON", "-1", 0},
};

TEST(host_backend_settings_are_validated) {
  for (size_t i = 0; i < sizeof host_trials / sizeof host_trials[0]; i++) {
    const host_trial_t *t = &host_trials[i];
    const char *old = getenv(t->env);
    char *saved = old ? strdup(old) : NULL;
    setenv(t->env, t->text, 1);
    cumem_backend_t *b = NULL;
    int rc = cumem_backend_host(&b);
    if (saved) setenv(t->env, saved, 1);
    else unsetenv(t->env);
    free(saved);
    if (t->ok) {
      if (rc != 0) fprintf(stderr, "  %s=%s: %s\n", t->env, t->text, cumem_last_error());
      CHECK(rc == 0);
      b->destroy(b);
    } else {
      CHECK_REFUSED(rc, t->env, t->text);
      CHECK(b == NULL);
    }
  }
  /* The granularity the backend then reports is the one asked for. */
  setenv("CUMEM_HOST_GRANULARITY_KB", "64", 1);
  cumem_backend_t *b = NULL;
  int rc = cumem_backend_host(&b);
  unsetenv("CUMEM_HOST_GRANULARITY_KB");
  CHECK_OK(rc);
  cumem_device_info_t info;
  CHECK_OK(b->device_info(b, 0, &info));
  b->destroy(b);
  CHECK(info.granularity == 64 << 10);
}

RUN_TESTS("options", T(every_option_from_the_environment), T(every_option_through_options_set),
          T(every_option_through_the_struct), T(environment_sizes_take_units), T(empty_environment_means_default),
          T(malformed_environment_is_remembered_until_replaced), T(copy_chunk_extremes_lose_nothing),
          T(host_backend_settings_are_validated))
