/*
 * cumem — sleepable GPU memory.
 *
 * An allocation keeps its virtual address for life. Its physical memory can be
 * released ("sleep": content copied to host memory first, or discarded) and
 * created again ("wake": content restored bit for bit) at the same address, so
 * raw pointers, tensors and captured CUDA graphs stay valid.
 *
 * Conventions (libuv-like):
 *  - every call returns 0 or a negative CUMEM_E* code; cumem_strerror() names
 *    the code and cumem_last_error() gives this thread's detail of its last
 *    failure (driver call, CUresult name, source line). There is no sticky
 *    global error: a failure never poisons later calls.
 *  - a failed call changes nothing, or leaves a state that a retry completes
 *    (documented per call). No call exits or aborts the process.
 *  - one rule per kind of error, whatever the call:
 *      CUMEM_EINVAL     a malformed argument: NULL for any pointer argument;
 *                       size 0 for cumem_alloc; a tag name that is empty or
 *                       longer than CUMEM_TAG_MAX; an address inside a live
 *                       allocation but not at its start, where the start is
 *                       required (free, unmap_release, create_map); an
 *                       access past the end of its allocation or to memory
 *                       that is asleep; an option that is not allowed;
 *      CUMEM_ENOTFOUND  an address in no live allocation. The address is
 *                       checked before the length: copying or setting 0
 *                       bytes at an unknown address is CUMEM_ENOTFOUND too;
 *      CUMEM_ENOTAG     a well-formed tag name that was never used (in tag
 *                       lists, cumem_stats, cumem_tag_get_options).
 *  - every call is thread-safe; sleep and wake serialize with alloc and free.
 *    Calls on one instance are served in the order they arrive (a FIFO
 *    lock): a call waits at most for the calls queued before it, so a thread
 *    that sleeps and wakes back to back cannot hold off other threads'
 *    cumem_stats or cumem_alloc for more than the call in progress and the
 *    ones already queued. cumem_close lets calls that wait for the instance
 *    through before it frees it; no call may start on it once close has
 *    returned 0 (Python's Instance.close() refuses with CUMEM_EBUSY while
 *    other threads' calls run).
 *  - fork(): in a child process every call on an instance opened before the
 *    fork, and cumem_default() when its instance was, returns CUMEM_EFORKED
 *    at once, even when another thread of the parent was inside a call (a
 *    sleep, say) at the moment of the fork; nothing hangs and nothing
 *    touches the parent's memory. CUDA does not survive fork(): a child that
 *    needs GPU memory must exec; on the host backend a child may open a new
 *    instance. The parent's instances are not freed in the child.
 */
#ifndef CUMEM_H
#define CUMEM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version: the one place it is written (CMake and setup.py read it from
 * here). cumem_version() is the version of the library actually loaded. */
#define CUMEM_VERSION_MAJOR 0
#define CUMEM_VERSION_MINOR 2
#define CUMEM_VERSION_PATCH 0
#define CUMEM_VERSION_STRINGIFY_(x) #x
#define CUMEM_VERSION_STRING_(a, b, c) \
  CUMEM_VERSION_STRINGIFY_(a) "." CUMEM_VERSION_STRINGIFY_(b) "." CUMEM_VERSION_STRINGIFY_(c)
#define CUMEM_VERSION \
  CUMEM_VERSION_STRING_(CUMEM_VERSION_MAJOR, CUMEM_VERSION_MINOR, CUMEM_VERSION_PATCH)
/* MAJOR << 16 | MINOR << 8 | PATCH, for compile-time comparisons. */
#define CUMEM_VERSION_HEX \
  ((CUMEM_VERSION_MAJOR << 16) | (CUMEM_VERSION_MINOR << 8) | CUMEM_VERSION_PATCH)

#if defined(__GNUC__)
#define CUMEM_API __attribute__((visibility("default")))
#else
#define CUMEM_API
#endif

/* "0.2.0": the version of the loaded library (may differ from the header's
 * CUMEM_VERSION when a program runs against a newer libcumem.so). */
