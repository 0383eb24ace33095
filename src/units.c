/* Sizes written with units: "512M", "16G", "1.5GiB", "4096". One parser for
 * the environment (CUMEM_*_MB and friends) and the command line, so that
 * every size is read the same way everywhere.
 *
 * Grammar: digits, optionally "." and more digits, optionally one unit, no
 * spaces: B, K/KB/KiB, M/MB/MiB, G/GB/GiB, T/TB/TiB (any case). Every unit is
 * binary (K = 1024), as CUDA's and PyTorch's sizes are. Without a unit the
 * caller's default unit applies (MiB for CUMEM_*_MB, bytes elsewhere).
 * Fractions round down to whole bytes. Exponents, signs, NaN and infinity
 * are not numbers here, and a value past SIZE_MAX is an overflow, never a
 * wrapped or saturated size. */
#include "internal.h"

#include <ctype.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

static const struct { const char *suffix; size_t bytes; } units[] = {
    {"b", 1},
    {"k", (size_t)1 << 10}, {"kb", (size_t)1 << 10}, {"kib", (size_t)1 << 10},
    {"m", (size_t)1 << 20}, {"mb", (size_t)1 << 20}, {"mib", (size_t)1 << 20},
    {"g", (size_t)1 << 30}, {"gb", (size_t)1 << 30}, {"gib", (size_t)1 << 30},
    {"t", (size_t)1 << 40}, {"tb", (size_t)1 << 40}, {"tib", (size_t)1 << 40},
};

int cumem__parse_size(const char *text, size_t default_unit, size_t *out, const char **why) {
  const char *p = text;
  const char *reason = NULL;
  if (!p || !*p) reason = "empty";
  /* Whole part, with overflow checks at every step. */
  size_t whole = 0;
  int digits = 0;
  for (; !reason && isdigit((unsigned char)*p); p++, digits++) {
    size_t d = (size_t)(*p - '0');
    if (whole > (SIZE_MAX - d) / 10) reason = "too large";
    else whole = whole * 10 + d;
  }
  /* Fraction: up to 18 digits count (finer than a byte at any unit). */
  uint64_t frac = 0, scale = 1;
  int fdigits = 0;
  if (!reason && *p == '.') {
    for (p++; isdigit((unsigned char)*p); p++, fdigits++)
      if (fdigits < 18) {
        frac = frac * 10 + (uint64_t)(*p - '0');
        scale *= 10;
      }
    if (fdigits == 0) reason = "a '.' must be followed by digits";
  }
  if (!reason && digits == 0 && fdigits == 0) reason = "not a number";
  size_t unit = default_unit;
  if (!reason && *p) {
    unit = 0;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
      if (strcasecmp(p, units[i].suffix) == 0) unit = units[i].bytes;
    if (!unit) reason = "unknown unit (expected B, K, M, G or T, optionally with B or iB)";
  }
  size_t bytes = 0;
  if (!reason) {
    if (unit && whole > SIZE_MAX / unit) reason = "too large";
    else {
      bytes = whole * unit;
      /* frac / scale of a unit, rounded down: frac < 10^18 times a unit of
       * up to 2^40 needs more than 64 bits, so the product is 128-bit. */
      unsigned __int128 part = (unsigned __int128)frac * unit / scale;
      if (part > SIZE_MAX - bytes) reason = "too large";
      else bytes += (size_t)part;
    }
  }
  if (why) *why = reason;
  if (reason) return CUMEM_EINVAL;
  *out = bytes;
  return 0;
}
