/* Skip unchanged copy chunks at sleep (src/skip.h): bit-exact after every
 * wake whatever changed — one byte at every chunk position, random
 * mutations checked against a model of device and backup, content changed
 * and changed back, writes through a backup view, discards with and
 * without zeroing, retention off — and nothing lost when any backend call
 * of such a sleep fails (fingerprinting, the copies of changed chunks, the
 * releases). Runs on the host backend (CI) and on cuda (the GPU kernel). */
#include "harness.h"

#include <unistd.h>

#define MiB ((size_t)1 << 20)

/* Options for these tests: skipping on, small copy chunks (several per
 * allocation), retention and zeroing as asked. */
static void skip_options(cumem_options_t *o, size_t copy_chunk, int retain, int zero) {
  cumem_options_init(o);
  o->skip_unchanged = 1;
  o->copy_chunk = copy_chunk;
  o->retain_backup = retain;
  o->zero_on_wake = zero;
  o->host_threads = 2;
}

/* An instance that skips, with 1 MiB copy chunks and retained backups. */
static int open_skipping(cumem_t **cm) {
  cumem_options_t o;
  skip_options(&o, MiB, 1, 0);
  return test_open(cm, NULL, &o);
}

static int device_equals(cumem_t *cm, const void *dev, const unsigned char *want, size_t n) {
  unsigned char *got = malloc(n);
  int ok = got && cumem_copy_to_host(cm, got, dev, n) == 0 && memcmp(got, want, n) == 0;
  free(got);
  return ok;
}

static const char *ALL_OFFLOADED[] = {"w", NULL};

static size_t skipped_now(cumem_t *cm, const char *tag) {
  cumem_stats_t s;
  return cumem_stats(cm, tag, &s) == 0 ? s.bytes_skipped : (size_t)-1;
}

/* An allocation of n bytes (a multiple of the granularity) under tag "w",
 * filled with pattern `seed`; *model receives a host copy to free. */
static int alloc_model(cumem_t *cm, void **w, size_t n, unsigned seed, unsigned char **model) {
  *model = malloc(n);
  if (!*model) return CUMEM_ENOHOST;
  for (size_t i = 0; i < n; i++) (*model)[i] = pattern_byte(i, seed);
  int rc = cumem_alloc(cm, w, n, 0, "w");
  return rc ? rc : cumem_copy_to_device(cm, *w, *model, n);
}

/* ---- unchanged, and one byte at every position of every chunk ---- */

TEST(unchanged_allocation_is_not_copied_and_stays_exact) {
  cumem_t *cm = NULL;
  CHECK_OK(open_skipping(&cm));
  size_t n = 4 * granularity_of(cm);
  void *w;
  unsigned char *model;
  CHECK_OK(alloc_model(cm, &w, n, 21, &model));

  CHECK_OK(cumem_sleep(cm, NULL, ALL_OFFLOADED)); /* the first: nothing to compare with */
  CHECK(skipped_now(cm, NULL) == 0);
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK(skipped_now(cm, NULL) == 0); /* only while asleep */
  for (int round = 0; round < 3; round++) {
    CHECK_OK(cumem_sleep(cm, NULL, ALL_OFFLOADED));
    cumem_stats_t s;
    CHECK_OK(cumem_stats(cm, "w", &s));
    CHECK(s.bytes_backed_up == n && s.bytes_skipped == n && s.bytes_mapped == 0);
    cumem_backend_counters_t c;
    CHECK_OK(cumem_backend_counters(cm, &c));
    CHECK(c.handles == 0 && c.streams == 0 && c.events == 0);
    CHECK_OK(cumem_wake(cm, NULL));
    CHECK(device_equals(cm, w, model, n));
  }
  free(model);
  CHECK_OK(cumem_free(cm, w));
  CHECK(counters_zero(cm));
  CHECK_OK(cumem_close(cm));
}

/* One byte flipped at the start, middle and end of each chunk in turn (so
 * at both sides of every chunk boundary): exactly that chunk is copied, and
 * wake restores the flipped byte. */
