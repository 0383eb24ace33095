/* The core's contract: addresses, bit-exact restore, discard, tags,
 * idempotence, free in every state, bad input, retention, out of memory. */
#include "harness.h"

#define MiB ((size_t)1 << 20)

static cumem_t *open_with(const cumem_options_t *opts) {
  cumem_t *cm = NULL;
  return test_open(&cm, NULL, opts) == 0 ? cm : NULL;
}

static cumem_t *open_default(void) { return open_with(NULL); }

TEST(alloc_rounds_to_granularity) {
  cumem_t *cm = open_default();
  CHECK(cm);
  size_t g = granularity_of(cm);
  CHECK(g > 0);
  void *p = NULL;
  CHECK_OK(cumem_alloc(cm, &p, g + 1, 0, "w"));
  CHECK(p && (uintptr_t)p % g == 0);
  cumem_alloc_info_t info;
  CHECK_OK(cumem_query(cm, (char *)p + g + 5, &info)); /* any address inside */
  CHECK(info.ptr == p && info.size == 2 * g && info.requested == g + 1);
  CHECK(strcmp(info.tag, "w") == 0 && !info.asleep && !info.backed_up);
  cumem_backend_counters_t c;
  CHECK_OK(cumem_backend_counters(cm, &c));
  CHECK(c.reservations == 1 && c.handles == 1 && c.mappings == 1);
  CHECK_OK(fill_pattern(cm, p, g + 1, 1));
  CHECK(has_pattern(cm, p, g + 1, 1));
  CHECK_OK(cumem_free(cm, p));
  CHECK(counters_zero(cm));
  CHECK_OK(cumem_close(cm));
}

TEST(sleep_offload_restores_bit_exact_at_same_address) {
  cumem_t *cm = open_default();
  CHECK(cm);
  size_t g = granularity_of(cm), wsize = 3 * g + 12345, ksize = 4 * g;
  void *w = NULL, *k = NULL;
  CHECK_OK(cumem_alloc(cm, &w, wsize, 0, "weights"));
  CHECK_OK(cumem_alloc(cm, &k, ksize, 0, "kv"));
  CHECK_OK(fill_pattern(cm, w, wsize, 7));
  CHECK_OK(fill_pattern(cm, k, ksize, 8));
  cumem_device_info_t before, asleep;
  CHECK_OK(cumem_device_info(cm, 0, &before));

  const char *off[] = {"weights", NULL};
  CHECK_OK(cumem_sleep(cm, NULL, off));
  cumem_alloc_info_t iw, ik;
  CHECK_OK(cumem_query(cm, w, &iw));
  CHECK_OK(cumem_query(cm, k, &ik));
  CHECK(iw.asleep && iw.backed_up && ik.asleep && !ik.backed_up);
  cumem_stats_t s;
  CHECK_OK(cumem_stats(cm, NULL, &s));
  CHECK(s.allocations == 2 && s.bytes_mapped == 0 && s.bytes_asleep == s.bytes_allocated);
  CHECK(s.bytes_backed_up == iw.size);
  cumem_backend_counters_t c;
  CHECK_OK(cumem_backend_counters(cm, &c));
  CHECK(c.handles == 0 && c.mappings == 0 && c.reservations == 2 && c.streams == 0 && c.events == 0);
  /* The device really got its memory back (other processes may allocate on
   * a real GPU, so allow slack of a quarter). */
  CHECK_OK(cumem_device_info(cm, 0, &asleep));
  CHECK(asleep.free_bytes >= before.free_bytes + (iw.size + ik.size) * 3 / 4);
  /* Asleep memory cannot be touched through cumem. */
  unsigned char byte;
  CHECK_RC(cumem_copy_to_host(cm, &byte, w, 1), CUMEM_EINVAL);

  CHECK_OK(cumem_wake(cm, NULL));
  CHECK_OK(cumem_query(cm, w, &iw));
  CHECK(iw.ptr == w && !iw.asleep && !iw.backed_up);
  CHECK(has_pattern(cm, w, wsize, 7));
  CHECK_OK(cumem_stats(cm, NULL, &s));
  CHECK(s.bytes_mapped == s.bytes_allocated && s.bytes_asleep == 0 && s.bytes_backed_up == 0);
  CHECK_OK(cumem_close(cm));
}

