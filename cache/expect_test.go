package cache_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	blocks "github.com/ipfs/go-block-format"

	"github.com/ipnix/ipnix/cache"
	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
)

// A reader asking for a block on its way waits for it instead of fetching
// it; one whose wait runs long fetches it itself; a block that will not
// come is fetched by the readers waiting for it.
func TestExpect(t *testing.T) {
	st := fetchtest.NewStore()
	cids := putBlocks(t, st, 3, 1000)
	m := cache.NewMemory(fetch.Verify(st, nil), 1<<20)
	blk := func(i int) blocks.Block {
		b, err := st.GetBlock(context.Background(), cids[i])
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	b0, b1 := blk(0), blk(1)

	// Delivered while the reader waits: no fetch.
	d1 := m.Expect(cids[1])
	if d1 == nil {
		t.Fatal("Expect of a block not held returned nil")
	}
	if m.Expect(cids[1]) != nil {
		t.Fatal("a block expected twice")
	}
	st.Gets.Store(0)
	go func() { time.Sleep(50 * time.Millisecond); d1(b1) }()
	b, err := m.GetBlock(context.Background(), cids[1])
	if err != nil || !bytes.Equal(b.RawData(), b1.RawData()) {
		t.Fatalf("expected block: %v", err)
	}
	if n := st.Gets.Load(); n != 0 {
		t.Fatalf("reader fetched an expected block (%d gets)", n)
	}

	// Never delivered in time: a reader with 400 ms left waits about half
	// of it, then fetches it itself.
	d2 := m.Expect(cids[2])
	defer d2(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	if _, err := m.GetBlock(ctx, cids[2]); err != nil {
		t.Fatalf("reader gave up instead of fetching: %v", err)
	}
	if m.Stats.ExpectTimeouts.Load() != 1 {
		t.Fatalf("ExpectTimeouts %d", m.Stats.ExpectTimeouts.Load())
	}

	// Announced, then not coming: the waiting reader fetches it.
	d0 := m.Expect(cids[0])
	go func() { time.Sleep(50 * time.Millisecond); d0(nil) }()
	b, err = m.GetBlock(context.Background(), cids[0])
	if err != nil || !bytes.Equal(b.RawData(), b0.RawData()) {
		t.Fatalf("block that did not come: %v", err)
	}
	if m.Expect(cids[0]) != nil {
		t.Fatal("Expect of a block held returned a deliverer")
	}
}
