/* The options of the `cumem` command: one table, parsed with getopt_long for
 * each command from the options that command takes. Every error names the
 * option and ends the command with TOOL_EXIT_USAGE. */
#include "internal.h" /* cumem__parse_size */
#include "tool.h"

#include <errno.h>
#include <stdarg.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

/* Long options' keys are above every character, so that getopt's optopt
 * tells a refused short option (a character) from a long one. */
enum { KEY_BACKEND = 1000, KEY_SIZE, KEY_KV, KEY_ROUNDS, KEY_JSON, KEY_QUIET, KEY_HELP };

static const struct tool_option {
  unsigned bit; /* TOOL_OPT_* */
  struct option opt;
  const char *arg;  /* the value's name in the usage text, NULL: a flag */
  const char *help;
} options[] = {
    {TOOL_OPT_BACKEND, {"backend", required_argument, NULL, KEY_BACKEND}, "NAME",
     "auto, cuda or host (default: CUMEM_BACKEND, else auto)"},
    {TOOL_OPT_SIZE, {"size", required_argument, NULL, KEY_SIZE}, "SIZE",
     "weights to offload (default on cuda: demo 2G, bench 16G; on host: 256M)"},
    {TOOL_OPT_KV, {"kv", required_argument, NULL, KEY_KV}, "SIZE",
     "KV cache to discard (default: twice --size)"},
    {TOOL_OPT_ROUNDS, {"rounds", required_argument, NULL, KEY_ROUNDS}, "N",
     "warm sleep/wake cycles to take the median of (default 3, at most 1000)"},
    {TOOL_OPT_JSON, {"json", no_argument, NULL, KEY_JSON}, NULL,
     "print one JSON document on stdout instead of text"},
    {TOOL_OPT_QUIET, {"quiet", no_argument, NULL, KEY_QUIET}, NULL,
     "no progress on the terminal"},
};
#define NOPTIONS (sizeof options / sizeof options[0])

void tool_command_usage(const tool_command_t *cmd, FILE *out) {
  fprintf(out, "usage: cumem %s [options]\n%s\noptions:\n", cmd->name, cmd->summary);
  for (size_t i = 0; i < NOPTIONS; i++) {
    if (!(cmd->options & options[i].bit)) continue;
    char left[32];
    snprintf(left, sizeof left, "--%s%s%s", options[i].opt.name, options[i].arg ? " " : "",
             options[i].arg ? options[i].arg : "");
    fprintf(out, "  %-16s %s\n", left, options[i].help);
  }
  fprintf(out, "  %-16s %s\n", "-h, --help", "this text");
  if (cmd->options & (TOOL_OPT_SIZE | TOOL_OPT_KV))
    fprintf(out, "SIZE: a number with an optional binary unit (512M, 16G, 1.5GiB, 4096B);\n"
                 "a bare number is GiB.\n");
}

/* The first refusal of the command line, printed on stderr and kept for
 * the JSON document (--json: one document, also when the arguments fail). */
static char refusal[512];

__attribute__((format(printf, 1, 2))) static void refuse(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char text[sizeof refusal];
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  fprintf(stderr, "%s\n", text);
  if (!refusal[0]) snprintf(refusal, sizeof refusal, "%s", text);
}

/* A size option: units as in cumem__parse_size, a bare number is GiB. */
static int parse_size_option(const char *cmd, const char *name, const char *text, size_t *out) {
  const char *why = NULL;
  size_t bytes = 0;
  if (cumem__parse_size(text, GiB, &bytes, &why) != 0) {
    refuse("cumem %s: --%s %s: %s", cmd, name, text, why);
    return -1;
  }
  if (bytes == 0) {
    refuse("cumem %s: --%s %s: must be at least 1 byte", cmd, name, text);
    return -1;
  }
  if (bytes > TOOL_MAX_SIZE) {
    refuse("cumem %s: --%s %s: too large (at most 1024T)", cmd, name, text);
    return -1;
  }
  *out = bytes;
  return 0;
}

/* A count from 1 to max: decimal digits only, no sign, no wrap. */
static int parse_count_option(const char *cmd, const char *name, const char *text, long max, int *out) {
  char *end = NULL;
  errno = 0;
  long v = (text[0] >= '0' && text[0] <= '9') ? strtol(text, &end, 10) : -1;
  if (v < 0 || !end || *end) {
    refuse("cumem %s: --%s %s: not a whole number", cmd, name, text);
    return -1;
  }
  if (v < 1 || v > max || errno == ERANGE) {
    refuse("cumem %s: --%s %s: out of range (1 to %ld)", cmd, name, text, max);
    return -1;
  }
  *out = (int)v;
  return 0;
}

