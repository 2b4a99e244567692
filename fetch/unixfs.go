package fetch

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/ipfs/boxo/ipld/merkledag"
	"github.com/ipfs/boxo/ipld/unixfs"
	unixfspb "github.com/ipfs/boxo/ipld/unixfs/pb"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"
)

// maxDepth bounds the height of a UnixFS file DAG. A balanced DAG of 256 KiB
// leaves with 174 links per node holds exabytes in 8 levels.
const maxDepth = 32

// MinChildBytes is the least a child of a UnixFS file node other than
// its last may hold. Every chunker in use writes far larger chunks (kubo's
// smallest fixed or content-defined minimum is kilobytes); a DAG of tiny
// leaves is refused as malformed, since reading it costs a block request
// per few bytes.
const MinChildBytes = 4 << 10

// MaxLinks bounds the children of one node; kubo writes at most 174.
const MaxLinks = 8192

// maxParallelLeaves bounds the concurrent block fetches of one ReadAt.
const maxParallelLeaves = 8

// File gives random access to the bytes of a UnixFS file (or a single raw
// block). Intermediate nodes are parsed once and kept for the life of the
// File; leaves are fetched through the BlockGetter on every read, so the
// caller's cache decides how long their bytes stay.
type File struct {
	bg      BlockGetter
	rootCid cid.Cid
	root    *dagNode
	size    int64

	mu     sync.Mutex
	nodes  map[string]*dagNode // intermediate nodes by CID key
	loader singleflight.Group

	hook  atomic.Pointer[func(start int64, data []byte)]
	offer atomic.Pointer[func(start int64, data []byte)]
}

// SetLeafHook installs a function called with every whole leaf that ReadAt
// read (in file order within a read) or that read-ahead fetched (see
// Offer), start being the leaf's offset in the file. It lets a caller hash
// the file as it streams by without reading it twice. Leaves may come more
// than once and out of order, from several goroutines: the hook must be
// quick and safe for concurrent use. nil removes it.
func (f *File) SetLeafHook(h func(start int64, data []byte)) {
	if h == nil {
		f.hook.Store(nil)
		return
	}
	f.hook.Store(&h)
}

// SetOfferHook installs the function Offer calls instead of the leaf
// hook (for leaves that arrive by read-ahead, which a caller may rather
// handle on another goroutine than the fetch's). nil: the leaf hook.
func (f *File) SetOfferHook(h func(start int64, data []byte)) {
	if h == nil {
		f.offer.Store(nil)
		return
	}
	f.offer.Store(&h)
}

// Offer hands the offer hook (or else the leaf hook) a leaf that arrived
// by another path than ReadAt (read-ahead, a ranged fetch). b must be the
// verified block of l.
func (f *File) Offer(l LeafRange, b blocks.Block) {
	hook := f.offer.Load()
	if hook == nil {
		hook = f.hook.Load()
	}
	if hook == nil || l.data != nil {
		return
	}
	_, data, err := parseNode(l.Cid, b, 0, l.Size)
	if err != nil || data == nil {
		return // ReadAt will say what is wrong with it
	}
	(*hook)(l.Start, data)
}

// dagNode is a parsed intermediate node: optional inline data, then children
// whose byte ranges follow from the node's blocksizes.
type dagNode struct {
	depth int
	data  []byte
	links []dagLink
	size  int64 // len(data) + sum of link sizes
}

type dagLink struct {
	c     cid.Cid
	start int64 // offset of the child's first byte within the node
	size  int64
}

// LeafRange is one leaf block of a File and the file bytes it holds.
type LeafRange struct {
	Cid   cid.Cid
	Start int64
	Size  int64
	data  []byte // set when the bytes are inline in a parent node
}

// OpenFile fetches and parses the root of the UnixFS file c.
func OpenFile(ctx context.Context, bg BlockGetter, c cid.Cid) (*File, error) {
	f := &File{bg: bg, rootCid: c, nodes: make(map[string]*dagNode)}
	b, err := bg.GetBlock(ctx, c)
	if err != nil {
		return nil, err
	}
	n, leaf, err := parseNode(c, b, 0, -1)
	if err != nil {
		return nil, err
	}
	if leaf != nil {
		n = &dagNode{links: []dagLink{{c: c, size: int64(len(leaf))}}, size: int64(len(leaf))}
	}
	f.root = n
	f.size = n.size
	// Walk down the first link of every level: a DAG of tiny leaves (or
	// any shape parseNode refuses) is refused here, at the cost of one
	// block per level, rather than on the first read.
	for n, depth := f.root, 0; len(n.links) > 0; depth++ {
		child, err := f.node(ctx, n.links[0], depth+1)
		if err != nil {
			return nil, err
		}
		if child == nil {
			break
		}
		n = child
	}
	return f, nil
}

