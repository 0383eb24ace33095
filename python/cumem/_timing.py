"""Where the Python adapters spend a sleep or a wake, for CUMEM_VERBOSE=1.

The core prints its own phases ("cumem: sleep of N allocations: ..."); these
lines add what the Python layer does around it (sweeping retired pools,
PyTorch's empty_cache, bookkeeping), so that a slow adapter call shows where
the time went:

    cumem: CuMemAllocator.sleep: 0.1 ms sweep, 318.2 ms core, 1.4 ms torch empty_cache, 319.9 ms in all
"""

import os
import sys
import time

VERBOSE = os.environ.get("CUMEM_VERBOSE", "").strip() not in ("", "0")


class Steps:
    """Time the consecutive steps of one call; print them on done() when
    CUMEM_VERBOSE is set (otherwise a few perf_counter calls)."""

    def __init__(self, what):
        self.what = what
        self.t0 = self.t = time.perf_counter()
        self.parts = []

    def step(self, name):
        """The time since the last step (or the start) went to `name`."""
        now = time.perf_counter()
        self.parts.append((name, now - self.t))
        self.t = now

    def done(self):
        """Print the steps and the total, with CUMEM_VERBOSE set."""
        if not VERBOSE:
            return
        total = time.perf_counter() - self.t0
        parts = ", ".join(f"{s * 1e3:.1f} ms {name}" for name, s in self.parts)
        print(f"cumem: {self.what}: {parts}, {total * 1e3:.1f} ms in all", file=sys.stderr, flush=True)
