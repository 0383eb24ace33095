"""The disk tier from Python, without PyTorch: tags with backup="disk" on a
host-backend Instance, the disk_dir option, a full disk, and the parts of
torch_memory_saver's enable_disk_backup / cpu_backup_backend that need no
tensor (its pause and resume run on the default instance)."""

import os
import resource
import signal

import pytest
from conftest import pattern

import cumem
from cumem import _C

MiB = 1 << 20


@pytest.fixture
def disk_dir(tmp_path):
    d = tmp_path / "backups"
    d.mkdir()
    return d


def test_round_trip_through_disk(disk_dir):
    with cumem.Instance(backend="host", disk_dir=disk_dir, copy_chunk=MiB) as inst:
        assert inst.disk_dir == os.path.realpath(disk_dir)
        inst.set_tag_options("w", backup="disk")
        sizes = [MiB, 3 * MiB + 5, 7 * MiB]
        ptrs = [inst.alloc(n, tag="w") for n in sizes] + [inst.alloc(2 * MiB, tag="h")]
        data = [pattern(n, seed=i) for i, n in enumerate(sizes + [2 * MiB])]
        for cycle in range(2):
            for p, d in zip(ptrs, data):
                inst.copy_to_device(p, d)
            inst.sleep(offload_tags=["w", "h"])  # one call, disk and host tags
            s = inst.stats("w")
            assert s["bytes_on_disk"] == s["bytes_allocated"] == s["bytes_backed_up"]
            assert s["bytes_host_held"] == 0 and s["bytes_mapped"] == 0
            assert inst.stats("h")["bytes_on_disk"] == 0
            assert inst.query(ptrs[0])["on_disk"] and not inst.query(ptrs[-1])["on_disk"]
            assert inst.backup_view(ptrs[0]) is None  # no host copy of a disk backup
            assert os.listdir(disk_dir) == []  # the files have no name
            inst.wake()
            assert inst.stats()["bytes_on_disk"] == 0
            for p, d in zip(ptrs, data):
                assert inst.copy_to_host(p, len(d)) == d
            data = [d[::-1] for d in data]  # new content for the next cycle


def test_disk_dir_is_checked(tmp_path, disk_dir):
    with pytest.raises(cumem.CumemError) as e:
        cumem.Instance(backend="host", disk_dir=tmp_path / "missing")
    assert e.value.code == _C.EINVAL and "missing" in str(e.value)
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(cumem.CumemError) as e:
        cumem.Instance(backend="host", disk_dir=str(tmp_path / "file"))
    assert "not a directory" in str(e.value)
    with cumem.Instance(backend="host", disk_dir=disk_dir) as inst:
        inst.set_disk_dir(None)
        assert inst.disk_dir is None
        inst.set_tag_options("w", backup="disk")
        p = inst.alloc(MiB, tag="w")
        inst.copy_to_device(p, b"\x07" * MiB)
        with pytest.raises(cumem.CumemError) as e:
            inst.sleep(offload_tags="w")
        assert e.value.code == _C.EINVAL and "disk_dir" in str(e.value)
        assert not inst.query(p)["asleep"]  # refused before anything happened
        with pytest.raises(cumem.CumemError):
            inst.set_disk_dir(tmp_path / "missing")
        inst.set_disk_dir(disk_dir)  # a path-like
        inst.sleep(offload_tags="w")
        inst.wake()
        assert inst.copy_to_host(p, MiB) == b"\x07" * MiB


