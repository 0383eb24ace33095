#!/usr/bin/env bash
# The GPU machine's one script: build, then one phase per call (each must end
# inside the device tool's 10 minutes), a short table last.
#
#   scripts/gpu_run.sh ctest   build; the C tests on the cuda backend
#   scripts/gpu_run.sh pytests Python tests; GPU-only tests (tests/gpu); preload
#                              mode with its per-call trace; info (text, JSON); demo
#   scripts/gpu_run.sh tests   both
#   scripts/gpu_run.sh bench   cumem bench (text and JSON), the disk tier's
#                              bench, the Python-level bench of every API
#   scripts/gpu_run.sh multi   one bench process per GPU at once (bench/multi_gpu.py)
#   scripts/gpu_run.sh soak    the soak (SOAK_CYCLES=N sizes it)
#   scripts/gpu_run.sh all     tests, bench, soak (longer than one device call)
#
# Logs go to $LOGS (default ./out-logs); $OUT (default ./out) receives one
# archive of them per phase and the summary, so that what comes back from
# the device machine fits its limit on files. Extra knobs: PYBENCH_ARGS
# (bench/python_bench.py), MULTI_ARGS (bench/multi_gpu.py).
set -u
what=${1:-all}
OUT=${OUT:-$PWD/out}
LOGS=${LOGS:-$PWD/out-logs}
mkdir -p "$OUT" "$LOGS"
export OUT NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
PY="env PYTHONPATH=$PWD/build/pylib python3"
summary=()
step() { # name, command...
  local name=$1; shift
  local t0=$(date +%s%N)
  "$@" >"$LOGS/$name.log" 2>&1
  local rc=$? ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  local last=$(grep -aE 'passed|failed|PASS|FAIL|skipped|verdict|flat|verified' "$LOGS/$name.log" | tail -1)
  summary+=("$(printf '%-12s rc=%-3s %7.1fs  %s' "$name" "$rc" "$(echo "$ms" | awk '{print $1/1000}')" "${last:0:110}")")
  echo "== $name (rc=$rc, ${ms} ms)"; tail -n 15 "$LOGS/$name.log"
}
# A JSON document's check: file, Python expression over d, label.
json_check() {
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); ok=$2; print('$3', 'PASS' if ok else 'FAIL'); sys.exit(not ok)" "$1"
}
# `cumem ARGS... --json` into $LOGS/NAME.json, printed, then checked (label
# NAME-json): cumem's exit status when the check passes, else the check's.
cli_json() { # name, Python expression over d, cumem arguments...
  local name=$1 expr=$2; shift 2
  ./build/cumem "$@" --json >"$LOGS/$name.json"; local rc=$?
  cat "$LOGS/$name.json"
  json_check "$LOGS/$name.json" "$expr" "$name-json" && return $rc
}

nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader | tee "$LOGS/gpu.txt"
git rev-parse --short HEAD 2>/dev/null | sed 's/^/commit /' | tee -a "$LOGS/gpu.txt"
step build bash -c "cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release && cmake --build build && \
  python3 setup.py -q build --build-lib build/pylib --build-temp build/pytmp"

case $what in ctest|tests|all)
  step ctest-cuda bash -c "cd build && ctest --output-on-failure --timeout 300 -R '\\.cuda\$'"
;; esac

case $what in pytests|tests|all)
  step python $PY -m pytest -q -rs -p no:cacheprovider tests/python
  step gpu env OUT="$LOGS" $PY -m pytest -q -rs -p no:cacheprovider tests/gpu --ignore=tests/gpu/test_preload_gpu.py
  step preload env OUT="$LOGS" bash tests/gpu/preload_gpu.sh
  step info ./build/cumem info
  step info-json cli_json info 'd["ok"] and d["backend"]=="cuda" and len(d["devices"])==d["device_count"]>=1' info
  step demo ./build/cumem demo
;; esac

case $what in bench|all)
  step bench bash -c "CUMEM_VERBOSE=1 ./build/cumem bench"
  step bench-json cli_json bench 'd["ok"] and d["verified"] and d["backend"]=="cuda"' bench --size 4G --rounds 2
  step diskbench bash -c "mkdir -p /var/tmp/cumem-diskbench && df -T /var/tmp/cumem-diskbench && \
    CUMEM_VERBOSE=1 ./build/bench_disk /var/tmp/cumem-diskbench --size 4 --rounds 3"
  step pybench bash -c "$PY bench/python_bench.py ${PYBENCH_ARGS:-} --json $LOGS/python_bench.json"
;; esac

case $what in multi)
  step multi bash -c "python3 bench/multi_gpu.py ${MULTI_ARGS:---pinprobe -- --size 16 --kv 2 --rounds 1}"
;; esac

case $what in soak|all)
  step soak $PY bench/soak.py ${SOAK_CYCLES:+--cycles $SOAK_CYCLES}
;; esac

{
  echo; echo "==== $what: $(tr '\n' ' ' <"$LOGS/gpu.txt")"
  printf '%s\n' "${summary[@]}"
  [ -f "$LOGS/bench.log" ] && grep -aE '^\||verified|retention|prepare-ahead|skip unchanged|fingerprint on the device' "$LOGS/bench.log"
  [ -f "$LOGS/pybench.log" ] && grep -aE '^\||^link' "$LOGS/pybench.log"
  [ -f "$LOGS/multi.log" ] && tail -25 "$LOGS/multi.log"
} | tee "$OUT/summary-$what.txt"
tar czf "$OUT/logs-$what.tgz" -C "$LOGS" . 2>/dev/null
