package publish

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	chunker "github.com/ipfs/boxo/chunker"
	"github.com/ipfs/boxo/ipld/unixfs/importer/balanced"
	"github.com/ipfs/boxo/ipld/unixfs/importer/helpers"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"

	"github.com/ipnix/ipnix/narindex"
)

// Describer is an Adder that can say how it lays a NAR out, as the
// narinfo field IpfsEncoding (RFC 133's draft). The Publisher writes the
// field for every NAR such an Adder adds, and none when ok is false (a
// layout the field cannot describe, such as a content-defined chunker).
type Describer interface {
	Encoding() (e narindex.IpfsEncoding, ok bool)
}

// Encoding implements Describer: a fixed-size chunker ("size-N", or the
// default) is described; rabin and buzhash, which the draft gives no
// words for, are not.
func (k *KuboAdder) Encoding() (narindex.IpfsEncoding, bool) {
	c := k.Chunker
	if c == "" {
		c = DefaultChunker
	}
	n, ok := fixedChunkSize(c)
	if !ok {
		return narindex.IpfsEncoding{}, false
	}
	return narindex.FixedSizeEncoding(n), true
}

// fixedChunkSize reads the size of a kubo "size-N" chunker.
func fixedChunkSize(chunker string) (int64, bool) {
	s, ok := strings.CutPrefix(chunker, "size-")
	if !ok || s == "" || s[0] < '1' || s[0] > '9' {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil && n > 0
}

// RecomputeCID rebuilds, from the bytes of r, the UnixFS DAG that e
// describes and returns its root CID, keeping no block: what anyone holding
// a NAR does to check a narinfo's IpfsCid, and what `ipfs add --only-hash`
// with the same parameters gives. The CID version and hash function are
// those of like (the draft says the CID carries them), normally the
// IpfsCid being checked. It refuses an encoding it cannot rebuild: only method
// "wrapped-nar" (or "unixfs-nar", the name the draft's text uses), raw
// leaves, fixed-size chunks of a given size, and balanced layout.
func RecomputeCID(ctx context.Context, r io.Reader, e narindex.IpfsEncoding, like cid.Cid) (cid.Cid, error) {
	switch {
	case e.Method != narindex.EncodingWrappedNar && e.Method != "unixfs-nar":
		return cid.Undef, fmt.Errorf("IpfsEncoding method %q: only %q can be rebuilt", e.Method, narindex.EncodingWrappedNar)
	case e.LeafFormat != narindex.EncodingRawLeaves:
		return cid.Undef, fmt.Errorf("IpfsEncoding leaf format %q: only %q can be rebuilt", e.LeafFormat, narindex.EncodingRawLeaves)
	case e.Strategy != narindex.EncodingFixedSize:
		return cid.Undef, fmt.Errorf("IpfsEncoding chunking strategy %q: only %q can be rebuilt", e.Strategy, narindex.EncodingFixedSize)
	case e.ChunkSize <= 0 || e.ChunkSize > int64(chunker.ChunkSizeLimit):
		return cid.Undef, fmt.Errorf("IpfsEncoding chunk size %d: not between 1 and %d (the draft's example gives none)", e.ChunkSize, chunker.ChunkSizeLimit)
	case e.Layout != narindex.EncodingBalanced:
		return cid.Undef, fmt.Errorf("IpfsEncoding layout %q: only %q can be rebuilt", e.Layout, narindex.EncodingBalanced)
	case e.MaxWidth < 2 || e.MaxWidth > 1<<16:
		return cid.Undef, fmt.Errorf("IpfsEncoding max-width %d: not between 2 and %d", e.MaxWidth, 1<<16)
	}
	p := like.Prefix()
	if !like.Defined() || (p.Codec != cid.DagProtobuf && p.Codec != cid.Raw) {
		return cid.Undef, fmt.Errorf("CID %s is not the root of a UnixFS file", like)
	}
	// A one-chunk NAR is a raw block; the nodes above the leaves are
	// dag-pb of the root's version and hash function (the leaves are raw
	// CIDv1 with that hash function, whatever the root's version).
	prefix := cid.Prefix{Version: p.Version, Codec: cid.DagProtobuf, MhType: p.MhType, MhLength: -1}
	params := helpers.DagBuilderParams{
		Dagserv:    discardDAG{},
		Maxlinks:   e.MaxWidth,
		RawLeaves:  true,
		CidBuilder: prefix,
	}
	db, err := params.New(chunker.NewSizeSplitter(ctxReader{ctx, r}, e.ChunkSize))
	if err != nil {
		return cid.Undef, err
	}
	nd, err := balanced.Layout(db)
	if err != nil {
		return cid.Undef, err
	}
	return nd.Cid(), nil
}

// ctxReader stops a long rebuild when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// discardDAG is a DAG service that keeps nothing: the importer only adds.
type discardDAG struct{}

var errDiscarded = errors.New("discarded: RecomputeCID keeps no block")

func (discardDAG) Add(context.Context, ipld.Node) error        { return nil }
func (discardDAG) AddMany(context.Context, []ipld.Node) error  { return nil }
func (discardDAG) Remove(context.Context, cid.Cid) error       { return nil }
func (discardDAG) RemoveMany(context.Context, []cid.Cid) error { return nil }
func (discardDAG) Get(context.Context, cid.Cid) (ipld.Node, error) {
	return nil, errDiscarded
}
func (discardDAG) GetMany(context.Context, []cid.Cid) <-chan *ipld.NodeOption {
	ch := make(chan *ipld.NodeOption)
	close(ch)
	return ch
}
