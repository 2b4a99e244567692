package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"testing"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/fetch"
)

// Batched fetch against a real kubo gateway: the CAR kubo sends for a byte
// range is exactly the depth-first block sequence FetchRange expects, and
// the blocks it delivers read back as the original bytes.
func TestBatchedFetchFromKuboGateway(t *testing.T) {
	data, root, gw := addRandomFile(t, 50<<20+12345)
	ctx := context.Background()
	var stats fetch.Stats
	f, err := fetch.OpenFile(ctx, fetch.Verify(gw, &stats), root)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]byte{}
	for _, r := range [][2]int64{{0, 1}, {45 << 20, 47<<20 + 5}, {int64(len(data)) - 100, int64(len(data))}, {3 << 20, 13 << 20}} {
		n, err := f.FetchRange(ctx, gw, r[0], r[1], func(b blocks.Block) { got[string(b.Cid().Hash())] = b.RawData() })
		if err != nil {
			t.Fatalf("range %v: %v (after %d blocks)", r, err, n)
		}
		leaves, _ := f.Leaves(ctx, r[0], r[1])
		for _, l := range leaves {
			b, ok := got[string(l.Cid.Hash())]
			if !ok {
				t.Fatalf("range %v: leaf %s not delivered", r, l.Cid)
			}
			if !bytes.Equal(b, data[l.Start:l.Start+l.Size]) {
				t.Fatalf("range %v: leaf at %d has wrong bytes", r, l.Start)
			}
		}
	}
}

// Ranged fetch of file bytes against a real kubo gateway: kubo answers a
// Range on /ipfs/<root> with exactly those bytes, FetchBytes cuts them at
// the leaf boundaries and every leaf matches its CID, in one request per
// run of leaves.
func TestRangedBytesFromKuboGateway(t *testing.T) {
	data, root, gw := addRandomFile(t, 40<<20+777)
	ctx := context.Background()
	f, err := fetch.OpenFile(ctx, fetch.Verify(gw, nil), root)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]int64{{0, 1}, {45 << 18, 47<<20 + 5}, {int64(len(data)) - 100, int64(len(data))}, {3 << 20, 13 << 20}} {
		leaves, err := f.Leaves(ctx, r[0], r[1])
		if err != nil {
			t.Fatal(err)
		}
		runs := fetch.Runs(leaves, nil)
		total := 0
		for _, run := range runs {
			total += len(run)
			n, err := f.FetchBytes(ctx, gw, run, func(b blocks.Block) {
				for _, l := range run {
					if l.Cid.Equals(b.Cid()) && !bytes.Equal(b.RawData(), data[l.Start:l.Start+l.Size]) {
						t.Errorf("range %v: leaf at %d has wrong bytes", r, l.Start)
					}
				}
			})
			if err != nil || n != len(run) {
				t.Fatalf("range %v: %d of %d leaves: %v", r, n, len(run), err)
			}
		}
		if total != len(leaves) {
			t.Fatalf("range %v: runs hold %d of %d leaves", r, total, len(leaves))
		}
	}
}

// addRandomFile adds size random bytes to a fresh kubo (raw leaves,
// CIDv1) and returns them, their CID and kubo's gateway.
func addRandomFile(t *testing.T, size int) ([]byte, cid.Cid, *fetch.Gateway) {
	t.Helper()
	k := startKubo(t)
	data := make([]byte, size)
	rand.Read(data)
	root, err := cid.Decode(k.ipfs(t, bytes.NewReader(data), "add", "-Q", "--cid-version=1", "--raw-leaves"))
	if err != nil {
		t.Fatal(err)
	}
	gw, err := fetch.NewGateway(k.Gateway, 0)
	if err != nil {
		t.Fatal(err)
	}
	return data, root, gw
}
