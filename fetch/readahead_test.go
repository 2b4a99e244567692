package fetch_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
)

func TestReadaheadWindow(t *testing.T) {
	const size = 100 << 20
	r := fetch.NewReadahead(8 << 20)
	// Sequential from the start: the window opens at MinWindow and grows
	// to the max; the ranges asked for follow each other, always cover the
	// reader, and (past the first) come in pieces of half a window or more
	// rather than a piece per read.
	var ranges [][2]int64
	var furthest int64
	off := int64(0)
	for range 200 {
		from, to := r.Observe(off, 128<<10, size)
		off += 128 << 10
		if to > from {
			if n := len(ranges); n > 0 && from != ranges[n-1][1] {
				t.Fatalf("read-ahead [%d,%d) does not follow [%d,%d)", from, to, ranges[n-1][0], ranges[n-1][1])
			}
			ranges = append(ranges, [2]int64{from, to})
			furthest = max(furthest, to-off)
		}
		if len(ranges) == 0 || ranges[len(ranges)-1][1] < off {
			t.Fatalf("reader at %d not covered by read-ahead %v", off, ranges)
		}
	}
	if ranges[0] != [2]int64{128 << 10, 128<<10 + fetch.MinWindow} {
		t.Fatalf("first read-ahead %v, want a window of %d after the read", ranges[0], fetch.MinWindow)
	}
	if furthest != 8<<20 {
		t.Fatalf("window reached %d ahead, want %d", furthest, 8<<20)
	}
	for _, rg := range ranges[1:] {
		if rg[1]-rg[0] < fetch.MinWindow/2 {
			t.Fatalf("read-ahead piece [%d,%d) smaller than half the first window", rg[0], rg[1])
		}
	}
	if len(ranges) > 200/4 {
		t.Fatalf("%d read-ahead requests for 200 reads", len(ranges))
	}
	// A jump is random: nothing, and the window closes.
	if from, to := r.Observe(50<<20, 4096, size); to > from {
		t.Fatalf("random read got read-ahead [%d,%d)", from, to)
	}
	if from, to := r.Observe(10<<20, 4096, size); to > from {
		t.Fatalf("second random read got read-ahead [%d,%d)", from, to)
	}
	// A reader starting in the middle is not sequential on its first read.
	r2 := fetch.NewReadahead(8 << 20)
	if from, to := r2.Observe(4096, 4096, size); to > from {
		t.Fatal("first read at a non-zero offset got read-ahead")
	}
	// Never past the end of the file.
	r3 := fetch.NewReadahead(8 << 20)
	if _, to := r3.Observe(0, 1000, 5000); to != 5000 {
		t.Fatalf("read-ahead to %d in a 5000-byte file", to)
	}
}

func TestPrefetcherFetchesAhead(t *testing.T) {
	st, _, f := storedFile(t, 4<<20, 11)
	p := fetch.NewPrefetcher(st, 4, 64)
	defer p.Close()
	before := st.Gets.Load()
	p.Prefetch(f, 1<<20, 3<<20, nil)
	deadline := time.Now().Add(10 * time.Second)
	for p.Stats.Blocks.Load() < 8 {
		if time.Now().After(deadline) {
			t.Fatalf("prefetched %d blocks of 8", p.Stats.Blocks.Load())
		}
		time.Sleep(time.Millisecond)
	}
	if got := st.Gets.Load() - before; got != 8 {
		t.Fatalf("source saw %d gets for 8 blocks", got)
	}
	// A stopped reader's queued work is abandoned.
	var stop atomic.Bool
	stop.Store(true)
	p.Prefetch(f, 3<<20, 4<<20, stop.Load)
	time.Sleep(50 * time.Millisecond)
	if p.Stats.Blocks.Load() != 8 {
		t.Fatalf("stopped prefetch still fetched (%d blocks)", p.Stats.Blocks.Load())
	}
}