CUMEM_API const char *cumem_version(void);
/* The same as CUMEM_VERSION_HEX, of the loaded library. */
CUMEM_API unsigned cumem_version_hex(void);

/* ---- errors ------------------------------------------------------------ */

/* Every error code, once: XX(name, value, meaning). The enum, cumem_strerror,
 * cumem_err_name and the Python constants are generated from this list
 * (libuv's UV_ERRNO_MAP). Values are negative and never reused. */
#define CUMEM_ERRNO_MAP(XX)                                                     \
  XX(EINVAL, -1, "invalid argument")                                          \
  XX(ENOMEM, -2, "out of device memory")                                      \
  XX(ENOHOST, -3, "out of host memory")                                       \
  XX(ENOTFOUND, -4, "not a live cumem allocation")                            \
  XX(ENOTAG, -5, "unknown tag")                                               \
  XX(ENODEV, -6, "no such device")                                            \
  XX(ENODRIVER, -7, "backend unavailable (no driver or GPU)")                 \
  XX(EDRIVER, -8, "driver call failed")                                       \
  XX(E2BIG, -9, "size exceeds the device's memory")                           \
  XX(ENOTSUP, -10, "not supported by this backend or device")                 \
  XX(ENOSPC, -11, "out of disk space for a backup")                           \
  XX(EBUSY, -12, "busy: other calls are still using it")                      \
  XX(EFORKED, -13, "the instance belongs to the parent process (fork)")      \
  XX(EIO, -14, "disk I/O failed for a backup")

enum {
  CUMEM_OK = 0,
#define CUMEM_XX_(name, value, meaning) CUMEM_##name = (value),
  CUMEM_ERRNO_MAP(CUMEM_XX_)
#undef CUMEM_XX_
};

/* Name and meaning of an error code ("CUMEM_ENOMEM: out of device memory");
 * "CUMEM_E?: unknown error code" for a value not in the list. */
CUMEM_API const char *cumem_strerror(int code);
/* The code's name alone ("CUMEM_ENOMEM"; "CUMEM_E?" when unknown). */
CUMEM_API const char *cumem_err_name(int code);
/* Detail of the last failure of a cumem call made by this thread. Valid until
 * this thread's next failing call. Never NULL ("" when none). */
CUMEM_API const char *cumem_last_error(void);

/* ---- options ----------------------------------------------------------- */

typedef struct cumem_options {
  const char *backend;  /* "auto" (default), "cuda" or "host"; CUMEM_BACKEND */
  size_t chunk_size;    /* physical backing in chunks of this many bytes,
                           rounded up to the granularity; 0 = one handle per
                           allocation (default); up to 1 TiB;
                           CUMEM_CHUNK_SIZE_MB */
  int zero_on_wake;     /* 0/1: discarded allocations read zero after wake;
                           CUMEM_ZERO_ON_WAKE (default 0) */
  int retain_backup;    /* 0/1: keep pinned host backups after wake for the
                           next sleep; CUMEM_RETAIN_BACKUP (default 1) */
  size_t copy_chunk;    /* bytes per host<->device copy and per pinned host
                           segment: a multiple of the page size, from 4 KiB
                           to 1 TiB; CUMEM_COPY_CHUNK_MB (default 64 MiB) */
  int host_threads;     /* threads preparing pinned host memory, 1 to 256;
                           CUMEM_HOST_THREADS (default: min(8, cores)) */
  int release_threads;  /* threads releasing discarded allocations while the
                           copies run, 1 to 64; CUMEM_RELEASE_THREADS
                           (default 4) */
  int verbose;          /* 0/1: this instance prints what it decides, its
                           timings and its errors to stderr; CUMEM_VERBOSE */
  const char *prepare_ahead; /* tags whose host backups are pinned in the
                           background ahead of the first sleep: "a,b" or
                           "all"; NULL or "" = none (a tag's own
                           prepare_ahead option overrides); the instance
                           keeps a copy. CUMEM_PREPARE_AHEAD */
  int prepare_ahead_delay_ms; /* ... starting once the tag has had no new
                           allocation for this long, 0 to 86400000;
                           CUMEM_PREPARE_AHEAD_DELAY_MS (default 1000) */
  int numa;             /* host backups on the NUMA node nearest their GPU:
                           1 always, 0 never, -1 where the machine has more
                           than one node (default); CUMEM_NUMA (also
                           "auto" = -1) */
  const char *register_lock; /* an experiment: a file path; processes that
                           name the same file page-lock host memory one at
                           a time (NULL = no lock); CUMEM_REGISTER_LOCK */
  const char *disk_dir; /* directory for the backups of tags whose backup is
                           CUMEM_BACKUP_DISK; NULL or "" = none (sleeping
                           such a tag is then CUMEM_EINVAL). Checked at open:
                           it must exist, be a directory and take new files.
                           Copied: the string need not outlive the call.
                           CUMEM_DISK_DIR */
  int skip_unchanged;   /* at sleep, fingerprint each copy chunk on the
                           device and copy only those that changed since
                           the retained backup was written (per tag:
                           cumem_tag_options_t); CUMEM_SKIP_UNCHANGED */
  const char *invalid_env; /* NULL, or the name of the first CUMEM_*
                           variable cumem_options_init could not use
                           (malformed, negative, overflowing or out of
                           range). cumem_open refuses such options with
                           CUMEM_EINVAL naming the variable, its value and
                           the allowed values; setting that option with
                           cumem_options_set clears it. */
} cumem_options_t;

