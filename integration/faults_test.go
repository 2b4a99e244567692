package integration

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/fetch/fetchtest"
	"github.com/ipnix/ipnix/narindex"
)

// The fault catalogue of issue 7: every fault a block source, kubo, a
// substituter's DAG or the disk cache can commit, tried against a real
// kubo, real Nix and a mount in its own process, with the fault where it
// would be in reality (a fault-injecting gateway or RPC proxy on
// loopback, blocks put into kubo, bytes flipped in the cache directory).
// For each: no byte that differs from the store path is ever returned, a
// failing read ends within the configured bound, and the mount serves
// again afterwards.

// The bounds every fault mount runs with (the contract's flags).
const (
	faultReadTimeout  = 5 * time.Second // --read-timeout: one whole read()
	faultBlockTimeout = 2 * time.Second // --block-timeout: one source attempt
	// boundSlack is what a failing read may take beyond its bound on a
	// noisy machine before it counts as a bound violated.
	boundSlack = 10 * time.Second
	// hangLimit is when a read still running counts as a hang.
	hangLimit = 3 * time.Minute
)

// faultRow is one line of the catalogue.
type faultRow struct {
	name    string
	outcome string // "ok", "EIO", "ENOENT", ..., "hang"
	elapsed time.Duration
	bound   time.Duration
	wrong   int // bytes returned that differ from the store path
	note    string
}

// catalogue collects the rows of one run and prints them with a summary.
type catalogue struct {
	mu   sync.Mutex
	rows []faultRow
}

func (c *catalogue) record(t *testing.T, r faultRow) {
	t.Helper()
	c.mu.Lock()
	c.rows = append(c.rows, r)
	c.mu.Unlock()
	line := fmt.Sprintf("FAULT %s: outcome=%s elapsed=%v bound=%v wrong_bytes=%d", r.name, r.outcome, r.elapsed.Round(time.Millisecond), r.bound, r.wrong)
	if r.note != "" {
		line += " note=" + r.note
	}
	t.Log(line)
}

func (c *catalogue) summary(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	var wrong, hangs, failing, over int
	var longest, slowest faultRow
	for _, r := range c.rows {
		wrong += r.wrong
		if r.outcome == "hang" {
			hangs++
		}
		if r.elapsed > r.bound+boundSlack {
			over++
		}
		if r.elapsed > slowest.elapsed {
			slowest = r
		}
		if r.outcome != "ok" {
			failing++
			if r.elapsed > longest.elapsed {
				longest = r
			}
		}
	}
	t.Logf("FAULT SUMMARY: faults tried=%d, failing reads=%d, wrong bytes served=%d, hangs=%d, over bound+%v=%d; "+
		"longest failing read %v (%s) against bound %v; slowest read %v (%s, %s)",
		len(c.rows), failing, wrong, hangs, boundSlack, over,
		longest.elapsed.Round(time.Millisecond), longest.name, longest.bound,
		slowest.elapsed.Round(time.Millisecond), slowest.name, slowest.outcome)
}

// faultEnv is a published closure plus what every case shares.
type faultEnv struct {
	p     *published
	cat   *catalogue
	flags []string      // timeout flags for every mount
	bound time.Duration // of one read()
	key   narindex.SecretKey
	pub   string // the fault key's public half, trusted by the mounts

	logSeen map[*mount]int // how much of each mount's log lastLogged has seen

	lib, big string // store paths
}

// timeoutFlags are the contract's flags. Before the contract is
// implemented the mount has no --read-timeout: the catalogue then runs with
// --block-timeout alone, says so, and holds reads to the same bound.
func timeoutFlags(t *testing.T) []string {
	t.Helper()
	out, _ := ipnixCmd(t, nil, "mount", "--help")
	bt := "--block-timeout=" + faultBlockTimeout.String()
	if strings.Contains(out, "--read-timeout") {
		return []string{"--read-timeout=" + faultReadTimeout.String(), bt}
	}
	t.Errorf("ipnix mount has no --read-timeout (issue 7 contract); the catalogue runs with %s alone", bt)
	return []string{bt}
}

