// Package runenv starts the real components that integration tests and the
// benchmark run against: throwaway kubo daemons (the version pinned in
// go.mod as a tool) and `ipnix mount` in its own process. Everything it
// starts listens on loopback only and is stopped by Stop.
package runenv

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
	"time"
)

// BuildIpnix builds cmd/ipnix into dir and returns the binary's path.
func BuildIpnix(dir string) (string, error) {
	bin := filepath.Join(dir, "ipnix")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/ipnix/ipnix/cmd/ipnix").CombinedOutput(); err != nil {
		return "", fmt.Errorf("building ipnix: %v\n%s", err, out)
	}
	return bin, nil
}

// KuboBinary returns the pinned kubo, building it into Go's cache if needed.
func KuboBinary() (string, error) {
	out, err := exec.Command("go", "tool", "-n", "ipfs").Output()
	if err != nil {
		return "", fmt.Errorf("locating the pinned kubo (go tool -n ipfs): %v", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// Proc is a started process with its combined output.
type Proc struct {
	Cmd    *exec.Cmd
	Log    *SyncBuffer
	exited chan struct{}
}

// Start starts cmd, collecting its output. The process is sent SIGTERM
// when the process that started it ends (PR_SET_PDEATHSIG), so that a
// test killed by its timeout, which runs no cleanup, leaves no daemon or
// mount process behind: both stop on SIGTERM as on Stop. (The signal
// comes when the starting thread ends; Go ends threads only when a
// goroutine locked to one exits, which the callers here never do.)
func Start(cmd *exec.Cmd) (*Proc, error) {
	p := &Proc{Cmd: cmd, Log: &SyncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.Log, p.Log
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGTERM
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() { cmd.Wait(); close(p.exited) }()
	return p, nil
}

// Exited is closed when the process has exited.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Stop sends SIGTERM and, after grace, SIGKILL; it returns when the process
// has exited.
func (p *Proc) Stop(grace time.Duration) {
	p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		p.Cmd.Process.Kill()
		<-p.exited
	}
}

// WaitFor polls until the log contains all of want, the process exits, or
// timeout passes.
func (p *Proc) WaitFor(timeout time.Duration, want ...string) error {
	deadline := time.Now().Add(timeout)
	for {
		log := p.Log.String()
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(log, w)
		}
		if ok {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited:\n%s", filepath.Base(p.Cmd.Path), log)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %q not seen after %v:\n%s", filepath.Base(p.Cmd.Path), want, timeout, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kubo is a throwaway daemon: its own IPFS_PATH, loopback only, no
// bootstrap peers, no routing.
type Kubo struct {
	Bin     string
	Path    string // IPFS_PATH
	API     string // RPC multiaddr
	Gateway string // http://127.0.0.1:port
	// Wrap is a command prefix for the daemon and every CLI call, e.g.
	// nsenter --net=/run/netns/NS -- to run them in a network namespace.
	Wrap []string
	proc *Proc
}

var gatewayRE = regexp.MustCompile(`Gateway server listening on /ip4/127\.0\.0\.1/tcp/(\d+)`)

// StartKubo initialises a repository in path and starts the daemon.
func StartKubo(bin, path string) (*Kubo, error) { return StartKuboWrapped(bin, path, nil, nil) }

// StartKuboWrapped is StartKubo with every command prefixed by wrap (see
// Kubo.Wrap), calling before, when not nil, with the initialised repository
// before the daemon starts (offline `ipfs add` works then).
func StartKuboWrapped(bin, path string, wrap []string, before func(*Kubo) error) (*Kubo, error) {
	k := &Kubo{Bin: bin, Path: path, Wrap: wrap}
	for _, args := range [][]string{
		{"init", "--profile=test", "-e"},
		{"config", "--json", "Bootstrap", "[]"},
		{"config", "Addresses.API", "/ip4/127.0.0.1/tcp/0"},
		{"config", "Addresses.Gateway", "/ip4/127.0.0.1/tcp/0"},
		{"config", "--json", "Addresses.Swarm", `["/ip4/127.0.0.1/tcp/0"]`},
		{"config", "--json", "Discovery.MDNS.Enabled", "false"},
		{"config", "--json", "Routing.Type", `"none"`},
	} {
		if _, err := k.Run(nil, args...); err != nil {
			return nil, err
		}
	}
	if before != nil {
		if err := before(k); err != nil {
			return nil, err
		}
	}
	cmd := wrapped(wrap, bin, "daemon", "--enable-gc=false")
	cmd.Env = append(os.Environ(), "IPFS_PATH="+path)
	p, err := Start(cmd)
	if err != nil {
		return nil, err
	}
	k.proc = p
	if err := p.WaitFor(90*time.Second, "Daemon is ready"); err != nil {
		p.Stop(5 * time.Second)
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(path, "api"))
	if err != nil {
		p.Stop(5 * time.Second)
		return nil, err
	}
	k.API = strings.TrimSpace(string(b))
	if b, err := os.ReadFile(filepath.Join(path, "gateway")); err == nil {
		k.Gateway = strings.TrimSpace(string(b))
	} else if m := gatewayRE.FindStringSubmatch(p.Log.String()); m != nil {
		k.Gateway = "http://127.0.0.1:" + m[1]
	}
	return k, nil
}

// Run runs the kubo CLI against this repository (and its daemon, if up).
func (k *Kubo) Run(stdin io.Reader, args ...string) (string, error) {
	if k.API != "" {
		args = append([]string{"--api", k.API}, args...)
	}
	cmd := wrapped(k.Wrap, k.Bin, args...)
	cmd.Env = append(os.Environ(), "IPFS_PATH="+k.Path)
	cmd.Stdin = stdin
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("ipfs %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

// Pid is the daemon's process id.
func (k *Kubo) Pid() int { return k.proc.Cmd.Process.Pid }

// Stop stops the daemon.
func (k *Kubo) Stop() { k.proc.Stop(20 * time.Second) }

// wrapped is exec.Command(name, args...) behind the command prefix wrap.
func wrapped(wrap []string, name string, args ...string) *exec.Cmd {
	if len(wrap) == 0 {
		return exec.Command(name, args...)
	}
	all := append(append(append([]string{}, wrap[1:]...), name), args...)
	return exec.Command(wrap[0], all...)
}

// Mount is an `ipnix mount` in its own process.
type Mount struct {
	Dir     string
	Metrics string // base URL of the metrics endpoint
	// HTTP reads Metrics; nil is http.DefaultClient. A mount in another
	// network namespace needs a client that dials there.
	HTTP *http.Client
	*Proc
}

var metricsRE = regexp.MustCompile(`metrics on (http://\S+)/metrics`)

// StartMount runs `ipnix mount --metrics 127.0.0.1:0 ARGS DIR` and waits
// until it serves.
func StartMount(bin, dir string, args ...string) (*Mount, error) {
	return StartMountWrapped(nil, bin, dir, args...)
}

// StartMountWrapped is StartMount with the command prefixed by wrap (see
// Kubo.Wrap). The prefix must exec the mount in the same process (as
// nsenter without --fork does), so that Stop's signals reach it.
func StartMountWrapped(wrap []string, bin, dir string, args ...string) (*Mount, error) {
	all := append([]string{"mount", "--metrics", "127.0.0.1:0"}, args...)
	p, err := Start(wrapped(wrap, bin, append(all, dir)...))
	if err != nil {
		return nil, err
	}
	m := &Mount{Dir: dir, Proc: p}
	if err := p.WaitFor(30*time.Second, "ipnix: serving"); err != nil {
		m.Stop()
		return nil, err
	}
	for !IsMounted(dir) {
		time.Sleep(10 * time.Millisecond)
	}
	if sm := metricsRE.FindStringSubmatch(p.Log.String()); sm != nil {
		m.Metrics = sm[1]
	}
	return m, nil
}

// Stop unmounts (SIGTERM) and, if a mount is left behind, detaches it and
// reports that as an error.
func (m *Mount) Stop() error {
	m.Proc.Stop(15 * time.Second)
	if IsMounted(m.Dir) {
		exec.Command("fusermount3", "-u", "-z", m.Dir).Run()
		return fmt.Errorf("mount at %s was left behind after ipnix exited", m.Dir)
	}
	return nil
}

// Metric reads one value from the mount's /metrics.
func (m *Mount) Metric(name string) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", m.Metrics+"/metrics", nil)
	client := m.HTTP
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == name {
			return strconv.ParseInt(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("metric %s not found", name)
}

// PeakRSS is the process's peak resident set size in bytes (VmHWM).
func PeakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, fmt.Errorf("no VmHWM for pid %d", pid)
}

// IO is a process's storage I/O counters from /proc/<pid>/io: bytes it
// caused to be read from and written to the storage layer (counted when
// pages are dirtied), and dirty bytes it truncated before they were written.
type IO struct {
	ReadBytes, WriteBytes, CancelledWriteBytes int64
}

// ProcIO reads /proc/<pid>/io.
func ProcIO(pid int) (IO, error) {
	name := fmt.Sprintf("/proc/%d/io", pid)
	b, err := os.ReadFile(name)
	if err != nil {
		return IO{}, err
	}
	c, err := ParseProcIO(b)
	if err != nil {
		return IO{}, fmt.Errorf("%s: %w", name, err)
	}
	return c, nil
}

// ParseProcIO parses the text of /proc/<pid>/io.
func ParseProcIO(b []byte) (IO, error) {
	var c IO
	seen := 0
	for _, line := range strings.Split(string(b), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *int64
		var bit int
		switch key {
		case "read_bytes":
			dst, bit = &c.ReadBytes, 1
		case "write_bytes":
			dst, bit = &c.WriteBytes, 2
		case "cancelled_write_bytes":
			dst, bit = &c.CancelledWriteBytes, 4
		default:
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(val), 10, 64)
		if err != nil || n < 0 {
			return IO{}, fmt.Errorf("bad %s value %q", key, strings.TrimSpace(val))
		}
		*dst = n
		seen |= bit
	}
	if seen != 7 {
		return IO{}, fmt.Errorf("read_bytes, write_bytes or cancelled_write_bytes missing")
	}
	return c, nil
}

// IsMounted reports whether dir is a mount point.
func IsMounted(dir string) bool {
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

// SyncBuffer is a bytes.Buffer safe for a writing process and a reader.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
