#!/usr/bin/env bash
# Performance experiments on the GPU machine (issue 3): the bench under
# variants of the pipeline settings, with the engine's phase timings.
set -u
OUT=${OUT:-$PWD/out}; mkdir -p "$OUT"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build >/dev/null || exit 1
run() { # label, env...
  local label=$1; shift
  env "$@" CUMEM_VERBOSE=1 ./build/cumem bench --rounds 2 >"$OUT/exp-$label.log" 2>&1
  echo "== $label: $*"
  grep -E '^\| (cold|wake|warm|discard)' "$OUT/exp-$label.log"
  grep -E 'sleep of|wake of' "$OUT/exp-$label.log" | head -4
}
run base
run mapfirst CUMEM_WAKE_MAP_FIRST=1
run threads8 CUMEM_HOST_THREADS=8
run seg256 CUMEM_COPY_CHUNK_MB=256
./build/pinprobe 8G 0 34 >"$OUT/pinprobe.log" 2>&1; tail -30 "$OUT/pinprobe.log"
