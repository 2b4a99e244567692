package integration

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A program started from the mount is fetched whole at its first read
// (the kernel reads it with __FMODE_EXEC), in parallel, rather than fault
// by fault; reading the same file is not starting it.
func TestExecFetchesProgramWhole(t *testing.T) {
	requireReal(t)
	k := startKubo(t)
	// The program is the host's bash with a tail no start ever reads: only
	// a fetch of the whole file brings the tail. Same bytes on every run
	// of a machine, so the same store path.
	bash, err := os.ReadFile("/bin/bash")
	if err != nil {
		t.Skipf("no /bin/bash to start: %v", err)
	}
	tail := make([]byte, 6<<20)
	rand.NewChaCha8([32]byte{'e', 'x', 'e', 'c'}).Read(tail)
	src := filepath.Join(t.TempDir(), "ipnix-exec-test")
	if err := os.MkdirAll(filepath.Join(src, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "bin", "prog"), append(bash, tail...), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nix-store", "--add", src).Output()
	if err != nil {
		t.Fatalf("nix-store --add: %v", err)
	}
	sp := strings.TrimSpace(string(out))
	sec, pub := genKey(t, "ipnix-exec-test")
	cache := t.TempDir()
	if out, err := ipnixCmd(t, nil, "publish", "--api", k.API, "--to", cache, "--secret-key", sec, "--no-closure", sp); err != nil {
		t.Fatalf("ipnix publish: %v\n%s", err, out)
	}
	m := startMount(t, "--api", k.API, "--gateway", k.Gateway, "--substituter", "file://"+cache, "--trusted-public-key", pub)
	prog := filepath.Join(m.dir, filepath.Base(sp), "bin", "prog")
	size := int64(len(bash) + len(tail))

	f, err := os.Open(prog)
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 4096)
	if _, err := f.ReadAt(head, 0); err != nil || !bytes.Equal(head, bash[:4096]) {
		t.Fatalf("reading the program's head: %v", err)
	}
	f.Close()
	if n := m.metric(t, "ipnix_exec_fetches_total"); n != 0 {
		t.Fatalf("a plain read counted as a start: %d exec fetches", n)
	}
	if got := m.metric(t, "ipnix_fetch_bytes_total"); got >= size/2 {
		t.Fatalf("reading 4 KiB of the program fetched %d of its %d bytes", got, size)
	} else {
		t.Logf("reading 4 KiB of the program fetched %d of its %d bytes", got, size)
	}

	for run := range 2 {
		out, err := exec.Command(prog, "-c", "echo started-$((6*7))").CombinedOutput()
		if err != nil || string(out) != "started-42\n" {
			t.Fatalf("starting the program from the mount (run %d): %v: %q", run, err, out)
		}
		if n := m.metric(t, "ipnix_exec_fetches_total"); n != 1 {
			t.Fatalf("after %d start(s): %d exec fetches, want 1 (once per file)", run+1, n)
		}
	}
	// The fetch runs beside the start; the tail arrives shortly after.
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := m.metric(t, "ipnix_fetch_bytes_total")
		if got >= size {
			t.Logf("fetched %d bytes for a %d-byte program", got, size)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fetched %d bytes after the start, not the whole %d-byte program", got, size)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
