/* `cumem bench`: see issue 3 (written next). */
#include "tool.h"

#include <stdio.h>

int cmd_bench(const tool_args_t *a) {
  (void)a;
  fprintf(stderr, "cumem bench: not built yet\n");
  return 2;
}
