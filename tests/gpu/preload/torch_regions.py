"""Child process for tests/gpu/test_preload_gpu.py, run with the interposer in
LD_PRELOAD: torch_memory_saver's preload hook mode with PyTorch on a GPU.

Regions (nested, backup chosen per region) pause and resume bit-exact, the
GPU's free memory grows by what was paused, a region's tag can sleep alone,
memory made outside a region is not cumem's, and a CUDA graph captured with
cuda_graph(...) has its memory in cumem, pauses and replays. Prints one line
"RESULT <json>" with what it measured; the test asserts on it."""

import json

import torch

import cumem
from cumem import _preload
from cumem import torch_memory_saver as tms

MiB = 1 << 20
res = {}


def free_bytes():
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0]


def tag_of(t):
    try:
        return cumem.query(t.data_ptr())["tag"]
    except cumem.CumemError:
        return None


tms.hook_mode = "preload"  # refuses unless the interposer is loaded and shares the core
res["hook_mode"] = tms.hook_mode
torch.cuda.init()

# ---- nested regions choose backup per region --------------------------------
with tms.region(tag="model", enable_cpu_backup=True):
    w = torch.randn(64 * MiB // 4, device="cuda")
    with tms.region(tag="kv", enable_cpu_backup=False):
        kv = torch.full((128 * MiB // 4,), 3.0, device="cuda")
        res["inner_region"] = _preload.current()
    w2 = torch.randn(16 * MiB // 4, device="cuda")  # the outer region again
    res["outer_region"] = _preload.current()
res["after_regions"] = _preload.current()
outside = torch.ones(8 * MiB, dtype=torch.uint8, device="cuda")
res["tags"] = {"w": tag_of(w), "kv": tag_of(kv), "w2": tag_of(w2), "outside": tag_of(outside)}

expected_w, expected_w2 = w.cpu(), w2.cpu()
ptrs = (w.data_ptr(), kv.data_ptr(), w2.data_ptr())
res["region_bytes"] = w.nbytes + kv.nbytes + w2.nbytes
before = free_bytes()
tms.pause()
res["freed_by_pause"] = free_bytes() - before
res["stats_paused"] = {t: cumem.stats(t) for t in ("tms+cpu:model", "tms:kv")}
tms.resume()
res["same_pointers"] = (w.data_ptr(), kv.data_ptr(), w2.data_ptr()) == ptrs
res["w_exact"] = torch.equal(w.cpu(), expected_w) and torch.equal(w2.cpu(), expected_w2)
kv.fill_(1.0)
res["kv_usable"] = kv.sum().item() == kv.numel()
res["outside_untouched"] = outside.sum().item() == outside.numel()

# ---- one tag alone -----------------------------------------------------------
tms.pause("kv")
res["kv_alone_asleep"] = cumem.query(kv.data_ptr())["asleep"] and not cumem.query(w.data_ptr())["asleep"]
res["model_usable_while_kv_sleeps"] = torch.equal(w.cpu(), expected_w)
tms.resume("kv")

# ---- a CUDA graph's memory ---------------------------------------------------
with tms.region(tag="weights", enable_cpu_backup=True):
    a = torch.randn(2048, 2048, device="cuda")
    x = torch.randn(2048, 2048, device="cuda")


def step():
    return torch.relu(x @ a) + 1


s = torch.cuda.Stream()
s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s):
    step()  # warm-up, as PyTorch asks before a capture
torch.cuda.current_stream().wait_stream(s)
g = torch.cuda.CUDAGraph()
with tms.cuda_graph(g, tag="graph"):
    y = step()
g.replay()
torch.cuda.synchronize()
ref = y.clone()
res["graph_tag"] = tag_of(y)
res["graph_allocations"] = cumem.stats("tms:graph")["allocations"]
before = free_bytes()
tms.pause("graph")
res["graph_freed"] = free_bytes() - before
res["graph_mapped_while_paused"] = cumem.stats("tms:graph")["bytes_mapped"]
res["graph_bytes"] = cumem.stats("tms:graph")["bytes_allocated"]
tms.resume("graph")
y.zero_()
g.replay()
torch.cuda.synchronize()
res["graph_replays"] = torch.equal(y, ref)

res["counts"] = {fn: _preload.counts(fn) for fn in ("cudaMalloc", "cudaFree", "cudaMallocAsync")}
print("RESULT " + json.dumps(res), flush=True)
