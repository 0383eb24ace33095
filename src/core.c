/* The core: instances, tags, allocation and free, figures. The sleep/wake
 * engine is in sleep.c, host backups in hostmem.c, everything that touches a
 * device behind cm->backend. */
#include "core.h"
#include "options.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- tags ---------------------------------------------------------------- */

static _Thread_local char current_tag[CUMEM_TAG_MAX + 1] = "default";

static int check_tag_name(const char *tag) {
  if (!tag || !*tag) return CUMEM_FAIL(CUMEM_EINVAL, "a tag must be a non-empty string");
  if (strlen(tag) > CUMEM_TAG_MAX)
    return CUMEM_FAIL(CUMEM_EINVAL, "tag \"%.*s...\" is longer than %d bytes", (int)cumem__utf8_prefix(tag, 20), tag,
                      CUMEM_TAG_MAX);
  return 0;
}

int cumem_set_current_tag(const char *tag) {
  if (!tag) tag = "default";
  int rc = check_tag_name(tag);
  if (rc) return rc;
  strcpy(current_tag, tag);
  return 0;
}

const char *cumem_current_tag(void) { return current_tag; }

static tag_t *tag_find(cumem_t *cm, const char *name) {
  for (tag_t *t = cm->tags; t; t = t->next)
    if (strcmp(t->name, name) == 0) return t;
  return NULL;
}

/* The tag named `name`, created if new (*created says so). Pre: lock held,
 * name checked. */
static int tag_get(cumem_t *cm, const char *name, tag_t **out, int *created) {
  *created = 0;
  if ((*out = tag_find(cm, name))) return 0;
  tag_t *t = calloc(1, sizeof *t);
  if (!t) return CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory for a tag");
  strcpy(t->name, name);
  cumem_tag_options_init(&t->opts);
  t->next = cm->tags;
  cm->tags = t;
  cm->ntags++;
  *out = t;
  *created = 1;
  return 0;
}

/* Forget the newest tag again (one tag_get just created, nobody uses). */
static void tag_forget_newest(cumem_t *cm) {
  tag_t *t = cm->tags;
  cm->tags = t->next;
  cm->ntags--;
  free(t);
}

void cumem_tag_options_init(cumem_tag_options_t *o) {
  if (!o) return;
  o->backup = CUMEM_BACKUP_HOST;
  o->skip_unchanged = CUMEM_TAG_INHERIT;
  o->prepare_ahead = CUMEM_TAG_INHERIT;
}

static int check_tag_options(const cumem_tag_options_t *o) {
  if (o->backup != CUMEM_BACKUP_HOST && o->backup != CUMEM_BACKUP_DISK)
    return CUMEM_FAIL(CUMEM_EINVAL, "tag option backup = %d (expected CUMEM_BACKUP_HOST or CUMEM_BACKUP_DISK)",
                      o->backup);
  if (o->skip_unchanged < CUMEM_TAG_INHERIT || o->skip_unchanged > 1)
    return CUMEM_FAIL(CUMEM_EINVAL, "tag option skip_unchanged = %d (expected -1, 0 or 1)", o->skip_unchanged);
  if (o->prepare_ahead < CUMEM_TAG_INHERIT || o->prepare_ahead > 1)
    return CUMEM_FAIL(CUMEM_EINVAL, "tag option prepare_ahead = %d (expected -1, 0 or 1)", o->prepare_ahead);
  return 0;
}

int cumem_tag_set_options(cumem_t *cm, const char *tag, const cumem_tag_options_t *o) {
  if (!cm || !o) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_tag_set_options: NULL argument");
  int rc = check_tag_name(tag);
  if (!rc) rc = check_tag_options(o);
  if (!rc) rc = cumem__enter(cm);
  if (rc) return rc;
  tag_t *t = NULL;
  int created;
  rc = tag_get(cm, tag, &t, &created);
  if (!rc) t->opts = *o;
  cumem__leave(cm);
  return rc;
}

int cumem_tag_get_options(cumem_t *cm, const char *tag, cumem_tag_options_t *o) {
  if (!cm || !o) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_tag_get_options: NULL argument");
  int rc = check_tag_name(tag);
  if (!rc) rc = cumem__enter(cm);
  if (rc) return rc;
  tag_t *t = tag_find(cm, tag);
  if (t) *o = t->opts;
  else rc = CUMEM_FAIL(CUMEM_ENOTAG, "no allocation has ever used tag \"%s\"", tag);
  cumem__leave(cm);
  return rc;
}

