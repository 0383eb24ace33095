#!/bin/sh
# cumem as its users meet it once installed (CTest runs each mode):
#   install       cmake --install into WORK/prefix; the files are all there
#   find_package  a consumer project links cumem::cumem and cumem::cumem_static
#   pkg_config    the same consumer built with pkg-config's flags
#   subproject    a project that add_subdirectory()s cumem configures without
#                 cumem's tests
# usage: package_test.sh MODE SOURCE_DIR BUILD_DIR WORK_DIR VERSION LIBDIR CMAKE GENERATOR CC
set -eu
mode=$1 src=$2 build=$3 work=$4 version=$5 libdir=$6 cmake=$7 generator=$8 cc=$9
prefix=$work/prefix
lib=$prefix/$libdir
major=${version%%.*}

fail() { echo "FAILED: $*" >&2; exit 1; }
# The NEEDED entries of an ELF file, one a line.
needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }

case $mode in
install)
  rm -rf "$prefix"
  "$cmake" --install "$build" --prefix "$prefix"
  for f in "$lib/libcumem.so.$version" "$lib/libcumem.a" \
           "$prefix/include/cumem.h" "$prefix/include/cumem_backend.h" "$prefix/include/cumem_testing.h" \
           "$prefix/bin/cumem" "$lib/cmake/cumem/cumemConfig.cmake" \
           "$lib/cmake/cumem/cumemConfigVersion.cmake" "$lib/cmake/cumem/cumemTargets.cmake" \
           "$lib/pkgconfig/cumem.pc"; do
    [ -f "$f" ] || fail "not installed: $f"
  done
  # libcumem.so -> libcumem.so.MAJOR -> libcumem.so.VERSION
  [ "$(readlink "$lib/libcumem.so")" = "libcumem.so.$major" ] || fail "libcumem.so does not point to libcumem.so.$major"
  [ "$(readlink "$lib/libcumem.so.$major")" = "libcumem.so.$version" ] || fail "libcumem.so.$major does not point to libcumem.so.$version"
  got=$("$prefix/bin/cumem" --version)
  [ "$got" = "cumem $version" ] || fail "installed cumem --version says '$got', expected 'cumem $version'"
  # The installed `cumem run` finds the interposer installed beside the library.
  pre=$(env -u CUMEM_PRELOAD_LIBRARY "$prefix/bin/cumem" run -- sh -c 'echo "$LD_PRELOAD"') ||
    fail "installed cumem run failed"
  [ "$pre" = "$(cd "$lib" && pwd -P)/libcumem_preload.so" ] || fail "installed cumem run preloads '$pre', expected $lib/libcumem_preload.so"
  echo "installed cumem $version into $prefix"
  ;;
find_package)
  rm -rf "$work/find_package"
  "$cmake" -S "$src/tests/package/consumer" -B "$work/find_package" -G "$generator" -DCMAKE_C_COMPILER="$cc" \
    -DCMAKE_PREFIX_PATH="$prefix" -DCUMEM_EXPECTED_VERSION="$version"
  "$cmake" --build "$work/find_package"
  "$work/find_package/consumer_shared"
  "$work/find_package/consumer_static"
  needed "$work/find_package/consumer_shared" | grep -qx "libcumem.so.$major" ||
    fail "consumer_shared does not need libcumem.so.$major"
  ! needed "$work/find_package/consumer_static" | grep -q libcumem || fail "consumer_static needs libcumem.so"
  ldd "$work/find_package/consumer_shared" | grep -q "$lib/libcumem.so.$major" ||
    fail "consumer_shared does not load the installed libcumem.so.$major"
  ;;
pkg_config)
  command -v pkg-config >/dev/null || { echo "SKIPPED: no pkg-config (Debian: apt-get install pkgconf)"; exit 77; }
  export PKG_CONFIG_PATH="$lib/pkgconfig"
  pkg-config --exists --print-errors "cumem = $version" || fail "pkg-config does not find cumem = $version"
  out=$work/pkg_config
  rm -rf "$out" && mkdir -p "$out"
  # shellcheck disable=SC2046 # the flags are words
  "$cc" -o "$out/consumer_shared" "$src/tests/package/consumer/consumer.c" -DCONSUMER_LINKAGE='"pkg-config, shared"' \
    $(pkg-config --cflags --libs cumem)
  LD_LIBRARY_PATH=$lib "$out/consumer_shared"
  needed "$out/consumer_shared" | grep -qx "libcumem.so.$major" || fail "pkg-config's shared link does not need libcumem.so.$major"
  # Static: --static adds Libs.private; libcumem.a is named where -lcumem
  # stands, since the linker prefers the .so beside it.
  static=$(echo " $(pkg-config --static --cflags --libs cumem) " | sed "s| -lcumem | $lib/libcumem.a |")
  # shellcheck disable=SC2086
  "$cc" -o "$out/consumer_static" "$src/tests/package/consumer/consumer.c" -DCONSUMER_LINKAGE='"pkg-config, static"' $static
  "$out/consumer_static"
  ! needed "$out/consumer_static" | grep -q libcumem || fail "pkg-config's static link needs libcumem.so"
  ;;
subproject)
  rm -rf "$work/subproject"
  "$cmake" -S "$src/tests/package/consumer" -B "$work/subproject" -G "$generator" -DCMAKE_C_COMPILER="$cc" \
    -DCUMEM_SOURCE_DIR="$src" >/dev/null
  echo "configured a project with cumem as its subproject: no cumem tests"
  ;;
*)
  fail "unknown mode $mode"
  ;;
esac
