#!/usr/bin/env bash
# Build and run every test: the C suites (on the host backend; their cuda
# variants report "skipped" where no GPU answers), the CLI and package tests,
# the Python tests, the sanitizer builds, a bounded fuzz run, and the
# README's two commands in a fresh clone (scripts/fresh_clone.sh).
# CUMEM_CHECK_QUICK=1 stops after the plain build's tests.
#
# It sets itself up on Debian 12: the packages it needs and lacks are
# installed with apt when it runs as root, or named in one line otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
quick=${CUMEM_CHECK_QUICK:-0}

# ---- what the checks need ---------------------------------------------------
# make and libc6-dev are only recommended by cmake and gcc: listed, so that
# --no-install-recommends still gives a working compiler. python3-pip (with
# python3-wheel) lets the packaging test build and install a wheel.
need=(cmake make gcc libc6-dev python3-dev python3-pytest python3-setuptools python3-pip pkgconf)
[ "$quick" = 1 ] || need+=(clang libclang-rt-14-dev git) # TSan and libFuzzer; the fresh clone
if command -v dpkg-query >/dev/null; then
  missing=()
  for pkg in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "== installing ${missing[*]}"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
      echo "check.sh: missing packages; install them with: sudo apt-get install ${missing[*]}" >&2
      exit 1
    fi
  fi
else
  echo "== not Debian: not checking packages (Debian names: ${need[*]})"
fi
# cuda.h is read at build time only (no driver, no GPU); it is not a Debian
# package of the CUDA version cumem targets, so it is named, not installed:
# CMake looks for it (find_path CUDA_DRIVER_INCLUDE_DIR) and says so.

# ---- the checks ----------------------------------------------------------------
echo "== build and test (host backend)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")
stages=1
[ "$quick" = 1 ] && { echo "checks: $stages passed, 0 failed"; exit 0; }

echo "== sanitizers"
scripts/sanitizers.sh
stages=$((stages + 1))
echo "== fuzzing"
scripts/fuzz.sh
stages=$((stages + 1))
echo "== the README's commands in a fresh clone"
scripts/fresh_clone.sh
stages=$((stages + 1))
# (set -e: any failing stage has already ended the script with its status)
echo "checks: $stages passed, 0 failed"
