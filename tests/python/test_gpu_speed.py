"""The adapters' speed paths on a GPU with PyTorch (issue 9): what a pause
frees, backups given back after resume in the background, prepare-ahead
from each API (also while a CUDA graph is being captured)."""

import time

import pytest
from conftest import free_gpu_bytes, release_torch_cache, requires_cuda

pytestmark = requires_cuda

MiB = 1 << 20


def wait_pinned(tag, nbytes, seconds=60):
    import cumem

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cumem.stats(tag)["bytes_host_pinned"] >= nbytes:
            return True
        time.sleep(0.005)
    return False


@pytest.fixture
def tms():
    from cumem import torch_memory_saver

    yield torch_memory_saver
    torch_memory_saver.retain_cpu_backup = False
    torch_memory_saver.prepare_ahead = None
    torch_memory_saver.resume()
    release_torch_cache()


def test_pause_also_frees_torch_cache_made_outside_regions(tms):
    """A pause gives back PyTorch's cached blocks of tensors made outside
    every region (here a float copy, as a checksum makes), as
    CuMemAllocator.sleep and cumem.sleep do: the 1.96 GiB the benchmark
    found left behind by torch_memory_saver's pause."""
    import torch

    with tms.region(tag="pf", enable_cpu_backup=True):
        w = torch.randn(64 * MiB, dtype=torch.bfloat16, device="cuda")
    expected = w.cpu()
    tmp = w.float()  # 256 MiB outside every region, then cached by PyTorch
    del tmp
    cached = torch.cuda.memory_reserved()
    before = free_gpu_bytes()
    tms.pause()
    after = free_gpu_bytes()
    assert after - before >= 0.95 * (w.nbytes + 256 * MiB)
    assert torch.cuda.memory_reserved() <= cached - 256 * MiB
    tms.resume()
    assert torch.equal(w.cpu().view(torch.int16), expected.view(torch.int16))


def test_resume_gives_the_backup_back_after_returning(tms):
    import cumem
    import torch

    with tms.region(tag="gb", enable_cpu_backup=True):
        w = torch.randn(128 * MiB, device="cuda")
    expected = w.cpu()
    tms.pause()
    assert cumem.stats("tms+cpu:gb")["bytes_host_held"] >= w.nbytes
    tms.resume()  # returns once restored; the worker gives the backup back
    assert torch.equal(w.cpu(), expected)
    assert tms.get_cpu_backup(w) is None
    cumem.drain()
    assert cumem.stats("tms+cpu:gb")["bytes_host_held"] == 0
    tms.pause()  # a new backup, pinned anew
    tms.resume()
    assert torch.equal(w.cpu(), expected)


def test_cumem_allocator_prepares_ahead_at_pool_exit():
    import cumem
    import torch

    a = cumem.CuMemAllocator.get_instance()
    a.prepare_ahead = ("pa-weights",)
    try:
        with a.use_memory_pool(tag="pa-weights"):
            w = torch.randn(96 * MiB, device="cuda")
        with a.use_memory_pool(tag="pa-kv"):
            kv = torch.empty(64 * MiB, device="cuda")
        size = cumem.stats("pa-weights")["bytes_allocated"]
        assert wait_pinned("pa-weights", size)
        assert cumem.stats("pa-kv")["bytes_host_held"] == 0
        expected = w.cpu()
        a.sleep(offload_tags=("pa-weights",))
        a.wake_up()
        assert torch.equal(w.cpu(), expected)
        del kv
    finally:
        a.prepare_ahead = None
        a.wake_up()
        release_torch_cache()


def test_tms_prepares_regions_with_cpu_backup_only(tms):
    import cumem
    import torch

    tms.prepare_ahead = True
    with tms.region(tag="pa", enable_cpu_backup=True):
        w = torch.randn(64 * MiB, device="cuda")
    with tms.region(tag="pa"):
        kv = torch.empty(64 * MiB, device="cuda")
    assert wait_pinned("tms+cpu:pa", cumem.stats("tms+cpu:pa")["bytes_allocated"])
    assert cumem.stats("tms:pa")["bytes_host_held"] == 0
    assert cumem.default().tag_options("tms:pa")["prepare_ahead"] == 0  # never offloaded: never pinned
    expected = w.cpu()
    tms.pause()
    tms.resume()
    assert torch.equal(w.cpu(), expected)
    del kv


def test_native_pool_prepares_ahead():
    import cumem
    import torch

    with cumem.pool("npa", prepare_ahead=True):
        w = torch.randn(64 * MiB, device="cuda")
    assert wait_pinned("npa", cumem.stats("npa")["bytes_allocated"])
    expected = w.cpu()
    cumem.sleep("npa", offload_tags="npa")
    cumem.wake("npa")
    assert torch.equal(w.cpu(), expected)


def test_prepare_ahead_while_a_graph_is_captured():
    """The worker page-locks while this thread captures CUDA graphs in the
    default (global) capture mode: neither the captures nor the pinning
    fail, and the replays compute what they should."""
    import cumem
    import torch

    with cumem.pool("cap-w"):
        big = torch.empty(1024 * MiB, dtype=torch.uint8, device="cuda")
    x = torch.ones(1 << 20, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        y = x * 2  # warm-up before capture
    torch.cuda.current_stream().wait_stream(s)
    cumem.prepare_backup("cap-w", wait=False)
    graphs = []
    for _ in range(40):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = x * 2
            for _ in range(200):
                y = y + 1
        graphs.append((g, y))
    for g, y in graphs:
        g.replay()
    torch.cuda.synchronize()
    for _, y in graphs:
        assert y[0].item() == 202.0
    cumem.drain()
    assert cumem.stats("cap-w")["bytes_host_pinned"] == cumem.stats("cap-w")["bytes_allocated"]
    del big, graphs
    release_torch_cache()
