/* What every command of `cumem` shares: the clock, byte figures, opening an
 * instance, reporting a failure (text on stderr, and the "error" member of
 * the JSON document), and progress on a terminal. */
#include "tool.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

/* ---- failures ---- */

static struct {
  int rc; /* 0: none yet */
  char step[64];
  char detail[512];
} first_failure;

void tool_fail(const char *what, int rc) {
  tool_progress_done();
  fprintf(stderr, "cumem: %s failed: %s\n  %s\n", what, cumem_strerror(rc), cumem_last_error());
  if (!first_failure.rc) {
    first_failure.rc = rc;
    snprintf(first_failure.step, sizeof first_failure.step, "%s", what);
    snprintf(first_failure.detail, sizeof first_failure.detail, "%s", cumem_last_error());
  }
}

void tool_json_error(json_t *j, const char *step, int rc, const char *detail) {
  json_object(j, "error");
  json_string(j, "step", step);
  json_int(j, "code", rc);
  json_string(j, "name", cumem_err_name(rc));
  json_string(j, "message", cumem_strerror(rc));
  json_string(j, "detail", detail);
  json_end(j);
}

void tool_json_begin(json_t *j, FILE *out, const char *command) {
  json_init(j, out);
  json_object(j, NULL);
  json_string(j, "command", command);
  json_string(j, "cumem_version", cumem_version());
}

void tool_json_end(json_t *j, int exit_code) {
  json_bool(j, "ok", exit_code == TOOL_EXIT_OK);
  json_int(j, "exit_code", exit_code);
  if (first_failure.rc) tool_json_error(j, first_failure.step, first_failure.rc, first_failure.detail);
  json_end(j);
  json_finish(j);
}

int tool_options(const tool_args_t *a, cumem_options_t *o) {
  cumem_options_init(o);
  /* Set as an option, so that --backend replaces a malformed CUMEM_BACKEND
   * rather than being refused with it. */
  return a->backend ? cumem_options_set(o, "backend", a->backend) : 0;
}

int tool_open(const tool_args_t *a, const char *command, cumem_t **cm) {
  cumem_options_t o;
  int rc = tool_options(a, &o);
  if (!rc) rc = cumem_open(cm, &o);
  if (rc) {
    tool_fail("open", rc);
    if (a->json) {
      json_t j;
      tool_json_begin(&j, stdout, command);
      tool_json_end(&j, TOOL_EXIT_FAILED);
    }
  }
  return rc;
}

/* ---- progress ---- */

static struct {
  int on;
  int shown;       /* a progress line is on the terminal */
  char label[160];
  double last;     /* when the line was last drawn */
} progress;

void tool_progress_init(const tool_args_t *a) {
  progress.on = !a->quiet && isatty(STDERR_FILENO);
}

void tool_progress(const char *fmt, ...) {
  if (!progress.on) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(progress.label, sizeof progress.label, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\r\033[K[cumem] %s ...", progress.label); /* \033[K: erase to the end of line */
  fflush(stderr);
  progress.shown = 1;
  progress.last = now_seconds();
}

void tool_progress_fraction(size_t done, size_t total) {
  if (!progress.on || !progress.shown || total == 0) return;
  double t = now_seconds();
  if (t - progress.last < 0.1 && done < total) return; /* at most 10 redraws a second */
  progress.last = t;
  fprintf(stderr, "\r\033[K[cumem] %s ... %3.0f%%", progress.label, 100.0 * (double)done / (double)total);
  fflush(stderr);
}

void tool_progress_done(void) {
  if (!progress.shown) return;
  fputs("\r\033[K", stderr);
  fflush(stderr);
  progress.shown = 0;
}
