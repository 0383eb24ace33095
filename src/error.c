/* The version, error codes and the per-thread error detail. */
#include "internal.h"

#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[512];
int cumem__verbose;

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

int cumem_set_error(int code, const char *file, int line, const char *fmt, ...) {
  const char *base = strrchr(file, '/');
  int n = snprintf(last_error, sizeof last_error, "%s:%d: ", base ? base + 1 : file, line);
  if (n < 0 || (size_t)n >= sizeof last_error) n = 0;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error + n, sizeof last_error - (size_t)n, fmt, ap);
  va_end(ap);
  if (cumem__verbose) fprintf(stderr, "cumem: error %d: %s\n", code, last_error);
  return code;
}

void cumem__error_save(cumem__error_save_t *s) {
  memcpy(s->text, last_error, sizeof s->text);
}

void cumem__error_restore(const cumem__error_save_t *s) {
  memcpy(last_error, s->text, sizeof last_error);
}

void cumem__log(const char *fmt, ...) {
  if (!cumem__verbose) return;
  va_list ap;
  va_start(ap, fmt);
  fputs("cumem: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}
