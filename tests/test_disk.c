/* The disk tier: tags whose backup is CUMEM_BACKUP_DISK sleep into unnamed
 * files under disk_dir and wake bit-exact; a full disk refuses the sleep and
 * keeps everything on the device; nothing a crash leaves is ever read; files
 * go on wake, free and close; failures anywhere in the path lose nothing.
 *
 * The directories are made under $CUMEM_TEST_DISK_DIR (default /tmp), and
 * under /dev/shm (tmpfs) where it exists. */
#define _GNU_SOURCE
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- helpers ---------------------------------------------------------------- */

static const char *base_dir(void) {
  const char *d = getenv("CUMEM_TEST_DISK_DIR");
  return d && *d ? d : "/tmp";
}

/* A fresh empty directory under base (NULL: base_dir()); "" on failure. */
static const char *new_dir(const char *base, char out[256]) {
  snprintf(out, 256, "%s/cumem-disk-test-XXXXXX", base ? base : base_dir());
  if (!mkdtemp(out)) out[0] = 0;
  return out;
}

/* Entries in dir besides . and .. (-1 when it cannot be read). */
static int entries(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
  closedir(d);
  return n;
}

/* Remove dir and whatever a test left in it. */
static void remove_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (d) {
    struct dirent *e;
    char p[512];
    while ((e = readdir(d))) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
      snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
      unlink(p);
    }
    closedir(d);
  }
  rmdir(dir);
}

static int open_fds_all(void) { return entries("/proc/self/fd"); }

/* Descriptors open besides the host backend's (each of its physical memory
 * handles is a memfd): a flat count means no file of ours is left open. */
static int open_fds_of(cumem_t *cm) {
  cumem_backend_counters_t c;
  if (cumem_backend_counters(cm, &c)) return -1;
  return open_fds_all() - (strcmp(cumem_backend_name(cm), "host") ? 0 : (int)c.handles);
}

static size_t rss_bytes(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  size_t kb = 0;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %zu kB", &kb) == 1) break;
  if (f) fclose(f);
  return kb * 1024;
}

static cumem_t *open_on(const char *dir, size_t chunk_size, size_t copy_chunk) {
  cumem_options_t o;
  cumem_options_init(&o);
  o.disk_dir = dir;
  o.chunk_size = chunk_size;
  if (copy_chunk) o.copy_chunk = copy_chunk;
  cumem_t *cm = NULL;
  return test_open(&cm, NULL, &o) == 0 ? cm : NULL;
}

static int set_backup(cumem_t *cm, const char *tag, int backup) {
  cumem_tag_options_t o;
  cumem_tag_options_init(&o);
  o.backup = backup;
  return cumem_tag_set_options(cm, tag, &o);
}

/* The disk hook of cumem_testing.h, driven by a small script: fail the nth
 * call of `op` (or of every op when op is NULL) with `err`, from then on when
 * persistent; die by SIGKILL there when kill is set; and force a fallback
 * (`force_op` always fails with `force_err`). */
typedef struct hook {
  const char *op;
  long nth, seen, injected;
  int err, persistent, kill;
  const char *force_op;
  int force_err;
} hook_t;

/* (Called from the tier's I/O threads too, hence the lock.) */
static pthread_mutex_t hook_mu = PTHREAD_MUTEX_INITIALIZER;

static int hook_fn(const char *op, void *arg) {
  hook_t *h = arg;
  if (h->force_op && !strcmp(op, h->force_op)) return h->force_err;
  if (h->op && strcmp(op, h->op)) return 0;
  pthread_mutex_lock(&hook_mu);
  long k = ++h->seen;
  int hit = h->nth && (k == h->nth || (h->persistent && k > h->nth));
  if (hit) h->injected++;
  pthread_mutex_unlock(&hook_mu);
  if (hit && h->kill) raise(SIGKILL);
  return hit ? h->err : 0;
}

/* ---- bit-exact round trips -------------------------------------------------- */

static const char *DISK_AND_HOST[] = {"disk", "host", NULL};

/* Allocations of several sizes on disk and host tags and a discarded one,
 * chunked backing, pieces smaller than the allocations (more pieces than
 * staging buffers), several cycles with new content each time, one sleep
 * for all tags. While asleep the directory shows nothing, one descriptor
 * per disk backup is open, the figures say where the content is. */
