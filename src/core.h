/* The core's data: instances, tags, allocations and their host backups. */
#ifndef CUMEM_CORE_H
#define CUMEM_CORE_H

#include "internal.h"
#include "hostmem.h"
#include "disk.h"

#include <pthread.h>

#define CUMEM_MAX_DEVICES 64

typedef struct tag {
  struct tag *next;
  char name[CUMEM_TAG_MAX + 1];
  cumem_tag_options_t opts;
  double ahead_due; /* prepare-ahead of its allocations starts then (cumem__now) */
} tag_t;

/* The state of one chunk of physical memory. Each step up is one backend
 * call, and a failure stops at the last state reached; so every state a
 * failure can leave is described, and sleep, wake and free simply finish
 * what is missing (a retry never redoes or skips a step). */
enum chunk_state {
  CHUNK_NONE,   /* no physical memory */
  CHUNK_HANDLE, /* created (or its unmap succeeded but release failed) */
  CHUNK_MAPPED, /* mapped, not yet accessible */
  CHUNK_READY,  /* mapped and accessible: the only state content lives in */
};

/* One allocation. Its address range is reserved for life; its physical memory
 * comes in `nchunks` chunks, each with its own state and handle. */
typedef struct alloc {
  uintptr_t va;
  size_t size;       /* rounded to the granularity */
  size_t requested;
  size_t chunk;      /* bytes per chunk (the last may be shorter) */
  size_t nchunks;
  size_t nmapped;    /* chunks READY */
  cumem_handle_t *handles;
  unsigned char *state; /* enum chunk_state per chunk */
  int reserved;      /* the address range is still reserved */
  int device;
  uint64_t peer_mask;
  tag_t *tag;
  hostbuf_t backup;  /* pinned host memory, kept across cycles when retained */
  diskfile_t disk;   /* the backup of a disk tag (disk.c), while asleep */
  int backed_up;     /* a backup holds the content (set once copied): the
                        file when disk.filled, else the host backup */
  int ahead;         /* enum ahead: preparing its backup in the background */
  size_t skipped;    /* bytes of it its sleep did not copy: the host backup
                        held them already (skip unchanged; skip.h) */
  int freeing;       /* a free has begun: only free (a retry) may touch it */
  struct alloc *hash_next;          /* table bucket chain */
  struct alloc *prev, *next;        /* every allocation, oldest first */
} alloc_t;

/* Its content is backed up in its disk file (disk.h), not in host memory. */
static inline int cumem__on_disk(const alloc_t *a) { return a->backed_up && a->disk.filled; }

/* Prepare-ahead of an allocation's backup by the background worker. */
enum ahead {
  AHEAD_NONE,   /* not asked for */
  AHEAD_WANTED, /* to prepare once its tag's ahead_due has come */
  AHEAD_DONE,   /* prepared, or taken over by a sleep, a release or a failure */
};

typedef struct table {
  alloc_t **buckets;
  size_t nbuckets, count;
  alloc_t *first, *last;
} table_t;

typedef struct device {
  int known; /* info read */
  cumem_device_info_t info;
} device_t;

/* One stream per device, created on first use within a call (core.c). */
typedef struct streams {
  void *s[CUMEM_MAX_DEVICES];
} streams_t;

/* lock.c: a fair (FIFO) lock. */
typedef struct cumem__lock {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  unsigned long next, serving; /* tickets */
} cumem__lock_t;

/* background.c: the instance's background worker, one thread started on
 * first need and joined by close. Its work is found in the allocation
 * table (backups to give back, backups to prepare ahead) and done in small
 * steps, each under the instance lock. */
typedef struct cumem__background {
  pthread_t thread;
  int started;            /* the thread runs (instance lock) */
  pthread_mutex_t mu;     /* guards kicked, stop and cv */
  pthread_cond_t cv;      /* kicked or stop set */
  int kicked, stop;
  int held;               /* tests: the thread does no step (instance lock) */
  int error;              /* first failure not yet reported (instance lock) */
  cumem__error_save_t detail;
  uintptr_t give_back_at, prepare_at; /* where the last step of each kind
                             worked: the next one looks there first */
  struct cumem *next_running; /* the list of running workers (background.c) */
  double busy_since;      /* for the log: 0 when idle */
  size_t given_back, prepared; /* bytes, since busy_since */
} cumem__background_t;

struct cumem {
  cumem_backend_t *backend;
  cumem_options_t opts;   /* its strings are NULL: the instance keeps its own
                             copies (ahead_tags, disk_dir) or what they name
                             (register_lock_fd) */
  char *ahead_tags;       /* the prepare_ahead option, owned; NULL: none */
  int numa_bind;          /* put backups on their GPU's NUMA node */
  int register_lock_fd;   /* opts.register_lock opened, or -1 */
  unsigned fork_generation; /* cumem__fork_generation() at open */
  cumem__lock_t lock; /* guards everything below; held across sleep/wake */
  table_t table;
  tag_t *tags;
  size_t ntags;
  int ndevices;
  device_t devices[CUMEM_MAX_DEVICES];
  alloc_t *limbo;  /* failed allocations whose undo failed: retried later */
  cumem__background_t bg;
  char *disk_dir;  /* absolute path for disk backups, or NULL (disk.c) */
  hostbuf_t disk_staging; /* disk.c's staging buffers, during a call */
  uint64_t *fp_arena;    /* skip.c: page-locked room for a sleep's
                            fingerprints (kept only if unlocking failed) */
};

