package ipfscache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/ipfs/boxo/ipld/merkledag"
	"github.com/ipfs/boxo/ipld/unixfs"
	"github.com/ipfs/boxo/ipld/unixfs/hamt"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/narindex"
)

// ErrMalformedDir is wrapped by the errors of a directory (or an entry of
// it) whose verified blocks are not what a UnixFS directory of files must
// be: a fact about that root, not a passing failure.
var ErrMalformedDir = errors.New("malformed UnixFS directory")

// MaxDirBlocks bounds the directory blocks one lookup fetches: the root
// and the HAMT shards on the way to one name. kubo's 256-wide shards
// reach millions of entries in 3 levels; the narrowest fanout allowed (8)
// takes 3 bits of the 64-bit name hash per level, so 22 levels at most.
const MaxDirBlocks = 24

// Fanouts of HAMT shards that are read: powers of two from 8 to 1024, as
// the UnixFS spec and kubo allow.
const (
	minFanout = 8
	maxFanout = 1024
)

// lookup finds name in the UnixFS directory root and returns the CID of
// its entry. The error wraps narindex.ErrNotFound when the directory has
// no such entry and ErrMalformedDir when its blocks are not a directory;
// any other error is a failure to fetch a block. At most MaxDirBlocks
// blocks are fetched, each checked against its CID by bg.
func lookup(ctx context.Context, bg fetch.BlockGetter, root cid.Cid, name string) (cid.Cid, error) {
	ds := &dirBlocks{bg: bg, left: MaxDirBlocks}
	nd, err := ds.Get(ctx, root)
	if err != nil {
		return cid.Undef, err
	}
	pn := nd.(*merkledag.ProtoNode) // Get returns nothing else
	fsn, err := unixfs.FSNodeFromBytes(pn.Data())
	if err != nil {
		return cid.Undef, fmt.Errorf("%w: %s: %v", ErrMalformedDir, root, err)
	}
	var link *ipld.Link
	switch fsn.Type() {
	case unixfs.TDirectory:
		link, err = pn.GetNodeLink(name)
		if errors.Is(err, merkledag.ErrLinkNotFound) {
			return cid.Undef, fmt.Errorf("%s: %w", name, narindex.ErrNotFound)
		}
	case unixfs.THAMTShard:
		var sh *hamt.Shard
		if sh, err = hamt.NewHamtFromDag(ds, pn); err != nil {
			return cid.Undef, fmt.Errorf("%w: HAMT root %s: %v", ErrMalformedDir, root, err)
		}
		link, err = sh.Find(ctx, name)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return cid.Undef, fmt.Errorf("%s: %w", name, narindex.ErrNotFound)
		case err != nil && ds.fetchErr != nil:
			return cid.Undef, ds.fetchErr // a block did not come
		case err != nil && !errors.Is(err, ErrMalformedDir):
			// What boxo refused in a verified shard (link names,
			// bitfields) is in the data.
			err = fmt.Errorf("%w: HAMT under %s: %v", ErrMalformedDir, root, err)
		}
	default:
		return cid.Undef, fmt.Errorf("%w: %s is a UnixFS %s, not a directory", ErrMalformedDir, root, fsn.Type())
	}
	if err != nil {
		return cid.Undef, err
	}
	if link == nil || !link.Cid.Defined() {
		return cid.Undef, fmt.Errorf("%w: entry %q has no CID", ErrMalformedDir, name)
	}
	return link.Cid, nil
}