static void round_trip_in(const char *dir) {
  CHECK(dir[0]);
  cumem_t *cm = open_on(dir, 0, 0);
  CHECK(cm);
  size_t g = granularity_of(cm);
  CHECK_OK(cumem_close(cm));
  cm = open_on(dir, 2 * g, g); /* chunks of 2 granules, copies of 1 */
  CHECK(cm);
  int ndev = 0;
  CHECK_OK(cumem_device_count(cm, &ndev));
  CHECK_OK(set_backup(cm, "disk", CUMEM_BACKUP_DISK));
  enum { N = 6 };
  const char *tags[N] = {"disk", "disk", "disk", "disk", "host", "kv"};
  size_t sizes[N] = {g, 3 * g + 12345, 9 * g, 1, 4 * g + 1, 3 * g};
  int devs[N] = {0, 0, 0, ndev > 1 ? 1 : 0, 0, 0};
  void *p[N];
  size_t disk_bytes = 0, host_bytes = 0;
  for (int i = 0; i < N; i++) {
    CHECK_OK(cumem_alloc(cm, &p[i], sizes[i], devs[i], tags[i]));
    cumem_alloc_info_t info;
    CHECK_OK(cumem_query(cm, p[i], &info));
    if (!strcmp(tags[i], "disk")) disk_bytes += info.size;
    if (!strcmp(tags[i], "host")) host_bytes += info.size;
  }
  int fds_awake = -1; /* counted after the first cycle (see world_open) */
  for (unsigned cycle = 0; cycle < 3; cycle++) {
    for (int i = 0; i < N; i++) CHECK_OK(fill_pattern(cm, p[i], sizes[i], 100 * cycle + (unsigned)i));
    CHECK_OK(cumem_sleep(cm, NULL, DISK_AND_HOST));
    CHECK(entries(dir) == 0);             /* the files have no name */
    if (cycle) CHECK(open_fds_of(cm) == fds_awake + 4); /* one per disk allocation */
    cumem_stats_t s, sd;
    CHECK_OK(cumem_stats(cm, NULL, &s));
    CHECK_OK(cumem_stats(cm, "disk", &sd));
    CHECK(s.bytes_on_disk == disk_bytes && sd.bytes_on_disk == disk_bytes);
    CHECK(s.bytes_backed_up == disk_bytes + host_bytes);
    CHECK(sd.bytes_host_held == 0 && sd.bytes_mapped == 0);
    for (int i = 0; i < N; i++) {
      cumem_alloc_info_t info;
      CHECK_OK(cumem_query(cm, p[i], &info));
      CHECK(info.asleep);
      CHECK(info.on_disk == !strcmp(tags[i], "disk"));
      CHECK(info.backed_up == !!strcmp(tags[i], "kv"));
    }
    void *view;
    size_t len;
    CHECK_RC(cumem_backup_view(cm, p[0], &view, &len), CUMEM_ENOTFOUND); /* no host copy */
    CHECK_OK(cumem_wake(cm, NULL));
    if (cycle) CHECK(open_fds_of(cm) == fds_awake); /* every file gone */
    else fds_awake = open_fds_of(cm);
    CHECK_OK(cumem_stats(cm, NULL, &s));
    CHECK(s.bytes_on_disk == 0 && s.bytes_backed_up == 0);
    for (int i = 0; i < N - 1; i++) CHECK(has_pattern(cm, p[i], sizes[i], 100 * cycle + (unsigned)i));
  }
  for (int i = 0; i < N; i++) CHECK_OK(cumem_free(cm, p[i]));
  CHECK(counters_zero(cm)); /* staging buffers unregistered, streams and events gone */
  CHECK_OK(cumem_close(cm));
  CHECK(entries(dir) == 0);
}

TEST(round_trip_bit_exact) {
  char d[256];
  round_trip_in(new_dir(NULL, d));
  remove_dir(d);
}

TEST(round_trip_on_tmpfs) {
  struct stat st;
  if (stat("/dev/shm", &st) != 0) {
    printf("  (no /dev/shm: nothing to test)\n");
    return;
  }
  char d[256];
  round_trip_in(new_dir("/dev/shm", d));
  remove_dir(d);
}

/* A round trip with one file operation always failing with err, as on a
 * filesystem that does not support it. */
static void round_trip_forcing(const char *op, int err) {
  hook_t h = {.force_op = op, .force_err = err};
  cumem_fault_disk(hook_fn, &h);
  char d[256];
  round_trip_in(new_dir(NULL, d));
  cumem_fault_disk(NULL, NULL);
  remove_dir(d);
}

