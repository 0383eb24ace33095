/* A library that uses the CUDA runtime (here the stand-in) the way a Python
 * extension does: it is dlopen'ed with RTLD_LOCAL, and so is the runtime it
 * depends on, which the interposer then cannot find with RTLD_NEXT. */
typedef int cudaError_t;
cudaError_t cudaMalloc(void **p, unsigned long n);
cudaError_t cudaFree(void *p);

__attribute__((visibility("default"))) int user_alloc(void **p, unsigned long n) { return cudaMalloc(p, n); }
__attribute__((visibility("default"))) int user_free(void *p) { return cudaFree(p); }
