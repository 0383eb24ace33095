"""cumem: sleepable GPU memory on the CUDA VMM driver API.

An allocation keeps its virtual address for life; sleep releases its physical
memory (backing the content up to host memory, or discarding it) and wake
maps new memory at the same address, so tensors, raw pointers and captured
CUDA graphs stay valid.

Three ways in, one C core underneath:

  cumem.CuMemAllocator      vLLM's vllm.device_allocator.cumem.CuMemAllocator
  cumem.torch_memory_saver  torch_memory_saver's object (torch and preload
                            hook modes; cumem.configure_subprocess)
  cumem.pool / sleep / wake / stats   the native API (below)

and cumem.cumem_allocator, the extension interface of vLLM's
vllm.cumem_allocator (see install_vllm_shim).

Native API. Tags name groups of allocations; a tag list is None (all tags),
a str, or an iterable of str; naming a tag never used raises CumemError.

    with cumem.pool("weights"):          # tensors made here live in cumem
        w = torch.randn(4096, 4096, device="cuda")
    cumem.sleep(offload_tags="weights")  # every tag sleeps; weights backed up
    cumem.wake()                         # same addresses, weights restored

Errors are cumem.CumemError, a RuntimeError carrying .code (a negative
CUMEM_E* value); out of device memory is CumemOutOfMemoryError, a subclass.
Options come from CUMEM_* environment variables read when the process-wide
instance opens (first use): CUMEM_RETAIN_BACKUP, CUMEM_CHUNK_SIZE_MB,
CUMEM_ZERO_ON_WAKE, CUMEM_COPY_CHUNK_MB, CUMEM_HOST_THREADS,
CUMEM_RELEASE_THREADS, CUMEM_BACKEND, CUMEM_PREPARE_AHEAD,
CUMEM_PREPARE_AHEAD_DELAY_MS, CUMEM_NUMA, CUMEM_DISK_DIR, CUMEM_VERBOSE
(which also prints where each adapter call spent its time); a private
Instance(backend, **options) takes them as keywords (copy_chunk=64 << 20 or
"64M"). A value that is not allowed raises CumemError (EINVAL) naming it.

Disk backups. A tag can keep its offloaded content in files instead of host
memory: default().set_tag_options(tag, backup="disk") and a directory
(CUMEM_DISK_DIR, or cumem.set_disk_dir(path)); stats()["bytes_on_disk"]
says how much is there while asleep.
"""

import contextlib
import sys

from . import _C
from ._C import (  # noqa: F401  (re-exported)
    CumemError,
    CumemOutOfMemoryError,
    Instance,
    current_tag,
    last_error,
    set_current_tag,
    strerror,
)

__version__ = _C.VERSION

__all__ = [
    # the adapters
    "CuMemAllocator", "TorchMemorySaver", "torch_memory_saver", "install_vllm_shim",
    "configure_subprocess", "preload_library",
    # the native API
    "pool", "sleep", "wake", "stats", "stats_by_tag", "tags", "prepare_backup",
    "release_backup", "drain", "set_disk_dir", "empty_cache", "using_tag", "set_current_tag", "current_tag",
    "alloc", "free", "query", "copy_to_device", "copy_to_host", "memset",
    "default", "backend", "Instance", "CumemError", "CumemOutOfMemoryError",
    "last_error", "strerror",
]


def default():
    """The process-wide Instance: the one PyTorch allocations go to."""
    return _C.default()


def backend():
    """ "cuda" or "host" (the host backend stands in where no GPU answers)."""
    return _C.default().backend


# ---- allocation and data (raw addresses; mostly for tests and tools) -------


def alloc(size, device=0, tag=None):
    """Allocate `size` bytes on `device` under `tag` (None: this thread's
    current tag); returns the address as an int."""
    return _C.default().alloc(size, device, tag)


def free(ptr, stream=None):
    """Free in any state; waits for the device, or only for `stream` (an int
    CUstream, e.g. torch.cuda.current_stream().cuda_stream) when given."""
    _C.default().free(ptr, stream)


def query(ptr):
    """Describe the allocation containing ptr: ptr, size, requested, device,
    asleep, backed_up, tag, on_disk."""
    return _C.default().query(ptr)


def copy_to_device(dst, data):
    """Copy a bytes-like object to the cumem address `dst` (synchronous)."""
    _C.default().copy_to_device(dst, data)


def copy_to_host(src, n):
    """Copy `n` bytes from the cumem address `src`; returns bytes."""
    return _C.default().copy_to_host(src, n)


def memset(dst, value, n):
    """Set `n` bytes at the cumem address `dst` to `value` (synchronous)."""
    _C.default().memset(dst, value, n)


@contextlib.contextmanager
def using_tag(tag):
    """Tag this thread's new allocations with `tag` inside the block."""
    from ._torch import current_tag as _scope

    with _scope(tag):
        yield


# ---- PyTorch ---------------------------------------------------------------


