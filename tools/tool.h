/* Shared pieces of the `cumem` command: options, clocks, figures, and the
 * model-shaped workload that demo and bench use. */
#ifndef CUMEM_TOOL_H
#define CUMEM_TOOL_H

#include "cumem.h"

#include <stddef.h>
#include <stdint.h>

#define GiB ((size_t)1 << 30)
#define MiB ((size_t)1 << 20)

typedef struct tool_args {
  const char *backend; /* NULL = options default (auto / CUMEM_BACKEND) */
  size_t weights;      /* bytes of weights (offloaded) */
  size_t kv;           /* bytes of KV cache (discarded) */
  int json;
  int rounds;
  int quiet;
} tool_args_t;

double now_seconds(void);
const char *fmt_bytes(size_t n, char buf[32]);
int tool_open(const tool_args_t *a, cumem_t **cm);
void tool_fail(const char *what, int rc); /* prints the error and its detail */

/* A Llama-3-8B-shaped list of tensors scaled to `total` bytes of bf16. */
typedef struct workload {
  size_t n;
  void **ptr;
  size_t *size;
  size_t total;
} workload_t;

int workload_alloc_weights(cumem_t *cm, workload_t *w, size_t total, const char *tag);
int workload_alloc_kv(cumem_t *cm, workload_t *w, size_t total, const char *tag);
/* Fill every tensor with a pattern that depends on its index and offset; the
 * check reads it back and compares. Both return 0 or an error code; check
 * returns CUMEM_EDRIVER-free 1 on mismatch via *bad. */
int workload_fill(cumem_t *cm, const workload_t *w, unsigned seed);
int workload_check(cumem_t *cm, const workload_t *w, unsigned seed, size_t *bad_bytes);
void workload_free(cumem_t *cm, workload_t *w);

int cmd_info(const tool_args_t *a);
int cmd_demo(const tool_args_t *a);
int cmd_bench(const tool_args_t *a);
/* run parses its own arguments (argv[0] is "run"): what follows the
 * program's name is the program's. */
int cmd_run(int argc, char **argv);

#endif
