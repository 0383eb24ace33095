"""Issue 13 through Python, on the host backend (no GPU): options validated
from keywords and the environment, close() racing other threads, a failed
close that keeps the instance, fork while a sleep runs, per-instance verbose,
messages (stale details, UTF-8, NUL in tags, the seed module's d_mem), stale
backups after a discarding sleep, and memoryviews of backups that outlive a
free. Scenarios that crashed the interpreter run in a child process, so that
a crash fails the test instead of ending the run."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import pattern

import cumem

MiB = 1 << 20
EINVAL = cumem._C.EINVAL
HERE = os.path.dirname(os.path.abspath(__file__))


def run_child(code, timeout=120, env=None):
    """Run code in a fresh interpreter; returns (returncode, output)."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **(env or {}), PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])),
    )
    return proc.returncode, proc.stdout + proc.stderr


# ---- item 1: options, from keywords and from the environment ---------------

# The contract per option: (name, env variable, kind, smallest allowed,
# largest allowed, just below, just above) with Python ints in bytes for
# sizes; kind "size" / "int" / "str".
T = 1 << 40
SPECS = [
    ("chunk_size", "CUMEM_CHUNK_SIZE_MB", "size", 0, T, None, T + 1),
    ("zero_on_wake", "CUMEM_ZERO_ON_WAKE", "int", 0, 1, -1, 2),
    ("retain_backup", "CUMEM_RETAIN_BACKUP", "int", 0, 1, -1, 2),
    ("copy_chunk", "CUMEM_COPY_CHUNK_MB", "size", 4096, T, 4095, T + 1),
    ("host_threads", "CUMEM_HOST_THREADS", "int", 1, 256, 0, 257),
    ("release_threads", "CUMEM_RELEASE_THREADS", "int", 1, 64, 0, 65),
    ("verbose", "CUMEM_VERBOSE", "int", 0, 1, -1, 2),
    ("prepare_ahead_delay_ms", "CUMEM_PREPARE_AHEAD_DELAY_MS", "int", 0, 86400000, -1, 86400001),
    ("numa", "CUMEM_NUMA", "int", -1, 1, -2, 2),
    ("skip_unchanged", "CUMEM_SKIP_UNCHANGED", "int", 0, 1, -1, 2),
]


def keyword_trials(spec):
    name, env, kind, lo, hi, below, above = spec
    trials = [
        ("garbage", "garbage", False),
        ("zero", 0, lo <= 0 <= hi),
        ("one", 1, lo <= 1 <= hi and (kind != "size" or name == "chunk_size")),
        ("negative", -1, lo <= -1),
        ("overflow", 2**64, False),
        ("huge", 2**70, False),
        ("max", 2**64 - 1 if kind == "size" else 2**31 - 1, False),
        ("lo", lo, True),
        ("hi", hi, True),
    ]
    if below is not None:
        trials.append(("below", below, False))
    trials.append(("above", above, False))
    if kind == "size":
        trials += [("unit", "64M", True), ("nan", "nan", False), ("exponent", "1e3", False)]
    if name == "numa":
        trials.append(("auto", "auto", True))
    return [pytest.param(name, value, ok, id=f"{name}-{label}") for label, value, ok in trials]


KEYWORD_CASES = [case for spec in SPECS for case in keyword_trials(spec)]


@pytest.mark.parametrize("name,value,ok", KEYWORD_CASES)
def test_every_option_through_keywords(name, value, ok, monkeypatch):
    for spec in SPECS:
        monkeypatch.delenv(spec[1], raising=False)
    if ok:
        with cumem.Instance(backend="host", **{name: value}) as inst:
            p = inst.alloc(MiB, tag="w")
            inst.copy_to_device(p, pattern(MiB, 3))
            inst.sleep(offload_tags="w")
            inst.wake()
            assert inst.copy_to_host(p, MiB) == pattern(MiB, 3)
            inst.free(p)
    else:
        with pytest.raises(cumem.CumemError) as e:
            cumem.Instance(backend="host", **{name: value})
        assert e.value.code == EINVAL
        assert name in str(e.value) and "allowed" in str(e.value)


