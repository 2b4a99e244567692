package integration

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// connTrap listens on loopback and counts the connections made to it,
// closing each at once: a kubo API that must never be reached.
type connTrap struct {
	addr  *net.TCPAddr
	conns atomic.Int64
}

func startConnTrap(t *testing.T) *connTrap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tr := &connTrap{addr: ln.Addr().(*net.TCPAddr)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tr.conns.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return tr
}

// A thin client: `ipnix mount` with only --gateway flags and no --api
// needs no kubo. The first gateway lies about every block and every range
// (each is a bit off), the second is kubo's real gateway; the mount passes
// the same differential test as a kubo-backed one, having failed over, and
// never connects to a kubo API, not even the default one ($IPFS_PATH/api
// names a trap that counts connections). Then the same with a first
// gateway that is down.
func TestThinClientGatewaysOnly(t *testing.T) {
	p := publishClosure(t)
	trap := startConnTrap(t)
	ipfsPath := t.TempDir()
	if err := os.WriteFile(filepath.Join(ipfsPath, "api"), []byte("/ip4/127.0.0.1/tcp/"+strconv.Itoa(trap.addr.Port)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("IPFS_PATH", ipfsPath) // inherited by the mount

	liar := startFaultGateway(t, p.kubo.Gateway)
	liar.Set(modeFlip)
	m := startMount(t, "--gateway", liar.URL, "--gateway", p.kubo.Gateway,
		"--substituter", "file://"+p.cache, "--trusted-public-key", p.pub)

	checkMountedClosure(t, p, m)

	t.Run("failed-over", func(t *testing.T) {
		mismatches := m.metric(t, "ipnix_fetch_hash_mismatches_total")
		t.Logf("lying gateway: %d requests, %d lied about (%d ranges); mount: %d hash mismatches, %d blocks fetched",
			liar.Requests.Load(), liar.Faulted.Load(), liar.RangesFaulted.Load(), mismatches, m.metric(t, "ipnix_fetch_blocks_total"))
		if liar.Faulted.Load() == 0 {
			t.Error("the lying gateway was never asked: nothing failed over")
		}
		if mismatches == 0 {
			t.Error("ipnix_fetch_hash_mismatches_total is 0: the lies were not caught")
		}
	})

	t.Run("no-kubo", func(t *testing.T) {
		if n := trap.conns.Load(); n != 0 {
			t.Errorf("%d connections to the kubo API named by $IPFS_PATH/api", n)
		}
		var serving string
		for line := range strings.Lines(m.log.String()) {
			if strings.Contains(line, "ipnix: serving") {
				serving = line
			}
		}
		want := "block sources: gateway " + liar.URL + ", gateway " + p.kubo.Gateway + ")"
		if !strings.Contains(serving, want) || strings.Contains(serving, "kubo ") {
			t.Errorf("serving line %q, want block sources exactly %q", serving, want)
		}
	})

	// The first gateway is down (its port refuses): the same.
	t.Run("dead-first-gateway", func(t *testing.T) {
		m := startMount(t, "--gateway", deadURL(t), "--gateway", p.kubo.Gateway,
			"--substituter", "file://"+p.cache, "--trusted-public-key", p.pub)
		checkMountedClosure(t, p, m)
		if n := m.metric(t, "ipnix_fetch_failures_total"); n == 0 {
			t.Error("ipnix_fetch_failures_total is 0: the dead gateway was never asked")
		}
		if n := trap.conns.Load(); n != 0 {
			t.Errorf("%d connections to the kubo API named by $IPFS_PATH/api", n)
		}
	})
}
