/* `cumem info` reports every device and fails when any of them fails: the
 * second of two devices fails its device_info (fault backend), in text and
 * in JSON. */
#include "harness.h"
#include "tool.h"

/* info_report on a two-device instance whose `nth` device_info call fails;
 * returns the exit code and the output in *text (malloc'd). */
static int report_with_fault(int json, long nth, char **text) {
  cumem_t *cm = NULL;
  cumem_backend_t *fault = NULL;
  *text = NULL;
  if (test_open(&cm, &fault, NULL)) return -100;
  int n = 0;
  cumem_device_count(cm, &n);
  if (n != 2) {
    cumem_close(cm);
    return -101;
  }
  if (nth) cumem_fault_arm(fault, nth, "device_info", CUMEM_EDRIVER, 0);
  size_t len = 0;
  FILE *f = open_memstream(text, &len);
  tool_args_t a = {0};
  a.json = json;
  int rc = info_report(cm, &a, f);
  fclose(f);
  cumem_fault_arm(fault, 0, NULL, 0, 0);
  cumem_close(cm);
  return rc;
}

/* The report with the nth device_info call failing (0: none) exits with
 * want_rc, contains every string of `present` and none of `absent`. */
static int report_is(int json, long nth, int want_rc, const char *const present[], const char *absent) {
  char *out;
  int rc = report_with_fault(json, nth, &out);
  int ok = rc == want_rc && out && (!absent || !strstr(out, absent));
  for (size_t i = 0; ok && present[i]; i++) ok = strstr(out, present[i]) != NULL;
  if (!ok) fprintf(stderr, "  rc %d (expected %d), output:\n%s\n", rc, want_rc, out ? out : "");
  free(out);
  return ok;
}

TEST(text_all_devices_ok) {
  const char *want[] = {"device 0: host-emulated", "device 1: host-emulated", NULL};
  CHECK(report_is(0, 0, TOOL_EXIT_OK, want, "FAILED"));
}

TEST(text_second_device_fails) {
  const char *want[] = {"device 0: host-emulated", "device 1: FAILED", NULL};
  CHECK(report_is(0, 2, TOOL_EXIT_FAILED, want, NULL));
}

TEST(text_first_device_fails_second_still_reported) {
  const char *want[] = {"device 0: FAILED", "device 1: host-emulated", NULL};
  CHECK(report_is(0, 1, TOOL_EXIT_FAILED, want, NULL));
}

TEST(json_second_device_fails) {
  const char *want[] = {"\"index\": 0,\n      \"name\": \"host-emulated device 0\"",
                        "\"index\": 1,\n      \"error\": {", "\"name\": \"CUMEM_EDRIVER\"", "\"ok\": false",
                        "\"exit_code\": 1", NULL};
  CHECK(report_is(1, 2, TOOL_EXIT_FAILED, want, NULL));
}

RUN_TESTS("cli_info", T(text_all_devices_ok), T(text_second_device_fails),
          T(text_first_device_fails_second_still_reported), T(json_second_device_fails))
