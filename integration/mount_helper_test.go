package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipnix/ipnix/integration/runenv"
)

// As mount(8) runs it (mount.fuse.ipnix SOURCE DIR -o OPTS), ipnix returns
// once the filesystem is mounted and leaves the server running detached;
// unmounting stops the server. A mount that cannot start returns its
// error and exit code.
func TestMountHelperDetaches(t *testing.T) {
	p := publishClosure(t)
	helper := filepath.Join(t.TempDir(), "mount.fuse.ipnix")
	if err := os.Symlink(ipnixBin, helper); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	opts := "ro,substituter=file://" + p.cache + ",trusted-public-key=" + p.pub + ",api=" + p.kubo.api
	t.Cleanup(func() {
		if runenv.IsMounted(dir) {
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	// Output to a file, as from a terminal: the detached server keeps
	// writing its log there, so a pipe would stay open.
	logf, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	withTimeout(t, time.Minute, "mount.fuse.ipnix", func(context.Context) {
		c := exec.Command(helper, "ipnix", dir, "-o", opts)
		c.Stdout, c.Stderr = logf, logf
		err = c.Run()
	})
	out, _ := os.ReadFile(logf.Name())
	if err != nil {
		t.Fatalf("mount.fuse.ipnix: %v\n%s", err, out)
	}
	if !runenv.IsMounted(dir) {
		t.Fatalf("mount.fuse.ipnix returned with nothing mounted:\n%s", out)
	}
	lib := p.closure.path(t, "ipnix-test-lib")
	msg, err := os.ReadFile(filepath.Join(dir, filepath.Base(lib), "share/msg"))
	if err != nil || string(msg) != "hello from lib\n" {
		t.Fatalf("read through the detached server: %q %v", msg, err)
	}
	if err := syscall.Unmount(dir, 0); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids := processesWith(" mount ipnix " + dir)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server still running after the unmount: pids %v", pids)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// A mount that cannot start says why, with its exit code.
	bad := exec.Command(helper, "ipnix", t.TempDir(), "-o", "substituter=file:///no/such/cache,no-require-sigs")
	out, err = bad.CombinedOutput() // the server exits, so the pipe closes
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "/no/such/cache") {
		t.Fatalf("failing mount.fuse.ipnix: %v\n%s", err, out)
	}
}

// processesWith lists the processes whose command line (arguments joined
// by spaces) contains s. It reads /proc: pgrep is not on every machine.
func processesWith(s string) []string {
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		if strings.Contains(strings.ReplaceAll(string(b), "\x00", " "), s) {
			out = append(out, e.Name())
		}
	}
	return out
}
