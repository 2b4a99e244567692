package fetch_test

import (
	"bytes"
	"context"
	"testing"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
)

// FuzzOpenFile feeds arbitrary bytes to the UnixFS parser as a file's root
// (and its children, as a lying source would): whatever the bytes, OpenFile
// and ReadAt return data or an error, never panic or hang, and a DAG that
// is accepted never serves more bytes than its declared size.
func FuzzOpenFile(f *testing.F) {
	st := fetchtest.NewStore()
	for i, o := range []fetchtest.Options{
		fetchtest.DefaultOptions,
		{ChunkSize: 4096, MaxLinks: 3},
		{ChunkSize: 64, RawLeaves: true},
	} {
		root, err := st.AddFile(randomBytes(20000, uint64(i)), o)
		if err != nil {
			f.Fatal(err)
		}
		b, err := st.GetBlock(context.Background(), root)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b.RawData(), bytes.Repeat([]byte{1}, 4096))
	}
	f.Add([]byte{0x0a, 0x02, 0x08, 0x02}, []byte("x"))
	f.Fuzz(func(t *testing.T, rootData, child []byte) {
		rootCid, err := cid.V1Builder{Codec: cid.DagProtobuf, MhType: 0x12}.Sum(rootData)
		if err != nil {
			t.Skip()
		}
		bg := fetch.BlockGetterFunc(func(ctx context.Context, c cid.Cid) (blocks.Block, error) {
			if c.Equals(rootCid) {
				return blocks.NewBlockWithCid(rootData, c)
			}
			return blocks.NewBlockWithCid(child, c) // unverified: a lying source
		})
		file, err := fetch.OpenFile(context.Background(), bg, rootCid)
		if err != nil {
			return
		}
		if file.Size() < 0 {
			t.Fatalf("negative size %d", file.Size())
		}
		for _, off := range []int64{0, file.Size() / 2, file.Size() - 1} {
			if off < 0 {
				continue
			}
			buf := make([]byte, 8192)
			n, _ := file.ReadAt(context.Background(), buf, off)
			if n < 0 || int64(n) > file.Size()-off {
				t.Fatalf("ReadAt(%d) = %d bytes of a %d-byte file", off, n, file.Size())
			}
		}
	})
}
