"""One cumem core per process. cumem._C, cumem.cumem_allocator (and the
LD_PRELOAD interposer) link libcumem.so.0, the only copy of the core: the
native API, PyTorch's entry points and the seed ABI allocate in one instance
and cumem.stats() counts them all, while each API still sleeps only what it
allocated unless asked for more. (The same through PyTorch on a GPU:
test_gpu_one_core.py.)"""

import ctypes
import os
import subprocess
import sys

MiB = 1 << 20


def mapped_files():
    """The files mapped into this process (/proc/self/maps), real paths."""
    paths = set()
    with open("/proc/self/maps") as f:
        for line in f:
            if "/" in line:
                paths.add(os.path.realpath(line[line.index("/") :].strip()))
    return paths


def symbol_address(library, name):
    return ctypes.cast(getattr(ctypes.CDLL(library), name), ctypes.c_void_p).value


def test_both_extensions_resolve_the_same_libcumem():
    from cumem import _C, cumem_allocator

    core = os.path.realpath(_C.LIBRARY)
    assert os.path.basename(core) == "libcumem.so.0"
    # Installed beside the extensions, which find it through $ORIGIN.
    assert os.path.dirname(core) == os.path.dirname(os.path.realpath(_C.__file__))
    assert os.path.dirname(core) == os.path.dirname(os.path.realpath(cumem_allocator.__file__))
    # The process maps one libcumem, that one.
    assert {p for p in mapped_files() if os.path.basename(p).startswith("libcumem.so")} == {core}
    # Each extension's view of the core's symbols (dlsym searches the object
    # first, then what it links) is the library's: neither holds a copy.
    for name in ("cumem_version", "cumem_default", "cumem_alloc", "cumem_torch_malloc"):
        at = symbol_address(core, name)
        assert symbol_address(_C.__file__, name) == at, name
        assert symbol_address(cumem_allocator.__file__, name) == at, name


def test_core_internals_stay_hidden():
    """libcumem.so.0 exports the API, not the core's cumem__ internals."""
    from cumem import _C

    lib = ctypes.CDLL(_C.LIBRARY)
    assert lib.cumem_alloc
    for internal in ("cumem__enter", "cumem__table_find"):
        assert not hasattr(lib, internal), internal


def run_probe(*args, **env):
    """Run probe() in a fresh process on the host backend, so the figures are
    only what it allocates there."""
    env = dict(os.environ, CUMEM_BACKEND="host", **env)
    r = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "one core: every API in one instance" in r.stdout


def test_every_api_in_one_process_reads_one_set_of_figures():
    run_probe()


def interposer_in_package():
    from cumem import _C

    return os.path.join(os.path.dirname(os.path.realpath(_C.__file__)), "libcumem_preload.so")


def test_the_interposer_joins_the_same_core():
    """The same with cumem/libcumem_preload.so in LD_PRELOAD: it loads
    libcumem.so.0 first (through its own $ORIGIN rpath), the extensions reuse
    it, and cudaMalloc in a region lands in the same instance. Its CUDA
    runtime is CTest's stand-in (CUMEM_TEST_CUDART)."""
    import pytest

    interposer, cudart = interposer_in_package(), os.environ.get("CUMEM_TEST_CUDART", "")
    if not os.path.isfile(interposer):
        pytest.skip(f"the package has no interposer ({interposer})")
    if not os.path.isfile(cudart):
        pytest.skip("needs CUMEM_TEST_CUDART, the stand-in CUDA runtime CTest builds")
    run_probe("--preload", LD_PRELOAD=interposer)


# ---- the probe, run in its own process ----------------------------------------


