/* `cumem run [--tag T] [--backup cpu|disk|none] -- CMD ARGS...`: run a program with
 * the interposer preloaded and its environment switch on, so that what the
 * program allocates through the shared CUDA runtime (or cuMemAlloc) is
 * sleepable memory of the tag "tms:T" ("tms+cpu:T" with --backup cpu,
 * "tms+disk:T" with --backup disk: files under CUMEM_DISK_DIR). The
 * program reaches sleep and wake through the C API of libcumem.so.0
 * (cumem_default() is the instance the interposer allocates from).
 *
 * cumem execs the program: its exit status and signals are the program's.
 * cumem's own failures exit with 125 (bad options, a malformed CUMEM_*
 * setting, no usable directory for --backup disk, no interposer found),
 * 126 (the program cannot be executed) or 127 (not found), as env(1) does. */
#define _GNU_SOURCE
#include "cumem_preload.h"
#include "tool.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PRELOAD_NAME "libcumem_preload.so"
enum { RUN_FAILED = 125, RUN_CANNOT_EXEC = 126, RUN_NOT_FOUND = 127 };

static int run_usage(FILE *f) {
  fprintf(f,
          "usage: cumem run [--tag T] [--backup cpu|disk|none] -- CMD [ARGS...]\n"
          "  Run CMD with %s in LD_PRELOAD and CUMEM_PRELOAD=1: every cudaMalloc\n"
          "  (and cudaMallocAsync, cudaMallocPitch, cuMemAlloc) of the program is sleepable\n"
          "  memory tagged tms:T, tms+cpu:T with --backup cpu, or tms+disk:T with --backup\n"
          "  disk (files under CUMEM_DISK_DIR) (default T: default).\n"
          "  The program sleeps and wakes it through libcumem.so.0 (cumem_default()).\n"
          "  It must use the shared CUDA runtime (nvcc -cudart shared).\n"
          "  CUMEM_PRELOAD_LIBRARY=PATH names the interposer to use.\n",
          PRELOAD_NAME);
  return f == stderr ? RUN_FAILED : 0;
}

static int is_readable(const char *path) { return access(path, R_OK) == 0; }

/* The interposer: $CUMEM_PRELOAD_LIBRARY, else next to this executable (a
 * CMake build tree), one directory up (the Python package: cumem/bin/cumem
 * beside cumem/libcumem_preload.so), or in the installed libdir (the
 * configured one, then ../lib, ../lib64). The absolute path goes to *out;
 * the places tried to *tried. */
static int find_library(char out[PATH_MAX], char *tried, size_t tried_len) {
  const char *env = getenv("CUMEM_PRELOAD_LIBRARY");
  if (env && *env) {
    snprintf(tried, tried_len, "%s (CUMEM_PRELOAD_LIBRARY)", env);
    return is_readable(env) && realpath(env, out) ? 0 : -1;
  }
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) {
    snprintf(tried, tried_len, "nothing: /proc/self/exe is unreadable");
    return -1;
  }
  exe[n] = '\0';
  char *slash = strrchr(exe, '/');
  if (slash) *slash = '\0';
#ifndef CUMEM_BIN_TO_LIB
#define CUMEM_BIN_TO_LIB "../lib"
#endif
  /* The build tree, the Python package, the installed libdir (as CMake
   * configured it: multiarch ones included), then the common ones. */
  static const char *const dirs[] = {"", "/..", "/" CUMEM_BIN_TO_LIB, "/../lib", "/../lib64"};
  tried[0] = '\0';
  for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s%s/%s", exe, dirs[i], PRELOAD_NAME);
    size_t used = strlen(tried);
    snprintf(tried + used, tried_len - used, "%s%s", used ? ", " : "", path);
    if (is_readable(path) && realpath(path, out)) return 0;
  }
  return -1;
}

/* LD_PRELOAD with `lib` first (a library named twice is loaded once). */
static int prepend_preload(const char *lib) {
  const char *old = getenv("LD_PRELOAD");
  if (!old || !*old) return setenv("LD_PRELOAD", lib, 1);
  size_t n = strlen(lib) + strlen(old) + 2;
  char *value = malloc(n);
  if (!value) return -1;
  snprintf(value, n, "%s:%s", lib, old);
  int rc = setenv("LD_PRELOAD", value, 1);
  free(value);
  return rc;
}

/* TMS_DISK_BACKUP_DIR is created by the interposer, parents included: it
 * will be if its nearest existing ancestor is a directory we may write. */
