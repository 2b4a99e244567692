package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// closureExpr builds four store paths with references between them and
// every kind of object the mount must serve. Builds run without a sandbox
// (Debian's Nix), so the builder uses the host's coreutils.
const closureExpr = `
let
  sh = script: name: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ("export PATH=/usr/bin:/bin; set -e; " + script) ];
  };
  lib = sh ''
    mkdir -p $out/share/doc/deep/er/still $out/empty-dir $out/sizes
    echo "hello from lib" > $out/share/msg
    : > $out/empty
    for n in 0 1 7 8 9 15 16 17 255 256 257 262143 262144 262145 524288; do
      head -c $n /dev/urandom > $out/sizes/f$n
    done
    head -c 6000000 /dev/urandom > $out/share/big.bin
    echo deep > $out/share/doc/deep/er/still/file
    printf B > $out/share/B; printf a > $out/share/a; printf _ > $out/share/_
    printf 'utf8' > "$out/share/$(printf '\303\251t\303\251')"
  '' "ipnix-test-lib";
  bin = sh ''
    mkdir -p $out/bin
    cp /bin/echo $out/bin/echo
    printf '#!/bin/sh\ncat ${lib}/share/msg\n' > $out/bin/hello
    chmod 555 $out/bin/hello
    ln -s hello $out/bin/hello-rel
    ln -s ${lib}/share/msg $out/msg-abs
    ln -s /nonexistent/dangling $out/dangling
    ln -s ../bin $out/bin/up
  '' "ipnix-test-bin";
  big = sh ''
    mkdir -p $out
    head -c 20000000 /dev/urandom > $out/large.bin
    echo small > $out/small.txt
  '' "ipnix-test-big";
in sh ''
  echo ${bin} ${big} > $out
'' "ipnix-test-top"
`

// testClosure is the built closure: the top path and every path in it.
type testClosure struct {
	top   string
	paths []string // full store paths
}

func (c *testClosure) path(t *testing.T, name string) string {
	t.Helper()
	for _, p := range c.paths {
		if strings.HasSuffix(p, "-"+name) {
			return p
		}
	}
	t.Fatalf("no store path named %s in %v", name, c.paths)
	return ""
}

func buildClosure(t *testing.T) *testClosure {
	t.Helper()
	dir := t.TempDir()
	expr := filepath.Join(dir, "closure.nix")
	if err := os.WriteFile(expr, []byte(closureExpr), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nix-build", "--no-out-link", expr).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("nix-build: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	top := strings.TrimSpace(string(out))
	req, err := exec.Command("nix-store", "--query", "--requisites", top).Output()
	if err != nil {
		t.Fatalf("nix-store --query --requisites: %v", err)
	}
	return &testClosure{top: top, paths: strings.Fields(string(req))}
}

// nixHashPath is Nix's own NAR hash of a directory tree.
func nixHashPath(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("nix", "--extra-experimental-features", "nix-command",
		"hash", "path", "--base32", "--type", "sha256", path).CombinedOutput()
	if err != nil {
		t.Fatalf("nix hash path %s: %v\n%s", path, err, out)
	}
	return "sha256:" + strings.TrimSpace(string(out))
}

// genKey makes a Nix signing key pair and returns the secret key file and
// the public key.
func genKey(t *testing.T, name string) (secFile, pub string) {
	t.Helper()
	dir := t.TempDir()
	sec, pubFile := filepath.Join(dir, "sec"), filepath.Join(dir, "pub")
	if out, err := exec.Command("nix-store", "--generate-binary-cache-key", name, sec, pubFile).CombinedOutput(); err != nil {
		t.Fatalf("generating key: %v\n%s", err, out)
	}
	b, err := os.ReadFile(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	return sec, strings.TrimSpace(string(b))
}
