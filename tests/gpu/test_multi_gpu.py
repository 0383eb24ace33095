"""Two GPUs, two processes, NCCL: collectives over tensors that live in cumem
pools give the right results before and after sleep/wake cycles.

One process per GPU (torch.multiprocessing.spawn); each puts a "weights"
tensor (offloaded at sleep) and a "kv_cache" tensor (discarded at sleep) in
cumem pools through cumem.CuMemAllocator, all-reduces and broadcasts them,
sleeps, wakes and does it again. The weights must come back bit-exact, and
the collectives must work on the woken memory (same addresses, new physical
memory): NCCL may not keep anything that points at the old memory.

Skipped without PyTorch or with fewer than two GPUs. NVLink SHARP
(multicast) stays off: NCCL_NVLS_ENABLE=0.

    PYTHONPATH=build/pylib python3 -m pytest -q -rs tests/gpu/test_multi_gpu.py
"""

import os
import socket

import pytest

# Before NCCL is loaded anywhere (the spawned processes inherit it).
os.environ["NCCL_NVLS_ENABLE"] = "0"
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")

try:
    import torch

    GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
except ImportError:  # pragma: no cover
    torch = None
    GPUS = 0

pytestmark = pytest.mark.skipif(GPUS < 2, reason=f"needs PyTorch and two GPUs (found {GPUS})")

WORLD = 2
N = 64 << 20  # elements per tensor: 256 MiB of float32
CYCLES = 3


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, results):
    import torch.distributed as dist

    import cumem

    torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank)
    kw = dict(init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        dist.init_process_group("nccl", device_id=dev, **kw)  # eager NCCL init (torch >= 2.3)
    except TypeError:
        dist.init_process_group("nccl", **kw)
    allocator = cumem.CuMemAllocator.get_instance()
    with allocator.use_memory_pool(tag="weights"):
        # small integers: every sum below is exact in float32
        w = (torch.arange(N, device=dev) % 1000).float() * (rank + 1)
        # What every rank's w should be after an all-reduce: sum over ranks.
        summed = torch.empty_like(w)
    with allocator.use_memory_pool(tag="kv_cache"):
        kv = torch.full((N,), float(rank + 1), device=dev)
    expected_w = w.cpu()
    total = sum(r + 1 for r in range(WORLD))
    log = []

    def check_collectives(label):
        # all-reduce of a copy of the weights: every element times `total`
        summed.copy_(w)
        dist.all_reduce(summed)
        torch.cuda.synchronize()
        ref = (torch.arange(N, device=dev) % 1000).float() * total
        assert torch.equal(summed, ref), f"rank {rank} {label}: all_reduce over cumem memory is wrong"
        # all-reduce of the (refilled) cache, and a broadcast into it
        kv.fill_(float(rank + 1))
        dist.all_reduce(kv)
        torch.cuda.synchronize()
        assert torch.all(kv == float(total)).item(), f"rank {rank} {label}: all_reduce of the cache is wrong"
        if rank == 0:
            kv.fill_(42.0)
        dist.broadcast(kv, src=0)
        torch.cuda.synchronize()
        assert torch.all(kv == 42.0).item(), f"rank {rank} {label}: broadcast into cumem memory is wrong"
        log.append(label)

    check_collectives("before sleep")
    ptrs = (w.data_ptr(), summed.data_ptr(), kv.data_ptr())
    counters_awake = None
    for cycle in range(CYCLES):
        dist.barrier()
        free_before = torch.cuda.mem_get_info(dev)[0]
        allocator.sleep(offload_tags=("weights",))
        free_asleep = torch.cuda.mem_get_info(dev)[0]
        # w, summed (weights) and kv (cache): 3 x 256 MiB given back at least
        assert free_asleep - free_before >= 0.9 * 3 * N * 4, (
            f"rank {rank} cycle {cycle}: sleep freed only {(free_asleep - free_before) >> 20} MiB")
        # The other rank may still be awake and running collectives of its
        # own: sleeping one rank must not disturb the process group.
        dist.barrier()
        allocator.wake_up()
        assert (w.data_ptr(), summed.data_ptr(), kv.data_ptr()) == ptrs
        assert torch.equal(w.cpu(), expected_w), f"rank {rank} cycle {cycle}: weights not restored bit-exact"
        # Live driver objects after wake: the same every cycle (from the
        # first wake on: its sleep may release blocks PyTorch had cached).
        counters = cumem.default().backend_counters()
        if counters_awake is None:
            counters_awake = counters
        assert counters == counters_awake, f"rank {rank} cycle {cycle}: {counters} != {counters_awake}"
        check_collectives(f"after wake {cycle}")

    # One rank asleep while the other works alone, then together again.
    dist.barrier()
    if rank == 1:
        allocator.sleep(offload_tags=("weights",))
    else:
        w.add_(0)  # rank 0 keeps using its memory
        torch.cuda.synchronize()
    dist.barrier()
    if rank == 1:
        allocator.wake_up()
    check_collectives("after a one-sided sleep")
    assert torch.equal(w.cpu(), expected_w)

    dist.barrier()
    dist.destroy_process_group()
    results[rank] = log


def test_nccl_collectives_over_cumem_pools_survive_sleep_wake():
    import torch.multiprocessing as mp

    manager = mp.get_context("spawn").Manager()
    results = manager.dict()
    # A failed assertion in a worker raises here (ProcessRaisedException).
    try:
        mp.spawn(_worker, args=(_free_port(), results), nprocs=WORLD, join=True)
        got = dict(results)
    finally:
        manager.shutdown()
    assert sorted(got) == list(range(WORLD))
    for rank in range(WORLD):
        assert got[rank][-1] == "after a one-sided sleep"
        assert len(got[rank]) == CYCLES + 2
