package fetch_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
)

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

var layouts = []struct {
	name string
	size int
	opts fetchtest.Options
}{
	{"empty", 0, fetchtest.DefaultOptions},
	{"one-byte", 1, fetchtest.DefaultOptions},
	{"one-chunk", 256 << 10, fetchtest.DefaultOptions},
	{"chunk-plus-one", 256<<10 + 1, fetchtest.DefaultOptions},
	{"default-3MiB", 3<<20 + 12345, fetchtest.DefaultOptions},
	{"pb-leaves-v0", 700000, fetchtest.Options{ChunkSize: 256 << 10, CidV0: true}},
	// Small chunks and few links give a DAG three levels deep.
	{"deep-raw", 400000, fetchtest.Options{ChunkSize: 4096, RawLeaves: true, MaxLinks: 7}},
	{"deep-pb", 300000, fetchtest.Options{ChunkSize: 4099, MaxLinks: 5}},
}

func TestFileReadAtMatchesContent(t *testing.T) {
	ctx := context.Background()
	for i, tc := range layouts {
		t.Run(tc.name, func(t *testing.T) {
			st := fetchtest.NewStore()
			data := randomBytes(tc.size, uint64(i))
			root, err := st.AddFile(data, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			var stats fetch.Stats
			f, err := fetch.OpenFile(ctx, fetch.Verify(st, &stats), root)
			if err != nil {
				t.Fatal(err)
			}
			if f.Size() != int64(len(data)) {
				t.Fatalf("Size() = %d, want %d", f.Size(), len(data))
			}
			// Whole file in one read.
			got := make([]byte, len(data)+10)
			n, err := f.ReadAt(ctx, got, 0)
			if n != len(data) || (err != io.EOF && len(got) > len(data)) {
				t.Fatalf("ReadAt whole: n=%d err=%v", n, err)
			}
			if !bytes.Equal(got[:n], data) {
				t.Fatal("whole-file read differs")
			}
			// Random ranges, including ones crossing leaf boundaries.
			r := rand.New(rand.NewPCG(7, uint64(i)))
			for range 200 {
				if len(data) == 0 {
					break
				}
				off := r.IntN(len(data))
				ln := r.IntN(min(len(data)-off, 600000) + 1)
				buf := make([]byte, ln)
				n, err := f.ReadAt(ctx, buf, int64(off))
				if err != nil || n != ln {
					t.Fatalf("ReadAt(%d,%d): n=%d err=%v", off, ln, n, err)
				}
				if !bytes.Equal(buf, data[off:off+ln]) {
					t.Fatalf("ReadAt(%d,%d) differs", off, ln)
				}
			}
			if _, err := f.ReadAt(ctx, make([]byte, 1), int64(len(data))); err != io.EOF {
				t.Fatalf("read at end: err=%v, want io.EOF", err)
			}
			if stats.Blocks.Load() == 0 || (len(data) > 0 && stats.Bytes.Load() == 0) {
				t.Fatal("fetch counters did not move")
			}
		})
	}
}

func TestFileConcurrentReads(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	data := randomBytes(2<<20, 99)
	root, err := st.AddFile(data, fetchtest.Options{ChunkSize: 4096, RawLeaves: true, MaxLinks: 16})
	if err != nil {
		t.Fatal(err)
	}
	f, err := fetch.OpenFile(ctx, fetch.Verify(st, nil), root)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for range 100 {
				off := r.IntN(len(data))
				ln := min(r.IntN(70000), len(data)-off)
				buf := make([]byte, ln)
				if _, err := f.ReadAt(ctx, buf, int64(off)); err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(buf, data[off:off+ln]) {
					t.Errorf("concurrent ReadAt(%d,%d) differs", off, ln)
					return
				}
			}
		})
	}
	wg.Wait()
}