TEST(one_byte_per_chunk_position_is_copied_and_restored) {
  cumem_t *cm = NULL;
  cumem_options_t o;
  const size_t chunk = MiB;
  skip_options(&o, chunk, 1, 0);
  CHECK_OK(test_open(&cm, NULL, &o));
  size_t n = 4 * granularity_of(cm), nchunks = (n + chunk - 1) / chunk;
  void *w;
  unsigned char *model;
  CHECK_OK(alloc_model(cm, &w, n, 22, &model));
  CHECK_OK(cumem_sleep(cm, NULL, ALL_OFFLOADED));
  CHECK_OK(cumem_wake(cm, NULL));
  for (size_t c = 0; c < nchunks; c++) {
    size_t len = n - c * chunk < chunk ? n - c * chunk : chunk;
    size_t positions[] = {c * chunk, c * chunk + len / 2 + 7, c * chunk + len - 1};
    for (int p = 0; p < 3; p++) {
      size_t at = positions[p];
      model[at] ^= 0x80;
      CHECK_OK(cumem_copy_to_device(cm, (char *)w + at, model + at, 1));
      CHECK_OK(cumem_sleep(cm, NULL, ALL_OFFLOADED));
      size_t skipped = skipped_now(cm, "w");
      if (skipped != n - len) {
        fprintf(stderr, "  byte %zu (chunk %zu): %zu bytes skipped, want %zu\n", at, c, skipped, n - len);
        CHECK(0);
      }
      CHECK_OK(cumem_wake(cm, NULL));
      if (!device_equals(cm, w, model, n)) {
        fprintf(stderr, "  byte %zu (chunk %zu): not restored\n", at, c);
        CHECK(0);
      }
    }
  }
  free(model);
  CHECK_OK(cumem_free(cm, w));
  CHECK_OK(cumem_close(cm));
}

/* More allocations than the events and kernels kept in flight, spread over
 * two devices where there are two (the host backend emulates them): every
 * allocation's answer is its own. */
TEST(many_allocations_on_several_devices) {
  enum { N = 3 * 20 + 7 };
  setenv("CUMEM_HOST_DEVICES", "2", 1);
  cumem_t *cm = NULL;
  int rc = open_skipping(&cm);
  unsetenv("CUMEM_HOST_DEVICES");
  CHECK_OK(rc);
  int ndev = 0;
  CHECK_OK(cumem_device_count(cm, &ndev));
  size_t n = granularity_of(cm), last_chunk = n - (n - 1) / MiB * MiB;
  void *p[N];
  unsigned char *model = malloc(N * n);
  CHECK(model);
  for (size_t i = 0; i < N * n; i++) model[i] = pattern_byte(i, 61);
  for (int i = 0; i < N; i++) {
    CHECK_OK(cumem_alloc(cm, &p[i], n, ndev > 1 && i % 3 == 0, "w")); /* the events change devices too */
    CHECK_OK(cumem_copy_to_device(cm, p[i], model + (size_t)i * n, n));
  }
  CHECK_OK(cumem_sleep(cm, NULL, ALL_OFFLOADED));
  CHECK_OK(cumem_wake(cm, NULL));
  for (int round = 0; round < 3; round++) {
    size_t changed = 0;
    for (int i = round; i < N; i += 5) { /* one byte in the last copy chunk of some */
      size_t at = (size_t)i * n + n - 1 - (size_t)round;
      model[at] ^= 0x3c;
      CHECK_OK(cumem_copy_to_device(cm, (char *)p[i] + n - 1 - round, model + at, 1));
      changed += last_chunk;
    }
    CHECK_OK(cumem_sleep(cm, NULL, ALL_OFFLOADED));
    CHECK(skipped_now(cm, "w") == N * n - changed);
    CHECK_OK(cumem_wake(cm, NULL));
    for (int i = 0; i < N; i++) CHECK(device_equals(cm, p[i], model + (size_t)i * n, n));
  }
  free(model);
  CHECK_OK(cumem_close(cm));
}

/* ---- a model of device and backup, random mutations between cycles ---- */

