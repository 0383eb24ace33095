"""cumem.cumem_allocator driven the way vLLM's device_allocator/cumem.py
drives its own extension: CUDAPluggableAllocator(path, "my_malloc",
"my_free") in a MemPool, backups by cudaMemcpy, python_unmap_and_release on
sleep and python_create_and_map on wake."""

import contextlib
import ctypes

from conftest import free_gpu_bytes, release_torch_cache, requires_cuda

pytestmark = requires_cuda

MiB = 1 << 20


def cudart():
    import torch

    torch.cuda.init()
    path = "libcudart.so"
    with open("/proc/self/maps") as f:  # the one PyTorch loaded, as vLLM does
        for line in f:
            if "libcudart" in line and "/" in line:
                path = line[line.index("/") :].strip()
                break
    lib = ctypes.CDLL(path)
    lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return lib


class MiniVllmAllocator:
    """The parts of vLLM's CuMemAllocator that touch the extension."""

    def __init__(self, ext):
        import torch

        self.ext, self.rt = ext, cudart()
        self.pointer_to_data = {}  # ptr -> [handle, tag, cpu backup]
        self.current_tag = "default"
        self.pools = []
        ext.init_module(self._malloc, self._free)
        self.allocator = torch.cuda.memory.CUDAPluggableAllocator(ext.__file__, "my_malloc", "my_free")

    def _malloc(self, handle):
        self.pointer_to_data[handle[2]] = [handle, self.current_tag, None]

    def _free(self, ptr):
        return self.pointer_to_data.pop(ptr)[0]

    @contextlib.contextmanager
    def use_memory_pool(self, tag):
        import torch

        self.current_tag = tag
        pool = torch.cuda.MemPool(self.allocator.allocator())
        self.pools.append(pool)
        with torch.cuda.use_mem_pool(pool):
            yield

    def sleep(self, offload_tags):
        import torch

        for ptr, d in self.pointer_to_data.items():
            handle, tag, _ = d
            if tag in offload_tags:
                d[2] = torch.empty(handle[1], dtype=torch.uint8, pin_memory=True)
                assert self.rt.cudaMemcpy(d[2].data_ptr(), ptr, handle[1], 4) == 0
            self.ext.python_unmap_and_release(*handle)

    def wake_up(self):
        for ptr, d in self.pointer_to_data.items():
            self.ext.python_create_and_map(*d[0])
            if d[2] is not None:
                assert self.rt.cudaMemcpy(ptr, d[2].data_ptr(), d[0][1], 4) == 0
                d[2] = None


def test_vllm_flow_on_the_seed_extension():
    import torch

    from cumem import cumem_allocator

    assert cumem_allocator._backend_name() == "cuda"
    a = MiniVllmAllocator(cumem_allocator)
    with a.use_memory_pool("weights"):
        w = torch.randn(32 * MiB, device="cuda")
    with a.use_memory_pool("kv_cache"):
        kv = torch.ones(64 * MiB, device="cuda")
    handles = [d[0] for d in a.pointer_to_data.values()]
    assert all(len(h) == 4 and h[1] % (2 * MiB) == 0 for h in handles)
    expected, pw = w.cpu(), w.data_ptr()

    before = free_gpu_bytes()
    a.sleep(offload_tags=("weights",))
    assert free_gpu_bytes() - before >= 0.95 * (w.nbytes + kv.nbytes)
    a.wake_up()
    assert w.data_ptr() == pw and torch.equal(w.cpu(), expected)
    kv.fill_(2.0)
    assert kv.sum().item() == 2 * kv.numel()

    del w, kv
    a.pools.clear()  # the pools free their segments through my_free
    release_torch_cache()
    assert not a.pointer_to_data
    assert cumem_allocator._live_allocations() == 0
