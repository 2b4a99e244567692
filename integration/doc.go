// Package integration holds the tests that run ipnix against real
// components: throwaway kubo daemons (the version pinned in go.mod as a
// tool), real FUSE mounts served by the built ipnix binary in its own
// process, and real Nix (nix-build, nix hash path) as the oracle.
//
// The tests skip when /dev/fuse, nix-build or fusermount3 are missing,
// unless IPNIX_REQUIRE_INTEGRATION=1 (as .ci/run sets), where they fail.
package integration