/* Bytes of [p, p + n) that are not zero, or SIZE_MAX if unreadable. */
static size_t count_nonzero(cumem_t *cm, const void *p, size_t n) {
  unsigned char *h = malloc(n);
  if (!h || cumem_copy_to_host(cm, h, p, n) != 0) {
    free(h);
    return SIZE_MAX;
  }
  size_t nonzero = 0;
  for (size_t i = 0; i < n; i++) nonzero += h[i] != 0;
  free(h);
  return nonzero;
}

/* Discard, wake, and count the non-zero bytes. The host backend poisons new
 * memory (CUMEM_HOST_POISON), so only real zeroing reads zero there. */
static size_t nonzero_after_discard(int zero_on_wake) {
  setenv("CUMEM_HOST_POISON", "1", 1);
  cumem_options_t o;
  cumem_options_init(&o);
  o.zero_on_wake = zero_on_wake;
  cumem_t *cm = open_with(&o);
  unsetenv("CUMEM_HOST_POISON");
  if (!cm) return SIZE_MAX;
  size_t n = 2 * granularity_of(cm), nonzero = SIZE_MAX;
  void *k;
  if (cumem_alloc(cm, &k, n, 0, "kv") == 0 && fill_pattern(cm, k, n, 3) == 0 &&
      cumem_sleep(cm, NULL, NULL) == 0 && cumem_wake(cm, NULL) == 0)
    nonzero = count_nonzero(cm, k, n);
  cumem_close(cm);
  return nonzero;
}

TEST(discarded_content_reads_zero_with_zero_on_wake) {
  CHECK(nonzero_after_discard(1) == 0);
  if (strcmp(test_backend(), "host") == 0) CHECK(nonzero_after_discard(0) > 0); /* the check can fail */
}

TEST(tags_sleep_and_wake_independently) {
  cumem_t *cm = open_default();
  CHECK(cm);
  size_t n = granularity_of(cm);
  void *a, *b, *c;
  CHECK_OK(cumem_alloc(cm, &a, n, 0, "A"));
  CHECK_OK(cumem_alloc(cm, &b, n, 0, "B"));
  CHECK_OK(cumem_set_current_tag("C"));
  CHECK_OK(cumem_alloc(cm, &c, n, 0, NULL));
  CHECK_OK(cumem_set_current_tag(NULL));
  CHECK(strcmp(cumem_current_tag(), "default") == 0);
  cumem_alloc_info_t info;
  CHECK_OK(cumem_query(cm, c, &info));
  CHECK(strcmp(info.tag, "C") == 0);
  CHECK_OK(fill_pattern(cm, a, n, 1));
  CHECK_OK(fill_pattern(cm, b, n, 2));
  CHECK_OK(fill_pattern(cm, c, n, 3));

  const char *A[] = {"A", NULL}, *B[] = {"B", NULL}, *AC[] = {"A", "C", NULL};
  CHECK_OK(cumem_sleep(cm, AC, AC));
  cumem_stats_t sa, sb, sc;
  CHECK_OK(cumem_stats(cm, "A", &sa));
  CHECK_OK(cumem_stats(cm, "B", &sb));
  CHECK_OK(cumem_stats(cm, "C", &sc));
  CHECK(sa.bytes_asleep == n && sa.bytes_backed_up == n && sb.bytes_mapped == n && sc.bytes_asleep == n);
  CHECK(has_pattern(cm, b, n, 2)); /* B kept working */
  CHECK_OK(cumem_wake(cm, A));
  CHECK(has_pattern(cm, a, n, 1));
  CHECK_OK(cumem_query(cm, c, &info));
  CHECK(info.asleep); /* C still asleep */
  CHECK_OK(cumem_sleep(cm, B, B));
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK(has_pattern(cm, b, n, 2) && has_pattern(cm, c, n, 3));

  const char *names[8];
  size_t count = 0;
  CHECK_OK(cumem_tags(cm, names, 8, &count));
  CHECK(count == 3 && strcmp(names[0], "A") == 0 && strcmp(names[2], "C") == 0);
  CHECK_OK(cumem_close(cm));
}