#define NA 4

typedef struct model_alloc {
  void *p;
  size_t n;
  const char *tag;
  unsigned char *dev; /* what the device holds (when known) */
  unsigned char *bk;  /* what the backup holds (when bk_valid) */
  int known, bk_valid, fp_ok, viewed;
  int saved; /* the last sleep saved its content: backup_view shows it */
} model_alloc_t;

typedef struct model {
  cumem_t *cm;
  cumem_options_t o;
  size_t chunk;
  model_alloc_t a[NA];
  uint64_t rng;
} model_t;

static uint64_t rnd(model_t *m) {
  m->rng ^= m->rng << 13;
  m->rng ^= m->rng >> 7;
  m->rng ^= m->rng << 17;
  return m->rng;
}

/* The skip choice of each tag: on (tag), on (inherits the instance's), off. */
static const char *TAGS[] = {"on", "inherit", "off"};
static int tag_skips(const model_t *m, const char *tag) { return strcmp(tag, "off") != 0 && m->o.skip_unchanged; }

static int write_dev(model_t *m, model_alloc_t *a, size_t at, size_t len) {
  return cumem_copy_to_device(m->cm, (char *)a->p + at, a->dev + at, len);
}

/* Change something in a, of one kind or another. */
static int mutate(model_t *m, model_alloc_t *a) {
  size_t nchunks = (a->n + m->chunk - 1) / m->chunk, c = rnd(m) % nchunks, at;
  switch (rnd(m) % 7) {
  case 0: /* one byte at the start of a chunk */
    at = c * m->chunk;
    a->dev[at] ^= (unsigned char)(1 + rnd(m) % 255);
    return write_dev(m, a, at, 1);
  case 1: /* one byte at its end */
    at = c * m->chunk + m->chunk - 1 < a->n ? c * m->chunk + m->chunk - 1 : a->n - 1;
    a->dev[at] ^= 0x01;
    return write_dev(m, a, at, 1);
  case 2: /* two bytes across a chunk boundary */
    if (nchunks < 2) return 0;
    at = (1 + rnd(m) % (nchunks - 1)) * m->chunk - 1;
    a->dev[at] ^= 0x10;
    a->dev[at + 1] ^= 0x20;
    return write_dev(m, a, at, 2);
  case 3: { /* a random range */
    size_t len = 1 + rnd(m) % (2 * m->chunk);
    at = rnd(m) % a->n;
    if (len > a->n - at) len = a->n - at;
    for (size_t i = 0; i < len; i++) a->dev[at + i] = (unsigned char)rnd(m);
    return write_dev(m, a, at, len);
  }
  case 4: { /* a chunk back to what the backup holds (changed, then changed back) */
    if (!a->bk_valid) return 0;
    at = c * m->chunk;
    size_t len = a->n - at < m->chunk ? a->n - at : m->chunk;
    memcpy(a->dev + at, a->bk + at, len);
    return write_dev(m, a, at, len);
  }
  case 5: /* a word swapped with its neighbour: same bytes, other places */
    at = (rnd(m) % (a->n / 32)) * 32;
    for (int i = 0; i < 16; i++) {
      unsigned char t = a->dev[at + i];
      a->dev[at + i] = a->dev[at + 16 + i];
      a->dev[at + 16 + i] = t;
    }
    return write_dev(m, a, at, 32);
  default: /* nothing */
    return 0;
  }
}

/* Make the content known again after a discard: new bytes, or the backup's. */
static int rewrite(model_t *m, model_alloc_t *a) {
  if (a->bk_valid && rnd(m) % 2) memcpy(a->dev, a->bk, a->n);
  else
    for (size_t i = 0; i < a->n; i++) a->dev[i] = (unsigned char)rnd(m);
  a->known = 1;
  return write_dev(m, a, 0, a->n);
}

