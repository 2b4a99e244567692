package publish

import (
	"context"
	"fmt"
	"io"

	"github.com/ipfs/boxo/files"
	"github.com/ipfs/go-cid"
	"github.com/ipfs/kubo/client/rpc"
	caopts "github.com/ipfs/kubo/core/coreiface/options"
)

// Adder stores a byte stream in IPFS as a UnixFS file and returns its root.
type Adder interface {
	Add(ctx context.Context, r io.Reader) (cid.Cid, error)
}

// DefaultChunker is the encoding DESIGN.md fixes, so that anyone holding the
// NAR can recompute its CID with `ipfs add --cid-version=1`.
const DefaultChunker = "size-262144"

// KuboAdder adds through a kubo node's RPC API: CIDv1, raw leaves, balanced
// layout, the given chunker, pinned so the node's garbage collector keeps it.
type KuboAdder struct {
	API     *rpc.HttpApi
	Chunker string
}

// Add implements Adder.
func (k *KuboAdder) Add(ctx context.Context, r io.Reader) (cid.Cid, error) {
	chunker := k.Chunker
	if chunker == "" {
		chunker = DefaultChunker
	}
	p, err := k.API.Unixfs().Add(ctx, files.NewReaderFile(r),
		caopts.Unixfs.CidVersion(1),
		caopts.Unixfs.RawLeaves(true),
		caopts.Unixfs.Chunker(chunker),
		caopts.Unixfs.Pin(true, ""),
	)
	if err != nil {
		return cid.Undef, fmt.Errorf("kubo add: %w", err)
	}
	return p.RootCid(), nil
}