TEST(sleep_and_wake_are_idempotent) {
  cumem_t *cm = open_default();
  CHECK(cm);
  size_t n = 2 * granularity_of(cm);
  void *w;
  CHECK_OK(cumem_alloc(cm, &w, n, 0, "w"));
  CHECK_OK(fill_pattern(cm, w, n, 5));
  const char *W[] = {"w", NULL};
  CHECK_OK(cumem_wake(cm, NULL)); /* awake: no-op */
  CHECK_OK(cumem_sleep(cm, NULL, W));
  CHECK_OK(cumem_sleep(cm, NULL, W)); /* asleep: no-op, backup kept */
  CHECK_OK(cumem_sleep(cm, W, NULL)); /* not even a discard */
  CHECK_OK(cumem_wake(cm, W));
  CHECK_OK(cumem_wake(cm, W));
  CHECK(has_pattern(cm, w, n, 5));
  /* A second cycle reuses the retained backup and still restores. */
  CHECK_OK(fill_pattern(cm, w, n, 6));
  CHECK_OK(cumem_sleep(cm, NULL, W));
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK(has_pattern(cm, w, n, 6));
  CHECK_OK(cumem_close(cm));
}

TEST(free_in_every_state_releases_once) {
  cumem_t *cm = open_default();
  CHECK(cm);
  size_t n = granularity_of(cm);
  void *a, *b, *c;
  CHECK_OK(cumem_alloc(cm, &a, n, 0, "w"));
  CHECK_OK(cumem_alloc(cm, &b, n, 0, "kv"));
  CHECK_OK(cumem_alloc(cm, &c, n, 0, "w"));
  const char *W[] = {"w", NULL};
  CHECK_OK(cumem_sleep(cm, NULL, W));
  CHECK_OK(cumem_free(cm, a)); /* asleep, backed up */
  CHECK_OK(cumem_free(cm, b)); /* asleep, discarded */
  CHECK_RC(cumem_free(cm, a), CUMEM_ENOTFOUND); /* double free */
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK_OK(cumem_free_on_stream(cm, c, NULL)); /* awake, retained backup */
  CHECK(counters_zero(cm));
  cumem_stats_t s;
  CHECK_OK(cumem_stats(cm, NULL, &s));
  CHECK(s.allocations == 0 && s.bytes_allocated == 0 && s.bytes_host_held == 0);
  CHECK_OK(cumem_close(cm));
}

