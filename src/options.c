/* Options: the defaults, and the CUMEM_* environment variables that override
 * them. The one place where the library reads its environment (the host
 * backend reads its own emulation settings, CUMEM_HOST_*, in its file). */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MiB ((size_t)1 << 20)

/* Skip unchanged copy chunks at sleep (CUMEM_SKIP_UNCHANGED). On by default
 * only once `cumem bench` on an H200 shows a sleep after changing
 * everything within 2% of a plain warm sleep (README, "Sleeping without
 * copying what did not change"). */
#define SKIP_UNCHANGED_DEFAULT 0

/* A non-negative integer from the environment, or `fallback` when unset or
 * malformed (a malformed value is reported once in verbose mode). */
static long long env_int(const char *name, long long fallback) {
  const char *s = getenv(name);
  if (!s || !*s) return fallback;
  char *end;
  long long v = strtoll(s, &end, 10);
  if (*end || v < 0) {
    cumem__log("ignoring %s=%s (expected a non-negative integer)", name, s);
    return fallback;
  }
  return v;
}

void cumem_options_init(cumem_options_t *opts) {
  if (!opts) return;
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  memset(opts, 0, sizeof *opts);
  opts->verbose = (int)env_int("CUMEM_VERBOSE", 0);
  if (opts->verbose) cumem__verbose = 1;
  const char *backend = getenv("CUMEM_BACKEND");
  opts->backend = backend && *backend ? backend : "auto";
  opts->chunk_size = (size_t)env_int("CUMEM_CHUNK_SIZE_MB", 0) * MiB;
  opts->zero_on_wake = env_int("CUMEM_ZERO_ON_WAKE", 0) != 0;
  opts->retain_backup = env_int("CUMEM_RETAIN_BACKUP", 1) != 0;
  opts->copy_chunk = (size_t)env_int("CUMEM_COPY_CHUNK_MB", 64) * MiB;
  if (opts->copy_chunk == 0) opts->copy_chunk = 64 * MiB;
  /* 8 touching threads measured fastest on a 16-core H200 host (cold sleep
   * 28.3 GB/s, against 26.0 with 12 and 27.2 with 16; again 28–29 against
   * 23–26 with 16 later): with 8 the touching already stays ahead of the
   * registering, and more threads only compete with it. */
  opts->host_threads = (int)env_int("CUMEM_HOST_THREADS", cores < 1 ? 1 : cores > 8 ? 8 : cores);
  if (opts->host_threads < 1) opts->host_threads = 1;
  opts->release_threads = (int)env_int("CUMEM_RELEASE_THREADS", 4);
  if (opts->release_threads < 1) opts->release_threads = 1;
  opts->prepare_ahead = getenv("CUMEM_PREPARE_AHEAD");
  opts->prepare_ahead_delay_ms = (int)env_int("CUMEM_PREPARE_AHEAD_DELAY_MS", 1000);
  const char *numa = getenv("CUMEM_NUMA");
  opts->numa = !numa || !*numa || !strcmp(numa, "auto") ? -1 : env_int("CUMEM_NUMA", 1) != 0;
  const char *lock = getenv("CUMEM_REGISTER_LOCK");
  opts->register_lock = lock && *lock ? lock : NULL;
  opts->skip_unchanged = env_int("CUMEM_SKIP_UNCHANGED", SKIP_UNCHANGED_DEFAULT) != 0;
  const char *disk_dir = getenv("CUMEM_DISK_DIR"); /* checked at open (disk.c) */
  opts->disk_dir = disk_dir && *disk_dir ? disk_dir : NULL;
}