/* An option getopt_long refused: a short one (optchar), or the long one
 * argv[optind - 1], unknown or a flag given a value ("--json=1"). */
static void report_refused(const tool_command_t *cmd, const char *arg, int optchar) {
  if (optchar > 0 && optchar < 256) {
    refuse("cumem %s: unknown option -%c", cmd->name, optchar);
  } else if (strncmp(arg, "--", 2) == 0) {
    size_t len = strcspn(arg + 2, "=");
    for (size_t i = 0; i < NOPTIONS; i++)
      if ((cmd->options & options[i].bit) && !options[i].arg && arg[2 + len] == '=' &&
          strncmp(options[i].opt.name, arg + 2, len) == 0 && options[i].opt.name[len] == '\0') {
        refuse("cumem %s: --%s takes no value", cmd->name, options[i].opt.name);
        return;
      }
    refuse("cumem %s: unknown option --%.*s", cmd->name, (int)len, arg + 2);
  } else {
    refuse("cumem %s: unknown option %s", cmd->name, arg);
  }
}

/* A refused command line: exit 2, and with --json anywhere on it (even
 * after the refused option) one JSON document saying why. */
static int refused_line(const tool_command_t *cmd, int argc, char **argv) {
  int json = 0;
  for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) json |= strcmp(argv[i], "--json") == 0;
  if (json && (cmd->options & TOOL_OPT_JSON)) {
    json_t j;
    tool_json_begin(&j, stdout, cmd->name);
    json_bool(&j, "ok", 0);
    json_int(&j, "exit_code", TOOL_EXIT_USAGE);
    tool_json_error(&j, "arguments", CUMEM_EINVAL, refusal);
    json_end(&j);
    json_finish(&j);
  }
  return TOOL_EXIT_USAGE;
}

/* --backend: judged by the options table, as cumem_open would judge it. */
static int parse_backend_option(const char *cmd, const char *text) {
  cumem_options_t o;
  cumem_options_init(&o);
  if (cumem_options_set(&o, "backend", text) == 0) return 0;
  refuse("cumem %s: --backend: %s", cmd, cumem_last_error()); /* it names the value */
  return -1;
}

int tool_parse_args(const tool_command_t *cmd, int argc, char **argv, tool_args_t *a) {
  memset(a, 0, sizeof *a);
  refusal[0] = '\0';
  a->rounds = 3;
  struct option longopts[NOPTIONS + 2];
  size_t n = 0;
  for (size_t i = 0; i < NOPTIONS; i++)
    if (cmd->options & options[i].bit) longopts[n++] = options[i].opt;
  longopts[n++] = (struct option){"help", no_argument, NULL, KEY_HELP};
  longopts[n] = (struct option){0};
  /* ':' first: a missing value is told apart from an unknown option. */
  const char *shortopts = ":h";

  opterr = 0;
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
    const char *val = optarg;
    int bad = 0;
    switch (c) {
    case 'h':
    case KEY_HELP: tool_command_usage(cmd, stdout); return TOOL_EXIT_OK;
    case KEY_BACKEND:
      bad = parse_backend_option(cmd->name, val);
      a->backend = val;
      break;
    case KEY_SIZE: bad = parse_size_option(cmd->name, "size", val, &a->weights); break;
    case KEY_KV: bad = parse_size_option(cmd->name, "kv", val, &a->kv); break;
    case KEY_ROUNDS: bad = parse_count_option(cmd->name, "rounds", val, TOOL_MAX_ROUNDS, &a->rounds); break;
    case KEY_JSON: a->json = 1; break;
    case KEY_QUIET: a->quiet = 1; break;
    case ':':
      refuse("cumem %s: %s needs a value", cmd->name, argv[optind - 1]);
      bad = 1;
      break;
    default:
      report_refused(cmd, argv[optind - 1], optopt);
      bad = 1;
    }
    if (bad) {
      fprintf(stderr, "(cumem %s --help lists the options)\n", cmd->name);
      return refused_line(cmd, argc, argv);
    }
  }
  if (optind < argc) {
    refuse("cumem %s: unexpected argument %s", cmd->name, argv[optind]);
    return refused_line(cmd, argc, argv);
  }
  return -1;
}