TEST(bad_input_is_refused_and_changes_nothing) {
  cumem_t *cm = open_default();
  CHECK(cm);
  size_t g = granularity_of(cm);
  void *p = NULL, *q = (void *)1;
  CHECK_OK(cumem_alloc(cm, &p, g, 0, "w"));
  cumem_stats_t before, after;
  cumem_backend_counters_t cb, ca;
  CHECK_OK(cumem_stats(cm, NULL, &before));
  CHECK_OK(cumem_backend_counters(cm, &cb));
  cumem_device_info_t info;
  CHECK_OK(cumem_device_info(cm, 0, &info));
  int ndev = 0;
  CHECK_OK(cumem_device_count(cm, &ndev));

  CHECK_RC(cumem_alloc(NULL, &q, g, 0, NULL), CUMEM_EINVAL);
  CHECK_RC(cumem_alloc(cm, NULL, g, 0, NULL), CUMEM_EINVAL);
  CHECK_RC(cumem_alloc(cm, &q, 0, 0, NULL), CUMEM_EINVAL);
  CHECK(q == NULL);
  CHECK_RC(cumem_alloc(cm, &q, info.total_bytes + 1, 0, NULL), CUMEM_E2BIG);
  CHECK_RC(cumem_alloc(cm, &q, SIZE_MAX, 0, NULL), CUMEM_E2BIG);
  CHECK_RC(cumem_alloc(cm, &q, g, -1, NULL), CUMEM_ENODEV);
  CHECK_RC(cumem_alloc(cm, &q, g, ndev, NULL), CUMEM_ENODEV);
  CHECK_RC(cumem_alloc_ex(cm, &q, g, 0, NULL, (uint64_t)1 << 63), CUMEM_ENODEV);
  CHECK_RC(cumem_alloc(cm, &q, g, 0, ""), CUMEM_EINVAL);
  char long_tag[CUMEM_TAG_MAX + 2];
  memset(long_tag, 'x', sizeof long_tag - 1);
  long_tag[sizeof long_tag - 1] = 0;
  CHECK_RC(cumem_alloc(cm, &q, g, 0, long_tag), CUMEM_EINVAL);
  CHECK_RC(cumem_set_current_tag(long_tag), CUMEM_EINVAL);
  CHECK(strcmp(cumem_current_tag(), "default") == 0);
  CHECK(strlen(cumem_last_error()) > 0);

  int local;
  CHECK_RC(cumem_free(cm, &local), CUMEM_ENOTFOUND);
  CHECK_RC(cumem_free(cm, NULL), CUMEM_EINVAL);
  CHECK_RC(cumem_free(cm, (char *)p + 64), CUMEM_EINVAL); /* inside, not the start */
  CHECK_RC(cumem_query(cm, &local, &(cumem_alloc_info_t){0}), CUMEM_ENOTFOUND);

  const char *unknown[] = {"w", "nope", NULL}, *w[] = {"w", NULL};
  CHECK_RC(cumem_sleep(cm, unknown, NULL), CUMEM_ENOTAG);
  CHECK_RC(cumem_sleep(cm, NULL, unknown), CUMEM_ENOTAG);
  CHECK_RC(cumem_wake(cm, unknown), CUMEM_ENOTAG);
  CHECK_RC(cumem_stats(cm, "nope", &after), CUMEM_ENOTAG);
  CHECK_RC(cumem_prepare_backup(cm, unknown), CUMEM_ENOTAG);
  CHECK_RC(cumem_sleep(NULL, w, w), CUMEM_EINVAL);
  CHECK_RC(cumem_device_info(cm, ndev, &info), CUMEM_ENODEV);
  CHECK_RC(cumem_copy_to_host(cm, &local, &local, 1), CUMEM_ENOTFOUND);
  CHECK_RC(cumem_copy_to_device(cm, p, &local, g + 1), CUMEM_EINVAL); /* past the end */
  CHECK_RC(cumem_unmap_release(cm, &local), CUMEM_ENOTFOUND);

  CHECK_OK(cumem_stats(cm, NULL, &after));
  CHECK_OK(cumem_backend_counters(cm, &ca));
  CHECK(memcmp(&before, &after, sizeof before) == 0);
  CHECK(counters_equal(&cb, &ca));
  size_t ntags = 0;
  CHECK_OK(cumem_tags(cm, NULL, 0, &ntags));
  CHECK(ntags == 1); /* refused allocations registered no tag */
  CHECK(strstr(cumem_strerror(CUMEM_ENOMEM), "ENOMEM") != NULL);
  CHECK(strstr(cumem_strerror(12345), "unknown") != NULL);
  CHECK_OK(cumem_close(cm));
  CHECK_OK(cumem_close(NULL));
}

