package fetch

import (
	"context"
	"fmt"
	"io"
	"time"

	blocks "github.com/ipfs/go-block-format"
)

// streamStep is how many bytes of leaves Stream resolves at a time.
const streamStep = 16 << 20

// Stream reads the leaves holding bytes [from, to) of f from src in one
// ranged request, as a gateway streams a file, and hands each to put in
// file order once it matched its leaf's CID. put may block (the reader is
// behind) and stops the stream by returning an error, which Stream
// returns. The leaves are resolved from the verified DAG as the stream
// goes. It returns the end of the last leaf delivered; a leaf that is not
// raw ends the stream there with an error wrapping ErrNotRawLeaves (fetch
// the rest block by block), bytes that do not match with one wrapping
// ErrHashMismatch.
//
// resolved, if set, is told of the leaves before their bytes are read, a
// step at a time.
func (f *File) Stream(ctx context.Context, src ByteSource, from, to int64, resolved func([]LeafRange), put func(LeafRange, blocks.Block) error) (int64, error) {
	to = min(to, f.size)
	if from >= to {
		return from, nil
	}
	first, err := f.Leaves(ctx, from, min(from+streamStep, to))
	if err != nil {
		return from, err
	}
	last, err := f.Leaves(ctx, to-1, to)
	if err != nil || len(last) == 0 || len(first) == 0 {
		return from, fmt.Errorf("%w: no leaves for bytes %d-%d (%v)", ErrMalformedDAG, from, to, err)
	}
	if !isRaw(first[0]) || first[0].data != nil {
		return from, fmt.Errorf("%w: leaf at %d", ErrNotRawLeaves, first[0].Start)
	}
	start, end := first[0].Start, last[len(last)-1].Start+last[len(last)-1].Size
	pos := start
	// The stream may pause for as long as put blocks, but one leaf may
	// take no longer than DefaultBlockTimeout to arrive.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stall := time.AfterFunc(DefaultBlockTimeout, cancel)
	defer stall.Stop()
	rc, err := src.GetBytes(sctx, f.rootCid, start, end)
	if err != nil {
		return pos, err
	}
	defer rc.Close()
	leaves := first
	if resolved != nil {
		resolved(leaves)
	}
	// The next step is resolved while half a step is still ahead, so
	// that a reader close behind finds its leaves on their way rather
	// than fetching them one by one.
	known := first[len(first)-1].Start + first[len(first)-1].Size
	for pos < end {
		if known < end && known-pos < streamStep/2 {
			next, err := f.Leaves(ctx, known, min(known+streamStep, end))
			if err != nil {
				return pos, err
			}
			if len(next) == 0 || next[0].Start != known {
				return pos, fmt.Errorf("%w: no leaves at %d", ErrMalformedDAG, known)
			}
			if resolved != nil {
				resolved(next)
			}
			leaves = append(leaves, next...)
			known = next[len(next)-1].Start + next[len(next)-1].Size
		}
		if len(leaves) == 0 {
			return pos, fmt.Errorf("%w: no leaves at %d", ErrMalformedDAG, pos)
		}
		l := leaves[0]
		leaves = leaves[1:]
		if l.Start != pos || l.data != nil || !isRaw(l) || l.Size <= 0 || l.Size > MaxBlockSize {
			return pos, fmt.Errorf("%w: leaf at %d", ErrNotRawLeaves, l.Start)
		}
		data := make([]byte, l.Size)
		stall.Reset(DefaultBlockTimeout)
		_, err := io.ReadFull(rc, data)
		stall.Stop()
		if err != nil {
			if sctx.Err() != nil && ctx.Err() == nil {
				err = fmt.Errorf("no byte within %v: %w", DefaultBlockTimeout, context.DeadlineExceeded)
			}
			return pos, fmt.Errorf("%s: streaming %s at %d: %w", sourceName(src), f.rootCid, pos, err)
		}
		if err := CheckBlock(l.Cid, data); err != nil {
			return pos, fmt.Errorf("%s: bytes %d-%d of %s: %w", sourceName(src), l.Start, l.Start+l.Size-1, f.rootCid, err)
		}
		b, err := blocks.NewBlockWithCid(data, l.Cid)
		if err != nil {
			return pos, err
		}
		if err := put(l, b); err != nil {
			return pos, err
		}
		pos += l.Size
	}
	return pos, nil
}
