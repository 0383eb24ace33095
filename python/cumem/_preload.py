"""Preload hook mode: the LD_PRELOAD interposer libcumem_preload.so from Python.

The interposer (preload/ in the source tree) defines cudaMalloc and friends.
A process gets it through LD_PRELOAD, set before the process starts: by
`configure_subprocess()` for child processes, by `cumem run -- CMD`, or by
hand. Python then steers it through ctypes calls into the already-loaded
library, found in the process's global scope (ctypes.CDLL(None)), so the
copy that interposes is the copy that is steered.

A region is thread-local, like torch_memory_saver's: PyTorch's caching
allocator calls cudaMalloc on the thread that creates the tensor.

The interposer allocates from the process's one cumem core (libcumem.so.0),
the same one `cumem._C` uses, so pause/resume and cumem.sleep/wake reach
its memory (`require()` checks that this is so).
"""

import contextlib
import ctypes
import os

from . import _C

LIBRARY_NAME = "libcumem_preload.so"


class _Region(ctypes.Structure):
    # cumem_preload_region_t (include/cumem_preload.h)
    _fields_ = [("enabled", ctypes.c_int), ("tag", ctypes.c_char * (_C.TAG_MAX + 1))]


class _Count(ctypes.Structure):
    # cumem_preload_count_t
    _fields_ = [
        ("calls", ctypes.c_ulonglong),
        ("to_cumem", ctypes.c_ulonglong),
        ("forwarded", ctypes.c_ulonglong),
        ("failed", ctypes.c_ulonglong),
        ("cumem_bytes", ctypes.c_ulonglong),
        ("forwarded_bytes", ctypes.c_ulonglong),
        ("resolved", ctypes.c_int),
    ]


# ---- finding the library -------------------------------------------------------


def _loaded_path():
    """The interposer this process has mapped, if any (from /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rstrip("\n").split(None, 5)[-1]
                if os.path.basename(path) == LIBRARY_NAME:
                    return path
    except OSError:
        pass
    return None


def library_path():
    """The path of libcumem_preload.so: $CUMEM_PRELOAD_LIBRARY; else the one
    this process has loaded; else the one next to the package (pip install);
    else one in a CMake build tree above the package (build/, or the build
    directory the package was built into)."""
    env = os.environ.get("CUMEM_PRELOAD_LIBRARY")
    if env:
        if os.path.isfile(env):
            return os.path.abspath(env)
        raise FileNotFoundError(f"CUMEM_PRELOAD_LIBRARY={env}: no such file")
    loaded = _loaded_path()
    if loaded:
        return loaded
    here = os.path.dirname(os.path.abspath(__file__))
    tried = [os.path.join(here, LIBRARY_NAME)]
    parent = here
    for _ in range(5):
        if os.path.dirname(parent) == parent:
            break
        parent = os.path.dirname(parent)
        tried += [os.path.join(parent, LIBRARY_NAME), os.path.join(parent, "build", LIBRARY_NAME)]
    for path in tried:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"cumem: {LIBRARY_NAME} not found (build it: the CMake target cumem_preload, or install "
        f"the package with it; or name it with CUMEM_PRELOAD_LIBRARY). Tried: " + ", ".join(tried)
    )


def _ld_preload_entries(value):
    # ld.so separates LD_PRELOAD entries with colons or spaces.
    return [e for e in value.replace(" ", ":").split(":") if e]


@contextlib.contextmanager
def configure_subprocess():
    """Inside the block, child processes start with the interposer in
    LD_PRELOAD (prepended; left alone when one is there already). The
    environment switch is the caller's: set CUMEM_PRELOAD=1 or
    TMS_INIT_ENABLE=1 too to make all of a child's memory sleepable."""
    old = os.environ.get("LD_PRELOAD")
    entries = _ld_preload_entries(old or "")
    if not any(os.path.basename(e) == LIBRARY_NAME for e in entries):
        os.environ["LD_PRELOAD"] = ":".join([library_path()] + entries)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = old


# ---- the loaded interposer -----------------------------------------------------

_lib = None


