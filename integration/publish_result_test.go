package integration

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// `ipnix publish ./result` publishes what the link points at, and the
// cache it writes is readable by other users (a web server), as Nix's
// own caches are.
func TestPublishResultLinkReadable(t *testing.T) {
	requireReal(t)
	k := startKubo(t)
	dir := t.TempDir()
	expr := filepath.Join(dir, "closure.nix")
	if err := os.WriteFile(expr, []byte(closureExpr), 0o644); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("nix-build", "--out-link", filepath.Join(dir, "result"), expr)
	build.Env = append(os.Environ(), "NIX_CONFIG=substituters =")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("nix-build: %v\n%s", err, out)
	}
	cache := t.TempDir()
	cmd := exec.Command(ipnixBin, "publish", "--api", k.api, "--to", cache, "--no-closure", "./result")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "published 1 store path") {
		t.Fatalf("ipnix publish ./result: %v\n%s", err, out)
	}
	n := 0
	err := filepath.WalkDir(cache, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o044 != 0o044 {
			t.Errorf("%s has mode %v: not readable by other users", p, fi.Mode())
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 4 { // nix-cache-info, narinfo, .ls, NAR
		t.Fatalf("%d files in the cache", n)
	}
}
