"""Preload hook mode without PyTorch or a GPU: finding the interposer,
configure_subprocess, hook_mode, and regions steered from Python.

The interposer only works in a process that starts with it in LD_PRELOAD, so
most tests run a child Python with LD_PRELOAD=libcumem_preload.so on the host
backend. Its CUDA runtime is the stand-in tests/preload/fake_cudart.c, loaded
with ctypes (RTLD_LOCAL, as Python loads extensions); the child calls
cudaMalloc through the process's global scope, which is what a library
linked with the runtime does. CTest names the stand-in and the interposer
(CUMEM_TEST_CUDART, CUMEM_TEST_PRELOAD); without them those tests skip.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import cumem
from cumem import _preload, _tms

CUDART = os.environ.get("CUMEM_TEST_CUDART")
PRELOAD = os.environ.get("CUMEM_TEST_PRELOAD")
needs_build = pytest.mark.skipif(
    not (CUDART and PRELOAD and os.path.isfile(CUDART) and os.path.isfile(PRELOAD)),
    reason="needs CUMEM_TEST_CUDART and CUMEM_TEST_PRELOAD (set by CTest) naming built files",
)

# The child's prelude: the stand-in runtime, and cudaMalloc/cudaFree as a
# program linked with the runtime reaches them (the interposer's).
PRELUDE = """
import ctypes, json, os, sys, threading
import cumem
from cumem import _preload, _tms, torch_memory_saver
fake = ctypes.CDLL(os.environ["CUMEM_TEST_CUDART"])
fake.fake_cudart_owns.argtypes = [ctypes.c_void_p]
fake.fake_cudart_calls.argtypes = [ctypes.c_char_p]
fake.fake_cudart_calls.restype = ctypes.c_long
glob = ctypes.CDLL(None)
glob.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
glob.cudaFree.argtypes = [ctypes.c_void_p]
def malloc(n):
    p = ctypes.c_void_p()
    rc = glob.cudaMalloc(ctypes.byref(p), n)
    return rc, p.value