def _interposer():
    """ctypes handle on the interposer in this process's global scope (the
    copy that interposes), or None when none is loaded there."""
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(None)
        try:
            lib.cumem_preload_begin
        except AttributeError:
            return None
        lib.cumem_preload_begin.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Region)]
        lib.cumem_preload_begin.restype = ctypes.c_int
        lib.cumem_preload_end.argtypes = [ctypes.POINTER(_Region)]
        lib.cumem_preload_end.restype = None
        lib.cumem_preload_current.argtypes = [ctypes.POINTER(_Region)]
        lib.cumem_preload_current.restype = None
        lib.cumem_preload_default.argtypes = [ctypes.POINTER(_Region)]
        lib.cumem_preload_default.restype = None
        lib.cumem_preload_count.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Count)]
        lib.cumem_preload_count.restype = ctypes.c_int
        lib.cumem_preload_entry_point_requests.argtypes = [ctypes.c_char_p]
        lib.cumem_preload_entry_point_requests.restype = ctypes.c_ulonglong
        # The core it links (libcumem.so.0), in the same global scope.
        lib.cumem_current_tag.argtypes = []
        lib.cumem_current_tag.restype = ctypes.c_char_p
        _lib = lib
    return _lib


def loaded():
    """Whether the interposer is loaded (through LD_PRELOAD) in this process."""
    return _interposer() is not None


def _shares_core(lib):
    # The current tag is thread-local state of a core: set through cumem._C,
    # it is visible through the interposer's libcumem.so.0 only if both are
    # the same copy.
    probe = "cumem-one-core-probe"
    old = _C.current_tag()
    _C.set_current_tag(probe)
    try:
        return lib.cumem_current_tag() == probe.encode()
    finally:
        _C.set_current_tag(old)


_usable = None


def usable():
    """Whether preload mode works here: the interposer is loaded and shares
    the core with cumem._C (decided once)."""
    global _usable
    if _usable is None:
        lib = _interposer()
        _usable = lib is not None and _shares_core(lib)
    return _usable


def require():
    """Raise RuntimeError unless preload mode can work in this process: the
    interposer loaded through LD_PRELOAD, on the same cumem core as the
    Python package."""
    lib = _interposer()
    if lib is None:
        try:
            where = library_path()
        except FileNotFoundError as e:
            where = f"<not found: {e}>"
        raise RuntimeError(
            f"hook_mode='preload' needs {LIBRARY_NAME} in LD_PRELOAD when the process starts, "
            f"and this process (pid {os.getpid()}) has LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}. "
            f"Start it with LD_PRELOAD={where}, or with `cumem run -- python ...`, or from a parent "
            f"inside `with cumem.configure_subprocess():`; or use hook_mode='torch', which needs none."
        )
    if not usable():
        raise RuntimeError(
            f"the preloaded {LIBRARY_NAME} and cumem._C ({_C.__file__}) hold two different copies of "
            "the cumem core, so pause() would not see what the interposer allocates: cumem._C "
            "must link the shared libcumem.so.0 (and its copy be the one LD_PRELOAD loads)"
        )


# ---- regions -------------------------------------------------------------------


def _raise(rc, what):
    detail = _C.last_error()  # in preload mode the interposer shares cumem._C's core (usable())
    err = _C.CumemError(f"{what}: {_C.strerror(rc)}" + (f" ({detail})" if detail else ""))
    err.code = rc
    raise err


@contextlib.contextmanager
def region(tag):
    """This thread's cudaMalloc calls inside the block make cumem allocations
    tagged `tag` (a complete cumem tag); tag None makes none (disable()).
    Nests: the outer region comes back at exit."""
    lib = _interposer()
    if lib is None:
        require()  # raises with the explanation
    saved = _Region()
    rc = lib.cumem_preload_begin(None if tag is None else tag.encode(), ctypes.byref(saved))
    if rc:
        _raise(rc, f"region({tag!r})")
    try:
        yield
    finally:
        lib.cumem_preload_end(ctypes.byref(saved))


def _state(getter):
    r = _Region()
    getter(ctypes.byref(r))
    return r.tag.decode() if r.enabled else None


def current():
    """The cumem tag this thread's CUDA allocations get now (None: they are
    not cumem's)."""
    lib = _interposer()
    return None if lib is None else _state(lib.cumem_preload_current)


def default():
    """The tag the environment switch gives every thread (None: off)."""
    lib = _interposer()
    return None if lib is None else _state(lib.cumem_preload_default)


def counts(fn):
    """What the interposer did with calls to `fn` ("cudaMalloc", ...): calls,
    to_cumem, forwarded, failed, cumem_bytes, forwarded_bytes, resolved."""
    lib = _interposer()
    if lib is None:
        require()
    c = _Count()
    rc = lib.cumem_preload_count(fn.encode(), ctypes.byref(c))
    if rc:
        _raise(rc, f"counts({fn!r})")
    return {name: getattr(c, name) for name, _ in _Count._fields_}


def entry_point_requests(symbol):
    """How often a driver entry point was asked for through
    cudaGetDriverEntryPoint[ByVersion] (e.g. PyTorch's cuMemCreate)."""
    lib = _interposer()
    return 0 if lib is None else lib.cumem_preload_entry_point_requests(symbol.encode())
