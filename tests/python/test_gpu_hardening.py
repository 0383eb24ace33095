"""Issue 13 on a GPU (cuda backend, PyTorch): options validated at open,
close() racing other threads' calls, and a backup view that outlives the
free PyTorch makes from C++. The starvation bound, the order of service and
fork run in the C suites' cuda variants (ctest -R 'test_threads.cuda')."""

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import release_torch_cache, requires_cuda

pytestmark = requires_cuda

MiB = 1 << 20


def run_child(code, timeout=300):
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    return proc.returncode, proc.stdout + proc.stderr


BAD = [
    ("copy_chunk", 0), ("copy_chunk", 1), ("copy_chunk", 2**64 - 1), ("copy_chunk", 4097),
    ("copy_chunk", -1), ("chunk_size", 2**41), ("chunk_size", "garbage"), ("host_threads", 0),
    ("release_threads", 65), ("retain_backup", 2), ("zero_on_wake", -1), ("verbose", 2**40),
]


@pytest.mark.parametrize("name,value", BAD, ids=[f"{n}={v}" for n, v in BAD])
def test_options_are_validated_on_cuda(name, value):
    import cumem

    with pytest.raises(cumem.CumemError) as e:
        cumem.Instance(backend="cuda", **{name: value})
    assert e.value.code == cumem._C.EINVAL
    assert name in str(e.value) and "allowed" in str(e.value)


def test_environment_is_validated_on_cuda(monkeypatch):
    import cumem

    monkeypatch.setenv("CUMEM_COPY_CHUNK_MB", "99999999999999999999")
    with pytest.raises(cumem.CumemError) as e:
        cumem.Instance(backend="cuda")
    assert e.value.code == cumem._C.EINVAL and "CUMEM_COPY_CHUNK_MB" in str(e.value)
    monkeypatch.setenv("CUMEM_COPY_CHUNK_MB", "2")  # a bare number counts MiB
    with cumem.Instance(backend="cuda") as inst:
        assert inst.backend == "cuda"


@pytest.mark.parametrize("copy_chunk", [4096, "2M", "1.5G"])
def test_allowed_copy_chunks_round_trip_on_cuda(copy_chunk):
    """The smallest segment (a page), an odd count of segments, and one
    segment larger than the allocation: every byte comes back."""
    import cumem

    n = 24 * MiB + 4096 * 3
    data = os.urandom(n)
    with cumem.Instance(backend="cuda", copy_chunk=copy_chunk) as inst:
        p = inst.alloc(n, tag="w")
        inst.copy_to_device(p, data)
        inst.sleep(offload_tags="w")
        inst.wake()
        assert inst.copy_to_host(p, n) == data
        inst.free(p)


def test_close_racing_calls_on_cuda():
    # In a child (close_race.py): a 1 GiB offloading sleep, 64 MiB cycles.
    rc, out = run_child("import close_race; close_race.run('cuda', 1 << 30, 64 << 20)")
    assert rc == 0 and "OK" in out, out
    print(out.strip())


def test_backup_view_outlives_torch_free():
    import torch

    import cumem

    tag = "harden-view"
    with cumem.pool(tag):
        t = torch.randint(0, 256, (32 * MiB,), dtype=torch.uint8, device="cuda")
    expected = t.cpu().numpy().tobytes()
    cumem.sleep(tag, offload_tags=tag)
    view = cumem.default().backup_view(t.data_ptr())
    assert view is not None
    allocations = cumem.stats(tag)["allocations"]
    del t
    cumem.empty_cache()  # PyTorch frees the block from C++ (cumem_torch_free)
    release_torch_cache()
    assert cumem.stats(tag)["allocations"] < allocations  # really freed
    assert bytes(view[: len(expected)]) == expected  # SIGSEGV before
    view.release()
    with pytest.raises(ValueError):
        view[0]


def test_discarding_sleep_drops_stale_backup_on_cuda():
    import torch

    import cumem

    tag = "harden-discard"
    with cumem.pool(tag):
        t = torch.ones(16 * MiB, dtype=torch.uint8, device="cuda")
    cumem.sleep(tag, offload_tags=tag)
    cumem.wake(tag)
    assert cumem.default().backup_view(t.data_ptr()) is not None  # retained
    cumem.sleep(tag)  # discard
    assert cumem.default().backup_view(t.data_ptr()) is None
    assert cumem.stats(tag)["bytes_backed_up"] == 0
    cumem.release_backup(tag)  # while asleep
    assert cumem.stats(tag)["bytes_host_held"] == 0
    cumem.wake(tag)
    del t
    release_torch_cache()
