/* The JSON writer of the `cumem` command (see json.h). */
#include "json.h"

#include <math.h>
#include <inttypes.h>

void json_init(json_t *j, FILE *out) {
  j->out = out;
  j->depth = 0;
}

/* Length of the valid UTF-8 sequence at s (1-4), or 0 when it is not one:
 * a stray continuation byte, a truncated sequence, an overlong form, a
 * surrogate or a code point past U+10FFFF. */
static int utf8_sequence(const unsigned char *s) {
  unsigned char c = s[0];
  int n;
  unsigned char lo = 0x80, hi = 0xBF; /* the allowed range of the second byte */
  if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;      /* overlong */
    else if (c == 0xED) hi = 0x9F; /* UTF-16 surrogates */
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;      /* overlong */
    else if (c == 0xF4) hi = 0x8F; /* past U+10FFFF */
  } else {
    return 0;
  }
  if (s[1] < lo || s[1] > hi) return 0;
  for (int i = 2; i < n; i++)
    if (s[i] < 0x80 || s[i] > 0xBF) return 0; /* NUL ends a truncated one here */
  return n;
}

void json_write_escaped(FILE *out, const char *str) {
  const unsigned char *s = (const unsigned char *)str;
  fputc('"', out);
  while (*s) {
    unsigned char c = *s;
    if (c == '"' || c == '\\') {
      fputc('\\', out);
      fputc(c, out);
      s++;
    } else if (c < 0x20) {
      switch (c) {
      case '\n': fputs("\\n", out); break;
      case '\r': fputs("\\r", out); break;
      case '\t': fputs("\\t", out); break;
      case '\b': fputs("\\b", out); break;
      case '\f': fputs("\\f", out); break;
      default: fprintf(out, "\\u%04x", c);
      }
      s++;
    } else if (c < 0x80) {
      fputc(c, out);
      s++;
    } else {
      int n = utf8_sequence(s);
      if (n) fwrite(s, 1, (size_t)n, out);
      else fputs("\\ufffd", out); /* one replacement per invalid byte */
      s += n ? n : 1;
    }
  }
  fputc('"', out);
}

/* Separator, newline and indentation before a value, then its key. */
static void member(json_t *j, const char *key) {
  if (j->depth > 0) {
    int d = j->depth - 1;
    if (j->has_members[d]) fputc(',', j->out);
    j->has_members[d] = 1;
    fputc('\n', j->out);
    for (int i = 0; i < j->depth; i++) fputs("  ", j->out);
  }
  if (key) {
    json_write_escaped(j->out, key);
    fputs(": ", j->out);
  }
}

static void open_container(json_t *j, const char *key, char open, char close) {
  member(j, key);
  fputc(open, j->out);
  if (j->depth < JSON_MAX_DEPTH) { /* deeper nesting is a bug of the caller */
    j->has_members[j->depth] = 0;
    j->closer[j->depth] = close;
    j->depth++;
  }
}

void json_object(json_t *j, const char *key) { open_container(j, key, '{', '}'); }
void json_array(json_t *j, const char *key) { open_container(j, key, '[', ']'); }

void json_end(json_t *j) {
  if (j->depth == 0) return;
  j->depth--;
  if (j->has_members[j->depth]) {
    fputc('\n', j->out);
    for (int i = 0; i < j->depth; i++) fputs("  ", j->out);
  }
  fputc(j->closer[j->depth], j->out);
}

int json_finish(json_t *j) {
  fputc('\n', j->out);
  fflush(j->out);
  return j->depth == 0 ? 0 : -1;
}

void json_string(json_t *j, const char *key, const char *value) {
  member(j, key);
  if (value) json_write_escaped(j->out, value);
  else fputs("null", j->out);
}

void json_uint(json_t *j, const char *key, uint64_t value) {
  member(j, key);
  fprintf(j->out, "%" PRIu64, value);
}

void json_int(json_t *j, const char *key, int64_t value) {
  member(j, key);
  fprintf(j->out, "%" PRId64, value);
}

void json_number(json_t *j, const char *key, double value) {
  member(j, key);
  if (isfinite(value)) fprintf(j->out, "%.6g", value);
  else fputs("null", j->out);
}

void json_bool(json_t *j, const char *key, int value) {
  member(j, key);
  fputs(value ? "true" : "false", j->out);
}
