#!/usr/bin/env bash
# Runs several test binaries with the same arguments, all of them even if one fails, and
# exits with the first non-zero status.
#   tests/run-suites.sh BIN... -- ARGS...
bins=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do bins+=("$1"); shift; done
shift
status=0
for b in "${bins[@]}"; do
    echo "== $(basename "${b%-*}")"
    "$b" "$@"
    s=$?
    [ $status -ne 0 ] || status=$s
done
exit $status
