/* Fingerprints of copy chunks (the function: fingerprint_def.h), computed on
 * the CPU. The cuda backend computes the same function on the GPU
 * (fingerprint.cu); the host backend calls this one. */
#ifndef CUMEM_FINGERPRINT_H
#define CUMEM_FINGERPRINT_H

#include "internal.h"

/* Values per chunk in a fingerprint array: lane A, then lane B. */
#define CUMEM_FP_VALUES 2

/* Chunks of n bytes cut into pieces of `chunk` (the last may be shorter). */
static inline size_t cumem__fp_chunks(size_t n, size_t chunk) { return chunk ? cumem__ceil_div(n, chunk) : 0; }

/* out[2c], out[2c + 1] = the fingerprint of chunk c of [data, data + n), for
 * every chunk. Pre: chunk > 0. */
void cumem__fingerprint_host(const void *data, size_t n, size_t chunk, uint64_t *out);

/* The pre-conditions both backends check (CUMEM_EINVAL with a detail):
 * chunk a non-zero multiple of 16, va 16-byte aligned, out not NULL. */
int cumem__fingerprint_check_args(const char *backend, uintptr_t va, size_t chunk, size_t n, const uint64_t *out);

#endif
