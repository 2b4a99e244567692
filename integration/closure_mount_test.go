package integration

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// `ipnix mount --closure` resolves the closure at start: the root lists
// every path of it, with . and .., before anything is looked up, and the
// paths read correctly. A closure that cannot be resolved stops the start
// with exit code 6 and a message naming the path.
func TestMountClosureListedAtStart(t *testing.T) {
	p := publishClosure(t)
	m := p.mount(t, "--closure", p.closure.top)
	out, err := exec.Command("ls", "-a", m.dir).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{".", ".."}
	for _, sp := range p.closure.paths {
		want = append(want, filepath.Base(sp))
	}
	slices.Sort(want[2:])
	if got := strings.Fields(string(out)); !slices.Equal(got, want) {
		t.Fatalf("ls -a of the root before any lookup:\n%q\nwant\n%q", got, want)
	}
	if !strings.Contains(m.log.String(), "4 store paths of 1 closures ready") {
		t.Errorf("no start-up summary in the log:\n%s", m.log.String())
	}
	lib := p.closure.path(t, "ipnix-test-lib")
	if got, want := nixHashPath(t, filepath.Join(m.dir, filepath.Base(lib))), p.narInfo(t, lib).NarHash.String(); got != want {
		t.Fatalf("nix hash path of a preloaded path: %s, want %s", got, want)
	}

	// A reference the cache lacks: refused at start.
	broken := t.TempDir()
	top := p.closure.top
	p.copyEntry(t, broken, top, nil) // the top path alone: its references are missing
	dir := t.TempDir()
	cmd := exec.Command(ipnixBin, "mount", "--api", p.kubo.api, "--substituter", "file://"+broken,
		"--trusted-public-key", p.pub, "--closure", top, dir)
	var outb []byte
	withTimeout(t, time.Minute, "a mount with an unresolvable closure", func(context.Context) { outb, err = cmd.CombinedOutput() })
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 6 {
		t.Fatalf("exit: %v, want code 6\n%s", err, outb)
	}
	if !strings.Contains(string(outb), "a reference of "+filepath.Base(top)) {
		t.Fatalf("message does not name the missing reference and who needs it:\n%s", outb)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatal(err)
	}
}
