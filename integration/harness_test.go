package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
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
		ipnixBin = filepath.Join(dir, "ipnix")
		if out, err := exec.Command("go", "build", "-o", ipnixBin, "github.com/ipnix/ipnix/cmd/ipnix").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building ipnix: %v\n%s", err, out)
			return 1
		}
		out, err := exec.Command("go", "tool", "-n", "ipfs").Output()
		if err != nil {
			fmt.Fprintf(os.Stderr, "locating the pinned kubo (go tool -n ipfs): %v\n", err)
			return 1
		}
		ipfsBin = strings.TrimSpace(string(out))
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

// kubo is a throwaway daemon: its own IPFS_PATH, loopback only, no
// bootstrap peers, stopped by the test's cleanup.
type kubo struct {
	path string
	api  string // multiaddr
}

func startKubo(t *testing.T) *kubo {
	t.Helper()
	k := &kubo{path: t.TempDir()}
	run := func(args ...string) {
		cmd := exec.Command(ipfsBin, args...)
		cmd.Env = append(os.Environ(), "IPFS_PATH="+k.path)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("ipfs %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("init", "--profile=test", "-e")
	// The test profile listens on loopback with port 0 and has no
	// bootstrap peers; make sure of both, and keep the gateway on loopback.
	run("config", "--json", "Bootstrap", "[]")
	run("config", "Addresses.API", "/ip4/127.0.0.1/tcp/0")
	run("config", "Addresses.Gateway", "/ip4/127.0.0.1/tcp/0")
	run("config", "--json", "Addresses.Swarm", `["/ip4/127.0.0.1/tcp/0"]`)
	run("config", "--json", "Discovery.MDNS.Enabled", "false")
	run("config", "--json", "Routing.Type", `"none"`)
	cmd := exec.Command(ipfsBin, "daemon", "--enable-gc=false")
	cmd.Env = append(os.Environ(), "IPFS_PATH="+k.path)
	var logBuf syncBuffer
	cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
	exited := startProcess(t, cmd, 20*time.Second, nil)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if strings.Contains(logBuf.String(), "Daemon is ready") {
			break
		}
		select {
		case <-exited:
			t.Fatalf("kubo exited during start:\n%s", logBuf.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubo not ready after 60s:\n%s", logBuf.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, err := os.ReadFile(filepath.Join(k.path, "api"))
	if err != nil {
		t.Fatal(err)
	}
	k.api = strings.TrimSpace(string(b))
	return k
}

// ipfs runs the pinned kubo CLI against this daemon.
func (k *kubo) ipfs(t *testing.T, stdin io.Reader, args ...string) string {
	t.Helper()
	cmd := exec.Command(ipfsBin, append([]string{"--api", k.api}, args...)...)
	cmd.Env = append(os.Environ(), "IPFS_PATH="+k.path)
	cmd.Stdin = stdin
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ipfs %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out))
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
	proc    *os.Process
	dir     string
	metrics string // base URL
	log     *syncBuffer
}

var metricsRE = regexp.MustCompile(`metrics on (http://\S+)/metrics`)

// startMount runs ipnix mount with args plus a mount point and a metrics
// address, waits until the mount is live and unmounts it in cleanup, even
// when the test fails.
func startMount(t *testing.T, args ...string) *mount {
	t.Helper()
	return startMountAt(t, t.TempDir(), args...)
}

func startMountAt(t *testing.T, dir string, args ...string) *mount {
	t.Helper()
	m := &mount{dir: dir, log: &syncBuffer{}}
	all := append([]string{"mount", "--metrics", "127.0.0.1:0"}, args...)
	all = append(all, m.dir)
	cmd := exec.Command(ipnixBin, all...)
	cmd.Stdout, cmd.Stderr = m.log, m.log
	exited := startProcess(t, cmd, 15*time.Second, func() {
		// Whatever happened, leave no mount behind.
		if isMounted(m.dir) {
			exec.Command("fusermount3", "-u", "-z", m.dir).Run()
			t.Errorf("mount at %s was left behind after ipnix exited", m.dir)
		}
		if t.Failed() {
			t.Logf("ipnix mount log:\n%s", m.log.String())
		}
	})
	m.proc = cmd.Process
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(m.log.String(), "ipnix: serving") || !isMounted(m.dir) {
		select {
		case <-exited:
			t.Fatalf("ipnix mount exited:\n%s", m.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not mounted after 30s:\n%s", m.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if sm := metricsRE.FindStringSubmatch(m.log.String()); sm != nil {
		m.metrics = sm[1]
	} else {
		t.Fatalf("no metrics address in log:\n%s", m.log.String())
	}
	return m
}

// metric reads one counter from the mount's /metrics.
func (m *mount) metric(t *testing.T, name string) int64 {
	t.Helper()
	resp, err := http.Get(m.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == name {
			v, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

func isMounted(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// syncBuffer is a bytes.Buffer safe for a writer process and a reader test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
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

// waitLog waits until the mount's log contains all of want (the process
// writes through a pipe, so a line may trail the syscall it explains).
func (m *mount) waitLog(want ...string) bool {
	deadline := time.Now().Add(10 * time.Second)
	for {
		log := m.log.String()
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(log, w)
		}
		if ok {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startProcess starts cmd and, in the test's cleanup, stops it with SIGTERM
// (SIGKILL after grace) and then runs after. The returned channel closes
// when the process has exited.
func startProcess(t *testing.T, cmd *exec.Cmd, grace time.Duration, after func()) <-chan struct{} {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(grace):
			cmd.Process.Kill()
			<-exited
		}
		if after != nil {
			after()
		}
	})
	return exited
}
