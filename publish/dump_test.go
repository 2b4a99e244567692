package publish

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipnix/ipnix/narindex"
)

func mkfifo(p string) error { return unix.Mkfifo(p, 0o644) }

// dumpAll runs a walk and its writer into memory, the way ingest does.
// With window < 0, no file may be held open: the writer opens each again.
func dumpAll(t *testing.T, root string, window int64) ([]byte, error) {
	t.Helper()
	ra := newReadAhead(max(window, 0))
	if window < 0 {
		for range cap(ra.fds) {
			ra.fds <- struct{}{}
		}
	}
	w := startWalk(root, ra)
	defer w.stop()
	f := newFanout(1)
	var out bytes.Buffer
	wait := f.drain(0, func(p []byte) error { out.Write(p); return nil })
	err := dumpChunks(w)(f)
	if err != nil {
		f.fail(err)
	}
	f.close()
	wait()
	w.stop()
	if ra.held() != 0 {
		t.Errorf("%d bytes of the read-ahead window not given back", ra.held())
	}
	if n := len(ra.fds); window >= 0 && n != 0 {
		t.Errorf("%d files still counted as held", n)
	}
	return out.Bytes(), err
}

func writeTestTree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "tree")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "bin"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "share/empty"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "a.b/c"), 0o755))
	must(os.WriteFile(filepath.Join(root, "bin/run"), []byte("#!/bin/sh\nexit 0\n"), 0o755))
	must(os.WriteFile(filepath.Join(root, "empty"), nil, 0o644))
	must(os.WriteFile(filepath.Join(root, "seven"), []byte("1234567"), 0o644))
	must(os.WriteFile(filepath.Join(root, "a.b/c/d"), []byte("d"), 0o644))
	// Larger than a chunk and than the window of the small-window case,
	// and not a multiple of 8.
	big := bytes.Repeat([]byte("0123456789abcdef"), (3*chunkSize)/16+3)
	must(os.WriteFile(filepath.Join(root, "big"), append(big, 'x'), 0o644))
	// Bytewise order: upper case before lower, "a-" before "a." before "a".
	for _, n := range []string{"B", "a", "a-", "Z", "z"} {
		must(os.WriteFile(filepath.Join(root, n), []byte(n), 0o644))
	}
	must(os.Symlink("bin/run", filepath.Join(root, "link")))
	must(os.Symlink("/nonexistent/target", filepath.Join(root, "dangling")))
	must(os.Symlink(strings.Repeat("x/", 100), filepath.Join(root, "long")))
	return root
}

// The walk writes the bytes of narindex.DumpPath, for trees and for a
// root that is a file or a symlink, whatever the window, and whether the
// walk holds files open for the writer or the writer opens them again.
func TestDumpMatchesDumpPath(t *testing.T) {
	root := writeTestTree(t)
	for _, p := range []string{root, filepath.Join(root, "big"), filepath.Join(root, "empty"), filepath.Join(root, "link"), filepath.Join(root, "share")} {
		var want bytes.Buffer
		if err := narindex.DumpPath(&want, p); err != nil {
			t.Fatal(err)
		}
		for _, window := range []int64{0, 100, 64 << 20, -1} {
			got, err := dumpAll(t, p, window)
			if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			if !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("%s (window %d): NAR differs from DumpPath (%d vs %d bytes)", p, window, len(got), want.Len())
			}
		}
	}
}

// And those of nix-store --dump, where Nix is installed.
func TestDumpMatchesNixStoreDump(t *testing.T) {
	if _, err := exec.LookPath("nix-store"); err != nil {
		t.Skip("nix-store not installed")
	}
	root := writeTestTree(t)
	want, err := exec.Command("nix-store", "--dump", root).Output()
	if err != nil {
		t.Fatal(err)
	}
	got, err := dumpAll(t, root, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("NAR differs from nix-store --dump (%d vs %d bytes)", len(got), len(want))
	}
}

func TestDumpErrorsNameTheEntry(t *testing.T) {
	if _, err := dumpAll(t, filepath.Join(t.TempDir(), "missing"), 0); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("missing root: %v", err)
	}
	root := t.TempDir()
	fifo := filepath.Join(root, "fifo")
	if err := mkfifo(fifo); err != nil {
		t.Skip(err)
	}
	if _, err := dumpAll(t, root, 0); err == nil || !strings.Contains(err.Error(), "fifo") {
		t.Fatalf("fifo: %v", err)
	}
}

// A file that is shorter than when the walk saw it is an error naming it,
// not a short NAR, whether the writer reads the walk's open file or opens
// it again.
func TestDumpFileShrinks(t *testing.T) {
	for _, hold := range []bool{true, false} {
		root := t.TempDir()
		p := filepath.Join(root, "f")
		if err := os.WriteFile(p, make([]byte, 5000), 0o644); err != nil {
			t.Fatal(err)
		}
		ra := newReadAhead(1 << 20)
		if !hold {
			for range cap(ra.fds) {
				ra.fds <- struct{}{}
			}
		}
		w := startWalk(root, ra)
		<-w.done // the file is seen and its size taken
		if err := os.Truncate(p, 100); err != nil {
			t.Fatal(err)
		}
		f := newFanout(1)
		wait := f.drain(0, func([]byte) error { return nil })
		err := dumpChunks(w)(f)
		f.close()
		wait()
		w.stop()
		if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "changed while being read") {
			t.Fatalf("shrunk file (held open %v): %v", hold, err)
		}
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	return len(ents)
}

// A walk that waits for room in the window stops when told, and a stopped
// walk closes every file it opened and gives back its share of the window.
func TestWalkStop(t *testing.T) {
	root := t.TempDir()
	for i := range 50 {
		if err := os.WriteFile(filepath.Join(root, string(rune('a'+i%26))+strings.Repeat("x", i)), make([]byte, 1000), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	before := openFDs(t)
	ra := newReadAhead(2500) // room for two files
	w := startWalk(root, ra)
	// Nothing reads: the walk opens files until the window is full and
	// then waits.
	deadline := time.Now().Add(10 * time.Second)
	for ra.held() < 2000 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	select {
	case <-w.done:
		t.Fatal("the walk did not wait for room in the window")
	case <-time.After(20 * time.Millisecond):
	}
	stopped := make(chan struct{})
	go func() { w.stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("stop did not end a waiting walk")
	}
	if ra.held() != 0 {
		t.Errorf("%d bytes of the window kept after stop", ra.held())
	}
	if n := openFDs(t); n != before {
		t.Errorf("%d files open after stop, %d before", n, before)
	}
}

// A writer whose sink fails stops reading; the error is the sink's.
func TestDumpSinkFailure(t *testing.T) {
	root := writeTestTree(t)
	// More chunks than are in flight, so that the writer has to wait.
	if err := os.Truncate(filepath.Join(root, "big"), 2*chunksInFlight*chunkSize); err != nil {
		t.Fatal(err)
	}
	ra := newReadAhead(64 << 20)
	w := startWalk(root, ra)
	f := newFanout(1)
	boom := errors.New("disk full")
	wait := f.drain(0, func([]byte) error { return boom })
	err := dumpChunks(w)(f)
	f.close()
	if werr := wait(); werr != boom {
		t.Fatalf("sink: %v", werr)
	}
	if err != boom {
		t.Fatalf("writer: %v, want the sink's error", err)
	}
	w.stop()
	if ra.held() != 0 {
		t.Errorf("%d bytes of the window kept", ra.held())
	}
}