// A small read of a large file fetches only the blocks on its path.
func TestFileReadIsLazy(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	data := randomBytes(20<<20, 5)
	root, err := st.AddFile(data, fetchtest.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	var stats fetch.Stats
	f, err := fetch.OpenFile(ctx, fetch.Verify(st, &stats), root)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	if _, err := f.ReadAt(ctx, buf, 10<<20); err != nil {
		t.Fatal(err)
	}
	// Root and one leaf: 80 leaves hang off the root directly.
	if got := stats.Blocks.Load(); got != 2 {
		t.Fatalf("fetched %d blocks for a 100-byte read, want 2", got)
	}
	if got := stats.Bytes.Load(); got > 300<<10 {
		t.Fatalf("fetched %d bytes for a 100-byte read", got)
	}
}

func TestVerifyRejectsTamperedBlock(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	data := randomBytes(1<<20, 3)
	root, err := st.AddFile(data, fetchtest.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	var stats fetch.Stats
	f, err := fetch.OpenFile(ctx, fetch.Verify(st, &stats), root)
	if err != nil {
		t.Fatal(err)
	}
	leaves, err := f.Leaves(ctx, 300<<10, 300<<10+1)
	if err != nil || len(leaves) != 1 {
		t.Fatalf("Leaves: %v %v", leaves, err)
	}
	bad := bytes.Clone(data[256<<10 : 512<<10])
	bad[5] ^= 1
	st.Override(leaves[0].Cid, bad)
	_, err = f.ReadAt(ctx, make([]byte, 10), 300<<10)
	if !errors.Is(err, fetch.ErrHashMismatch) {
		t.Fatalf("tampered leaf: err=%v, want ErrHashMismatch", err)
	}
	if stats.HashMismatches.Load() != 1 {
		t.Fatalf("HashMismatches = %d", stats.HashMismatches.Load())
	}
	// Untouched leaves still read.
	if _, err := f.ReadAt(ctx, make([]byte, 10), 0); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyRejectsOversizedAndWeakCids(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	big := make([]byte, fetch.MaxBlockSize+1)
	c, err := cid.V1Builder{Codec: cid.Raw, MhType: 0x12}.Sum(big)
	if err != nil {
		t.Fatal(err)
	}
	st.Override(c, big)
	if _, err := fetch.Verify(st, nil).GetBlock(ctx, c); !errors.Is(err, fetch.ErrBlockTooLarge) {
		t.Fatalf("oversized: err=%v", err)
	}
	// md5 is not an acceptable hash for content addressing.
	weak, err := cid.V1Builder{Codec: cid.Raw, MhType: 0xd5}.Sum([]byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	st.Override(weak, []byte("x"))
	if _, err := fetch.Verify(st, nil).GetBlock(ctx, weak); err == nil {
		t.Fatal("md5 CID accepted")
	}
}

func TestOpenFileRejectsMalformed(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	data := randomBytes(600000, 4)
	root, err := st.AddFile(data, fetchtest.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	// A different, validly hashed leaf under a link whose declared size
	// disagrees: the source lies consistently (Override with real bytes of
	// another block cannot pass Verify), so test parse directly through a
	// source that is not verified.
	f, err := fetch.OpenFile(ctx, st, root)
	if err != nil {
		t.Fatal(err)
	}
	leaves, _ := f.Leaves(ctx, 0, 1)
	st.Override(leaves[0].Cid, []byte("short"))
	if _, err := f.ReadAt(ctx, make([]byte, 10), 0); !errors.Is(err, fetch.ErrMalformedDAG) {
		t.Fatalf("short leaf: err=%v, want ErrMalformedDAG", err)
	}
	// A root that is not dag-pb or raw.
	c, _ := cid.V1Builder{Codec: cid.DagCBOR, MhType: 0x12}.Sum([]byte{0xa0})
	st.Override(c, []byte{0xa0})
	if _, err := fetch.OpenFile(ctx, fetch.Verify(st, nil), c); !errors.Is(err, fetch.ErrMalformedDAG) {
		t.Fatalf("cbor root: err=%v", err)
	}
	// Garbage under a dag-pb CID.
	g, _ := cid.V1Builder{Codec: cid.DagProtobuf, MhType: 0x12}.Sum([]byte{0xff, 0xff})
	st.Override(g, []byte{0xff, 0xff})
	if _, err := fetch.OpenFile(ctx, fetch.Verify(st, nil), g); !errors.Is(err, fetch.ErrMalformedDAG) {
		t.Fatalf("garbage root: err=%v", err)
	}
}

func TestKnownBlocksCoversFile(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	root, err := st.AddFile(randomBytes(240000, 8), fetchtest.Options{ChunkSize: 4096, RawLeaves: true, MaxLinks: 6})
	if err != nil {
		t.Fatal(err)
	}
	f, err := fetch.OpenFile(ctx, st, root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(ctx, make([]byte, f.Size()), 0); err != nil {
		t.Fatal(err)
	}
	all, _ := st.AllCids(ctx)
	known := map[string]bool{}
	for _, c := range f.KnownBlocks() {
		known[string(c.Hash())] = true
	}
	for _, c := range all {
		if !known[string(c.Hash())] {
			t.Fatalf("block %s not in KnownBlocks", c)
		}
	}
}

// BenchmarkFileReadAt reads a 64 MiB UnixFS file held in memory (blocks
// still verified against their CIDs) sequentially in 1 MiB reads and at
// random in 64 KiB reads. Each reports x-memcpy: its time per read over
// that of copying the same reads out of a plain byte slice, measured once
// per case in the same run.
func BenchmarkFileReadAt(b *testing.B) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	data := randomBytes(64<<20, 99)
	root, err := st.AddFile(data, fetchtest.DefaultOptions)
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		size   int
		random bool
	}{{"sequential-1MiB", 1 << 20, false}, {"random-64KiB", 64 << 10, true}} {
		buf := make([]byte, tc.size)
		offset := func(r *rand.Rand, i int) int64 {
			if tc.random {
				return r.Int64N(int64(len(data) - tc.size))
			}
			return int64(i*tc.size) % int64(len(data))
		}
		// (testing.Benchmark cannot run inside a benchmark: it would wait
		// for the lock this one holds.)
		const baseReads = 2000
		r := rand.New(rand.NewPCG(1, 2))
		start := time.Now()
		for i := range baseReads {
			off := offset(r, i)
			copy(buf, data[off:off+int64(tc.size)])
		}
		baseNs := float64(time.Since(start).Nanoseconds()) / baseReads
		b.Run(tc.name, func(b *testing.B) {
			var stats fetch.Stats
			f, err := fetch.OpenFile(ctx, fetch.Verify(st, &stats), root)
			if err != nil {
				b.Fatal(err)
			}
			r := rand.New(rand.NewPCG(1, 2))
			b.SetBytes(int64(tc.size))
			b.ResetTimer()
			for i := range b.N {
				if _, err := f.ReadAt(ctx, buf, offset(r, i)); err != nil && err != io.EOF {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/max(baseNs, 1), "x-memcpy")
		})
	}
}

// A DAG whose shape costs far more blocks than its size needs (children
// below MinChildBytes before the last) is refused as malformed, at the
// first node that shows it, before its leaves are fetched.
func TestTinyLeavesRefused(t *testing.T) {
	for _, tc := range []struct {
		chunk int64
		ok    bool
	}{{64, false}, {fetch.MinChildBytes - 1, false}, {fetch.MinChildBytes, true}, {256 << 10, true}} {
		st := fetchtest.NewStore()
		data := randomBytes(200000, 9)
		root, err := st.AddFile(data, fetchtest.Options{ChunkSize: tc.chunk, RawLeaves: true})
		if err != nil {
			t.Fatal(err)
		}
		f, err := fetch.OpenFile(context.Background(), st, root)
		if err == nil {
			buf := make([]byte, len(data))
			_, err = f.ReadAt(context.Background(), buf, 0)
			if err == nil && !bytes.Equal(buf, data) {
				t.Fatalf("chunk %d: wrong bytes", tc.chunk)
			}
		}
		if tc.ok && err != nil {
			t.Errorf("chunk %d: %v", tc.chunk, err)
		}
		if !tc.ok && !errors.Is(err, fetch.ErrMalformedDAG) {
			t.Errorf("chunk %d: %v, want ErrMalformedDAG", tc.chunk, err)
		}
	}
}
