#!/usr/bin/env bash
# Every check of the project, for humans and CI alike: formatting, vet,
# all tests with the race detector (integration tests included: real kubo,
# FUSE and Nix), short fuzz runs of every parser, and a check that no test
# left a mount behind. FUZZTIME=0 skips the fuzz runs.
#
# The tests make their mount points (and everything else) under TMPDIR
# (t.TempDir, os.MkdirTemp), which points to a directory of this run's own:
# the leftover check looks there only, so ipnix mounts that exist elsewhere
# on the machine (a user's real one) do not fail the run. The directory is
# removed at the end, after detaching anything a test left mounted in it.
set -euo pipefail
cd "$(dirname "$0")/.."

testtmp=$(mktemp -d "${TMPDIR:-/tmp}/ipnix-test.XXXXXX")
testtmp=$(cd "$testtmp" && pwd -P) # as /proc/self/mountinfo spells it

# mounts_under DIR prints the mount points at or below DIR. mountinfo
# escapes blanks and backslashes in octal: DIR is compared escaped the
# same way (through the environment: awk -v would undo the escapes) and
# the points printed unescaped (printf %b).
mounts_under() {
  local d=${1//\\/\\134}
  d=${d// /\\040}; d=${d//$'\t'/\\011}; d=${d//$'\n'/\\012}
  D=$d awk '$5 == ENVIRON["D"] || index($5, ENVIRON["D"] "/") == 1 { print $5 }' /proc/self/mountinfo |
    while IFS= read -r m; do printf '%b\n' "$m"; done
}

cleanup() {
  local m
  mounts_under "$testtmp" | sort -r | while IFS= read -r m; do
    fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  rm -rf "$testtmp"
}
trap cleanup EXIT
export TMPDIR=$testtmp

echo "== gofmt"
bad=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$bad" ]; then echo "gofmt would change:"; echo "$bad"; exit 1; fi

echo "== go vet"
go vet ./...

echo "== nix-instantiate --parse"
# Every Nix file (the NixOS module, the package, the flake) must at least
# parse; evaluating the module is integration/nixos_test.go's job (it needs
# NIXPKGS_LIB).
if command -v nix-instantiate >/dev/null; then
  git ls-files -z '*.nix' | while IFS= read -r -d '' f; do
    nix-instantiate --parse "$f" >/dev/null || { echo "nix-instantiate --parse $f failed"; exit 1; }
  done
else
  echo "skipped: nix-instantiate is not installed (install nix-bin)"
fi

echo "== go test -race"
go test -race -count=1 -timeout 45m ./...

fuzztime=${FUZZTIME:-10s}
if [ "$fuzztime" != 0 ]; then
  # Every package that has fuzz targets.
  pkgs=$( (git grep -l '^func Fuzz' -- '*_test.go' 2>/dev/null ||
    grep -rl --include='*_test.go' '^func Fuzz' .) | xargs -r -n1 dirname | sort -u)
  for pkg in $pkgs; do
    pkg=./${pkg#./}
    for f in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz'); do
      echo "== fuzz $pkg $f ($fuzztime)"
      # Go's fuzzing coordinator can itself fail at the end of -fuzztime
      # with "context deadline exceeded" on a loaded machine, with no
      # failing input (a known issue of the Go fuzzer). That one failure is run again,
      # once; a failing input always fails the run.
      if ! out=$(go test -run '^$' -fuzz "^$f\$" -fuzztime "$fuzztime" "$pkg" 2>&1); then
        echo "$out"
        if grep -q 'context deadline exceeded' <<<"$out" && ! grep -q 'Failing input' <<<"$out"; then
          echo "== fuzz $pkg $f again: the fuzzing engine timed out without a failing input"
          go test -run '^$' -fuzz "^$f\$" -fuzztime "$fuzztime" "$pkg"
        else
          exit 1
        fi
      else
        echo "$out" | tail -3
      fi
    done
  done
fi

echo "== leftover mounts"
left=$(mounts_under "$testtmp")
if [ -n "$left" ]; then
  echo "tests left mounts behind:"; echo "$left"; exit 1
fi
echo "all checks passed"