TEST(chunked_backing_restores) {
  cumem_options_t o;
  cumem_options_init(&o);
  cumem_t *probe = open_default();
  CHECK(probe);
  size_t g = granularity_of(probe);
  cumem_close(probe);
  o.chunk_size = 2 * g;
  o.copy_chunk = g / 2; /* several copy segments per chunk */
  cumem_t *cm = open_with(&o);
  CHECK(cm);
  void *w;
  size_t n = 5 * g;
  CHECK_OK(cumem_alloc(cm, &w, n, 0, "w"));
  cumem_backend_counters_t c;
  CHECK_OK(cumem_backend_counters(cm, &c));
  CHECK(c.handles == 3 && c.mappings == 3 && c.reservations == 1);
  CHECK_OK(fill_pattern(cm, w, n, 11));
  const char *W[] = {"w", NULL};
  CHECK_OK(cumem_sleep(cm, NULL, W));
  CHECK_OK(cumem_backend_counters(cm, &c));
  CHECK(c.handles == 0 && c.mappings == 0 && c.host_registrations == 10);
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK(has_pattern(cm, w, n, 11));
  CHECK_OK(cumem_free(cm, w));
  CHECK(counters_zero(cm));
  CHECK_OK(cumem_close(cm));
}

TEST(backups_are_retained_or_released_as_asked) {
  cumem_t *cm = open_default();
  CHECK(cm);
  size_t n = 2 * granularity_of(cm);
  void *w;
  CHECK_OK(cumem_alloc(cm, &w, n, 0, "w"));
  const char *W[] = {"w", NULL};
  cumem_stats_t s;
  CHECK_OK(cumem_prepare_backup(cm, W)); /* pinned ahead of the first sleep */
  void *unused;
  size_t unused_len;
  CHECK_RC(cumem_backup_view(cm, w, &unused, &unused_len), CUMEM_ENOTFOUND); /* empty yet */
  CHECK_OK(cumem_stats(cm, "w", &s));
  CHECK(s.bytes_host_held == n && s.bytes_backed_up == 0);
  CHECK_OK(fill_pattern(cm, w, n, 4));
  CHECK_OK(cumem_sleep(cm, NULL, W));
  void *view = NULL;
  size_t len = 0;
  CHECK_OK(cumem_backup_view(cm, (char *)w + 10, &view, &len));
  CHECK(len == n - 10 && *(unsigned char *)view == pattern_byte(10, 4));
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK_OK(cumem_stats(cm, "w", &s));
  CHECK(s.bytes_host_held == n); /* retained */
  CHECK_OK(cumem_backup_view(cm, w, &view, &len)); /* still readable */
  CHECK(len == n && *(unsigned char *)view == pattern_byte(0, 4));
  CHECK_OK(cumem_release_backup(cm, W));
  CHECK_OK(cumem_stats(cm, "w", &s));
  CHECK(s.bytes_host_held == 0);
  CHECK_RC(cumem_backup_view(cm, w, &view, &len), CUMEM_ENOTFOUND);
  CHECK(has_pattern(cm, w, n, 4));
  CHECK_OK(cumem_close(cm));

  cumem_options_t o;
  cumem_options_init(&o);
  o.retain_backup = 0;
  cm = open_with(&o);
  CHECK(cm);
  CHECK_OK(cumem_alloc(cm, &w, n, 0, "w"));
  CHECK_OK(fill_pattern(cm, w, n, 9));
  CHECK_OK(cumem_sleep(cm, NULL, W));
  CHECK_OK(cumem_stats(cm, "w", &s));
  CHECK(s.bytes_host_held == n && s.bytes_backed_up == n);
  CHECK_OK(cumem_release_backup(cm, W)); /* a sleeping content is never dropped */
  CHECK_OK(cumem_stats(cm, "w", &s));
  CHECK(s.bytes_host_held == n);
  CHECK_OK(cumem_wake(cm, NULL)); /* the backup goes back in the background */
  CHECK_RC(cumem_backup_view(cm, w, &view, &len), CUMEM_ENOTFOUND); /* at once */
  CHECK_OK(cumem_drain(cm));
  CHECK_OK(cumem_stats(cm, "w", &s));
  CHECK(s.bytes_host_held == 0 && s.bytes_host_pinned == 0);
  CHECK(has_pattern(cm, w, n, 9));
  cumem_backend_counters_t c;
  CHECK_OK(cumem_backend_counters(cm, &c));
  CHECK(c.host_registrations == 0);
  CHECK_OK(cumem_close(cm));
}