/* Where the filesystem has no O_TMPFILE: a named file, unlinked at once. */
TEST(round_trip_without_o_tmpfile) { round_trip_forcing("tmpfile", EOPNOTSUPP); }
/* Where the filesystem refuses O_DIRECT: through the page cache. */
TEST(round_trip_without_o_direct) { round_trip_forcing("direct", EINVAL); }

/* ---- the directory ------------------------------------------------------------ */

TEST(disk_dir_is_checked) {
  char d[256], file[300], buf[512];
  CHECK(new_dir(NULL, d)[0]);
  cumem_t *cm = NULL;
  cumem_options_t o;
  cumem_options_init(&o);
  snprintf(buf, sizeof buf, "%s/missing", d);
  o.disk_dir = buf;
  CHECK_RC(test_open(&cm, NULL, &o), CUMEM_EINVAL);
  CHECK(strstr(cumem_last_error(), "missing") != NULL);
  snprintf(file, sizeof file, "%s/file", d);
  int fd = open(file, O_CREAT | O_WRONLY, 0600);
  CHECK(fd >= 0);
  close(fd);
  o.disk_dir = file;
  CHECK_RC(test_open(&cm, NULL, &o), CUMEM_EINVAL);
  CHECK(strstr(cumem_last_error(), "not a directory") != NULL);
  unlink(file);
  /* A directory that takes no new file (as root, permissions do not stop
   * anything: an injected EACCES stands in). */
  hook_t h = {.force_op = "tmpfile", .force_err = EACCES};
  cumem_fault_disk(hook_fn, &h);
  o.disk_dir = d;
  int rc = test_open(&cm, NULL, &o);
  cumem_fault_disk(NULL, NULL);
  CHECK_RC(rc, CUMEM_EINVAL);
  CHECK(strstr(cumem_last_error(), "does not take new files") != NULL);

  /* Set later, read back absolute; "" again means none. */
  o.disk_dir = NULL;
  CHECK_OK(test_open(&cm, NULL, &o));
  CHECK_OK(cumem_get_disk_dir(cm, buf, sizeof buf));
  CHECK(buf[0] == 0);
  char cwd[256];
  CHECK(getcwd(cwd, sizeof cwd));
  CHECK(chdir(d) == 0);
  rc = cumem_set_disk_dir(cm, ".");
  CHECK(chdir(cwd) == 0);
  CHECK_OK(rc);
  CHECK_OK(cumem_get_disk_dir(cm, buf, sizeof buf));
  char *abs = realpath(d, NULL);
  CHECK(abs && strcmp(buf, abs) == 0);
  free(abs);
  CHECK_RC(cumem_get_disk_dir(cm, buf, 3), CUMEM_EINVAL);
  CHECK_RC(cumem_set_disk_dir(cm, file), CUMEM_EINVAL); /* (gone) refused, kept */
  CHECK_OK(cumem_get_disk_dir(cm, buf, sizeof buf));
  CHECK(buf[0] == '/');
  CHECK_OK(cumem_set_disk_dir(cm, ""));
  CHECK_OK(cumem_get_disk_dir(cm, buf, sizeof buf));
  CHECK(buf[0] == 0);
  CHECK_OK(cumem_close(cm));
  remove_dir(d);
}

/* Without a disk_dir, offloading a disk tag is refused before anything
 * happens; discarding it needs no directory. */
TEST(disk_tag_without_disk_dir) {
  cumem_t *cm = open_on(NULL, 0, 0);
  CHECK(cm);
  size_t g = granularity_of(cm);
  CHECK_OK(set_backup(cm, "disk", CUMEM_BACKUP_DISK));
  void *a, *b;
  CHECK_OK(cumem_alloc(cm, &a, 2 * g, 0, "disk"));
  CHECK_OK(cumem_alloc(cm, &b, 2 * g, 0, "host"));
  CHECK_OK(fill_pattern(cm, a, 2 * g, 1));
  CHECK_OK(fill_pattern(cm, b, 2 * g, 2));
  CHECK_RC(cumem_sleep(cm, NULL, DISK_AND_HOST), CUMEM_EINVAL);
  CHECK(strstr(cumem_last_error(), "disk_dir") && strstr(cumem_last_error(), "\"disk\""));
  cumem_stats_t s;
  CHECK_OK(cumem_stats(cm, NULL, &s));
  CHECK(s.bytes_asleep == 0 && s.bytes_backed_up == 0); /* nothing slept, host tag neither */
  CHECK(has_pattern(cm, a, 2 * g, 1) && has_pattern(cm, b, 2 * g, 2));
  const char *DISK[] = {"disk", NULL};
  CHECK_OK(cumem_sleep(cm, DISK, NULL)); /* discarded */
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK_OK(cumem_close(cm));
}

