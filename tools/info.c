/* `cumem info`: what the backend and each device offer. Every device is
 * reported, and the command fails when any of them fails. */
#include "tool.h"

#include <stdio.h>

int info_report(cumem_t *cm, const tool_args_t *a, FILE *out) {
  json_t j;
  int n = 0, failed = 0;
  int rc = cumem_device_count(cm, &n);
  if (rc) {
    tool_fail("device count", rc);
    failed = 1;
  }
  if (a->json) {
    tool_json_begin(&j, out, "info");
    json_string(&j, "backend", cumem_backend_name(cm));
    json_int(&j, "device_count", n);
    json_array(&j, "devices");
  } else {
    fprintf(out, "cumem %s, backend: %s, %d device(s)\n", cumem_version(), cumem_backend_name(cm), n);
  }
  for (int d = 0; d < n; d++) {
    cumem_device_info_t info;
    rc = cumem_device_info(cm, d, &info);
    if (rc) {
      char what[32];
      snprintf(what, sizeof what, "device %d info", d);
      tool_fail(what, rc);
      failed = 1;
    }
    if (a->json) {
      json_object(&j, NULL);
      json_int(&j, "index", d);
      if (rc) {
        tool_json_error(&j, "device info", rc, cumem_last_error());
      } else {
        json_string(&j, "name", info.name);
        json_uint(&j, "total_bytes", info.total_bytes);
        json_uint(&j, "free_bytes", info.free_bytes);
        json_uint(&j, "granularity_bytes", info.granularity);
        json_bool(&j, "gpudirect_rdma_with_vmm", info.rdma);
        json_bool(&j, "fabric_handles", info.fabric);
        json_bool(&j, "posix_fd_handles", info.posix_fd);
        json_int(&j, "numa_node", info.numa_node);
      }
      json_end(&j);
    } else if (rc) {
      fprintf(out, "device %d: FAILED: %s\n", d, cumem_strerror(rc));
    } else {
      char t[32], f[32], g[32];
      fprintf(out, "device %d: %s\n", d, info.name);
      fprintf(out, "  memory:       %s total, %s free\n", fmt_bytes(info.total_bytes, t),
              fmt_bytes(info.free_bytes, f));
      fprintf(out, "  granularity:  %s\n", fmt_bytes(info.granularity, g));
      fprintf(out, "  GPUDirect RDMA with VMM: %s\n", info.rdma ? "yes" : "no");
      fprintf(out, "  fabric handles:          %s\n", info.fabric ? "yes" : "no");
      fprintf(out, "  POSIX fd handles:        %s\n", info.posix_fd ? "yes" : "no");
      if (info.numa_node >= 0) fprintf(out, "  nearest NUMA node:       %d\n", info.numa_node);
      else fprintf(out, "  nearest NUMA node:       unknown (one node, or not reported)\n");
    }
  }
  int exit_code = failed ? TOOL_EXIT_FAILED : TOOL_EXIT_OK;
  if (a->json) {
    json_end(&j); /* devices */
    tool_json_end(&j, exit_code);
  }
  return exit_code;
}

int cmd_info(const tool_args_t *a) {
  cumem_t *cm;
  if (tool_open(a, "info", &cm)) return TOOL_EXIT_FAILED;
  int rc = info_report(cm, a, stdout);
  cumem_close(cm);
  return rc;
}