int cumem__tag_set(cumem_t *cm, const char *const *names, tag_t ***out, size_t *n, int *all) {
  *out = NULL;
  *n = 0;
  *all = names == NULL;
  if (!names) return 0;
  size_t count = 0;
  while (names[count]) count++;
  tag_t **set = calloc(count ? count : 1, sizeof *set);
  if (!set) return CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory for a tag list");
  for (size_t i = 0; i < count; i++) {
    int rc = check_tag_name(names[i]);
    if (!rc && !(set[i] = tag_find(cm, names[i])))
      rc = CUMEM_FAIL(CUMEM_ENOTAG, "no allocation has ever used tag \"%s\"", names[i]);
    if (rc) {
      free(set);
      return rc;
    }
  }
  *out = set;
  *n = count;
  return 0;
}

int cumem__tag_prepares_ahead(const cumem_t *cm, const tag_t *t) {
  if (t->opts.backup == CUMEM_BACKUP_DISK) return 0; /* its backup is a file, not host memory */
  if (t->opts.prepare_ahead != CUMEM_TAG_INHERIT) return t->opts.prepare_ahead;
  const char *list = cm->ahead_tags;
  if (!list) return 0;
  if (strcmp(list, "all") == 0) return 1;
  size_t n = strlen(t->name);
  for (const char *p = list; *p;) { /* "a,b,c": is t->name one of them? */
    size_t len = strcspn(p, ",");
    if (len == n && strncmp(p, t->name, n) == 0) return 1;
    p += len + (p[len] == ',');
  }
  return 0;
}

int cumem__tag_in(tag_t *t, tag_t **set, size_t n, int all) {
  if (all) return 1;
  for (size_t i = 0; i < n; i++)
    if (set[i] == t) return 1;
  return 0;
}

/* ---- instances ----------------------------------------------------------- */

/* More than one NUMA node online ("0-1", "0,2"; a single one reads "0"). */
static int several_numa_nodes(void) {
  FILE *f = fopen("/sys/devices/system/node/online", "r");
  char line[256] = "";
  if (f) {
    if (!fgets(line, sizeof line, f)) line[0] = '\0';
    fclose(f);
  }
  return strpbrk(line, "-,") != NULL;
}

/* The prepare_ahead list: "all" alone, or tag names separated by commas,
 * matched exactly. What could never match is refused rather than ignored:
 * an empty name, one longer than a tag, one with a space at either end
 * ("weights, kv"), or "all" among names. */
static int check_ahead_list(const char *list) {
  if (strcmp(list, "all") == 0) return 0;
  for (const char *p = list;;) {
    size_t len = strcspn(p, ",");
    if (len == 0 || len > CUMEM_TAG_MAX)
      return CUMEM_FAIL(CUMEM_EINVAL, "prepare_ahead (CUMEM_PREPARE_AHEAD) \"%s\": %s", list,
                        len ? "a tag name longer than 63 bytes" : "an empty tag name");
    if (p[0] == ' ' || p[len - 1] == ' ')
      return CUMEM_FAIL(CUMEM_EINVAL,
                        "prepare_ahead (CUMEM_PREPARE_AHEAD) \"%s\": \"%.*s\" has a space at an end; tag "
                        "names are matched exactly, separated by commas alone",
                        list, (int)len, p);
    if (len == 3 && strncmp(p, "all", 3) == 0)
      return CUMEM_FAIL(CUMEM_EINVAL, "prepare_ahead (CUMEM_PREPARE_AHEAD) \"%s\": all stands alone", list);
    if (!p[len]) return 0;
    p += len + 1;
  }
}

/* The options that name strings or files become the instance's own: the
 * caller's strings need not outlive cumem_open, and cm->opts keeps none of
 * them (as with backend and disk_dir). */
static int take_option_strings(cumem_t *cm) {
  const char *ahead = cm->opts.prepare_ahead, *lock = cm->opts.register_lock;
  cm->opts.prepare_ahead = cm->opts.register_lock = NULL;
  cm->register_lock_fd = -1;
  if (ahead && *ahead) {
    int rc = check_ahead_list(ahead);
    if (rc) return rc;
    if (!(cm->ahead_tags = strdup(ahead)))
      return CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory for the prepare_ahead option");
  }
  if (lock && *lock) { /* "" is none, as for disk_dir and prepare_ahead */
    cm->register_lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (cm->register_lock_fd < 0)
      return CUMEM_FAIL(CUMEM_EINVAL, "register_lock: cannot open %s: %s", lock, strerror(errno));
  }
  return 0;
}