/* ---- a full disk ---------------------------------------------------------------- */

typedef struct world {
  char dir[256];
  cumem_t *cm;
  size_t g, n[4];
  void *p[4]; /* disk (small), disk (large), host, kv */
} world_t;

static const char *WORLD_TAGS[4] = {"disk", "disk", "host", "kv"};

/* The world: its own directory, pieces of one granule, backing in chunks of
 * two when `chunked`; *fault (when not NULL) receives the fault backend. */
static int world_open(world_t *w, int chunked, cumem_backend_t **fault) {
  memset(w, 0, sizeof *w);
  if (!new_dir(NULL, w->dir)[0]) return CUMEM_EINVAL;
  cumem_t *probe = open_on(NULL, 0, 0);
  if (!probe) return CUMEM_EINVAL;
  w->g = granularity_of(probe);
  cumem_close(probe);
  cumem_options_t o;
  cumem_options_init(&o);
  o.disk_dir = w->dir;
  o.chunk_size = chunked ? 2 * w->g : 0;
  o.copy_chunk = w->g;
  int rc = test_open(&w->cm, fault, &o);
  if (rc) return rc;
  size_t sizes[4] = {w->g, 6 * w->g + 99, 3 * w->g, 2 * w->g};
  rc = set_backup(w->cm, "disk", CUMEM_BACKUP_DISK);
  for (int i = 0; !rc && i < 4; i++) {
    w->n[i] = sizes[i];
    rc = cumem_alloc(w->cm, &w->p[i], sizes[i], 0, WORLD_TAGS[i]);
  }
  /* One cycle first: a driver may open descriptors for its first streams
   * and events, and counts taken after it are the tier's alone. The host
   * backup it pinned is given back: each test starts cold. */
  if (!rc) rc = cumem_sleep(w->cm, NULL, DISK_AND_HOST);
  if (!rc) rc = cumem_wake(w->cm, NULL);
  if (!rc) rc = cumem_release_backup(w->cm, NULL);
  for (int i = 0; !rc && i < 4; i++) rc = fill_pattern(w->cm, w->p[i], w->n[i], 40u + (unsigned)i);
  return rc;
}

/* All four allocations awake and holding their patterns. */
static int world_awake_and_intact(world_t *w) {
  for (int i = 0; i < 4; i++) {
    cumem_alloc_info_t info;
    if (cumem_query(w->cm, w->p[i], &info) || info.asleep || info.backed_up) return 0;
    if (!has_pattern(w->cm, w->p[i], w->n[i], 40u + (unsigned)i)) return 0;
  }
  return 1;
}

static int world_restored(world_t *w) {
  for (int i = 0; i < 3; i++) /* kv was discarded */
    if (!has_pattern(w->cm, w->p[i], w->n[i], 40u + (unsigned)i)) return 0;
  return 1;
}

static int world_close(world_t *w) {
  int ok = 1;
  for (int i = 0; i < 4; i++)
    if (w->p[i] && cumem_free(w->cm, w->p[i])) ok = 0;
  /* (staging buffers a failed transfer could not give back go here) */
  if (cumem_release_backup(w->cm, NULL)) ok = 0;
  ok = ok && counters_zero(w->cm);
  if (cumem_close(w->cm)) ok = 0;
  ok = ok && entries(w->dir) == 0;
  remove_dir(w->dir);
  return ok;
}

/* Sleep with every file limited to `limit` bytes (RLIMIT_FSIZE, SIGXFSZ
 * ignored, so the call that passes the limit fails with EFBIG), then lift
 * the limit again. The large disk allocation does not fit, the small one
 * does. */
static int sleep_under_file_size_limit(world_t *w, rlim_t limit) {
  struct rlimit old, lim;
  getrlimit(RLIMIT_FSIZE, &old);
  lim = old;
  lim.rlim_cur = limit;
  struct sigaction ign = {.sa_handler = SIG_IGN}, prev;
  sigaction(SIGXFSZ, &ign, &prev);
  setrlimit(RLIMIT_FSIZE, &lim);
  int rc = cumem_sleep(w->cm, NULL, DISK_AND_HOST);
  setrlimit(RLIMIT_FSIZE, &old);
  sigaction(SIGXFSZ, &prev, NULL);
  return rc;
}

