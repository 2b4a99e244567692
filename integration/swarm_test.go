package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipnix/ipnix/integration/runenv"
)

// The kubo configuration the README recommends for a publisher and a
// mirror on a DHT: only the roots of pinned DAGs (one per NAR) are
// announced. (In a private swarm without a DHT nothing is announced at
// all: Routing.Type none, or Provide.Enabled false.)
var publisherKuboConfig = [][]string{
	{"config", "Provide.Strategy", "roots"},
	// Bounds for a node many clients fetch from.
	{"config", "--json", "Swarm.ConnMgr.LowWater", "600"},
	{"config", "--json", "Swarm.ConnMgr.HighWater", "900"},
	{"config", "Swarm.ResourceMgr.MaxMemory", "2GB"},
}

// swarmNode is a kubo daemon in a private swarm, stopped by the test's
// cleanup.
type swarmNode struct {
	*kubo
	name string
	id   string
	addr string // its swarm address with /p2p/ID
}

// startSwarmNode starts a daemon of the private swarm with key: its own
// repository, loopback only, no bootstrap peers, TCP only (libp2p's QUIC
// and WebTransport refuse private networks), the LAN DHT as its only
// router (among the swarm's nodes), and config applied before it starts.
func startSwarmNode(t *testing.T, name, key string, config ...[]string) *swarmNode {
	t.Helper()
	k, err := runenv.StartKuboWrapped(ipfsBin, t.TempDir(), nil, func(k *runenv.Kubo) error {
		if err := os.WriteFile(filepath.Join(k.Path, "swarm.key"), []byte(key), 0o600); err != nil {
			return err
		}
		for _, args := range append([][]string{
			{"config", "--json", "Swarm.Transports.Network.Websocket", "false"},
			{"config", "Routing.Type", "dhtserver"},
		}, config...) {
			if _, err := k.Run(nil, args...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("starting kubo %s: %v", name, err)
	}
	t.Cleanup(k.Stop)
	n := &swarmNode{kubo: &kubo{Kubo: k, api: k.API}, name: name}
	n.id = n.ipfs(t, nil, "id", "-f", "<id>")
	addrs := n.ipfs(t, nil, "id", "-f", "<addrs>")
	for _, a := range strings.Fields(addrs) {
		if strings.HasPrefix(a, "/ip4/127.0.0.1/tcp/") {
			n.addr = a
			break
		}
	}
	if n.addr == "" {
		t.Fatalf("kubo %s: no loopback TCP address in %q", name, addrs)
	}
	return n
}

// peerAll connects every node with every other and keeps them peered
// (kubo's peering service reconnects), then waits until each sees all.
func peerAll(t *testing.T, nodes ...*swarmNode) {
	t.Helper()
	for _, n := range nodes {
		for _, m := range nodes {
			if n != m {
				n.ipfs(t, nil, "swarm", "peering", "add", m.addr)
				n.Run(nil, "swarm", "connect", m.addr) // the peering service would, after a backoff
			}
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range nodes {
		for {
			peers := n.ipfs(t, nil, "swarm", "peers")
			all := true
			for _, m := range nodes {
				all = all && (n == m || strings.Contains(peers, m.id))
			}
			if all {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("kubo %s is not connected to all of the swarm: %q", n.name, peers)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// provideStat is what a node's sweep provider on the LAN DHT (the only DHT
// with peers here) reports: CIDs in its reprovide schedule, CIDs it has
// announced and provider records it has sent since it started, CIDs
// waiting.
type provideStat struct {
	Keys, Provided, Records, Pending int64
}

func (n *swarmNode) provideStat(t *testing.T) provideStat {
	t.Helper()
	var out struct {
		Sweep *struct {
			Schedule struct {
				Keys int64 `json:"keys"`
			} `json:"schedule"`
			Queues struct {
				Pending int64 `json:"pending_key_provides"`
			} `json:"queues"`
			Operations struct {
				Ongoing struct {
					Keys int `json:"key_provides"`
				} `json:"ongoing"`
				Past struct {
					Records  int64 `json:"records_provided"`
					Provided int64 `json:"keys_provided"`
				} `json:"past"`
			} `json:"operations"`
		}
	}
	raw := n.ipfs(t, nil, "provide", "stat", "--lan", "--enc=json")
	if err := json.Unmarshal([]byte(raw), &out); err != nil || out.Sweep == nil {
		t.Fatalf("kubo %s: provide stat: %v: %q", n.name, err, raw)
	}
	s := out.Sweep
	return provideStat{Keys: s.Schedule.Keys, Provided: s.Operations.Past.Provided, Records: s.Operations.Past.Records,
		Pending: s.Queues.Pending + int64(s.Operations.Ongoing.Keys)}
}

// settledProvides waits until n has announced at least want more CIDs
// than in before and has nothing queued, then until two readings a second
// apart agree, and returns the last. With want < 0, it waits for every CID
// in the schedule to be announced (a node provides its pins once it
// starts).
func (n *swarmNode) settledProvides(t *testing.T, before provideStat, want int64) provideStat {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last provideStat
	for time.Now().Before(deadline) {
		s := n.provideStat(t)
		enough := s.Provided-before.Provided >= want
		if want < 0 {
			enough = s.Provided >= s.Keys
		}
		if s.Pending == 0 && enough && s == last {
			return s
		}
		last = s
		time.Sleep(time.Second)
	}
	t.Fatalf("kubo %s: provides did not settle (%+v before, %+v now, want %d more)", n.name, before, last, want)
	return last
}

// blocksOf is the number of distinct blocks of the DAGs under roots.
func (n *swarmNode) blocksOf(t *testing.T, roots []string) int {
	t.Helper()
	seen := map[string]bool{}
	for _, r := range roots {
		seen[r] = true
		for _, c := range strings.Fields(n.ipfs(t, nil, "refs", "-r", "--unique", r)) {
			seen[c] = true
		}
	}
	return len(seen)
}

// newSwarmKey is a fresh pre-shared key in the format kubo reads from
// $IPFS_PATH/swarm.key.
func newSwarmKey(t *testing.T) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "/key/swarm/psk/1.0.0/\n/base16/\n" + hex.EncodeToString(b) + "\n"
}

// Three kubo nodes in a private swarm: A publishes, B mirrors (ipnix
// mirror), A stops, and C, a thin client with its own kubo, reads every
// path through B over bitswap; then B stops too, and C fails cleanly for
// what it never read and still serves from its disk cache what it did.
// A and B run the README's publisher configuration (Provide.Strategy
// roots): each announces one provider record per NAR, not one per block,
// and C reads every block anyway, since bitswap asks connected peers.
func TestSwarmMirror(t *testing.T) {
	requireReal(t)
	closure := buildClosure(t)
	sec, pub := genKey(t, "ipnix-swarm-1")
	t.Setenv("LIBP2P_FORCE_PNET", "1") // refuse to run without the swarm key
	t.Setenv("IPFS_TELEMETRY", "off")
	key := newSwarmKey(t)
	a := startSwarmNode(t, "A", key, publisherKuboConfig...)
	b := startSwarmNode(t, "B", key, publisherKuboConfig...)
	c := startSwarmNode(t, "C", key) // kubo's defaults: Provide.Strategy all
	peerAll(t, a, b, c)
	for _, n := range []*swarmNode{a, b, c} {
		// Two nodes dialling each other at once may keep two
		// connections: peers are counted once each.
		log := n.ipfs(t, nil, "swarm", "peers")
		peers := map[string]bool{}
		for _, l := range strings.Fields(log) {
			if _, id, ok := strings.Cut(l, "/p2p/"); ok {
				peers[id] = true
			}
		}
		if len(peers) != 2 {
			t.Fatalf("kubo %s has %d peers, want the other 2 of the swarm: %q", n.name, len(peers), log)
		}
	}
	// What each announces on its own once started (kubo pins an empty
	// directory at init), before anything is added.
	aBefore, bBefore, cBefore := a.settledProvides(t, provideStat{}, -1), b.settledProvides(t, provideStat{}, -1), c.settledProvides(t, provideStat{}, -1)

	// A publishes the closure, and a spare path that C never reads
	// while B is up (what a thin client did not fetch before its sources
	// went away).
	spareDir := filepath.Join(t.TempDir(), "ipnix-swarm-spare")
	if err := os.MkdirAll(spareDir, 0o755); err != nil {
		t.Fatal(err)
	}
	spareData := make([]byte, 3<<20)
	rand.Read(spareData)
	if err := os.WriteFile(filepath.Join(spareDir, "data.bin"), spareData, 0o644); err != nil {
		t.Fatal(err)
	}
	addOut, err := exec.Command("nix-store", "--add", spareDir).Output()
	if err != nil {
		t.Fatalf("nix-store --add: %v", err)
	}
	spare := strings.TrimSpace(string(addOut))
	cache := t.TempDir()
	out, err := ipnixCmd(t, nil, "publish", "--api", a.api, "--to", cache, "--secret-key", sec, closure.top, spare)
	if err != nil || !strings.Contains(out, "published 5 store paths") {
		t.Fatalf("ipnix publish on A: %v\n%s", err, out)
	}
	p := &published{closure: closure, cache: cache, pub: pub, sec: sec}
	var roots []string
	for _, sp := range append(slices.Clone(closure.paths), spare) {
		roots = append(roots, p.narInfo(t, sp).IpfsCid)
	}

	// B mirrors, twice: the second run pins nothing.
	mirrorArgs := []string{"mirror", "--api", b.api, "--from", "file://" + cache, "--trusted-public-key", pub}
	out, err = ipnixCmd(t, nil, mirrorArgs...)
	t.Logf("ipnix mirror on B:\n%s", out)
	if err != nil || !strings.Contains(out, "mirror: pinned 5 (") || !strings.Contains(out, "0 already pinned, 0 rejected, 0 without IpfsCid, 0 failed") ||
		strings.Contains(out, "announces every block") {
		t.Fatalf("ipnix mirror on B: %v\n%s", err, out)
	}
	pins := b.ipfs(t, nil, "pin", "ls", "--type=recursive")
	for i, r := range roots {
		if !strings.Contains(pins, r) {
			t.Errorf("B does not pin %s (root %d)", r, i)
		}
	}
	out, err = ipnixCmd(t, nil, mirrorArgs...)
	if err != nil || !strings.Contains(out, "mirror: pinned 0 (0 B of NAR), 5 already pinned") {
		t.Fatalf("second ipnix mirror on B: %v\n%s", err, out)
	}

	// Announced: one provider record per NAR root by A and by B, where
	// kubo's default would announce every block.
	blocks := b.blocksOf(t, roots)
	aAfter := a.settledProvides(t, aBefore, int64(len(roots)))
	bAfter := b.settledProvides(t, bBefore, int64(len(roots)))
	t.Logf("closure: %d NARs, %d blocks; A announced %d CIDs (%d records sent), B %d CIDs (%d records); the default Provide.Strategy=all would announce %d",
		len(roots), blocks, aAfter.Provided-aBefore.Provided, aAfter.Records-aBefore.Records,
		bAfter.Provided-bBefore.Provided, bAfter.Records-bBefore.Records, blocks)
	for _, x := range []struct {
		n             *swarmNode
		before, after provideStat
	}{{a, aBefore, aAfter}, {b, bBefore, bAfter}} {
		if got := x.after.Provided - x.before.Provided; got != int64(len(roots)) {
			t.Errorf("kubo %s announced %d CIDs, want one per NAR root (%d)", x.n.name, got, len(roots))
		}
		if got := x.after.Keys - x.before.Keys; got != int64(len(roots)) {
			t.Errorf("kubo %s schedules %d more CIDs for reproviding, want %d", x.n.name, got, len(roots))
		}
	}
	if blocks <= 2*len(roots) {
		t.Fatalf("the closure has %d blocks for %d NARs: too few to tell roots from blocks", blocks, len(roots))
	}

	// A stops; C reads every path through B.
	a.Stop()
	cacheDir := t.TempDir()
	mountArgs := []string{"--api", c.api, "--substituter", "file://" + cache, "--trusted-public-key", pub,
		"--cache-dir", cacheDir, "--cache-size", "1GiB", "--disk-blocks", "always",
		"--block-timeout", "2s", "--read-timeout", "6s"}
	m := startMount(t, mountArgs...)
	for _, sp := range closure.paths {
		mounted := filepath.Join(m.dir, filepath.Base(sp))
		var got string
		withTimeout(t, 2*time.Minute, "nix hash path", func(context.Context) { got = nixHashPath(t, mounted) })
		if want := p.narInfo(t, sp).NarHash.String(); got != want {
			t.Errorf("%s: Nix hashes the path read through B as %s, narinfo says %s", sp, got, want)
		}
		if out, err := exec.Command("diff", "-r", "--no-dereference", sp, mounted).CombinedOutput(); err != nil {
			t.Errorf("diff -r %s %s: %v\n%s", sp, mounted, err, out)
		}
	}
	var ledger struct{ Recv, Sent, Exchanged int64 }
	if err := json.Unmarshal([]byte(c.ipfs(t, nil, "bitswap", "ledger", "--enc=json", b.id)), &ledger); err != nil {
		t.Fatal(err)
	}
	var bs struct{ BlocksReceived, DataReceived, DupDataReceived int64 }
	if err := json.Unmarshal([]byte(c.ipfs(t, nil, "stats", "bitswap", "--enc=json")), &bs); err != nil {
		t.Fatal(err)
	}
	t.Logf("C received %d bytes from B over bitswap (bitswap ledger); C's bitswap: %d blocks, %d bytes received, %d duplicate",
		ledger.Recv, bs.BlocksReceived, bs.DataReceived, bs.DupDataReceived)
	if ledger.Recv <= 0 {
		t.Fatalf("C received nothing from B over bitswap: %+v", ledger)
	}
	cAfter := c.provideStat(t)
	t.Logf("C (kubo's default, Provide.Strategy=all) announced %d CIDs for the blocks it fetched", cAfter.Provided-cBefore.Provided)

	// B stops: what C never read fails within the bound, never hangs.
	// The spare path is looked up first (its narinfo, listing and DAG
	// root), so that the read below asks for leaves nobody fetched.
	spareFile := filepath.Join(m.dir, filepath.Base(spare), "data.bin")
	if fi, err := os.Stat(spareFile); err != nil || fi.Size() != int64(len(spareData)) {
		t.Fatalf("stat %s through B: %v", spareFile, err)
	}
	b.Stop()
	r := timedRead(spareFile, spareData, 1<<20, 4096)
	t.Logf("read of a block never read, with every source gone: %s after %v", r.outcome(), r.elapsed.Round(time.Millisecond))
	if r.hung || !errors.Is(r.err, syscall.EIO) {
		t.Fatalf("read of %s with A and B stopped: %v, want EIO", spareFile, r.err)
	}

	// What C read is served from its disk cache, in a fresh mount, with
	// C's kubo (which holds the blocks it fetched) stopped too: no IPFS
	// source is left.
	if err := m.Stop(); err != nil {
		t.Fatal(err)
	}
	c.Stop()
	m2 := startMount(t, mountArgs...)
	lib := closure.path(t, "ipnix-test-lib")
	var got string
	withTimeout(t, 2*time.Minute, "nix hash path", func(context.Context) { got = nixHashPath(t, filepath.Join(m2.dir, filepath.Base(lib))) })
	if want := p.narInfo(t, lib).NarHash.String(); got != want {
		t.Fatalf("%s from C's disk cache: %s, want %s", lib, got, want)
	}
	if f := m2.metric(t, "ipnix_fetch_bytes_total"); f != 0 {
		t.Errorf("fetched %d bytes for a path already in the disk cache", f)
	}
	if h := m2.metric(t, "ipnix_disk_cache_hits_total"); h == 0 {
		t.Error("no disk cache hits reading a path read before")
	}
}
