/* The `cumem` command: info, demo, bench, run. */
#include "tool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

const char *fmt_bytes(size_t n, char buf[32]) {
  if (n >= GiB) snprintf(buf, 32, "%.2f GiB", (double)n / (double)GiB);
  else if (n >= MiB) snprintf(buf, 32, "%.1f MiB", (double)n / (double)MiB);
  else snprintf(buf, 32, "%zu B", n);
  return buf;
}

void tool_fail(const char *what, int rc) {
  fprintf(stderr, "cumem: %s failed: %s\n  %s\n", what, cumem_strerror(rc), cumem_last_error());
}

int tool_open(const tool_args_t *a, cumem_t **cm) {
  cumem_options_t o;
  cumem_options_init(&o);
  if (a->backend) o.backend = a->backend;
  int rc = cumem_open(cm, &o);
  if (rc) tool_fail("open", rc);
  return rc;
}

static int usage(FILE *f) {
  fprintf(f,
          "usage: cumem <command> [options]\n"
          "commands:\n"
          "  info    backend, devices, memory, granularity, RDMA/fabric/POSIX-fd support\n"
          "  demo    allocate a model-shaped workload, sleep (weights offloaded, KV cache\n"
          "          discarded), wake, verify every byte of the weights\n"
          "  bench   link bandwidth, then cold/warm sleep and wake of a model-shaped\n"
          "          workload, with GB/s and percent of the link\n"
          "  run     run a program with sleepable CUDA allocations (LD_PRELOAD):\n"
          "          cumem run [--tag T] [--backup cpu|disk|none] -- CMD ARGS...\n"
          "options:\n"
          "  --backend auto|cuda|host   (default: auto, or CUMEM_BACKEND)\n"
          "  --size GiB                 weights to offload (demo: 2 on cuda, 0.25 on host;\n"
          "                             bench: 16)\n"
          "  --kv GiB                   KV cache to discard (default: twice --size)\n"
          "  --rounds N                 bench: warm cycles to average (default 3)\n"
          "  --json                     bench: print the results as JSON\n");
  return f == stderr ? 2 : 0;
}

static int parse_gib(const char *s, size_t *out) {
  char *end;
  double v = strtod(s, &end);
  if (*end || v <= 0 || v > 1e6) return -1;
  *out = (size_t)(v * (double)GiB);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) return usage(stderr);
  const char *cmd = argv[1];
  if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) return usage(stdout);
  if (!strcmp(cmd, "run")) return cmd_run(argc - 1, argv + 1);
  tool_args_t a = {0};
  a.rounds = 3;
  for (int i = 2; i < argc; i++) {
    const char *arg = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(arg, "--json")) a.json = 1;
    else if (!strcmp(arg, "--quiet")) a.quiet = 1;
    else if (!val) { fprintf(stderr, "cumem: %s needs a value\n", arg); return 2; }
    else if (!strcmp(arg, "--backend")) a.backend = argv[++i];
    else if (!strcmp(arg, "--size")) { if (parse_gib(argv[++i], &a.weights)) goto bad; }
    else if (!strcmp(arg, "--kv")) { if (parse_gib(argv[++i], &a.kv)) goto bad; }
    else if (!strcmp(arg, "--rounds")) { a.rounds = atoi(argv[++i]); if (a.rounds < 1) goto bad; }
    else { fprintf(stderr, "cumem: unknown option %s\n", arg); return usage(stderr); }
    continue;
  bad:
    fprintf(stderr, "cumem: bad value for %s: %s\n", arg, argv[i]);
    return 2;
  }
  if (!strcmp(cmd, "info")) return cmd_info(&a);
  if (!strcmp(cmd, "demo")) return cmd_demo(&a);
  if (!strcmp(cmd, "bench")) return cmd_bench(&a);
  fprintf(stderr, "cumem: unknown command %s\n", cmd);
  return usage(stderr);
}
