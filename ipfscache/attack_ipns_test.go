package ipfscache

// Attacks by whoever answers for an IPNS name: a gateway or a kubo node
// that hangs, answers without end, or replays an older signed record.

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/boxo/path"
	"github.com/ipfs/kubo/client/rpc"

	"github.com/ipnix/ipnix/fetch/fetchtest"
)

// endless answers every request with a 200 whose body never ends (up to
// cap bytes, so that a test that fails still ends): prefix, then fill
// bytes. It counts what it managed to write.
type endless struct {
	contentType string
	prefix      string
	fill        byte
	cap         int64
	written     atomic.Int64
}

func (e *endless) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", e.contentType)
	w.WriteHeader(http.StatusOK)
	n, err := w.Write([]byte(e.prefix))
	e.written.Add(int64(n))
	if err != nil {
		return
	}
	chunk := bytes.Repeat([]byte{e.fill}, 64<<10)
	for e.written.Load() < e.cap {
		n, err := w.Write(chunk)
		e.written.Add(int64(n))
		if err != nil || r.Context().Err() != nil {
			return
		}
	}
}

// hang never answers until the client goes away (or the test ends).
type hang struct {
	stop chan struct{}
	drip bool // send headers and a byte now and then, never the end
}

func (h *hang) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.drip {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		w.Write([]byte(`{"Extra":"`))
		w.(http.Flusher).Flush()
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-h.stop:
			return
		case <-t.C:
			if h.drip {
				w.Write([]byte("A"))
				w.(http.Flusher).Flush()
			}
		}
	}
}

// TestAttackResolverHangs: a gateway or kubo that accepts the request and
// never answers, or drips a byte at a time, is given up on after the
// resolver's timeout; the cache's first lookup then fails (it does not
// hang), and a caller's own cancellation ends its wait at once.
func TestAttackResolverHangs(t *testing.T) {
	name := nameOf(fixedKey(1))
	for _, drip := range []bool{false, true} {
		h := &hang{stop: make(chan struct{}), drip: drip}
		srv := httptest.NewServer(h)
		api, err := rpc.NewURLApiWithClient(srv.URL, srv.Client())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range []NameResolver{
			&GatewayResolver{Base: srv.URL, Timeout: 300 * time.Millisecond},
			&KuboResolver{API: api, URL: srv.URL, Timeout: 300 * time.Millisecond},
			mustKuboResolver(t, srv.URL, 300*time.Millisecond),
		} {
			if res, err := r.ResolveName(context.Background(), name); err == nil {
				t.Errorf("drip=%v %s: resolved %+v", drip, r, res)
			}
			c, err := Open(Ref{Name: name}, Options{Blocks: fetchtest.NewStore(), Resolvers: []NameResolver{r}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Substituter().NarInfo(context.Background(), hashPart(1)); err == nil {
				t.Errorf("drip=%v %s: lookup through a hanging resolver succeeded", drip, r)
			}
		}
		// A lookup whose own context ends does not wait for a resolution
		// that hangs (here one with no timeout of its own below 10 s).
		c, err := Open(Ref{Name: name}, Options{Blocks: fetchtest.NewStore(), Resolvers: []NameResolver{&GatewayResolver{Base: srv.URL}}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() { time.Sleep(100 * time.Millisecond); cancel() }()
		if _, err := c.Substituter().NarInfo(ctx, hashPart(1)); !errors.Is(err, context.Canceled) {
			t.Errorf("drip=%v: cancelled lookup: %v", drip, err)
		}
		close(h.stop)
		srv.Close()
	}
}

// TestAttackResolverFloods: a gateway or kubo node that answers with an
// endless body is read no further than a record's worth (plus what the
// connection buffers): memory stays bounded, and nothing resolves.
func TestAttackResolverFloods(t *testing.T) {
	name := nameOf(fixedKey(1))
	const cap = 512 << 20  // what a server writes at most
	const bound = 64 << 20 // what it may manage to push before the client stops reading
	for _, tc := range []struct {
		what string
		srv  *endless
		r    func(url string, cl *http.Client) NameResolver
	}{
		{"gateway record", &endless{contentType: "application/vnd.ipfs.ipns-record", fill: 0x0a, cap: cap},
			func(u string, _ *http.Client) NameResolver { return &GatewayResolver{Base: u} }},
		{"kubo routing/get JSON", &endless{contentType: "application/json", prefix: `{"Extra":"`, fill: 'A', cap: cap},
			func(u string, _ *http.Client) NameResolver {
				r, err := NewKuboResolver(u, 0)
				if err != nil {
					t.Fatal(err)
				}
				return r
			}},
		{"kubo error text", &endless{contentType: "text/plain", fill: 'e', cap: cap},
			func(u string, _ *http.Client) NameResolver {
				r, err := NewKuboResolver(u, 0)
				if err != nil {
					t.Fatal(err)
				}
				return r
			}},
	} {
		t.Run(tc.what, func(t *testing.T) {
			srv := httptest.NewServer(tc.srv)
			defer srv.Close()
			r := tc.r(srv.URL, srv.Client())
			res, err := r.ResolveName(context.Background(), name)
			if err == nil {
				t.Errorf("resolved %+v", res)
			}
			if w := tc.srv.written.Load(); w > bound {
				t.Errorf("the client read %d MB of an endless answer (bound %d MB): %.200v", w>>20, bound>>20, err)
			}
		})
	}
}

// TestNewKuboResolver: the bounded client still reads an honest answer.
func TestNewKuboResolver(t *testing.T) {
	sk := fixedKey(1)
	stub := &kuboStub{calls: map[string]int{}, record: record(t, sk, path.FromCid(dirCid("rec")), 5, time.Now().Add(time.Hour))}
	srv := httptest.NewServer(stub)
	defer srv.Close()
	res, err := mustKuboResolver(t, srv.URL, 0).ResolveName(context.Background(), nameOf(sk))
	if err != nil || res.Root != dirCid("rec") || !res.Verified || res.Seq != 5 {
		t.Fatalf("ResolveName = %+v, %v", res, err)
	}
	if _, err := NewKuboResolver("/ip4/nonsense", 0); err == nil {
		t.Error("bad --api accepted")
	}
}

func mustKuboResolver(t *testing.T, addr string, timeout time.Duration) *KuboResolver {
	t.Helper()
	r, err := NewKuboResolver(addr, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
