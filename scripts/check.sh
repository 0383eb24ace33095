#!/usr/bin/env bash
# Build and run every test: the C suites (on the host backend; their cuda
# variants report "skipped" where no GPU answers), the Python tests, the
# sanitizer builds and a bounded fuzz run. CUMEM_CHECK_QUICK=1 stops after
# the plain build's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

echo "== build and test (host backend)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")
stages=1
[ "${CUMEM_CHECK_QUICK:-0}" = 1 ] && { echo "checks: $stages passed, 0 failed"; exit 0; }

if [ -x scripts/sanitizers.sh ]; then
  echo "== sanitizers"
  scripts/sanitizers.sh
  stages=$((stages + 1))
fi
if [ -x scripts/fuzz.sh ]; then
  echo "== fuzzing"
  scripts/fuzz.sh
  stages=$((stages + 1))
fi
# (set -e: any failing stage has already ended the script with its status)
echo "checks: $stages passed, 0 failed"
