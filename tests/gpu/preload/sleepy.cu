/* A plain CUDA program that never heard of cumem's interposer: it cudaMallocs
 * a buffer, writes it with a kernel, and reaches sleep and wake through
 * libcumem's C API (the core the interposer allocates from when the program
 * runs under `cumem run`). Built with the shared runtime, which the
 * interposer can stand in front of:
 *
 *   nvcc -cudart shared -Iinclude sleepy.cu -Lbuild -lcumem -Xlinker -rpath,build -o sleepy
 *   build/cumem run --tag prog --backup cpu -- ./sleepy 256
 *
 * Exit 0: the buffer was a cumem allocation of tag tms+cpu:prog, sleep freed
 * its GPU memory, wake brought every byte back (and, with two GPUs, a
 * cudaMallocAsync on a stream of device 1 while device 0 is current was
 * cumem memory on device 1: "async_device"). Exit 3: cudaMalloc did not
 * give cumem memory (the program was not run under the interposer). Other
 * codes: a failure, printed. The last line is "RESULT <json>". */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cumem.h"

__global__ void fill(unsigned *p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = (unsigned)i * 2654435761u + seed;
}

__global__ void count_wrong(const unsigned *p, size_t n, unsigned seed, unsigned long long *wrong) {
  unsigned long long mine = 0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    mine += p[i] != (unsigned)i * 2654435761u + seed;
  if (mine) atomicAdd(wrong, mine);
}

#define CUDA_OK(call)                                                                       \
  do {                                                                                      \
    cudaError_t e_ = (call);                                                                \
    if (e_ != cudaSuccess) {                                                                \
      fprintf(stderr, "sleepy: %s failed: %s (%s)\n", #call, cudaGetErrorString(e_),       \
              cumem_last_error());                                                          \
      return 1;                                                                             \
    }                                                                                       \
  } while (0)
#define CUMEM_OK(call)                                                                      \
  do {                                                                                      \
    int rc_ = (call);                                                                       \
    if (rc_) {                                                                              \
      fprintf(stderr, "sleepy: %s failed: %s (%s)\n", #call, cumem_strerror(rc_),          \
              cumem_last_error());                                                          \
      return 1;                                                                             \
    }                                                                                       \
  } while (0)

int main(int argc, char **argv) {
  size_t mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 256;
  size_t n = mib * (1 << 20) / sizeof(unsigned);
  const unsigned seed = 12345;

  unsigned *buf = NULL;
  unsigned long long *wrong = NULL;
  CUDA_OK(cudaMalloc((void **)&buf, n * sizeof *buf));
  CUDA_OK(cudaMalloc((void **)&wrong, sizeof *wrong));
  fill<<<1024, 256>>>(buf, n, seed);
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaDeviceSynchronize());

  cumem_t *cm = NULL;
  CUMEM_OK(cumem_default(&cm));
  cumem_alloc_info_t info;
  if (cumem_query(cm, buf, &info) != 0) {
    printf("RESULT {\"cumem\": false}\n");
    fprintf(stderr, "sleepy: cudaMalloc did not give cumem memory (run it under `cumem run`)\n");
    return 3;
  }

  size_t free0 = 0, free1 = 0, total = 0;
  CUDA_OK(cudaMemGetInfo(&free0, &total));
  const char *offload[] = {info.tag, NULL};
  const char *only[] = {info.tag, NULL};
  CUMEM_OK(cumem_sleep(cm, only, offload));
  CUDA_OK(cudaMemGetInfo(&free1, &total));
  cumem_stats_t st;
  CUMEM_OK(cumem_stats(cm, info.tag, &st));
  CUMEM_OK(cumem_wake(cm, only));

  CUDA_OK(cudaMemset(wrong, 0, sizeof *wrong)); /* wrong is cumem memory too: discarded or restored */
  count_wrong<<<1024, 256>>>(buf, n, seed, wrong);
  CUDA_OK(cudaGetLastError());
  unsigned long long bad = ~0ull;
  CUDA_OK(cudaMemcpy(&bad, wrong, sizeof bad, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaFree(buf));
  CUDA_OK(cudaFree(wrong));

  /* cudaMallocAsync allocates on its stream's device, whichever is current. */
  int ndev = 0, async_device = -1;
  CUDA_OK(cudaGetDeviceCount(&ndev));
  if (ndev >= 2) {
    cudaStream_t s1;
    CUDA_OK(cudaSetDevice(1));
    CUDA_OK(cudaStreamCreate(&s1));
    CUDA_OK(cudaSetDevice(0));
    void *p = NULL;
    CUDA_OK(cudaMallocAsync(&p, 1 << 20, s1));
    cumem_alloc_info_t ai;
    CUMEM_OK(cumem_query(cm, p, &ai));
    async_device = ai.device;
    CUDA_OK(cudaFreeAsync(p, s1));
    CUDA_OK(cudaStreamDestroy(s1));
  }
  cumem_stats_t after;
  CUMEM_OK(cumem_stats(cm, info.tag, &after));
  printf("RESULT {\"cumem\": true, \"tag\": \"%s\", \"bytes\": %zu, \"freed_by_sleep\": %lld, "
         "\"backed_up\": %zu, \"wrong_after_wake\": %llu, \"allocations_after_free\": %zu, "
         "\"async_device\": %d}\n",
         info.tag, n * sizeof *buf, (long long)free1 - (long long)free0, st.bytes_backed_up, bad,
         after.allocations, async_device);
  return bad == 0 && after.allocations == 0 && (ndev < 2 || async_device == 1) ? 0 : 1;
}
