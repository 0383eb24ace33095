"""torch_memory_saver's backup choices on a GPU with PyTorch: disk backups
(region(enable_disk_backup=True)), cpu_backup_backend="pinned" / "mmap",
get_cpu_backup(zero_copy=...) and retention."""

import os
import time
import resource
import signal

import pytest
from conftest import GiB, free_gpu_bytes, release_torch_cache, requires_cuda

pytestmark = requires_cuda

MiB = 1 << 20


@pytest.fixture(scope="session")
def disk_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cumem-disk")


@pytest.fixture
def tms(disk_dir):
    from cumem import torch_memory_saver

    # The directory stays set after the test: the regions' pools keep cached
    # blocks of the disk tags, and a later pause of every tag backs them up
    # too (without a directory it would be refused).
    torch_memory_saver.set_disk_backup_dir(str(disk_dir))
    yield torch_memory_saver
    torch_memory_saver.retain_cpu_backup = False
    torch_memory_saver.resume()  # leave nothing paused for the next test
    release_torch_cache()


def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_disk_backup_round_trips_bit_exact(tms, disk_dir):
    import cumem
    import torch

    with tms.region(tag="dsk", enable_disk_backup=True):
        w = torch.randn(96 * MiB, device="cuda")  # 384 MiB: many staging pieces
        b = torch.randint(0, 255, (3 * MiB + 7,), dtype=torch.uint8, device="cuda")
    with tms.region(tag="dsk", enable_cpu_backup=True):
        c = torch.randn(8 * MiB, device="cuda")
    with tms.region(tag="dsk"):
        kv = torch.ones(64 * MiB, device="cuda")
    ptrs = [t.data_ptr() for t in (w, b, c, kv)]
    for cycle in range(3):
        w.add_(cycle)
        expected = [w.cpu(), b.cpu(), c.cpu()]
        before, rss_before = free_gpu_bytes(), rss()
        tms.pause("dsk")
        freed, rss_after = free_gpu_bytes() - before, rss() - rss_before
        disk = cumem.stats("tms+disk:dsk")
        assert disk["bytes_on_disk"] >= w.nbytes + b.nbytes and disk["bytes_host_held"] == 0
        assert freed >= 0.95 * (w.nbytes + b.nbytes + c.nbytes + kv.nbytes)
        assert rss_after < w.nbytes / 2  # no host copy of the disk backups
        assert tms.get_cpu_backup(w) is None  # on disk: no CPU view
        assert os.listdir(disk_dir) == []  # unnamed files
        tms.resume("dsk")
        assert [t.data_ptr() for t in (w, b, c, kv)] == ptrs
        for t, e in zip((w, b, c), expected):
            assert torch.equal(t.cpu(), e)
        assert cumem.stats("tms+disk:dsk")["bytes_on_disk"] == 0


def test_full_disk_pause_raises_and_keeps_tensors(tms):
    import cumem
    import torch

    with tms.region(tag="full", enable_disk_backup=True):
        w = torch.randn(64 * MiB, device="cuda")  # 256 MiB
    with tms.region(tag="full"):
        kv = torch.full((16 * MiB,), 5.0, device="cuda")
    expected = w.cpu()
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * MiB, old[1]))
    try:
        with pytest.raises(cumem.CumemError) as e:
            tms.pause("full")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)
    assert e.value.code == cumem._C.ENOSPC
    assert cumem.stats("tms+disk:full")["bytes_asleep"] == 0
    assert cumem.stats("tms:full")["bytes_asleep"] == 0  # nothing of the call slept
    assert torch.equal(w.cpu(), expected) and kv.sum().item() == 5.0 * kv.numel()
    tms.pause("full")  # room again
    tms.resume("full")
    assert torch.equal(w.cpu(), expected)


@pytest.mark.parametrize("kind", ["pinned", "mmap"])
def test_cpu_backup_backends_round_trip_and_give_rss_back(tms, kind):
    import torch

    n = GiB // 4  # float32 elements: 1 GiB
    with tms.region(tag="k" + kind, enable_cpu_backup=True, cpu_backup_backend=kind):
        w = torch.randn(n, device="cuda")
    expected = w[:: 1 << 16].cpu()
    base = rss()
    tms.pause("k" + kind)
    assert rss() - base >= 0.9 * w.nbytes  # the backup is in host memory
    tms.resume("k" + kind)  # not retained: given back (munmap) for both kinds, in the
    deadline = time.monotonic() + 1.0  # background, within a second of the resume (issue 9)
    while rss() - base >= 0.25 * w.nbytes and time.monotonic() < deadline:
        time.sleep(0.005)
    assert rss() - base < 0.25 * w.nbytes
    assert torch.equal(w[:: 1 << 16].cpu(), expected)


def test_zero_copy_backup_is_the_backup_and_a_copy_is_not(tms):
    import torch

    tms.retain_cpu_backup = True
    with tms.region(tag="zc", enable_cpu_backup=True):
        w = torch.arange(4096, dtype=torch.float32, device="cuda")
    tms.pause("zc")
    copy = tms.get_cpu_backup(w)
    view = tms.get_cpu_backup(w, zero_copy=True)
    assert torch.equal(copy, view) and view.shape == w.shape and view.dtype == w.dtype
    copy[0] = -1.0  # a copy is independent
    assert tms.get_cpu_backup(w)[0].item() == 0.0
    view[1] = -2.0  # a zero-copy view writes the backup itself, which resume restores
    tms.resume("zc")
    assert w[1].item() == -2.0 and w[0].item() == 0.0
    assert tms.get_cpu_backup(w)[1].item() == -2.0  # retained after resume
    tms.retain_cpu_backup = False
    tms.pause("zc")
    tms.resume("zc")
    assert tms.get_cpu_backup(w) is None  # given back at resume
