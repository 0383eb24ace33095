/* A small streaming JSON writer for the `cumem` command's --json output.
 *
 * Values are written as they come, each member on its own line. `key` names
 * the member inside an object and is NULL for an array element or the top
 * value. Strings are escaped as RFC 8259 requires (quote, backslash, control
 * characters), and bytes that are not valid UTF-8 become U+FFFD, so that any
 * device name or error detail yields a document every parser reads. Numbers
 * that JSON cannot write (NaN, infinity) are written as null. */
#ifndef CUMEM_TOOL_JSON_H
#define CUMEM_TOOL_JSON_H

#include <stdint.h>
#include <stdio.h>

#define JSON_MAX_DEPTH 16

typedef struct json {
  FILE *out;
  int depth;                           /* containers open */
  unsigned char has_members[JSON_MAX_DEPTH]; /* per open container */
  char closer[JSON_MAX_DEPTH];         /* '}' or ']' */
} json_t;

void json_init(json_t *j, FILE *out);
/* Open an object / array (as member `key`); json_end closes the innermost. */
void json_object(json_t *j, const char *key);
void json_array(json_t *j, const char *key);
void json_end(json_t *j);
/* The document is complete: a final newline; -1 if containers are still open. */
int json_finish(json_t *j);

void json_string(json_t *j, const char *key, const char *value); /* NULL: null */
void json_uint(json_t *j, const char *key, uint64_t value);
void json_int(json_t *j, const char *key, int64_t value);
void json_number(json_t *j, const char *key, double value); /* 6 significant digits */
void json_bool(json_t *j, const char *key, int value);

/* `s` as a JSON string literal, quotes included (used by json_string). */
void json_write_escaped(FILE *out, const char *s);

#endif