/* Write through a backup view: the backup changes behind cumem's back. */
static int scribble_backup(model_t *m, model_alloc_t *a) {
  void *host;
  size_t len;
  int rc = cumem_backup_view(m->cm, a->p, &host, &len);
  if (rc) return rc;
  if (len != a->n) return CUMEM_EINVAL;
  size_t at = rnd(m) % a->n;
  ((unsigned char *)host)[at] ^= 0x5a;
  a->bk[at] ^= 0x5a;
  a->viewed = 1;
  a->fp_ok = 0;
  return 0;
}

static size_t expected_skip(const model_t *m, const model_alloc_t *a) {
  if (!(tag_skips(m, a->tag) && m->o.retain_backup && !a->viewed && a->bk_valid && a->fp_ok)) return 0;
  size_t skipped = 0;
  for (size_t at = 0; at < a->n; at += m->chunk) {
    size_t len = a->n - at < m->chunk ? a->n - at : m->chunk;
    if (memcmp(a->dev + at, a->bk + at, len) == 0) skipped += len;
  }
  return skipped;
}

static void model_run(int retain, int zero, int cycles, uint64_t seed) {
  model_t m;
  memset(&m, 0, sizeof m);
  m.rng = seed;
  m.chunk = MiB / 2;
  skip_options(&m.o, m.chunk, retain, zero);
  CHECK_OK(test_open(&m.cm, NULL, &m.o));
  size_t g = granularity_of(m.cm);
  cumem_tag_options_t to;
  cumem_tag_options_init(&to);
  to.skip_unchanged = 1;
  CHECK_OK(cumem_tag_set_options(m.cm, "on", &to));
  to.skip_unchanged = 0;
  CHECK_OK(cumem_tag_set_options(m.cm, "off", &to));
  size_t sizes[NA] = {g, 2 * g, 3 * g, g};
  const char *tags[NA] = {TAGS[0], TAGS[1], TAGS[2], TAGS[1]};
  for (int i = 0; i < NA; i++) {
    model_alloc_t *a = &m.a[i];
    a->n = sizes[i];
    a->tag = tags[i];
    a->dev = malloc(a->n);
    a->bk = malloc(a->n);
    CHECK(a->dev && a->bk);
    CHECK_OK(cumem_alloc(m.cm, &a->p, a->n, 0, a->tag));
    CHECK_OK(rewrite(&m, a));
  }
  for (int cycle = 0; cycle < cycles; cycle++) {
    /* Awake: change things. */
    for (int i = 0; i < NA; i++) {
      model_alloc_t *a = &m.a[i];
      if (!a->known) CHECK_OK(rewrite(&m, a));
      for (int k = (int)(rnd(&m) % 4); k > 0; k--) CHECK_OK(mutate(&m, a));
      if (a->bk_valid && rnd(&m) % 10 == 0) {
        if (a->saved) CHECK_OK(scribble_backup(&m, a));
        else CHECK_RC(scribble_backup(&m, a), CUMEM_ENOTFOUND); /* discarded: nothing valid to view */
      }
    }
    if (rnd(&m) % 12 == 0) { /* give the retained backups back */
      CHECK_OK(cumem_release_backup(m.cm, NULL));
      for (int i = 0; i < NA; i++) m.a[i].bk_valid = m.a[i].fp_ok = m.a[i].viewed = m.a[i].saved = 0;
    }
    /* Sleep, each tag offloaded or discarded at random. */
    const char *off[4];
    int noff = 0, offloaded[NA];
    for (int t = 0; t < 3; t++)
      if (rnd(&m) % 10 < 7) off[noff++] = TAGS[t];
    off[noff] = NULL;
    size_t want_skipped = 0, want_backed = 0;
    for (int i = 0; i < NA; i++) {
      model_alloc_t *a = &m.a[i];
      offloaded[i] = 0;
      for (int t = 0; t < noff; t++) offloaded[i] |= !strcmp(off[t], a->tag);
      if (!offloaded[i]) continue;
      want_skipped += expected_skip(&m, a);
      want_backed += a->n;
    }
    CHECK_OK(cumem_sleep(m.cm, NULL, off));
    cumem_stats_t s;
    CHECK_OK(cumem_stats(m.cm, NULL, &s));
    if (s.bytes_skipped != want_skipped || s.bytes_backed_up != want_backed) {
      fprintf(stderr, "  cycle %d: %zu of %zu bytes skipped, the model says %zu of %zu\n", cycle,
              s.bytes_skipped, s.bytes_backed_up, want_skipped, want_backed);
      CHECK(0);
    }
    for (int i = 0; i < NA; i++) {
      model_alloc_t *a = &m.a[i];
      a->saved = offloaded[i];
      if (!offloaded[i]) { /* discarded: the backup vouches for nothing, no skip next time */
        a->fp_ok = 0;
        continue;
      }
      memcpy(a->bk, a->dev, a->n);
      a->bk_valid = 1;
      a->fp_ok = tag_skips(&m, a->tag) && retain && !a->viewed;
    }
    /* Wake: every offloaded byte back; discarded ones zero or unknown. */
    CHECK_OK(cumem_wake(m.cm, NULL));
    for (int i = 0; i < NA; i++) {
      model_alloc_t *a = &m.a[i];
      if (!offloaded[i]) {
        if (zero) memset(a->dev, 0, a->n);
        a->known = zero;
      }
      if (a->known && !device_equals(m.cm, a->p, a->dev, a->n)) {
        fprintf(stderr, "  cycle %d: allocation %d (tag %s, %s) differs after wake\n", cycle, i, a->tag,
                offloaded[i] ? "offloaded" : "discarded");
        CHECK(0);
      }
      if (!retain) a->bk_valid = a->fp_ok = a->viewed = a->saved = 0;
    }
  }
  for (int i = 0; i < NA; i++) {
    CHECK_OK(cumem_free(m.cm, m.a[i].p));
    free(m.a[i].dev);
    free(m.a[i].bk);
  }
  CHECK(counters_zero(m.cm));
  CHECK_OK(cumem_close(m.cm));
}

