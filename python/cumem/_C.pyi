"""Type stubs of cumem._C, the CPython binding of the cumem core
(include/cumem.h). tests/python/test_stubs.py checks that every name here
exists in the module and every name of the module is here."""

import os
from types import TracebackType
from typing import Iterable, Optional, Union

# A tag list: None (every tag; no tag for offload_tags), one tag, or several.
# (A stub-only alias: the module has no such name.)
_Tags = Union[None, str, Iterable[str]]

LIBRARY: str
"""The file the core was loaded from (libcumem.so.0); PyTorch's
CUDAPluggableAllocator loads cumem_torch_malloc / cumem_torch_free from it."""
VERSION: str
"""The version of the loaded core, e.g. "0.2.0"."""
TAG_MAX: int
"""The longest tag, in bytes."""
OK: int

# The error codes (negative), from the core's CUMEM_ERRNO_MAP.
EINVAL: int
ENOMEM: int
ENOHOST: int
ENOTFOUND: int
ENOTAG: int
ENODEV: int
ENODRIVER: int
EDRIVER: int
E2BIG: int
ENOTSUP: int
ENOSPC: int
EBUSY: int
EFORKED: int
EIO: int

class CumemError(RuntimeError):
    """A cumem call failed; .code is the negative CUMEM_E* code."""

    code: int

class CumemOutOfMemoryError(CumemError):
    """Out of device memory (CUMEM_ENOMEM)."""

class Instance:
    """One cumem instance. Use default() for the process-wide one."""

    def __init__(
        self,
        backend: Optional[str] = None,
        *,
        chunk_size: Union[None, int, str] = None,
        zero_on_wake: Optional[int] = None,
        retain_backup: Optional[int] = None,
        copy_chunk: Union[None, int, str] = None,
        host_threads: Optional[int] = None,
        release_threads: Optional[int] = None,
        verbose: Optional[int] = None,
        fault: bool = False,
        disk_dir: Union[None, str, bytes, "os.PathLike[str]"] = None,
        prepare_ahead: Optional[str] = None,
        prepare_ahead_delay_ms: Optional[int] = None,
        numa: Union[None, int, str] = None,
        register_lock: Union[None, str, bytes, "os.PathLike[str]"] = None,
        skip_unchanged: Union[None, bool, int] = None,
    ) -> None: ...
    @property
    def backend(self) -> str:
        """The backend's name: "cuda" or "host"."""
    @property
    def closed(self) -> bool:
        """True after close()."""
    @property
    def disk_dir(self) -> Optional[str]:
        """Where tags with backup="disk" sleep (absolute path), or None."""
    def set_disk_dir(self, path: Union[None, str, bytes, "os.PathLike[str]"], /) -> None: ...
    def alloc(self, size: int, device: int = 0, tag: Optional[str] = None, peer_mask: int = 0) -> int: ...
    def free(self, ptr: int, stream: Optional[int] = None) -> None: ...
    def query(self, ptr: int, /) -> dict[str, Union[int, bool, str]]: ...
    def sleep(self, tags: _Tags = None, offload_tags: _Tags = None) -> None: ...
    def wake(self, tags: _Tags = None) -> None: ...
    def prepare_backup(self, tags: _Tags = None) -> None: ...
    def release_backup(self, tags: _Tags = None) -> None: ...
    def prepare_backup_async(self, tags: _Tags = None) -> None: ...
    def release_backup_async(self, tags: _Tags = None) -> None: ...
    def drain(self) -> None: ...
    def unmap_release(self, ptr: int, /) -> None: ...
    def create_map(self, ptr: int, /) -> None: ...
    def copy_to_device(self, dst: int, data: Union[bytes, bytearray, memoryview], /) -> None: ...
    def copy_to_host(self, src: int, n: int, /) -> bytes: ...
    def memset(self, dst: int, value: int, n: int, /) -> None: ...
    def set_tag_options(
        self,
        tag: str,
        *,
        backup: Optional[str] = None,
        skip_unchanged: Union[None, bool, int] = None,
        prepare_ahead: Union[None, bool, int] = None,
    ) -> None: ...
    def tag_options(self, tag: str, /) -> dict[str, Union[str, int]]: ...
    def stats(self, tag: Optional[str] = None) -> dict[str, int]: ...
    def tags(self) -> list[str]: ...
    def backend_counters(self) -> dict[str, int]: ...
    def device_count(self) -> int: ...
    def device_info(self, device: int = 0) -> dict[str, Union[str, int, bool]]: ...
    def backup_view(self, ptr: int, /) -> Optional[memoryview]: ...
    def fault_arm(self, n: int, op: Optional[str] = None, code: Optional[int] = None, persistent: bool = False) -> None: ...
    def fault_injected(self) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Instance": ...
    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
        /,
    ) -> None: ...

def default() -> Instance: ...
def set_current_tag(tag: Optional[str] = None, /) -> None: ...
def current_tag() -> str: ...
def last_error() -> str: ...
def strerror(code: int, /) -> str: ...
def err_name(code: int, /) -> str: ...
