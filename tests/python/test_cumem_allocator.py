"""cumem.cumem_allocator: vLLM's extension interface, end to end on the host
backend. my_malloc / my_free are called through the C ABI, as PyTorch's
CUDAPluggableAllocator calls them; on the host backend the memory is plain
host memory at the same address, so ctypes reads and writes it."""

import ctypes
import gc
import json
import os
import sys
import time

import pytest
from conftest import pattern

MiB = 1 << 20


@pytest.fixture
def seed():
    from cumem import cumem_allocator

    cumem_allocator._use_backend("host")
    try:
        yield cumem_allocator
    finally:
        cumem_allocator.init_module(lambda h: None, lambda p: None)
        cumem_allocator._use_backend(None)


@pytest.fixture
def abi(seed):
    lib = ctypes.CDLL(seed.__file__)
    lib.my_malloc.restype = ctypes.c_void_p
    lib.my_malloc.argtypes = [ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
    lib.my_free.restype = None
    lib.my_free.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
    return lib


class Recorder:
    """What vLLM's CuMemAllocator does with the callbacks."""

    def __init__(self):
        self.pointer_to_handle = {}
        self.malloc_calls = []
        self.free_calls = []

    def malloc(self, handle):
        self.malloc_calls.append(handle)
        self.pointer_to_handle[handle[2]] = handle

    def free(self, ptr):
        self.free_calls.append(ptr)
        return self.pointer_to_handle.pop(ptr)


def test_interface(seed):
    for name in ("init_module", "python_create_and_map", "python_unmap_and_release"):
        assert callable(getattr(seed, name))
    assert seed._backend_name() == "host"


def test_init_module_wants_callables(seed):
    with pytest.raises(TypeError):
        seed.init_module(1, lambda p: None)
    with pytest.raises(TypeError):
        seed.init_module(lambda h: None, None)
    with pytest.raises(TypeError):
        seed.init_module(lambda h: None)


def test_malloc_calls_back_with_the_handle_tuple(seed, abi):
    rec = Recorder()
    seed.init_module(rec.malloc, rec.free)
    p = abi.my_malloc(1000, 0, None)
    assert p
    assert len(rec.malloc_calls) == 1
    handle = rec.malloc_calls[0]
    assert isinstance(handle, tuple) and len(handle) == 4
    assert all(isinstance(x, int) for x in handle)
    device, size, d_mem, mem_handle = handle
    assert device == 0 and d_mem == p and mem_handle != 0
    assert size >= 1000 and size % 4096 == 0  # rounded to the granularity

    ctypes.memset(p, 0xAB, size)  # mapped, read/write
    abi.my_free(p, 1000, 0, None)
    assert rec.free_calls == [p] and not rec.pointer_to_handle
    assert seed._live_allocations() == 0


def test_sleep_wake_round_trip_like_vllm(seed, abi):
    """vLLM's sleep: copy out, python_unmap_and_release(*handle); wake:
    python_create_and_map(*handle), copy back."""
    rec = Recorder()
    seed.init_module(rec.malloc, rec.free)
    ptrs = [abi.my_malloc(n, 0, None) for n in (MiB, 3 * MiB + 5, 4096)]
    content = {}
    for i, p in enumerate(ptrs):
        size = rec.pointer_to_handle[p][1]
        content[p] = pattern(size, i)
        ctypes.memmove(p, content[p], size)
    for cycle in range(3):
        backup = {p: ctypes.string_at(p, len(d)) for p, d in content.items()}
        for p in ptrs:
            seed.python_unmap_and_release(*rec.pointer_to_handle[p])
        for p in ptrs:
            seed.python_create_and_map(*rec.pointer_to_handle[p])
            ctypes.memmove(p, backup[p], len(backup[p]))
        for p, d in content.items():
            assert ctypes.string_at(p, len(d)) == d
    for p in ptrs:
        abi.my_free(p, 0, 0, None)
    assert seed._live_allocations() == 0


def test_free_while_released(seed, abi):
    rec = Recorder()
    seed.init_module(rec.malloc, rec.free)
    p = abi.my_malloc(MiB, 0, None)
    seed.python_unmap_and_release(*rec.pointer_to_handle[p])
    abi.my_free(p, MiB, 0, None)  # no double release
    assert seed._live_allocations() == 0


def test_errors_raise_cleanly_and_do_not_stick(seed, abi):
    rec = Recorder()
    seed.init_module(rec.malloc, rec.free)
    with pytest.raises(RuntimeError) as e:
        seed.python_unmap_and_release(0, 2 * MiB, 0x10000, 0x10000)
    assert "CUMEM_ENOTFOUND" in str(e.value)
    with pytest.raises(RuntimeError):
        seed.python_create_and_map(0, 2 * MiB, 0x10000, 0x10000)
    with pytest.raises(TypeError):
        seed.python_create_and_map(0, 2 * MiB, 0x10000)
    with pytest.raises(TypeError):
        seed.python_unmap_and_release("0", 2 * MiB, 0x10000, 0)
    # Nothing sticky: the next calls succeed.
    p = abi.my_malloc(MiB, 0, None)
    seed.python_unmap_and_release(*rec.pointer_to_handle[p])
    seed.python_create_and_map(*rec.pointer_to_handle[p])
    abi.my_free(p, MiB, 0, None)


def test_callbacks_are_held_strongly(seed, abi):
    """vLLM's extension kept borrowed references: once the bound methods were
    collected, the next allocation crashed."""
    calls = []

    def install():
        class Owner:
            def malloc(self, h):
                calls.append(h)

            def free(self, p):
                return calls.pop()

        o = Owner()
        seed.init_module(o.malloc, o.free)  # temporary bound methods

    install()
    gc.collect()
    p = abi.my_malloc(MiB, 0, None)
    assert p and calls and calls[0][2] == p
    abi.my_free(p, MiB, 0, None)
    assert not calls


def test_failing_malloc_callback_fails_the_allocation(seed, abi, monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_type))

    def bad_malloc(handle):
        raise ValueError("no room in the bookkeeping")

    seed.init_module(bad_malloc, lambda p: None)
    assert abi.my_malloc(MiB, 0, None) is None  # PyTorch raises OOM on NULL
    assert reported == [ValueError]
    assert seed._live_allocations() == 0  # nothing leaked