void cumem__lock_init(cumem__lock_t *l);
void cumem__lock_destroy(cumem__lock_t *l);
void cumem__lock_acquire(cumem__lock_t *l);
void cumem__lock_release(cumem__lock_t *l);
/* Threads queued for the lock, besides its holder. Pre: held. */
unsigned long cumem__lock_waiters(cumem__lock_t *l);
/* The generation of this process (bumped in each fork child); installs the
 * fork handler on first use. */
unsigned cumem__fork_generation(void);
/* CUMEM_EFORKED when cm was opened before a fork, in the parent. */
int cumem__check_process(const cumem_t *cm);
/* Guards cumem_default's instance (core.c); re-made in a fork child. */
extern pthread_mutex_t cumem__default_lock;
/* Every public call on an instance: the process check, then the lock. */
int cumem__enter(cumem_t *cm);
void cumem__leave(cumem_t *cm);

/* table.c: allocations by start address. */
int cumem__table_init(table_t *t);
void cumem__table_destroy(table_t *t);
int cumem__table_insert(table_t *t, alloc_t *a);
void cumem__table_remove(table_t *t, alloc_t *a);
alloc_t *cumem__table_find(const table_t *t, uintptr_t va);
alloc_t *cumem__table_find_containing(const table_t *t, uintptr_t addr);

/* core.c: helpers the sleep engine shares. */
/* The live allocation that starts at ptr: CUMEM_EINVAL for an address
 * inside one, CUMEM_ENOTFOUND otherwise (the header's rule). Pre: lock held. */
int cumem__find_start(cumem_t *cm, const void *ptr, const char *what, alloc_t **out);
int cumem__map_chunk(cumem_t *cm, alloc_t *a, size_t i);
/* Any chunk holds physical memory (READY or not). */
int cumem__holds_memory(const alloc_t *a);
/* Not all of its content is on the device: some chunk is not READY, or the
 * backup holds content not yet restored (a wake whose undo failed, a sleep
 * that failed after the copy). Such memory must not be read or written. */
int cumem__is_asleep(const alloc_t *a);
int cumem__unmap_chunk(cumem_t *cm, alloc_t *a, size_t i);
size_t cumem__chunk_size(const alloc_t *a, size_t i);
/* Resolve a NULL-terminated tag list: NULL = match all (*all = 1). Unknown
 * tag names are CUMEM_ENOTAG. */
int cumem__tag_set(cumem_t *cm, const char *const *names, tag_t ***out, size_t *n, int *all);
int cumem__tag_in(tag_t *t, tag_t **set, size_t n, int all);
/* Whether t's allocations have their backups prepared ahead (the tag's
 * option, else the instance's list). */
int cumem__tag_prepares_ahead(const cumem_t *cm, const tag_t *t);
/* Map (not yet pin) a's backup buffer, unless it has one. */
int cumem__backup_map(cumem_t *cm, alloc_t *a);
/* The stream of `device` in st, created if it has none yet (*out is left
 * as it was on failure). */
int cumem__streams_get(cumem_t *cm, streams_t *st, int device, void **out);
/* Wait for and destroy every stream of st; returns the first failure. */
int cumem__streams_finish(cumem_t *cm, streams_t *st);

/* sleep.c: the engine, over a list of allocations. */
int cumem__engine_sleep(cumem_t *cm, alloc_t **list, size_t n, const unsigned char *offload);
int cumem__engine_wake(cumem_t *cm, alloc_t **list, size_t n);
int cumem__engine_prepare(cumem_t *cm, alloc_t **list, size_t n);

/* background.c. All but init, stop and destroy need the instance lock. */
void cumem__background_init(cumem_t *cm);
/* There is work: start the worker if it is not running, and wake it. */
void cumem__background_kick(cumem_t *cm);
/* One step of the most urgent work: 1 if it did one, 0 if nothing is due;
 * *due (when 0 is returned) is when delayed work comes due (0: none).
 * ignore_delay: prepare-ahead work is due at once. */
int cumem__background_step(cumem_t *cm, int ignore_delay, double *due);
/* The first failure of background work not yet reported (0 if none): its
 * code, with its detail set on this thread; it is then forgotten. */
int cumem__background_take_error(cumem_t *cm);
/* Pre: the lock NOT held. Stop and join the worker (its work stays). */
void cumem__background_stop(cumem_t *cm);
void cumem__background_destroy(cumem_t *cm);
/* skip.c: give back the fingerprint arena where a sleep could not (its
 * unregistration failed); 0 when there is none. close and release_backup
 * call it. */
int cumem__skip_give_back(cumem_t *cm);

#endif
