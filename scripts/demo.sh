#!/usr/bin/env bash
# End to end on a fresh machine: build ipnix and the pinned kubo, start a
# throwaway IPFS node on loopback, build a small closure with real Nix,
# publish it, mount it, run a program from the mount, print how many bytes
# were fetched, and clean everything up.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
.ci/install-deps

# Everything the demo builds comes from this machine: no Nix command here
# (nor the ones ipnix publish runs) needs an outside substituter, and on a
# machine without internet asking cache.nixos.org costs seconds of retries.
export NIX_CONFIG="${NIX_CONFIG:+$NIX_CONFIG
}substituters ="

work=$(mktemp -d /tmp/ipnix-demo.XXXXXX)
daemon_pid= mount_pid=
cleanup() {
  set +e
  [ -n "$mount_pid" ] && kill -TERM "$mount_pid" 2>/dev/null && wait "$mount_pid" 2>/dev/null
  grep -q " $work/mnt " /proc/mounts && fusermount3 -u -z "$work/mnt"
  [ -n "$daemon_pid" ] && kill -TERM "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "building ipnix and kubo"
go build -o "$work/ipnix" ./cmd/ipnix
ipfs=$(go tool -n ipfs)
ipnix="$work/ipnix"

step "starting a throwaway IPFS node (loopback only, no bootstrap peers)"
export IPFS_PATH="$work/ipfs"
"$ipfs" init --profile=test -e >/dev/null
"$ipfs" config --json Bootstrap '[]'
"$ipfs" config Addresses.API /ip4/127.0.0.1/tcp/0
"$ipfs" config Addresses.Gateway /ip4/127.0.0.1/tcp/0
"$ipfs" config --json Addresses.Swarm '["/ip4/127.0.0.1/tcp/0"]'
"$ipfs" config --json Routing.Type '"none"'
"$ipfs" daemon --enable-gc=false >"$work/ipfs.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 600); do grep -q "Daemon is ready" "$work/ipfs.log" && break; sleep 0.1; done
grep -q "Daemon is ready" "$work/ipfs.log" || { cat "$work/ipfs.log"; exit 1; }
api=$(cat "$IPFS_PATH/api")
echo "kubo API at $api"

step "building a small closure with Nix"
top=$(nix-build --no-out-link scripts/demo.nix)
nix-store --query --requisites "$top"

step "publishing it to IPFS and a binary cache"
nix-store --generate-binary-cache-key ipnix-demo-1 "$work/sec" "$work/pub"
"$ipnix" publish --api "$api" --to "$work/cache" --secret-key "$work/sec" "$top"
sed -n 's/^/  /p' "$work/cache/$(basename "$top" | cut -d- -f1).narinfo"

step "mounting it lazily"
mkdir "$work/mnt"
"$ipnix" mount --api "$api" --substituter "file://$work/cache" \
  --trusted-public-key "$(cat "$work/pub")" --metrics 127.0.0.1:0 "$work/mnt" 2>"$work/mount.log" &
mount_pid=$!
for _ in $(seq 300); do grep -q " $work/mnt " /proc/mounts && break; sleep 0.1; done
grep -q " $work/mnt " /proc/mounts || { cat "$work/mount.log"; exit 1; }
metrics=$(sed -n 's|.*metrics on \(http://[^ ]*\)/metrics.*|\1/metrics|p' "$work/mount.log")

step "running a program from the mount"
"$work/mnt/$(basename "$top")/bin/hello"

fetched=$(curl -s "$metrics" | awk '$1=="ipnix_fetch_bytes_total"{print $2}')
total=$(nix --extra-experimental-features nix-command path-info --closure-size "$top" | awk '{print $2}')
step "result"
echo "closure NAR size: $total bytes; fetched from IPFS to run the program: $fetched bytes"
