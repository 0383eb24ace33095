/* Shared pieces of the `cumem` command: its options and exit codes (args.c),
 * messages, progress and the clock (tool.c), and the model-shaped workload
 * that demo and bench use (workload.c). Each command (info.c, demo.c,
 * bench.c) includes this file; cumem.c only dispatches to them. */
#ifndef CUMEM_TOOL_H
#define CUMEM_TOOL_H

#include "cumem.h"
#include "json.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define GiB ((size_t)1 << 30)
#define MiB ((size_t)1 << 20)

/* Exit codes of every command (README, "The cumem command"). */
enum {
  TOOL_EXIT_OK = 0,
  TOOL_EXIT_FAILED = 1,   /* a cumem call failed (the error is printed) */
  TOOL_EXIT_USAGE = 2,    /* bad command line: unknown option, bad value */
  TOOL_EXIT_MISMATCH = 3, /* data came back different after a wake */
};

/* ---- options (args.c) ---- */

/* The largest --size / --kv: far beyond any device, and small enough that
 * the workload's sums and scalings cannot overflow. */
#define TOOL_MAX_SIZE ((size_t)1 << 50) /* 1024T */
/* The most --rounds: the median needs a few; 1000 warm cycles of 16 GiB
 * already take about ten minutes on an H200. */
#define TOOL_MAX_ROUNDS 1000

/* One bit per option; a command lists the ones it takes. */
enum {
  TOOL_OPT_BACKEND = 1u << 0,
  TOOL_OPT_SIZE = 1u << 1,
  TOOL_OPT_KV = 1u << 2,
  TOOL_OPT_ROUNDS = 1u << 3,
  TOOL_OPT_JSON = 1u << 4,
  TOOL_OPT_QUIET = 1u << 5,
};

typedef struct tool_args {
  const char *backend; /* NULL = options default (auto / CUMEM_BACKEND) */
  size_t weights;      /* bytes of weights (offloaded); 0 = the command's default */
  size_t kv;           /* bytes of KV cache (discarded); 0 = twice the weights */
  int rounds;          /* bench: warm cycles */
  int json;            /* one JSON document on stdout instead of text */
  int quiet;           /* no progress, even on a terminal */
} tool_args_t;

/* A command either takes options of the table in args.c (`options` and
 * `run`), or parses its own arguments (`main`, given argv[0] = its name),
 * as a command whose operands are another program's does. */
typedef struct tool_command {
  const char *name;
  const char *summary;  /* one line for the usage text */
  unsigned options;     /* TOOL_OPT_* bits */
  int (*run)(const tool_args_t *a);
  int (*main)(int argc, char **argv);
} tool_command_t;

/* Parse argv (argv[0] is the command's name) into *a. Returns -1 when it
 * went well, else the exit code: TOOL_EXIT_OK after --help (usage printed),
 * TOOL_EXIT_USAGE after an error (message printed, naming the option). */
int tool_parse_args(const tool_command_t *cmd, int argc, char **argv, tool_args_t *a);
/* The command's usage: synopsis and the options it takes. */
void tool_command_usage(const tool_command_t *cmd, FILE *out);

/* ---- messages, progress, clock (tool.c) ---- */

double now_seconds(void);
const char *fmt_bytes(size_t n, char buf[32]);
/* Open an instance on --backend (or the default) for `command`; prints the
 * error and, with --json, still one document saying why (begin, then end). */
/* The options the command line asks for (the environment's, --backend over
 * CUMEM_BACKEND); 0 or the code of a refused value (detail set). */
int tool_options(const tool_args_t *a, cumem_options_t *o);
int tool_open(const tool_args_t *a, const char *command, cumem_t **cm);
/* Print "cumem: <what> failed: ..." with the detail on stderr, and remember
 * the first failure for tool_json_end. */
void tool_fail(const char *what, int rc);
/* Every JSON document is one object that starts with "command" and
 * "cumem_version" and ends with "ok", "exit_code" and, after a tool_fail,
 * "error" {step, code, name, message, detail}: begin opens it, end closes
 * it. A command that fails early still prints one (begin, then end). */
void tool_json_begin(json_t *j, FILE *out, const char *command);
void tool_json_end(json_t *j, int exit_code);
/* An "error" member: {step, code, name, message, detail}. */
void tool_json_error(json_t *j, const char *step, int rc, const char *detail);

/* Progress on stderr, only when it is a terminal and --quiet is not given:
 * a transient line that the next step replaces and tool_progress_done
 * erases, so that what a command prints is never mixed with it. */
void tool_progress_init(const tool_args_t *a);
void tool_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void tool_progress_fraction(size_t done, size_t total); /* "... 42%" */
void tool_progress_done(void);

/* ---- the workload (workload.c) ---- */

/* A Llama-3-8B-shaped list of tensors scaled to `total` bytes of bf16. */
typedef struct workload {
  size_t n;
  void **ptr;
  size_t *size;
  size_t total;
} workload_t;

int workload_alloc_weights(cumem_t *cm, workload_t *w, size_t total, const char *tag);
int workload_alloc_kv(cumem_t *cm, workload_t *w, size_t total, const char *tag);
/* Fill every tensor with a pattern that depends on its index and offset;
 * check reads it back and counts the bytes that differ in *bad_bytes. Both
 * return 0 or a cumem error code, and report their progress. */
int workload_fill(cumem_t *cm, const workload_t *w, unsigned seed);
int workload_check(cumem_t *cm, const workload_t *w, unsigned seed, size_t *bad_bytes);
void workload_free(cumem_t *cm, workload_t *w);

/* ---- the commands ---- */

int cmd_info(const tool_args_t *a);
/* info's report for an open instance, to `out`; returns the exit code
 * (TOOL_EXIT_FAILED when any device fails). Separate for tests. */
int info_report(cumem_t *cm, const tool_args_t *a, FILE *out);
int cmd_demo(const tool_args_t *a);
int cmd_bench(const tool_args_t *a);
/* run parses its own arguments (argv[0] is "run"): what follows the
 * program's name is the program's. */
int cmd_run(int argc, char **argv);

#endif