TEST(model_checked_random_mutations) { model_run(1, 0, 60, 0x9e3779b97f4a7c15ull); }
TEST(model_checked_with_zero_on_wake) { model_run(1, 1, 40, 0x2545f4914f6cdd1dull); }
TEST(model_checked_with_retention_off) { model_run(0, 0, 20, 0xda942042e4dd58b5ull); }

/* ---- views, options ---- */

/* A backup view is writable for as long as the backup lives: once one was
 * handed out, the backup's content is unknown to cumem and never skipped. */
TEST(backup_view_stops_skipping_until_the_backup_is_given_back) {
  cumem_t *cm = NULL;
  CHECK_OK(open_skipping(&cm));
  size_t n = 2 * granularity_of(cm);
  void *w;
  CHECK_OK(cumem_alloc(cm, &w, n, 0, "w"));
  CHECK_OK(fill_pattern(cm, w, n, 31));
  CHECK_OK(cumem_sleep(cm, NULL, ALL_OFFLOADED));
  CHECK_OK(cumem_wake(cm, NULL));
  void *host;
  size_t len;
  CHECK_OK(cumem_backup_view(cm, w, &host, &len));
  CHECK(len == n);
  for (int round = 0; round < 2; round++) {
    memset(host, 0xAB, n); /* the backup no longer holds what the device does */
    CHECK_OK(cumem_sleep(cm, NULL, ALL_OFFLOADED));
    CHECK(skipped_now(cm, "w") == 0);
    CHECK_OK(cumem_wake(cm, NULL));
    CHECK(has_pattern(cm, w, n, 31));
  }
  /* Given back and made again: skipping resumes from the next sleep on. */
  CHECK_OK(cumem_release_backup(cm, NULL));
  CHECK_OK(cumem_sleep(cm, NULL, ALL_OFFLOADED));
  CHECK(skipped_now(cm, "w") == 0);
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK_OK(cumem_sleep(cm, NULL, ALL_OFFLOADED));
  CHECK(skipped_now(cm, "w") == n);
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK(has_pattern(cm, w, n, 31));
  CHECK_OK(cumem_free(cm, w));
  CHECK_OK(cumem_close(cm));
}