func newFaultEnv(t *testing.T) *faultEnv {
	t.Helper()
	p := publishClosure(t)
	sec, pub := genKey(t, "ipnix-fault-1")
	key, err := narindex.LoadSecretKeyFile(sec)
	must(t, err)
	return &faultEnv{
		p: p, cat: &catalogue{}, flags: timeoutFlags(t), bound: faultReadTimeout, key: key, pub: pub,
		lib: p.closure.path(t, "ipnix-test-lib"), big: p.closure.path(t, "ipnix-test-big"),
	}
}

// mount starts a mount reading narinfos from subst (a directory), blocks
// from the gateways in order and then the kubo RPC API at api.
func (e *faultEnv) mount(t *testing.T, api string, gateways []string, subst string, extra ...string) *mount {
	t.Helper()
	args := []string{"--api", api, "--substituter", "file://" + subst,
		"--trusted-public-key", e.p.pub, "--trusted-public-key", e.pub}
	for _, g := range gateways {
		args = append(args, "--gateway", g)
	}
	args = append(args, e.flags...)
	return startMount(t, append(args, extra...)...)
}

// at is the path of rel inside store path sp on mount m ("" for sp itself).
func at(m *mount, sp, rel string) string {
	return filepath.Join(m.dir, filepath.Base(sp), rel)
}

// truth is the true content of rel in store path sp.
func truth(t *testing.T, sp, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(sp, rel))
	must(t, err)
	return b
}

// readResult is what one timed read returned.
type readResult struct {
	n       int
	err     error
	elapsed time.Duration
	wrong   int
	hung    bool
}

func (r readResult) outcome() string {
	switch {
	case r.hung:
		return "hang"
	case r.err == nil:
		return "ok"
	}
	return errnoName(r.err)
}

func errnoName(err error) string {
	var en syscall.Errno
	if errors.As(err, &en) {
		switch en {
		case syscall.EIO:
			return "EIO"
		case syscall.ENOENT:
			return "ENOENT"
		case syscall.EINTR:
			return "EINTR"
		}
		return fmt.Sprintf("errno%d", int(en))
	}
	return err.Error()
}

// wrongBytes counts the bytes of got (read at off) that differ from want.
func wrongBytes(got, want []byte, off int64) int {
	n := 0
	for i, b := range got {
		if j := off + int64(i); j >= int64(len(want)) || want[j] != b {
			n++
		}
	}
	return n
}

// timedRead opens path and reads n bytes at off in one pread, comparing
// what comes back with want (the whole true file). A read still running
// after hangLimit is reported as hung and left to the mount's cleanup.
func timedRead(path string, want []byte, off int64, n int) readResult {
	done := make(chan readResult, 1)
	start := time.Now()
	go func() {
		var r readResult
		buf := make([]byte, n)
		f, err := os.Open(path)
		if err == nil {
			r.n, err = f.ReadAt(buf, off)
			f.Close()
		}
		if err == io.EOF && off+int64(r.n) == int64(len(want)) {
			err = nil
		}
		r.err, r.elapsed = err, time.Since(start)
		r.wrong = wrongBytes(buf[:r.n], want, off)
		done <- r
	}()
	select {
	case r := <-done:
		return r
	case <-time.After(hangLimit):
		return readResult{hung: true, elapsed: hangLimit, err: errors.New("hung")}
	}
}

// timedStat looks path up (lstat), as a program opening it first would.
func timedStat(path string) readResult {
	done := make(chan readResult, 1)
	start := time.Now()
	go func() {
		_, err := os.Lstat(path)
		done <- readResult{err: err, elapsed: time.Since(start)}
	}()
	select {
	case r := <-done:
		return r
	case <-time.After(hangLimit):
		return readResult{hung: true, elapsed: hangLimit, err: errors.New("hung")}
	}
}

// readWhole reads path in 128 KiB preads and returns the slowest one, the
// first error and the wrong bytes over all of them.
func readWhole(path string, want []byte) readResult {
	const chunk = 128 << 10
	var total readResult
	for off := int64(0); off < int64(len(want)); off += chunk {
		r := timedRead(path, want, off, int(min(chunk, int64(len(want))-off)))
		total.wrong += r.wrong
		total.elapsed = max(total.elapsed, r.elapsed)
		total.n += r.n
		if r.err != nil || r.hung {
			total.err, total.hung = r.err, r.hung
			return total
		}
	}
	return total
}

