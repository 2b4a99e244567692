package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/ipfs/boxo/verifcid"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
)

// MaxBlockSize is the largest block any source may return. The default
// chunker writes 256 KiB leaves; intermediate nodes are far smaller. Bitswap
// refuses blocks above 2 MiB, so nothing larger can be published usefully.
const MaxBlockSize = 2 << 20

// BlockGetter is the one interface every layer of the read path implements
// and wraps: sources, verification, caches. The signature matches boxo's.
type BlockGetter interface {
	GetBlock(ctx context.Context, c cid.Cid) (blocks.Block, error)
}

// BlockGetterFunc adapts a function to BlockGetter.
type BlockGetterFunc func(ctx context.Context, c cid.Cid) (blocks.Block, error)

// GetBlock calls f.
func (f BlockGetterFunc) GetBlock(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	return f(ctx, c)
}

var (
	// ErrBlockNotFound is returned (wrapped) when a source does not have a block.
	ErrBlockNotFound = errors.New("block not found")
	// ErrHashMismatch is returned (wrapped) when a block's bytes do not hash to its CID.
	ErrHashMismatch = errors.New("block hash does not match its CID")
	// ErrBlockTooLarge is returned (wrapped) for blocks above MaxBlockSize.
	ErrBlockTooLarge = errors.New("block exceeds maximum size")
	// ErrMalformedDAG is returned (wrapped) when blocks verify but do not form
	// a well-formed UnixFS file (wrong node type, sizes that disagree, too deep).
	ErrMalformedDAG = errors.New("malformed UnixFS DAG")
)

// Stats counts what crossed from outside sources into the process. All
// fields are updated atomically and may be read at any time.
type Stats struct {
	Blocks         atomic.Int64 // verified blocks fetched
	Bytes          atomic.Int64 // bytes of verified blocks fetched
	Failures       atomic.Int64 // fetches that returned an error
	HashMismatches atomic.Int64 // blocks refused because their hash did not match
}

// Verify wraps src so that every block is checked against its CID and counted
// in stats (which may be nil). Sources should be wrapped in Verify before any
// cache, so that caches only ever hold verified blocks.
func Verify(src BlockGetter, stats *Stats) BlockGetter {
	return &verifier{src: src, stats: stats}
}

type verifier struct {
	src   BlockGetter
	stats *Stats
}

func (v *verifier) GetBlock(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	b, err := v.src.GetBlock(ctx, c)
	if err == nil {
		if err = CheckBlock(c, b.RawData()); err != nil {
			if name, ok := v.src.(fmt.Stringer); ok { // say who sent it
				err = fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	if err != nil {
		if v.stats != nil {
			v.stats.Failures.Add(1)
			if errors.Is(err, ErrHashMismatch) {
				v.stats.HashMismatches.Add(1)
			}
		}
		return nil, err
	}
	if v.stats != nil {
		v.stats.Blocks.Add(1)
		v.stats.Bytes.Add(int64(len(b.RawData())))
	}
	// Re-wrap so that the CID carried is exactly the one asked for, whatever
	// the source put in its block.
	return blocks.NewBlockWithCid(b.RawData(), c)
}

// CheckBlock reports whether data is the block named by c.
func CheckBlock(c cid.Cid, data []byte) error {
	if len(data) > MaxBlockSize {
		return fmt.Errorf("%w: %s is %d bytes", ErrBlockTooLarge, c, len(data))
	}
	if err := verifcid.ValidateCid(verifcid.DefaultAllowlist, c); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrHashMismatch, c, err)
	}
	got, err := c.Prefix().Sum(data)
	if err != nil {
		return fmt.Errorf("hashing block %s: %w", c, err)
	}
	if !bytes.Equal(got.Hash(), c.Hash()) {
		return fmt.Errorf("%w: %s", ErrHashMismatch, c)
	}
	return nil
}

// readBlock reads a block's bytes from r, refusing more than MaxBlockSize.
// size is the length the sender announced (-1 if unknown): with it the
// block is read into one exact allocation, which matters at hundreds of
// MiB/s (growing a buffer costs copies and page faults).
func readBlock(r io.Reader, size int64) ([]byte, error) {
	if size > MaxBlockSize {
		return nil, ErrBlockTooLarge
	}
	if size >= 0 {
		data := make([]byte, size)
		if _, err := io.ReadFull(r, data); err != nil {
			return nil, err
		}
		var one [1]byte
		if n, _ := r.Read(one[:]); n > 0 {
			return nil, fmt.Errorf("more bytes than the %d announced", size)
		}
		return data, nil
	}
	buf := bytes.NewBuffer(make([]byte, 0, 256<<10+512))
	if _, err := buf.ReadFrom(io.LimitReader(r, MaxBlockSize+1)); err != nil {
		return nil, err
	}
	if buf.Len() > MaxBlockSize {
		return nil, ErrBlockTooLarge
	}
	return buf.Bytes(), nil
}
