package integration

import (
	"os/exec"
	"testing"
)

// Plain Nix substitutes a closure through `ipnix serve` whose binary cache
// is itself in IPFS (publish --ipfs-dir, --substituter ipfs://CID), with
// only a gateway as the block source: no kubo API on the serving machine.
func TestServeFromIPFSCache(t *testing.T) {
	p := publishClosure(t)
	lines, _ := ipfsDirPublish(t, "--api", p.kubo.api, "--to", p.cache, "--ipfs-dir")
	if len(lines) != 1 {
		t.Fatalf("publish --ipfs-dir printed %q, want one CID", lines)
	}
	dirCid := lines[0]
	t.Setenv("IPFS_PATH", t.TempDir()) // no kubo API to fall back to
	url, srv := startServe(t, "--gateway", p.kubo.Gateway, "--substituter", "ipfs://"+dirCid, "--trusted-public-key", p.pub)
	dest, out, err := nixCopy(t, url, p.pub, p.closure.top)
	if err != nil {
		t.Fatalf("nix copy through ipnix serve --substituter ipfs://%s: %v\n%s\nserve log:\n%s", dirCid, err, out, srv.Log.String())
	}
	for _, sp := range p.closure.paths {
		if o, err := exec.Command("nix-store", "--store", dest, "--verify-path", sp).CombinedOutput(); err != nil {
			t.Errorf("nix-store --verify-path %s in the copy: %v\n%s", sp, err, o)
		}
	}
	// A path the directory does not hold is not offered.
	if _, out, err := nixCopy(t, url, p.pub, "/nix/store/00000000000000000000000000000000-nothing"); err == nil {
		t.Fatalf("nix copy of a path the cache does not hold succeeded:\n%s", out)
	}
}