// checkFailed asserts what every failing case must show: the expected
// outcome, nothing wrong returned, no hang, and an end within the bound.
func (e *faultEnv) checkFailed(t *testing.T, m *mount, name string, r readResult, want ...string) {
	t.Helper()
	row := faultRow{name: name, outcome: r.outcome(), elapsed: r.elapsed, bound: e.bound, wrong: r.wrong}
	if row.outcome != "ok" {
		row.note = e.lastLogged(m)
	}
	e.cat.record(t, row)
	e.checkRow(t, name, r, want...)
}

// lastLogged is the mount's last logged error or refusal since the
// previous call for the same mount, shortened: what an operator would see
// about the fault. The mount writes through a pipe, so the line may trail
// the syscall it explains by a moment.
func (e *faultEnv) lastLogged(m *mount) string {
	if e.logSeen == nil {
		e.logSeen = make(map[*mount]int)
	}
	var fresh string
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		log := m.log.String()
		fresh = log[min(e.logSeen[m], len(log)):]
		if strings.Contains(fresh, "level=") || time.Now().After(deadline) {
			e.logSeen[m] = len(log)
			break
		}
	}
	lines := strings.Split(strings.TrimSpace(fresh), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := lines[i]
		if strings.Contains(l, "level=ERROR") || strings.Contains(l, "level=WARN") || strings.Contains(l, "level=INFO") {
			if _, rest, ok := strings.Cut(l, " msg="); ok {
				l = rest
			}
			if len(l) > 400 {
				l = l[:400] + "..."
			}
			return "log: " + l
		}
	}
	return "nothing logged"
}

