#!/usr/bin/env bash
# One call on the GPU machine: build, run the C tests on the cuda backend,
# the Python tests, the demo and the benchmark; logs under $OUT (or ./out),
# a short table last. Usage: scripts/gpu_run.sh [bench args...]
set -u
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
summary=()
step() { # name, command...
  local name=$1; shift
  local t0=$(date +%s.%N)
  "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$(echo "$(date +%s.%N) - $t0" | bc)
  summary+=("$(printf '%-14s rc=%-3s %6.1fs  %s' "$name" "$rc" "$dt" "$(grep -E 'passed|failed|PASS|FAIL|tests passed' "$OUT/$name.log" | tail -1)")")
  echo "== $name (rc=$rc, ${dt}s)"; tail -n 25 "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
git rev-parse --short HEAD 2>/dev/null | tee -a "$OUT/gpu.txt"
step build bash -c "cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release && cmake --build build"
step ctest-cuda bash -c "cd build && ctest --output-on-failure -R '\.cuda$'"
[ -f setup.py ] && step python bash -c "python3 setup.py -q build_ext --build-lib build/pylib --build-temp build/pytmp && PYTHONPATH=build/pylib python3 -m pytest -q -rs tests/python"
step info ./build/cumem info
step demo ./build/cumem demo
step bench ./build/cumem bench "$@"
./build/cumem bench --quiet --json "$@" >"$OUT/bench.json" 2>&1 || true
echo; echo "==== summary ($(cat "$OUT/gpu.txt" | tr '\n' ' '))"
printf '%s\n' "${summary[@]}"
grep -E '^\|' "$OUT/bench.log"