static void full_disk(int reserve_space) {
  world_t w;
  CHECK_OK(world_open(&w, 1, NULL));
  /* reserve_space = 0: as on a filesystem without fallocate, where the
   * writes themselves find the limit, after the first pieces went out. */
  hook_t h = {.force_op = reserve_space ? NULL : "allocate", .force_err = EOPNOTSUPP};
  cumem_fault_disk(hook_fn, &h);
  int fds = open_fds_of(w.cm);
  int rc = sleep_under_file_size_limit(&w, 3 * w.g);
  cumem_fault_disk(NULL, NULL);
  CHECK_RC(rc, CUMEM_ENOSPC);
  CHECK(strstr(cumem_last_error(), w.dir) != NULL); /* where */
  char bytes[32];
  snprintf(bytes, sizeof bytes, "%zu bytes", (6 * w.g + 99 + w.g - 1) / w.g * w.g);
  CHECK(strstr(cumem_last_error(), bytes) != NULL); /* how much */
  snprintf(bytes, sizeof bytes, "needs %zu bytes", 8 * w.g); /* for the whole sleep */
  CHECK(strstr(cumem_last_error(), bytes) && strstr(cumem_last_error(), "nothing was released"));
  /* Nothing of the call slept, whatever its tag; nothing is left on disk. */
  CHECK(world_awake_and_intact(&w));
  cumem_stats_t s;
  CHECK_OK(cumem_stats(w.cm, NULL, &s));
  CHECK(s.bytes_mapped == s.bytes_allocated && s.bytes_on_disk == 0 && s.bytes_backed_up == 0);
  CHECK(open_fds_of(w.cm) == fds && entries(w.dir) == 0);
  /* With room again the same sleep goes through, and everything wakes. */
  CHECK_OK(cumem_sleep(w.cm, NULL, DISK_AND_HOST));
  CHECK_OK(cumem_stats(w.cm, NULL, &s));
  CHECK(s.bytes_mapped == 0 && s.bytes_on_disk == w.g + 7 * w.g);
  CHECK_OK(cumem_wake(w.cm, NULL));
  CHECK(world_restored(&w));
  CHECK(world_close(&w));
}

TEST(full_disk_at_reservation_keeps_memory) { full_disk(1); }
TEST(full_disk_during_writes_keeps_memory) { full_disk(0); }

/* ENOSPC and EDQUOT from the filesystem (injected) are CUMEM_ENOSPC too;
 * other I/O errors are CUMEM_EIO. */
TEST(disk_errors_map_to_codes) {
  struct { const char *op; int err, want; } cases[] = {
      {"allocate", ENOSPC, CUMEM_ENOSPC}, {"write", ENOSPC, CUMEM_ENOSPC},
      {"write", EDQUOT, CUMEM_ENOSPC},    {"tmpfile", ENOSPC, CUMEM_ENOSPC},
      {"write", EIO, CUMEM_EIO},          {"allocate", EIO, CUMEM_EIO},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    world_t w;
    CHECK_OK(world_open(&w, 0, NULL));
    hook_t h = {.op = cases[c].op, .nth = 2, .err = cases[c].err};
    cumem_fault_disk(hook_fn, &h);
    int rc = cumem_sleep(w.cm, NULL, DISK_AND_HOST);
    cumem_fault_disk(NULL, NULL);
    CHECK(h.injected == 1);
    CHECK_RC(rc, cases[c].want);
    CHECK(strstr(cumem_last_error(), strerror(cases[c].err)) != NULL);
    CHECK(world_awake_and_intact(&w));
    CHECK_OK(cumem_sleep(w.cm, NULL, DISK_AND_HOST));
    CHECK_OK(cumem_wake(w.cm, NULL));
    CHECK(world_restored(&w));
    CHECK(world_close(&w));
  }
}

/* Each sleeping allocation of a disk tag holds an open file: out of
 * descriptors is said as that (the process's limit), not as a disk error,
 * and nothing sleeps. */
