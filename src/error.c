/* Error codes and the per-thread error detail. */
#include "internal.h"

#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[512];
int cumem__verbose;

const char *cumem_strerror(int code) {
  switch (code) {
  case CUMEM_OK: return "CUMEM_OK: success";
  case CUMEM_EINVAL: return "CUMEM_EINVAL: invalid argument";
  case CUMEM_ENOMEM: return "CUMEM_ENOMEM: out of device memory";
  case CUMEM_ENOHOST: return "CUMEM_ENOHOST: out of host memory";
  case CUMEM_ENOTFOUND: return "CUMEM_ENOTFOUND: not a live cumem allocation";
  case CUMEM_ENOTAG: return "CUMEM_ENOTAG: unknown tag";
  case CUMEM_ENODEV: return "CUMEM_ENODEV: no such device";
  case CUMEM_ENODRIVER: return "CUMEM_ENODRIVER: backend unavailable (no driver or GPU)";
  case CUMEM_EDRIVER: return "CUMEM_EDRIVER: driver call failed";
  case CUMEM_E2BIG: return "CUMEM_E2BIG: size exceeds the device's memory";
  case CUMEM_ENOTSUP: return "CUMEM_ENOTSUP: not supported by this backend or device";
  default: return "CUMEM_E?: unknown error code";
  }
}

const char *cumem_last_error(void) { return last_error; }

int cumem__set_error(int code, const char *file, int line, const char *fmt, ...) {
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
