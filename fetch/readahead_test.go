package fetch_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

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
	ctx := context.Background()
	st := fetchtest.NewStore()
	data := randomBytes(4<<20, 11)
	root, err := st.AddFile(data, fetchtest.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fetch.OpenFile(ctx, st, root)
	if err != nil {
		t.Fatal(err)
	}
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
