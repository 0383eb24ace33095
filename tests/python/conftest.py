"""Shared fixtures for the Python tests.

Two kinds of tests live here:
  - host tests: no PyTorch, no GPU. They open their own Instance on the host
    backend (the same VMM semantics on host memory), so they run in CI and
    on the GPU machine alike, beside the GPU tests in one process;
  - GPU tests (test_gpu_*.py): need PyTorch with CUDA; marked `requires_cuda`
    so that without them pytest reports "skipped", never "passed".

Run with the package importable: after `pip install --no-build-isolation .`,
or with PYTHONPATH pointing at a `setup.py build --build-lib DIR` output.
"""

import importlib.util
import random

import pytest


def _torch_cuda():
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


HAS_TORCH_CUDA = _torch_cuda()

requires_cuda = pytest.mark.skipif(not HAS_TORCH_CUDA, reason="needs PyTorch with a CUDA GPU")


@pytest.fixture
def host():
    """A private instance on the host backend, closed after the test."""
    import cumem

    inst = cumem.Instance(backend="host")
    try:
        yield inst
    finally:
        inst.close()


@pytest.fixture
def faulty():
    """A host instance behind the fault-injecting backend."""
    import cumem

    inst = cumem.Instance(backend="host", fault=True)
    try:
        yield inst
    finally:
        inst.fault_arm(0)
        inst.close()


def pattern(n, seed):
    """n deterministic, seed-dependent bytes."""
    return random.Random(seed).randbytes(n)


# ---- GPU helpers ---------------------------------------------------------------

GiB = 1 << 30


def free_gpu_bytes():
    import torch

    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0]


def take_gpu_memory_leaving(nbytes):
    """A tensor outside every cumem pool that takes the GPU's free memory but
    `nbytes`: what another process (or a leak) would do while we sleep."""
    import torch

    size = (free_gpu_bytes() - nbytes) // (2 << 20) * (2 << 20)
    return torch.empty(size, dtype=torch.uint8, device="cuda")


def release_torch_cache():
    import gc

    import torch

    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def capture(fn, graph_context=None):
    """Capture fn() into a CUDA graph after the warm-up run PyTorch asks for.
    graph_context(graph) gives the capture context (torch.cuda.graph by
    default). Returns (graph, output of the captured run)."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with (graph_context or torch.cuda.graph)(g):
        out = fn()
    torch.cuda.synchronize()
    return g, out