def test_full_disk_keeps_everything_awake(disk_dir):
    # Every file limited to 2 MiB (SIGXFSZ ignored, so writes fail with
    # EFBIG): the 8 MiB disk allocation does not fit. Nothing of the call
    # sleeps, the host tag neither; with the limit lifted it all goes.
    with cumem.Instance(backend="host", disk_dir=disk_dir) as inst:
        inst.set_tag_options("w", backup="disk")
        pw, ph = inst.alloc(8 * MiB, tag="w"), inst.alloc(2 * MiB, tag="h")
        dw, dh = pattern(8 * MiB, 1), pattern(2 * MiB, 2)
        inst.copy_to_device(pw, dw)
        inst.copy_to_device(ph, dh)
        old = resource.getrlimit(resource.RLIMIT_FSIZE)
        old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 * MiB, old[1]))
        try:
            with pytest.raises(cumem.CumemError) as e:
                inst.sleep(offload_tags=["w", "h"])
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old)
            signal.signal(signal.SIGXFSZ, old_handler)
        assert e.value.code == _C.ENOSPC
        assert os.path.realpath(disk_dir) in str(e.value) and str(8 * MiB) in str(e.value)
        assert inst.stats()["bytes_mapped"] == 10 * MiB and inst.stats()["bytes_on_disk"] == 0
        assert inst.copy_to_host(pw, 8 * MiB) == dw and inst.copy_to_host(ph, 2 * MiB) == dh
        inst.sleep(offload_tags=["w", "h"])
        assert inst.stats()["bytes_on_disk"] == 8 * MiB
        inst.wake()
        assert inst.copy_to_host(pw, 8 * MiB) == dw and inst.copy_to_host(ph, 2 * MiB) == dh


# ---- torch_memory_saver ---------------------------------------------------------


def test_tms_region_checks_its_arguments():
    tms = cumem.torch_memory_saver
    with pytest.raises(ValueError, match="mutually exclusive"):
        with tms.region(enable_cpu_backup=True, enable_disk_backup=True):
            pass
    with pytest.raises(ValueError, match="requires enable_cpu_backup"):
        with tms.region(cpu_backup_backend="mmap"):
            pass
    with pytest.raises(ValueError, match="'pinned' or 'mmap'"):
        with tms.region(enable_cpu_backup=True, cpu_backup_backend="cuda"):
            pass
    with pytest.raises(ValueError, match="too long"):
        with tms.region(tag="x" * 60, enable_disk_backup=True):
            pass


def test_tms_pause_and_resume_a_disk_tag(tmp_path):
    # What region(enable_disk_backup=True) sets up, without a tensor: the
    # tag "tms+disk:<tag>" with backup "disk", and the directory.
    from cumem import _tms

    tms = cumem.torch_memory_saver
    inst = cumem.default()
    previous = inst.disk_dir
    d = tmp_path / "made" / "by" / "tms"
    tms.set_disk_backup_dir(str(d))  # created
    try:
        assert inst.disk_dir == os.path.realpath(d)
        itag = _tms._internal_tag("hostdisk", False, True)
        assert itag == "tms+disk:hostdisk"
        tms._use_disk(itag)
        assert inst.tag_options(itag)["backup"] == "disk"
        plain = _tms._internal_tag("hostdisk", False)
        p, q = inst.alloc(4 * MiB, tag=itag), inst.alloc(2 * MiB, tag=plain)
        data = pattern(4 * MiB, 3)
        inst.copy_to_device(p, data)
        tms.pause("hostdisk")
        assert inst.query(p)["on_disk"] and inst.query(q)["asleep"] and not inst.query(q)["backed_up"]
        assert inst.stats(itag)["bytes_on_disk"] == 4 * MiB
        tms.resume("hostdisk")
        assert inst.copy_to_host(p, 4 * MiB) == data
        assert inst.stats(itag)["bytes_on_disk"] == 0 and os.listdir(d) == []
        inst.free(p)
        inst.free(q)
    finally:
        inst.set_disk_dir(previous)


def test_tms_takes_its_own_directory_variable(tmp_path, monkeypatch):
    from cumem import _tms

    inst = cumem.default()
    previous = inst.disk_dir
    inst.set_disk_dir(None)
    monkeypatch.setenv("TMS_DISK_BACKUP_DIR", str(tmp_path / "tmsdir"))
    try:
        cumem.torch_memory_saver._use_disk(_tms._internal_tag("envdir", False, True))
        assert inst.disk_dir == os.path.realpath(tmp_path / "tmsdir")
    finally:
        inst.set_disk_dir(previous)