func (e *faultEnv) checkRow(t *testing.T, name string, r readResult, want ...string) {
	t.Helper()
	if r.wrong != 0 {
		t.Errorf("%s: %d bytes returned that differ from the store path", name, r.wrong)
	}
	if r.hung {
		t.Errorf("%s: still running after %v", name, hangLimit)
		return
	}
	if got := r.outcome(); !contains(want, got) {
		t.Errorf("%s: outcome %s (%v), want one of %v", name, got, r.err, want)
	}
	if r.elapsed > e.bound+boundSlack {
		t.Errorf("%s: took %v, bound %v (+%v slack)", name, r.elapsed.Round(time.Millisecond), e.bound, boundSlack)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// goodRead asserts that the mount serves rel of sp correctly now; it
// retries for a few seconds, the longest a failure may be remembered.
func (e *faultEnv) goodRead(t *testing.T, m *mount, sp, rel string) time.Duration {
	t.Helper()
	want := truth(t, sp, rel)
	start := time.Now()
	for {
		r := readWhole(at(m, sp, rel), want)
		if r.wrong != 0 {
			t.Errorf("good read of %s/%s: %d wrong bytes", filepath.Base(sp), rel, r.wrong)
		}
		if r.err == nil && !r.hung {
			return time.Since(start)
		}
		if r.hung || time.Since(start) > 15*time.Second {
			t.Errorf("the mount does not serve %s/%s again %v after the fault ended: %v", filepath.Base(sp), rel, time.Since(start).Round(time.Millisecond), r.err)
			return time.Since(start)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func TestFaultCatalogue(t *testing.T) {
	e := newFaultEnv(t)
	defer e.cat.summary(t)
	t.Run("gateway-failover", e.gatewayFailover)
	t.Run("gateway-only", e.gatewayOnly)
	t.Run("time-bound", e.timeBound)
	t.Run("time-bound-lookup", e.timeBoundLookup)
	t.Run("kubo-rpc", e.kuboRPC)
	t.Run("dag", e.dagFaults)
	t.Run("disk-cache", e.diskCache)
}

// Every gateway fault with the kubo RPC API behind it: reads return the
// true bytes, and the fault shows in the counters.
func (e *faultEnv) gatewayFailover(t *testing.T) {
	files := []string{"share/msg", "sizes/f262145", "share/big.bin"}
	for _, mode := range gatewayFaults {
		t.Run(string(mode), func(t *testing.T) {
			gw := startFaultGateway(t, e.p.kubo.Gateway)
			gw.Set(mode)
			m := e.mount(t, e.p.kubo.api, []string{gw.URL}, e.p.cache)
			var res readResult
			for _, rel := range files {
				r := readWhole(at(m, e.lib, rel), truth(t, e.lib, rel))
				res.wrong += r.wrong
				res.elapsed = max(res.elapsed, r.elapsed)
				if r.err != nil || r.hung {
					res.err, res.hung = fmt.Errorf("%s: %w", rel, r.err), r.hung
					break
				}
			}
			name := "gateway-failover/" + string(mode)
			e.cat.record(t, faultRow{name: name, outcome: res.outcome(), elapsed: res.elapsed, bound: e.bound, wrong: res.wrong, note: "slowest read() of 3 files read whole"})
			e.checkRow(t, name, res, "ok")
			if gw.Faulted.Load() == 0 {
				t.Errorf("the gateway faulted no request (%d seen)", gw.Requests.Load())
			}
			// share/big.bin is read in order: read-ahead asks for ranges of
			// the NAR's bytes, and those are lied about too.
			if gw.RangesFaulted.Load() == 0 {
				t.Errorf("no ranged request was faulted (%d requests faulted)", gw.Faulted.Load())
			}
			failures := m.metric(t, "ipnix_fetch_failures_total")
			mismatches := m.metric(t, "ipnix_fetch_hash_mismatches_total")
			t.Logf("gateway requests %d, faulted %d; ipnix_fetch_failures_total %d, ipnix_fetch_hash_mismatches_total %d", gw.Requests.Load(), gw.Faulted.Load(), failures, mismatches)
			if failures == 0 {
				t.Error("ipnix_fetch_failures_total did not move")
			}
			if mode.hashFault() && mismatches == 0 {
				t.Error("ipnix_fetch_hash_mismatches_total did not move for bytes that do not match their CID")
			}
			if !mode.hashFault() && mismatches != 0 {
				t.Errorf("ipnix_fetch_hash_mismatches_total = %d for a fault that delivers no whole block", mismatches)
			}
			gw.Set(modePass)
			e.goodRead(t, m, e.big, "small.txt")
		})
	}
}

// Every gateway fault with no good source (the RPC API is a dead port): a
// read of an uncached part of a file looked up while the gateway passed,
// and a lookup, fail with EIO within the bound; once the gateway passes
// again the same mount reads the same bytes.
func (e *faultEnv) gatewayOnly(t *testing.T) {
	const off, size = 2 << 20, 64 << 10
	want := truth(t, e.lib, "share/big.bin")
	for _, mode := range gatewayFaults {
		t.Run(string(mode), func(t *testing.T) {
			gw := startFaultGateway(t, e.p.kubo.Gateway)
			m := e.mount(t, deadURL(t), []string{gw.URL}, e.p.cache)
			file := at(m, e.lib, "share/big.bin")
			if _, err := os.Stat(file); err != nil {
				t.Fatalf("lookup while the gateway passes: %v", err)
			}
			gw.Set(mode)
			r := timedRead(file, want, off, size)
			e.checkFailed(t, m, "gateway-only/"+string(mode)+"/read", r, "EIO")
			// A store path not looked up yet: its root block is needed.
			r = timedStat(at(m, e.big, ""))
			e.checkFailed(t, m, "gateway-only/"+string(mode)+"/lookup", r, "EIO")

			gw.Set(modePass)
			start := time.Now()
			for {
				r = timedRead(file, want, off, size)
				if r.wrong != 0 {
					t.Errorf("after the fault: %d wrong bytes", r.wrong)
				}
				if r.err == nil || r.hung || time.Since(start) > 15*time.Second {
					break
				}
				time.Sleep(250 * time.Millisecond)
			}
			if r.err != nil {
				t.Errorf("the same read %v after the gateway passes again: %v", time.Since(start).Round(time.Millisecond), r.err)
			} else {
				t.Logf("the same read succeeds %v after the gateway passes again", time.Since(start).Round(time.Millisecond))
			}
			e.goodRead(t, m, e.big, "small.txt")
		})
	}
}

// One bound for a whole read, whatever the number of sources and the
// depth of the DAG: two gateways and the RPC API all hang.
func (e *faultEnv) timeBound(t *testing.T) {
	const off, size = 3 << 20, 64 << 10
	want := truth(t, e.lib, "share/big.bin")

	// The NAR as published: the root is fetched at lookup, a leaf is
	// all a read needs.
	t.Run("three-hanging-sources", func(t *testing.T) {
		gw1, gw2 := startFaultGateway(t, e.p.kubo.Gateway), startFaultGateway(t, e.p.kubo.Gateway)
		m := e.mount(t, startSilentServer(t), []string{gw1.URL, gw2.URL}, e.p.cache)
		file := at(m, e.lib, "share/big.bin")
		if _, err := os.Stat(file); err != nil {
			t.Fatalf("lookup while the gateways pass: %v", err)
		}
		gw1.Set(modeHang)
		gw2.Set(modeHang)
		r := timedRead(file, want, off, size)
		e.checkFailed(t, m, "time-bound/three-hanging-sources", r, "EIO")
		r = timedStat(at(m, e.big, ""))
		e.checkFailed(t, m, "time-bound/three-hanging-sources/lookup", r, "EIO")
		gw1.Set(modePass)
		e.goodRead(t, m, e.lib, "share/msg")
	})

	// The same NAR laid out with at most 3 links per node, so that a read
	// crosses two uncached intermediate levels before its leaf, behind
	// three hanging gateways with kubo's RPC API answering: each level
	// costs every gateway's timeout before kubo is asked, unless the bound
	// is one for the whole read.
	t.Run("three-hanging-gateways-deep-dag", func(t *testing.T) {
		root := e.putLayout(t, e.lib, fetchtest.Options{ChunkSize: 256 << 10, RawLeaves: true, MaxLinks: 3})
		dir := t.TempDir()
		e.fakeEntry(t, dir, e.lib, root.String())
		e.p.copyEntry(t, dir, e.big, nil)
		gws := []*faultServer{startFaultGateway(t, e.p.kubo.Gateway), startFaultGateway(t, e.p.kubo.Gateway), startFaultGateway(t, e.p.kubo.Gateway)}
		m := e.mount(t, e.p.kubo.api, []string{gws[0].URL, gws[1].URL, gws[2].URL}, dir)
		file := at(m, e.lib, "share/big.bin")
		if _, err := os.Stat(file); err != nil {
			t.Fatalf("lookup while the gateways pass: %v (256 KiB leaves, 3 links per node: a shape that costs 1.5 times the blocks of the default)", err)
		}
		for _, g := range gws {
			g.Set(modeHang)
		}
		r := timedRead(file, want, off, size)
		// Either answer keeps the promise: the true bytes in time, or EIO.
		e.checkFailed(t, m, "time-bound/three-hanging-gateways-deep-dag", r, "ok", "EIO")
		for _, g := range gws {
			g.Set(modePass)
		}
		e.goodRead(t, m, e.lib, "share/msg")
	})
}

// A lookup is held to the same bound: a store path without a listing, whose
// listing must be read from the NAR's headers through the deeper DAG, with
// three hanging gateways before kubo.
func (e *faultEnv) timeBoundLookup(t *testing.T) {
	root := e.putLayout(t, e.lib, fetchtest.Options{ChunkSize: 256 << 10, RawLeaves: true, MaxLinks: 3})
	dir := t.TempDir()
	e.fakeEntry(t, dir, e.lib, root.String())
	sp, _ := narindex.ParseStorePath(e.lib)
	must(t, os.Remove(filepath.Join(dir, sp.Hash+".ls")))
	e.p.copyEntry(t, dir, e.big, nil)
	gws := []*faultServer{startFaultGateway(t, e.p.kubo.Gateway), startFaultGateway(t, e.p.kubo.Gateway), startFaultGateway(t, e.p.kubo.Gateway)}
	for _, g := range gws {
		g.Set(modeHang)
	}
	m := e.mount(t, e.p.kubo.api, []string{gws[0].URL, gws[1].URL, gws[2].URL}, dir)
	r := timedStat(at(m, e.lib, "share/big.bin"))
	e.checkFailed(t, m, "time-bound/three-hanging-gateways-deep-dag-lookup-no-listing", r, "ok", "EIO")
	for _, g := range gws {
		g.Set(modePass)
	}
	e.goodRead(t, m, e.lib, "share/msg")
}

// kubo's RPC API breaking off block/get answers in the middle of the body.
func (e *faultEnv) kuboRPC(t *testing.T) {
	want := truth(t, e.lib, "share/big.bin")
	// kubo as the only source, failing every block/get once the path is
	// looked up: broken off (connection closed, or the error in kubo's
	// X-Stream-Error trailer after half the block), or stuck.
	for _, mode := range []faultMode{modeCut, modeStreamError, modeHang} {
		t.Run(string(mode), func(t *testing.T) {
			api := startFaultAPI(t, e.p.kubo.api)
			m := e.mount(t, api.URL, []string{deadURL(t)}, e.p.cache)
			file := at(m, e.lib, "share/big.bin")
			if _, err := os.Stat(file); err != nil {
				t.Fatalf("lookup while kubo passes: %v", err)
			}
			api.Set(mode)
			r := timedRead(file, want, 1<<20, 64<<10)
			e.checkFailed(t, m, "kubo-rpc/"+string(mode), r, "EIO")
			if api.Faulted.Load() == 0 {
				t.Error("the API proxy faulted no block/get")
			}
			api.Set(modePass)
			e.goodRead(t, m, e.lib, "share/big.bin")
		})
	}
	// Half of the block/get answers, at random, are cut: reads may fail,
	// never return wrong bytes, and a retry of a failed read gets the block.
	t.Run("close-mid-stream-half", func(t *testing.T) {
		api := startFaultAPI(t, e.p.kubo.api)
		m := e.mount(t, api.URL, []string{deadURL(t)}, e.p.cache)
		file := at(m, e.lib, "share/big.bin")
		if _, err := os.Stat(file); err != nil {
			t.Fatalf("lookup while kubo passes: %v", err)
		}
		api.SetChance(0.5, modeCut)
		const chunk = 128 << 10
		var worst readResult
		var slowest time.Duration
		failed, wrong := 0, 0
		for off := int64(0); off < int64(len(want)); off += chunk {
			n := int(min(chunk, int64(len(want))-off))
			var r readResult
			for try := 0; try < 20; try++ {
				r = timedRead(file, want, off, n)
				wrong += r.wrong
				slowest = max(slowest, r.elapsed)
				if r.err == nil || r.hung {
					break
				}
				failed++
				worst = r
			}
			if r.err != nil {
				t.Errorf("offset %d: still failing after 20 tries: %v", off, r.err)
				break
			}
		}
		outcome, elapsed := "ok", slowest
		if failed > 0 {
			outcome, elapsed = worst.outcome(), worst.elapsed
		}
		e.cat.record(t, faultRow{name: "kubo-rpc/close-mid-stream-half", outcome: outcome, elapsed: elapsed, bound: e.bound, wrong: wrong,
			note: fmt.Sprintf("%d failed reads, %d cut of %d block/get", failed, api.Faulted.Load(), api.Requests.Load())})
		if wrong != 0 {
			t.Errorf("%d wrong bytes returned", wrong)
		}
		if failed > 0 {
			e.checkRow(t, "kubo-rpc/close-mid-stream-half", worst, "EIO")
		}
		api.Set(modePass)
		e.goodRead(t, m, e.big, "small.txt")
	})
}

// DAGs that verify block by block but are not what a UnixFS file of the
// NAR should be: far too deep, or with block sizes that lie.
func (e *faultEnv) dagFaults(t *testing.T) {
	bin := e.p.closure.path(t, "ipnix-test-bin")
	cases := []struct {
		name string
		sp   string
		rel  string // file read when the lookup succeeds
		make func(t *testing.T) cid.Cid
		// atLookup: the NAR is small enough to be checked whole before
		// the path is shown, so the lookup itself must fail.
		atLookup bool
	}{
		{"too-deep/small-nar", bin, "bin/hello", func(t *testing.T) cid.Cid { return e.chain(t, e.realCid(t, bin), 40) }, true},
		{"too-deep/large-nar", e.lib, "share/big.bin", func(t *testing.T) cid.Cid { return e.chain(t, e.realCid(t, e.lib), 40) }, false},
		{"blocksizes-lie/small-nar", bin, "bin/hello", func(t *testing.T) cid.Cid { return e.splitLie(t, bin) }, true},
		{"blocksizes-lie/large-nar", e.lib, "share/big.bin", func(t *testing.T) cid.Cid { return e.shiftSizes(t, e.lib, false) }, false},
		{"blocksizes-lie/sum-not-filesize", e.lib, "share/big.bin", func(t *testing.T) cid.Cid { return e.shiftSizes(t, e.lib, true) }, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := c.make(t)
			dir := t.TempDir()
			e.fakeEntry(t, dir, c.sp, root.String())
			e.p.copyEntry(t, dir, e.big, nil)
			m := e.mount(t, e.p.kubo.api, []string{e.p.kubo.Gateway}, dir)
			name := "dag/" + c.name
			r := timedStat(at(m, c.sp, ""))
			if r.err == nil {
				if c.atLookup {
					t.Errorf("%s: the lookup accepted a NAR that is checked whole before it is shown", name)
				}
				want := truth(t, c.sp, c.rel)
				rr := timedRead(at(m, c.sp, c.rel), want, 0, min(len(want), 256<<10))
				rr.elapsed += r.elapsed
				r = rr
				name += "/read"
			} else {
				name += "/lookup"
			}
			e.checkFailed(t, m, name, r, "EIO", "ENOENT")
			if !m.waitLog("DAG") {
				t.Errorf("the log does not say what is wrong with the DAG:\n%s", m.log.String())
			}
			e.goodRead(t, m, e.big, "small.txt")
		})
	}
}

// Block files of the disk cache with a flipped byte: with kubo the true
// bytes are fetched again and the corruption counted; with no source the
// read fails rather than serving them.
func (e *faultEnv) diskCache(t *testing.T) {
	const off, size = 4 << 20, 1 << 20
	want := truth(t, e.big, "large.bin")
	cacheDir := t.TempDir()
	args := []string{"--cache-dir", cacheDir, "--cache-size", "1GiB", "--disk-blocks", "always"}
	good := func(t *testing.T) *mount {
		return e.mount(t, e.p.kubo.api, []string{e.p.kubo.Gateway}, e.p.cache, args...)
	}
	read := func(m *mount) readResult { return timedRead(at(m, e.big, "large.bin"), want, off, size) }

	m := good(t)
	if r := read(m); r.err != nil || r.wrong != 0 {
		t.Fatalf("filling the cache: %v, %d wrong bytes", r.err, r.wrong)
	}
	must(t, m.Stop())
	flipped := flipBlockFiles(t, cacheDir)

	t.Run("with-kubo", func(t *testing.T) {
		m := good(t)
		r := read(m)
		e.cat.record(t, faultRow{name: "disk-cache/flipped-byte/with-kubo", outcome: r.outcome(), elapsed: r.elapsed, bound: e.bound, wrong: r.wrong,
			note: fmt.Sprintf("%d block files flipped", flipped)})
		e.checkRow(t, "disk-cache/flipped-byte/with-kubo", r, "ok")
		if c := m.metric(t, "ipnix_disk_cache_corrupt_total"); c == 0 {
			t.Error("ipnix_disk_cache_corrupt_total did not move")
		} else {
			t.Logf("ipnix_disk_cache_corrupt_total %d", c)
		}
		e.goodRead(t, m, e.big, "small.txt")
		must(t, m.Stop())
	})

	t.Run("no-source", func(t *testing.T) {
		flipped := flipBlockFiles(t, cacheDir)
		m := e.mount(t, deadURL(t), []string{deadURL(t)}, e.p.cache, args...)
		r := read(m)
		e.checkFailed(t, m, "disk-cache/flipped-byte/no-source", r, "EIO")
		if c := m.metric(t, "ipnix_disk_cache_corrupt_total"); c == 0 {
			t.Errorf("ipnix_disk_cache_corrupt_total did not move (%d files flipped)", flipped)
		}
		// What is intact on disk is still served.
		if _, err := os.Stat(at(m, e.big, "small.txt")); err != nil {
			t.Errorf("lookup from the disk cache alone: %v", err)
		}
	})
}