def probe(preload):
    import cumem
    from cumem import _C
    from cumem import cumem_allocator as seed

    assert cumem.backend() == "host"
    blocks = {}  # tag -> (address, how this API frees it)

    # 1. The native API.
    native = cumem.alloc(3 * MiB, tag="native")
    cumem.copy_to_device(native, b"N" * (3 * MiB))
    blocks["native"] = (native, lambda: cumem.free(native))

    # 2. PyTorch's entry points (what pool(), CuMemAllocator and
    #    torch_memory_saver allocate through), from the library PyTorch loads.
    lib = ctypes.CDLL(_C.LIBRARY)
    lib.cumem_torch_malloc.restype = ctypes.c_void_p
    lib.cumem_torch_malloc.argtypes = [ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
    lib.cumem_torch_free.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
    with cumem.using_tag("torch"):
        torch_block = lib.cumem_torch_malloc(5 * MiB, 0, None)
    assert torch_block
    blocks["torch"] = (torch_block, lambda: lib.cumem_torch_free(torch_block, 5 * MiB, 0, None))

    # 3. The seed ABI (vLLM's extension), as PyTorch and vLLM drive it.
    handles = {}
    seed.init_module(lambda h: handles.__setitem__(h[2], h), lambda p: handles.pop(p))
    abi = ctypes.CDLL(seed.__file__)
    abi.my_malloc.restype = ctypes.c_void_p
    abi.my_malloc.argtypes = [ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
    abi.my_free.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
    seed_block = abi.my_malloc(7 * MiB, 0, None)
    assert seed_block and seed_block in handles
    blocks["seed:default"] = (seed_block, lambda: abi.my_free(seed_block, 7 * MiB, 0, None))

    # 4. The LD_PRELOAD interposer: cudaMalloc in a region
    #    (include/cumem_preload.h), reached through the global scope as a
    #    program linked with the CUDA runtime reaches it.
    if preload:
        ctypes.CDLL(os.environ["CUMEM_TEST_CUDART"])  # the stand-in runtime

        class Region(ctypes.Structure):
            _fields_ = [("enabled", ctypes.c_int), ("tag", ctypes.c_char * (_C.TAG_MAX + 1))]

        glob = ctypes.CDLL(None)
        glob.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
        glob.cudaFree.argtypes = [ctypes.c_void_p]
        saved, out = Region(), ctypes.c_void_p()
        assert glob.cumem_preload_begin(b"preload", ctypes.byref(saved)) == 0
        rc = glob.cudaMalloc(ctypes.byref(out), 9 * MiB)
        glob.cumem_preload_end(ctypes.byref(saved))
        assert rc == 0 and out.value, (rc, cumem.last_error())
        preload_block = out.value
        blocks["preload"] = (preload_block, lambda: glob.cudaFree(preload_block))
        cores = {p for p in mapped_files() if os.path.basename(p).startswith("libcumem.so")}
        assert cores == {os.path.realpath(_C.LIBRARY)}, cores

    def size(tag):
        return cumem.query(blocks[tag][0])["size"]

    # One set of figures: the default instance holds them all.
    total = cumem.stats()
    assert total["allocations"] == len(blocks), total
    assert total["bytes_allocated"] == sum(size(tag) for tag in blocks)
    by_tag = cumem.stats_by_tag()
    for tag in blocks:
        assert by_tag[tag]["allocations"] == 1 and by_tag[tag]["bytes_allocated"] == size(tag), (tag, by_tag)
    assert seed._live_allocations() == 1  # the seed module counts its own only

    def asleep():
        return {tag for tag in blocks if cumem.stats(tag)["bytes_asleep"]}

    # Each API sleeps only what it allocated.
    seed.python_unmap_and_release(*handles[seed_block])  # vLLM's sleep
    assert asleep() == {"seed:default"}
    assert cumem.stats("seed:default")["bytes_asleep"] == size("seed:default")
    cumem.sleep("native", offload_tags="native")  # the native API, one tag
    assert asleep() == {"seed:default", "native"}
    cumem.wake("native")
    seed.python_create_and_map(*handles[seed_block])
    assert asleep() == set()
    assert cumem.copy_to_host(native, 3 * MiB) == b"N" * (3 * MiB)

    # Unless asked for more: every tag.
    cumem.sleep(None, offload_tags=None)
    assert asleep() == set(blocks)
    assert cumem.stats()["bytes_asleep"] == total["bytes_allocated"]
    cumem.wake()
    assert cumem.stats()["bytes_asleep"] == 0

    # Freed through each API, the one instance is empty.
    for _, free in blocks.values():
        free()
    assert not handles and cumem.stats()["allocations"] == 0
    print("one core: every API in one instance")


if __name__ == "__main__":
    probe(preload="--preload" in sys.argv[1:])
