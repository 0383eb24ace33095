"""Preload hook mode on a GPU: PyTorch, NCCL, cuBLAS, a CUDA graph and a plain
CUDA C program, each in a child process started with libcumem_preload.so in
LD_PRELOAD (cumem.configure_subprocess(), or `cumem run`).

    PYTHONPATH=build/pylib python3 -m pytest -q -rs -s tests/gpu/test_preload_gpu.py

(-s shows the evidence: the measured figures and the interposer's per-call
trace of each child.) Skipped without PyTorch and a GPU, and while cumem._C
carries its own copy of the core (preload mode needs the one libcumem.so.0
the interposer links). The child scripts are in tests/gpu/preload/. With
$OUT set, each child's output is also written there (preload-*.log).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CHILDREN = os.path.join(HERE, "preload")

try:
    import torch

    GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
except ImportError:  # pragma: no cover
    torch = None
    GPUS = 0

pytestmark = pytest.mark.skipif(GPUS < 1, reason="needs PyTorch with a CUDA GPU")

MiB = 1 << 20


def _shared_core():
    code = "import cumem; print(any('libcumem.so' in l for l in open('/proc/self/maps')))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() == "True"


@pytest.fixture(scope="module")
def preload_env():
    """The environment of a preloaded child (LD_PRELOAD, no NVLS)."""
    import cumem

    if not _shared_core():
        pytest.skip("cumem._C compiles its own core; preload mode needs it to link libcumem.so.0")
    try:
        lib = cumem.preload_library()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    with cumem.configure_subprocess():
        env = dict(os.environ)
    for k in ("CUMEM_PRELOAD", "TMS_INIT_ENABLE", "TMS_INIT_ENABLE_CPU_BACKUP", "CUMEM_PRELOAD_TRACE"):
        env.pop(k, None)
    env.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", PYTHONUNBUFFERED="1")
    print(f"\ninterposer: {lib}")
    return env


def run(name, argv, env, timeout=600):
    """Run a child; print (and keep in $OUT) its output; return its RESULT
    objects, its trace lines and the completed process."""
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    text = f"$ {' '.join(argv)}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    out_dir = os.environ.get("OUT")
    if out_dir and os.path.isdir(out_dir):
        with open(os.path.join(out_dir, f"preload-{name}.log"), "w") as f:
            f.write(text)
    results = [json.loads(line[len("RESULT "):]) for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    trace = [line for line in r.stderr.splitlines() if line.startswith("cumem-preload ")]
    print(f"\n==== {name}: exit {r.returncode}")
    for res in results:
        print(json.dumps(res, indent=1, sort_keys=True))
    for line in trace:
        if " calls=0 " not in line:
            print(line)
    return results, trace, r


def test_regions_graphs_and_nesting_in_preload_mode(preload_env):
    env = dict(preload_env, CUMEM_PRELOAD_TRACE="1")
    results, trace, r = run("torch-regions", [sys.executable, os.path.join(CHILDREN, "torch_regions.py")], env)
    assert r.returncode == 0 and results, r.stderr[-3000:]
    res = results[0]
    assert res["hook_mode"] == "preload"
    assert res["inner_region"] == "tms:kv" and res["outer_region"] == "tms+cpu:model"
    assert res["after_regions"] is None
    assert res["tags"] == {"w": "tms+cpu:model", "kv": "tms:kv", "w2": "tms+cpu:model", "outside": None}
    assert res["freed_by_pause"] >= 0.95 * res["region_bytes"]
    paused = res["stats_paused"]
    assert paused["tms+cpu:model"]["bytes_mapped"] == 0 and paused["tms:kv"]["bytes_mapped"] == 0
    assert paused["tms+cpu:model"]["bytes_backed_up"] == paused["tms+cpu:model"]["bytes_allocated"]
    assert paused["tms:kv"]["bytes_backed_up"] == 0  # the inner region chose no backup
    assert res["same_pointers"] and res["w_exact"] and res["kv_usable"] and res["outside_untouched"]
    assert res["kv_alone_asleep"] and res["model_usable_while_kv_sleeps"]
    # The graph's private pool came through cudaMalloc inside the region.
    assert res["graph_tag"] == "tms:graph" and res["graph_allocations"] > 0
    assert res["graph_mapped_while_paused"] == 0 and res["graph_freed"] >= 0.9 * res["graph_bytes"]
    assert res["graph_replays"]
    assert res["counts"]["cudaMalloc"]["to_cumem"] >= 4
    assert any("fn=cudaMalloc " in line for line in trace)


@pytest.mark.parametrize("world", [1, 2])
def test_nccl_and_cublas_under_the_switch(preload_env, world):
    if world > GPUS:
        pytest.skip(f"needs {world} GPUs (found {GPUS})")
    env = dict(preload_env, TMS_INIT_ENABLE="1", TMS_INIT_ENABLE_CPU_BACKUP="1", CUMEM_PRELOAD_TRACE="1")
    results, trace, r = run(
        f"nccl-cublas-{world}", [sys.executable, os.path.join(CHILDREN, "torch_nccl_cublas.py"), str(world)], env
    )
    assert r.returncode == 0 and len(results) == world, r.stderr[-3000:]
    for res in results:
        assert res["default_region"] == "tms+cpu:default" and res["hook_mode"] == "preload"
        # PyTorch's side of NCCL (the collective's tensors) is cumem memory...
        assert res["nccl_tensor_tag"] == "tms+cpu:default"
        assert res["nccl_init_and_all_reduce"]["cudaMalloc"]["to_cumem"] >= 1
        # ...and the first matmul's memory (output, cuBLAS workspace) came
        # through cudaMalloc too.
        assert res["first_matmul"].get("cudaMalloc", {}).get("to_cumem", 0) >= 1
        assert res["freed_by_pause"] >= 0.9 * res["cumem_before_pause"]["bytes_allocated"]
        assert res["all_reduce_ok"] and res["all_reduce_after_resume_ok"] and res["matmul_after_resume_ok"]
        # What escaped the interposer is reported, not asserted: NCCL's and
        # cuBLAS's own memory (printed above as bytes_not_seen).
    assert any("fn=cudaMalloc " in line for line in trace)


def test_cumem_run_on_a_plain_cuda_program(tmp_path, preload_env):
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not os.path.exists(nvcc):
        pytest.skip("needs nvcc")
    build = os.environ.get("CUMEM_BUILD_DIR", os.path.join(ROOT, "build"))
    cli = os.path.join(build, "cumem")
    if not (os.path.exists(cli) and os.path.exists(os.path.join(build, "libcumem.so.0"))):
        pytest.skip(f"needs the CMake build in {build} (the cumem command, libcumem.so.0)")
    cudalib = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "lib64")
    prog = str(tmp_path / "sleepy")
    subprocess.run(
        [nvcc, "-O2", "-cudart", "shared", "-I", os.path.join(ROOT, "include"), os.path.join(CHILDREN, "sleepy.cu"),
         "-L", build, "-lcumem", "-Xlinker", f"-rpath,{build}:{cudalib}", "-o", prog],
        check=True,
    )
    env = {k: v for k, v in preload_env.items() if k != "LD_PRELOAD"}
    # Without cumem run its memory is ordinary: the program says so (exit 3).
    results, _, r = run("sleepy-plain", [prog, "64"], env)
    assert r.returncode == 3 and results == [{"cumem": False}], r.stderr
    # Under cumem run the same binary's cudaMalloc is sleepable memory.
    env["CUMEM_PRELOAD_TRACE"] = "1"
    results, trace, r = run("sleepy-run", [cli, "run", "--tag", "prog", "--backup", "cpu", "--", prog, "256"], env)
    assert r.returncode == 0 and results, r.stderr
    res = results[0]
    assert res["cumem"] and res["tag"] == "tms+cpu:prog"
    assert res["freed_by_sleep"] >= 0.95 * res["bytes"] and res["backed_up"] >= res["bytes"]
    assert res["wrong_after_wake"] == 0 and res["allocations_after_free"] == 0
    if GPUS >= 2:  # a stream of device 1 while device 0 is current
        assert res["async_device"] == 1
    assert any("fn=cudaMalloc calls=2 to_cumem=2 " in line for line in trace)
