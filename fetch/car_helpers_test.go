package fetch_test

import (
	"testing"

	"github.com/ipfs/boxo/ipld/merkledag"
	"github.com/ipfs/boxo/ipld/unixfs"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
)

func decodeNode(t *testing.T, b blocks.Block) ([]cid.Cid, []uint64) {
	t.Helper()
	pn, err := merkledag.DecodeProtobuf(b.RawData())
	if err != nil {
		t.Fatal(err)
	}
	fsn, err := unixfs.FSNodeFromBytes(pn.Data())
	if err != nil {
		t.Fatal(err)
	}
	var cids []cid.Cid
	for _, l := range pn.Links() {
		cids = append(cids, l.Cid)
	}
	return cids, fsn.BlockSizes()
}