int cumem_open_backend(cumem_t **out, const cumem_options_t *opts, cumem_backend_t *backend) {
  if (!backend) return CUMEM_FAIL(CUMEM_EINVAL, "no backend given");
  if (!out) {
    backend->destroy(backend);
    return CUMEM_FAIL(CUMEM_EINVAL, "out is NULL");
  }
  *out = NULL;
  cumem_options_t defaults;
  if (!opts) {
    cumem_options_init(&defaults);
    opts = &defaults;
  }
  int rc = cumem__options_validate(opts);
  int scope = cumem__log_scope(!rc && opts->verbose); /* this instance's verbosity from here on */
  cumem_t *cm = rc ? NULL : calloc(1, sizeof *cm);
  if (!rc && !cm) rc = CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory for an instance");
  int table = 0;
  if (!rc) table = !(rc = cumem__table_init(&cm->table));
  if (!rc) {
    cm->opts = *opts;
    cm->opts.backend = NULL; /* the caller's string: only cumem_open needed it */
    cm->opts.invalid_env = NULL;
    cm->backend = backend;
    rc = backend->device_count(backend, &cm->ndevices);
  }
  if (!rc && cm->ndevices <= 0)
    rc = CUMEM_FAIL(CUMEM_ENODRIVER, "backend %s has no device", backend->name);
  if (!rc && cm->ndevices > CUMEM_MAX_DEVICES) cm->ndevices = CUMEM_MAX_DEVICES;
  if (!rc && cm->opts.disk_dir && *cm->opts.disk_dir)
    rc = cumem__disk_dir_check(cm->opts.disk_dir, &cm->disk_dir);
  if (cm) cm->opts.disk_dir = NULL; /* the caller's string; the instance's own copy is cm->disk_dir */
  for (int d = 0; !rc && d < cm->ndevices; d++) {
    rc = backend->device_info(backend, d, &cm->devices[d].info);
    if (!rc && cm->devices[d].info.granularity == 0)
      rc = CUMEM_FAIL(CUMEM_EDRIVER, "device %d reports granularity 0", d);
    cm->devices[d].known = !rc;
  }
  if (!rc) rc = take_option_strings(cm);
  if (rc) {
    if (cm) {
      if (table) cumem__table_destroy(&cm->table);
      free(cm->ahead_tags);
      free(cm->disk_dir);
    }
    free(cm);
    backend->destroy(backend);
    cumem__log_scope_restore(scope);
    return rc;
  }
  cm->numa_bind = cm->opts.numa == 1 || (cm->opts.numa == -1 && several_numa_nodes());
  cumem__lock_init(&cm->lock);
  cumem__background_init(cm);
  cm->fork_generation = cumem__fork_generation();
  cumem__log("opened on backend %s with %d device(s)", backend->name, cm->ndevices);
  cumem__log_scope_restore(scope);
  *out = cm;
  return 0;
}

int cumem_backend_open(const char *name, cumem_backend_t **out) {
  if (!out) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_backend_open: out is NULL");
  *out = NULL;
  if (!name) name = "auto";
  if (strcmp(name, "cuda") == 0) return cumem_backend_cuda(out);
  if (strcmp(name, "host") == 0) return cumem_backend_host(out);
  if (strcmp(name, "auto") != 0)
    return CUMEM_FAIL(CUMEM_EINVAL, "unknown backend \"%s\" (expected auto, cuda or host)", name);
  /* The cuda probe's failure is no failure of this call: when the host
   * backend takes over, this thread's detail stays as it was. */
  cumem__error_save_t before;
  cumem__error_save(&before);
  int rc = cumem_backend_cuda(out);
  if (rc == CUMEM_ENODRIVER) {
    cumem__log("auto: no CUDA driver or GPU (%s); using the host backend", cumem_last_error());
    cumem__error_restore(&before);
    rc = cumem_backend_host(out);
  }
  return rc;
}

int cumem_open(cumem_t **out, const cumem_options_t *opts) {
  cumem_options_t defaults;
  if (!opts) {
    cumem_options_init(&defaults);
    opts = &defaults;
  }
  if (!out) return CUMEM_FAIL(CUMEM_EINVAL, "out is NULL");
  *out = NULL;
  /* Validate before the backend starts (a driver is not loaded for
   * options that will be refused). */
  int rc = cumem__options_validate(opts);
  if (rc) return rc;
  int scope = cumem__log_scope(opts->verbose);
  cumem_backend_t *b = NULL;
  rc = cumem_backend_open(opts->backend, &b);
  if (!rc) rc = cumem_open_backend(out, opts, b);
  cumem__log_scope_restore(scope);
  return rc;
}

const char *cumem_backend_name(const cumem_t *cm) { return cm ? cm->backend->name : "none"; }

pthread_mutex_t cumem__default_lock = PTHREAD_MUTEX_INITIALIZER;
static cumem_t *default_instance;

int cumem_default(cumem_t **out) {
  if (!out) return CUMEM_FAIL(CUMEM_EINVAL, "out is NULL");
  pthread_mutex_lock(&cumem__default_lock);
  int rc = default_instance ? cumem__check_process(default_instance) : cumem_open(&default_instance, NULL);
  *out = default_instance; /* a failed open is retried by the next call */
  pthread_mutex_unlock(&cumem__default_lock);
  return rc;
}