TEST(out_of_descriptors_says_so) {
  /* On cuda the driver may want descriptors of its own inside the sleep:
   * this is the disk tier's message, the same on every backend. */
  if (strcmp(test_backend(), "host") != 0) return;
  world_t w;
  CHECK_OK(world_open(&w, 0, NULL));
  int lowest = dup(0); /* the next descriptor a file would get */
  CHECK(lowest >= 0);
  close(lowest);
  struct rlimit old, lim;
  getrlimit(RLIMIT_NOFILE, &old);
  lim = old;
  lim.rlim_cur = (rlim_t)lowest; /* no new descriptor at all */
  CHECK(setrlimit(RLIMIT_NOFILE, &lim) == 0);
  int rc = cumem_sleep(w.cm, NULL, DISK_AND_HOST);
  setrlimit(RLIMIT_NOFILE, &old);
  CHECK_RC(rc, CUMEM_ENOHOST);
  CHECK(strstr(cumem_last_error(), "Too many open files") && strstr(cumem_last_error(), "ulimit -n"));
  CHECK(world_awake_and_intact(&w));
  CHECK(world_close(&w));
}

/* ---- failures anywhere lose nothing ---------------------------------------------- */

/* For each k, fail the k-th backend call (or the k-th file operation) of a
 * sleep or a wake, until one gets through untouched. Each time: an error,
 * no descriptor or staging buffer left behind beyond the backups, and after a
 * retry without faults every byte back. */
enum what { BACKEND, FILES };

static void sweep(int wake, enum what what, int persistent) {
  int reached_end = 0;
  for (long k = 1; k < 5000 && !reached_end; k++) {
    world_t w;
    cumem_backend_t *fault = NULL;
    CHECK_OK(world_open(&w, 1, &fault));
    if (wake) CHECK_OK(cumem_sleep(w.cm, NULL, DISK_AND_HOST));
    int fds = open_fds_of(w.cm);
    hook_t h = {.nth = k, .err = EIO, .persistent = persistent};
    if (what == BACKEND) cumem_fault_arm(fault, k, NULL, CUMEM_EDRIVER, persistent);
    else cumem_fault_disk(hook_fn, &h);
    int rc = wake ? cumem_wake(w.cm, NULL) : cumem_sleep(w.cm, NULL, DISK_AND_HOST);
    long injected = what == BACKEND ? cumem_fault_injected(fault) : h.injected;
    cumem_fault_arm(fault, 0, NULL, 0, 0);
    cumem_fault_disk(NULL, NULL);
    if (!injected) {
      CHECK_OK(rc);
      reached_end = 1;
    } else if (rc) {
      CHECK(strstr(cumem_last_error(), what == BACKEND ? "fault injected" : strerror(EIO)) != NULL);
      cumem_backend_counters_t c;
      CHECK_OK(cumem_backend_counters(w.cm, &c));
      CHECK(c.streams == 0 && c.events == 0);
      if (wake) CHECK(open_fds_of(w.cm) == fds); /* the backups stay */
      else CHECK(open_fds_of(w.cm) <= fds + 2);  /* none, or those of a completed disk phase */
      /* A retry without faults completes it; after a failed sleep, every
       * other time a wake instead (what was released had its backup, what
       * was not is still mapped). */
      if (wake || k % 2) CHECK_OK(wake ? cumem_wake(w.cm, NULL) : cumem_sleep(w.cm, NULL, DISK_AND_HOST));
    }
    if (!wake) CHECK_OK(cumem_wake(w.cm, NULL));
    CHECK(world_restored(&w));
    CHECK(world_close(&w));
  }
  CHECK(reached_end);
}

TEST(every_backend_failure_during_disk_sleep) { sweep(0, BACKEND, 0); }
TEST(every_backend_failure_during_disk_wake) { sweep(1, BACKEND, 0); }
TEST(persistent_backend_failures_during_disk_sleep) { sweep(0, BACKEND, 1); }
TEST(persistent_backend_failures_during_disk_wake) { sweep(1, BACKEND, 1); }
TEST(every_file_failure_during_disk_sleep) { sweep(0, FILES, 0); }
TEST(every_file_failure_during_disk_wake) { sweep(1, FILES, 0); }

/* ---- files go on wake, free and close; no host copy ----------------------------- */

