/* The life of a host backup (issue 13, items 8 and 9):
 *  - a sleep that discards an allocation leaves no content in its backup:
 *    backup_view says so, stats count nothing backed up, release_backup can
 *    give the buffer back even while asleep, and a later offloading sleep
 *    reuses the buffer (already pinned) when it is kept;
 *  - pinned memory (cumem_backup_pin, what Python's backup_view holds)
 *    outlives free, release and close, and is unmapped with its last pin. */
#include "harness.h"

#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

static const char *W[] = {"w", NULL};

/* 1 when the page holding p is mapped in this process. */
static int mapped(const void *p) {
  long page = sysconf(_SC_PAGESIZE);
  unsigned char vec;
  void *start = (void *)((uintptr_t)p & ~(uintptr_t)(page - 1));
  return mincore(start, (size_t)page, &vec) == 0 ? 1 : errno == ENOMEM ? 0 : -1;
}

static int view_has_pattern(const void *host, size_t n, unsigned seed) {
  const unsigned char *h = host;
  for (size_t i = 0; i < n; i++)
    if (h[i] != pattern_byte(i, seed)) return 0;
  return 1;
}

TEST(discarding_sleep_leaves_no_stale_backup) {
  cumem_backend_t *fault = NULL;
  cumem_t *cm = NULL;
  CHECK_OK(test_open(&cm, &fault, NULL));
  size_t n = 2 * granularity_of(cm);
  void *w;
  CHECK_OK(cumem_alloc(cm, &w, n, 0, "w"));
  CHECK_OK(fill_pattern(cm, w, n, 1));
  CHECK_OK(cumem_sleep(cm, NULL, W)); /* offload: the backup holds pattern 1 */
  CHECK_OK(cumem_wake(cm, NULL));     /* retained */
  void *host;
  size_t len;
  CHECK_OK(cumem_backup_view(cm, w, &host, &len));
  CHECK(len == n && view_has_pattern(host, n, 1));

  /* A discard-only sleep: the content is gone, and nothing claims it. */
  CHECK_OK(cumem_sleep(cm, NULL, NULL));
  CHECK_RC(cumem_backup_view(cm, w, &host, &len), CUMEM_ENOTFOUND);
  CHECK(strstr(cumem_last_error(), "discarded"));
  cumem_alloc_info_t info;
  CHECK_OK(cumem_query(cm, w, &info));
  CHECK(info.asleep && !info.backed_up);
  cumem_stats_t s;
  CHECK_OK(cumem_stats(cm, "w", &s));
  CHECK(s.bytes_backed_up == 0);
  CHECK(s.bytes_host_held == n); /* pinned, kept for the next offloading sleep */
  /* ... which then only copies: no new page-locking (a registration would
   * fail here), and the backup holds the new content. */
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK_OK(fill_pattern(cm, w, n, 2));
  cumem_fault_arm(fault, 1, "host_register", CUMEM_EDRIVER, 1);
  CHECK_OK(cumem_sleep(cm, NULL, W));
  CHECK(cumem_fault_injected(fault) == 0);
  cumem_fault_arm(fault, 0, NULL, 0, 0);
  CHECK_OK(cumem_backup_view(cm, w, &host, &len));
  CHECK(view_has_pattern(host, n, 2));
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK(has_pattern(cm, w, n, 2));

  /* release_backup gives a discarded allocation's buffer back while it is
   * asleep (it could not before), and never one still to restore. */
  CHECK_OK(cumem_sleep(cm, NULL, NULL));
  CHECK_OK(cumem_release_backup(cm, W));
  CHECK_OK(cumem_stats(cm, "w", &s));
  CHECK(s.bytes_host_held == 0);
  cumem_backend_counters_t c;
  CHECK_OK(cumem_backend_counters(cm, &c));
  CHECK(c.host_registrations == 0);
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK_OK(fill_pattern(cm, w, n, 3));
  CHECK_OK(cumem_sleep(cm, NULL, W));
  CHECK_OK(cumem_release_backup(cm, W)); /* asleep with content: kept */
  CHECK_OK(cumem_stats(cm, "w", &s));
  CHECK(s.bytes_host_held == n && s.bytes_backed_up == n);
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK(has_pattern(cm, w, n, 3));

  /* The seed ABI's release discards too. */
  CHECK_OK(cumem_unmap_release(cm, w));
  CHECK_RC(cumem_backup_view(cm, w, &host, &len), CUMEM_ENOTFOUND);
  CHECK_OK(cumem_create_map(cm, w));
  CHECK_OK(cumem_free(cm, w));
  CHECK(counters_zero(cm));
  CHECK_OK(cumem_close(cm));
}