/* ---- chunks -------------------------------------------------------------- */

size_t cumem__chunk_size(const alloc_t *a, size_t i) {
  size_t off = i * a->chunk;
  return a->size - off < a->chunk ? a->size - off : a->chunk;
}

/* Bring chunk i to READY: created, mapped, accessible; undo on failure. */
int cumem__map_chunk(cumem_t *cm, alloc_t *a, size_t i) {
  cumem_backend_t *b = cm->backend;
  uintptr_t va = a->va + i * a->chunk;
  size_t n = cumem__chunk_size(a, i);
  int rc = 0;
  if (a->state[i] == CHUNK_NONE) {
    rc = b->create(b, a->device, n, &a->handles[i]);
    if (!rc) a->state[i] = CHUNK_HANDLE;
  }
  if (!rc && a->state[i] == CHUNK_HANDLE) {
    rc = b->map(b, va, n, a->handles[i]);
    if (!rc) a->state[i] = CHUNK_MAPPED;
  }
  if (!rc && a->state[i] == CHUNK_MAPPED) {
    rc = b->set_access(b, va, n, a->device, a->peer_mask);
    if (!rc) {
      a->state[i] = CHUNK_READY;
      a->nmapped++;
    }
  }
  if (rc) {
    /* Undo; whatever cannot be undone stays recorded for sleep or free. */
    cumem__error_save_t e;
    cumem__error_save(&e);
    (void)cumem__unmap_chunk(cm, a, i);
    cumem__error_restore(&e);
  }
  return rc;
}

/* Bring chunk i down to NONE: unmapped and released. On failure the state
 * says what is left, and a retry finishes it. */
int cumem__unmap_chunk(cumem_t *cm, alloc_t *a, size_t i) {
  cumem_backend_t *b = cm->backend;
  if (a->state[i] == CHUNK_READY || a->state[i] == CHUNK_MAPPED) {
    int rc = b->unmap(b, a->va + i * a->chunk, cumem__chunk_size(a, i));
    if (rc) return rc;
    if (a->state[i] == CHUNK_READY) a->nmapped--;
    a->state[i] = CHUNK_HANDLE;
  }
  if (a->state[i] == CHUNK_HANDLE) {
    int rc = b->release(b, a->handles[i]);
    if (rc) return rc;
    a->handles[i] = 0;
    a->state[i] = CHUNK_NONE;
  }
  return 0;
}

int cumem__backup_map(cumem_t *cm, alloc_t *a) {
  if (a->backup.ptr) return 0;
  int node = cm->numa_bind ? cm->devices[a->device].info.numa_node : -1;
  return cumem__hostbuf_map(&a->backup, a->size, cm->opts.copy_chunk, node);
}

int cumem__streams_get(cumem_t *cm, streams_t *st, int device, void **out) {
  if (!st->s[device]) {
    int rc = cm->backend->stream_create(cm->backend, device, &st->s[device]);
    if (rc) return rc;
  }
  *out = st->s[device];
  return 0;
}

int cumem__streams_finish(cumem_t *cm, streams_t *st) {
  int first = 0;
  for (int d = 0; d < CUMEM_MAX_DEVICES; d++) {
    if (!st->s[d]) continue;
    int rc = cm->backend->stream_synchronize(cm->backend, st->s[d]);
    int rc2 = cm->backend->stream_destroy(cm->backend, st->s[d]);
    st->s[d] = NULL;
    if (!first) first = rc ? rc : rc2;
  }
  return first;
}

int cumem__is_asleep(const alloc_t *a) { return a->nmapped < a->nchunks || a->backed_up; }

int cumem__holds_memory(const alloc_t *a) {
  for (size_t i = 0; i < a->nchunks; i++)
    if (a->state[i] != CHUNK_NONE) return 1;
  return 0;
}

/* ---- allocation ---------------------------------------------------------- */

static int check_device(cumem_t *cm, int device) {
  if (device < 0 || device >= cm->ndevices)
    return CUMEM_FAIL(CUMEM_ENODEV, "device %d does not exist (backend %s has %d)", device,
                      cm->backend->name, cm->ndevices);
  return 0;
}

static void alloc_destroy_record(alloc_t *a) {
  free(a->handles);
  free(a->state);
  free(a);
}

/* Release everything an allocation holds. Pre: the device is idle for it.
 * On failure the record stays (in its new, smaller state) for a retry. */