@contextlib.contextmanager
def pool(tag="default", prepare_ahead=None):
    """Tensors created in this thread inside the block live in cumem under
    `tag`. Each block gets a fresh torch MemPool that is dropped at exit, so
    blocks left unused go back to the GPU then (empty_cache cannot empty a
    pluggable pool); tensors still alive keep their memory.

    prepare_ahead=True pins the tag's host backup in the background when
    the block exits, so the first sleep only copies (None: as
    CUMEM_PREPARE_AHEAD says, "all" or comma-separated tags; the core then
    also pins tags it names once they stop growing)."""
    from . import _torch

    with _torch.fresh_pool(tag):
        yield
    _torch.prepare_ahead_at_exit(prepare_ahead, tag)


def empty_cache():
    """Free the GPU memory PyTorch holds but no tensor uses: the unused
    segments of finished pool() blocks (PyTorch's empty_cache cannot free
    those), then PyTorch's own cache."""
    from . import _torch

    _torch.empty_cache()


# ---- sleep and wake --------------------------------------------------------


def sleep(tags=None, offload_tags=None):
    """Release the physical memory of every allocation of `tags` (None: all),
    after copying those of `offload_tags` (None: none) to host memory. Waits
    for the device first. On failure what is asleep stays asleep with its
    backup, and a retry completes the sleep.

    Blocks PyTorch freed into finished pool() blocks are released first
    (they need no backup), and PyTorch's own cache is emptied after."""
    from . import _torch

    with _torch.around_sleep("cumem.sleep") as steps:
        _C.default().sleep(tags, offload_tags)
        steps.step("core")


def wake(tags=None, retain_backup=None):
    """Map memory again for the sleeping allocations of `tags` (None: all) and
    restore their backed-up content. On failure (e.g. CumemOutOfMemoryError)
    nothing is lost: every backup is kept and a later wake restores it.

    retain_backup=False gives the host backups back after the wake (the
    CUMEM_RETAIN_BACKUP option, default on, keeps them pinned so the next
    sleep only copies); None follows the option. Either way they go back in
    the background, after wake returns (drain() waits for it)."""
    inst = _C.default()
    inst.wake(tags)
    if retain_backup is False:
        inst.release_backup_async(tags)


def prepare_backup(tags=None, wait=True):
    """Pin host backup memory for these tags, so the first sleep only
    copies (pinning fresh memory is the slow part of a cold sleep): now, or
    with wait=False in the background, returning at once."""
    if wait:
        _C.default().prepare_backup(tags)
    else:
        _C.default().prepare_backup_async(tags)


def drain():
    """Finish the background work (giving backups back, preparing them
    ahead) now, on this thread; raise its first failure not yet reported."""
    _C.default().drain()


def release_backup(tags=None):
    """Give back the retained host backups of awake allocations."""
    _C.default().release_backup(tags)


def set_disk_dir(path):
    """Where tags with backup="disk" sleep from now on (a directory that
    exists and takes new files; None = nowhere). The default comes from
    CUMEM_DISK_DIR."""
    _C.default().set_disk_dir(path)


def stats(tag=None):
    """Figures for one tag, or all tags together: allocations,
    bytes_allocated, bytes_mapped, bytes_asleep, bytes_backed_up (host or
    disk), bytes_host_held, bytes_host_pinned, bytes_on_disk."""
    return _C.default().stats(tag)


def stats_by_tag():
    """{tag: stats(tag)} for every tag used so far."""
    inst = _C.default()
    return {t: inst.stats(t) for t in inst.tags()}


def tags():
    """Every tag used so far."""
    return _C.default().tags()


# ---- preload mode ----------------------------------------------------------


def preload_library():
    """The path of libcumem_preload.so, the LD_PRELOAD interposer that makes
    cudaMalloc inside regions sleepable (torch_memory_saver's preload hook
    mode, `cumem run`): $CUMEM_PRELOAD_LIBRARY, the one loaded in this
    process, the one next to this package, or one in a CMake build tree.
    FileNotFoundError, naming the places tried, when there is none."""
    from . import _preload

    return _preload.library_path()


def configure_subprocess():
    """Context manager: child processes started inside the block get the
    interposer in LD_PRELOAD (torch_memory_saver's configure_subprocess).
    Add CUMEM_PRELOAD=1 or TMS_INIT_ENABLE=1 to their environment to make all
    of their memory sleepable from their start."""
    from . import _preload

    return _preload.configure_subprocess()


# ---- the adapters ----------------------------------------------------------

from ._tms import TorchMemorySaver, torch_memory_saver  # noqa: E402,F401
from ._vllm import CuMemAllocator  # noqa: E402,F401


def install_vllm_shim():
    """Make `import vllm.cumem_allocator` load cumem's seed extension, so
    vLLM's unmodified vllm/device_allocator/cumem.py (its CuMemAllocator)
    runs on cumem. Call before vLLM imports vllm.device_allocator.cumem."""
    from . import cumem_allocator

    if "vllm.device_allocator.cumem" in sys.modules:
        raise RuntimeError("install_vllm_shim() must run before vllm.device_allocator.cumem is imported")
    sys.modules["vllm.cumem_allocator"] = cumem_allocator
    return cumem_allocator
