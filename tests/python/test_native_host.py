"""The native Python API over the C core, on the host backend (no GPU, no
PyTorch): bit-exact sleep/wake, tags, errors, backups, a failed wake that
loses nothing."""

import threading

import pytest
from conftest import pattern

import cumem

MiB = 1 << 20


def write(inst, ptr, data):
    inst.copy_to_device(ptr, data)


def read(inst, ptr, n):
    return inst.copy_to_host(ptr, n)


def test_extension_loads():
    assert cumem.__version__ == cumem._C.VERSION
    assert issubclass(cumem.CumemError, RuntimeError)
    assert issubclass(cumem.CumemOutOfMemoryError, cumem.CumemError)
    assert cumem.strerror(cumem._C.ENOMEM).startswith("CUMEM_ENOMEM")
    assert cumem.backend() in ("cuda", "host")


def test_alloc_query_free(host):
    gran = host.device_info(0)["granularity"]
    p = host.alloc(3 * MiB + 1, tag="q")
    info = host.query(p)
    assert info["ptr"] == p
    assert info["requested"] == 3 * MiB + 1
    assert info["size"] >= info["requested"] and info["size"] % gran == 0
    assert info["tag"] == "q" and info["device"] == 0
    assert not info["asleep"] and not info["backed_up"]
    assert host.query(p + 5)["ptr"] == p  # any address inside
    host.free(p)
    with pytest.raises(cumem.CumemError) as e:
        host.query(p)
    assert e.value.code == cumem._C.ENOTFOUND
    c = host.backend_counters()
    assert c["reservations"] == c["handles"] == c["mappings"] == 0


def test_sleep_wake_bit_exact(host):
    sizes = {"weights": [MiB, 3 * MiB + 17, 64 * 1024], "kv": [2 * MiB, 5 * MiB]}
    data = {}
    for tag, ss in sizes.items():
        for i, n in enumerate(ss):
            p = host.alloc(n, tag=tag)
            data[p] = (tag, pattern(n, seed=len(data)))
            write(host, p, data[p][1])
    total = host.stats()["bytes_allocated"]
    weights = host.stats("weights")["bytes_allocated"]

    host.sleep(offload_tags="weights")  # tags None: every tag sleeps
    s = host.stats()
    assert s["bytes_asleep"] == total and s["bytes_mapped"] == 0
    assert s["bytes_backed_up"] == weights
    for p, (tag, _) in data.items():
        info = host.query(p)
        assert info["asleep"] and info["backed_up"] == (tag == "weights")
    with pytest.raises(cumem.CumemError):  # no memory behind it while asleep
        read(host, next(iter(data)), 16)

    host.wake()
    assert host.stats()["bytes_mapped"] == total
    for p, (tag, content) in data.items():
        assert host.query(p)["ptr"] == p
        if tag == "weights":
            assert read(host, p, len(content)) == content
    for p in data:
        host.free(p)
    assert host.stats()["allocations"] == 0


def test_discarded_reads_zero_with_zero_on_wake():
    with cumem.Instance(backend="host", zero_on_wake=1) as inst:
        p = inst.alloc(MiB, tag="kv")
        write(inst, p, b"\xff" * MiB)
        inst.sleep("kv")
        inst.wake("kv")
        assert read(inst, p, MiB) == bytes(MiB)
        inst.free(p)


def test_tags_sleep_and_wake_independently(host):
    a = host.alloc(MiB, tag="a")
    b = host.alloc(MiB, tag="b")
    da, db = pattern(MiB, 1), pattern(MiB, 2)
    write(host, a, da)
    write(host, b, db)
    host.sleep(["a"], ["a"])
    assert host.query(a)["asleep"] and not host.query(b)["asleep"]
    assert read(host, b, MiB) == db  # b untouched, still usable
    write(host, b, da)
    host.sleep(("b",), offload_tags=[])  # b discarded; a stays asleep
    host.wake("a")
    assert read(host, a, MiB) == da and host.query(b)["asleep"]
    host.wake(iter(["b"]))
    assert not host.query(b)["asleep"]


def test_unknown_tag_changes_nothing(host):
    p = host.alloc(MiB, tag="known")
    with pytest.raises(cumem.CumemError) as e:
        host.sleep(["known", "never-used"])
    assert e.value.code == cumem._C.ENOTAG and "never-used" in str(e.value)
    assert not host.query(p)["asleep"]