/* The instance's option (and CUMEM_SKIP_UNCHANGED), overridden per tag in
 * both directions. */
TEST(option_environment_and_tags) {
  setenv("CUMEM_SKIP_UNCHANGED", "1", 1);
  cumem_options_t o;
  cumem_options_init(&o);
  CHECK(o.skip_unchanged == 1);
  setenv("CUMEM_SKIP_UNCHANGED", "0", 1);
  cumem_options_init(&o);
  CHECK(o.skip_unchanged == 0);
  unsetenv("CUMEM_SKIP_UNCHANGED");

  for (int global = 0; global < 2; global++) {
    cumem_t *cm = NULL;
    skip_options(&o, MiB, 1, 0);
    o.skip_unchanged = global;
    CHECK_OK(test_open(&cm, NULL, &o));
    size_t n = granularity_of(cm);
    cumem_tag_options_t to;
    cumem_tag_options_init(&to);
    to.skip_unchanged = !global; /* the opposite of the instance */
    CHECK_OK(cumem_tag_set_options(cm, "tagged", &to));
    void *p_tagged, *p_plain;
    CHECK_OK(cumem_alloc(cm, &p_tagged, n, 0, "tagged"));
    CHECK_OK(cumem_alloc(cm, &p_plain, n, 0, "plain"));
    CHECK_OK(fill_pattern(cm, p_tagged, n, 1));
    CHECK_OK(fill_pattern(cm, p_plain, n, 2));
    const char *both[] = {"tagged", "plain", NULL};
    for (int round = 0; round < 2; round++) {
      CHECK_OK(cumem_sleep(cm, NULL, both));
      size_t want_tagged = round && !global ? n : 0, want_plain = round && global ? n : 0;
      CHECK(skipped_now(cm, "tagged") == want_tagged);
      CHECK(skipped_now(cm, "plain") == want_plain);
      CHECK_OK(cumem_wake(cm, NULL));
    }
    CHECK(has_pattern(cm, p_tagged, n, 1) && has_pattern(cm, p_plain, n, 2));
    CHECK_OK(cumem_close(cm));
  }
}

/* A disk tag's backup is a file, written whole: nothing skipped. The host
 * backup it leaves behind is stale for cumem (disk.c drops its `filled`), so
 * back on the host, the first sleep copies everything again. */
TEST(disk_tags_copy_everything_and_leave_no_trusted_host_backup) {
  char dir[] = "/tmp/cumem-skip-XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  cumem_t *cm = NULL;
  cumem_options_t o;
  skip_options(&o, MiB, 1, 0);
  o.disk_dir = dir;
  int rc = test_open(&cm, NULL, &o);
  if (rc) rmdir(dir);
  CHECK_OK(rc);
  size_t n = 2 * granularity_of(cm);
  void *w;
  unsigned char *model;
  CHECK_OK(alloc_model(cm, &w, n, 51, &model));
  for (int round = 0; round < 2; round++) { /* on the host: recorded, then skipped */
    CHECK_OK(cumem_sleep(cm, NULL, ALL_OFFLOADED));
    CHECK(skipped_now(cm, "w") == (round ? n : 0));
    CHECK_OK(cumem_wake(cm, NULL));
  }
  cumem_tag_options_t t;
  CHECK_OK(cumem_tag_get_options(cm, "w", &t));
  t.backup = CUMEM_BACKUP_DISK;
  CHECK_OK(cumem_tag_set_options(cm, "w", &t));
  CHECK_OK(cumem_sleep(cm, NULL, ALL_OFFLOADED)); /* unchanged, but to disk: written whole */
  cumem_stats_t s;
  CHECK_OK(cumem_stats(cm, "w", &s));
  CHECK(s.bytes_on_disk == n && s.bytes_skipped == 0);
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK(device_equals(cm, w, model, n));
  model[n - 1] ^= 1;
  CHECK_OK(cumem_copy_to_device(cm, (char *)w + n - 1, model + n - 1, 1));
  t.backup = CUMEM_BACKUP_HOST;
  CHECK_OK(cumem_tag_set_options(cm, "w", &t));
  for (int round = 0; round < 2; round++) { /* back on the host: all copied, then skipped */
    CHECK_OK(cumem_sleep(cm, NULL, ALL_OFFLOADED));
    CHECK(skipped_now(cm, "w") == (round ? n : 0));
    CHECK_OK(cumem_wake(cm, NULL));
    CHECK(device_equals(cm, w, model, n));
  }
  free(model);
  CHECK_OK(cumem_close(cm));
  CHECK(rmdir(dir) == 0);
}

