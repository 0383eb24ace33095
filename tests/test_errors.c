/* Error codes, details and logging (issue 13, items 6, 7 and 12):
 *  - one code per kind of error, as include/cumem.h states it;
 *  - details are whole UTF-8 (Python decodes them), and a call that
 *    succeeds leaves the caller's detail alone;
 *  - `verbose` is an option of each instance, not of the process. */
#include "harness.h"

#include <fcntl.h>
#include <unistd.h>

static cumem_t *open_quiet(int verbose) {
  cumem_options_t o;
  cumem_options_init(&o);
  o.verbose = verbose;
  cumem_t *cm = NULL;
  return test_open(&cm, NULL, &o) == 0 ? cm : NULL;
}

TEST(one_code_per_kind_of_error) {
  cumem_t *cm = open_quiet(0);
  CHECK(cm);
  size_t g = granularity_of(cm);
  void *p = NULL;
  CHECK_OK(cumem_alloc(cm, &p, 2 * g, 0, "w"));
  int local = 0;
  void *inside = (char *)p + g;
  cumem_stats_t st;
  cumem_alloc_info_t info;
  cumem_tag_options_t to;
  void *host;
  size_t len;

  /* A malformed tag name is EINVAL everywhere; a well-formed unknown one is
   * ENOTAG everywhere. */
  const char *empty[] = {"", NULL}, *never[] = {"never", NULL};
  CHECK_RC(cumem_stats(cm, "", &st), CUMEM_EINVAL);
  CHECK_RC(cumem_sleep(cm, empty, NULL), CUMEM_EINVAL);
  CHECK_RC(cumem_sleep(cm, NULL, empty), CUMEM_EINVAL);
  CHECK_RC(cumem_wake(cm, empty), CUMEM_EINVAL);
  CHECK_RC(cumem_prepare_backup(cm, empty), CUMEM_EINVAL);
  CHECK_RC(cumem_release_backup(cm, empty), CUMEM_EINVAL);
  CHECK_RC(cumem_tag_get_options(cm, "", &to), CUMEM_EINVAL);
  CHECK_RC(cumem_stats(cm, "never", &st), CUMEM_ENOTAG);
  CHECK_RC(cumem_sleep(cm, never, NULL), CUMEM_ENOTAG);
  CHECK_RC(cumem_wake(cm, never), CUMEM_ENOTAG);
  CHECK_RC(cumem_tag_get_options(cm, "never", &to), CUMEM_ENOTAG);

  /* An address inside an allocation where its start is required: EINVAL,
   * for every call that requires the start. */
  CHECK_RC(cumem_free(cm, inside), CUMEM_EINVAL);
  CHECK_RC(cumem_unmap_release(cm, inside), CUMEM_EINVAL);
  CHECK_RC(cumem_create_map(cm, inside), CUMEM_EINVAL);
  /* An address in no allocation: ENOTFOUND, for every call. */
  CHECK_RC(cumem_free(cm, &local), CUMEM_ENOTFOUND);
  CHECK_RC(cumem_unmap_release(cm, &local), CUMEM_ENOTFOUND);
  CHECK_RC(cumem_create_map(cm, &local), CUMEM_ENOTFOUND);
  CHECK_RC(cumem_query(cm, &local, &info), CUMEM_ENOTFOUND);
  CHECK_RC(cumem_backup_view(cm, &local, &host, &len), CUMEM_ENOTFOUND);
  /* ... whatever the length: 0 bytes at an unknown address too. */
  CHECK_RC(cumem_copy_to_device(cm, &local, &local, 0), CUMEM_ENOTFOUND);
  CHECK_RC(cumem_copy_to_host(cm, &local, &local, 0), CUMEM_ENOTFOUND);
  CHECK_RC(cumem_memset(cm, &local, 0, 0), CUMEM_ENOTFOUND);
  CHECK_RC(cumem_copy_to_host(cm, &local, &local, 1), CUMEM_ENOTFOUND);
  /* 0 bytes at a live, awake address is nothing to do. */
  CHECK_OK(cumem_copy_to_device(cm, inside, &local, 0));
  CHECK_OK(cumem_copy_to_host(cm, &local, inside, 0));
  CHECK_OK(cumem_memset(cm, inside, 0, 0));
  /* ... and asleep memory is EINVAL, whatever the length. */
  CHECK_OK(cumem_sleep(cm, NULL, NULL));
  CHECK_RC(cumem_memset(cm, inside, 0, 0), CUMEM_EINVAL);
  CHECK_RC(cumem_memset(cm, inside, 0, 1), CUMEM_EINVAL);
  CHECK_OK(cumem_wake(cm, NULL));
  /* NULL for a pointer argument: EINVAL, everywhere. */
  CHECK_RC(cumem_free(cm, NULL), CUMEM_EINVAL);
  CHECK_RC(cumem_unmap_release(cm, NULL), CUMEM_EINVAL);
  CHECK_RC(cumem_query(cm, NULL, &info), CUMEM_EINVAL);
  CHECK_RC(cumem_backup_view(cm, NULL, &host, &len), CUMEM_EINVAL);
  CHECK_RC(cumem_memset(cm, NULL, 0, 0), CUMEM_EINVAL);

  CHECK_OK(cumem_free(cm, p));
  CHECK_OK(cumem_close(cm));
}

/* 1 when s is well-formed UTF-8. */
static int utf8_valid(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    int n = *p < 0x80 ? 0 : (*p & 0xE0) == 0xC0 ? 1 : (*p & 0xF0) == 0xE0 ? 2 : (*p & 0xF8) == 0xF0 ? 3 : -1;
    if (n < 0) return 0;
    p++;
    for (int i = 0; i < n; i++, p++)
      if ((*p & 0xC0) != 0x80) return 0;
  }
  return 1;
}

