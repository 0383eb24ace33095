"""cumem.CuMemAllocator: vLLM's CuMemAllocator on the cumem core.

Same API and semantics as vllm.device_allocator.cumem.CuMemAllocator, so a
vLLM user changes one import:

    from cumem import CuMemAllocator   # was: from vllm.device_allocator.cumem import ...

What differs is underneath: the allocation table, backups and rollback are in
C. sleep copies at the host link's speed into retained pinned buffers (no
fresh cudaHostAlloc per sleep, unless CUMEM_RETAIN_BACKUP=0), frees wait for
their stream instead of the whole device, and a wake that fails (say, out of
memory) raises RuntimeError with the cause and loses nothing: every backup is
kept until a wake succeeds, so wake_up() can simply be called again.
"""

import contextlib
import logging

from . import _C, _timing, _torch

logger = logging.getLogger(__name__)


def _as_tuple(tags):
    if tags is None:
        return None
    if isinstance(tags, str):
        return (tags,)
    return tuple(tags)


class CuMemAllocator:
    """A singleton that puts the tensors made in use_memory_pool() to sleep.

    Inside `use_memory_pool(tag)` every tensor created lives in cumem under
    that tag. `sleep(offload_tags)` releases the GPU memory of all of them,
    after backing up to CPU the ones whose tag is in offload_tags (the rest
    are discarded); `wake_up(tags)` maps memory again at the same addresses
    and restores what was backed up.
    """

    instance = None
    default_tag = "default"

    @staticmethod
    def get_instance():
        """CuMemAllocator is a singleton: call this, not the constructor."""
        if CuMemAllocator.instance is None:
            CuMemAllocator.instance = CuMemAllocator()
        return CuMemAllocator.instance

    def __init__(self):
        self.current_tag = CuMemAllocator.default_tag
        # The tags this allocator has allocated under: sleep() and
        # get_current_usage() cover these, not other users of the process-wide
        # cumem instance (torch_memory_saver, the native API).
        self._tags = []
        # Which tags to pin ahead (see prepare_ahead); None follows
        # CUMEM_PREPARE_AHEAD.
        self.prepare_ahead = None

    # -- allocation -----------------------------------------------------------

    @contextlib.contextmanager
    def use_memory_pool(self, tag=None):
        """Context manager: tensors created inside live in cumem under `tag`
        (default "default"). Each use gets its own torch MemPool (a pool
        never mixes tags), dropped at exit so that blocks left unused are
        released then: torch.cuda.empty_cache() cannot empty a pluggable
        pool. Expandable segments are turned off inside and restored after."""
        if tag is None:
            tag = CuMemAllocator.default_tag
        if not isinstance(tag, str):
            raise TypeError(f"tag must be a str, not {type(tag).__name__}")
        if tag not in self._tags:
            self._tags.append(tag)
        old_tag, self.current_tag = self.current_tag, tag
        try:
            with _torch.fresh_pool(tag):
                yield
        finally:
            self.current_tag = old_tag
        _torch.prepare_ahead_at_exit(self.prepare_ahead, tag)

    # -- sleep and wake -------------------------------------------------------

    def _known(self, wanted=None):
        """This allocator's tags that the core knows (has allocated under),
        restricted to `wanted` when given."""
        known = set(_C.default().tags())
        return [t for t in self._tags if t in known and (wanted is None or t in wanted)]

    def sleep(self, offload_tags=None):
        """Release the GPU memory of every tensor made in use_memory_pool().
        Those whose tag is in `offload_tags` (default: ("default",)) are
        backed up to CPU memory first; the others are discarded.

        Around the core's sleep only what the freed memory needs: the blocks
        PyTorch already freed into dropped pools are released first (they
        need neither a backup nor a wake), and PyTorch's own cache is
        emptied after, once. Unlike vLLM's, no gc.collect(): it costs tens to
        hundreds of milliseconds on a large heap, and only frees tensors
        kept by reference cycles (call gc.collect() or cumem.empty_cache()
        first if you make those)."""
        offload_tags = _as_tuple(offload_tags)
        if offload_tags is None:
            offload_tags = (CuMemAllocator.default_tag,)
        # Then, as vLLM does after a sleep, PyTorch gives back its own cache too.
        with _torch.around_sleep("CuMemAllocator.sleep") as steps:
            tags = self._known()
            if tags:
                inst = _C.default()
                report = logger.isEnabledFor(logging.INFO)
                before = inst.stats() if report else None
                steps.step("bookkeeping")
                inst.sleep(tags, [t for t in tags if t in offload_tags])
                steps.step("core")
                if report:
                    after = inst.stats()
                    logger.info(
                        "CuMemAllocator: sleep freed %.2f GiB, of which %.2f GiB is backed up in CPU memory",
                        (after["bytes_asleep"] - before["bytes_asleep"]) / 2**30,
                        (after["bytes_backed_up"] - before["bytes_backed_up"]) / 2**30,
                    )

    def wake_up(self, tags=None):
        """Map GPU memory again for the sleeping tensors of `tags` (default:
        all) and restore those that were backed up; discarded ones hold
        undefined content (zeros with CUMEM_ZERO_ON_WAKE=1).

        Raises RuntimeError (cumem.CumemError; CumemOutOfMemoryError when the
        GPU is full) with the cause on failure. Nothing is lost then: what this
        call mapped is released again, every backup is kept, and a later
        wake_up() restores everything."""
        steps = _timing.Steps("CuMemAllocator.wake_up")
        selected = self._known(_as_tuple(tags))
        steps.step("bookkeeping")
        if selected:
            _C.default().wake(selected)
            steps.step("core")
        steps.done()

    # -- prepare-ahead ----------------------------------------------------------
    #
    # prepare_ahead (attribute): which tags have their host backup pinned in
    # the background when a use_memory_pool() block of the tag exits, so
    # that even the first sleep only copies. None (default) follows
    # CUMEM_PREPARE_AHEAD ("all" or comma-separated tags); else True/False,
    # "all", a tag, or an iterable of tags, e.g.
    #     CuMemAllocator.get_instance().prepare_ahead = ("weights",)
    # It holds pinned host memory the size of those tags from then on; name
    # the tags you offload (vLLM: "weights"), not the KV cache.

    def get_current_usage(self):
        """Bytes allocated through this allocator (asleep or awake)."""
        inst = _C.default()
        return sum(inst.stats(t)["bytes_allocated"] for t in self._known())