/* Fill *opts with the defaults, then apply the CUMEM_* environment. Sizes
 * from the environment may carry a unit ("1.5G", "512K"); a bare number
 * counts the unit of the name (MiB for *_MB). A variable set to the empty
 * string counts as unset. Values are checked again by cumem_open. */
CUMEM_API void cumem_options_init(cumem_options_t *opts);

/* Set the option `name` (the field's name: "copy_chunk", "verbose", ...)
 * from text, read as its environment variable would be except that a size
 * without a unit counts bytes ("65536", "64M", "1.5GiB"). A string value is
 * not copied: it must live until cumem_open returns. CUMEM_EINVAL, with a
 * detail naming the option and its allowed values, for an unknown name or a
 * malformed or out-of-range value; *opts is then unchanged. */
CUMEM_API int cumem_options_set(cumem_options_t *opts, const char *name,
                                const char *value);

/* ---- instances --------------------------------------------------------- */

typedef struct cumem cumem_t;

/* Open an instance. opts may be NULL (cumem_options_init's values). Every
 * option is validated first: CUMEM_EINVAL names the first one not allowed
 * (and its CUMEM_* variable when the value came from the environment) with
 * its allowed values. Fails with CUMEM_ENODRIVER if "cuda" is asked for and
 * no driver/GPU answers. String options need not outlive the call. */
CUMEM_API int cumem_open(cumem_t **out, const cumem_options_t *opts);
/* Free every allocation and backup, then the instance. NULL is a no-op.
 * Calls of other threads that are waiting for the instance meanwhile are
 * let through first (they find it emptied): it is never freed under them.
 * On failure the instance stays open and usable, and close can be
 * retried. */
CUMEM_API int cumem_close(cumem_t *cm);
/* "cuda" or "host" (or a custom backend's name). */
CUMEM_API const char *cumem_backend_name(const cumem_t *cm);
/* The process-wide instance used by the PyTorch entry points and Python,
 * opened on first use with the environment's options. */
CUMEM_API int cumem_default(cumem_t **out);

/* Change the instance's disk_dir (checked as at open; NULL or "" = none).
 * Backups already on disk stay where they are (their files have no name);
 * later sleeps write under the new directory. */
CUMEM_API int cumem_set_disk_dir(cumem_t *cm, const char *dir);
/* Copy the disk_dir (an absolute path; "" when none) into buf. CUMEM_EINVAL
 * when it does not fit in cap bytes. */
CUMEM_API int cumem_get_disk_dir(cumem_t *cm, char *buf, size_t cap);

/* ---- tags -------------------------------------------------------------- */

#define CUMEM_TAG_MAX 63 /* longest tag, in bytes */