static int alloc_release_all(cumem_t *cm, alloc_t *a) {
  for (size_t i = 0; i < a->nchunks; i++) {
    int rc = cumem__unmap_chunk(cm, a, i);
    if (rc) return rc;
  }
  int rc = cumem__hostbuf_free(cm->backend, &a->backup);
  if (rc) return rc;
  cumem__disk_close(&a->disk);
  a->backed_up = 0;
  /* The address range goes last: while the record exists, no other
   * allocation can be given its addresses. */
  if (a->reserved) {
    rc = cm->backend->unreserve(cm->backend, a->va, a->size);
    if (rc) return rc;
    a->reserved = 0;
  }
  return 0;
}

/* Retry the release of failed allocations whose undo failed. */
static void drain_limbo(cumem_t *cm) {
  alloc_t **p = &cm->limbo;
  while (*p) {
    alloc_t *a = *p;
    if (alloc_release_all(cm, a) == 0) {
      *p = a->next;
      alloc_destroy_record(a);
    } else {
      p = &a->next;
    }
  }
}

int cumem_alloc_ex(cumem_t *cm, void **out, size_t size, int device, const char *tag,
                   uint64_t peer_mask) {
  if (!cm || !out) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_alloc: %s is NULL", cm ? "out" : "instance");
  *out = NULL;
  if (!tag) tag = current_tag;
  if (size == 0) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_alloc: size 0");
  int rc = cumem__check_process(cm);
  if (!rc) rc = check_device(cm, device);
  if (!rc) rc = check_tag_name(tag);
  if (rc) return rc;
  for (int d = 0; d < 64; d++)
    if ((peer_mask >> d & 1) && d >= cm->ndevices)
      return CUMEM_FAIL(CUMEM_ENODEV, "peer device %d does not exist", d);
  const cumem_device_info_t *dev = &cm->devices[device].info;
  size_t gran = dev->granularity;
  if (size > dev->total_bytes || size > SIZE_MAX - gran)
    return CUMEM_FAIL(CUMEM_E2BIG, "cumem_alloc: %zu bytes exceed device %d's %zu bytes", size, device,
                      dev->total_bytes);
  /* No sum here can wrap: size <= SIZE_MAX - gran, and the chunk size
   * (validated at open) is below the rounded size. */
  size_t rounded = cumem__ceil_div(size, gran) * gran;
  size_t chunk = rounded;
  if (cm->opts.chunk_size && cm->opts.chunk_size < rounded) chunk = cumem__ceil_div(cm->opts.chunk_size, gran) * gran;

  alloc_t *a = calloc(1, sizeof *a);
  size_t nchunks = cumem__ceil_div(rounded, chunk);
  if (a) {
    a->handles = calloc(nchunks, sizeof *a->handles);
    a->state = calloc(nchunks, 1);
  }
  if (!a || !a->handles || !a->state) {
    if (a) alloc_destroy_record(a);
    return CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory for an allocation record");
  }
  a->size = rounded;
  a->requested = size;
  a->chunk = chunk;
  a->nchunks = nchunks;
  a->device = device;
  a->peer_mask = peer_mask & ~((uint64_t)1 << device);

  rc = cumem__enter(cm); /* (its fork check cannot fail here: the one above passed) */
  if (rc) {
    alloc_destroy_record(a);
    return rc;
  }
  if (cm->limbo) {
    cumem__error_save_t e0;
    cumem__error_save(&e0);
    drain_limbo(cm);
    cumem__error_restore(&e0);
  }
  tag_t *t = NULL;
  int new_tag = 0;
  rc = tag_get(cm, tag, &t, &new_tag);
  a->tag = t;
  if (!rc) rc = cm->backend->reserve(cm->backend, device, rounded, &a->va);
  a->reserved = !rc;
  for (size_t i = 0; !rc && i < nchunks; i++) rc = cumem__map_chunk(cm, a, i);
  if (!rc) rc = cumem__table_insert(&cm->table, a);
  if (rc) {
    cumem__error_save_t e;
    cumem__error_save(&e);
    if (alloc_release_all(cm, a) != 0) {
      /* Keep it reachable: the next allocation or cumem_close retries. */
      cumem__log("could not undo a failed allocation completely; retried later");
      a->tag = NULL;
      a->next = cm->limbo;
      cm->limbo = a;
    } else {
      alloc_destroy_record(a);
    }
    if (new_tag) tag_forget_newest(cm); /* nobody uses it: forget it again */
    cumem__error_restore(&e);
  } else {
    *out = (void *)a->va;
    if (cumem__tag_prepares_ahead(cm, t)) { /* pinned once the tag stops growing */
      a->ahead = AHEAD_WANTED;
      t->ahead_due = cumem__now() + cm->opts.prepare_ahead_delay_ms * 1e-3;
      cumem__background_kick(cm);
    }
  }
  cumem__leave(cm);
  return rc;
}

int cumem_alloc(cumem_t *cm, void **out, size_t size, int device, const char *tag) {
  return cumem_alloc_ex(cm, out, size, device, tag, 0);
}

