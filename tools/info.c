/* `cumem info`: what the backend and each device offer. */
#include "tool.h"

#include <stdio.h>

int cmd_info(const tool_args_t *a) {
  cumem_t *cm;
  int rc = tool_open(a, &cm);
  if (rc) return 1;
  int n = 0;
  cumem_device_count(cm, &n);
  printf("cumem %s, backend: %s, %d device(s)\n", CUMEM_VERSION, cumem_backend_name(cm), n);
  for (int d = 0; d < n; d++) {
    cumem_device_info_t info;
    rc = cumem_device_info(cm, d, &info);
    if (rc) {
      tool_fail("device info", rc);
      continue;
    }
    char t[32], f[32], g[32];
    printf("device %d: %s\n", d, info.name);
    printf("  memory:       %s total, %s free\n", fmt_bytes(info.total_bytes, t), fmt_bytes(info.free_bytes, f));
    printf("  granularity:  %s\n", fmt_bytes(info.granularity, g));
    printf("  GPUDirect RDMA with VMM: %s\n", info.rdma ? "yes" : "no");
    printf("  fabric handles:          %s\n", info.fabric ? "yes" : "no");
    printf("  POSIX fd handles:        %s\n", info.posix_fd ? "yes" : "no");
    if (info.numa_node >= 0) printf("  nearest NUMA node:       %d\n", info.numa_node);
    else printf("  nearest NUMA node:       unknown (one node, or not reported)\n");
  }
  cumem_close(cm);
  return rc ? 1 : 0;
}