/* The calling thread's current tag, used by allocations that name none.
 * NULL restores "default". */
CUMEM_API int cumem_set_current_tag(const char *tag);
CUMEM_API const char *cumem_current_tag(void);

/* Per-tag choices. A field left at CUMEM_TAG_INHERIT follows the instance's
 * option of the same name. Setting the options of a tag never used creates
 * it (it is then listed by cumem_tags and may be named in tag lists). */
#define CUMEM_TAG_INHERIT (-1)
enum {
  CUMEM_BACKUP_HOST = 0, /* offloaded content goes to pinned host memory */
  CUMEM_BACKUP_DISK = 1, /* ... to files under the instance's disk_dir,
                            through a few pinned staging buffers: no host
                            copy is kept. Files have no name (nothing left
                            over after a crash can be read) and are removed
                            on wake, free and close. */
};
typedef struct cumem_tag_options {
  int backup;         /* CUMEM_BACKUP_HOST (default) or CUMEM_BACKUP_DISK */
  int skip_unchanged; /* 0/1: at sleep, copy only what changed since the
                         retained backup was written; INHERIT */
  int prepare_ahead;  /* 0/1: pin the host backup in the background once
                         the tag stops growing; INHERIT */
} cumem_tag_options_t;

/* Every field CUMEM_TAG_INHERIT, backup CUMEM_BACKUP_HOST. */
CUMEM_API void cumem_tag_options_init(cumem_tag_options_t *o);
CUMEM_API int cumem_tag_set_options(cumem_t *cm, const char *tag,
                                    const cumem_tag_options_t *o);
/* CUMEM_ENOTAG for a tag never used or configured. */
CUMEM_API int cumem_tag_get_options(cumem_t *cm, const char *tag,
                                    cumem_tag_options_t *o);

/* ---- allocation -------------------------------------------------------- */

/* Reserve an address range on `device`, back it with physical memory and give
 * the device read/write access. The size is rounded up to the allocation
 * granularity. tag NULL = the thread's current tag. */
CUMEM_API int cumem_alloc(cumem_t *cm, void **out, size_t size, int device,
                          const char *tag);
/* As cumem_alloc, and also give read/write access to the devices whose bits
 * are set in peer_mask (bit d = device d), now and after every wake. */
CUMEM_API int cumem_alloc_ex(cumem_t *cm, void **out, size_t size, int device,
                             const char *tag, uint64_t peer_mask);
/* Free in any state (awake, asleep, half-way): physical memory, address range
 * and backup are each released exactly once. Waits for the device first. */
CUMEM_API int cumem_free(cumem_t *cm, void *ptr);
/* As cumem_free, but waits only for work queued on `stream` (a CUstream;
 * NULL = the legacy default stream), not for the whole device. */
CUMEM_API int cumem_free_on_stream(cumem_t *cm, void *ptr, void *stream);

typedef struct cumem_alloc_info {
  void *ptr;          /* start of the allocation */
  size_t size;        /* rounded size */
  size_t requested;   /* size asked for */
  int device;
  int asleep;         /* 1 when any of its physical memory is released */
  int backed_up;      /* 1 when a backup (host or disk) holds its content */
  char tag[CUMEM_TAG_MAX + 1];
  int on_disk;        /* 1 when that backup is a file under disk_dir */
} cumem_alloc_info_t;

/* Describe the allocation that contains ptr (any address inside it). */
CUMEM_API int cumem_query(cumem_t *cm, const void *ptr,
                          cumem_alloc_info_t *info);

/* ---- sleep and wake ---------------------------------------------------- */
/* Tag lists are NULL-terminated arrays of strings. For `tags`, NULL means
 * every tag; for `offload_tags`, NULL means none. Naming a tag that was never
 * used is CUMEM_ENOTAG and changes nothing. */

