/* Each thread's region, and the environment switch every thread starts in.
 *
 * A thread's region is thread-local, as torch_memory_saver's is: PyTorch's
 * caching allocator calls cudaMalloc on the thread that allocates the tensor,
 * so a region set from Python (ctypes) on that thread covers its tensors and
 * no other thread's. A thread that never entered a region is in the
 * process's default region, which the environment decides once. */
#include "preload.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static cumem_preload_region_t process_default;
static pthread_once_t env_once = PTHREAD_ONCE_INIT;

static _Thread_local int thread_started;
static _Thread_local cumem_preload_region_t thread_region;

static void warn(const char *what) {
  fprintf(stderr, "cumem preload: %s; allocations are not made sleepable by the environment\n", what);
}

/* A yes/no variable: 1 and *out set when it is set and well-formed, 0 when
 * unset or empty, -1 when malformed (reported). */
static int env_bool(const char *name, int *out) {
  const char *v = getenv(name);
  if (!v || !*v) return 0;
  static const char *const yes[] = {"1", "true", "yes", "on"}, *const no[] = {"0", "false", "no", "off"};
  for (size_t i = 0; i < 4; i++) {
    if (!strcasecmp(v, yes[i])) return *out = 1, 1;
    if (!strcasecmp(v, no[i])) return *out = 0, 1;
  }
  char msg[160];
  snprintf(msg, sizeof msg, "%s=%.40s is not a yes/no value (1/0, true/false, yes/no, on/off)", name, v);
  warn(msg);
  return -1;
}

/* The switch: CUMEM_PRELOAD[_TAG|_BACKUP], or torch_memory_saver's TMS_INIT_*
 * names where cumem's are unset. The tag's prefix says its backup. */
static void read_environment(void) {
  int enable = 0, cpu = 0, disk = 0;
  int rc = env_bool("CUMEM_PRELOAD", &enable);
  if (rc == 0) rc = env_bool("TMS_INIT_ENABLE", &enable);
  if (rc < 0 || !enable) return;

  const char *backup = getenv("CUMEM_PRELOAD_BACKUP");
  if (backup && *backup) {
    if (!strcasecmp(backup, "cpu")) cpu = 1;
    else if (!strcasecmp(backup, "disk")) disk = 1;
    else if (strcasecmp(backup, "none")) {
      char msg[120];
      snprintf(msg, sizeof msg, "CUMEM_PRELOAD_BACKUP=%.40s is not cpu, disk or none", backup);
      warn(msg);
      return;
    }
  } else {
    if (env_bool("TMS_INIT_ENABLE_CPU_BACKUP", &cpu) < 0) return;
    if (env_bool("TMS_INIT_ENABLE_DISK_BACKUP", &disk) < 0) return;
    if (cpu && disk) {
      warn("TMS_INIT_ENABLE_CPU_BACKUP and TMS_INIT_ENABLE_DISK_BACKUP exclude each other");
      return;
    }
  }

  const char *tag = getenv("CUMEM_PRELOAD_TAG");
  if (!tag || !*tag) tag = "default";
  if (strlen(tag) > CUMEM_PRELOAD_USER_TAG_MAX) {
    char msg[160];
    snprintf(msg, sizeof msg, "CUMEM_PRELOAD_TAG=\"%.20s...\" is longer than %d bytes", tag,
             CUMEM_PRELOAD_USER_TAG_MAX);
    warn(msg);
    return;
  }
  process_default.enabled = 1;
  snprintf(process_default.tag, sizeof process_default.tag, "%s%s",
           disk  ? CUMEM_PRELOAD_TAG_DISK
           : cpu ? CUMEM_PRELOAD_TAG_CPU
                 : CUMEM_PRELOAD_TAG_PLAIN,
           tag);
}

void cumem_preload_default(cumem_preload_region_t *out) {
  pthread_once(&env_once, read_environment);
  if (out) *out = process_default;
}

const cumem_preload_region_t *cumem__preload_region(void) {
  if (!thread_started) {
    cumem_preload_default(&thread_region);
    thread_started = 1;
  }
  return &thread_region;
}

void cumem_preload_current(cumem_preload_region_t *out) {
  if (out) *out = *cumem__preload_region();
}

int cumem_preload_begin(const char *tag, cumem_preload_region_t *saved) {
  if (!saved) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_preload_begin: saved is NULL");
  if (tag && (!*tag || strlen(tag) > CUMEM_TAG_MAX))
    return CUMEM_FAIL(CUMEM_EINVAL, "cumem_preload_begin: tag \"%.20s\" is empty or longer than %d bytes",
                      tag, CUMEM_TAG_MAX);
  *saved = *cumem__preload_region();
  memset(&thread_region, 0, sizeof thread_region);
  if (tag) {
    thread_region.enabled = 1;
    strcpy(thread_region.tag, tag);
  }
  return 0;
}

void cumem_preload_end(const cumem_preload_region_t *saved) {
  if (saved) {
    thread_region = *saved;
    thread_region.tag[CUMEM_TAG_MAX] = '\0';
  } else {
    cumem_preload_default(&thread_region);
  }
  thread_started = 1;
}