// Size is the length of the file in bytes, as the root declares it.
func (f *File) Size() int64 { return f.size }

// ReadAt reads len(p) bytes at off, fetching the leaves it spans
// concurrently. It returns io.EOF when fewer bytes remain, as io.ReaderAt.
func (f *File) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("negative offset %d", off)
	}
	if off >= f.size {
		return 0, io.EOF
	}
	end := off + int64(len(p))
	if end > f.size {
		end = f.size
	}
	leaves, err := f.Leaves(ctx, off, end)
	if err != nil {
		return 0, err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(maxParallelLeaves)
	hook := f.hook.Load()
	var whole [][]byte
	if hook != nil {
		whole = make([][]byte, len(leaves))
	}
	for i, l := range leaves {
		g.Go(func() error {
			data, err := f.leafData(gctx, l)
			if err != nil {
				return err
			}
			if whole != nil {
				whole[i] = data
			}
			// Copy the overlap of [l.Start, l.Start+l.Size) and [off, end).
			lo, hi := max(l.Start, off), min(l.Start+l.Size, end)
			copy(p[lo-off:hi-off], data[lo-l.Start:hi-l.Start])
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	for i, data := range whole {
		(*hook)(leaves[i].Start, data)
	}
	n := int(end - off)
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Leaves lists the leaf blocks holding bytes [off, end), in order, loading
// the intermediate nodes on the way.
func (f *File) Leaves(ctx context.Context, off, end int64) ([]LeafRange, error) {
	var out []LeafRange
	err := f.collect(ctx, f.root, 0, off, end, &out)
	return out, err
}

func (f *File) collect(ctx context.Context, n *dagNode, base, off, end int64, out *[]LeafRange) error {
	if d := int64(len(n.data)); d > 0 && off < base+d && end > base {
		*out = append(*out, LeafRange{Start: base, Size: d, data: n.data})
	}
	// First link whose range ends after off.
	i := sort.Search(len(n.links), func(i int) bool {
		l := n.links[i]
		return base+l.start+l.size > off
	})
	for ; i < len(n.links); i++ {
		l := n.links[i]
		start := base + l.start
		if start >= end {
			break
		}
		if l.size == 0 {
			continue
		}
		child, err := f.node(ctx, l, n.depth+1)
		if err != nil {
			return err
		}
		if child == nil {
			*out = append(*out, LeafRange{Cid: l.c, Start: start, Size: l.size})
			continue
		}
		if err := f.collect(ctx, child, start, off, end, out); err != nil {
			return err
		}
	}
	return nil
}

// node returns the parsed intermediate node behind l, or nil if l is a leaf.
// Raw blocks are leaves without a fetch; dag-pb children are fetched once to
// find out, and kept only if they have children of their own.
func (f *File) node(ctx context.Context, l dagLink, depth int) (*dagNode, error) {
	if l.c.Type() == cid.Raw {
		return nil, nil
	}
	key := l.c.KeyString()
	f.mu.Lock()
	n, ok := f.nodes[key]
	f.mu.Unlock()
	if ok {
		return n, nil
	}
	// Shared by concurrent readers: under a context of its own, so that
	// one interrupted reader does not fail the others.
	ch := f.loader.DoChan(key, func() (any, error) {
		sctx, cancel := Detach(ctx)
		defer cancel()
		b, err := f.bg.GetBlock(sctx, l.c)
		if err != nil {
			return nil, err
		}
		n, leaf, err := parseNode(l.c, b, depth, l.size)
		if err != nil {
			return nil, err
		}
		if leaf != nil {
			n = nil
		}
		f.mu.Lock()
		f.nodes[key] = n
		f.mu.Unlock()
		return n, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*dagNode), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// leafData returns the bytes of one leaf, checked against the size its
// parent declared.
func (f *File) leafData(ctx context.Context, l LeafRange) ([]byte, error) {
	if l.data != nil {
		return l.data, nil
	}
	b, err := f.bg.GetBlock(ctx, l.Cid)
	if err != nil {
		return nil, err
	}
	_, data, err := parseNode(l.Cid, b, 0, l.Size)
	if err != nil {
		return nil, err
	}
	if data == nil {
		return nil, fmt.Errorf("%w: %s was a leaf and now has children", ErrMalformedDAG, l.Cid)
	}
	return data, nil
}

// parseNode parses a block of a UnixFS file. It returns either an
// intermediate node or, for a leaf, its bytes. want is the size the parent
// declared (-1 for the root).
func parseNode(c cid.Cid, b blocks.Block, depth int, want int64) (*dagNode, []byte, error) {
	if depth > maxDepth {
		return nil, nil, fmt.Errorf("%w: deeper than %d levels at %s", ErrMalformedDAG, maxDepth, c)
	}
	var (
		n    *dagNode
		leaf []byte
	)
	switch c.Type() {
	case cid.Raw:
		leaf = b.RawData()
	case cid.DagProtobuf:
		pn, err := merkledag.DecodeProtobuf(b.RawData())
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %s: %v", ErrMalformedDAG, c, err)
		}
		fsn, err := unixfs.FSNodeFromBytes(pn.Data())
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %s: %v", ErrMalformedDAG, c, err)
		}
		if t := fsn.Type(); t != unixfspb.Data_File && t != unixfspb.Data_Raw {
			return nil, nil, fmt.Errorf("%w: %s is a UnixFS %v, not a file", ErrMalformedDAG, c, t)
		}
		links, sizes := pn.Links(), fsn.BlockSizes()
		if len(links) != len(sizes) {
			return nil, nil, fmt.Errorf("%w: %s has %d links but %d block sizes", ErrMalformedDAG, c, len(links), len(sizes))
		}
		data := fsn.Data()
		if len(links) == 0 {
			leaf = data
			break
		}
		if len(links) > MaxLinks {
			return nil, nil, fmt.Errorf("%w: %s has %d links, more than %d", ErrMalformedDAG, c, len(links), MaxLinks)
		}
		n = &dagNode{depth: depth, data: data, links: make([]dagLink, len(links))}
		pos := int64(len(data))
		for i, l := range links {
			s := int64(sizes[i])
			if s < 0 || pos+s < pos {
				return nil, nil, fmt.Errorf("%w: %s: block size overflow", ErrMalformedDAG, c)
			}
			if s < MinChildBytes && i < len(links)-1 {
				// Tiny leaves would cost a block request per few bytes.
				return nil, nil, fmt.Errorf("%w: %s: child %d holds %d bytes; every child but the last must hold at least %d (a DAG of tiny leaves costs far more blocks than its size needs)", ErrMalformedDAG, c, i, s, MinChildBytes)
			}
			n.links[i] = dagLink{c: l.Cid, start: pos, size: s}
			pos += s
		}
		n.size = pos
		if fs := fsn.FileSize(); fs != uint64(pos) {
			return nil, nil, fmt.Errorf("%w: %s declares %d bytes but its parts hold %d", ErrMalformedDAG, c, fs, pos)
		}
	default:
		return nil, nil, fmt.Errorf("%w: %s has codec %#x, not raw or dag-pb", ErrMalformedDAG, c, c.Type())
	}
	if n == nil && leaf == nil {
		leaf = []byte{} // an empty leaf is still a leaf
	}
	got := int64(len(leaf))
	if n != nil {
		got = n.size
	}
	if want >= 0 && got != want {
		return nil, nil, fmt.Errorf("%w: %s holds %d bytes but its parent says %d", ErrMalformedDAG, c, got, want)
	}
	return n, leaf, nil
}

// KnownBlocks lists the CIDs of every block of the file that has been
// located so far: the root's children, intermediate nodes and the leaves they
// link. Used to drop a file's blocks from caches.
func (f *File) KnownBlocks() []cid.Cid {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := []cid.Cid{f.rootCid}
	add := func(n *dagNode) {
		for _, l := range n.links {
			out = append(out, l.c)
		}
	}
	add(f.root)
	for _, n := range f.nodes {
		if n != nil {
			add(n)
		}
	}
	return out
}
