#!/usr/bin/env bash
# Preload hook mode on a GPU machine, in one call:
#   1. build (CMake: libcumem.so.0, libcumem_preload.so, cumem; setup.py: the
#      Python package into build/pylib);
#   2. the interposer's own tests (ctest -R '^preload\.', host backend);
#   3. which CUDA libraries of this PyTorch can be interposed at all: the
#      allocation functions each one imports dynamically (an import can be
#      interposed; a function it carries itself, e.g. a static CUDA runtime,
#      cannot);
#   4. the GPU tests: tests/gpu/test_preload_gpu.py (PyTorch regions, nested
#      backup, CUDA graph in preload mode, NCCL + cuBLAS under the switch on
#      one and two GPUs, `cumem run` on a CUDA C program) and the torch-mode
#      CUDA graph test, with -s so each child's figures and per-call trace
#      are in the log.
# Usage: tests/gpu/preload_gpu.sh      (logs also in $OUT, default ./out)
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export OUT NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 PYTHONUNBUFFERED=1
status=0

echo "== build"
{ cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build >/dev/null &&
  python3 setup.py -q build --build-lib build/pylib --build-temp build/pytmp >/dev/null; } || { echo "build failed"; exit 1; }

echo "== the interposer's tests (host backend)"
(cd build && ctest --output-on-failure -R '^preload\.') || status=1

echo "== allocation functions the CUDA libraries import (interposable) or not"
python3 - <<'PY' || true
import glob, os, subprocess, sys
try:
    import torch
except ImportError:
    sys.exit("no torch")
roots = [os.path.dirname(torch.__file__)] + [os.path.join(p, "nvidia") for p in sys.path if os.path.isdir(os.path.join(p, "nvidia"))]
libs = []
for r in roots:
    for pat in ("lib/libtorch_cuda.so", "lib/libc10_cuda.so", "*/lib/libnccl.so*", "*/lib/libcublas.so*",
                "*/lib/libcublasLt.so*", "*/lib/libcudart.so*", "cu*/lib/libnccl.so*", "cu*/lib/libcublas*.so*"):
        libs += glob.glob(os.path.join(r, pat))
want = ("cudaMalloc", "cudaFree", "cudaMallocAsync", "cuMemAlloc", "cuMemCreate", "cuGetProcAddress",
        "cudaGetDriverEntryPoint")
for lib in sorted(set(os.path.realpath(l) for l in libs)):
    und = subprocess.run(["nm", "-D", "--undefined-only", lib], capture_output=True, text=True).stdout.split()
    dfn = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True).stdout.split()
    imports = sorted({s.split("@")[0] for s in und if s.split("@")[0].startswith(want)})
    exports = sorted({s.split("@")[0] for s in dfn if s.split("@")[0] in ("cudaMalloc", "cudaFree")})
    print(f"{os.path.basename(lib)}: imports {imports or 'none of them'}; defines {exports or '-'}")
PY

echo "== GPU tests"
PYTHONPATH=$PWD/build/pylib python3 -m pytest -q -rs -s -p no:cacheprovider \
  tests/gpu/test_preload_gpu.py \
  "tests/python/test_gpu_tms.py::test_cuda_graph_memory_is_pausable_and_replays" 2>&1 | tee "$OUT/preload-pytest.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
echo "== preload_gpu: $([ $status = 0 ] && echo passed || echo FAILED) (logs in $OUT/preload-*.log)"
exit $status
