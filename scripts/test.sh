#!/usr/bin/env bash
# Every check of the project, for humans and CI alike: formatting, vet,
# all tests with the race detector (integration tests included: real kubo,
# FUSE and Nix), short fuzz runs of every parser, and a check that no test
# left a mount behind. FUZZTIME=0 skips the fuzz runs.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== gofmt"
bad=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$bad" ]; then echo "gofmt would change:"; echo "$bad"; exit 1; fi

echo "== go vet"
go vet ./...

echo "== go test -race"
go test -race -count=1 -timeout 45m ./...

fuzztime=${FUZZTIME:-10s}
if [ "$fuzztime" != 0 ]; then
  for pkg in ./narindex; do
    for f in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz'); do
      echo "== fuzz $pkg $f ($fuzztime)"
      go test -run '^$' -fuzz "^$f\$" -fuzztime "$fuzztime" "$pkg"
    done
  done
fi

echo "== leftover mounts"
if grep -E ' fuse\.ipnix ' /proc/mounts; then
  echo "a test left an ipnix mount behind"; exit 1
fi
echo "all checks passed"
