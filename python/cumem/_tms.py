"""cumem.torch_memory_saver: torch_memory_saver's object on the cumem core.

Same API and semantics as `from torch_memory_saver import torch_memory_saver`
in its torch hook mode (a CUDAPluggableAllocator, no LD_PRELOAD), so an
SGLang / verl / slime user changes one import:

    from cumem import torch_memory_saver

Tags. torch_memory_saver chooses backup per region (enable_cpu_backup), cumem
chooses it per tag at sleep time. Each (tag, enable_cpu_backup) pair is
therefore its own cumem tag: "tms:<tag>" for regions without backup and
"tms+cpu:<tag>" for regions with one, and pause(tag) sleeps both, offloading
the second. The prefixes also keep these allocations apart from
CuMemAllocator's and the native API's, so pause(None) pauses only memory made
through this object. cumem.stats("tms+cpu:default") shows their figures.

Errors raise (cumem.CumemError, a RuntimeError); nothing calls exit(). A
resume that fails (out of memory) keeps every backup: resume again later.
"""

import contextlib
import threading

from . import _C, _timing, _torch

_PLAIN = "tms:"
_BACKUP = "tms+cpu:"
_TAG_DEFAULT = "default"


def _internal_tag(tag, enable_cpu_backup):
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"tag must be a non-empty str, got {tag!r}")
    name = (_BACKUP if enable_cpu_backup else _PLAIN) + tag
    if len(name.encode()) > _C.TAG_MAX:
        raise ValueError(f"tag {tag!r} is too long (at most {_C.TAG_MAX - len(_BACKUP)} bytes)")
    return name


