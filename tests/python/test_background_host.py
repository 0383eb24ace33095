"""The background worker from Python, on the host backend (no GPU, no
PyTorch): backups given back after a wake without retention, pinned ahead
(option, tag option, prepare_backup_async), and a failure in the background
reported once by the next call, with nothing lost."""

import time

import pytest
from conftest import pattern

import cumem

MiB = 1 << 20


def wait_for(cond, seconds=10):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.001)
    return False


def test_wake_without_retention_gives_back_after_returning():
    with cumem.Instance(backend="host", retain_backup=0, copy_chunk=2 * MiB) as inst:
        p = inst.alloc(16 * MiB, tag="w")
        d = pattern(16 * MiB, 1)
        inst.copy_to_device(p, d)
        inst.sleep("w", "w")
        assert inst.stats("w")["bytes_host_pinned"] == 16 * MiB
        inst.wake("w")
        assert inst.backup_view(p) is None  # spent at once
        assert inst.copy_to_host(p, 16 * MiB) == d
        # Nobody calls: the worker gives it all back.
        assert wait_for(lambda: inst.stats("w")["bytes_host_held"] == 0)
        assert inst.backend_counters()["host_registrations"] == 0
        inst.drain()


def test_release_backup_async_and_drain():
    with cumem.Instance(backend="host", retain_backup=1) as inst:
        p = inst.alloc(4 * MiB, tag="w")
        inst.sleep("w", "w")
        inst.wake("w")
        assert inst.stats("w")["bytes_host_held"] == 4 * MiB  # retained
        inst.release_backup_async("w")
        inst.drain()
        assert inst.stats("w")["bytes_host_held"] == 0
        inst.free(p)


def test_prepare_ahead_option_pins_listed_tags():
    with cumem.Instance(backend="host", prepare_ahead="w,x", prepare_ahead_delay_ms=0) as inst:
        w = inst.alloc(6 * MiB, tag="w")
        k = inst.alloc(4 * MiB, tag="kv")
        assert wait_for(lambda: inst.stats("w")["bytes_host_pinned"] == 6 * MiB)
        assert inst.stats("kv")["bytes_host_held"] == 0
        inst.set_tag_options("kv", prepare_ahead=True)  # a tag's own option: for new allocations
        k2 = inst.alloc(2 * MiB, tag="kv")
        assert wait_for(lambda: inst.stats("kv")["bytes_host_pinned"] == 2 * MiB)
        d = pattern(6 * MiB, 2)
        inst.copy_to_device(w, d)
        inst.sleep(offload_tags="w")
        inst.wake()
        assert inst.copy_to_host(w, 6 * MiB) == d
        for p in (w, k, k2):
            inst.free(p)


def test_prepare_backup_async_pins_at_once():
    with cumem.Instance(backend="host", prepare_ahead="", prepare_ahead_delay_ms=60000) as inst:
        p = inst.alloc(8 * MiB, tag="w")
        inst.prepare_backup_async("w")
        assert wait_for(lambda: inst.stats("w")["bytes_host_pinned"] == 8 * MiB)
        with pytest.raises(cumem.CumemError) as e:
            inst.prepare_backup_async("never-used")
        assert e.value.code == cumem._C.ENOTAG
        inst.free(p)


def test_failure_in_the_background_is_raised_once_and_loses_nothing():
    with cumem.Instance(backend="host", retain_backup=0, copy_chunk=2 * MiB, fault=True) as inst:
        p = inst.alloc(8 * MiB, tag="w")
        d = pattern(8 * MiB, 3)
        inst.copy_to_device(p, d)
        inst.sleep("w", "w")
        # The wake itself unregisters nothing: the first unregistration
        # after it is the worker's (or drain's) first step.
        inst.fault_arm(1, "host_unregister")
        inst.wake("w")
        with pytest.raises(cumem.CumemError) as e:
            inst.drain()
        assert e.value.code == cumem._C.EDRIVER
        assert "background worker" in str(e.value)
        inst.fault_arm(0)
        inst.drain()  # reported once
        assert inst.stats("w")["bytes_host_held"] == 8 * MiB  # held, accounted
        assert inst.copy_to_host(p, 8 * MiB) == d
        inst.sleep("w", "w")  # reuses the held backup
        inst.wake("w")
        assert inst.copy_to_host(p, 8 * MiB) == d
        inst.drain()
        assert inst.stats("w")["bytes_host_held"] == 0
        inst.free(p)
        assert inst.backend_counters()["host_registrations"] == 0


def test_verbose_prints_where_an_adapter_call_went(capsys, monkeypatch):
    """CUMEM_VERBOSE=1: each adapter call prints its steps (here without
    PyTorch: CuMemAllocator with no tag yet sleeps nothing)."""
    from cumem import _timing

    monkeypatch.setattr(_timing, "VERBOSE", True)
    cumem.CuMemAllocator().sleep()
    err = capsys.readouterr().err
    assert "cumem: CuMemAllocator.sleep:" in err and "ms sweep" in err and "ms in all" in err
    monkeypatch.setattr(_timing, "VERBOSE", False)
    cumem.CuMemAllocator().wake_up()
    assert capsys.readouterr().err == ""


VERBOSE_CHILD = """
import sys, time
import cumem
with cumem.Instance(backend="host", verbose=int(sys.argv[1]), retain_backup=0) as inst:
    p = inst.alloc(8 << 20, tag="w")
    inst.prepare_backup_async("w")
    inst.drain()
    inst.sleep("w", "w")
    inst.wake("w")
    time.sleep(0.3)  # the worker gives the backup back, then is idle
    inst.drain()
"""


@pytest.mark.parametrize("verbose,env", [(0, "1"), (1, "0")])
def test_the_background_worker_logs_as_its_instance(verbose, env):
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", VERBOSE_CHILD, str(verbose)], capture_output=True, text=True,
                       env={**os.environ, "CUMEM_VERBOSE": env}, timeout=60)
    assert r.returncode == 0, r.stderr
    assert ("background worker" in r.stderr) is bool(verbose), r.stderr