ENV_CASES = [
    pytest.param(env, text, ok, id=f"{env}={text}")
    for (_, env, kind, lo, *_rest) in SPECS
    for text, ok in [
        ("garbage", False),
        ("-1", lo <= -1),
        ("99999999999999999999", False),
        ("18446744073709551615", False),
        ("1" if kind == "int" else "64", True),
    ]
]


@pytest.mark.parametrize("env,text,ok", ENV_CASES)
def test_every_option_from_the_environment(env, text, ok, monkeypatch):
    monkeypatch.setenv(env, text)
    if ok:
        cumem.Instance(backend="host").close()
    else:
        with pytest.raises(cumem.CumemError) as e:
            cumem.Instance(backend="host")
        assert e.value.code == EINVAL
        assert env in str(e.value) and text[:20] in str(e.value)
        # A keyword for that option replaces the malformed value.
        name = next(s[0] for s in SPECS if s[1] == env)
        good = 1 if name in ("host_threads", "release_threads") else 4096 if name == "copy_chunk" else 0
        cumem.Instance(backend="host", **{name: good}).close()


def test_options_keyword_errors():
    with pytest.raises(cumem.CumemError) as e:
        cumem.Instance(backend="host", no_such_option=1)
    assert e.value.code == EINVAL and "no_such_option" in str(e.value) and "copy_chunk" in str(e.value)
    with pytest.raises(TypeError):
        cumem.Instance(backend="host", copy_chunk=1.5)
    with pytest.raises(cumem.CumemError) as e:
        cumem.Instance(backend="bogus")
    assert e.value.code == EINVAL and "auto, cuda or host" in str(e.value)
    with pytest.raises(TypeError):
        cumem.Instance("host", backend="host")
    with cumem.Instance(backend="host", copy_chunk="1.5M", verbose=False, retain_backup=True) as inst:
        assert inst.backend == "host"


# ---- items 2 and 3: close() racing other threads; a failed close -----------


def test_close_never_frees_under_running_calls():
    # In a child (close_race.py): the old code crashed or hung here.
    rc, out = run_child("import close_race; close_race.run('host', 256 << 20, 1 << 20)")
    assert rc == 0 and "OK" in out, out


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_failed_close_keeps_the_instance():
    before = open_fds()
    inst = cumem.Instance(backend="host", fault=True)
    ptrs = [inst.alloc(2 * MiB, tag="w") for _ in range(3)]
    inst.copy_to_device(ptrs[0], pattern(MiB, 1))
    inst.fault_arm(1, "release", persistent=True)
    with pytest.raises(cumem.CumemError):
        inst.close()
    assert not inst.closed
    inst.fault_arm(0)
    # Still usable: nothing it held is lost.
    assert inst.stats()["allocations"] >= 1
    inst.close()  # the retry releases everything
    assert inst.closed
    assert open_fds() == before  # no memfd left open


# ---- items 4 and 5: fork while another thread is inside sleep --------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads (3.12)
def test_fork_while_sleeping_gives_eforked():
    inst = cumem.Instance(backend="host")
    p = inst.alloc(128 * MiB, tag="big")
    inst.memset(p, 1, 128 * MiB)
    stop = threading.Event()

    def cycle():
        while not stop.is_set():
            inst.sleep(offload_tags="big")
            inst.wake()

    t = threading.Thread(target=cycle)
    t.start()
    try:
        time.sleep(0.05)
        pid = os.fork()
        if pid == 0:  # the child: one thread, a copy of the instance
            code = 3
            try:
                try:
                    inst.stats()
                    code = 1
                except cumem.CumemError as e:
                    code = 0 if e.code == cumem._C.EFORKED else 2
                # A new instance works in the child (host backend).
                with cumem.Instance(backend="host") as child:
                    q = child.alloc(MiB)
                    child.free(q)
            except BaseException:
                code = 4
            os._exit(code)
        deadline = time.time() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.time() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("the child hung on its first call after fork()")
            time.sleep(0.01)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    finally:
        stop.set()
        t.join()
        inst.close()


