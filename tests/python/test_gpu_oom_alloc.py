"""Out of memory while allocating, through each Python API: PyTorch raises its
OutOfMemoryError (cumem's allocator returned NULL), the tensors already in
cumem keep their values, and allocating works again once the outside memory
is freed. (Out of memory during wake is tested in each API's own file.)"""

import pytest
from conftest import GiB, release_torch_cache, requires_cuda, take_gpu_memory_leaving

pytestmark = requires_cuda

MiB = 1 << 20


def _native(tag):
    import cumem

    return cumem.pool(tag)


def _vllm(tag):
    import cumem

    return cumem.CuMemAllocator.get_instance().use_memory_pool(tag)


def _tms(tag):
    from cumem import torch_memory_saver

    return torch_memory_saver.region(tag)


@pytest.mark.parametrize("pool", [_native, _vllm, _tms], ids=["native", "vllm", "tms"])
def test_out_of_memory_allocation_raises_and_loses_nothing(pool):
    import torch

    tag = "oom-alloc-" + pool.__name__.strip("_")
    with pool(tag):
        w = torch.randint(0, 255, (256 * MiB,), dtype=torch.uint8, device="cuda")
    expected = w.cpu()
    hog = take_gpu_memory_leaving(256 * MiB)
    with pytest.raises(torch.OutOfMemoryError):
        with pool(tag):
            torch.empty(GiB, dtype=torch.uint8, device="cuda")
    assert torch.equal(w.cpu(), expected)
    del hog
    release_torch_cache()
    with pool(tag):
        x = torch.ones(GiB, dtype=torch.uint8, device="cuda")
    assert int(x.sum()) == GiB
    assert torch.equal(w.cpu(), expected)
    del x, w
    release_torch_cache()