/* Put to sleep every awake allocation whose tag is in `tags`: first wait for
 * all work queued on its device, copy those whose tag is in `offload_tags` to
 * host memory (or to disk, for tags whose backup is CUMEM_BACKUP_DISK), then
 * release their physical memory; addresses stay reserved.
 * An allocation is released only after its backup is complete. On failure
 * the allocations already asleep stay asleep (with their backups) and the
 * rest stay awake; a retry completes the sleep. Asleep ones are skipped.
 * Disk backups are written first, before anything of the call is released:
 * when one cannot be written (CUMEM_ENOSPC for a full disk or a file size
 * limit, CUMEM_EIO for other I/O errors) the call changes nothing — every
 * allocation it names stays awake and intact, whatever its tag — and the
 * files it wrote are removed. */
CUMEM_API int cumem_sleep(cumem_t *cm, const char *const *tags,
                          const char *const *offload_tags);
/* Wake every sleeping allocation whose tag is in `tags`: create and map
 * physical memory at the same addresses and restore backed-up content. On
 * failure everything this call mapped is released again, every backup is
 * kept, and a later wake restores all of it. Awake ones are skipped. Disk
 * backups are removed once the wake has succeeded (never retained). */
CUMEM_API int cumem_wake(cumem_t *cm, const char *const *tags);

/* Pin host backup memory for these tags' allocations ahead of time, so that
 * the first sleep only copies. NULL = every tag. */
CUMEM_API int cumem_prepare_backup(cumem_t *cm, const char *const *tags);
/* Give back every host backup that holds no content still to restore
 * (munmap: RSS drops): retained ones of awake allocations, and the buffers
 * kept for reuse by allocations whose content a sleep discarded (asleep or
 * not); and staging buffers of the disk tier that a failed call could not.
 * Backups of allocations asleep with their content are kept. */
CUMEM_API int cumem_release_backup(cumem_t *cm, const char *const *tags);

/* Background work. Each instance has a worker thread (started on first
 * need, joined by cumem_close) that
 *  - gives back host backups after a wake when they are not retained
 *    (retain_backup = 0) or after cumem_release_backup_async: wake returns
 *    once the content is restored, and the memory (RSS) is given back
 *    right after, in small steps; a sleep that comes first reuses what is
 *    still pinned;
 *  - pins the host backups of prepare-ahead tags (the prepare_ahead option
 *    and tag option) once the tag has had no new allocation for
 *    prepare_ahead_delay_ms, and those named by cumem_prepare_backup_async
 *    at once, touching a few pages per step, so that the first sleep only
 *    copies. It costs host memory (the size of the backups, pinned) from
 *    then on.
 * A failure of background work loses nothing (the backup stays, accounted
 * in bytes_host_held). It is reported once, by the next cumem_sleep,
 * cumem_wake, cumem_prepare_backup[_async], cumem_release_backup[_async]
 * or cumem_drain, which then returns it and does nothing else (call it
 * again to do its work). */
/* Queue the pinning of these tags' backups (awake allocations, not yet
 * backed up) and return at once. NULL = every tag. */
CUMEM_API int cumem_prepare_backup_async(cumem_t *cm, const char *const *tags);
/* Queue the giving back of these tags' retained backups (awake
 * allocations) and return at once. NULL = every tag. */
CUMEM_API int cumem_release_backup_async(cumem_t *cm, const char *const *tags);
/* Finish all background work now, on this thread (delays ignored), then
 * report the first failure of background work not yet reported. */
CUMEM_API int cumem_drain(cumem_t *cm);

/* Where the host backup keeps the bytes of ptr (any address inside a live
 * allocation): *host points into the pinned backup, *len counts the bytes
 * from there to the end of the allocation. The backup holds the content the
 * last sleep saved — while asleep, and after wake as long as it is retained
 * (it is not updated by later writes to the device). CUMEM_ENOTFOUND when
 * ptr is not live or no host backup holds valid content: no sleep has
 * saved it yet, the last sleep discarded the allocation (a retained buffer
 * may still be held for the next offloading sleep, but never as its
 * content), or the content is on disk (a disk backup has no host view).
 * The view is valid until the backup is given back (wake without
 * retention, release_backup, free, close); cumem_backup_pin keeps it. */
CUMEM_API int cumem_backup_view(cumem_t *cm, const void *ptr, void **host,
                                size_t *len);

