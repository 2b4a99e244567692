package fetch_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/cache"
	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
)

// rangeGateway serves raw blocks from st and byte ranges of one file
// (data under root), as kubo's gateway does; tamper, when set, edits the
// bytes of a range before they are sent.
type rangeGateway struct {
	st     *fetchtest.Store
	root   cid.Cid
	data   []byte
	tamper func(from int64, b []byte)
	status int // answer ranges with this status instead (0: 206)
	// otherRange names a range one byte later in Content-Range.
	otherRange bool
	ranges     atomic.Int64
	blocks     atomic.Int64
}

func (g *rangeGateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c, err := cid.Decode(strings.TrimPrefix(r.URL.Path, "/ipfs/"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if r.URL.Query().Get("format") == "raw" {
		g.blocks.Add(1)
		b, err := g.st.GetBlock(r.Context(), c)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Write(b.RawData())
		return
	}
	g.ranges.Add(1)
	var from, to int64
	if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &from, &to); err != nil || !c.Equals(g.root) {
		http.Error(w, "bad range", http.StatusBadRequest)
		return
	}
	out := append([]byte(nil), g.data[from:to+1]...)
	if g.tamper != nil {
		g.tamper(from, out)
	}
	if g.status != 0 {
		w.WriteHeader(g.status)
		w.Write(out)
		return
	}
	if g.otherRange {
		from++
	}
	w.Header().Set("Content-Range", "bytes "+strconv.FormatInt(from, 10)+"-"+strconv.FormatInt(to, 10)+"/"+strconv.Itoa(len(g.data)))
	w.WriteHeader(http.StatusPartialContent)
	w.Write(out)
}

func newRangeGateway(t *testing.T, size int, o fetchtest.Options) (*rangeGateway, *fetch.Gateway, *fetch.File) {
	t.Helper()
	st := fetchtest.NewStore()
	data := randomBytes(size, 31)
	root, err := st.AddFile(data, o)
	if err != nil {
		t.Fatal(err)
	}
	rg := &rangeGateway{st: st, root: root, data: data}
	srv := httptest.NewServer(rg)
	t.Cleanup(srv.Close)
	gw, err := fetch.NewGateway(srv.URL, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fetch.OpenFile(context.Background(), st, root)
	if err != nil {
		t.Fatal(err)
	}
	return rg, gw, f
}

func TestFetchBytes(t *testing.T) {
	ctx := context.Background()
	rg, gw, f := newRangeGateway(t, 3<<20+100, fetchtest.Options{ChunkSize: 256 << 10, RawLeaves: true, MaxLinks: 4})
	leaves, err := f.Leaves(ctx, 700<<10, 3<<20+50)
	if err != nil {
		t.Fatal(err)
	}
	runs := fetch.Runs(leaves, nil)
	if len(runs) != 1 || len(runs[0]) != len(leaves) {
		t.Fatalf("%d leaves of raw blocks in %d runs", len(leaves), len(runs))
	}
	var got []blocks.Block
	n, err := f.FetchBytes(ctx, gw, runs[0], func(b blocks.Block) { got = append(got, b) })
	if err != nil || n != len(leaves) {
		t.Fatalf("FetchBytes: %d of %d: %v", n, len(leaves), err)
	}
	for i, l := range leaves {
		if !got[i].Cid().Equals(l.Cid) || !bytes.Equal(got[i].RawData(), rg.data[l.Start:l.Start+l.Size]) {
			t.Fatalf("leaf %d: wrong block", i)
		}
	}
	if rg.ranges.Load() != 1 {
		t.Fatalf("%d requests for one run", rg.ranges.Load())
	}

	// One flipped byte in the third leaf: two delivered, then refused.
	rg.tamper = func(from int64, b []byte) { b[leaves[2].Start-from+100] ^= 1 }
	got = nil
	n, err = f.FetchBytes(ctx, gw, runs[0], func(b blocks.Block) { got = append(got, b) })
	if !errors.Is(err, fetch.ErrHashMismatch) || n != 2 || len(got) != 2 {
		t.Fatalf("tampered range: %d delivered, err %v", n, err)
	}
	if !strings.Contains(err.Error(), gw.String()) {
		t.Fatalf("error does not name the gateway: %v", err)
	}
	rg.tamper = nil

	// A gateway that ignores Range (200 with the whole file) or names
	// another range is refused before anything is delivered.
	for _, bad := range []func(){
		func() { rg.status = http.StatusOK },
		func() { rg.otherRange = true },
	} {
		rg.status, rg.otherRange = 0, false
		bad()
		_, err := f.FetchBytes(ctx, gw, runs[0], func(blocks.Block) { t.Error("delivered a block of a refused answer") })
		if err == nil {
			t.Fatal("a wrong answer to a range was accepted")
		}
	}
	rg.status, rg.otherRange = 0, false
}

func TestRunsSkipsWhatCannotBeCut(t *testing.T) {
	ctx := context.Background()
	_, gw, f := newRangeGateway(t, 2<<20, fetchtest.Options{ChunkSize: 256 << 10, RawLeaves: false, MaxLinks: 4})
	leaves, err := f.Leaves(ctx, 0, 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	if runs := fetch.Runs(leaves, nil); len(runs) != 0 {
		t.Fatalf("dag-pb leaves made %d runs", len(runs))
	}
	if _, err := f.FetchBytes(ctx, gw, leaves, func(blocks.Block) {}); !errors.Is(err, fetch.ErrNotRawLeaves) {
		t.Fatalf("FetchBytes of dag-pb leaves: %v", err)
	}
	_, _, f = newRangeGateway(t, 40<<20, fetchtest.Options{ChunkSize: 256 << 10, RawLeaves: true, MaxLinks: 174})
	leaves, _ = f.Leaves(ctx, 0, 40<<20)
	skip := leaves[10].Cid
	runs := fetch.Runs(leaves, func(c cid.Cid) bool { return c.Equals(skip) })
	total := 0
	for _, r := range runs {
		if len(r) > fetch.MaxRangeLeaves {
			t.Fatalf("run of %d leaves", len(r))
		}
		for _, l := range r {
			if l.Cid.Equals(skip) {
				t.Fatal("held leaf in a run")
			}
		}
		total += len(r)
	}
	if total != len(leaves)-1 || len(runs) < 3 {
		t.Fatalf("%d runs holding %d of %d leaves", len(runs), total, len(leaves))
	}
}

// The prefetcher fetches runs in one request each; a run whose bytes do
// not match is fetched again block by block, and only matching bytes are
// ever cached or read.
func TestPrefetcherRangesFallBackToBlocks(t *testing.T) {
	ctx := context.Background()
	rg, gw, _ := newRangeGateway(t, 6<<20, fetchtest.Options{ChunkSize: 256 << 10, RawLeaves: true, MaxLinks: 174})
	var stats fetch.Stats
	mem := cache.NewMemory(fetch.Verify(gw, &stats), 64<<20)
	f, err := fetch.OpenFile(ctx, mem, rg.root)
	if err != nil {
		t.Fatal(err)
	}
	rg.tamper = func(from int64, b []byte) { b[len(b)/2] ^= 0x80 }
	var failed atomic.Int64
	p := fetch.NewPrefetcher(mem, 4, 64)
	defer p.Close()
	p.SetBatch(&fetch.Batch{Held: mem.Held, Expect: mem.Expect, Put: mem.Put,
		OnError: func(err error) {
			if errors.Is(err, fetch.ErrHashMismatch) {
				failed.Add(1)
			}
		},
		Fetch: func(ctx context.Context, f *fetch.File, run []fetch.LeafRange, put func(blocks.Block)) (int, error) {
			return f.FetchBytes(ctx, gw, run, put)
		}})
	p.Prefetch(f, 0, 6<<20, nil)
	// Read while the prefetch runs: readers wait for blocks on their way.
	buf := make([]byte, 6<<20)
	if _, err := f.ReadAt(ctx, buf, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, rg.data) {
		t.Fatal("read wrong bytes")
	}
	deadline := time.Now().Add(10 * time.Second)
	for p.Stats.Batches.Load() == 0 || mem.Len() < 24 {
		if time.Now().After(deadline) {
			t.Fatalf("batches %d, blocks held %d", p.Stats.Batches.Load(), mem.Len())
		}
		time.Sleep(time.Millisecond)
	}
	if failed.Load() == 0 || rg.ranges.Load() == 0 {
		t.Fatalf("tampered range not refused: %d ranges asked, %d refused", rg.ranges.Load(), failed.Load())
	}
	if stats.HashMismatches.Load() != 0 {
		t.Fatal("a block fetched one by one did not match")
	}
	// Everything held matches its CID.
	leaves, _ := f.Leaves(ctx, 0, 6<<20)
	for _, l := range leaves {
		b, err := mem.GetBlock(ctx, l.Cid)
		if err != nil || !bytes.Equal(b.RawData(), rg.data[l.Start:l.Start+l.Size]) {
			t.Fatalf("leaf at %d: held wrong bytes (%v)", l.Start, err)
		}
	}

	// Untampered: the whole file in few requests, none a block at a time.
	rg.tamper = nil
	deadline = time.Now().Add(10 * time.Second)
	rg.ranges.Store(0)
	rg.blocks.Store(0)
	mem2 := cache.NewMemory(fetch.Verify(gw, nil), 64<<20)
	f2, _ := fetch.OpenFile(ctx, mem2, rg.root)
	p2 := fetch.NewPrefetcher(mem2, 4, 64)
	defer p2.Close()
	p2.SetBatch(&fetch.Batch{Held: mem2.Held, Expect: mem2.Expect, Put: mem2.Put,
		Fetch: func(ctx context.Context, f *fetch.File, run []fetch.LeafRange, put func(blocks.Block)) (int, error) {
			return f.FetchBytes(ctx, gw, run, put)
		}})
	p2.Prefetch(f2, 0, 6<<20, nil)
	for p2.Stats.Batches.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no ranged fetch")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := f2.ReadAt(ctx, buf, 0); err != nil || !bytes.Equal(buf, rg.data) {
		t.Fatalf("read: %v", err)
	}
	if rg.ranges.Load() != 1 || rg.blocks.Load() != 1 { // the root, then one range
		t.Fatalf("6 MiB read with read-ahead took %d ranged and %d block requests", rg.ranges.Load(), rg.blocks.Load())
	}
}

// Stream delivers every leaf of a range in order from one request, each
// checked against its CID; it stops at the first slice that does not
// match, at a leaf that is not raw, and when put says so.
func TestStream(t *testing.T) {
	ctx := context.Background()
	rg, gw, f := newRangeGateway(t, 20<<20+5, fetchtest.Options{ChunkSize: 256 << 10, RawLeaves: true, MaxLinks: 16})
	var got []fetch.LeafRange
	var announced int
	var known int64 // end of the leaves announced so far
	end, err := f.Stream(ctx, gw, 3<<20+7, 20<<20+5, func(ls []fetch.LeafRange) {
		announced += len(ls)
		known = ls[len(ls)-1].Start + ls[len(ls)-1].Size
	},
		func(l fetch.LeafRange, b blocks.Block) error {
			// A reader close behind the stream finds its leaves
			// announced (on their way) half a step ahead, whatever
			// the step boundaries.
			if want := min(l.Start+fetch.StreamStep/2, 20<<20+5); known < want {
				t.Fatalf("leaf at %d delivered with leaves announced to %d only, want %d", l.Start, known, want)
			}
			if !bytes.Equal(b.RawData(), rg.data[l.Start:l.Start+l.Size]) || !b.Cid().Equals(l.Cid) {
				t.Fatalf("leaf at %d: wrong block", l.Start)
			}
			if n := len(got); n > 0 && got[n-1].Start+got[n-1].Size != l.Start {
				t.Fatalf("leaf at %d after leaf at %d", l.Start, got[n-1].Start)
			}
			got = append(got, l)
			return nil
		})
	if err != nil || end != 20<<20+5 || got[0].Start != 3<<20 || announced != len(got) {
		t.Fatalf("stream: end %d, first %d, %d leaves (%d announced): %v", end, got[0].Start, len(got), announced, err)
	}
	if rg.ranges.Load() != 1 {
		t.Fatalf("%d requests for one stream", rg.ranges.Load())
	}

	// Tampered in the middle: the leaves before arrive, then a mismatch.
	rg.tamper = func(from int64, b []byte) { b[10<<20-from] ^= 1 }
	n := 0
	end, err = f.Stream(ctx, gw, 0, 20<<20, nil, func(fetch.LeafRange, blocks.Block) error { n++; return nil })
	if !errors.Is(err, fetch.ErrHashMismatch) || end != 10<<20 || n != 40 {
		t.Fatalf("tampered stream: end %d after %d leaves: %v", end, n, err)
	}
	rg.tamper = nil

	// put stops it.
	stop := errors.New("enough")
	end, err = f.Stream(ctx, gw, 0, 20<<20, nil, func(l fetch.LeafRange, _ blocks.Block) error {
		if l.Start >= 1<<20 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || end != 1<<20 {
		t.Fatalf("stopped stream: end %d: %v", end, err)
	}

	// dag-pb leaves cannot be streamed, and no request is made for them.
	rg2, gw2, f2 := newRangeGateway(t, 2<<20, fetchtest.Options{ChunkSize: 256 << 10, RawLeaves: false, MaxLinks: 16})
	if _, err := f2.Stream(ctx, gw2, 0, 2<<20, nil, func(fetch.LeafRange, blocks.Block) error { return nil }); !errors.Is(err, fetch.ErrNotRawLeaves) {
		t.Fatalf("stream of dag-pb leaves: %v", err)
	}
	if rg2.ranges.Load() != 0 {
		t.Fatal("a request was made for leaves that cannot be streamed")
	}
}
