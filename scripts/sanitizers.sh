#!/usr/bin/env bash
# Build the library and every C test with sanitizers, each configuration in
# its own build directory, and run CTest in each:
#
#   build-asan   -DCUMEM_SANITIZE=address,undefined   (SAN_CC_ASAN, default gcc)
#   build-tsan   -DCUMEM_SANITIZE=thread              (SAN_CC_TSAN, default clang)
#
# Every C test runs (host backend; the cuda variants report "skipped" without
# a GPU), the stress test in both modes and the fuzz regression inputs
# included. The Python tests are not part of it (ctest -E '^python': the
# interpreter is not instrumented). SAN_ONLY=asan or tsan runs one.
#
# TSan needs the address-space layout it was built for: on kernels with
# large mmap randomization (vm.mmap_rnd_bits > 28) clang 14's TSan dies with
# "unexpected memory mapping", so its tests run under `setarch -R` (no ASLR).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
only=${SAN_ONLY:-all}

have() { command -v "$1" >/dev/null 2>&1; }

# configure, build, test: name, compiler, sanitizers, then env for the tests
run() {
  local name=$1 cc=$2 san=$3
  shift 3
  local dir=build-$name t0=$SECONDS
  echo "== $name: $cc -fsanitize=$san"
  cmake -S . -B "$dir" -DCMAKE_C_COMPILER="$cc" -DCUMEM_SANITIZE="$san" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$dir" -j"$jobs" >/dev/null
  local built=$SECONDS
  (cd "$dir" && env "$@" ctest --output-on-failure -E '^python' -j"$jobs")
  echo "== $name: built in $((built - t0)) s, tested in $((SECONDS - built)) s"
}

if [ "$only" = all ] || [ "$only" = asan ]; then
  run asan "${SAN_CC_ASAN:-gcc}" address,undefined \
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
fi

if [ "$only" = all ] || [ "$only" = tsan ]; then
  cc=${SAN_CC_TSAN:-clang}
  have "$cc" || cc=gcc
  # Fewer stress operations: TSan runs every memory access 5-15x slower.
  tsan_env=(TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 CUMEM_STRESS_OPS=3000)
  if have setarch && setarch "$(uname -m)" -R true 2>/dev/null; then
    tsan_env=(setarch "$(uname -m)" -R env "${tsan_env[@]}")
  fi
  # ctest itself runs under setarch, so every test it starts does too.
  run tsan "$cc" thread "${tsan_env[@]}"
fi
echo "== sanitizers: all passed"
