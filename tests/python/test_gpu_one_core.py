"""One cumem core per process, on a GPU with PyTorch: tensors made through
vLLM's API (cumem.CuMemAllocator), torch_memory_saver's, the native pool and
the seed ABI (cumem.cumem_allocator under a CUDAPluggableAllocator, as vLLM
drives its own extension) all live in the one instance of libcumem.so.0, so
one cumem.stats() counts them all; and each API's sleep still releases only
its own tensors."""

import os

from conftest import release_torch_cache, requires_cuda
from test_gpu_seed import MiniVllmAllocator
from test_one_core import mapped_files

pytestmark = requires_cuda

MiB = 1 << 20
VLLM, TMS, NATIVE, SEED = "one-core-vllm", "tms+cpu:one-core-tms", "one-core-native", "seed:default"
TAGS = (VLLM, TMS, NATIVE, SEED)


def test_every_api_allocates_in_one_instance_and_sleeps_its_own():
    import torch

    import cumem
    from cumem import _C, cumem_allocator, torch_memory_saver

    assert cumem.backend() == "cuda" and cumem_allocator._backend_name() == "cuda"
    vllm = cumem.CuMemAllocator.get_instance()
    seed = MiniVllmAllocator(cumem_allocator)
    before_tags = cumem.stats_by_tag()

    n = 16 * MiB  # float32: 64 MiB per tensor
    with vllm.use_memory_pool(VLLM):
        a = torch.full((n,), 1.0, device="cuda")
    with torch_memory_saver.region(tag="one-core-tms", enable_cpu_backup=True):
        b = torch.full((n,), 2.0, device="cuda")
    with cumem.pool(NATIVE):
        c = torch.full((n,), 3.0, device="cuda")
    with seed.use_memory_pool("weights"):
        d = torch.full((n,), 4.0, device="cuda")
    tensors = {VLLM: a, TMS: b, NATIVE: c, SEED: d}
    try:
        # Every tensor is an allocation of the one default instance ...
        for tag, t in tensors.items():
            assert cumem.query(t.data_ptr())["tag"] == tag
        # ... and one set of figures counts them all.
        after = cumem.stats_by_tag()
        grown = {tag: after[tag]["bytes_allocated"] - before_tags.get(tag, {}).get("bytes_allocated", 0) for tag in TAGS}
        assert all(grown[tag] >= t.nbytes for tag, t in tensors.items()), grown
        # (Other tags may shrink meanwhile: pool exits sweep what earlier tests
        # left. So the total is compared with the sum of every tag at once.)
        total, by_tag = cumem.stats()["bytes_allocated"], cumem.stats_by_tag()
        assert total == sum(v["bytes_allocated"] for v in by_tag.values())
        assert all(by_tag[tag]["bytes_allocated"] >= t.nbytes for tag, t in tensors.items())
        assert cumem_allocator._live_allocations() >= 1
        # One libcumem in the process, the one PyTorch loads its entry points from.
        cores = {p for p in mapped_files() if os.path.basename(p).startswith("libcumem.so")}
        assert cores == {os.path.realpath(_C.LIBRARY)}

        def asleep():
            return {tag for tag in TAGS if cumem.stats(tag)["bytes_asleep"]}

        def intact():
            for value, t in enumerate(tensors.values(), 1):
                assert t.sum().item() == value * t.numel()

        assert asleep() == set()
        vllm.sleep(offload_tags=(VLLM,))
        assert asleep() == {VLLM}
        vllm.wake_up()
        torch_memory_saver.pause("one-core-tms")
        assert asleep() == {TMS}
        torch_memory_saver.resume("one-core-tms")
        cumem.sleep(NATIVE, offload_tags=NATIVE)
        assert asleep() == {NATIVE}
        cumem.wake(NATIVE)
        seed.sleep(offload_tags=("weights",))
        assert asleep() == {SEED}
        seed.wake_up()
        assert asleep() == set()
        intact()
    finally:
        vllm.wake_up()
        torch_memory_saver.resume()
        cumem.wake([t for t in TAGS if t in cumem.tags()])
        a = b = c = d = t = tensors = None  # (t: the loops' last tensor)
        seed.pools.clear()  # the seed's pools free their segments through my_free
        release_torch_cache()
    assert not seed.pointer_to_data
    assert cumem_allocator._live_allocations() == 0
