#!/bin/sh
# `cumem run`'s own behaviour: the program's exit status comes back, and its
# failures are told apart (125: cumem run itself, 127: no such program).
#   test_run.sh /path/to/cumem
set -u
cumem=$1
fail=0
expect() { # status, what, command...
  want=$1 what=$2
  shift 2
  "$@" >/dev/null 2>"${TMPDIR:-/tmp}/cumem_run_test.$$"
  got=$?
  if [ "$got" != "$want" ]; then
    echo "FAILED: $what: exit $got, expected $want"; cat "${TMPDIR:-/tmp}/cumem_run_test.$$"; fail=1
  else
    echo "ok: $what (exit $got)"
  fi
}
expect 7 "the program's status" "$cumem" run -- sh -c 'exit 7'
expect 0 "the switch reaches the program" "$cumem" run --tag w --backup cpu -- \
  sh -c 'test "$CUMEM_PRELOAD" = 1 && test "$CUMEM_PRELOAD_TAG" = w && test "$CUMEM_PRELOAD_BACKUP" = cpu && case "$LD_PRELOAD" in /*libcumem_preload.so*) exit 0;; esac; exit 1'
expect 0 "an earlier LD_PRELOAD is kept after it" env LD_PRELOAD=/nonexistent-but-kept.so "$cumem" run -- \
  sh -c 'case "$LD_PRELOAD" in *libcumem_preload.so:/nonexistent-but-kept.so) exit 0;; esac; exit 1'
expect 127 "no such program" "$cumem" run -- /nonexistent/program
expect 125 "no program" "$cumem" run --tag x
expect 125 "a bad --backup" "$cumem" run --backup tape -- true
expect 125 "an empty --tag" "$cumem" run --tag "" -- true
expect 125 "--backup disk without a directory" env -u CUMEM_DISK_DIR -u TMS_DISK_BACKUP_DIR "$cumem" run --backup disk -- true
grep -q "CUMEM_DISK_DIR" "${TMPDIR:-/tmp}/cumem_run_test.$$" || { echo "FAILED: the message names CUMEM_DISK_DIR"; fail=1; }
expect 125 "--backup disk into a missing directory" env CUMEM_DISK_DIR=/nonexistent/dir "$cumem" run --backup disk -- true
grep -q "/nonexistent/dir" "${TMPDIR:-/tmp}/cumem_run_test.$$" || { echo "FAILED: the message names the directory"; fail=1; }
expect 0 "--backup disk into a usable directory" env CUMEM_DISK_DIR="${TMPDIR:-/tmp}" "$cumem" run --backup disk -- true
expect 125 "a malformed CUMEM_* setting, whatever the backup" env CUMEM_COPY_CHUNK_MB=abc "$cumem" run --backup cpu -- true
grep -q "CUMEM_COPY_CHUNK_MB" "${TMPDIR:-/tmp}/cumem_run_test.$$" || { echo "FAILED: the message names CUMEM_COPY_CHUNK_MB"; fail=1; }
expect 125 "TMS_DISK_BACKUP_DIR under a file" env -u CUMEM_DISK_DIR TMS_DISK_BACKUP_DIR=/etc/passwd/x "$cumem" run --backup disk -- true
expect 0 "TMS_DISK_BACKUP_DIR to be created" env -u CUMEM_DISK_DIR TMS_DISK_BACKUP_DIR="${TMPDIR:-/tmp}/cumem_run_test.$$.d/a/b" "$cumem" run --backup disk -- true
expect 125 "no interposer to be found" env CUMEM_PRELOAD_LIBRARY=/nonexistent/libcumem_preload.so "$cumem" run -- true
grep -q "CUMEM_PRELOAD_LIBRARY" "${TMPDIR:-/tmp}/cumem_run_test.$$" || { echo "FAILED: the missing-library message names CUMEM_PRELOAD_LIBRARY"; fail=1; }
rm -f "${TMPDIR:-/tmp}/cumem_run_test.$$"
[ $fail = 0 ] && echo passed || echo FAILED
exit $fail