class TorchMemorySaver:
    """torch_memory_saver's object: region() makes tensors pausable under a
    tag, pause() releases their GPU memory, resume() maps it again at the same
    addresses. Use the module's `torch_memory_saver` instance."""

    def __init__(self):
        # One MemPool per (cumem tag, device), reused by every region of that
        # tag, as torch_memory_saver does: a pool never mixes tags (tms#85).
        self._pools = {}
        self._lock = threading.Lock()
        self._retain_cpu_backup = False
        self._memory_margin_bytes = 0
        self._configured = set()  # cumem tags whose options this object set
        # Which regions with enable_cpu_backup pin their backup in the
        # background at exit (see prepare_ahead); None follows
        # CUMEM_PREPARE_AHEAD.
        self.prepare_ahead = None

    # -- allocation -----------------------------------------------------------

    @contextlib.contextmanager
    def region(self, tag=_TAG_DEFAULT, enable_cpu_backup=False, enable_disk_backup=False, cpu_backup_backend=None):
        """Tensors created inside are pausable under `tag`; with
        enable_cpu_backup their content survives pause/resume, otherwise it
        is discarded. (cpu_backup_backend is accepted and ignored: cumem
        always backs up to retained, page-locked mmap memory.)"""
        if enable_disk_backup:
            raise NotImplementedError("cumem has no disk backup; use enable_cpu_backup=True")
        itag = _internal_tag(tag, enable_cpu_backup)
        self._configure(itag, enable_cpu_backup)
        with _torch.allocate_in(self._pool(itag), itag):
            yield
        if enable_cpu_backup and _torch.prepare_ahead_wanted(self.prepare_ahead, tag):
            # The region is done growing: pin its backup now, in the background.
            inst = _C.default()
            if itag in inst.tags():
                inst.prepare_backup_async([itag])

    def _configure(self, itag, enable_cpu_backup):
        # A region without CPU backup is never offloaded: keep the core's
        # prepare-ahead (CUMEM_PREPARE_AHEAD=all) from pinning host memory
        # for it.
        if enable_cpu_backup or itag in self._configured:
            return
        _C.default().set_tag_options(itag, prepare_ahead=False)
        self._configured.add(itag)

    def _pool(self, itag):
        import torch

        key = (itag, torch.cuda.current_device())
        with self._lock:
            if key not in self._pools:
                self._pools[key] = _torch.new_pool()
            return self._pools[key]

    @contextlib.contextmanager
    def cuda_graph(
        self,
        cuda_graph,
        pool=None,
        stream=None,
        capture_error_mode="global",
        tag=_TAG_DEFAULT,
        enable_cpu_backup=False,
        cpu_backup_backend=None,
    ):
        """Like torch.cuda.graph, with the graph's memory pausable under
        `tag`: unless a pool is given, the capture allocates from a new cumem
        MemPool of its own (PyTorch lets a graph capture into a MemPool). The
        pool is not shared with regions, whose later tensors could otherwise
        land on blocks the graph reuses at replay; its memory goes back to
        cumem once the graph is destroyed (at the next sweep)."""
        import torch

        itag = _internal_tag(tag, enable_cpu_backup)
        own_pool = _torch.new_pool() if pool is None else None
        try:
            with _torch.current_tag(itag), torch.cuda.graph(
                cuda_graph,
                pool=own_pool.id if own_pool is not None else pool,
                stream=stream,
                capture_error_mode=capture_error_mode,
            ):
                yield
        finally:
            if own_pool is not None and own_pool.use_count() > 1:
                # Freed by a sweep once the graph is gone; until then the
                # graph's use count keeps sweeps away from it.
                _torch.retire(own_pool)
            elif own_pool is not None:
                _torch.keep_forever(own_pool)  # no graph holds it: never sweep

    @contextlib.contextmanager
    def disable(self):
        """Inside a region: allocate outside torch_memory_saver again, from a
        plain PyTorch pool. torch_memory_saver drops that pool after each use,
        which PyTorch 2.11 turns into an abort when it happens inside a
        region (a pool context is underway); here one plain pool per device
        is reused instead."""
        import torch

        key = ("disable", torch.cuda.current_device())
        with self._lock:
            if key not in self._pools:
                self._pools[key] = torch.cuda.MemPool()
            pool = self._pools[key]
        with torch.cuda.use_mem_pool(pool):
            yield

    # -- pause and resume -----------------------------------------------------

    def _tags(self, tag):
        known = _C.default().tags()
        if tag is None:
            return [t for t in known if t.startswith(_PLAIN) or t.startswith(_BACKUP)]
        return [t for t in (_PLAIN + tag, _BACKUP + tag) if t in known]

    def pause(self, tag=None):
        """Release the GPU memory of `tag`'s regions (None: all), backing up
        those made with enable_cpu_backup. Waits for the device first."""
        steps = _timing.Steps("torch_memory_saver.pause")
        _torch.sweep_if_any()  # memory of destroyed graphs need not sleep
        steps.step("sweep")
        tags = self._tags(tag)
        steps.step("bookkeeping")
        if tags:
            _C.default().sleep(tags, [t for t in tags if t.startswith(_BACKUP)])
            steps.step("core")
        # PyTorch's own cache of blocks freed outside every region (e.g.
        # temporaries) is not ours to sleep, but the GPU memory a pause
        # frees should match what CuMemAllocator.sleep and cumem.sleep free:
        # they give it back too (torch_memory_saver does not; on the
        # benchmark's workload that left 1.96 GiB behind).
        _torch.empty_torch_cache()
        steps.step("torch empty_cache")
        steps.done()

    def resume(self, tag=None):
        """Map GPU memory again for `tag`'s regions (None: all) and restore
        the backed-up ones. On failure raises RuntimeError with the cause,
        keeps every backup, and a later resume() restores everything.
        Without retain_cpu_backup the backups are given back after resume
        returns, in the background; a failure there is raised by the next
        pause or resume (nothing is lost: the backup stays held)."""
        steps = _timing.Steps("torch_memory_saver.resume")
        tags = self._tags(tag)
        if not tags:
            return
        inst = _C.default()
        if self._memory_margin_bytes:
            self._check_margin(inst, tags)
        steps.step("bookkeeping")
        inst.wake(tags)
        steps.step("core")
        if not self._retain_cpu_backup:
            # Given back right after, in the background (RSS drops within
            # the next few hundred milliseconds): not on resume's path.
            inst.release_backup_async(tags)
            steps.step("release queued")
        steps.done()

    def _check_margin(self, inst, tags):
        # torch_memory_saver refuses a resume that would leave less than the
        # margin free. Checked against the current device.
        import torch

        need = sum(inst.stats(t)["bytes_asleep"] for t in tags)
        free = inst.device_info(torch.cuda.current_device())["free_bytes"]
        if free < need + self._memory_margin_bytes:
            err = _C.CumemOutOfMemoryError(
                f"resume needs {need} bytes plus a margin of {self._memory_margin_bytes}, "
                f"but only {free} bytes are free"
            )
            err.code = _C.ENOMEM
            raise err

    # -- options --------------------------------------------------------------

    @property
    def retain_cpu_backup(self):
        """Keep the pinned CPU backups after resume, so the next pause only
        copies (much faster; costs host RAM equal to the backed-up memory).
        Off by default, as in torch_memory_saver: resume gives them back."""
        return self._retain_cpu_backup

    @retain_cpu_backup.setter
    def retain_cpu_backup(self, value):
        self._retain_cpu_backup = bool(value)

    # prepare_ahead (attribute): whether regions made with enable_cpu_backup
    # pin their host backup in the background when they exit, so that even
    # the first pause only copies. None (default) follows CUMEM_PREPARE_AHEAD
    # ("all", or comma-separated tags as given to region()); else True/False,
    # a tag, or an iterable of tags. It holds pinned host memory the size of
    # those regions from then on; without retain_cpu_backup it helps the
    # first pause only (resume gives the backup back).

    @property
    def memory_margin_bytes(self):
        """GPU memory that must stay free after a resume: a resume that would
        leave less raises CumemOutOfMemoryError and maps nothing (0: no
        check)."""
        return self._memory_margin_bytes

    @memory_margin_bytes.setter
    def memory_margin_bytes(self, value):
        if value < 0:
            raise ValueError("memory_margin_bytes must be >= 0")
        self._memory_margin_bytes = int(value)

    def get_cpu_backup(self, x, zero_copy=False):
        """The CPU backup of tensor x (same dtype, shape), or None when none
        holds its content (never paused with enable_cpu_backup, or resumed
        without retain_cpu_backup). zero_copy=True returns a view of the
        backup itself, valid until the backup is given back."""
        import torch

        if not x.is_cuda:
            raise ValueError(f"expected a CUDA tensor, got one on {x.device}")
        if not x.is_contiguous():
            raise ValueError("expected a contiguous tensor")
        view = _C.default().backup_view(x.data_ptr())
        nbytes = x.numel() * x.element_size()
        if view is None or len(view) < nbytes:
            return None
        if nbytes == 0:
            return torch.empty(x.shape, dtype=x.dtype)
        raw = torch.frombuffer(view, dtype=torch.uint8, count=nbytes)
        ans = raw.view(x.dtype).view(x.shape)
        return ans if zero_copy else ans.clone()

    # -- compatibility ----------------------------------------------------------

    @property
    def enabled(self):
        """Always True: cumem's saver is always available."""
        return True

    @property
    def hook_mode(self):
        """How allocations are caught: "torch" (a CUDAPluggableAllocator)."""
        return "torch"

    @hook_mode.setter
    def hook_mode(self, mode):
        # cumem always works in-process through the pluggable allocator;
        # "preload" users get the same behaviour without LD_PRELOAD.
        if mode not in ("torch", "preload"):
            raise ValueError(f"unknown hook_mode {mode!r}")


torch_memory_saver = TorchMemorySaver()
