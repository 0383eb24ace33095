"""cumem.CuMemAllocator (vLLM's API) on a GPU with PyTorch."""

import pytest
from conftest import GiB, capture, free_gpu_bytes, release_torch_cache, requires_cuda, take_gpu_memory_leaving

pytestmark = requires_cuda

MiB = 1 << 20


@pytest.fixture
def allocator():
    import cumem

    a = cumem.CuMemAllocator.get_instance()
    yield a
    a.wake_up()  # leave nothing asleep for the next test
    release_torch_cache()


def test_singleton():
    import cumem

    assert cumem.CuMemAllocator.get_instance() is cumem.CuMemAllocator.get_instance()


def test_sleep_offloads_weights_discards_cache_and_frees_memory(allocator):
    import torch

    with allocator.use_memory_pool(tag="weights"):
        w = torch.randn(64 * MiB, device="cuda")  # 256 MiB
    with allocator.use_memory_pool(tag="kv_cache"):
        kv = torch.full((128 * MiB,), 3.0, device="cuda")  # 512 MiB
    assert allocator.current_tag == "default"
    expected = w.cpu()
    pw, pkv = w.data_ptr(), kv.data_ptr()
    assert allocator.get_current_usage() >= w.nbytes + kv.nbytes

    before = free_gpu_bytes()
    allocator.sleep(offload_tags=("weights",))
    during = free_gpu_bytes()
    assert during - before >= 0.95 * (w.nbytes + kv.nbytes)
    assert allocator.get_current_usage() >= w.nbytes + kv.nbytes  # reserved, not lost

    allocator.wake_up()
    assert free_gpu_bytes() <= during - (w.nbytes + kv.nbytes) * 0.95
    assert w.data_ptr() == pw and kv.data_ptr() == pkv
    assert torch.equal(w.cpu(), expected)
    kv.fill_(5.0)  # discarded content, usable memory
    assert kv.sum().item() == 5.0 * kv.numel()


def test_string_offload_tag_and_default_tag(allocator):
    import torch

    with allocator.use_memory_pool():  # "default": offloaded by default
        d = torch.arange(1 << 20, device="cuda")
    expected = d.cpu()
    allocator.sleep()
    allocator.wake_up()
    assert torch.equal(d.cpu(), expected)
    with allocator.use_memory_pool("str_tag"):
        s = torch.arange(1 << 20, device="cuda")
    allocator.sleep(offload_tags="str_tag")
    allocator.wake_up()
    assert torch.equal(s.cpu(), expected)


def test_cuda_graph_replays_after_wake(allocator):
    import torch

    with allocator.use_memory_pool(tag="weights"):
        w = torch.randn(1024, 1024, device="cuda")
        x = torch.randn(1024, 1024, device="cuda")
    g, y = capture(lambda: x @ w)
    g.replay()
    ref = y.clone()
    allocator.sleep(offload_tags=("weights",))
    allocator.wake_up()
    y.zero_()
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, ref)


def test_tags_wake_independently(allocator):
    import cumem
    import torch

    with allocator.use_memory_pool(tag="a"):
        a = torch.full((1 << 20,), 1.0, device="cuda")
    with allocator.use_memory_pool(tag="b"):
        b = torch.full((1 << 20,), 2.0, device="cuda")
    allocator.sleep(offload_tags=("a", "b"))
    allocator.wake_up(tags=["a"])
    assert cumem.stats("a")["bytes_asleep"] == 0 and cumem.stats("b")["bytes_asleep"] > 0
    assert a.sum().item() == a.numel()
    allocator.wake_up(tags=["b"])
    assert b.sum().item() == 2 * b.numel()


def test_free_while_asleep(allocator):
    import cumem
    import torch

    with allocator.use_memory_pool(tag="scratch"):
        t = torch.ones(64 * MiB, device="cuda")
    live = cumem.stats("scratch")["allocations"]
    allocator.sleep(offload_tags=())
    del t
    cumem.empty_cache()  # PyTorch gives the block back: cumem frees it asleep
    assert cumem.stats("scratch")["allocations"] == live - 1
    allocator.wake_up()


def test_unused_blocks_are_released_at_pool_exit(allocator):
    import cumem
    import torch

    with allocator.use_memory_pool(tag="transient"):
        keep = torch.ones(4 * MiB, device="cuda")
        tmp = torch.ones(64 * MiB, device="cuda")
        del tmp  # cached in the pool, not in use
    s = cumem.stats("transient")
    assert s["bytes_allocated"] < 64 * MiB * 4  # the 256 MiB block is gone
    del keep
    cumem.empty_cache()  # the pool is retired: its last segment goes too
    assert cumem.stats("transient")["allocations"] == 0


def test_nested_pools_keep_their_tags(allocator):
    import cumem
    import torch

    with allocator.use_memory_pool("outer"):
        o = torch.ones(1 << 20, device="cuda")
        with allocator.use_memory_pool("inner"):
            i = torch.ones(1 << 20, device="cuda")
        o2 = torch.ones(1 << 20, device="cuda")
    assert allocator.current_tag == "default"
    assert [cumem.query(t.data_ptr())["tag"] for t in (o, i, o2)] == ["outer", "inner", "outer"]
    allocator.sleep(offload_tags=("outer", "inner"))
    allocator.wake_up()
    assert o.sum().item() + i.sum().item() + o2.sum().item() == 3 * (1 << 20)


def test_out_of_memory_wake_raises_and_loses_nothing(allocator):
    import cumem
    import torch

    with allocator.use_memory_pool(tag="weights"):
        w = torch.randint(0, 255, (GiB,), dtype=torch.uint8, device="cuda")
    expected = w.cpu()
    allocator.sleep(offload_tags=("weights",))
    hog = take_gpu_memory_leaving(w.nbytes // 2)  # taken outside the pool
    with pytest.raises(RuntimeError) as e:
        allocator.wake_up()
    assert isinstance(e.value, cumem.CumemOutOfMemoryError), e.value
    s = cumem.stats("weights")
    assert s["bytes_asleep"] == s["bytes_allocated"] == s["bytes_backed_up"]
    del hog
    release_torch_cache()
    allocator.wake_up()
    assert torch.equal(w.cpu(), expected)


def test_expandable_segments_are_turned_off_inside_and_restored():
    """With PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (read by PyTorch
    at start, hence a fresh process) the pool still works, and PyTorch's own
    allocations outside it use expandable segments again."""
    import os
    import subprocess
    import sys

    script = """
import torch, cumem
a = cumem.CuMemAllocator.get_instance()
with a.use_memory_pool("weights"):
    w = torch.arange(1 << 20, device="cuda")
assert cumem.query(w.data_ptr())["tag"] == "weights"
outside = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
segments = [s for s in torch.cuda.memory_snapshot() if s["address"] <= outside.data_ptr() < s["address"] + s["total_size"]]
assert segments and segments[0]["is_expandable"], segments
a.sleep(offload_tags="weights")
a.wake_up()
assert torch.equal(w, torch.arange(1 << 20, device="cuda"))
print("ok")
"""
    env = dict(os.environ, PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
