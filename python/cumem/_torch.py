"""PyTorch glue shared by the three APIs: the pluggable allocator and pools.

Allocations reach cumem through torch.cuda.MemPool(CUDAPluggableAllocator(
_C.LIBRARY, "cumem_torch_malloc", "cumem_torch_free")): the entry points are
in libcumem.so.0, the one copy of the core in the process. The C entry points take no
GIL; they read the tag from the calling thread's current tag, which
`allocate_in` sets around the pool region (use_mem_pool is per thread too).
"""

import contextlib
import ctypes
import functools
import os
import sys
import threading

from . import _C, _timing

_lock = threading.Lock()
_allocator = None


def pluggable_allocator():
    """The one CUDAPluggableAllocator over cumem's entry points.

    Kept alive for the whole process: a MemPool's private pool keeps only a
    raw pointer to it, and frees blocks through it long after the Python pool
    object is gone.
    """
    global _allocator
    with _lock:
        if _allocator is None:
            import torch

            _allocator = torch.cuda.memory.CUDAPluggableAllocator(
                _C.LIBRARY, "cumem_torch_malloc", "cumem_torch_free"
            )
        return _allocator


def new_pool():
    """A fresh MemPool whose segments come from cumem."""
    import torch

    with _expandable_segments_off():
        return torch.cuda.MemPool(pluggable_allocator().allocator())


@contextlib.contextmanager
def current_tag(tag):
    """Tag this thread's new cumem allocations with `tag` inside the block."""
    previous = _C.current_tag()
    _C.set_current_tag(tag)
    try:
        yield
    finally:
        _C.set_current_tag(previous)


def _set_allocator_settings(settings):
    import torch

    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)  # PyTorch >= 2.9
    if setter is None:
        setter = torch.cuda.memory._set_allocator_settings
    setter(settings)


# Blocks inside _expandable_segments_off, process-wide: the setting is
# PyTorch's, one for the process, so the first block in turns expandable
# segments off and the last one out turns them on again (nested regions,
# graphs captured in a region, other threads' regions).
_expandable_lock = threading.Lock()
_expandable_holders = 0


@contextlib.contextmanager
def _expandable_segments_off():
    # A MemPool with a custom allocator cannot use expandable segments
    # (pytorch#147851); turn them off inside and restore them after, as vLLM
    # does. PyTorch reads the setting from PYTORCH_CUDA_ALLOC_CONF (or
    # PYTORCH_ALLOC_CONF).
    global _expandable_holders
    conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "") + "," + os.environ.get("PYTORCH_ALLOC_CONF", "")
    enabled = "expandable_segments:True" in conf
    if enabled:
        with _expandable_lock:
            if _expandable_holders == 0:
                _set_allocator_settings("expandable_segments:False")
            _expandable_holders += 1
    try:
        yield
    finally:
        if enabled:
            with _expandable_lock:
                _expandable_holders -= 1
                if _expandable_holders == 0:
                    _set_allocator_settings("expandable_segments:True")


@contextlib.contextmanager
def allocate_in(pool, tag):
    """Route this thread's CUDA allocations to `pool`, tagged `tag` in cumem."""
    import torch

    with _expandable_segments_off(), current_tag(tag), torch.cuda.use_mem_pool(pool):
        yield


# Retired pools. A MemPool is never destroyed here, for two reasons:
#  - its destructor empties its cache, and PyTorch (2.11) asserts, aborting the
#    process, when that happens while any thread is inside use_mem_pool or a
#    graph capture (CUDACachingAllocator: captures_underway.empty());
#  - sweep() hands some of its cached segments back to cumem behind PyTorch's
#    back, so PyTorch must never free them again.
# Each entry is [pool, addresses already given back].
_retired = []


