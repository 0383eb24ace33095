/* The fingerprint kernel (the function: fingerprint_def.h). Compiled to PTX by
 * scripts/gen_fingerprint_ptx.sh; the PTX (src/fingerprint.ptx) and its
 * embedded form (src/fingerprint_ptx.h) are committed, so building cumem
 * needs no nvcc, and the cuda backend loads it with cuModuleLoadData.
 *
 * Launch: a 1-D grid of nchunks * blocks_per_chunk blocks of
 * CUMEM_FP_THREADS threads; block b works on chunk b / blocks_per_chunk.
 * Each thread adds up the words j = part * threads + t + m * stride of its
 * chunk, the block sums its threads, and one thread adds the block's sums to
 * out[2c], out[2c + 1] with 64-bit atomic adds (out zeroed before). All sums
 * are modulo 2^64 and commutative, so the result does not depend on the
 * scheduling. Pre: base and chunk_bytes multiples of 16. */
#include "fingerprint_def.h"

#define CUMEM_FP_UNROLL 4

static __device__ __forceinline__ void add_word(cumem__fp_u64 k, uint4 v, cumem__fp_u64 *a, cumem__fp_u64 *b) {
  cumem__fp_u64 x0 = (cumem__fp_u64)v.x | (cumem__fp_u64)v.y << 32;
  cumem__fp_u64 x1 = (cumem__fp_u64)v.z | (cumem__fp_u64)v.w << 32;
  cumem__fp_mix(k, x0, x1, a, b);
}

extern "C" __global__ void __launch_bounds__(CUMEM_FP_THREADS)
cumem_fingerprint(const unsigned char *base, unsigned long long chunk_bytes, unsigned long long n_bytes,
                  unsigned long long *out, unsigned int blocks_per_chunk) {
  const unsigned long long chunk = blockIdx.x / blocks_per_chunk;
  const unsigned long long part = blockIdx.x % blocks_per_chunk;
  const unsigned long long start = chunk * chunk_bytes;
  const unsigned long long len = n_bytes - start < chunk_bytes ? n_bytes - start : chunk_bytes;
  const unsigned long long words = len / CUMEM_FP_WORD;
  const uint4 *w = (const uint4 *)(base + start);
  const unsigned long long stride = (unsigned long long)blocks_per_chunk * CUMEM_FP_THREADS;
  const cumem__fp_u64 kstride = stride * CUMEM_FP_K; /* the key steps with j */

  cumem__fp_u64 a = 0, b = 0;
  unsigned long long j = part * CUMEM_FP_THREADS + threadIdx.x;
  cumem__fp_u64 k = cumem__fp_key(j);
  /* Several independent loads in flight per thread, then their mixing. */
  for (; j + (CUMEM_FP_UNROLL - 1) * stride < words; j += CUMEM_FP_UNROLL * stride) {
    uint4 v[CUMEM_FP_UNROLL];
#pragma unroll
    for (int u = 0; u < CUMEM_FP_UNROLL; u++) v[u] = __ldcs(w + j + u * stride); /* read once: stream it */
#pragma unroll
    for (int u = 0; u < CUMEM_FP_UNROLL; u++, k += kstride) add_word(k, v[u], &a, &b);
  }
  for (; j < words; j += stride, k += kstride) add_word(k, __ldcs(w + j), &a, &b);
  const unsigned long long tail = len % CUMEM_FP_WORD;
  if (tail && part == 0 && threadIdx.x == 0) { /* the last partial word, zero-padded */
    unsigned char bytes[CUMEM_FP_WORD];
    const unsigned char *p = base + start + words * CUMEM_FP_WORD;
    for (int i = 0; i < CUMEM_FP_WORD; i++) bytes[i] = (unsigned long long)i < tail ? p[i] : 0;
    cumem__fp_u64 x0 = 0, x1 = 0;
    for (int i = 7; i >= 0; i--) {
      x0 = x0 << 8 | bytes[i];
      x1 = x1 << 8 | bytes[8 + i];
    }
    cumem__fp_mix(cumem__fp_key(words), x0, x1, &a, &b);
  }

  /* The block's sums: within each warp, then across the warps. */
  for (int off = 16; off > 0; off >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, off);
    b += __shfl_down_sync(0xffffffffu, b, off);
  }
  __shared__ cumem__fp_u64 sums[CUMEM_FP_THREADS / 32][2];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    sums[warp][0] = a;
    sums[warp][1] = b;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int i = 1; i < CUMEM_FP_THREADS / 32; i++) {
      a += sums[i][0];
      b += sums[i][1];
    }
    atomicAdd(out + 2 * chunk, a);
    atomicAdd(out + 2 * chunk + 1, b);
  }
}
