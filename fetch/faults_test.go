package fetch_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
)

// slack is what a bounded operation may take beyond its deadline on a
// loaded machine. Bounds are checked against deadline+slack, never tightly.
const slack = 3 * time.Second

// faultGateway is a trustless gateway on loopback that serves the blocks of
// a store and misbehaves on request: the fault applies to every block
// except those in spare.
type faultGateway struct {
	st       *fetchtest.Store
	mode     atomic.Value // string, one of the faults below or ""
	spare    map[string]bool
	inflight atomic.Int64
	requests atomic.Int64
	srv      *httptest.Server
}

func newFaultGateway(t *testing.T, st *fetchtest.Store, mode string, spare ...cid.Cid) *faultGateway {
	g := &faultGateway{st: st, spare: map[string]bool{}}
	for _, c := range spare {
		g.spare[c.KeyString()] = true
	}
	g.mode.Store(mode)
	g.srv = httptest.NewServer(http.HandlerFunc(g.serve))
	t.Cleanup(g.srv.Close)
	return g
}

func (g *faultGateway) source(t *testing.T, timeout time.Duration) *fetch.Gateway {
	gw, err := fetch.NewGateway(g.srv.URL, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return gw
}

func (g *faultGateway) serve(w http.ResponseWriter, r *http.Request) {
	g.requests.Add(1)
	g.inflight.Add(1)
	defer g.inflight.Add(-1)
	c, err := cid.Decode(strings.TrimPrefix(r.URL.Path, "/ipfs/"))
	if err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	b, err := g.st.GetBlock(r.Context(), c)
	if err != nil {
		http.Error(w, "not found", 404)
		return
	}
	data := b.RawData()
	mode := g.mode.Load().(string)
	if g.spare[c.KeyString()] {
		mode = ""
	}
	switch mode {
	case "flip":
		data = bytes.Clone(data)
		data[len(data)/2] ^= 0x10
	case "truncate":
		// Announce the whole block, send half: the server then closes
		// the connection.
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.Write(data[:len(data)/2])
		return
	case "short":
		// A well-formed response that is simply shorter.
		data = data[:len(data)/2]
	case "huge":
		w.Header().Set("Content-Type", "application/vnd.ipld.raw")
		w.Write(make([]byte, 3<<20))
		return
	case "huge-announced":
		w.Header().Set("Content-Length", strconv.Itoa(3<<20))
		w.Write(make([]byte, 3<<20))
		return
	case "html":
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, "<!doctype html><html><body>Welcome to the portal</body></html>")
		return
	case "hang":
		<-r.Context().Done()
		return
	case "trickle":
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		for i := range data {
			if _, err := w.Write(data[i : i+1]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
		return
	case "close":
		// Chunked, half the block, then the connection drops.
		w.Write(data[:len(data)/2])
		w.(http.Flusher).Flush()
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			conn.Close()
		}
		return
	}
	w.Header().Set("Content-Type", "application/vnd.ipld.raw")
	w.Write(data)
}

// waitIdle waits until no request is being served, up to limit, and
// reports how long it took.
func (g *faultGateway) waitIdle(limit time.Duration) (time.Duration, bool) {
	start := time.Now()
	for g.inflight.Load() > 0 {
		if time.Since(start) > limit {
			return time.Since(start), false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start), true
}

// deepFile stores a file whose DAG is three levels deep below its root
// (4 KiB leaves, 8 links per node).
func deepFile(t *testing.T, st *fetchtest.Store, size int) ([]byte, cid.Cid) {
	t.Helper()
	data := randomBytes(size, uint64(size))
	root, err := st.AddFile(data, fetchtest.Options{ChunkSize: 4 << 10, RawLeaves: true, MaxLinks: 8})
	if err != nil {
		t.Fatal(err)
	}
	return data, root
}

func TestOpenFileRefusesTinyLeaves(t *testing.T) {
	st := fetchtest.NewStore()
	data := randomBytes(1<<20, 64)
	root, err := st.AddFile(data, fetchtest.Options{ChunkSize: 64, RawLeaves: true})
	if err != nil {
		t.Fatal(err)
	}
	f, err := fetch.OpenFile(context.Background(), fetch.Verify(st, nil), root)
	if err == nil {
		_, err = f.ReadAt(context.Background(), make([]byte, 4096), 0)
	}
	if !errors.Is(err, fetch.ErrMalformedDAG) {
		t.Fatalf("64-byte leaves: err=%v, want ErrMalformedDAG", err)
	}
	t.Log(err)
}

// faultKinds is what each gateway fault must be reported as.
var faultKinds = []struct {
	mode string
	want error
}{
	{"flip", fetch.ErrHashMismatch},
	{"short", fetch.ErrHashMismatch},
	{"html", fetch.ErrHashMismatch},
	{"truncate", io.ErrUnexpectedEOF},
	{"close", io.ErrUnexpectedEOF},
	{"huge", fetch.ErrBlockTooLarge},
	{"huge-announced", fetch.ErrBlockTooLarge},
	{"hang", context.DeadlineExceeded},
	{"trickle", context.DeadlineExceeded},
}

// Each gateway fault is refused with the right kind of error, no byte of
// the bad answer comes out, and the request ends by the caller's deadline
// even when the block timeout is longer (a trickling server cannot
// stretch it).
func TestGatewayFaults(t *testing.T) {
	st, _, f := storedFile(t, 1<<20+1, 77)
	leaves, err := f.Leaves(context.Background(), 300<<10, 300<<10+1)
	if err != nil || len(leaves) != 1 {
		t.Fatalf("Leaves: %v %v", leaves, err)
	}
	leaf := leaves[0].Cid
	for _, tc := range faultKinds {
		t.Run(tc.mode, func(t *testing.T) {
			t.Parallel()
			g := newFaultGateway(t, st, tc.mode)
			var stats fetch.Stats
			src := fetch.Verify(g.source(t, fetch.DefaultBlockTimeout), &stats)
			const bound = 2 * time.Second
			ctx, cancel := context.WithTimeout(context.Background(), bound)
			defer cancel()
			start := time.Now()
			b, err := src.GetBlock(ctx, leaf)
			elapsed := time.Since(start)
			t.Logf("%v: %v", elapsed.Round(time.Millisecond), err)
			if b != nil {
				t.Fatal("a block came out of a faulty answer")
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err=%v, want %v", err, tc.want)
			}
			if elapsed > bound+slack {
				t.Errorf("took %v, bound %v", elapsed, bound)
			}
			if tc.want == fetch.ErrHashMismatch && stats.HashMismatches.Load() != 1 {
				t.Errorf("HashMismatches=%d", stats.HashMismatches.Load())
			}
			if stats.Blocks.Load() != 0 {
				t.Errorf("Blocks=%d after a fault", stats.Blocks.Load())
			}
		})
	}
}

// Behind each gateway fault a good second source serves the read, within
// the read's bound, with exactly the file's bytes.
func TestGatewayFaultsFailover(t *testing.T) {
	st := fetchtest.NewStore()
	data := randomBytes(1<<20+1, 78)
	root, err := st.AddFile(data, fetchtest.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	good := newFaultGateway(t, st, "")
	for _, tc := range faultKinds {
		t.Run(tc.mode, func(t *testing.T) {
			t.Parallel()
			bad := newFaultGateway(t, st, tc.mode)
			var stats fetch.Stats
			bg := fetch.Failover{
				fetch.Verify(bad.source(t, 500*time.Millisecond), &stats),
				fetch.Verify(good.source(t, 500*time.Millisecond), &stats),
			}
			const bound = 10 * time.Second
			ctx, cancel := context.WithTimeout(context.Background(), bound)
			defer cancel()
			start := time.Now()
			f, err := fetch.OpenFile(ctx, bg, root)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 64<<10)
			off := 300 << 10
			if _, err := f.ReadAt(ctx, buf, int64(off)); err != nil {
				t.Fatal(err)
			}
			elapsed := time.Since(start)
			if !bytes.Equal(buf, data[off:off+len(buf)]) {
				t.Fatal("wrong bytes served")
			}
			if elapsed > bound+slack {
				t.Errorf("took %v, bound %v", elapsed, bound)
			}
			if stats.Failures.Load() != 2 || stats.Blocks.Load() != 2 {
				t.Errorf("failures=%d blocks=%d, want 2 and 2 (root and leaf)", stats.Failures.Load(), stats.Blocks.Load())
			}
			t.Logf("open+read in %v", elapsed.Round(time.Millisecond))
		})
	}
}

// kuboServer imitates kubo's RPC block/get on loopback, with faults.
func kuboServer(t *testing.T, st *fetchtest.Store, mode string) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/v0/block/get" {
			http.Error(w, "unexpected request", 400)
			return
		}
		c, err := cid.Decode(r.URL.Query().Get("arg"))
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		b, err := st.GetBlock(r.Context(), c)
		if err != nil || mode == "notfound" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(500)
			io.WriteString(w, `{"Message":"block was not found locally (offline): ipld: could not find `+c.String()+`","Code":0,"Type":"error"}`)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		data := b.RawData()
		switch mode {
		case "flip":
			data = bytes.Clone(data)
			data[0] ^= 1
		case "huge":
			data = make([]byte, 3<<20)
		case "error-flood":
			w.WriteHeader(500)
			w.Write(bytes.Repeat([]byte("x"), 64<<20))
			return
		case "hang":
			<-r.Context().Done()
			return
		case "trickle":
			for i := range data {
				if _, err := w.Write(data[i : i+1]); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
			return
		}
		w.Write(data)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestKuboFaults(t *testing.T) {
	st := fetchtest.NewStore()
	data := randomBytes(300<<10, 79)
	c, err := st.AddFile(data, fetchtest.Options{ChunkSize: 1 << 20, RawLeaves: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mode string
		want error
	}{
		{"good", nil},
		{"notfound", fetch.ErrBlockNotFound},
		{"flip", fetch.ErrHashMismatch},
		{"huge", fetch.ErrBlockTooLarge},
		{"error-flood", nil},
		{"hang", context.DeadlineExceeded},
		{"trickle", context.DeadlineExceeded},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			t.Parallel()
			k, err := fetch.NewKubo(kuboServer(t, st, tc.mode).URL, fetch.DefaultBlockTimeout)
			if err != nil {
				t.Fatal(err)
			}
			const bound = 2 * time.Second
			ctx, cancel := context.WithTimeout(context.Background(), bound)
			defer cancel()
			start := time.Now()
			b, err := fetch.Verify(k, nil).GetBlock(ctx, c)
			elapsed := time.Since(start)
			t.Logf("%v: %.300v", elapsed.Round(time.Millisecond), err)
			switch {
			case tc.mode == "good":
				if err != nil || !bytes.Equal(b.RawData(), data) {
					t.Fatalf("good kubo: %v", err)
				}
			case b != nil:
				t.Fatal("a block came out of a faulty answer")
			case tc.want == nil && err == nil:
				t.Fatal("no error")
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("err=%v, want %v", err, tc.want)
			}
			if err != nil && len(err.Error()) > 1000 {
				t.Errorf("error message of %d bytes", len(err.Error()))
			}
			if elapsed > bound+slack {
				t.Errorf("took %v, bound %v", elapsed, bound)
			}
		})
	}
}