int cumem__find_start(cumem_t *cm, const void *ptr, const char *what, alloc_t **out) {
  alloc_t *a = cumem__table_find(&cm->table, (uintptr_t)ptr);
  if (a && !a->freeing) {
    *out = a;
    return 0;
  }
  if (!a && cumem__table_find_containing(&cm->table, (uintptr_t)ptr))
    return CUMEM_FAIL(CUMEM_EINVAL, "%s(%p): inside an allocation, not at its start", what, ptr);
  if (a) return CUMEM_FAIL(CUMEM_ENOTFOUND, "%s(%p): the allocation is being freed (a free failed half-way: "
                                            "free it again)", what, ptr);
  return CUMEM_FAIL(CUMEM_ENOTFOUND, "%s(%p): not a live cumem allocation (freed already?)", what, ptr);
}

static int free_locked(cumem_t *cm, void *ptr, int sync_device) {
  /* A record marked freeing (a free that failed half-way) is finished here. */
  alloc_t *a = cumem__table_find(&cm->table, (uintptr_t)ptr);
  if (!a) return cumem__find_start(cm, ptr, "free", &a); /* says why there is none */
  int rc = 0;
  a->freeing = 1; /* from now on sleep, wake and data access leave it alone */
  /* Kernels may still run on the memory: unmap does not wait for them. */
  if (sync_device && cumem__holds_memory(a)) rc = cm->backend->synchronize(cm->backend, a->device);
  if (!rc) rc = alloc_release_all(cm, a);
  if (rc) return rc; /* still in the table, in a state a retry completes */
  cumem__table_remove(&cm->table, a);
  alloc_destroy_record(a);
  return 0;
}

int cumem_free(cumem_t *cm, void *ptr) {
  if (!cm || !ptr) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_free: %s is NULL", cm ? "ptr" : "instance");
  int rc = cumem__enter(cm);
  if (rc) return rc;
  rc = free_locked(cm, ptr, 1);
  cumem__leave(cm);
  return rc;
}

int cumem_free_on_stream(cumem_t *cm, void *ptr, void *stream) {
  if (!cm || !ptr) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_free: %s is NULL", cm ? "ptr" : "instance");
  /* Wait outside the lock: other threads keep allocating meanwhile. */
  int rc = cumem__check_process(cm);
  if (!rc) rc = cm->backend->stream_synchronize(cm->backend, stream);
  if (!rc) rc = cumem__enter(cm);
  if (rc) return rc;
  rc = free_locked(cm, ptr, 0);
  cumem__leave(cm);
  return rc;
}

/* Everything an instance holds, released. Pre: lock held. On failure what
 * is left stays recorded, and a retry continues. */
static int release_everything(cumem_t *cm) {
  int rc = 0;
  for (int d = 0; d < cm->ndevices && !rc; d++) rc = cm->backend->synchronize(cm->backend, d);
  if (!rc) {
    drain_limbo(cm);
    if (cm->limbo) rc = CUMEM_FAIL(CUMEM_EDRIVER, "could not release what a failed allocation left");
  }
  if (!rc) rc = cumem__disk_staging_free(cm);
  while (!rc && cm->table.first) {
    alloc_t *a = cm->table.first;
    rc = alloc_release_all(cm, a);
    if (!rc) {
      cumem__table_remove(&cm->table, a);
      alloc_destroy_record(a);
    }
  }
  if (!rc) rc = cumem__skip_give_back(cm);
  return rc;
}

int cumem_close(cumem_t *cm) {
  if (!cm) return 0;
  int rc = cumem__check_process(cm);
  if (rc) return rc;
  for (;;) {
    cumem__background_stop(cm); /* what it left undone is freed below */
    rc = cumem__enter(cm);
    if (rc) return rc;
    rc = release_everything(cm);
    if (rc) {
      cumem__leave(cm);
      return rc; /* the instance stays usable; close can be retried */
    }
    /* Calls that queued for the instance meanwhile must not find it freed:
     * let them through (they see it empty), then release what they made. */
    if (!cumem__lock_waiters(&cm->lock) && !cm->bg.started) break;
    cumem__leave(cm);
  }
  /* Nobody waits: the lock is never handed on, it is destroyed below. */
  cumem__log_scope_restore(-1);
  pthread_mutex_lock(&cumem__default_lock);
  if (default_instance == cm) default_instance = NULL;
  pthread_mutex_unlock(&cumem__default_lock);
  while (cm->tags) {
    tag_t *t = cm->tags;
    cm->tags = t->next;
    free(t);
  }
  if (cm->bg.error) cumem__log("close: dropping an unreported background failure (its memory is freed now)");
  cumem__table_destroy(&cm->table);
  cumem__background_destroy(cm);
  cumem__lock_destroy(&cm->lock);
  if (cm->register_lock_fd >= 0) close(cm->register_lock_fd);
  free(cm->ahead_tags);
  free(cm->disk_dir);
  cm->backend->destroy(cm->backend);
  free(cm);
  return 0;
}

