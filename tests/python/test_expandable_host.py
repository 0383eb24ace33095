"""PyTorch's expandable segments are one setting for the whole process, which
a region (or a graph captured in one) turns off while it allocates: the
first block in turns them off, the last one out turns them on again. Nested
regions and regions of several threads must never turn them on while one is
still open (that would route its later segments around cumem's allocator).

Run against a stand-in `torch` module that records the setting, in a child
process so that the stand-in never meets the real PyTorch."""

import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import contextlib, json, os, sys, threading, types
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    log = []
    torch = types.ModuleType("torch")
    torch._C = types.SimpleNamespace(_accelerator_setAllocatorSettings=lambda s: log.append(s.endswith("True")))
    torch.cuda = types.SimpleNamespace(use_mem_pool=lambda pool: contextlib.nullcontext())
    sys.modules["torch"] = torch
    from cumem import _torch

    def on():  # the setting now: on until a block turns it off
        return log[-1] if log else True

    seen = {}
    with _torch.allocate_in("outer-pool", "outer"):
        seen["outer"] = on()
        with _torch.allocate_in("inner-pool", "inner"):
            seen["inner"] = on()
        seen["outer_again"] = on()
        # another thread's region, entered and left while this one is open
        inside, leave = threading.Event(), threading.Event()
        def other():
            with _torch.allocate_in("other-pool", "other"):
                inside.set()
                leave.wait()
        t = threading.Thread(target=other)
        t.start()
        inside.wait()
        leave.set()
        t.join()
        seen["after_other_thread"] = on()
    seen["after_all"] = on()
    seen["switches"] = log
    print(json.dumps(seen))
    """
)


def test_expandable_segments_stay_off_until_the_last_region_leaves():
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["outer"] is False and seen["inner"] is False
    assert seen["outer_again"] is False  # the inner region left, the outer is still open
    assert seen["after_other_thread"] is False
    assert seen["after_all"] is True
    assert seen["switches"] == [False, True]  # off once, on once
