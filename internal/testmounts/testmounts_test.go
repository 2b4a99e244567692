package testmounts_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ipnix/ipnix/internal/hangfs"
)

// mounted tells whether dir is a mount point, from /proc/mounts (a stat
// of a dead FUSE mount would fail or hang).
func mounted(t *testing.T, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[1] == dir {
			return true
		}
	}
	return false
}

// A test binary killed by its -timeout while serving a mount leaves no
// mount behind: the watchdog Track arms detaches it first.
func TestTimeoutLeavesNoMount(t *testing.T) {
	if os.Getenv("TESTMOUNTS_HANG") == "1" {
		// The child: mount, say where, and wait for the timeout.
		dir := hangfs.Dir(t)
		os.Stdout.WriteString("MOUNT " + dir + "\n")
		time.Sleep(time.Hour)
		return
	}
	hangfs.Dir(t) // skips without root or /dev/fuse
	cmd := exec.Command(os.Args[0], "-test.run=^TestTimeoutLeavesNoMount$", "-test.timeout=4s")
	cmd.Env = append(os.Environ(), "TESTMOUNTS_HANG=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var dir string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "MOUNT "); ok {
			dir = d
			break
		}
	}
	if dir == "" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the child did not mount:\n%s", stderr.String())
	}
	if !mounted(t, dir) {
		t.Fatalf("%s is not mounted while the child runs", dir)
	}
	go func() { _, _ = bufio.NewReader(out).WriteTo(new(strings.Builder)) }()
	err = cmd.Wait()
	if err == nil || !strings.Contains(stderr.String(), "test timed out") {
		t.Fatalf("the child was not ended by its timeout: %v\n%s", err, stderr.String())
	}
	if mounted(t, dir) {
		exec.Command("fusermount3", "-u", "-z", dir).Run()
		os.RemoveAll(filepath.Dir(dir))
		t.Fatalf("the child's mount %s outlived it:\n%s", dir, stderr.String())
	}
	os.RemoveAll(filepath.Dir(dir)) // the child's TempDir, which its cleanup did not remove
	if !strings.Contains(stderr.String(), "detaching "+dir) {
		t.Errorf("no word of the detach in the child's output:\n%s", stderr.String())
	}
}
