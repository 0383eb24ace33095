/* Sizes with units (src/units.c), table-driven: what is accepted, what each
 * refusal says, and that nothing wraps or saturates. */
#include "harness.h"
#include "../src/internal.h"

#include <stdint.h>

#define MiB ((size_t)1 << 20)

static const struct {
  const char *text;
  size_t unit; /* the caller's default unit */
  int ok;
  size_t bytes;
} cases[] = {
    {"512M", MiB, 1, 512 * MiB},
    {"16G", 1, 1, (size_t)16 << 30},
    {"1.5GiB", 1, 1, (size_t)3 << 29},
    {"2kb", 1, 1, 2048},
    {"4096", 1, 1, 4096},
    {"64", MiB, 1, 64 * MiB},
    {"1.5", MiB, 1, 3 * MiB / 2},
    {".5M", 1, 1, MiB / 2},
    {"0", MiB, 1, 0},
    {"0.0000001", 1, 1, 0}, /* rounds down: callers refuse 0 where it is no size */
    {"1T", 1, 1, (size_t)1 << 40},
    {"18446744073709551615", 1, 1, SIZE_MAX},
    {"18446744073709551615", MiB, 0, 0}, /* times MiB: overflow, not a wrap */
    {"18446744073709551616", 1, 0, 0},
    {"99999999999999999999", MiB, 0, 0},
    {"17179869184G", 1, 0, 0},
    {"", 1, 0, 0},
    {"nan", 1, 0, 0},
    {"inf", 1, 0, 0},
    {"1e-30", 1, 0, 0},
    {"-1", 1, 0, 0},
    {"+1", 1, 0, 0},
    {" 1", 1, 0, 0},
    {"1 M", 1, 0, 0},
    {"1.", 1, 0, 0},
    {"2x", 1, 0, 0},
    {"0x10", 1, 0, 0},
};

TEST(sizes_parse_or_are_refused_with_a_reason) {
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    size_t v = 12345;
    const char *why = NULL;
    int rc = cumem__parse_size(cases[i].text, cases[i].unit, &v, &why);
    if (cases[i].ok) {
      if (rc != 0 || v != cases[i].bytes || why != NULL) {
        fprintf(stderr, "  \"%s\": rc %d, %zu bytes, want %zu\n", cases[i].text, rc, v, cases[i].bytes);
        CHECK(0);
      }
    } else {
      if (rc != CUMEM_EINVAL || v != 12345 || !why || !*why) {
        fprintf(stderr, "  \"%s\": rc %d, %zu bytes, expected a refusal\n", cases[i].text, rc, v);
        CHECK(0);
      }
    }
  }
}

RUN_TESTS("units", T(sizes_parse_or_are_refused_with_a_reason))