/* ---- queries and figures ------------------------------------------------- */

static size_t mapped_bytes(const alloc_t *a) {
  if (a->nmapped == a->nchunks) return a->size;
  size_t n = 0;
  for (size_t i = 0; i < a->nchunks; i++)
    if (a->state[i] == CHUNK_READY) n += cumem__chunk_size(a, i);
  return n;
}

int cumem_query(cumem_t *cm, const void *ptr, cumem_alloc_info_t *info) {
  if (!cm || !ptr || !info) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_query: NULL argument");
  int rc = cumem__enter(cm);
  if (rc) return rc;
  alloc_t *a = cumem__table_find_containing(&cm->table, (uintptr_t)ptr);
  if (a) {
    memset(info, 0, sizeof *info);
    info->ptr = (void *)a->va;
    info->size = a->size;
    info->requested = a->requested;
    info->device = a->device;
    info->asleep = cumem__is_asleep(a);
    info->backed_up = a->backed_up;
    info->on_disk = cumem__on_disk(a);
    strcpy(info->tag, a->tag->name);
  }
  cumem__leave(cm);
  return a ? 0 : CUMEM_FAIL(CUMEM_ENOTFOUND, "%p is not inside a live cumem allocation", ptr);
}

/* Where ptr's bytes are in its backup, when the backup holds valid content.
 * Pre: lock held. */
static int backup_locate(cumem_t *cm, const void *ptr, alloc_t **out, void **host, size_t *len) {
  alloc_t *a = cumem__table_find_containing(&cm->table, (uintptr_t)ptr);
  if (!a || a->freeing) return CUMEM_FAIL(CUMEM_ENOTFOUND, "%p is not inside a live cumem allocation", ptr);
  if (cumem__on_disk(a))
    return CUMEM_FAIL(CUMEM_ENOTFOUND, "the content of %p is backed up on disk: no host view", ptr);
  if (!a->backup.filled)
    return !a->backup.ptr ? CUMEM_FAIL(CUMEM_ENOTFOUND, "%p has no host backup", ptr)
           : cumem__is_asleep(a)
               ? CUMEM_FAIL(CUMEM_ENOTFOUND, "%p is asleep with its content discarded: its backup holds nothing valid", ptr)
               : CUMEM_FAIL(CUMEM_ENOTFOUND, "%p's backup holds no content: the last sleep did not save it", ptr);
  size_t off = (uintptr_t)ptr - a->va;
  /* The view is writable and lives as long as the backup: from now on
   * nothing can tell what it holds, so sleep never skips a chunk of it. */
  a->backup.viewed = 1;
  a->backup.fingerprinted = 0;
  *out = a;
  *host = a->backup.ptr + off;
  *len = a->size - off;
  return 0;
}

int cumem_backup_view(cumem_t *cm, const void *ptr, void **host, size_t *len) {
  if (!cm || !ptr || !host || !len) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_backup_view: NULL argument");
  int rc = cumem__enter(cm);
  if (rc) return rc;
  alloc_t *a;
  rc = backup_locate(cm, ptr, &a, host, len);
  cumem__leave(cm);
  return rc;
}

int cumem_backup_pin(cumem_t *cm, const void *ptr, void **host, size_t *len, cumem_backup_pin_t **pin) {
  if (!cm || !ptr || !host || !len || !pin) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_backup_pin: NULL argument");
  *pin = NULL;
  int rc = cumem__enter(cm);
  if (rc) return rc;
  alloc_t *a;
  void *h = NULL;
  size_t n = 0;
  rc = backup_locate(cm, ptr, &a, &h, &n);
  if (!rc) rc = cumem__pin_take(&a->backup, pin);
  if (!rc) {
    *host = h;
    *len = n;
  }
  cumem__leave(cm);
  return rc;
}