// readEntry reads the UnixFS file (or raw block) c whole, refusing one
// declared larger than limit before reading it.
func readEntry(ctx context.Context, bg fetch.BlockGetter, c cid.Cid, name string, limit int64) ([]byte, error) {
	f, err := fetch.OpenFile(ctx, bg, c)
	if errors.Is(err, fetch.ErrMalformedDAG) {
		return nil, fmt.Errorf("%w: entry %s (%s) is not a UnixFS file: %v", ErrMalformedDir, name, c, err)
	}
	if err != nil {
		return nil, err
	}
	if f.Size() > limit {
		return nil, fmt.Errorf("%s (%s): %w: %d bytes, more than the limit of %d", name, c, narindex.ErrTooLarge, f.Size(), limit)
	}
	data := make([]byte, f.Size())
	if len(data) == 0 {
		return data, nil
	}
	n, err := f.ReadAt(ctx, data, 0)
	if errors.Is(err, fetch.ErrMalformedDAG) {
		return nil, fmt.Errorf("%w: entry %s (%s): %v", ErrMalformedDir, name, c, err)
	}
	if err != nil && !(errors.Is(err, io.EOF) && n == len(data)) {
		return nil, err
	}
	return data, nil
}

// dirBlocks is the read-only ipld.DAGService that boxo's HAMT code walks:
// verified blocks from bg, at most left of them, each decoded as a dag-pb
// UnixFS directory or HAMT shard of a sane fanout (boxo would allocate a
// bitfield of any width a shard declares).
type dirBlocks struct {
	bg       fetch.BlockGetter
	left     int
	fetchErr error // the last failure to fetch a block
}

var _ ipld.DAGService = (*dirBlocks)(nil)

func (d *dirBlocks) Get(ctx context.Context, c cid.Cid) (ipld.Node, error) {
	if d.left <= 0 {
		return nil, fmt.Errorf("%w: more than %d blocks on the way to one entry", ErrMalformedDir, MaxDirBlocks)
	}
	d.left--
	if c.Type() != cid.DagProtobuf {
		return nil, fmt.Errorf("%w: %s is not dag-pb, so not a directory", ErrMalformedDir, c)
	}
	b, err := d.bg.GetBlock(ctx, c)
	if err != nil {
		d.fetchErr = err
		return nil, err
	}
	nd, err := merkledag.DecodeProtobufBlock(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformedDir, c, err)
	}
	pn, ok := nd.(*merkledag.ProtoNode)
	if !ok {
		return nil, fmt.Errorf("%w: %s is not a dag-pb node", ErrMalformedDir, c)
	}
	fsn, err := unixfs.FSNodeFromBytes(pn.Data())
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformedDir, c, err)
	}
	switch fsn.Type() {
	case unixfs.TDirectory:
	case unixfs.THAMTShard:
		f := fsn.Fanout()
		if f < minFanout || f > maxFanout || f&(f-1) != 0 {
			return nil, fmt.Errorf("%w: HAMT shard %s has fanout %d (want a power of two from %d to %d)", ErrMalformedDir, c, f, minFanout, maxFanout)
		}
		if fsn.HashType() != hamt.HashMurmur3 {
			return nil, fmt.Errorf("%w: HAMT shard %s hashes names with %#x, not murmur3", ErrMalformedDir, c, fsn.HashType())
		}
	default:
		return nil, fmt.Errorf("%w: %s is a UnixFS %s, not a directory", ErrMalformedDir, c, fsn.Type())
	}
	return pn, nil
}

func (d *dirBlocks) GetMany(ctx context.Context, cs []cid.Cid) <-chan *ipld.NodeOption {
	out := make(chan *ipld.NodeOption, len(cs))
	for _, c := range cs {
		nd, err := d.Get(ctx, c)
		out <- &ipld.NodeOption{Node: nd, Err: err}
	}
	close(out)
	return out
}

var errReadOnly = errors.New("ipfscache: the directory is read-only")

func (d *dirBlocks) Add(context.Context, ipld.Node) error        { return errReadOnly }
func (d *dirBlocks) AddMany(context.Context, []ipld.Node) error  { return errReadOnly }
func (d *dirBlocks) Remove(context.Context, cid.Cid) error       { return errReadOnly }
func (d *dirBlocks) RemoveMany(context.Context, []cid.Cid) error { return errReadOnly }