static int creatable_dir(const char *path) {
  char p[PATH_MAX];
  if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p) return 0;
  for (;;) {
    struct stat st;
    if (stat(p, &st) == 0) return S_ISDIR(st.st_mode) && access(p, W_OK | X_OK) == 0;
    char *slash = strrchr(p, '/');
    if (!slash) return access(".", W_OK | X_OK) == 0;
    if (slash == p) return access("/", W_OK | X_OK) == 0;
    *slash = '\0';
  }
}

/* The program's cumem settings, checked before it starts, by the core's
 * own rules: an instance of the host backend opened with the same
 * environment (and, for --backup disk, the directory the files go to).
 * Otherwise a malformed CUMEM_* value, or a directory that takes no files,
 * shows up only inside the program, as every cudaMalloc failing with "out
 * of memory" or as its first sleep failing. */
static int check_settings(const char *backup) {
  cumem_options_t o;
  cumem_options_init(&o);
  o.backend = "host";
  if (!strcmp(backup, "disk")) {
    const char *dir = getenv("CUMEM_DISK_DIR"), *tms = getenv("TMS_DISK_BACKUP_DIR");
    if (dir && *dir) {
      o.disk_dir = dir;
    } else if (!tms || !*tms) {
      fprintf(stderr, "cumem run: --backup disk needs a directory for the backup files: set CUMEM_DISK_DIR=DIR\n");
      return RUN_FAILED;
    } else if (!creatable_dir(tms)) {
      fprintf(stderr, "cumem run: --backup disk: TMS_DISK_BACKUP_DIR=%s cannot be created or written\n", tms);
      return RUN_FAILED;
    }
  }
  cumem_t *cm = NULL;
  if (cumem_open(&cm, &o) != 0) {
    fprintf(stderr, "cumem run: %s\n", cumem_last_error());
    return RUN_FAILED;
  }
  (void)cumem_close(cm);
  return 0;
}

int cmd_run(int argc, char **argv) {
  static const struct option options[] = {
      {"tag", required_argument, NULL, 't'},
      {"backup", required_argument, NULL, 'b'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *tag = "default", *backup = "none";
  optind = 1;
  int c;
  /* "+": options end at the program's name, so its own options are its. */
  while ((c = getopt_long(argc, argv, "+t:b:h", options, NULL)) != -1) {
    if (c == 't') tag = optarg;
    else if (c == 'b') backup = optarg;
    else if (c == 'h') return run_usage(stdout);
    else return run_usage(stderr);
  }
  if (optind >= argc) {
    fprintf(stderr, "cumem run: no program given\n");
    return run_usage(stderr);
  }
  if (!*tag || strlen(tag) > CUMEM_PRELOAD_USER_TAG_MAX) {
    fprintf(stderr, "cumem run: --tag must have 1 to %d bytes\n", CUMEM_PRELOAD_USER_TAG_MAX);
    return RUN_FAILED;
  }
  if (strcmp(backup, "cpu") && strcmp(backup, "disk") && strcmp(backup, "none")) {
    fprintf(stderr, "cumem run: --backup %s: expected cpu, disk or none\n", backup);
    return RUN_FAILED;
  }
  if (check_settings(backup)) return RUN_FAILED;

  char lib[PATH_MAX], tried[5 * PATH_MAX + 64];
  if (find_library(lib, tried, sizeof tried)) {
    fprintf(stderr,
            "cumem run: cannot find %s (tried %s).\n"
            "  Build it (CMake target cumem_preload) or name it with CUMEM_PRELOAD_LIBRARY=/path/to/%s.\n",
            PRELOAD_NAME, tried, PRELOAD_NAME);
    return RUN_FAILED;
  }
  if (prepend_preload(lib) || setenv("CUMEM_PRELOAD", "1", 1) || setenv("CUMEM_PRELOAD_TAG", tag, 1) ||
      setenv("CUMEM_PRELOAD_BACKUP", backup, 1)) {
    fprintf(stderr, "cumem run: cannot set the environment: %s\n", strerror(errno));
    return RUN_FAILED;
  }
  execvp(argv[optind], argv + optind);
  int err = errno;
  fprintf(stderr, "cumem run: cannot run %s: %s\n", argv[optind], strerror(err));
  return err == ENOENT ? RUN_NOT_FOUND : RUN_CANNOT_EXEC;
}
