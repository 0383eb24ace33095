#!/usr/bin/env bash
# The README's two commands as a new user runs them: a clean clone of the
# committed HEAD in a temporary directory, the README's first command there
# (build, then the demo on the host backend where there is no GPU), then its
# second, the test command, with CUMEM_CHECK_QUICK=1 (that command is
# scripts/check.sh, which calls this script: the quick mode does not).
#
# The commands are read from the README's first ```sh block, so what the
# README says is what runs. Uncommitted changes are not in the clone.
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t cmds < <(awk '/^```sh/ { inside = 1; next } /^```/ { if (inside) exit } inside && NF && !/^#/' README.md)
if [ ${#cmds[@]} -ne 2 ] || [ "${cmds[1]}" != scripts/check.sh ]; then
  echo "fresh_clone: the README's first sh block should hold two commands, the second scripts/check.sh; found:" >&2
  printf '  %s\n' "${cmds[@]}" >&2
  exit 1
fi
head=$(git rev-parse HEAD)
[ -z "$(git status --porcelain --untracked-files=no)" ] ||
  echo "fresh_clone: uncommitted changes are not part of the clone of $head"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/cumem-fresh.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
git clone -q --no-hardlinks . "$tmp/cumem"
cd "$tmp/cumem"
git checkout -q --detach "$head"

echo "== fresh clone of $head in $tmp/cumem"
echo "\$ ${cmds[0]}"
bash -euo pipefail -c "${cmds[0]}"
echo "\$ CUMEM_CHECK_QUICK=1 ${cmds[1]}"
CUMEM_CHECK_QUICK=1 bash -euo pipefail -c "${cmds[1]}"
echo "fresh_clone: both README commands passed in a clean clone"