/* As cumem_backup_view, and keep the viewed memory mapped until
 * cumem_backup_unpin, whatever happens meanwhile: a free (from any thread,
 * PyTorch's included), release_backup, a wake without retention, or
 * cumem_close. The backup is then detached from its allocation (a later
 * sleep gets new memory) and the pinned memory keeps the bytes it had; it is
 * unmapped when its last pin is dropped. While the backup stays attached,
 * the view sees what later sleeps write into it. */
typedef struct cumem_backup_pin cumem_backup_pin_t;
CUMEM_API int cumem_backup_pin(cumem_t *cm, const void *ptr, void **host,
                               size_t *len, cumem_backup_pin_t **pin);
/* Drop one pin. Thread-safe; needs no instance (it may be closed). NULL is a
 * no-op. */
CUMEM_API void cumem_backup_unpin(cumem_backup_pin_t *pin);

/* One allocation at a time, for the vLLM seed ABI: release the physical
 * memory of the allocation at ptr without a backup / create it again. */
CUMEM_API int cumem_unmap_release(cumem_t *cm, void *ptr);
CUMEM_API int cumem_create_map(cumem_t *cm, void *ptr);

/* ---- data access (synchronous; for C users, tests and tools) ----------- */

CUMEM_API int cumem_copy_to_device(cumem_t *cm, void *dst, const void *src,
                                   size_t n);
CUMEM_API int cumem_copy_to_host(cumem_t *cm, void *dst, const void *src,
                                 size_t n);
CUMEM_API int cumem_memset(cumem_t *cm, void *dst, int value, size_t n);

/* ---- figures ----------------------------------------------------------- */

typedef struct cumem_stats {
  size_t allocations;     /* live allocations */
  size_t bytes_allocated; /* their rounded sizes */
  size_t bytes_mapped;    /* of which backed by physical memory now */
  size_t bytes_asleep;    /* of which released */
  size_t bytes_backed_up; /* content held in backups while asleep */
  size_t bytes_host_held; /* host backup memory held: with content to
                             restore, retained after wake, or kept for
                             reuse after a discarding sleep (not memory
                             detached to pins) */
  size_t bytes_on_disk;   /* of bytes_backed_up, held in files under
                             disk_dir */
  size_t bytes_host_pinned; /* of bytes_host_held, page-locked (ready for
                               copies) */
  size_t bytes_skipped;   /* of bytes_backed_up, what their sleep did not
                             copy because the retained backup held it
                             already (skip unchanged); the bytes copied are
                             bytes_backed_up - bytes_skipped */
} cumem_stats_t;

/* Figures for one tag, or for all when tag is NULL. */
CUMEM_API int cumem_stats(cumem_t *cm, const char *tag, cumem_stats_t *out);
/* Names of every tag used so far (valid until cumem_close), up to cap of
 * them; *count receives the total number. */
CUMEM_API int cumem_tags(cumem_t *cm, const char **names, size_t cap,
                         size_t *count);

/* Live backend objects, for leak checks: what has been created and not yet
 * destroyed. */
typedef struct cumem_backend_counters {
  long reservations, handles, mappings, host_registrations, streams, events;
} cumem_backend_counters_t;
CUMEM_API int cumem_backend_counters(cumem_t *cm,
                                     cumem_backend_counters_t *out);

/* ---- devices ----------------------------------------------------------- */

typedef struct cumem_device_info {
  char name[96];
  size_t total_bytes;
  size_t free_bytes;
  size_t granularity; /* allocation granularity (sizes round up to it) */
  int rdma;           /* GPUDirect RDMA with VMM supported */
  int fabric;         /* fabric handles supported */
  int posix_fd;       /* POSIX file-descriptor handles supported */
  int numa_node;      /* the host NUMA node nearest the device; -1 unknown */
} cumem_device_info_t;

CUMEM_API int cumem_device_count(cumem_t *cm, int *count);
CUMEM_API int cumem_device_info(cumem_t *cm, int device,
                                cumem_device_info_t *info);

#ifdef __cplusplus
}
#endif
#endif /* CUMEM_H */
