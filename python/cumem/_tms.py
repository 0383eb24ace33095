"""cumem.torch_memory_saver: torch_memory_saver's object on the cumem core.

Same API and semantics as `from torch_memory_saver import torch_memory_saver`,
in both of its hook modes, so an SGLang / verl / slime user changes one
import:

    from cumem import torch_memory_saver, configure_subprocess

Hook modes. "torch": regions allocate from a MemPool over cumem's
CUDAPluggableAllocator; no LD_PRELOAD. "preload": the process runs with
libcumem_preload.so in LD_PRELOAD (configure_subprocess() sets it for child
processes, `cumem run` for any program), which turns cudaMalloc inside a
region into a cumem allocation; regions allocate from a plain MemPool of
their own, so their segments are fresh cudaMalloc calls and never mix with
memory from outside. TMS_INIT_ENABLE=1 (or CUMEM_PRELOAD=1) makes every
allocation of a preloaded process pausable from its start, under "default".
Without a choice the mode is "preload" when the interposer is loaded (and
shares the core with cumem._C), as torch_memory_saver's default is, and
"torch" otherwise. Both modes name tags alike (below), so pause and resume
are the same code.

Tags. torch_memory_saver chooses backup per region (enable_cpu_backup,
enable_disk_backup), cumem chooses it per tag at sleep time. Each (tag,
backup) pair is therefore its own cumem tag: "tms:<tag>" for regions without
backup, "tms+cpu:<tag>" for regions with a CPU backup and "tms+disk:<tag>"
(a tag whose backup option is "disk") for regions with a disk backup;
pause(tag) sleeps all three, offloading the last two. The prefixes also keep
these allocations apart from CuMemAllocator's and the native API's, so
pause(None) pauses only memory made through this object.
cumem.stats("tms+cpu:default") shows their figures.

Disk backups go to files under one directory per process:
set_disk_backup_dir(path), or CUMEM_DISK_DIR (TMS_DISK_BACKUP_DIR is taken
when neither is set). Unlike torch_memory_saver, cumem does not fall back to
/tmp: a pause with nowhere to write raises. The files have no name, are
removed on resume, and a full disk makes pause raise (CumemError, code
ENOSPC) with every tensor of the call still on the GPU and intact.

cpu_backup_backend. torch_memory_saver's "pinned" backup is cudaMallocHost
memory (fast copies; freeing it often does not lower RSS, tms#90) and its
"mmap" backup an anonymous mapping (munmap lowers RSS; copies are pageable
and slower). cumem has one kind that gives both: an anonymous mapping,
page-locked with cuMemHostRegister while held (full-speed copies) and
given back with munmap (RSS drops). So both values are accepted (and
checked as torch_memory_saver checks them) and behave the same; the one
difference from torch_memory_saver's "mmap" is that the backup is
page-locked, not pageable, while it is held.

Errors raise (cumem.CumemError, a RuntimeError); nothing calls exit(). A
resume that fails (out of memory) keeps every backup: resume again later.
"""

import contextlib
import os
import threading

from . import _C, _preload, _timing, _torch

_PLAIN = "tms:"
_BACKUP = "tms+cpu:"
_DISK = "tms+disk:"
_PREFIXES = (_PLAIN, _BACKUP, _DISK)
_OFFLOADED = (_BACKUP, _DISK)
_TAG_DEFAULT = "default"
_CPU_BACKUP_BACKENDS = ("pinned", "mmap")


def _internal_tag(tag, enable_cpu_backup, enable_disk_backup=False):
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"tag must be a non-empty str, got {tag!r}")
    if enable_cpu_backup and enable_disk_backup:
        raise ValueError("enable_cpu_backup and enable_disk_backup are mutually exclusive")
    prefix = _DISK if enable_disk_backup else _BACKUP if enable_cpu_backup else _PLAIN
    name = prefix + tag
    if len(name.encode()) > _C.TAG_MAX:
        raise ValueError(f"tag {tag!r} is too long (at most {_C.TAG_MAX - len(prefix)} bytes)")
    return name


