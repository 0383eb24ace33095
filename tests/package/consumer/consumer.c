/* A program that uses an installed cumem the way its users do: the public
 * header, the library, nothing else. It checks that header and library
 * agree on the version, then sleeps and wakes 1 MiB on the host backend and
 * reads it back. */
#include <cumem.h>

#include <stdio.h>
#include <string.h>

#ifndef CONSUMER_LINKAGE
#define CONSUMER_LINKAGE "?"
#endif

static int fail(const char *what, int rc) {
  fprintf(stderr, "consumer (" CONSUMER_LINKAGE "): %s: %s: %s\n", what, cumem_strerror(rc), cumem_last_error());
  return 1;
}

int main(void) {
  if (strcmp(cumem_version(), CUMEM_VERSION) != 0 || cumem_version_hex() != CUMEM_VERSION_HEX) {
    fprintf(stderr, "consumer: header says %s, library says %s\n", CUMEM_VERSION, cumem_version());
    return 1;
  }
  cumem_options_t o;
  cumem_options_init(&o);
  o.backend = "host";
  cumem_t *cm;
  int rc = cumem_open(&cm, &o);
  if (rc) return fail("open", rc);
  enum { N = 1 << 20 };
  static unsigned char in[N], out[N];
  for (size_t i = 0; i < N; i++) in[i] = (unsigned char)(i * 7 + 3);
  void *p = NULL;
  const char *offload[] = {"weights", NULL};
  cumem_stats_t s = {0};
  if ((rc = cumem_alloc(cm, &p, N, 0, "weights"))) return fail("alloc", rc);
  if ((rc = cumem_copy_to_device(cm, p, in, N))) return fail("copy in", rc);
  if ((rc = cumem_sleep(cm, NULL, offload))) return fail("sleep", rc);
  if ((rc = cumem_stats(cm, "weights", &s))) return fail("stats", rc);
  if (s.bytes_asleep < N) {
    fprintf(stderr, "consumer: %zu bytes asleep, expected at least %d\n", s.bytes_asleep, N);
    return 1;
  }
  if ((rc = cumem_wake(cm, NULL))) return fail("wake", rc);
  if ((rc = cumem_copy_to_host(cm, out, p, N))) return fail("copy out", rc);
  if (memcmp(in, out, N) != 0) {
    fprintf(stderr, "consumer: the data differs after the wake\n");
    return 1;
  }
  if ((rc = cumem_free(cm, p)) || (rc = cumem_close(cm))) return fail("free/close", rc);
  printf("consumer (" CONSUMER_LINKAGE "): cumem %s: 1 MiB slept and woke intact\n", cumem_version());
  return 0;
}
