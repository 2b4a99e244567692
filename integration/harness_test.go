package integration

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ipnix/ipnix/integration/runenv"
)

var (
	ipnixBin string // built once in TestMain
	ipfsBin  string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ipnix-integration-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		if ipnixBin, err = runenv.BuildIpnix(dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if ipfsBin, err = runenv.KuboBinary(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// requireReal skips (or, under CI, fails) when a real component is missing.
func requireReal(t *testing.T) {
	t.Helper()
	var missing []string
	if _, err := os.Stat("/dev/fuse"); err != nil {
		missing = append(missing, "/dev/fuse")
	}
	for _, bin := range []string{"nix-build", "nix-store", "nix", "fusermount3"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("IPNIX_REQUIRE_INTEGRATION") == "1" {
		t.Fatalf("missing %s (install fuse3 and nix-bin)", strings.Join(missing, ", "))
	}
	t.Skipf("missing %s", strings.Join(missing, ", "))
}

// kubo is a throwaway daemon stopped by the test's cleanup.
type kubo struct {
	*runenv.Kubo
	api string
}

func startKubo(t *testing.T) *kubo {
	t.Helper()
	k, err := runenv.StartKubo(ipfsBin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Stop)
	return &kubo{Kubo: k, api: k.API}
}

// ipfs runs the pinned kubo CLI against this daemon.
func (k *kubo) ipfs(t *testing.T, stdin io.Reader, args ...string) string {
	t.Helper()
	out, err := k.Run(stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ipnixCmd runs the built ipnix binary to completion.
func ipnixCmd(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(ipnixBin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mount is an `ipnix mount` running in its own process.
type mount struct {
	*runenv.Mount
	dir string
	log *runenv.SyncBuffer
}

// proc is the mount's process.
func (m *mount) proc() *os.Process { return m.Cmd.Process }

// startMount runs ipnix mount with args plus a mount point and a metrics
// address, waits until the mount is live and unmounts it in cleanup, even
// when the test fails.
func startMount(t *testing.T, args ...string) *mount {
	t.Helper()
	return startMountAt(t, t.TempDir(), args...)
}

func startMountAt(t *testing.T, dir string, args ...string) *mount {
	t.Helper()
	m, err := tryStartMountAt(t, dir, args...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// tryStartMountAt is startMountAt returning the error of a mount that
// does not start.
func tryStartMountAt(t *testing.T, dir string, args ...string) (*mount, error) {
	t.Helper()
	rm, err := runenv.StartMount(ipnixBin, dir, args...)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		if err := rm.Stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("ipnix mount log:\n%s", rm.Log.String())
		}
	})
	return &mount{Mount: rm, dir: dir, log: rm.Log}, nil
}

// metric reads one counter from the mount's /metrics.
func (m *mount) metric(t *testing.T, name string) int64 {
	t.Helper()
	v, err := m.Metric(name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// waitLog waits until the mount's log contains all of want (the process
// writes through a pipe, so a line may trail the syscall it explains).
func (m *mount) waitLog(want ...string) bool {
	return m.WaitFor(10*time.Second, want...) == nil
}

// withTimeout runs f in the background and fails the test if it does not
// return in d: a hang is a failure, not a stuck CI job.
func withTimeout(t *testing.T, d time.Duration, what string, f func(ctx context.Context)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); f(ctx) }()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatalf("%s did not finish within %v", what, d)
	}
}
