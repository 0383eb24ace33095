/* The `cumem` command: finds the command in the table, parses its options
 * (args.c) and runs it. A new command is one entry here, its declaration in
 * tool.h and its own file (listed in CMakeLists.txt's cumem_cli). */
#include "tool.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static const tool_command_t commands[] = {
    {"info", "the backend and each device: memory, granularity, RDMA, fabric and fd handles",
     TOOL_OPT_BACKEND | TOOL_OPT_JSON, cmd_info, NULL},
    {"demo",
     "sleep and wake a model-shaped workload, verify every byte of the weights",
     TOOL_OPT_BACKEND | TOOL_OPT_SIZE | TOOL_OPT_KV | TOOL_OPT_JSON | TOOL_OPT_QUIET, cmd_demo, NULL},
    {"bench",
     "the host link, then cold and warm sleeps and wakes: seconds, GB/s, % of link",
     TOOL_OPT_BACKEND | TOOL_OPT_SIZE | TOOL_OPT_KV | TOOL_OPT_ROUNDS | TOOL_OPT_JSON | TOOL_OPT_QUIET,
     cmd_bench, NULL},
    {"run", "run a program with sleepable CUDA allocations (LD_PRELOAD):\n"
            "          cumem run [--tag T] [--backup cpu|disk|none] -- CMD ARGS...",
     0, NULL, cmd_run},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static int usage(FILE *f) {
  fprintf(f, "usage: cumem <command> [options]   (cumem <command> --help: its options)\n"
             "       cumem --version\n"
             "commands:\n");
  for (size_t i = 0; i < NCOMMANDS; i++) fprintf(f, "  %-7s %s\n", commands[i].name, commands[i].summary);
  fprintf(f, "exit status: 0 done, 1 a cumem call failed, 2 bad command line,\n"
             "             3 data differs after a wake; run: the program's own status,\n"
             "             or 125 (cumem run failed), 126 (cannot execute), 127 (not found)\n");
  return f == stderr ? TOOL_EXIT_USAGE : TOOL_EXIT_OK;
}

static const tool_command_t *find_command(const char *name) {
  for (size_t i = 0; i < NCOMMANDS; i++)
    if (!strcmp(commands[i].name, name)) return &commands[i];
  return NULL;
}

static int dispatch(int argc, char **argv) {
  if (argc < 2) return usage(stderr);
  const char *first = argv[1];
  if (!strcmp(first, "--version") || !strcmp(first, "-V")) {
    printf("cumem %s\n", cumem_version());
    return TOOL_EXIT_OK;
  }
  if (!strcmp(first, "--help") || !strcmp(first, "-h")) return usage(stdout);
  if (!strcmp(first, "help")) { /* help [command] */
    if (argc < 3) return usage(stdout);
    const tool_command_t *cmd = find_command(argv[2]);
    if (!cmd) {
      fprintf(stderr, "cumem: unknown command %s\n", argv[2]);
      return usage(stderr);
    }
    if (cmd->main) {
      char *help[] = {(char *)cmd->name, "--help", NULL};
      return cmd->main(2, help);
    }
    tool_command_usage(cmd, stdout);
    return TOOL_EXIT_OK;
  }
  const tool_command_t *cmd = find_command(first);
  if (!cmd) {
    fprintf(stderr, "cumem: unknown %s %s\n", first[0] == '-' ? "option" : "command", first);
    return usage(stderr);
  }
  if (cmd->main) return cmd->main(argc - 1, argv + 1);
  tool_args_t a;
  int rc = tool_parse_args(cmd, argc - 1, argv + 1, &a);
  if (rc >= 0) return rc;
  tool_progress_init(&a);
  rc = cmd->run(&a);
  tool_progress_done();
  return rc;
}

/* Output that could not be written (a full disk, a closed pipe) is a
 * failure: a JSON document cut short must not exit 0. */
int main(int argc, char **argv) {
  int rc = dispatch(argc, argv);
  if (fflush(stdout) != 0 || ferror(stdout)) {
    fprintf(stderr, "cumem: cannot write the output: %s\n", strerror(errno));
    if (rc == TOOL_EXIT_OK) rc = TOOL_EXIT_FAILED;
  }
  return rc;
}