def test_failing_free_callback_still_frees(seed, abi, monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_type))
    seed.init_module(lambda h: None, lambda p: {}[p])  # KeyError
    p = abi.my_malloc(MiB, 0, None)
    abi.my_free(p, MiB, 0, None)
    assert reported == [KeyError]
    seed.init_module(lambda h: None, lambda p: "not a tuple")
    p = abi.my_malloc(MiB, 0, None)
    abi.my_free(p, MiB, 0, None)
    assert reported == [KeyError, TypeError]
    assert seed._live_allocations() == 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads (3.12)
def test_use_backend_refuses_when_it_cannot_count(seed):
    """In a forked child every call on the parent's instance fails
    (EFORKED), so _use_backend cannot count this module's allocations: it
    refuses, naming the call that failed, and keeps the instance. It used to
    drop it anyway and open another (or raise as "cumem_open")."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what each call did, then leave at once
        said = []
        for call in (lambda: seed._use_backend("host"), lambda: seed._use_backend(None), seed._live_allocations):
            try:
                said.append(repr(call()))
            except BaseException as e:
                said.append(str(e))
        os.write(w, json.dumps(said).encode())
        os._exit(0)
    os.close(w)
    deadline = time.time() + 30
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.time() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the child hung")
        time.sleep(0.01)
    with os.fdopen(r) as f:
        said = json.load(f)
    for message in said:  # the parent's instance is still the one in use
        assert message.startswith("cumem_tags: CUMEM_EFORKED"), said


def test_vllm_can_import_it_in_place_of_its_extension():
    import cumem

    saved = {k: sys.modules.get(k) for k in ("vllm.cumem_allocator", "vllm.device_allocator.cumem")}
    try:
        sys.modules.pop("vllm.device_allocator.cumem", None)
        mod = cumem.install_vllm_shim()
        assert sys.modules["vllm.cumem_allocator"] is mod
        # vLLM finds the shared object by name in /proc/self/maps and loads
        # my_malloc / my_free from it (find_loaded_library("cumem_allocator")).
        with open("/proc/self/maps") as f:
            line = next(line for line in f if "cumem_allocator" in line)
        path = line[line.index("/") :].strip()
        assert path.rpartition("/")[2].startswith("cumem_allocator")
        lib = ctypes.CDLL(path)
        assert lib.my_malloc and lib.my_free
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def test_a_current_tag_too_long_for_the_prefix_is_refused_not_cut(seed, abi):
    # "seed:" + 58 bytes fit in a tag (63); 59 would be cut, inside a UTF-8
    # character here, or make two tags one: refused, with the reason.
    import cumem
    from cumem import _C

    rec = Recorder()
    seed.init_module(rec.malloc, rec.free)
    try:
        _C.set_current_tag("a" * 58)
        p = abi.my_malloc(4096, 0, None)
        assert p and seed._live_allocations() == 1
        for tag in ("a" * 59, "x" + "\u00e9" * 31):
            _C.set_current_tag(tag)
            assert not abi.my_malloc(4096, 0, None)
            assert "at most 58 fit" in cumem.last_error()
        assert seed._live_allocations() == 1
        abi.my_free(p, 4096, 0, None)
    finally:
        _C.set_current_tag("default")


TAG_CHILD = """
import ctypes
from cumem import _C
inst = _C.default()
lib = ctypes.CDLL(next(p for p in open("/proc/self/maps").read().split() if "libcumem.so" in p))
lib.cumem_default.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
lib.cumem_alloc.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_int,
                            ctypes.c_char_p]
cm, p = ctypes.c_void_p(), ctypes.c_void_p()
assert lib.cumem_default(ctypes.byref(cm)) == 0
assert lib.cumem_alloc(cm, ctypes.byref(p), 4096, 0, b"bad\\xff\\xfe") == 0
assert "bad\\ufffd\\ufffd" in inst.tags(), inst.tags()
assert inst.query(p.value)["tag"] == "bad\\ufffd\\ufffd"
print("ok")
"""


def test_tags_that_are_not_utf8_are_read_with_replacement():
    # A C caller (or the environment) may name a tag in bytes that are not
    # UTF-8: tags() and query() must still answer. In a child process: the
    # tag stays in its default instance for good.
    import subprocess

    r = subprocess.run([sys.executable, "-c", TAG_CHILD], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