def _check_cpu_backup_backend(enable_cpu_backup, cpu_backup_backend):
    # As torch_memory_saver checks it; both values then behave the same (see
    # the module's docstring).
    if cpu_backup_backend is None:
        return
    if cpu_backup_backend not in _CPU_BACKUP_BACKENDS:
        raise ValueError(f"cpu_backup_backend must be 'pinned' or 'mmap', got {cpu_backup_backend!r}")
    if not enable_cpu_backup:
        raise ValueError("cpu_backup_backend requires enable_cpu_backup=True")


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
        self._hook_mode = None  # None: "preload" where the interposer is usable
        self._configured = set()  # cumem tags whose options this object set
        # Which regions with enable_cpu_backup pin their backup in the
        # background at exit (see prepare_ahead); None follows
        # CUMEM_PREPARE_AHEAD.
        self.prepare_ahead = None

    # -- allocation -----------------------------------------------------------

    @contextlib.contextmanager
    def region(self, tag=_TAG_DEFAULT, enable_cpu_backup=False, enable_disk_backup=False, cpu_backup_backend=None):
        """Tensors created inside are pausable under `tag`. Their content
        survives pause/resume in host memory with enable_cpu_backup, in
        files under the disk backup directory with enable_disk_backup (the
        two exclude each other), and is discarded otherwise.
        cpu_backup_backend ("pinned" or "mmap", only with enable_cpu_backup)
        is checked and makes no difference: see the module's docstring."""
        _check_cpu_backup_backend(enable_cpu_backup, cpu_backup_backend)
        itag = _internal_tag(tag, enable_cpu_backup, enable_disk_backup)
        if enable_disk_backup:
            self._use_disk(itag)
        elif not enable_cpu_backup:
            self._never_pin(itag)
        if self.hook_mode == "preload":
            # A plain pool: its segments are cudaMalloc calls made in the region.
            with _torch.allocate_in(self._pool(itag, "preload"), itag), _preload.region(itag):
                yield
        else:
            with _torch.allocate_in(self._pool(itag, "torch"), itag):
                yield
        if enable_cpu_backup:  # only a host backup is pinned ahead
            _torch.prepare_ahead_at_exit(self.prepare_ahead, tag, itag)

    def _never_pin(self, itag):
        # A region without backup is never offloaded: keep the core's
        # prepare-ahead (CUMEM_PREPARE_AHEAD=all) from pinning host memory
        # for it.
        if itag not in self._configured:
            _C.default().set_tag_options(itag, prepare_ahead=False)
            self._configured.add(itag)

    def _use_disk(self, itag):
        # The tag's backup goes to disk; the directory, if none is set yet,
        # from torch_memory_saver's variable.
        inst = _C.default()
        env_dir = os.environ.get("TMS_DISK_BACKUP_DIR")
        if inst.disk_dir is None and env_dir:
            self.set_disk_backup_dir(env_dir)
        inst.set_tag_options(itag, backup="disk")

    def set_disk_backup_dir(self, path):
        """Write disk backups under `path` (created if missing) from now on.
        Backups already on disk stay where they are until resumed."""
        os.makedirs(path, exist_ok=True)
        _C.default().set_disk_dir(path)

    def _pool(self, itag, mode):
        import torch

        key = (itag, torch.cuda.current_device(), mode)
        with self._lock:
            if key not in self._pools:
                self._pools[key] = _torch.new_pool() if mode == "torch" else torch.cuda.MemPool()
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
        `tag`.

        Torch mode: unless a pool is given, the capture allocates from a new
        cumem MemPool of its own (PyTorch lets a graph capture into a
        MemPool). The pool is not shared with regions, whose later tensors
        could otherwise land on blocks the graph reuses at replay; its memory
        goes back to cumem once the graph is destroyed (at the next sweep).

        Preload mode: the capture runs in a region, so the cudaMalloc calls
        of the graph's private pool (or of `pool`) make cumem allocations;
        PyTorch frees them with cudaFree when the graph's pool goes.

        Both modes: a graph with NCCL collectives may hang at replay after a
        pause when NCCL registered its buffers for graphs (tms#88); run such
        jobs with NCCL_GRAPH_REGISTER=0."""
        import torch

        _check_cpu_backup_backend(enable_cpu_backup, cpu_backup_backend)
        itag = _internal_tag(tag, enable_cpu_backup)
        if self.hook_mode == "preload":
            with _torch._expandable_segments_off(), torch.cuda.graph(
                cuda_graph, pool=pool, stream=stream, capture_error_mode=capture_error_mode
            ), _preload.region(itag):
                yield
            return
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
        if self.hook_mode == "preload":
            with torch.cuda.use_mem_pool(pool), _preload.region(None):
                yield
        else:
            with torch.cuda.use_mem_pool(pool):
                yield

    # -- pause and resume -----------------------------------------------------

    def _tags(self, tag):
        known = _C.default().tags()
        if tag is None:
            return [t for t in known if t.startswith(_PREFIXES)]
        return [t for t in (p + tag for p in _PREFIXES) if t in known]

    def pause(self, tag=None):
        """Release the GPU memory of `tag`'s regions (None: all), backing up
        those made with enable_cpu_backup (to host memory) or
        enable_disk_backup (to files). Waits for the device first. When the
        disk cannot take the disk backups (CumemError: ENOSPC, EIO) nothing
        is paused and every tensor stays intact on the GPU."""
        # The sweep first: memory of destroyed graphs need not sleep. Then
        # PyTorch's own cache of blocks freed outside every region (e.g.
        # temporaries) is given back: not ours to sleep, but the GPU memory a
        # pause frees should match what CuMemAllocator.sleep and cumem.sleep
        # free (torch_memory_saver does not; on the benchmark's workload that
        # left 1.96 GiB behind).
        with _torch.around_sleep("torch_memory_saver.pause") as steps:
            tags = self._tags(tag)
            steps.step("bookkeeping")
            if tags:
                _C.default().sleep(tags, [t for t in tags if t.startswith(_OFFLOADED)])
                steps.step("core")

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
        holds its content (never paused with enable_cpu_backup, backed up
        on disk, or resumed without retain_cpu_backup). zero_copy=True
        returns a view of the backup itself: it keeps that memory mapped as
        long as it lives, even after x is freed (later pauses of x write
        into it while the backup stays attached to x)."""
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
        """How allocations are caught: "torch" (a CUDAPluggableAllocator) or
        "preload" (the LD_PRELOAD interposer); see the module's docstring."""
        if self._hook_mode is None:
            return "preload" if _preload.usable() else "torch"
        return self._hook_mode

    @hook_mode.setter
    def hook_mode(self, mode):
        # Refused at once (torch_memory_saver refuses at its first use):
        # "preload" without the interposer would allocate nothing pausable.
        # Regions already entered keep the mode they began with.
        if mode not in ("torch", "preload"):
            raise ValueError(f"unknown hook_mode {mode!r} (expected 'torch' or 'preload')")
        if mode == "preload":
            _preload.require()
        self._hook_mode = mode

    @staticmethod
    def configure_subprocess():
        """Context manager: child processes started inside get the interposer
        in LD_PRELOAD (for hook_mode="preload"); see cumem.configure_subprocess."""
        return _preload.configure_subprocess()


torch_memory_saver = TorchMemorySaver()