/* ---- failures: nothing lost ---- */

typedef struct world {
  cumem_t *cm;
  cumem_backend_t *fault;
  void *w1, *w2, *kv;
  size_t n1, n2, nk;
  unsigned char *m1, *m2; /* the model of w1 and w2 */
} world_t;

static int world_open(world_t *w) {
  memset(w, 0, sizeof *w);
  cumem_options_t o;
  skip_options(&o, MiB, 1, 0);
  o.chunk_size = 2 * MiB; /* several physical chunks too */
  int rc = test_open(&w->cm, &w->fault, &o);
  if (rc) return rc;
  size_t g = granularity_of(w->cm);
  w->n1 = 3 * g;
  w->n2 = 2 * g;
  w->nk = 2 * g;
  w->m1 = malloc(w->n1);
  w->m2 = malloc(w->n2);
  if (!w->m1 || !w->m2) return CUMEM_ENOHOST;
  for (size_t i = 0; i < w->n1; i++) w->m1[i] = pattern_byte(i, 41);
  for (size_t i = 0; i < w->n2; i++) w->m2[i] = pattern_byte(i, 42);
  if ((rc = cumem_alloc(w->cm, &w->w1, w->n1, 0, "w")) || (rc = cumem_alloc(w->cm, &w->w2, w->n2, 0, "w")) ||
      (rc = cumem_alloc(w->cm, &w->kv, w->nk, 0, "kv")) ||
      (rc = cumem_copy_to_device(w->cm, w->w1, w->m1, w->n1)) ||
      (rc = cumem_copy_to_device(w->cm, w->w2, w->m2, w->n2)))
    return rc;
  /* The backups are written once, with their fingerprints. */
  if ((rc = cumem_sleep(w->cm, NULL, ALL_OFFLOADED)) || (rc = cumem_wake(w->cm, NULL))) return rc;
  return 0;
}

static int world_intact(world_t *w) {
  return device_equals(w->cm, w->w1, w->m1, w->n1) && device_equals(w->cm, w->w2, w->m2, w->n2);
}

/* Close and check that everything was given back. (A fingerprint arena
 * whose unlocking failed stays until the next sleep, release_backup or
 * close: give it back first.) */
static int world_close(world_t *w) {
  int ok = 1;
  void *ptrs[] = {w->w1, w->w2, w->kv};
  for (int i = 0; i < 3; i++)
    if (ptrs[i] && cumem_free(w->cm, ptrs[i]) != 0) ok = 0;
  if (cumem_release_backup(w->cm, NULL) != 0) ok = 0;
  cumem_backend_counters_t c;
  if (ok && !counters_zero(w->cm) && cumem_backend_counters(w->cm, &c) == 0) {
    fprintf(stderr, "  left alive: %ld reservations, %ld handles, %ld mappings, %ld registrations, %ld streams, %ld events\n",
            c.reservations, c.handles, c.mappings, c.host_registrations, c.streams, c.events);
    ok = 0;
  }
  cumem_close(w->cm);
  free(w->m1);
  free(w->m2);
  return ok;
}

static int set_bytes(world_t *w, unsigned char *model, void *dev, size_t at, const unsigned char *bytes, size_t n) {
  memcpy(model + at, bytes, n);
  return cumem_copy_to_device(w->cm, (char *)dev + at, bytes, n);
}

/* Fail the k-th backend call (of `op`, or of any) of a sleep that has
 * something to skip and something to copy, for k = 1, 2, ... Each time:
 * the failure is reported, nothing leaks, a wake restores every byte; then
 * the chunk that changed is changed back (its old content is what an
 * untrusted backup would still claim to hold) and a sleep and wake with
 * skipping restore every byte again. */