TEST(details_are_whole_utf8) {
  cumem_t *cm = open_quiet(0);
  CHECK(cm);
  /* A tag too long: the detail quotes its first bytes, never half of an
   * "é" (2 bytes) — byte 20 is the first half of one. */
  char tag[128] = "a";
  for (int i = 0; i < 40; i++) strcat(tag, "\xc3\xa9");
  void *p;
  CHECK_RC(cumem_alloc(cm, &p, 1, 0, tag), CUMEM_EINVAL);
  CHECK(strstr(cumem_last_error(), "longer than"));
  CHECK(utf8_valid(cumem_last_error()));
  CHECK_RC(cumem_set_current_tag(tag), CUMEM_EINVAL);
  CHECK(utf8_valid(cumem_last_error()));
  /* A detail cut at the end of its buffer: a 3-byte character per step, so
   * that whatever the prefix, some cut falls inside one. */
  for (int shift = 0; shift < 3; shift++) {
    char name[1400];
    memset(name, 'x', (size_t)shift);
    name[shift] = 0;
    for (int i = 0; i < 400; i++) strcat(name, "\xe2\x82\xac"); /* € */
    cumem_backend_t *b = NULL;
    CHECK_RC(cumem_backend_open(name, &b), CUMEM_EINVAL);
    CHECK(strlen(cumem_last_error()) > 400);
    CHECK(utf8_valid(cumem_last_error()));
  }
  CHECK_OK(cumem_close(cm));
}

/* "auto" probes the driver first; on a machine without one its failure is
 * no failure of the call: the caller's detail stays (it once showed a
 * libcuda message after a successful open). */
TEST(successful_open_keeps_the_callers_detail) {
  CHECK_RC(cumem_free(NULL, NULL), CUMEM_EINVAL);
  char before[512];
  snprintf(before, sizeof before, "%s", cumem_last_error());
  cumem_backend_t *b = NULL;
  CHECK_OK(cumem_backend_open("auto", &b));
  CHECK(strcmp(cumem_last_error(), before) == 0);
  b->destroy(b);
  cumem_options_t o;
  cumem_options_init(&o);
  o.backend = "auto";
  cumem_t *cm = NULL;
  CHECK_OK(cumem_open(&cm, &o));
  CHECK(strcmp(cumem_last_error(), before) == 0);
  CHECK_OK(cumem_close(cm));
}

/* Runs fn with stderr going to a file; returns what it wrote (malloc'ed). */
static char *stderr_of(void (*fn)(void *), void *arg) {
  char path[] = "/tmp/cumem-stderr-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return NULL;
  unlink(path);
  fflush(stderr);
  int saved = dup(2);
  dup2(fd, 2);
  fn(arg);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  off_t n = lseek(fd, 0, SEEK_END);
  char *out = calloc(1, (size_t)n + 1);
  if (out && n > 0 && pread(fd, out, (size_t)n, 0) != n) out[0] = 0;
  close(fd);
  return out;
}

/* One sleep/wake cycle and one refused call on an instance. */
static void cycle(void *arg) {
  cumem_t *cm = arg;
  void *p = NULL;
  const char *all[] = {"v", NULL};
  if (cumem_alloc(cm, &p, 1, 0, "v") != 0) return;
  (void)cumem_sleep(cm, NULL, all);
  (void)cumem_wake(cm, NULL);
  (void)cumem_free(cm, (char *)p + 1); /* refused: its detail is echoed when verbose */
  (void)cumem_free(cm, p);
}

static void open_and_cycle(void *arg) {
  cumem_t *cm = open_quiet(*(int *)arg);
  if (!cm) return;
  cycle(cm);
  cumem_close(cm);
}

TEST(verbose_is_an_option_of_each_instance) {
  unsetenv("CUMEM_VERBOSE");
  int on = 1, off = 0;
  char *loud = stderr_of(open_and_cycle, &on);
  char *quiet = stderr_of(open_and_cycle, &off);
  CHECK(loud && quiet);
  if (!strstr(loud, "cumem: sleep of 1 allocations")) fprintf(stderr, "  verbose instance wrote: %s\n", loud);
  CHECK(strstr(loud, "cumem: opened on backend"));
  CHECK(strstr(loud, "cumem: sleep of 1 allocations"));
  CHECK(strstr(loud, "cumem: wake of 1 allocations"));
  CHECK(strstr(loud, "inside an allocation, not at its start")); /* the error echoed */
  if (quiet[0]) fprintf(stderr, "  quiet instance wrote: %s\n", quiet);
  CHECK(quiet[0] == 0);
  free(loud);
  free(quiet);
  /* Two instances at once: each logs as its own option says. */
  cumem_t *a = open_quiet(1), *b = open_quiet(0);
  CHECK(a && b);
  char *from_b = stderr_of(cycle, b);
  char *from_a = stderr_of(cycle, a);
  CHECK(from_a && from_b);
  CHECK(from_b[0] == 0);
  CHECK(strstr(from_a, "cumem: sleep of"));
  free(from_a);
  free(from_b);
  CHECK_OK(cumem_close(a));
  CHECK_OK(cumem_close(b));
  /* CUMEM_VERBOSE still turns it on, through the options it sets. */
  setenv("CUMEM_VERBOSE", "1", 1);
  cumem_options_t o;
  cumem_options_init(&o);
  unsetenv("CUMEM_VERBOSE");
  CHECK(o.verbose == 1);
}

RUN_TESTS("errors", T(one_code_per_kind_of_error), T(details_are_whole_utf8),
          T(successful_open_keeps_the_callers_detail), T(verbose_is_an_option_of_each_instance))