TEST(files_go_on_free_and_close) {
  world_t w;
  int base = open_fds_all();
  CHECK_OK(world_open(&w, 0, NULL));
  int fds = open_fds_of(w.cm);
  CHECK_OK(cumem_sleep(w.cm, NULL, DISK_AND_HOST));
  CHECK(open_fds_of(w.cm) == fds + 2);
  CHECK_OK(cumem_free(w.cm, w.p[1])); /* freed asleep: its file goes */
  w.p[1] = NULL;
  CHECK(open_fds_of(w.cm) == fds + 1);
  cumem_stats_t s;
  CHECK_OK(cumem_stats(w.cm, NULL, &s));
  CHECK(s.bytes_on_disk == w.g);
  CHECK_OK(cumem_close(w.cm)); /* closed asleep: the other one goes */
  CHECK(open_fds_all() == base && entries(w.dir) == 0);
  remove_dir(w.dir);
}

/* The tier holds no host copy: after the sleep, process memory does not
 * hold the content (on the host backend, device memory is process memory
 * too, so RSS drops by about the size). */
TEST(disk_sleep_holds_no_host_copy) {
  char d[256];
  cumem_t *cm = open_on(new_dir(NULL, d), 0, 0);
  CHECK(cm);
  size_t n = 96 << 20;
  CHECK_OK(set_backup(cm, "disk", CUMEM_BACKUP_DISK));
  void *p;
  CHECK_OK(cumem_alloc(cm, &p, n, 0, "disk"));
  const char *DISK[] = {"disk", NULL};
  CHECK_OK(cumem_sleep(cm, DISK, DISK)); /* a first cycle: what a driver sets up once */
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK_OK(fill_pattern(cm, p, n, 5));
  size_t before = rss_bytes();
  CHECK_OK(cumem_sleep(cm, DISK, DISK));
  size_t after = rss_bytes();
  cumem_stats_t s;
  CHECK_OK(cumem_stats(cm, "disk", &s));
  CHECK(s.bytes_host_held == 0 && s.bytes_on_disk == n);
  if (!strcmp(cumem_backend_name(cm), "host")) CHECK(after + n / 2 < before);
  else CHECK(after < before + n / 4);
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK(has_pattern(cm, p, n, 5));
  CHECK_OK(cumem_close(cm));
  remove_dir(d);
}

/* A tag may change its backup between cycles; the host view never shows
 * content older than the last sleep. */
TEST(backup_kind_changes_between_cycles) {
  char d[256];
  cumem_t *cm = open_on(new_dir(NULL, d), 0, 0);
  CHECK(cm);
  size_t n = 2 * granularity_of(cm);
  void *p, *view;
  size_t len;
  const char *W[] = {"w", NULL};
  CHECK_OK(cumem_alloc(cm, &p, n, 0, "w"));
  CHECK_OK(fill_pattern(cm, p, n, 1));
  CHECK_OK(cumem_sleep(cm, NULL, W)); /* host, retained */
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK_OK(cumem_backup_view(cm, p, &view, &len));
  CHECK_OK(set_backup(cm, "w", CUMEM_BACKUP_DISK));
  CHECK_OK(fill_pattern(cm, p, n, 2));
  CHECK_OK(cumem_sleep(cm, NULL, W)); /* disk: the retained host copy is stale */
  CHECK_RC(cumem_backup_view(cm, p, &view, &len), CUMEM_ENOTFOUND);
  CHECK(strstr(cumem_last_error(), "disk") != NULL);
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK(has_pattern(cm, p, n, 2));
  CHECK_RC(cumem_backup_view(cm, p, &view, &len), CUMEM_ENOTFOUND);
  CHECK_OK(cumem_prepare_backup(cm, W)); /* a disk tag gets no host backup */
  CHECK_OK(set_backup(cm, "w", CUMEM_BACKUP_HOST));
  CHECK_OK(fill_pattern(cm, p, n, 3));
  CHECK_OK(cumem_sleep(cm, NULL, W));
  CHECK_OK(cumem_backup_view(cm, p, &view, &len));
  CHECK(len == n && *(unsigned char *)view == pattern_byte(0, 3));
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK(has_pattern(cm, p, n, 3));
  CHECK_OK(cumem_close(cm));
  remove_dir(d);
}

/* ---- a crash ------------------------------------------------------------------ */

/* A child sleeps a disk tag into dir and is killed (SIGKILL) at the file
 * operation `kill_op`; with no_tmpfile the named fallback is used. The child
 * runs on the host backend whatever is under test: a forked child must not
 * use the parent's CUDA context. Returns the child's wait status. */
