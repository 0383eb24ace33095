/* The model-shaped workload of demo and bench: Llama-3-8B's weight tensors
 * (bf16, 16 GB in full), scaled to the size asked for, and a KV cache in one
 * block per layer, as vLLM allocates them. */
#include "tool.h"

#include <stdlib.h>
#include <string.h>

#define LAYERS 32
#define HIDDEN 4096ull
#define KV_DIM 1024ull  /* 8 KV heads x 128 */
#define FFN 14336ull
#define VOCAB 128256ull

/* Elements of each tensor of one layer, then embedding and LM head. */
static const unsigned long long layer_shapes[] = {
    HIDDEN * HIDDEN, KV_DIM * HIDDEN, KV_DIM * HIDDEN, HIDDEN * HIDDEN, /* q k v o */
    FFN * HIDDEN, FFN * HIDDEN, HIDDEN * FFN,                         /* gate up down */
};
#define PER_LAYER (sizeof layer_shapes / sizeof layer_shapes[0])

static int workload_reserve(workload_t *w, size_t n) {
  memset(w, 0, sizeof *w);
  w->ptr = calloc(n, sizeof *w->ptr);
  w->size = calloc(n, sizeof *w->size);
  if (!w->ptr || !w->size) {
    free(w->ptr);
    free(w->size);
    return CUMEM_ENOHOST;
  }
  return 0;
}

static int push(cumem_t *cm, workload_t *w, size_t bytes, const char *tag) {
  if (bytes == 0) bytes = 1;
  int rc = cumem_alloc(cm, &w->ptr[w->n], bytes, 0, tag);
  if (rc) return rc;
  w->size[w->n++] = bytes;
  w->total += bytes;
  return 0;
}

int workload_alloc_weights(cumem_t *cm, workload_t *w, size_t total, const char *tag) {
  unsigned long long full = 2 * VOCAB * HIDDEN;
  for (size_t i = 0; i < PER_LAYER; i++) full += LAYERS * layer_shapes[i];
  full *= 2; /* bf16 */
  double scale = (double)total / (double)full;
  int rc = workload_reserve(w, 2 + LAYERS * PER_LAYER);
  rc = rc ? rc : push(cm, w, (size_t)(2.0 * VOCAB * HIDDEN * scale), tag); /* embedding */
  for (int l = 0; !rc && l < LAYERS; l++)
    for (size_t i = 0; !rc && i < PER_LAYER; i++) rc = push(cm, w, (size_t)(2.0 * layer_shapes[i] * scale), tag);
  rc = rc ? rc : push(cm, w, (size_t)(2.0 * VOCAB * HIDDEN * scale), tag); /* LM head */
  return rc;
}

int workload_alloc_kv(cumem_t *cm, workload_t *w, size_t total, const char *tag) {
  int rc = workload_reserve(w, LAYERS);
  for (int l = 0; !rc && l < LAYERS; l++) rc = push(cm, w, total / LAYERS, tag);
  return rc;
}

void workload_free(cumem_t *cm, workload_t *w) {
  for (size_t i = 0; cm && i < w->n; i++) cumem_free(cm, w->ptr[i]);
  free(w->ptr);
  free(w->size);
  memset(w, 0, sizeof *w);
}

/* The fill pattern: a 64 MiB block of pseudo-random words (one per seed),
 * with the first word of every 4 KiB page replaced by a stamp of (tensor,
 * offset). Every page of every tensor differs, so a misplaced, stale or
 * zeroed page never reads as correct, and making it costs a memcpy, not a
 * hash per word (bench fills 16 GiB). */
#define STAGE (64 * MiB)
#define PAGE 4096

static inline uint64_t mix(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

static uint64_t *make_block(unsigned seed) {
  uint64_t *b = malloc(STAGE);
  if (b)
    for (size_t j = 0; j < STAGE / 8; j++) b[j] = mix(((uint64_t)seed << 40) ^ j);
  return b;
}

/* The expected bytes of tensor t at [off, off + n). */
static void expected(uint64_t *dst, const uint64_t *block, unsigned seed, size_t t, size_t off, size_t n) {
  memcpy(dst, block, n);
  for (size_t p = 0; p < n; p += PAGE) dst[p / 8] = mix(((uint64_t)seed << 48) ^ ((uint64_t)t << 36) ^ (off + p));
}

int workload_fill(cumem_t *cm, const workload_t *w, unsigned seed) {
  uint64_t *block = make_block(seed), *buf = malloc(STAGE);
  int rc = block && buf ? 0 : CUMEM_ENOHOST;
  size_t done = 0;
  for (size_t t = 0; !rc && t < w->n; t++)
    for (size_t off = 0; !rc && off < w->size[t]; off += STAGE) {
      size_t n = w->size[t] - off < STAGE ? w->size[t] - off : STAGE;
      expected(buf, block, seed, t, off, n);
      rc = cumem_copy_to_device(cm, (char *)w->ptr[t] + off, buf, n);
      done += n;
      tool_progress_fraction(done, w->total);
    }
  free(block);
  free(buf);
  return rc;
}

int workload_check(cumem_t *cm, const workload_t *w, unsigned seed, size_t *bad_bytes) {
  uint64_t *block = make_block(seed), *got = malloc(STAGE), *want = malloc(STAGE);
  int rc = block && got && want ? 0 : CUMEM_ENOHOST;
  size_t done = 0;
  *bad_bytes = 0;
  for (size_t t = 0; !rc && t < w->n; t++)
    for (size_t off = 0; !rc && off < w->size[t]; off += STAGE) {
      size_t n = w->size[t] - off < STAGE ? w->size[t] - off : STAGE;
      rc = cumem_copy_to_host(cm, got, (char *)w->ptr[t] + off, n);
      expected(want, block, seed, t, off, n);
      if (!rc && memcmp(got, want, n) != 0) {
        const unsigned char *a = (const unsigned char *)got, *b = (const unsigned char *)want;
        for (size_t i = 0; i < n; i++) *bad_bytes += a[i] != b[i];
      }
      done += n;
      tool_progress_fraction(done, w->total);
    }
  free(block);
  free(got);
  free(want);
  return rc;
}
