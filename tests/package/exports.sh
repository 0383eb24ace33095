#!/bin/sh
# libcumem.so's ABI surface: its SONAME is libcumem.so.MAJOR, and it exports
# the public API only: every defined dynamic symbol is cumem_<name> (internal
# ones are cumem__<name> and hidden), the PyTorch entry points included.
# usage: exports.sh LIBCUMEM_SO MAJOR NM READELF
set -eu
so=$1 major=$2 nm=$3 readelf=$4

soname=$("$readelf" -d "$so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = "libcumem.so.$major" ] || { echo "FAILED: SONAME is '$soname', expected libcumem.so.$major"; exit 1; }

syms=$("$nm" -D --defined-only "$so" | awk 'NF >= 3 { print $3 }')
# Linkers may define these few in any shared object.
bad=$(printf '%s\n' "$syms" | grep -v -x -e '_init' -e '_fini' -e '_edata' -e '_end' -e '__bss_start' |
      grep -v '^cumem_[a-z0-9]' || true)
if [ -n "$bad" ]; then
  echo "FAILED: libcumem.so exports symbols outside the API:"
  printf '  %s\n' $bad
  exit 1
fi
for want in cumem_open cumem_sleep cumem_wake cumem_version cumem_torch_malloc cumem_torch_free; do
  printf '%s\n' "$syms" | grep -qx "$want" || { echo "FAILED: libcumem.so does not export $want"; exit 1; }
done
echo "libcumem.so: SONAME $soname, $(printf '%s\n' "$syms" | wc -l) symbols, all cumem_*"
