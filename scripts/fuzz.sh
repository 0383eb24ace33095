#!/usr/bin/env bash
# A bounded libFuzzer run of tests/fuzz/fuzz_api: random operation sequences
# on the public C API (host backend, with injected backend failures) checked
# against the reference model of tests/fuzz/api_model.h, under ASan + UBSan.
#
#   FUZZ_SECONDS   how long (default 60)
#   FUZZ_JOBS      parallel fuzzing processes (default 1)
#   FUZZ_CC        the compiler (default clang; libFuzzer needs clang)
#   FUZZ_BUILD     build directory (default build-fuzz)
#
# New interesting inputs go to $FUZZ_BUILD/corpus (the committed seeds in
# tests/fuzz/corpus are only read). A crash (a model violation traps, or a
# sanitizer report) is copied to tests/fuzz/regressions/, where the
# fuzz.regressions CTest test replays it on every build from then on; the
# script then fails. Replay one by hand: build/tests/fuzz_replay FILE.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-1}
build=${FUZZ_BUILD:-build-fuzz}
cc=${FUZZ_CC:-clang}

cmake -S . -B "$build" -DCMAKE_C_COMPILER="$cc" -DCUMEM_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" --target fuzz_api -j"$(nproc)"

corpus="$build/corpus"
artifacts="$build/artifacts"
rm -rf "$artifacts"
mkdir -p "$corpus" "$artifacts"
args=(-max_total_time="$secs" -max_len=8192 -timeout=60 -rss_limit_mb=4096
      -artifact_prefix="$artifacts/" -print_final_stats=1)
[ "$jobs" -gt 1 ] && args+=(-fork="$jobs" -ignore_crashes=1)

echo "fuzz: ${secs}s, $jobs job(s), seeds from tests/fuzz/corpus"
set +e
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
  "$build/tests/fuzz_api" "${args[@]}" "$corpus" tests/fuzz/corpus 2>&1 | tail -n 60
rc=${PIPESTATUS[0]}
set -e

found=0
for f in "$artifacts"/*; do
  [ -e "$f" ] || continue
  found=1
  cp "$f" tests/fuzz/regressions/
  echo "fuzz: kept $(basename "$f") in tests/fuzz/regressions/ (commit it once the bug is fixed)"
done
if [ "$found" = 1 ] || [ "$rc" -ne 0 ]; then
  echo "fuzz: FAILED (libFuzzer exit $rc)"
  exit 1
fi
echo "fuzz: no crash in ${secs}s"
