/* Fingerprints on the CPU: the host backend's implementation of the
 * backend operation, and the function the GPU's results are checked
 * against (tests/test_fingerprint.c). */
#include "fingerprint.h"
#include "fingerprint_def.h"

#include <string.h>

/* A little-endian 64-bit load from any address. */
static inline uint64_t load_le64(const unsigned char *p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  uint64_t v;
  memcpy(&v, p, sizeof v);
  return v;
#else
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
#endif
}

static void fingerprint_chunk(const unsigned char *p, size_t n, uint64_t out[2]) {
  uint64_t a = 0, b = 0;
  size_t words = n / CUMEM_FP_WORD;
  for (size_t j = 0; j < words; j++, p += CUMEM_FP_WORD)
    cumem__fp_mix(cumem__fp_key(j), load_le64(p), load_le64(p + 8), &a, &b);
  size_t tail = n % CUMEM_FP_WORD;
  if (tail) { /* the last partial word, padded with zero bytes */
    unsigned char w[CUMEM_FP_WORD] = {0};
    memcpy(w, p, tail);
    cumem__fp_mix(cumem__fp_key(words), load_le64(w), load_le64(w + 8), &a, &b);
  }
  out[0] = a;
  out[1] = b;
}

void cumem__fingerprint_host(const void *data, size_t n, size_t chunk, uint64_t *out) {
  const unsigned char *p = data;
  for (size_t c = 0, off = 0; off < n; c++, off += chunk)
    fingerprint_chunk(p + off, n - off < chunk ? n - off : chunk, out + CUMEM_FP_VALUES * c);
}

int cumem__fingerprint_check_args(const char *backend, uintptr_t va, size_t chunk, size_t n, const uint64_t *out) {
  if (!out) return CUMEM_FAIL(CUMEM_EINVAL, "%s backend: fingerprint with out = NULL", backend);
  if (chunk == 0 || chunk % CUMEM_FP_WORD)
    return CUMEM_FAIL(CUMEM_EINVAL, "%s backend: fingerprint chunk of %zu bytes (expected a non-zero multiple of %d)",
                      backend, chunk, CUMEM_FP_WORD);
  if (va % CUMEM_FP_WORD)
    return CUMEM_FAIL(CUMEM_EINVAL, "%s backend: fingerprint of %#jx, not %d-byte aligned", backend, (uintmax_t)va,
                      CUMEM_FP_WORD);
  if (n > UINTPTR_MAX - va)
    return CUMEM_FAIL(CUMEM_EINVAL, "%s backend: fingerprint of %zu bytes at %#jx wraps around", backend, n,
                      (uintmax_t)va);
  return 0;
}
