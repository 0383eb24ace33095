/* The disk tier: the backups of tags whose backup is CUMEM_BACKUP_DISK, kept
 * in unnamed files under the instance's disk_dir instead of host memory
 * (disk.c says how). The sleep/wake engine calls in at three points: write
 * the disk backups before anything of a sleep is released, read them back
 * while a wake's host copies run, close a file once its content is back on
 * the device or its allocation is freed. */
#ifndef CUMEM_DISK_H
#define CUMEM_DISK_H

#include "internal.h"

#include <stdatomic.h>

/* One allocation's backup file. All zero = no file. */
typedef struct diskfile {
  int fd;
  int open;    /* fd is open and ours */
  atomic_int direct; /* fd does O_DIRECT I/O (no page cache); dropped by
                        whichever I/O thread finds it refused */
  int filled;  /* holds the content saved by the last sleep */
  size_t size; /* content bytes */
} diskfile_t;

struct alloc;

/* Check that `dir` can hold disk backups (it exists, is a directory, and a
 * file can be created in it) and return its absolute path, malloc'ed, in
 * *abs. CUMEM_EINVAL saying what is wrong otherwise. */
int cumem__disk_dir_check(const char *dir, char **abs);

/* The allocation's tag keeps its backups on disk. */
int cumem__backs_up_to_disk(const struct alloc *a);

/* Sleep: write the content of every list[i] with copy[i] set whose tag backs
 * up to disk into a new file each, then mark them backed up and clear their
 * copy[i] (their memory may now be released). On failure nothing is marked,
 * the files of this call are closed (their space given back) and the
 * detail says what failed: CUMEM_ENOSPC (disk full, quota, file size
 * limit: with the directory and the bytes), CUMEM_EIO, CUMEM_EINVAL (no
 * disk_dir), or the backend's error. Pre: lock held, devices idle. */
int cumem__disk_sleep(cumem_t *cm, struct alloc **list, size_t n, unsigned char *copy);

/* Wake: read the disk backup of every list[i] that has one back into its
 * device memory (mapped by then) and wait until all of it has arrived. The
 * files stay: the engine closes them once the whole wake has succeeded.
 * Pre: lock held. */
int cumem__disk_wake(cumem_t *cm, struct alloc **list, size_t n);

/* Close the file (its space goes back to the filesystem). Never fails; a
 * closed or never-opened file is a no-op. */
void cumem__disk_close(diskfile_t *f);

/* Give back staging buffers a failed call could not (cumem_close). */
int cumem__disk_staging_free(cumem_t *cm);

#endif
