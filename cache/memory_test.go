package cache_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/cache"
	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
)

func putBlocks(t *testing.T, st *fetchtest.Store, n, size int) []cid.Cid {
	t.Helper()
	var out []cid.Cid
	for i := range n {
		data := bytes.Repeat([]byte{byte(i), byte(i >> 8)}, size/2)
		b := blocks.NewBlock(data)
		c := cid.NewCidV1(cid.Raw, b.Cid().Hash())
		b, _ = blocks.NewBlockWithCid(data, c)
		if err := st.Put(b); err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

func TestMemoryStaysUnderBound(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	cids := putBlocks(t, st, 100, 1000)
	m := cache.NewMemory(fetch.Verify(st, nil), 10_500)
	for round := range 3 {
		for i, c := range cids {
			b, err := m.GetBlock(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			if b.RawData()[0] != byte(i) {
				t.Fatalf("round %d: block %d has wrong bytes", round, i)
			}
			if m.Bytes() > 10_500 {
				t.Fatalf("cache holds %d bytes, bound 10500", m.Bytes())
			}
		}
	}
	if m.Len() != 10 {
		t.Fatalf("Len = %d, want 10 blocks of 1000 bytes", m.Len())
	}
	if m.Stats.Evictions.Load() == 0 {
		t.Fatal("no evictions counted")
	}
	// The 10 most recent blocks are hits now.
	before := st.Gets.Load()
	for _, c := range cids[90:] {
		if _, err := m.GetBlock(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if st.Gets.Load() != before {
		t.Fatalf("recent blocks were fetched again (%d gets)", st.Gets.Load()-before)
	}
}

func TestMemorySharesCidVersions(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	data := []byte("same bytes, two names")
	v0 := blocks.NewBlock(data) // CIDv0 is dag-pb; use the multihash only
	v1 := cid.NewCidV1(cid.Raw, v0.Cid().Hash())
	b, _ := blocks.NewBlockWithCid(data, v1)
	if err := st.Put(b); err != nil {
		t.Fatal(err)
	}
	m := cache.NewMemory(fetch.Verify(st, nil), 1<<20)
	if _, err := m.GetBlock(ctx, v1); err != nil {
		t.Fatal(err)
	}
	other := cid.NewCidV1(cid.DagProtobuf, v0.Cid().Hash())
	got, err := m.GetBlock(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Cid().Equals(other) {
		t.Fatalf("block carries %s, want the CID asked for %s", got.Cid(), other)
	}
	if m.Stats.Hits.Load() != 1 || st.Gets.Load() != 1 {
		t.Fatalf("hits=%d gets=%d: second name of one multihash was not a hit", m.Stats.Hits.Load(), st.Gets.Load())
	}
}

func TestMemoryMergesConcurrentFetches(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	cids := putBlocks(t, st, 1, 1000)
	release := make(chan struct{})
	st.SetDelay(func(cid.Cid) { <-release })
	m := cache.NewMemory(st, 1<<20)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			_, err := m.GetBlock(ctx, cids[0])
			errs <- err
		})
	}
	// Let the waiters pile up on the one in-flight fetch.
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := st.Gets.Load(); n != 1 {
		t.Fatalf("16 concurrent readers caused %d fetches, want 1", n)
	}
}

func TestMemoryWaiterCancellation(t *testing.T) {
	st := fetchtest.NewStore()
	cids := putBlocks(t, st, 1, 1000)
	release := make(chan struct{})
	st.SetDelay(func(cid.Cid) { <-release })
	m := cache.NewMemory(st, 1<<20)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := m.GetBlock(ctx, cids[0])
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: err=%v", err)
	}
	// The shared fetch completes and fills the cache for the next reader.
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for !m.Contains(cids[0]) {
		if time.Now().After(deadline) {
			t.Fatal("abandoned fetch did not fill the cache")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestMemoryRemoveAndErrors(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	cids := putBlocks(t, st, 2, 1000)
	m := cache.NewMemory(st, 1<<20)
	if _, err := m.GetBlock(ctx, cids[0]); err != nil {
		t.Fatal(err)
	}
	m.Remove(cids[0])
	if m.Contains(cids[0]) || m.Bytes() != 0 {
		t.Fatalf("Remove left %d bytes", m.Bytes())
	}
	missing, _ := cid.V1Builder{Codec: cid.Raw, MhType: 0x12}.Sum([]byte("absent"))
	if _, err := m.GetBlock(ctx, missing); !errors.Is(err, fetch.ErrBlockNotFound) {
		t.Fatalf("missing block: err=%v", err)
	}
	if m.Contains(missing) {
		t.Fatal("an error was cached")
	}
	// A block larger than the whole cache is served but not kept.
	small := cache.NewMemory(st, 500)
	if _, err := small.GetBlock(ctx, cids[1]); err != nil {
		t.Fatal(err)
	}
	if small.Len() != 0 {
		t.Fatal("block larger than the bound was cached")
	}
}

func BenchmarkMemoryHit(b *testing.B) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	var cids []cid.Cid
	for i := range 64 {
		data := []byte(fmt.Sprintf("block %d %s", i, bytes.Repeat([]byte("x"), 256<<10)))
		c, _ := cid.V1Builder{Codec: cid.Raw, MhType: 0x12}.Sum(data)
		bl, _ := blocks.NewBlockWithCid(data, c)
		_ = st.Put(bl)
		cids = append(cids, c)
	}
	m := cache.NewMemory(st, 64<<20)
	for _, c := range cids {
		_, _ = m.GetBlock(ctx, c)
	}
	b.SetBytes(256 << 10)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := m.GetBlock(ctx, cids[i%len(cids)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

// Blocks that arrived by Put (read-ahead) and left before any read are
// counted apart from other evictions.
func TestMemoryCountsEvictedUnread(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	cids := putBlocks(t, st, 6, 1000)
	m := cache.NewMemory(fetch.Verify(st, nil), 3_000)
	for _, c := range cids[:3] { // read-ahead brings three blocks
		b, err := st.GetBlock(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		m.Put(b)
	}
	if _, err := m.GetBlock(ctx, cids[0]); err != nil { // one is read
		t.Fatal(err)
	}
	for _, c := range cids[3:] { // three reads of other blocks evict all three
		if _, err := m.GetBlock(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if e, u := m.Stats.Evictions.Load(), m.Stats.EvictedUnread.Load(); e != 3 || u != 2 {
		t.Fatalf("%d evictions, %d of them unread; want 3 and 2", e, u)
	}
}
