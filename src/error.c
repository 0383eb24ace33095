/* The version, error codes and the per-thread error detail. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char last_error[512];
/* The verbosity of the instance whose call runs on this thread; -1: none. */
static _Thread_local int log_scope = -1;

const char *cumem_version(void) { return CUMEM_VERSION; }
unsigned cumem_version_hex(void) { return CUMEM_VERSION_HEX; }

const char *cumem_strerror(int code) {
  switch (code) {
  case CUMEM_OK: return "CUMEM_OK: success";
#define XX(name, value, meaning) \
  case CUMEM_##name: return "CUMEM_" #name ": " meaning;
    CUMEM_ERRNO_MAP(XX)
#undef XX
  default: return "CUMEM_E?: unknown error code";
  }
}

const char *cumem_err_name(int code) {
  switch (code) {
  case CUMEM_OK: return "CUMEM_OK";
#define XX(name, value, meaning) \
  case CUMEM_##name: return "CUMEM_" #name;
    CUMEM_ERRNO_MAP(XX)
#undef XX
  default: return "CUMEM_E?";
  }
}

const char *cumem_last_error(void) { return last_error; }

/* Drop an incomplete UTF-8 character at the end of buf (left by a cut). */
static void utf8_trim_tail(char *buf) {
  size_t len = strlen(buf), j = len;
  while (j > 0 && len - j < 3 && ((unsigned char)buf[j - 1] & 0xC0) == 0x80) j--;
  if (j == 0) return;
  unsigned char lead = (unsigned char)buf[j - 1];
  size_t want = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
  if (len - (j - 1) < want) buf[j - 1] = '\0';
}

int cumem_set_error(int code, const char *file, int line, const char *fmt, ...) {
  const char *base = strrchr(file, '/');
  int n = snprintf(last_error, sizeof last_error, "%s:%d: ", base ? base + 1 : file, line);
  if (n < 0 || (size_t)n >= sizeof last_error) n = 0;
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(last_error + n, sizeof last_error - (size_t)n, fmt, ap);
  va_end(ap);
  /* A detail cut at the end of the buffer must not end inside a UTF-8
   * character. */
  if (m >= 0 && (size_t)n + (size_t)m >= sizeof last_error) utf8_trim_tail(last_error);
  if (cumem__logging()) fprintf(stderr, "cumem: error %d: %s\n", code, last_error);
  return code;
}

void cumem__error_save(cumem__error_save_t *s) {
  memcpy(s->text, last_error, sizeof s->text);
}

void cumem__error_restore(const cumem__error_save_t *s) {
  memcpy(last_error, s->text, sizeof last_error);
}

size_t cumem__utf8_prefix(const char *s, size_t max) {
  size_t n = strnlen(s, max);
  if (s[n] == '\0') return n; /* all of it fits */
  /* s[n] is the first byte left out: back off while it continues a
   * character (10xxxxxx), so that the cut falls before that character. */
  while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
  return n;
}

/* CUMEM_VERBOSE, read once, for log lines outside any instance's call. */
static int env_verbose(void) {
  static _Atomic int cached = -1;
  int v = cached;
  if (v < 0) {
    const char *s = getenv("CUMEM_VERBOSE");
    v = s && *s && strcmp(s, "0") != 0;
    cached = v;
  }
  return v;
}

int cumem__logging(void) { return log_scope >= 0 ? log_scope > 0 : env_verbose(); }

int cumem__log_scope(int verbose) {
  int previous = log_scope;
  log_scope = verbose > 0;
  return previous;
}

void cumem__log_scope_restore(int previous) { log_scope = previous; }

int cumem__log_scope_current(void) { return log_scope; }

void cumem__log(const char *fmt, ...) {
  if (!cumem__logging()) return;
  va_list ap;
  va_start(ap, fmt);
  fputs("cumem: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}
