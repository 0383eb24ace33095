/* The interposer finds a runtime that is not in the global scope: a library
 * (user_lib.c) and the stand-in runtime it depends on are dlopen'ed with
 * RTLD_LOCAL, as Python loads an extension and its CUDA libraries. Its
 * cudaMalloc calls still reach the interposer (the global scope is searched
 * first), which must then find the real function by searching the loaded
 * libraries: dlsym(RTLD_NEXT) cannot see it.
 *
 *   LD_PRELOAD=libcumem_preload.so test_preload_local /path/to/libcumem_test_user.so */
#define _GNU_SOURCE
#include "cumem_preload.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

static int failures;
#define EXPECT(cond)                                                      \
  do {                                                                    \
    if (!(cond)) {                                                        \
      fprintf(stderr, "  FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                         \
    }                                                                     \
  } while (0)

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_preload_local /path/to/libcumem_test_user.so\n");
    return 2;
  }
  int (*begin)(const char *, cumem_preload_region_t *) =
      (int (*)(const char *, cumem_preload_region_t *))dlsym(RTLD_DEFAULT, "cumem_preload_begin");
  void (*end)(const cumem_preload_region_t *) =
      (void (*)(const cumem_preload_region_t *))dlsym(RTLD_DEFAULT, "cumem_preload_end");
  int (*count)(const char *, cumem_preload_count_t *) =
      (int (*)(const char *, cumem_preload_count_t *))dlsym(RTLD_DEFAULT, "cumem_preload_count");
  if (!begin || !end || !count) {
    fprintf(stderr, "test_preload_local: run with LD_PRELOAD=libcumem_preload.so\n");
    return 1;
  }
  void *user = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!user) {
    fprintf(stderr, "test_preload_local: %s\n", dlerror());
    return 1;
  }
  EXPECT(dlsym(RTLD_DEFAULT, "fake_cudart_calls") == NULL); /* not in the global scope */
  int (*user_alloc)(void **, unsigned long) = (int (*)(void **, unsigned long))dlsym(user, "user_alloc");
  int (*user_free)(void *) = (int (*)(void *))dlsym(user, "user_free");
  long (*calls)(const char *) = (long (*)(const char *))dlsym(user, "fake_cudart_calls");
  if (!user_alloc || !user_free || !calls) {
    fprintf(stderr, "test_preload_local: %s lacks user_alloc/user_free/fake_cudart_calls\n", argv[1]);
    return 1;
  }

  void *theirs = NULL, *mine = NULL;
  EXPECT(user_alloc(&theirs, 1000) == 0 && theirs != NULL);
  EXPECT(calls("malloc") == 1); /* forwarded to the stand-in */
  cumem_preload_count_t c;
  EXPECT(count("cudaMalloc", &c) == 0 && c.forwarded == 1 && c.resolved == 2); /* found by the search */

  cumem_preload_region_t saved;
  EXPECT(begin("local", &saved) == 0);
  EXPECT(user_alloc(&mine, 5000) == 0 && mine != NULL);
  end(&saved);
  EXPECT(calls("malloc") == 1);
  cumem_t *cm = NULL;
  cumem_alloc_info_t info;
  EXPECT(cumem_default(&cm) == 0 && cumem_query(cm, mine, &info) == 0 && !strcmp(info.tag, "local"));

  EXPECT(user_free(mine) == 0 && calls("free") == 0);
  EXPECT(user_free(theirs) == 0 && calls("free") == 1);
  printf("%s\n", failures ? "FAILED" : "passed");
  return failures ? 1 : 0;
}
