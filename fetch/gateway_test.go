package fetch_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
)

// A trustless gateway serving from a store, with switches for misbehaviour.
func gatewayServer(t *testing.T, st *fetchtest.Store, mode *atomic.Value) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("format") != "raw" || r.Header.Get("Accept") != "application/vnd.ipld.raw" {
			http.Error(w, "want a raw block request", 400)
			return
		}
		c, err := cid.Decode(strings.TrimPrefix(r.URL.Path, "/ipfs/"))
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		switch mode.Load().(string) {
		case "500":
			http.Error(w, "boom", 500)
			return
		case "slow":
			time.Sleep(2 * time.Second)
		case "lie":
			w.Write([]byte("not the block"))
			return
		case "huge":
			w.Write(make([]byte, fetch.MaxBlockSize+10))
			return
		}
		b, err := st.GetBlock(r.Context(), c)
		if err != nil {
			http.Error(w, "not found", 404)
			return
		}
		w.Write(b.RawData())
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestGatewaySource(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	data := []byte("a block served over HTTP")
	c, _ := cid.V1Builder{Codec: cid.Raw, MhType: 0x12}.Sum(data)
	b, _ := blocks.NewBlockWithCid(data, c)
	if err := st.Put(b); err != nil {
		t.Fatal(err)
	}
	missing, _ := cid.V1Builder{Codec: cid.Raw, MhType: 0x12}.Sum([]byte("absent"))
	var mode atomic.Value
	mode.Store("")
	srv := gatewayServer(t, st, &mode)
	gw, err := fetch.NewGateway(srv.URL, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	src := fetch.Verify(gw, nil)
	if got, err := src.GetBlock(ctx, c); err != nil || string(got.RawData()) != string(data) {
		t.Fatalf("GetBlock: %v", err)
	}
	if _, err := src.GetBlock(ctx, missing); !errors.Is(err, fetch.ErrBlockNotFound) {
		t.Fatalf("404: %v", err)
	}
	for m, want := range map[string]error{"lie": fetch.ErrHashMismatch, "huge": fetch.ErrBlockTooLarge, "slow": context.DeadlineExceeded} {
		mode.Store(m)
		if _, err := src.GetBlock(ctx, c); !errors.Is(err, want) {
			t.Errorf("%s: err=%v, want %v", m, err, want)
		}
	}
	mode.Store("500")
	if _, err := src.GetBlock(ctx, c); err == nil || !strings.Contains(err.Error(), "500") {
		t.Errorf("500: %v", err)
	}
	if _, err := fetch.NewGateway("ftp://x", 0); err == nil {
		t.Error("ftp gateway accepted")
	}
}

// Failover skips a source that errors or lies and takes the next.
func TestFailover(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	data := []byte("failover block")
	c, _ := cid.V1Builder{Codec: cid.Raw, MhType: 0x12}.Sum(data)
	b, _ := blocks.NewBlockWithCid(data, c)
	if err := st.Put(b); err != nil {
		t.Fatal(err)
	}
	var bad, good, bad2 atomic.Value
	bad.Store("lie")
	good.Store("")
	bad2.Store("500")
	liar, _ := fetch.NewGateway(gatewayServer(t, st, &bad).URL, time.Second)
	honest, _ := fetch.NewGateway(gatewayServer(t, st, &good).URL, time.Second)
	var stats fetch.Stats
	f := fetch.Failover{fetch.Verify(liar, &stats), fetch.Verify(honest, &stats)}
	got, err := f.GetBlock(ctx, c)
	if err != nil || string(got.RawData()) != string(data) {
		t.Fatalf("failover: %v", err)
	}
	if stats.HashMismatches.Load() != 1 || stats.Blocks.Load() != 1 {
		t.Fatalf("mismatches=%d blocks=%d", stats.HashMismatches.Load(), stats.Blocks.Load())
	}
	down, _ := fetch.NewGateway(gatewayServer(t, st, &bad2).URL, time.Second)
	if _, err := (fetch.Failover{fetch.Verify(down, nil), fetch.Verify(liar, nil)}).GetBlock(ctx, c); err == nil {
		t.Fatal("all sources bad, yet a block")
	}
}