def keep_forever(obj):
    """Keep `obj` alive for the whole process: one reference nobody owns,
    which not even interpreter shutdown drops."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def retire(pool):
    """Stop allocating from `pool` for good: from now on its segments go back
    to cumem as soon as no tensor uses them (see sweep)."""
    keep_forever(pool)
    with _lock:
        _retired.append([pool, set()])
    sweep()


def sweep():
    """Free the segments of retired pools that hold no tensor any more.

    torch.cuda.empty_cache() does not empty a live pluggable pool
    (pytorch#145168) and destroying one is unsafe (above), so cumem frees
    the segments itself. A retired pool is never allocated from again, so a
    segment with nothing active stays unused; it is freed once its stream has
    finished with it. A pool still in use (a graph captured into it holds a
    use count) is skipped: a graph replays into its cached blocks.
    """
    inst = _C.default()
    with _lock:
        for entry in list(_retired):
            pool, gone = entry
            if pool.use_count() > 1:
                continue
            in_use = 0
            for seg in pool.snapshot():
                addr = seg["address"]
                if addr in gone:
                    continue
                if seg.get("active_size", seg["allocated_size"]) == 0:
                    _free_segment(inst, addr, seg["stream"])
                    gone.add(addr)
                else:
                    in_use += 1
            if not in_use:
                _retired.remove(entry)  # nothing left that could be freed


def _free_segment(inst, addr, stream):
    try:
        inst.free(addr, stream)  # waits for the segment's stream only
    except _C.CumemError as e:
        if e.code == _C.ENOTFOUND:
            return  # not (or no longer) a cumem allocation
        try:
            inst.free(addr)  # e.g. that stream is gone: wait for the device
        except _C.CumemError:
            pass  # left to cumem: freed with the instance


@contextlib.contextmanager
def fresh_pool(tag):
    """Allocate inside the block from a new pool, retired at exit.

    Blocks cached in a pluggable pool hold GPU memory until the pool goes
    (empty_cache cannot empty it), so the pool is retired at exit: its unused
    segments are freed now, and the segments of tensors still alive when
    those tensors are gone (at the next sweep: pool exits, sleep,
    cumem.empty_cache()). A retired pool is never allocated from again, so no
    later tensor lands on a block that was put to sleep with this tag.
    """
    pool = new_pool()
    try:
        with allocate_in(pool, tag):
            yield
    finally:
        retire(pool)


def sweep_if_any():
    """sweep() when some retired pool may still hold a segment to free: on a
    sleep's path, where nothing else is needed (with no retired pool left
    this costs one list check)."""
    if _retired:
        sweep()


def empty_torch_cache():
    """Give PyTorch's own cache back to the GPU: the unused blocks of its
    default pool (made outside every cumem pool, e.g. temporaries), which a
    sleep does not touch. Only if this process uses torch on the GPU."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def around_sleep(what):
    """What every adapter's sleep does around the core's, timed as `what`
    (printed with CUMEM_VERBOSE): first sweep retired pools (the blocks
    PyTorch freed into them need neither a backup nor a wake), then the
    block, which records its own steps on the Steps it is given, then empty
    PyTorch's own cache (a sleep never touches it, but the GPU memory a
    sleep frees should include it). When the block raises, nothing runs
    after it."""
    steps = _timing.Steps(what)
    sweep_if_any()
    steps.step("sweep")
    yield steps
    empty_torch_cache()
    steps.step("torch empty_cache")
    steps.done()


def empty_cache():
    """Free what PyTorch no longer uses: tensors kept only by reference
    cycles (gc.collect), the unused segments of retired pools, then
    PyTorch's own cache. For users who ask (cumem.empty_cache); a sleep does
    only the last two, without the collection (see CuMemAllocator.sleep)."""
    import gc

    gc.collect()
    sweep()
    empty_torch_cache()


@functools.cache
def _env_prepare_ahead():
    # CUMEM_PREPARE_AHEAD as the core reads it (cumem__tag_prepares_ahead):
    # exactly "all", or tag names separated by commas, each as written. Read
    # once, at the first need rather than at import: the core reads it once
    # too, when the process-wide instance opens (its first use), and a
    # program may set it after importing cumem but before that.
    text = os.environ.get("CUMEM_PREPARE_AHEAD", "")
    if text == "all":
        return True
    return frozenset(text.split(",")) if text else frozenset()


def prepare_ahead_wanted(setting, tag):
    """Whether `tag` is to be prepared ahead under `setting`: None (the
    CUMEM_PREPARE_AHEAD environment: "all" or comma-separated tags), a bool
    (every tag or none), "all", a tag, or an iterable of tags."""
    if setting is None:
        setting = _env_prepare_ahead()
    if isinstance(setting, bool):
        return setting
    if isinstance(setting, str):
        return setting == "all" or tag in setting.split(",")
    return tag in setting


def prepare_ahead_at_exit(setting, tag, core_tag=None):
    """At the exit of a block that allocated under `tag`: the tag stopped
    growing, so when `setting` wants it prepared ahead (prepare_ahead_wanted)
    pin its host backup now, in the background, and even the first sleep
    only copies. `core_tag` is the tag's name in the core (default: `tag`);
    one the core does not know (the block allocated nothing) is left alone."""
    if not prepare_ahead_wanted(setting, tag):
        return
    if core_tag is None:
        core_tag = tag
    inst = _C.default()
    if core_tag in inst.tags():
        inst.prepare_backup_async([core_tag])
