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
	k := startKubo(t)
	data := make([]byte, 50<<20+12345)
	rand.Read(data)
	root, err := cid.Decode(k.ipfs(t, bytes.NewReader(data), "add", "-Q", "--cid-version=1", "--raw-leaves"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	gw, err := fetch.NewGateway(k.Gateway, 0)
	if err != nil {
		t.Fatal(err)
	}
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