static void sweep(const char *op, int persistent) {
  int reached_end = 0;
  for (long k = 1; k < 5000 && !reached_end; k++) {
    world_t w;
    CHECK_OK(world_open(&w));
    size_t at = w.n1 / 2 + 5; /* in the middle chunk of w1 */
    unsigned char old[64], fresh[64];
    memcpy(old, w.m1 + at, sizeof old);
    for (size_t i = 0; i < sizeof fresh; i++) fresh[i] = (unsigned char)~old[i];
    CHECK_OK(set_bytes(&w, w.m1, w.w1, at, fresh, sizeof fresh));
    unsigned char last = (unsigned char)~w.m2[w.n2 - 1];
    CHECK_OK(set_bytes(&w, w.m2, w.w2, w.n2 - 1, &last, 1));

    CHECK_RC(cumem_free(w.cm, NULL), CUMEM_EINVAL); /* a detail a successful sleep must leave alone */
    cumem_fault_arm(w.fault, k, op, CUMEM_EDRIVER, persistent);
    int rc = cumem_sleep(w.cm, NULL, ALL_OFFLOADED);
    long injected = cumem_fault_injected(w.fault);
    cumem_fault_arm(w.fault, 0, NULL, 0, 0);
    if (injected == 0) {
      CHECK_OK(rc);
      reached_end = 1;
    } else if (rc) {
      CHECK(strstr(cumem_last_error(), "fault injected") != NULL);
    } else { /* skipping failed and the sleep copied instead */
      CHECK(strstr(cumem_last_error(), "ptr is NULL") != NULL);
    }
    cumem_backend_counters_t c;
    CHECK_OK(cumem_backend_counters(w.cm, &c));
    CHECK(c.streams == 0 && c.events == 0);
    CHECK_OK(cumem_wake(w.cm, NULL));
    if (!world_intact(&w)) {
      fprintf(stderr, "  %s k=%ld%s: lost after the failed sleep and a wake\n", op ? op : "any call", k,
              persistent ? " (persistent)" : "");
      CHECK(0);
    }
    /* Changed back: whatever the failed sleep wrote into the backup must not
     * be taken for this content. */
    CHECK_OK(set_bytes(&w, w.m1, w.w1, at, old, sizeof old));
    CHECK_OK(cumem_sleep(w.cm, NULL, ALL_OFFLOADED));
    CHECK_OK(cumem_wake(w.cm, NULL));
    if (!world_intact(&w)) {
      fprintf(stderr, "  %s k=%ld%s: lost after changing back\n", op ? op : "any call", k,
              persistent ? " (persistent)" : "");
      CHECK(0);
    }
    CHECK(world_close(&w));
  }
  CHECK(reached_end);
}

TEST(every_failure_during_a_skipping_sleep) { sweep(NULL, 0); }
TEST(persistent_failures_during_a_skipping_sleep) { sweep(NULL, 1); }
TEST(fingerprinting_failures) { sweep("fingerprint", 0); }
TEST(fingerprinting_always_failing) { sweep("fingerprint", 1); }
TEST(failures_of_the_partial_copies) { sweep("copy_to_host", 0); }

RUN_TESTS("skip",
          T(unchanged_allocation_is_not_copied_and_stays_exact),
          T(one_byte_per_chunk_position_is_copied_and_restored),
          T(many_allocations_on_several_devices),
          T(model_checked_random_mutations),
          T(model_checked_with_zero_on_wake),
          T(model_checked_with_retention_off),
          T(backup_view_stops_skipping_until_the_backup_is_given_back),
          T(option_environment_and_tags),
          T(disk_tags_copy_everything_and_leave_no_trusted_host_backup),
          T(every_failure_during_a_skipping_sleep),
          T(persistent_failures_during_a_skipping_sleep),
          T(fingerprinting_failures),
          T(fingerprinting_always_failing),
          T(failures_of_the_partial_copies))
