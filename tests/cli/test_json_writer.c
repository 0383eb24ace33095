/* tools/json.c: the exact text it writes, escaping included. Every string a
 * command may print (device names, error details with user input) must come
 * out as valid JSON and valid UTF-8. */
#include "harness.h"
#include "json.h"

#include <math.h>

/* What `write` produces, as a malloc'd string. */
static char *capture(void (*write)(json_t *j)) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f) return NULL;
  json_t j;
  json_init(&j, f);
  write(&j);
  fclose(f);
  return buf;
}

static char *escaped(const char *s) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f) return NULL;
  json_write_escaped(f, s);
  fclose(f);
  return buf;
}

#define CHECK_ESCAPED(in, want)            \
  do {                                     \
    char *got_ = escaped(in);              \
    int ok_ = got_ && !strcmp(got_, want); \
    if (!ok_) fprintf(stderr, "  escaped %s as %s, expected %s\n", #in, got_ ? got_ : "(null)", want); \
    free(got_);                            \
    CHECK(ok_);                            \
  } while (0)

TEST(escapes_what_json_requires) {
  CHECK_ESCAPED("plain", "\"plain\"");
  CHECK_ESCAPED("", "\"\"");
  CHECK_ESCAPED("a\"b\\c", "\"a\\\"b\\\\c\"");
  CHECK_ESCAPED("tab\tnl\ncr\rbs\bff\f", "\"tab\\tnl\\ncr\\rbs\\bff\\f\"");
  CHECK_ESCAPED("\x01\x1f", "\"\\u0001\\u001f\"");
  CHECK_ESCAPED("/ and \x7f stay", "\"/ and \x7f stay\"");
}

TEST(keeps_valid_utf8_and_replaces_invalid_bytes) {
  CHECK_ESCAPED("H200 \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", "\"H200 \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"");
  CHECK_ESCAPED("\xff", "\"\\ufffd\"");                     /* never valid */
  CHECK_ESCAPED("\x80x", "\"\\ufffdx\"");                   /* stray continuation */
  CHECK_ESCAPED("\xc3", "\"\\ufffd\"");                     /* truncated at the end */
  CHECK_ESCAPED("\xe2\x82x", "\"\\ufffd\\ufffdx\"");        /* truncated inside */
  CHECK_ESCAPED("\xc0\xaf", "\"\\ufffd\\ufffd\"");          /* overlong '/' */
  CHECK_ESCAPED("\xe0\x80\xaf", "\"\\ufffd\\ufffd\\ufffd\""); /* overlong, 3 bytes */
  CHECK_ESCAPED("\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\""); /* a UTF-16 surrogate */
  CHECK_ESCAPED("\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\""); /* past U+10FFFF */
}

static void write_document(json_t *j) {
  json_object(j, NULL);
  json_string(j, "name", "dev \"0\"");
  json_string(j, "none", NULL);
  json_uint(j, "bytes", UINT64_MAX);
  json_int(j, "code", -12);
  json_number(j, "gbps", 54.5);
  json_number(j, "nan", NAN);
  json_number(j, "inf", INFINITY);
  json_bool(j, "ok", 1);
  json_array(j, "empty");
  json_end(j);
  json_array(j, "steps");
  json_object(j, NULL);
  json_bool(j, "x", 0);
  json_end(j);
  json_int(j, NULL, 7);
  json_end(j);
  json_end(j);
  json_finish(j);
}

TEST(writes_nested_documents) {
  char *got = capture(write_document);
  const char *want =
      "{\n"
      "  \"name\": \"dev \\\"0\\\"\",\n"
      "  \"none\": null,\n"
      "  \"bytes\": 18446744073709551615,\n"
      "  \"code\": -12,\n"
      "  \"gbps\": 54.5,\n"
      "  \"nan\": null,\n"
      "  \"inf\": null,\n"
      "  \"ok\": true,\n"
      "  \"empty\": [],\n"
      "  \"steps\": [\n"
      "    {\n"
      "      \"x\": false\n"
      "    },\n"
      "    7\n"
      "  ]\n"
      "}\n";
  int ok = got && !strcmp(got, want);
  if (!ok) fprintf(stderr, "  got:\n%s\n  expected:\n%s\n", got ? got : "(null)", want);
  free(got);
  CHECK(ok);
}

static void write_unbalanced(json_t *j) {
  json_object(j, NULL);
  json_array(j, "open");
  int rc = json_finish(j);
  fprintf(j->out, "%d", rc);
}

TEST(finish_reports_open_containers) {
  char *got = capture(write_unbalanced);
  int ok = got && strstr(got, "-1") != NULL;
  free(got);
  CHECK(ok);
}

RUN_TESTS("json_writer", T(escapes_what_json_requires), T(keeps_valid_utf8_and_replaces_invalid_bytes),
          T(writes_nested_documents), T(finish_reports_open_containers))