TEST(out_of_memory_wake_loses_nothing) {
  cumem_t *cm = open_default();
  CHECK(cm);
  size_t g = granularity_of(cm), n = 16 * g;
  void *w, *k, *filler = NULL;
  CHECK_OK(cumem_alloc(cm, &w, n, 0, "w"));
  CHECK_OK(cumem_alloc(cm, &k, n, 0, "kv"));
  CHECK_OK(fill_pattern(cm, w, n, 21));
  const char *W[] = {"w", NULL};
  CHECK_OK(cumem_sleep(cm, NULL, W));
  /* Take the memory from outside while asleep: leave room for half of w. */
  cumem_device_info_t info;
  CHECK_OK(cumem_device_info(cm, 0, &info));
  size_t take = (info.free_bytes - n / 2) / g * g;
  CHECK_OK(cumem_alloc(cm, &filler, take, 0, "filler"));
  cumem_backend_counters_t before, after;
  CHECK_OK(cumem_backend_counters(cm, &before));
  CHECK_RC(cumem_wake(cm, W), CUMEM_ENOMEM);
  CHECK(strlen(cumem_last_error()) > 0);
  CHECK_OK(cumem_backend_counters(cm, &after));
  CHECK(counters_equal(&before, &after)); /* what the wake mapped, it unmapped */
  cumem_stats_t s;
  CHECK_OK(cumem_stats(cm, "w", &s));
  CHECK(s.bytes_backed_up == n && s.bytes_asleep == n);
  CHECK_OK(cumem_free(cm, filler));
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK(has_pattern(cm, w, n, 21));
  CHECK_OK(cumem_close(cm));
}

TEST(out_of_memory_alloc_changes_nothing) {
  cumem_t *cm = open_default();
  CHECK(cm);
  size_t g = granularity_of(cm), n = 4 * g;
  void *w, *filler = NULL, *extra = NULL;
  CHECK_OK(cumem_alloc(cm, &w, n, 0, "w"));
  CHECK_OK(fill_pattern(cm, w, n, 31));
  /* Leave room for half of the next allocation. */
  cumem_device_info_t info;
  CHECK_OK(cumem_device_info(cm, 0, &info));
  CHECK_OK(cumem_alloc(cm, &filler, (info.free_bytes - n / 2) / g * g, 0, "filler"));
  cumem_stats_t before, after;
  cumem_backend_counters_t cb, ca;
  CHECK_OK(cumem_stats(cm, NULL, &before));
  CHECK_OK(cumem_backend_counters(cm, &cb));
  CHECK_RC(cumem_alloc(cm, &extra, n, 0, "extra"), CUMEM_ENOMEM);
  CHECK(extra == NULL && strlen(cumem_last_error()) > 0);
  CHECK_OK(cumem_stats(cm, NULL, &after));
  CHECK_OK(cumem_backend_counters(cm, &ca));
  CHECK(memcmp(&before, &after, sizeof before) == 0 && counters_equal(&cb, &ca));
  CHECK_RC(cumem_stats(cm, "extra", &after), CUMEM_ENOTAG); /* no tag left behind */
  CHECK(has_pattern(cm, w, n, 31));
  CHECK_OK(cumem_free(cm, filler));
  CHECK_OK(cumem_alloc(cm, &extra, n, 0, "extra")); /* recovers once memory is free */
  CHECK(has_pattern(cm, w, n, 31));
  CHECK_OK(cumem_close(cm));
}