def test_bad_tag_lists(host):
    with pytest.raises(TypeError):
        host.sleep(5)
    with pytest.raises(TypeError):
        host.wake([b"bytes"])


def test_free_while_asleep(host):
    ps = [host.alloc(MiB, tag="t") for _ in range(3)]
    host.sleep("t", "t")
    for p in ps:
        host.free(p)
    assert host.stats() == dict.fromkeys(host.stats(), 0)
    c = host.backend_counters()
    assert c["reservations"] == c["handles"] == c["mappings"] == c["host_registrations"] == 0


def test_failed_wake_loses_nothing(faulty):
    ps = [faulty.alloc(MiB, tag="w") for _ in range(4)]
    content = {p: pattern(MiB, i) for i, p in enumerate(ps)}
    for p, d in content.items():
        write(faulty, p, d)
    faulty.sleep("w", "w")
    # The third physical allocation of the wake fails as if the GPU were full.
    faulty.fault_arm(3, "create", cumem._C.ENOMEM)
    with pytest.raises(RuntimeError) as e:
        faulty.wake("w")
    assert isinstance(e.value, cumem.CumemOutOfMemoryError)
    assert e.value.code == cumem._C.ENOMEM and "cumem_wake" in str(e.value)
    assert faulty.fault_injected() == 1
    assert faulty.stats("w")["bytes_backed_up"] == faulty.stats("w")["bytes_allocated"]
    faulty.fault_arm(0)
    faulty.wake("w")  # the retry restores everything
    for p, d in content.items():
        assert read(faulty, p, MiB) == d


def test_fault_instance_opens_on_the_automatic_backend():
    """Instance(fault=True) without a backend wraps the one "auto" picks
    (it used to fail with a bare CUMEM_EINVAL); a bad backend name raises
    with the name in the detail."""
    with cumem.Instance(fault=True) as inst:
        assert inst.backend in ("cuda", "host")
        p = inst.alloc(MiB)
        inst.fault_arm(1, "unmap")
        with pytest.raises(cumem.CumemError):
            inst.sleep()
        assert inst.fault_injected() == 1
        inst.fault_arm(0)
        inst.free(p)
    with pytest.raises(cumem.CumemError) as e:
        cumem.Instance(backend="no-such-backend", fault=True)
    assert e.value.code == cumem._C.EINVAL
    assert 'unknown backend "no-such-backend"' in str(e.value)


def test_failed_sleep_is_completed_by_a_retry(faulty):
    ps = [faulty.alloc(MiB, tag="w") for _ in range(4)]
    content = {p: pattern(MiB, 10 + i) for i, p in enumerate(ps)}
    for p, d in content.items():
        write(faulty, p, d)
    faulty.fault_arm(2, "unmap", cumem._C.EDRIVER)
    with pytest.raises(cumem.CumemError) as e:
        faulty.sleep("w", "w")
    assert e.value.code == cumem._C.EDRIVER
    faulty.fault_arm(0)
    faulty.sleep("w", "w")
    assert faulty.stats("w")["bytes_mapped"] == 0
    faulty.wake()
    for p, d in content.items():
        assert read(faulty, p, MiB) == d


def test_backup_preparation_and_retention():
    with cumem.Instance(backend="host", retain_backup=1) as inst:
        p = inst.alloc(2 * MiB, tag="w")
        size = inst.query(p)["size"]
        inst.prepare_backup("w")
        assert inst.stats("w")["bytes_host_held"] >= size
        inst.release_backup()
        assert inst.stats("w")["bytes_host_held"] == 0
        d = pattern(2 * MiB, 3)
        write(inst, p, d)
        inst.sleep("w", "w")
        inst.wake("w")
        assert inst.stats("w")["bytes_host_held"] >= size  # retained
        assert read(inst, p, 2 * MiB) == d
        inst.release_backup("w")
        assert inst.stats("w")["bytes_host_held"] == 0


def test_unmap_release_and_create_map(host):
    p = host.alloc(MiB, tag="one")
    host.unmap_release(p)
    assert host.query(p)["asleep"]
    host.unmap_release(p)  # already released: nothing to do
    host.create_map(p)
    assert not host.query(p)["asleep"]
    write(host, p, b"x" * 10)
    with pytest.raises(cumem.CumemError) as e:
        host.unmap_release(p + 4096)  # not the start of an allocation
    assert e.value.code == cumem._C.EINVAL  # as free(interior): one rule