TEST(pinned_backup_outlives_free) {
  cumem_t *cm = NULL;
  CHECK_OK(test_open(&cm, NULL, NULL));
  size_t n = 2 * granularity_of(cm);
  void *w;
  CHECK_OK(cumem_alloc(cm, &w, n, 0, "w"));
  CHECK_OK(fill_pattern(cm, w, n, 5));
  CHECK_OK(cumem_sleep(cm, NULL, W));
  void *host = NULL, *host2 = NULL;
  size_t len = 0, len2 = 0;
  cumem_backup_pin_t *pin = NULL, *pin2 = NULL;
  CHECK_OK(cumem_backup_pin(cm, w, &host, &len, &pin));
  CHECK_OK(cumem_backup_pin(cm, (char *)w + 100, &host2, &len2, &pin2));
  CHECK(pin && pin2 && len == n && len2 == n - 100 && (char *)host2 == (char *)host + 100);
  /* Freed (as PyTorch frees, from C): the pinned memory stays, with its
   * bytes; the backend holds nothing more for it. */
  CHECK_OK(cumem_free(cm, w));
  CHECK(mapped(host) == 1);
  CHECK(view_has_pattern(host, n, 5));
  cumem_stats_t s;
  CHECK_OK(cumem_stats(cm, NULL, &s));
  CHECK(s.bytes_host_held == 0);
  CHECK(counters_zero(cm));
  cumem_backup_unpin(pin);
  CHECK(mapped(host) == 1); /* one pin left */
  CHECK(view_has_pattern(host, n, 5));
  cumem_backup_unpin(pin2);
  CHECK(mapped(host) == 0); /* the last pin unmapped it */
  cumem_backup_unpin(NULL);

  /* Released while awake, then the instance closed: still there. */
  CHECK_OK(cumem_alloc(cm, &w, n, 0, "w"));
  CHECK_OK(fill_pattern(cm, w, n, 6));
  CHECK_OK(cumem_sleep(cm, NULL, W));
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK_OK(cumem_backup_pin(cm, w, &host, &len, &pin));
  CHECK_OK(cumem_release_backup(cm, W));
  CHECK_RC(cumem_backup_view(cm, w, &host2, &len2), CUMEM_ENOTFOUND); /* detached */
  /* A later sleep gets new memory; the pinned one keeps its bytes. */
  CHECK_OK(fill_pattern(cm, w, n, 7));
  CHECK_OK(cumem_sleep(cm, NULL, W));
  CHECK_OK(cumem_backup_view(cm, w, &host2, &len2));
  CHECK(host2 != host && view_has_pattern(host2, n, 7));
  CHECK(view_has_pattern(host, n, 6));
  CHECK_OK(cumem_close(cm));
  CHECK(mapped(host) == 1 && view_has_pattern(host, n, 6));
  cumem_backup_unpin(pin); /* after close: needs no instance */
  CHECK(mapped(host) == 0);

  /* Pinned and unpinned while attached: given back as usual later. */
  CHECK_OK(test_open(&cm, NULL, NULL));
  CHECK_OK(cumem_alloc(cm, &w, n, 0, "w"));
  CHECK_OK(cumem_sleep(cm, NULL, W));
  CHECK_OK(cumem_backup_pin(cm, w, &host, &len, &pin));
  cumem_backup_unpin(pin);
  CHECK(mapped(host) == 1); /* still the allocation's backup */
  CHECK_OK(cumem_free(cm, w));
  CHECK(mapped(host) == 0);
  /* Nothing valid to pin: refused, no pin. */
  CHECK_OK(cumem_alloc(cm, &w, n, 0, "w"));
  pin = (cumem_backup_pin_t *)&n;
  CHECK_RC(cumem_backup_pin(cm, w, &host, &len, &pin), CUMEM_ENOTFOUND);
  CHECK(pin == NULL);
  CHECK_RC(cumem_backup_pin(cm, w, &host, &len, NULL), CUMEM_EINVAL);
  CHECK_OK(cumem_close(cm));
}

RUN_TESTS("backups", T(discarding_sleep_leaves_no_stale_backup), T(pinned_backup_outlives_free))
