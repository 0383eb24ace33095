#!/usr/bin/env bash
# Regenerate the fingerprint kernel's PTX and its embedded form:
#   src/fingerprint.cu  --nvcc-->  src/fingerprint.ptx  --embed_ptx.cmake-->  src/fingerprint_ptx.h
# Both outputs are committed, so that building cumem needs no nvcc. Run this
# after changing src/fingerprint.cu or src/fingerprint_def.h, and commit all.
#
#   scripts/gen_fingerprint_ptx.sh            write both files
#   scripts/gen_fingerprint_ptx.sh --check    regenerate into a temporary
#       directory and compare with the committed files (the CTest
#       fingerprint.ptx_regenerates): exit 0 when identical, 1 when not, 77
#       ("skipped") without nvcc or with another nvcc release than the one
#       that made the committed PTX (its output may differ in form).
#
# compute_75 is the oldest target nvcc 13 accepts; the driver compiles the PTX
# for the GPU it runs on (sm_90 on an H200) when the module is loaded, so the
# kernel is as fast there as if built for sm_90. A driver must understand the
# PTX ISA version nvcc wrote (".version" in the file; 9.0 from CUDA 13.0,
# i.e. driver 580 or newer). With an older driver the module does not load,
# and sleep copies everything (skip-unchanged is then unavailable).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=compute_75
NVCC=${NVCC:-}
if [ -z "$NVCC" ]; then
  NVCC=$(command -v nvcc || true)
  [ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc
fi
CMAKE=${CMAKE:-cmake}
check=0
[ "${1:-}" = --check ] && check=1

if [ -z "$NVCC" ]; then
  echo "SKIPPED: nvcc not found (set NVCC=/path/to/nvcc)"
  [ $check = 1 ] && exit 77
  exit 1
fi
release() { sed -n 's/.*Cuda compilation tools, \(release [0-9.]*, V[0-9.]*\).*/\1/p' | head -1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$NVCC" -ptx -arch=$ARCH -O3 -o "$tmp/fingerprint.ptx" src/fingerprint.cu
"$CMAKE" -DIN="$tmp/fingerprint.ptx" -DOUT="$tmp/fingerprint_ptx.h" -P scripts/embed_ptx.cmake

if [ $check = 0 ]; then
  cp "$tmp/fingerprint.ptx" src/fingerprint.ptx
  cp "$tmp/fingerprint_ptx.h" src/fingerprint_ptx.h
  echo "wrote src/fingerprint.ptx and src/fingerprint_ptx.h ($("$NVCC" --version | release))"
  exit 0
fi

mine=$("$NVCC" --version | release)
theirs=$(release < src/fingerprint.ptx)
if [ "$mine" != "$theirs" ]; then
  echo "SKIPPED: the committed PTX was made by nvcc $theirs, this nvcc is $mine"
  exit 77
fi
status=0
for f in fingerprint.ptx fingerprint_ptx.h; do
  if cmp -s "$tmp/$f" "src/$f"; then
    echo "ok: src/$f is what $NVCC makes of src/fingerprint.cu"
  else
    echo "STALE: src/$f differs from a fresh build; run scripts/gen_fingerprint_ptx.sh and commit"
    diff "$tmp/$f" "src/$f" | head -20 || true
    status=1
  fi
done
exit $status