def test_errors_are_not_sticky(host):
    with pytest.raises(cumem.CumemError) as e:
        host.free(0x1000)
    assert e.value.code == cumem._C.ENOTFOUND
    assert cumem.last_error()  # the detail of this thread's failure
    assert cumem.last_error() in str(e.value)
    p = host.alloc(MiB)  # the next call works
    host.free(p)
    with pytest.raises(cumem.CumemError) as e:
        host.alloc(1 << 62)
    assert e.value.code == cumem._C.E2BIG


def test_current_tag(host):
    assert cumem.current_tag() == "default"
    with cumem.using_tag("scoped"):
        assert cumem.current_tag() == "scoped"
        p = host.alloc(MiB)
    assert cumem.current_tag() == "default"
    assert host.query(p)["tag"] == "scoped"
    with pytest.raises(cumem.CumemError) as e:
        cumem.set_current_tag("x" * 100)
    assert e.value.code == cumem._C.EINVAL
    assert cumem.current_tag() == "default"

    seen = []  # the tag is per thread
    with cumem.using_tag("main"):
        t = threading.Thread(target=lambda: seen.append(cumem.current_tag()))
        t.start()
        t.join()
    assert seen == ["default"]


def test_threads_allocate_while_others_sleep(host):
    errors = []

    def worker(k):
        try:
            for i in range(20):
                p = host.alloc(64 * 1024, tag=f"thread{k}")
                write(host, p, bytes([k]) * 64)
                host.free(p)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    keep = host.alloc(MiB, tag="sleeper")
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for _ in range(10):
        host.sleep("sleeper", "sleeper")
        host.wake("sleeper")
    for t in threads:
        t.join()
    assert not errors
    assert host.stats()["allocations"] == 1
    host.free(keep)


def test_closed_instance_raises():
    inst = cumem.Instance(backend="host")
    inst.close()
    assert inst.closed
    with pytest.raises(ValueError):
        inst.alloc(MiB)
    inst.close()  # closing twice is fine
    with pytest.raises(ValueError):
        cumem.default().close()


def test_module_api_on_default_instance():
    """The module-level functions (the default instance: host where no GPU
    answers, cuda on a GPU machine) sleep and wake bit-exact."""
    w = cumem.alloc(3 * MiB, tag="pytest-native-w")
    k = cumem.alloc(MiB, tag="pytest-native-k")
    dw = pattern(3 * MiB, 5)
    cumem.copy_to_device(w, dw)
    cumem.memset(k, 7, MiB)
    assert cumem.copy_to_host(k, 4) == b"\x07" * 4
    tags = ["pytest-native-w", "pytest-native-k"]
    cumem.sleep(tags, offload_tags="pytest-native-w")
    assert cumem.stats("pytest-native-w")["bytes_backed_up"] == cumem.query(w)["size"]
    assert cumem.stats_by_tag()["pytest-native-k"]["bytes_asleep"] == cumem.query(k)["size"]
    cumem.wake(tags, retain_backup=False)  # backups given back in the background
    assert cumem.copy_to_host(w, 3 * MiB) == dw
    cumem.drain()
    assert cumem.stats("pytest-native-w")["bytes_host_held"] == 0
    assert set(tags) <= set(cumem.tags())
    cumem.free(w)
    cumem.free(k, stream=0)  # waits for the legacy default stream only


def test_tag_options_round_trip_and_validation(host):
    host.set_tag_options("later", skip_unchanged=True)
    assert "later" in host.tags()
    assert host.tag_options("later") == {"backup": "host", "skip_unchanged": 1, "prepare_ahead": -1}
    host.set_tag_options("later", backup="disk", prepare_ahead=False)
    assert host.tag_options("later") == {"backup": "disk", "skip_unchanged": 1, "prepare_ahead": 0}
    host.set_tag_options("later", skip_unchanged=-1)
    assert host.tag_options("later")["skip_unchanged"] == -1
    with pytest.raises(ValueError):
        host.set_tag_options("later", backup="tape")
    with pytest.raises(ValueError):
        host.set_tag_options("later", skip_unchanged=2)
    with pytest.raises(cumem.CumemError) as e:
        host.tag_options("never")
    assert e.value.code == cumem._C.ENOTAG
    assert host.tag_options("later")["backup"] == "disk"  # refusals changed nothing
