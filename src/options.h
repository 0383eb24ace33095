/* Options as a table: one row per option says its name, its environment
 * variable, its type, its default and its allowed values. Reading the
 * environment, setting an option by name, validating a cumem_options_t at
 * open and every error message come from the rows (options.c), so an option
 * is added by adding a row. The host backend describes its CUMEM_HOST_*
 * emulation settings with rows of its own (backend_host.c). */
#ifndef CUMEM_OPTIONS_H
#define CUMEM_OPTIONS_H

#include "internal.h"

#include <stddef.h>

typedef enum cumem__opt_type {
  CUMEM__OPT_SIZE,   /* size_t, in bytes; text may carry a unit ("64M") */
  CUMEM__OPT_INT,    /* int */
  CUMEM__OPT_STRING, /* const char *, one of `choices` (or any when NULL) */
} cumem__opt_type_t;

/* Flags of a row. */
enum {
  CUMEM__OPT_ZERO_OFF = 1,  /* 0 is allowed besides [min, max] and means "off" */
  CUMEM__OPT_PAGE = 2,      /* a size that is a multiple of the page size */
  CUMEM__OPT_POW2 = 4,      /* a size that is a power of two */
};

/* The largest size any option takes: 1 TiB, beyond every device's memory,
 * and small enough that no sum or product of two sizes in the engine can
 * wrap. */
#define CUMEM__OPT_SIZE_LIMIT ((size_t)1 << 40)

typedef struct cumem__option {
  const char *name;     /* the struct field (and the Python keyword) */
  const char *env;      /* its environment variable */
  cumem__opt_type_t type;
  size_t offset;        /* offsetof(struct, field) */
  long long min, max;   /* allowed range (sizes: bytes) */
  unsigned flags;
  size_t env_unit;      /* sizes: bytes per unit of a bare number in the
                           environment (MiB for *_MB); 1 elsewhere */
  long long def;        /* default (sizes: bytes) */
  long long (*def_fn)(void); /* a default computed at run time, or NULL */
  const char *def_str;  /* strings: default */
  const char *const *choices; /* strings: the allowed values, NULL-ended */
  const struct cumem__opt_word {
    const char *word;
    long long value;
  } *words;             /* ints: names for values ({"auto", -1}), ending
                           with {NULL, 0}; or NULL */
  const char *note;     /* said after the range ("rounded up to ..."), or NULL */
} cumem__option_t;

/* Write every row's default into the struct at base. */
void cumem__options_defaults(const cumem__option_t *rows, size_t n, void *base);
/* Set one row's field from text, read as the environment would be when
 * `env_unit` (sizes without a unit in the row's env_unit) or as bytes
 * otherwise. `source` names where the text came from in the detail (the
 * variable's name, or NULL for a call). On failure nothing is written and
 * the detail names the option, the value, what is wrong and the allowed
 * values: CUMEM_EINVAL. */
int cumem__option_set_text(const cumem__option_t *o, void *base, const char *text, int env_unit,
                           const char *source);
/* The row's environment variable, if set and not empty, into the struct; CUMEM_EINVAL
 * (with the detail above) when it is malformed or out of range, and then
 * the field keeps its value. */
int cumem__option_from_env(const cumem__option_t *o, void *base);
/* CUMEM_EINVAL, naming the option, when the field's value is not allowed. */
int cumem__option_check(const cumem__option_t *o, const void *base);

/* cumem_options_t against its table, at open. */
int cumem__options_validate(const cumem_options_t *opts);

#endif