TEST(tag_options_create_validate_and_read_back) {
  cumem_t *cm = open_default();
  CHECK(cm);
  cumem_tag_options_t o, got;
  cumem_tag_options_init(&o);
  CHECK(o.backup == CUMEM_BACKUP_HOST && o.skip_unchanged == CUMEM_TAG_INHERIT &&
        o.prepare_ahead == CUMEM_TAG_INHERIT);
  CHECK_RC(cumem_tag_get_options(cm, "later", &got), CUMEM_ENOTAG);
  /* Configuring a tag before its first allocation creates it. */
  o.skip_unchanged = 1;
  CHECK_OK(cumem_tag_set_options(cm, "later", &o));
  CHECK_OK(cumem_tag_get_options(cm, "later", &got));
  CHECK(memcmp(&o, &got, sizeof o) == 0);
  const char *names[4];
  size_t count = 0;
  CHECK_OK(cumem_tags(cm, names, 4, &count));
  CHECK(count == 1 && strcmp(names[0], "later") == 0);
  const char *list[] = {"later", NULL};
  CHECK_OK(cumem_sleep(cm, list, list)); /* a known tag with nothing in it */
  CHECK_OK(cumem_wake(cm, list));
  /* Out-of-range values are refused and change nothing. */
  cumem_tag_options_t bad = o;
  bad.backup = 7;
  CHECK_RC(cumem_tag_set_options(cm, "later", &bad), CUMEM_EINVAL);
  bad = o;
  bad.prepare_ahead = 2;
  CHECK_RC(cumem_tag_set_options(cm, "later", &bad), CUMEM_EINVAL);
  CHECK_RC(cumem_tag_set_options(cm, "", &o), CUMEM_EINVAL);
  CHECK_OK(cumem_tag_get_options(cm, "later", &got));
  CHECK(memcmp(&o, &got, sizeof o) == 0);
  /* Allocations under the tag keep its options. */
  void *p;
  CHECK_OK(cumem_alloc(cm, &p, granularity_of(cm), 0, "later"));
  CHECK_OK(cumem_tag_get_options(cm, "later", &got));
  CHECK(got.skip_unchanged == 1);
  CHECK_OK(cumem_close(cm));
}

TEST(version_and_error_names_come_from_one_list) {
  CHECK(strcmp(cumem_version(), CUMEM_VERSION) == 0);
  CHECK(cumem_version_hex() == CUMEM_VERSION_HEX);
  int n = 0;
#define XX(name, value, meaning)                                                   \
  CHECK(CUMEM_##name == (value) && (value) < 0);                                   \
  CHECK(strcmp(cumem_err_name(value), "CUMEM_" #name) == 0);                       \
  CHECK(strncmp(cumem_strerror(value), "CUMEM_" #name ": ", strlen("CUMEM_" #name ": ")) == 0); \
  n++;
  CUMEM_ERRNO_MAP(XX)
#undef XX
  CHECK(n >= 13);
  CHECK(strcmp(cumem_err_name(CUMEM_OK), "CUMEM_OK") == 0);
  CHECK(strcmp(cumem_err_name(12345), "CUMEM_E?") == 0);
  CHECK(strstr(cumem_strerror(-12345), "unknown") != NULL);
}

RUN_TESTS("core",
          T(alloc_rounds_to_granularity),
          T(sleep_offload_restores_bit_exact_at_same_address),
          T(discarded_content_reads_zero_with_zero_on_wake),
          T(tags_sleep_and_wake_independently),
          T(sleep_and_wake_are_idempotent),
          T(free_in_every_state_releases_once),
          T(bad_input_is_refused_and_changes_nothing),
          T(chunked_backing_restores),
          T(backups_are_retained_or_released_as_asked),
          T(out_of_memory_wake_loses_nothing),
          T(out_of_memory_alloc_changes_nothing),
          T(tag_options_create_validate_and_read_back),
          T(version_and_error_names_come_from_one_list))