out = {}
"""


def _shared_core():
    """Whether cumem._C links libcumem.so.0 (one core per process), seen from
    a process without the interposer."""
    code = "import cumem; print(any('libcumem.so' in l for l in open('/proc/self/maps')))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return r.stdout.strip() == "True"


def run_child(body, preload=True, **env):
    """Run PRELUDE + body in a child Python; body fills `out`; returns it."""
    e = dict(os.environ, CUMEM_BACKEND="host", **env)
    for k in ("LD_PRELOAD", "CUMEM_PRELOAD", "TMS_INIT_ENABLE", "TMS_INIT_ENABLE_CPU_BACKUP"):
        if k not in env:
            e.pop(k, None)
    if preload:
        e["LD_PRELOAD"] = PRELOAD
    code = PRELUDE + textwrap.dedent(body) + "\nprint('RESULT' + json.dumps(out))\n"
    r = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT")]
    assert r.returncode == 0 and lines, f"child failed (rc {r.returncode}):\n{r.stdout}\n{r.stderr}"
    return json.loads(lines[-1][len("RESULT"):])


# ---- in this process (no interposer) ----------------------------------------------


def _expected_library():
    # The package's own copy when it ships one (pip install), else the one
    # the CMake build tree that the package was built into holds.
    packaged = os.path.join(os.path.dirname(cumem.__file__), "libcumem_preload.so")
    return packaged if os.path.isfile(packaged) else PRELOAD


@needs_build
def test_preload_library_is_found_next_to_the_package_or_in_the_build_tree(monkeypatch):
    monkeypatch.delenv("CUMEM_PRELOAD_LIBRARY", raising=False)
    assert os.path.samefile(cumem.preload_library(), _expected_library())


def test_preload_library_honours_the_environment(tmp_path, monkeypatch):
    lib = tmp_path / "libcumem_preload.so"
    lib.write_bytes(b"")
    monkeypatch.setenv("CUMEM_PRELOAD_LIBRARY", str(lib))
    assert cumem.preload_library() == str(lib)
    monkeypatch.setenv("CUMEM_PRELOAD_LIBRARY", str(tmp_path / "missing.so"))
    with pytest.raises(FileNotFoundError, match="missing.so"):
        cumem.preload_library()


def test_configure_subprocess_prepends_the_library_and_restores(tmp_path, monkeypatch):
    lib = tmp_path / "libcumem_preload.so"
    lib.write_bytes(b"")
    monkeypatch.setenv("CUMEM_PRELOAD_LIBRARY", str(lib))
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    with cumem.configure_subprocess():
        assert os.environ["LD_PRELOAD"] == str(lib)
    assert "LD_PRELOAD" not in os.environ

    monkeypatch.setenv("LD_PRELOAD", "/a/liba.so /b/libb.so")
    with cumem.torch_memory_saver.configure_subprocess():
        assert os.environ["LD_PRELOAD"] == f"{lib}:/a/liba.so:/b/libb.so"
    assert os.environ["LD_PRELOAD"] == "/a/liba.so /b/libb.so"

    # An interposer already there is kept, not doubled (one per process).
    monkeypatch.setenv("LD_PRELOAD", "/other/libcumem_preload.so")
    with cumem.configure_subprocess():
        assert os.environ["LD_PRELOAD"] == "/other/libcumem_preload.so"

    # Restored even when the block raises.
    monkeypatch.delenv("LD_PRELOAD")
    with pytest.raises(KeyError):
        with cumem.configure_subprocess():
            raise KeyError("boom")
    assert "LD_PRELOAD" not in os.environ


def test_hook_mode_preload_is_refused_without_the_interposer():
    if _preload.loaded():
        pytest.skip("this pytest process runs under the interposer")
    tms = _tms.TorchMemorySaver()
    assert tms.hook_mode == "torch"
    with pytest.raises(RuntimeError, match="LD_PRELOAD.*configure_subprocess"):
        tms.hook_mode = "preload"
    assert tms.hook_mode == "torch"
    with pytest.raises(ValueError):
        tms.hook_mode = "cuda"
    tms.hook_mode = "torch"
    with pytest.raises(RuntimeError, match="LD_PRELOAD"):
        with _preload.region("tms:x"):
            pass


# ---- in a child started with the interposer ---------------------------------------


@needs_build
def test_configure_subprocess_gives_children_the_interposer(monkeypatch):
    monkeypatch.delenv("CUMEM_PRELOAD_LIBRARY", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    code = "from cumem import _preload; print(_preload.loaded(), _preload.default())"
    with cumem.configure_subprocess():
        assert os.path.samefile(os.environ["LD_PRELOAD"], _expected_library())
        env = dict(os.environ, CUMEM_BACKEND="host", TMS_INIT_ENABLE="1")
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", _tms._internal_tag("default", False)]


@needs_build
def test_hook_mode_in_a_preloaded_process():
    out = run_child(
        """
        out["loaded"] = _preload.loaded()
        out["default_mode"] = torch_memory_saver.hook_mode
        try:
            torch_memory_saver.hook_mode = "preload"
            out["set"] = "ok"
        except RuntimeError as e:
            out["set"] = str(e)
        """
    )
    assert out["loaded"]
    if _shared_core():
        assert out["default_mode"] == "preload" and out["set"] == "ok"
    else:  # cumem._C still compiles its own core: torch mode, and preload refused, saying why
        assert out["default_mode"] == "torch" and "two different copies" in out["set"]


@needs_build
def test_regions_nest_per_thread_and_steer_cudaMalloc():
    out = run_child(
        """
        n0 = fake.fake_cudart_calls(b"malloc")
        rc, theirs = malloc(1000)
        out["forwarded"] = rc == 0 and fake.fake_cudart_owns(theirs) == 1
        states = [_preload.current()]
        with _preload.region("tms:outer"):
            states.append(_preload.current())
            rc1, a = malloc(3 << 20)
            with _preload.region("tms+cpu:inner"):
                states.append(_preload.current())
                rc2, b = malloc(4096)
                seen = []
                t = threading.Thread(target=lambda: seen.append(_preload.current()))
                t.start(); t.join()
                out["other_thread"] = seen[0]
                with _preload.region(None):
                    states.append(_preload.current())
                states.append(_preload.current())
            states.append(_preload.current())
        states.append(_preload.current())
        out["states"] = states
        out["region_allocs_ok"] = rc1 == 0 and rc2 == 0
        out["stand_in_saw"] = fake.fake_cudart_calls(b"malloc") - n0
        c = _preload.counts("cudaMalloc")
        out["to_cumem"], out["resolved"] = c["to_cumem"], c["resolved"]
        try:
            with _preload.region(""):
                pass
        except cumem.CumemError as e:
            out["bad_tag"] = [e.code, str(e)]
        out["frees"] = [glob.cudaFree(a), glob.cudaFree(b), glob.cudaFree(theirs)]
        out["stand_in_frees"] = fake.fake_cudart_calls(b"free")
        """
    )
    assert out["forwarded"]
    assert out["states"] == [None, "tms:outer", "tms+cpu:inner", None, "tms+cpu:inner", "tms:outer", None]
    assert out["other_thread"] is None  # regions are per thread
    assert out["region_allocs_ok"] and out["stand_in_saw"] == 1 and out["to_cumem"] == 2
    assert out["resolved"] == 2  # the RTLD_LOCAL runtime was found by searching
    assert out["bad_tag"][0] == cumem._C.EINVAL and "region('')" in out["bad_tag"][1]
    assert out["frees"] == [0, 0, 0] and out["stand_in_frees"] == 1


@needs_build
def test_pause_and_resume_reach_preload_memory():
    if not _shared_core():
        pytest.skip("cumem._C compiles its own core; preload mode needs the shared libcumem.so.0")
    out = run_child(
        """
        torch_memory_saver.hook_mode = "preload"
        with _preload.region(_tms._internal_tag("w", True)):
            rc, w = malloc(5 << 20)
        with _preload.region(_tms._internal_tag("kv", False)):
            rc2, kv = malloc(2 << 20)
        data = bytes(range(256)) * (5 << 12)
        cumem.copy_to_device(w, data)
        out["tags"] = [cumem.query(w)["tag"], cumem.query(kv)["tag"]]
        torch_memory_saver.pause()
        s = cumem.stats()
        out["asleep"] = s["bytes_asleep"] == s["bytes_allocated"] >= (7 << 20)
        out["backed_up"] = cumem.stats("tms+cpu:w")["bytes_backed_up"]
        torch_memory_saver.resume("w")
        out["w_back"] = cumem.copy_to_host(w, len(data)) == data
        out["kv_still_asleep"] = cumem.query(kv)["asleep"]
        torch_memory_saver.resume()
        out["frees"] = [glob.cudaFree(w), glob.cudaFree(kv)]
        """
    )
    assert out["tags"] == ["tms+cpu:w", "tms:kv"]
    assert out["asleep"] and out["backed_up"] >= 5 << 20
    assert out["w_back"] and out["kv_still_asleep"]
    assert out["frees"] == [0, 0]


@needs_build
@pytest.mark.parametrize(
    "env, tag",
    [
        ({"TMS_INIT_ENABLE": "1", "TMS_INIT_ENABLE_CPU_BACKUP": "1"}, ("default", True)),
        ({"TMS_INIT_ENABLE": "1"}, ("default", False)),
        ({"CUMEM_PRELOAD": "1", "CUMEM_PRELOAD_TAG": "llm", "CUMEM_PRELOAD_BACKUP": "cpu"}, ("llm", True)),
        ({"TMS_INIT_ENABLE": "1", "TMS_INIT_ENABLE_DISK_BACKUP": "1"}, ("default", False, True)),
        ({"CUMEM_PRELOAD": "0", "TMS_INIT_ENABLE": "1"}, None),
    ],
)
def test_the_environment_switch_names_tags_as_torch_memory_saver_does(env, tag):
    out = run_child(
        """
        out["default"] = _preload.default()
        out["current"] = _preload.current()
        rc, p = malloc(4096)
        out["stand_in_owns"] = fake.fake_cudart_owns(p) == 1
        glob.cudaFree(p)
        """,
        **env,
    )
    want = None if tag is None else _tms._internal_tag(*tag)
    assert out["default"] == want and out["current"] == want
    assert out["stand_in_owns"] == (tag is None)
