/* The fingerprint of a copy chunk: its definition, written once for the CPU
 * (src/fingerprint.c, the host backend) and the GPU (src/fingerprint.cu, the
 * cuda backend), so that both compute the same function bit for bit.
 *
 * The chunk is read as 16-byte words w_j = (x0, x1), two little-endian
 * 64-bit halves; a last partial word is padded with zero bytes. Each word
 * adds one 64-bit value to each of two lanes, and the fingerprint is the
 * pair of lane sums, modulo 2^64:
 *
 *   k  = (j + 1) * K                          position key (K odd: distinct
 *                                             for every j < 2^64 - 1)
 *   A += fin(((x0 ^ k) * M0) ^ x1, M1, M2)
 *   B += fin(((x1 ^ rotl(k, 32)) * M3) ^ x0, M2, M1)
 *   fin(h, m, m') = xs(xs(xs(h) * m) * m'),   xs(h) = h ^ (h >> 32)
 *
 * Why this shape:
 *  - A sum is commutative, so the result does not depend on how the GPU
 *    splits the chunk among threads or in which order their atomic adds
 *    land: the same bytes give the same fingerprint on every run.
 *  - Each lane's term depends on all 128 bits of the word and on its
 *    position: the first multiply spreads x0 ^ k upwards and xors in the
 *    other half; fin is a full-avalanche bijection (every input bit flips
 *    every output bit with probability 1/2; measured over random, zero and
 *    low-entropy words). A change confined to one half of one word changes
 *    each lane's term for certain (every step is a bijection in that half).
 *    Moved, swapped or shifted words change the key they are mixed with.
 *  - The two lanes mix the halves in opposite order with different
 *    constants, so they fail independently.
 *  - The GPU does it at memory speed: about 40 32-bit integer operations per
 *    16 bytes (six 64-bit multiplies, shifts by 32 are one operation), well
 *    under what an H200's integer units do per byte of HBM bandwidth.
 *
 * An accidental match: when a chunk changed, each changed word adds a
 * difference to each lane that behaves like a uniform 64-bit value (the
 * avalanche above), so the two sums equal their old values with probability
 * about 2^-128 = 2.9e-39 per comparison. 10^20 comparisons (10,000 chunks
 * per sleep, a sleep a second, on a million GPUs, for three centuries) give
 * a chance of 3e-19 that any one of them ever matches by accident. This is
 * not a cryptographic hash: it guards against accident, not against someone
 * who writes GPU memory on purpose to collide (who could corrupt the memory
 * directly anyway). Fingerprints are only compared between chunks of equal
 * length (the same chunk of the same allocation), so the length is not
 * hashed.
 */
#ifndef CUMEM_FINGERPRINT_DEF_H
#define CUMEM_FINGERPRINT_DEF_H

#if defined(__CUDACC__)
#define CUMEM_FP_FN static __device__ __forceinline__
typedef unsigned long long cumem__fp_u64;
#else
#include <stdint.h>
#define CUMEM_FP_FN static inline
typedef uint64_t cumem__fp_u64;
#endif

#define CUMEM_FP_WORD 16 /* bytes per word */
/* The kernel's launch contract (fingerprint.cu): its name and block size. */
#define CUMEM_FP_KERNEL "cumem_fingerprint"
#define CUMEM_FP_THREADS 256
#define CUMEM_FP_K 0x9E3779B97F4A7C15ull
#define CUMEM_FP_M0 0xBF58476D1CE4E5B9ull
#define CUMEM_FP_M1 0x94D049BB133111EBull
#define CUMEM_FP_M2 0xFF51AFD7ED558CCDull
#define CUMEM_FP_M3 0xC4CEB9FE1A85EC53ull

CUMEM_FP_FN cumem__fp_u64 cumem__fp_xs(cumem__fp_u64 h) { return h ^ (h >> 32); }

CUMEM_FP_FN cumem__fp_u64 cumem__fp_fin(cumem__fp_u64 h, cumem__fp_u64 m, cumem__fp_u64 m2) {
  return cumem__fp_xs(cumem__fp_xs(cumem__fp_xs(h) * m) * m2);
}

/* Add the word (x0, x1) whose position key is k to the lanes *a and *b. */
CUMEM_FP_FN void cumem__fp_mix(cumem__fp_u64 k, cumem__fp_u64 x0, cumem__fp_u64 x1, cumem__fp_u64 *a,
                               cumem__fp_u64 *b) {
  cumem__fp_u64 kr = (k << 32) | (k >> 32);
  *a += cumem__fp_fin(((x0 ^ k) * CUMEM_FP_M0) ^ x1, CUMEM_FP_M1, CUMEM_FP_M2);
  *b += cumem__fp_fin(((x1 ^ kr) * CUMEM_FP_M3) ^ x0, CUMEM_FP_M2, CUMEM_FP_M1);
}

/* The position key of word j (a loop may also step it: k(j + d) = k(j) + d * K). */
CUMEM_FP_FN cumem__fp_u64 cumem__fp_key(cumem__fp_u64 j) { return (j + 1) * CUMEM_FP_K; }

#endif