int cumem_stats(cumem_t *cm, const char *tag, cumem_stats_t *out) {
  if (!cm || !out) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_stats: NULL argument");
  int rc = tag ? check_tag_name(tag) : 0;
  if (!rc) rc = cumem__enter(cm);
  if (rc) return rc;
  tag_t *t = tag ? tag_find(cm, tag) : NULL;
  rc = tag && !t ? CUMEM_FAIL(CUMEM_ENOTAG, "no allocation has ever used tag \"%s\"", tag) : 0;
  if (!rc) {
    memset(out, 0, sizeof *out);
    for (alloc_t *a = cm->table.first; a; a = a->next) {
      if (t && a->tag != t) continue;
      size_t m = mapped_bytes(a);
      out->allocations++;
      out->bytes_allocated += a->size;
      out->bytes_mapped += m;
      out->bytes_asleep += a->size - m;
      if (a->backed_up) out->bytes_backed_up += a->size;
      if (a->backed_up && !a->disk.filled) out->bytes_skipped += a->skipped; /* host backups only */
      if (cumem__on_disk(a)) out->bytes_on_disk += a->size;
      out->bytes_host_held += cumem__hostbuf_held(&a->backup);
      out->bytes_host_pinned += a->backup.pinned;
    }
  }
  cumem__leave(cm);
  return rc;
}

int cumem_tags(cumem_t *cm, const char **names, size_t cap, size_t *count) {
  if (!cm || !count || (cap && !names)) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_tags: NULL argument");
  int rc = cumem__enter(cm);
  if (rc) return rc;
  /* Oldest first: the list is newest first, so fill from the back. */
  size_t n = cm->ntags, i = n;
  for (tag_t *t = cm->tags; t; t = t->next) {
    i--;
    if (i < cap) names[i] = t->name;
  }
  *count = n;
  cumem__leave(cm);
  return 0;
}

int cumem_backend_counters(cumem_t *cm, cumem_backend_counters_t *out) {
  if (!cm || !out) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_backend_counters: NULL argument");
  cm->backend->counters(cm->backend, out);
  return 0;
}

int cumem_device_count(cumem_t *cm, int *count) {
  if (!cm || !count) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_device_count: NULL argument");
  *count = cm->ndevices;
  return 0;
}

int cumem_device_info(cumem_t *cm, int device, cumem_device_info_t *info) {
  if (!cm || !info) return CUMEM_FAIL(CUMEM_EINVAL, "cumem_device_info: NULL argument");
  int rc = cumem__check_process(cm);
  if (!rc) rc = check_device(cm, device);
  return rc ? rc : cm->backend->device_info(cm->backend, device, info);
}

/* ---- data access --------------------------------------------------------- */

/* The allocation that holds all of [p, p + n), awake. */
static int find_range(cumem_t *cm, const void *p, size_t n, alloc_t **out) {
  alloc_t *a = cumem__table_find_containing(&cm->table, (uintptr_t)p);
  if (!a) return CUMEM_FAIL(CUMEM_ENOTFOUND, "%p is not inside a live cumem allocation", p);
  if (n > a->size - ((uintptr_t)p - a->va))
    return CUMEM_FAIL(CUMEM_EINVAL, "%zu bytes at %p run past the end of their allocation", n, p);
  if (cumem__is_asleep(a) || a->freeing)
    return CUMEM_FAIL(CUMEM_EINVAL, "%p is asleep: wake it before touching its content", p);
  *out = a;
  return 0;
}

enum { TO_DEVICE, TO_HOST, SET };

static int transfer(cumem_t *cm, int kind, void *dst, const void *src, int value, size_t n) {
  if (!cm || !dst || (kind != SET && !src)) return CUMEM_FAIL(CUMEM_EINVAL, "copy: NULL argument");
  cumem_backend_t *b = cm->backend;
  int rc = cumem__enter(cm);
  if (rc) return rc;
  alloc_t *a = NULL;
  /* The address is checked whatever the length (0 bytes at an unknown
   * address is ENOTFOUND, as any other length). */
  rc = find_range(cm, kind == TO_HOST ? src : dst, n, &a);
  void *stream = NULL;
  if (!rc && n == 0) {
    cumem__leave(cm);
    return 0;
  }
  if (!rc) rc = b->stream_create(b, a->device, &stream);
  if (!rc) {
    if (kind == TO_DEVICE) rc = b->copy_to_device(b, (uintptr_t)dst, src, n, stream);
    else if (kind == TO_HOST) rc = b->copy_to_host(b, dst, (uintptr_t)src, n, stream);
    else rc = b->memset(b, (uintptr_t)dst, (unsigned char)value, n, stream);
    int rc2 = b->stream_synchronize(b, stream);
    if (!rc) rc = rc2;
    rc2 = b->stream_destroy(b, stream);
    if (!rc) rc = rc2;
  }
  cumem__leave(cm);
  return rc;
}

int cumem_copy_to_device(cumem_t *cm, void *dst, const void *src, size_t n) {
  return transfer(cm, TO_DEVICE, dst, src, 0, n);
}
int cumem_copy_to_host(cumem_t *cm, void *dst, const void *src, size_t n) {
  return transfer(cm, TO_HOST, dst, src, 0, n);
}
int cumem_memset(cumem_t *cm, void *dst, int value, size_t n) {
  return transfer(cm, SET, dst, NULL, value, n);
}
