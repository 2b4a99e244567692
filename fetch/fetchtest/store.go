// Package fetchtest provides an in-memory block source for unit tests of the
// read path: files are imported with boxo's own UnixFS importer, and blocks
// can be replaced to play a lying or broken source. Integration tests use a
// real kubo instead.
package fetchtest

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/ipfs/boxo/blockservice"
	chunker "github.com/ipfs/boxo/chunker"
	"github.com/ipfs/boxo/ipld/merkledag"
	mdutils "github.com/ipfs/boxo/ipld/merkledag/test"
	"github.com/ipfs/boxo/ipld/unixfs/importer/balanced"
	"github.com/ipfs/boxo/ipld/unixfs/importer/helpers"
	"github.com/ipfs/boxo/ipld/unixfs/importer/trickle"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/fetch"
)

// Store is an in-memory BlockGetter that counts the blocks it serves.
type Store struct {
	bs   blockservice.BlockService
	Gets atomic.Int64 // GetBlock calls answered with a block

	mu       sync.Mutex
	override map[string][]byte // bytes served instead of the real block
	delay    func(cid.Cid)     // called before every answer, when set
}

// NewStore returns an empty store.
func NewStore() *Store {
	return &Store{bs: mdutils.Bserv(), override: make(map[string][]byte)}
}

// Options choose how AddFile lays out a file, as `ipfs add` would.
type Options struct {
	ChunkSize int64 // default 256 KiB
	RawLeaves bool
	CidV0     bool   // default CIDv1
	MaxLinks  int    // default 174
	Chunker   string // when set, an `ipfs add --chunker` string (size-N, rabin..., buzhash); overrides ChunkSize
	Trickle   bool   // trickle layout instead of balanced
}

// DefaultOptions is what `ipfs add --cid-version=1` produces: CIDv1, raw
// leaves, 256 KiB chunks, balanced layout.
var DefaultOptions = Options{ChunkSize: 256 << 10, RawLeaves: true}

// AddFile imports data as a UnixFS file and returns its root CID.
func (s *Store) AddFile(data []byte, o Options) (cid.Cid, error) {
	if o.ChunkSize == 0 {
		o.ChunkSize = 256 << 10
	}
	if o.MaxLinks == 0 {
		o.MaxLinks = helpers.DefaultLinksPerBlock
	}
	prefix := merkledag.V1CidPrefix()
	if o.CidV0 {
		prefix = merkledag.V0CidPrefix()
	}
	p := helpers.DagBuilderParams{
		Dagserv:    merkledag.NewDAGService(s.bs),
		Maxlinks:   o.MaxLinks,
		RawLeaves:  o.RawLeaves,
		CidBuilder: prefix,
	}
	var spl chunker.Splitter = chunker.NewSizeSplitter(bytes.NewReader(data), o.ChunkSize)
	if o.Chunker != "" {
		var err error
		if spl, err = chunker.FromString(bytes.NewReader(data), o.Chunker); err != nil {
			return cid.Undef, err
		}
	}
	db, err := p.New(spl)
	if err != nil {
		return cid.Undef, err
	}
	layout := balanced.Layout
	if o.Trickle {
		layout = trickle.Layout
	}
	n, err := layout(db)
	if err != nil {
		return cid.Undef, err
	}
	return n.Cid(), nil
}

// Put stores a block.
func (s *Store) Put(b blocks.Block) error {
	return s.bs.AddBlock(context.Background(), b)
}

// Override makes the store answer c with data, which need not hash to c.
func (s *Store) Override(c cid.Cid, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.override[c.KeyString()] = data
}

// SetDelay installs a hook called before each answer (nil removes it).
func (s *Store) SetDelay(f func(cid.Cid)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = f
}

// GetBlock implements fetch.BlockGetter.
func (s *Store) GetBlock(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	s.mu.Lock()
	data, overridden := s.override[c.KeyString()]
	delay := s.delay
	s.mu.Unlock()
	if delay != nil {
		delay(c)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if overridden {
		s.Gets.Add(1)
		return blocks.NewBlockWithCid(data, c)
	}
	b, err := s.bs.Blockstore().Get(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", fetch.ErrBlockNotFound, c)
	}
	s.Gets.Add(1)
	return b, nil
}

// AllCids lists every block the store holds.
func (s *Store) AllCids(ctx context.Context) ([]cid.Cid, error) {
	ch, err := s.bs.Blockstore().AllKeysChan(ctx)
	if err != nil {
		return nil, err
	}
	var out []cid.Cid
	for c := range ch {
		out = append(out, c)
	}
	return out, nil
}
