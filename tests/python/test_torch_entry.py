"""The PyTorch entry points exported by libcumem.so.0 (cumem._C.LIBRARY), called as PyTorch's
CUDAPluggableAllocator calls them (through the C ABI), without PyTorch."""

import ctypes

import cumem
import cumem._C

MiB = 1 << 20


def entry_points():
    lib = ctypes.CDLL(cumem._C.LIBRARY)
    malloc = lib.cumem_torch_malloc
    malloc.restype = ctypes.c_void_p
    malloc.argtypes = [ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
    free = lib.cumem_torch_free
    free.restype = None
    free.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
    return malloc, free


def test_malloc_free_use_the_default_instance_and_current_tag():
    malloc, free = entry_points()
    with cumem.using_tag("pytest-torch-entry"):
        p = malloc(3 * MiB, 0, None)
    assert p
    info = cumem.query(p)
    assert info["tag"] == "pytest-torch-entry" and info["requested"] == 3 * MiB
    before = cumem.stats("pytest-torch-entry")["allocations"]
    free(p, 3 * MiB, 0, None)
    assert cumem.stats("pytest-torch-entry")["allocations"] == before - 1


def test_failed_malloc_returns_null_with_the_cause():
    malloc, free = entry_points()
    assert malloc(-1, 0, None) is None
    assert "size" in cumem.last_error()
    assert malloc(1 << 62, 0, None) is None  # more than the device has
    assert cumem.last_error()
    assert malloc(MiB, 999, None) is None  # no such device
    free(None, 0, 0, None)  # a no-op, as for PyTorch's free(nullptr)
    p = malloc(MiB, 0, None)  # nothing sticky
    assert p
    free(p, MiB, 0, None)


def test_free_of_an_unknown_pointer_is_harmless():
    malloc, free = entry_points()
    free(0x1000, 4096, 0, None)
    assert "not a live cumem allocation" in cumem.last_error()
