/* Pins on host backups: memory handed out by cumem_backup_pin (Python's
 * backup_view) stays mapped until the last pin is dropped, whatever the
 * instance does meanwhile.
 *
 * Why: a memoryview of a backup read after the allocation was freed killed
 * the interpreter (issue 13, item 9). Frees also come from PyTorch's C++
 * (cumem_torch_free) with no Python in sight, so the Python object cannot
 * be told; the memory itself must outlive it. So a backup with pins is not
 * unmapped when it is freed: cumem__hostbuf_free unregisters it as usual
 * and hands the mapping to the pin record ("detached"), and the last unpin
 * unmaps it. The allocation meanwhile has no backup: a later sleep maps a
 * new one, and the view keeps the content it had.
 *
 * Locking: hb->pin is read and written under the instance lock only (pin,
 * and hostbuf_free); refs and the detached mapping under the record's own
 * mutex, since unpin runs on any thread, without the instance, possibly
 * after it was closed. */
#include "hostmem.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>

struct cumem_backup_pin {
  pthread_mutex_t mu;
  long refs;      /* pins not yet dropped */
  int detached;   /* the backup was freed: this record owns the mapping */
  void *map_base;
  size_t map_size;
};

static void pin_destroy(cumem_backup_pin_t *p) {
  pthread_mutex_destroy(&p->mu);
  free(p);
}

int cumem__pin_take(hostbuf_t *hb, cumem_backup_pin_t **out) {
  if (!hb->pin) {
    cumem_backup_pin_t *p = calloc(1, sizeof *p);
    if (!p) return CUMEM_FAIL(CUMEM_ENOHOST, "out of host memory for a backup pin");
    pthread_mutex_init(&p->mu, NULL);
    hb->pin = p;
  }
  pthread_mutex_lock(&hb->pin->mu);
  hb->pin->refs++;
  pthread_mutex_unlock(&hb->pin->mu);
  *out = hb->pin;
  return 0;
}

int cumem__pin_detach(hostbuf_t *hb) {
  cumem_backup_pin_t *p = hb->pin;
  if (!p) return 0;
  hb->pin = NULL;
  pthread_mutex_lock(&p->mu);
  int pinned = p->refs > 0;
  if (pinned) {
    p->detached = 1;
    p->map_base = hb->map_base;
    p->map_size = hb->map_size;
  }
  pthread_mutex_unlock(&p->mu);
  if (!pinned) pin_destroy(p); /* every pin dropped already: nobody refers to it */
  return pinned;
}

void cumem_backup_unpin(cumem_backup_pin_t *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  int last = --p->refs == 0, detached = p->detached;
  pthread_mutex_unlock(&p->mu);
  /* Attached: the backup still has it (hb->pin), and frees it when freed. */
  if (!last || !detached) return;
  if (munmap(p->map_base, p->map_size) != 0)
    cumem__log("could not unmap a detached host backup (%zu bytes); it stays mapped", p->map_size);
  pin_destroy(p);
}
