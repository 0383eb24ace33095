#!/usr/bin/env bash
# Performance experiments on the GPU machine (issue 3): the bench under
# variants of the pipeline settings, with the engine's phase timings
# (CUMEM_VERBOSE=1 splits a sleep into preparing, registering, copying and
# releasing), then pinprobe's ways of pinning 16 GiB. The first bench only
# grows the VM's memory: in a freshly booted VM the first use of host memory
# is slow (bench/RESULTS.md). One call: about 5 minutes.
set -u
OUT=${OUT:-$PWD/out}; mkdir -p "$OUT"
uname -r; cat /sys/kernel/mm/transparent_hugepage/enabled /sys/kernel/mm/transparent_hugepage/defrag
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build >/dev/null || exit 1
run() { # label, env...
  local label=$1; shift
  env "$@" CUMEM_VERBOSE=1 ./build/cumem bench --rounds 2 >"$OUT/exp-$label.log" 2>&1
  echo "== $label: $*"
  grep -E '^\| (cold|wake|warm|discard)' "$OUT/exp-$label.log"
  grep -E 'sleep of|wake of' "$OUT/exp-$label.log" | head -2
}
run warmup
run base
run threads16 CUMEM_HOST_THREADS=16
run seg256 CUMEM_COPY_CHUNK_MB=256
run retain0 CUMEM_RETAIN_BACKUP=0
./build/pinprobe 16G 0 37 >"$OUT/pinprobe.log" 2>&1; grep -A40 "pinprobe summary" "$OUT/pinprobe.log"
