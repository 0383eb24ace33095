#!/usr/bin/env bash
# One call on the GPU machine: build; the C tests on the cuda backend; the
# Python tests; the multi-GPU job; the demo; the benchmark; the soak. Logs go
# to $OUT (or ./out); a short table comes last.
# Usage: scripts/gpu_run.sh [all|tests|soak]   (SOAK_CYCLES=N sizes the soak)
# "tests" is everything but the soak; "soak" builds what it needs and soaks.
set -u
what=${1:-all}
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
summary=()
step() { # name, command...
  local name=$1; shift
  local t0=$(date +%s%N)
  "$@" >"$OUT/$name.log" 2>&1
  local rc=$? ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  local last=$(grep -aE 'passed|failed|PASS|FAIL|skipped|verdict|flat' "$OUT/$name.log" | tail -1)
  summary+=("$(printf '%-12s rc=%-3s %7.1fs  %s' "$name" "$rc" "$(echo "$ms" | awk '{print $1/1000}')" "$last")")
  echo "== $name (rc=$rc, ${ms} ms)"; tail -n 20 "$OUT/$name.log"
}
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
step build bash -c "cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release && cmake --build build && python3 setup.py -q build --build-lib build/pylib --build-temp build/pytmp"
if [ "$what" != soak ]; then
step ctest-cuda bash -c "cd build && ctest --output-on-failure -R '\\.cuda\$'"
step python bash -c "PYTHONPATH=\$PWD/build/pylib python3 -m pytest -q -rs -p no:cacheprovider tests/python"
[ -d tests/gpu ] && step multigpu bash -c "PYTHONPATH=\$PWD/build/pylib python3 -m pytest -q -rs -p no:cacheprovider tests/gpu"
step info ./build/cumem info
step demo ./build/cumem demo
step bench bash -c "CUMEM_VERBOSE=1 ./build/cumem bench"
fi
[ "$what" != tests ] && step soak bash -c "PYTHONPATH=\$PWD/build/pylib python3 bench/soak.py ${SOAK_CYCLES:+--cycles $SOAK_CYCLES}"
echo; echo "==== summary: $(tr '\n' ' ' <"$OUT/gpu.txt")"
printf '%s\n' "${summary[@]}"
[ -f "$OUT/bench.log" ] && grep -E '^\||verified|retention' "$OUT/bench.log"