# ---- item 6: verbose per instance -------------------------------------------


def cycle_once(inst):
    p = inst.alloc(MiB, tag="v")
    inst.sleep(offload_tags="v")
    inst.wake()
    inst.free(p)


def test_verbose_is_per_instance(capfd, monkeypatch):
    monkeypatch.delenv("CUMEM_VERBOSE", raising=False)
    capfd.readouterr()
    with cumem.Instance(backend="host", verbose=1) as loud:
        cycle_once(loud)
    err = capfd.readouterr().err
    assert "cumem: sleep of 1 allocations" in err and "cumem: wake of" in err
    with cumem.Instance(backend="host", verbose=0) as quiet:
        cycle_once(quiet)
    assert capfd.readouterr().err == ""


# ---- item 7: messages -------------------------------------------------------


def test_no_stale_detail_after_auto_open():
    with pytest.raises(cumem.CumemError):
        cumem.Instance(backend="host").alloc(0)
    before = cumem.last_error()
    assert "size 0" in before
    inst = cumem.Instance(backend="auto", fault=True)
    assert cumem.last_error() == before
    inst.close()
    cumem.Instance(backend="auto").close()
    assert cumem.last_error() == before


def test_utf8_details_decode(host):
    tag = "a" + "é" * 40  # byte 20 is the first half of an é
    with pytest.raises(cumem.CumemError) as e:
        host.alloc(MiB, tag=tag)
    assert "longer than" in str(e.value)
    detail = cumem.last_error()  # raised UnicodeDecodeError before
    assert "longer than" in detail and "\ufffd" not in detail
    with pytest.raises(cumem.CumemError):
        cumem.Instance(backend="€" * 300)
    assert "unknown" in cumem.last_error() or "backend" in cumem.last_error()


def test_nul_in_strings_is_refused(host):
    p = host.alloc(MiB, tag="a")
    current = cumem.current_tag()
    for call in (
        lambda: host.alloc(MiB, tag="a\0b"),
        lambda: host.sleep(["a\0b"]),
        lambda: host.sleep(None, "a\0b"),
        lambda: host.wake("a\0b"),
        lambda: host.stats("a\0b"),
        lambda: host.tag_options("a\0b"),
        lambda: host.set_tag_options("a\0b", backup="host"),
        lambda: host.set_tag_options("a", backup="host\0x"),
        lambda: cumem.set_current_tag("a\0b"),
        lambda: cumem.Instance(backend="host\0x"),
    ):
        with pytest.raises(ValueError):
            call()
    assert cumem.current_tag() == current
    assert host.tags() == ["a"]  # no tag "a" was made of "a\0b"
    assert not host.query(p)["asleep"]


def test_strerror_of_values_outside_int():
    for code in (2**40, -(2**40), 2**70, -(2**70), 2**31, -(2**31) - 1):
        assert "unknown" in cumem.strerror(code)
        assert cumem._C.err_name(code) == "CUMEM_E?"
    assert cumem.strerror(cumem._C.EINVAL).startswith("CUMEM_EINVAL")


def test_seed_module_refuses_bad_addresses():
    from cumem import cumem_allocator as seed

    for d_mem in (2**70, 2**64, -1, 0):
        for call in (seed.python_create_and_map, seed.python_unmap_and_release):
            with pytest.raises(ValueError) as e:
                call(0, MiB, d_mem, 0)
            assert "d_mem" in str(e.value)
    with pytest.raises(ValueError) as e:
        seed.python_create_and_map(-1, MiB, 4096, 0)
    assert "device" in str(e.value)
    with pytest.raises(TypeError):
        seed.python_create_and_map(0, MiB, "0x1000", 0)


