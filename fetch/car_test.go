package fetch_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/multiformats/go-varint"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
)

// carBytes writes a CARv1 with one root and the given blocks, in order.
func carBytes(root cid.Cid, bs []blocks.Block) []byte {
	var buf bytes.Buffer
	rc := append([]byte{0}, root.Bytes()...)
	hdr := []byte{0xa2, 0x65, 'r', 'o', 'o', 't', 's', 0x81, 0xd8, 0x2a, 0x58, byte(len(rc))}
	hdr = append(hdr, rc...)
	hdr = append(hdr, 0x67, 'v', 'e', 'r', 's', 'i', 'o', 'n', 0x01)
	buf.Write(varint.ToUvarint(uint64(len(hdr))))
	buf.Write(hdr)
	for _, b := range bs {
		cb := b.Cid().Bytes()
		buf.Write(varint.ToUvarint(uint64(len(cb) + len(b.RawData()))))
		buf.Write(cb)
		buf.Write(b.RawData())
	}
	return buf.Bytes()
}

// carSource answers every range with a fixed CAR, recording the request.
type carSource struct {
	data     []byte
	from, to int64
}

func (s *carSource) GetRange(ctx context.Context, root cid.Cid, from, to int64) (io.ReadCloser, error) {
	s.from, s.to = from, to
	return io.NopCloser(bytes.NewReader(s.data)), nil
}

func TestFetchRange(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	data := randomBytes(3<<20, 21)
	// Small fan-out so that the range crosses an intermediate node.
	root, err := st.AddFile(data, fetchtest.Options{ChunkSize: 256 << 10, RawLeaves: true, MaxLinks: 4})
	if err != nil {
		t.Fatal(err)
	}
	f, err := fetch.OpenFile(ctx, st, root)
	if err != nil {
		t.Fatal(err)
	}
	from, to := int64(700<<10), int64(2<<20)
	leaves, _ := f.Leaves(ctx, from, to)
	// What a gateway sends: root, then for each child whose range meets
	// [from, to), the child and its subtree, depth first.
	good := dfs(t, st, root, 0, from, to)
	if len(good) < len(leaves)+2 {
		t.Fatalf("expected intermediate nodes in the range (%d blocks, %d leaves)", len(good), len(leaves))
	}

	var got []blocks.Block
	put := func(b blocks.Block) { got = append(got, b) }
	src := &carSource{data: carBytes(root, good)}
	n, err := f.FetchRange(ctx, src, from, to, put)
	if err != nil || n != len(good) || len(got) != len(good) {
		t.Fatalf("good CAR: n=%d err=%v", n, err)
	}
	if src.from != from || src.to != to {
		t.Fatalf("asked for [%d,%d), want [%d,%d)", src.from, src.to, from, to)
	}

	wrongBytes := append([]byte(nil), good[len(good)-1].RawData()...)
	wrongBytes[0] ^= 1
	wrong, _ := blocks.NewBlockWithCid(wrongBytes, good[len(good)-1].Cid())
	other, _ := blocks.NewBlockWithCid([]byte("extra"), mustSum(t, []byte("extra")))
	reordered := append([]blocks.Block(nil), good...)
	reordered[len(reordered)-1], reordered[len(reordered)-2] = reordered[len(reordered)-2], reordered[len(reordered)-1]
	for name, tc := range map[string]struct {
		bs   []blocks.Block
		want error
	}{
		"wrong block":   {append(append([]blocks.Block(nil), good[:len(good)-1]...), wrong), fetch.ErrHashMismatch},
		"extra block":   {append(append([]blocks.Block(nil), good...), other), fetch.ErrUnexpectedBlock},
		"reordered":     {reordered, fetch.ErrUnexpectedBlock},
		"missing block": {good[:len(good)-1], fetch.ErrUnexpectedBlock},
		"foreign block": {append([]blocks.Block{other}, good...), fetch.ErrUnexpectedBlock},
		"garbage":       {nil, fetch.ErrUnexpectedBlock},
	} {
		got = nil
		src := &carSource{data: carBytes(root, tc.bs)}
		if name == "garbage" {
			src.data = []byte("not a car")
		}
		n, err := f.FetchRange(ctx, src, from, to, put)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err=%v, want %v", name, err, tc.want)
		}
		if n != len(got) {
			t.Errorf("%s: reported %d delivered, put saw %d", name, n, len(got))
		}
		for _, b := range got {
			if err := fetch.CheckBlock(b.Cid(), b.RawData()); err != nil {
				t.Errorf("%s: an unverified block was delivered: %v", name, err)
			}
		}
	}
}

func mustSum(t *testing.T, data []byte) cid.Cid {
	c, err := cid.V1Builder{Codec: cid.Raw, MhType: 0x12}.Sum(data)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// dfs lists the blocks under c that hold [from, to), depth first, reading
// the store directly (an independent implementation of the gateway order).
func dfs(t *testing.T, st *fetchtest.Store, c cid.Cid, base, from, to int64) []blocks.Block {
	t.Helper()
	b, err := st.GetBlock(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	out := []blocks.Block{b}
	if c.Type() == cid.Raw {
		return out
	}
	pn, sizes := decodeNode(t, b)
	off := base
	for i, l := range pn {
		if off < to && off+int64(sizes[i]) > from {
			out = append(out, dfs(t, st, l, off, from, to)...)
		}
		off += int64(sizes[i])
	}
	return out
}
