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

TEST(text_all_devices_ok) {
  char *out;
  int rc = report_with_fault(0, 0, &out);
  int ok = rc == TOOL_EXIT_OK && strstr(out, "device 0:") && strstr(out, "device 1:") && !strstr(out, "FAILED");
  if (!ok) fprintf(stderr, "  rc %d, output:\n%s\n", rc, out ? out : "");
  free(out);
  CHECK(ok);
}

TEST(text_second_device_fails) {
  char *out;
  int rc = report_with_fault(0, 2, &out);
  int ok = rc == TOOL_EXIT_FAILED && strstr(out, "device 0: host-emulated") && strstr(out, "device 1: FAILED");
  if (!ok) fprintf(stderr, "  rc %d, output:\n%s\n", rc, out ? out : "");
  free(out);
  CHECK(ok);
}

TEST(text_first_device_fails_second_still_reported) {
  char *out;
  int rc = report_with_fault(0, 1, &out);
  int ok = rc == TOOL_EXIT_FAILED && strstr(out, "device 0: FAILED") && strstr(out, "device 1: host-emulated");
  if (!ok) fprintf(stderr, "  rc %d, output:\n%s\n", rc, out ? out : "");
  free(out);
  CHECK(ok);
}

TEST(json_second_device_fails) {
  char *out;
  int rc = report_with_fault(1, 2, &out);
  int ok = rc == TOOL_EXIT_FAILED && strstr(out, "\"index\": 0,\n      \"name\": \"host-emulated device 0\"") &&
           strstr(out, "\"index\": 1,\n      \"error\": {") && strstr(out, "\"name\": \"CUMEM_EDRIVER\"") &&
           strstr(out, "\"ok\": false") && strstr(out, "\"exit_code\": 1");
  if (!ok) fprintf(stderr, "  rc %d, output:\n%s\n", rc, out ? out : "");
  free(out);
  CHECK(ok);
}

RUN_TESTS("cli_info", T(text_all_devices_ok), T(text_second_device_fails),
          T(text_first_device_fails_second_still_reported), T(json_second_device_fails))