# ---- item 8: no stale backup after a discarding sleep -----------------------


def test_discarding_sleep_leaves_no_stale_backup(host):
    p = host.alloc(2 * MiB, tag="w")
    host.copy_to_device(p, pattern(2 * MiB, 5))
    host.sleep(offload_tags="w")
    host.wake()
    view = host.backup_view(p)
    assert view is not None and bytes(view[:64]) == pattern(2 * MiB, 5)[:64]
    view.release()
    host.sleep()  # discard only
    assert host.backup_view(p) is None  # returned the old content before
    st = host.stats("w")
    assert st["bytes_backed_up"] == 0 and st["bytes_host_held"] == 2 * MiB  # kept for reuse
    host.release_backup("w")  # while asleep: could not before
    assert host.stats("w")["bytes_host_held"] == 0
    host.wake()
    host.free(p)


# ---- item 9: a memoryview of a backup outlives the free ---------------------


def test_backup_view_outlives_free():
    # In a child: the old code died with SIGSEGV here.
    rc, out = run_child(
        """
        import ctypes, cumem
        MiB = 1 << 20
        data = bytes(range(256)) * (2 * MiB // 256)

        inst = cumem.Instance(backend="host")
        p = inst.alloc(2 * MiB, tag="w")
        inst.copy_to_device(p, data)
        inst.sleep(offload_tags="w")
        view = inst.backup_view(p)
        part = view[MiB:]          # a slice keeps it alive too
        inst.free(p)
        assert bytes(view) == data
        inst.close()
        assert bytes(part) == data[MiB:]
        view.release()
        try:
            view[0]
            raise AssertionError("a released view was readable")
        except ValueError:
            pass
        assert bytes(part[:4]) == data[MiB:MiB + 4]
        del part

        # Freed from C, as PyTorch frees (cumem_torch_free: no Python).
        lib = ctypes.CDLL(cumem._C.__file__)
        lib.cumem_torch_free.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
        q = cumem.alloc(2 * MiB, tag="t")
        cumem.copy_to_device(q, data)
        cumem.sleep("t", offload_tags="t")
        view = cumem.default().backup_view(q)
        lib.cumem_torch_free(q, 2 * MiB, 0, None)
        assert bytes(view) == data
        del view
        print("OK")
        """,
        env={"CUMEM_BACKEND": "host"},
    )
    assert rc == 0 and "OK" in out, out


def test_python_arguments_that_would_wrap_or_pass_as_true_are_refused():
    with cumem.Instance(backend="host") as inst:
        for mask in (2**64 + 1, 2**70, -(2**64) + 1, -1):  # K would wrap these to a mask
            with pytest.raises(ValueError, match="peer_mask"):
                inst.alloc(4096, tag="w", peer_mask=mask)
        with pytest.raises(TypeError, match="peer_mask"):
            inst.alloc(4096, tag="w", peer_mask=True)
        assert inst.stats()["allocations"] == 0
        for value in ("no", 2.5, "yes", 1, 0):  # a string is "true" to Python; only a bool says yes or no
            with pytest.raises((TypeError, ValueError), match="prepare_ahead"):
                inst.set_tag_options("w", prepare_ahead=value)
        inst.set_tag_options("w", prepare_ahead=False, skip_unchanged=-1)
        assert inst.tag_options("w")["prepare_ahead"] == 0
        p = inst.alloc(4096, tag="w")
        for value in (256, -1):  # not a byte: refused, not written as value & 0xff
            with pytest.raises(ValueError, match="byte"):
                inst.memset(p, value, 1)
        inst.memset(p, 255, 4096)
        assert inst.copy_to_host(p, 4096) == b"\xff" * 4096
        inst.free(p)
    with pytest.raises(TypeError, match="fault"):
        cumem.Instance(backend="host", fault="x")