static int crash_child(const char *dir, const char *kill_op, long nth, int no_tmpfile) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    cumem_backend_t *b;
    cumem_t *cm;
    cumem_options_t o;
    cumem_options_init(&o);
    o.disk_dir = dir;
    o.copy_chunk = 1 << 20;
    if (cumem_backend_host(&b) || cumem_open_backend(&cm, &o, b)) _exit(2);
    void *p;
    if (set_backup(cm, "disk", CUMEM_BACKUP_DISK) || cumem_alloc(cm, &p, 8 << 20, 0, "disk") ||
        fill_pattern(cm, p, 8 << 20, 9))
      _exit(3);
    hook_t h = {.op = kill_op, .nth = nth, .kill = 1,
                .force_op = no_tmpfile ? "tmpfile" : NULL, .force_err = EOPNOTSUPP};
    cumem_fault_disk(hook_fn, &h);
    const char *DISK[] = {"disk", NULL};
    cumem_sleep(cm, DISK, DISK);
    _exit(4); /* not reached: killed */
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

static void crash(int no_tmpfile) {
  char d[256];
  CHECK(new_dir(NULL, d)[0]);
  int status = crash_child(d, no_tmpfile ? "unlink" : "write", no_tmpfile ? 1 : 3, no_tmpfile);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  /* Killed mid-sleep: with O_TMPFILE nothing is left; the fallback may leave
   * one empty named file (killed between creating and unlinking it). */
  CHECK(entries(d) == (no_tmpfile ? 1 : 0));
  /* A stray file that looks like a backup (right size, plausible bytes) is
   * never read: the next process sleeps and wakes its own content, and the
   * stray file is left as it was. */
  char stray[300];
  snprintf(stray, sizeof stray, "%s/.cumem-disk-stray0", d);
  int fd = open(stray, O_CREAT | O_WRONLY, 0600);
  CHECK(fd >= 0);
  unsigned char junk[4096];
  memset(junk, 0x5A, sizeof junk);
  for (int i = 0; i < (8 << 20) / 4096; i++) CHECK(write(fd, junk, sizeof junk) == sizeof junk);
  close(fd);
  struct stat before, after;
  CHECK(stat(stray, &before) == 0);
  int nentries = entries(d);
  cumem_t *cm = open_on(d, 0, 1 << 20);
  CHECK(cm);
  void *p;
  CHECK_OK(set_backup(cm, "disk", CUMEM_BACKUP_DISK));
  CHECK_OK(cumem_alloc(cm, &p, 8 << 20, 0, "disk"));
  CHECK_OK(fill_pattern(cm, p, 8 << 20, 10));
  const char *DISK[] = {"disk", NULL};
  CHECK_OK(cumem_sleep(cm, DISK, DISK));
  CHECK_OK(cumem_wake(cm, NULL));
  CHECK(has_pattern(cm, p, 8 << 20, 10));
  CHECK_OK(cumem_close(cm));
  CHECK(stat(stray, &after) == 0);
  CHECK(after.st_size == before.st_size && after.st_ino == before.st_ino &&
        after.st_mtim.tv_sec == before.st_mtim.tv_sec && after.st_mtim.tv_nsec == before.st_mtim.tv_nsec);
  CHECK(entries(d) == nentries);
  remove_dir(d);
}

TEST(crash_mid_sleep_leaves_nothing) { crash(0); }
TEST(crash_left_over_is_never_read) { crash(1); }

RUN_TESTS("disk",
          T(round_trip_bit_exact),
          T(round_trip_on_tmpfs),
          T(round_trip_without_o_tmpfile),
          T(round_trip_without_o_direct),
          T(disk_dir_is_checked),
          T(disk_tag_without_disk_dir),
          T(full_disk_at_reservation_keeps_memory),
          T(full_disk_during_writes_keeps_memory),
          T(disk_errors_map_to_codes), T(out_of_descriptors_says_so),
          T(every_backend_failure_during_disk_sleep),
          T(every_backend_failure_during_disk_wake),
          T(persistent_backend_failures_during_disk_sleep),
          T(persistent_backend_failures_during_disk_wake),
          T(every_file_failure_during_disk_sleep),
          T(every_file_failure_during_disk_wake),
          T(files_go_on_free_and_close),
          T(disk_sleep_holds_no_host_copy),
          T(backup_kind_changes_between_cycles),
          T(crash_mid_sleep_leaves_nothing),
          T(crash_left_over_is_never_read))
