package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// killedExpr builds one store path of a 200 MB file: long enough to
// publish that the test can kill the publish while it writes the NAR.
const killedExpr = `derivation {
  name = "ipnix-publish-killed";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "export PATH=/usr/bin:/bin; mkdir $out; head -c 200000000 /dev/urandom > $out/f" ];
}`

// A publish killed while it writes a NAR leaves its temporary NAR file;
// the next publish into the same cache, once that file is stale, removes
// it and publishes the path.
func TestPublishKilledLeavesNothingForLong(t *testing.T) {
	requireReal(t)
	k := startKubo(t)
	expr := filepath.Join(t.TempDir(), "killed.nix")
	must(t, os.WriteFile(expr, []byte(killedExpr), 0o644))
	out, err := exec.Command("nix-build", "--no-out-link", expr).Output()
	if err != nil {
		t.Fatalf("nix-build: %v", err)
	}
	sp := strings.TrimSpace(string(out))
	cache := t.TempDir()
	publish := func() *exec.Cmd {
		return exec.Command(ipnixBin, "publish", "--api", k.api, "--to", cache, "--no-closure", sp)
	}

	// Kill the first publish as soon as its NAR file has bytes.
	cmd := publish()
	must(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var tmp string
	deadline := time.Now().Add(2 * time.Minute)
	for tmp == "" {
		select {
		case err := <-exited:
			t.Fatalf("publish ended (%v) before the test saw its temporary NAR file", err)
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("no temporary NAR file appeared")
		}
		matches, _ := filepath.Glob(filepath.Join(cache, "nar", ".tmp-*"))
		for _, m := range matches {
			if fi, err := os.Stat(m); err == nil && fi.Size() > 0 {
				tmp = m
			}
		}
		time.Sleep(200 * time.Microsecond)
	}
	must(t, cmd.Process.Signal(syscall.SIGKILL))
	<-exited
	if _, err := os.Stat(tmp); err != nil {
		t.Fatalf("the killed publish's temporary file: %v", err)
	}
	if m, _ := filepath.Glob(filepath.Join(cache, "*.narinfo")); len(m) != 0 {
		t.Fatalf("a killed publish wrote %v", m)
	}

	// A day later, the next publish removes it and publishes the path.
	old := time.Now().Add(-25 * time.Hour)
	must(t, os.Chtimes(tmp, old, old))
	if out, err := publish().CombinedOutput(); err != nil || !strings.Contains(string(out), "published 1 store path") {
		t.Fatalf("publish after the kill: %v\n%s", err, out)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Fatalf("the stale temporary file is still there (%v)", err)
	}
	if m, _ := filepath.Glob(filepath.Join(cache, "nar", ".tmp-*")); len(m) != 0 {
		t.Fatalf("temporary files left: %v", m)
	}
}
