"""Child process for tests/gpu/test_preload_gpu.py: which CUDA calls a real
PyTorch + NCCL + cuBLAS job makes, and which of its memory the interposer
sees. Run with the interposer in LD_PRELOAD and its environment switch on
(TMS_INIT_ENABLE=1, TMS_INIT_ENABLE_CPU_BACKUP=1: everything PyTorch
allocates is pausable and backed up), CUMEM_PRELOAD_TRACE=1 (the per-call
summary on stderr at exit).

    python torch_nccl_cublas.py WORLD    (1: this process; 2: two ranks, spawned)

Per rank it measures, around each phase (NCCL init + first all_reduce, the
first cuBLAS matmul, a second one), how many calls the interposer saw and
where they went, how many bytes went to cumem, and how far the GPU's free
memory dropped: the difference is memory taken behind the interposer's back
(NCCL's and cuBLAS's own allocations through their static runtime or
cuMem* entry points). Then everything pausable sleeps and wakes, and the
all_reduce and the matmul must give the same results on the woken memory.
Prints "RESULT <json>" (one line per rank)."""

import json
import os
import socket
import sys

import torch
import torch.distributed as dist

MiB = 1 << 20
FNS = ("cudaMalloc", "cudaFree", "cudaMallocAsync", "cudaFreeAsync", "cuMemAlloc_v2", "cudaMallocManaged",
       "cudaGetDriverEntryPointByVersion", "cudaGetDriverEntryPoint")


def snapshot():
    from cumem import _preload

    torch.cuda.synchronize()
    return {"free": torch.cuda.mem_get_info()[0], **{fn: _preload.counts(fn) for fn in FNS}}


def delta(a, b):
    d = {"gpu_free_drop": a["free"] - b["free"]}
    for fn in FNS:
        c = {k: b[fn][k] - a[fn][k] for k in ("calls", "to_cumem", "forwarded", "cumem_bytes", "forwarded_bytes")}
        if c["calls"]:
            d[fn] = c
    seen = sum(b[fn]["cumem_bytes"] - a[fn]["cumem_bytes"] + b[fn]["forwarded_bytes"] - a[fn]["forwarded_bytes"]
               for fn in ("cudaMalloc", "cudaMallocAsync", "cuMemAlloc_v2"))
    d["bytes_seen"] = seen
    d["bytes_not_seen"] = d["gpu_free_drop"] - seen
    return d


def rank_main(rank, world, port):
    import cumem
    from cumem import _preload
    from cumem import torch_memory_saver as tms

    torch.cuda.set_device(rank)
    res = {"rank": rank, "pid": os.getpid(), "default_region": _preload.default(), "hook_mode": tms.hook_mode}
    torch.zeros(1, device="cuda")  # the context, outside the measurements
    s0 = snapshot()
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            device_id=torch.device("cuda", rank))
    t = torch.full((64 * MiB // 4,), float(rank + 1), device="cuda")
    dist.all_reduce(t)
    s1 = snapshot()
    res["nccl_init_and_all_reduce"] = delta(s0, s1)
    want = sum(range(1, world + 1))
    res["all_reduce_ok"] = bool((t == want).all().item())
    res["nccl_tensor_tag"] = cumem.query(t.data_ptr())["tag"]

    torch.cuda.empty_cache()  # so the workspace needs a fresh segment
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    b = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    s2 = snapshot()
    c = a @ b
    s3 = snapshot()
    c2 = a @ b
    s4 = snapshot()
    res["first_matmul"] = delta(s2, s3)
    res["second_matmul"] = delta(s3, s4)
    ref = c.float().cpu()

    st = cumem.stats()
    res["cumem_before_pause"] = st
    before = torch.cuda.mem_get_info()[0]
    tms.pause()
    torch.cuda.synchronize()
    res["freed_by_pause"] = torch.cuda.mem_get_info()[0] - before
    tms.resume()
    t.fill_(float(rank + 1))
    dist.all_reduce(t)
    res["all_reduce_after_resume_ok"] = bool((t == want).all().item())
    res["matmul_after_resume_ok"] = torch.equal((a @ b).float().cpu(), ref) and torch.equal(c2.float().cpu(), ref)
    res["entry_points"] = {s: _preload.entry_point_requests(s) for s in
                           ("cuMemCreate", "cuMemMap", "cuMemAddressReserve", "cuMemSetAccess", "cuMemRelease",
                            "cuMemUnmap", "cuGetProcAddress")}
    dist.destroy_process_group()
    print("RESULT " + json.dumps(res), flush=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    world = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    port = _free_port()
    if world == 1:
        rank_main(0, 1, port)
    else:
        import torch.multiprocessing as mp

        mp.spawn(rank_main, args=(world, port), nprocs=world, join=True)