// storedFile adds n random bytes (seeded) to a fresh store as a UnixFS
// file and opens it.
func storedFile(t *testing.T, n int, seed uint64) (*fetchtest.Store, []byte, *fetch.File) {
	t.Helper()
	st := fetchtest.NewStore()
	data := randomBytes(n, seed)
	root, err := st.AddFile(data, fetchtest.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fetch.OpenFile(context.Background(), st, root)
	if err != nil {
		t.Fatal(err)
	}
	return st, data, f
}

// gatedGetter holds every GetBlock of a leaf until released, and counts
// how many are held at once.
type gatedGetter struct {
	fetch.BlockGetter
	leaves  map[cid.Cid]bool
	release chan struct{}
	in, max atomic.Int64
	fail    cid.Cid
	stuck   map[cid.Cid]bool // these wait for their context's end
}

func (g *gatedGetter) GetBlock(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	if !g.leaves[c] {
		return g.BlockGetter.GetBlock(ctx, c)
	}
	n := g.in.Add(1)
	defer g.in.Add(-1)
	for m := g.max.Load(); n > m && !g.max.CompareAndSwap(m, n); m = g.max.Load() {
	}
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if g.stuck[c] {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if c == g.fail {
		return nil, errors.New("this block is refused")
	}
	return g.BlockGetter.GetBlock(ctx, c)
}

// FetchNow has several blocks on their way at once, offers them in file
// order whatever order they arrive in, and on a failure returns it with
// nothing of its own still running.
func TestFetchNowPipelinesInOrder(t *testing.T) {
	ctx := context.Background()
	st, data, f := storedFile(t, 4<<20, 12) // 16 leaves
	leaves, err := f.Leaves(ctx, 0, f.Size())
	if err != nil || len(leaves) != 16 {
		t.Fatalf("%d leaves, %v", len(leaves), err)
	}
	g := &gatedGetter{BlockGetter: st, leaves: map[cid.Cid]bool{}, release: make(chan struct{})}
	for _, l := range leaves {
		g.leaves[l.Cid] = true
	}
	var mu sync.Mutex
	var offered []int64
	f.SetOfferHook(func(start int64, b []byte) {
		mu.Lock()
		offered = append(offered, start)
		mu.Unlock()
		if !bytes.Equal(b, data[start:start+int64(len(b))]) {
			t.Errorf("leaf at %d: wrong bytes offered", start)
		}
	})
	p := fetch.NewPrefetcher(g, 0, 1)
	defer p.Close()
	done := make(chan error, 1)
	go func() { done <- p.FetchNow(ctx, f, 0, f.Size()) }()
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting: %s", what)
			}
		}
	}
	waitFor("several blocks on their way", func() bool { return g.in.Load() >= 2 })
	time.Sleep(20 * time.Millisecond) // room for more than the bound to start, were there no bound
	if got := g.max.Load(); got > fetch.FetchNowAhead {
		t.Fatalf("%d blocks on their way at once, bound %d", got, fetch.FetchNowAhead)
	}
	close(g.release) // all arrive, in whatever order the goroutines run
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(offered) != 16 || !slices.IsSorted(offered) {
		t.Fatalf("offered %v, want the 16 leaves in order", offered)
	}

	// A failing block while later ones are on their way: its error, and
	// no fetch left running.
	st2, _, f2 := storedFile(t, 4<<20, 13)
	leaves2, err := f2.Leaves(ctx, 0, f2.Size())
	if err != nil {
		t.Fatal(err)
	}
	g2 := &gatedGetter{BlockGetter: st2, leaves: map[cid.Cid]bool{}, stuck: map[cid.Cid]bool{}, release: make(chan struct{}), fail: leaves2[1].Cid}
	close(g2.release)
	for i, l := range leaves2 {
		g2.leaves[l.Cid] = true
		g2.stuck[l.Cid] = i >= 2 // on their way until FetchNow gives up
	}
	p2 := fetch.NewPrefetcher(g2, 0, 1)
	defer p2.Close()
	if err := p2.FetchNow(ctx, f2, 0, f2.Size()); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("FetchNow with a refused block: %v", err)
	}
	if n := g2.in.Load(); n != 0 {
		t.Fatalf("%d fetches still running after FetchNow returned", n)
	}
}
