package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	car "github.com/ipld/go-car/v2"
)

// RangeSource delivers in one response the blocks of a UnixFS file that
// hold a byte range: a CAR stream in depth-first order without duplicates,
// as trustless gateways answer ?format=car&dag-scope=entity&entity-bytes=.
type RangeSource interface {
	GetRange(ctx context.Context, root cid.Cid, from, to int64) (io.ReadCloser, error)
}

// ErrUnexpectedBlock is returned (wrapped) when a CAR stream holds a block
// that is not the next one the range needs: extra, missing or reordered.
var ErrUnexpectedBlock = errors.New("unexpected block in CAR stream")

// FetchRange fetches the blocks holding bytes [from, to) of f from src in
// one request. Each block must be the next one of the range in depth-first
// order and hash to its CID; each that is gets handed to put as it arrives.
// The first block that is not ends the transfer with an error; the blocks
// delivered before it stay delivered.
func (f *File) FetchRange(ctx context.Context, src RangeSource, from, to int64, put func(blocks.Block)) (int, error) {
	if to > f.size {
		to = f.size
	}
	if from >= to {
		return 0, nil
	}
	want, err := f.dfsBlocks(ctx, from, to)
	if err != nil {
		return 0, err
	}
	rc, err := src.GetRange(ctx, f.rootCid, from, to)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	// Blocks are hashed below, against the CIDs the range needs, not the
	// CIDs the stream claims.
	br, err := car.NewBlockReader(rc, car.MaxAllowedSectionSize(MaxBlockSize+256), car.WithTrustedCAR(true))
	if err != nil {
		return 0, fmt.Errorf("%w: CAR header: %v", ErrUnexpectedBlock, err)
	}
	n := 0
	for {
		b, err := br.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return n, fmt.Errorf("CAR stream after %d blocks: %w", n, err)
		}
		if n >= len(want) {
			return n, fmt.Errorf("%w: extra block %s after the %d the range needs", ErrUnexpectedBlock, b.Cid(), len(want))
		}
		c := want[n]
		if !bytes.Equal(b.Cid().Hash(), c.Hash()) {
			return n, fmt.Errorf("%w: got %s at position %d, want %s", ErrUnexpectedBlock, b.Cid(), n, c)
		}
		if err := CheckBlock(c, b.RawData()); err != nil {
			return n, err
		}
		vb, err := blocks.NewBlockWithCid(b.RawData(), c)
		if err != nil {
			return n, err
		}
		put(vb)
		n++
	}
	if n < len(want) {
		return n, fmt.Errorf("%w: CAR stream ended after %d of %d blocks", ErrUnexpectedBlock, n, len(want))
	}
	return n, nil
}

// dfsBlocks lists, in depth-first order and without repeats, the blocks a
// trustless gateway sends for bytes [from, to): the nodes on the way and
// the leaves.
func (f *File) dfsBlocks(ctx context.Context, from, to int64) ([]cid.Cid, error) {
	seen := map[string]bool{}
	var out []cid.Cid
	add := func(c cid.Cid) {
		if k := c.KeyString(); !seen[k] {
			seen[k] = true
			out = append(out, c)
		}
	}
	add(f.rootCid)
	var walk func(n *dagNode, base int64) error
	walk = func(n *dagNode, base int64) error {
		for _, l := range n.links {
			start := base + l.start
			if start >= to || start+l.size <= from {
				continue
			}
			add(l.c)
			child, err := f.node(ctx, l, n.depth+1)
			if err != nil {
				return err
			}
			if child != nil {
				if err := walk(child, start); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return out, walk(f.root, 0)
}

// GetRange asks the gateway for a CAR of the blocks holding [from, to).
func (g *Gateway) GetRange(ctx context.Context, root cid.Cid, from, to int64) (io.ReadCloser, error) {
	u := g.base + "/ipfs/" + root.String() + "?format=car&dag-scope=entity&entity-bytes=" +
		strconv.FormatInt(from, 10) + ":" + strconv.FormatInt(to-1, 10)
	// A range may hold many blocks: allow each its timeout.
	blocksInRange := (to-from)/(256<<10) + 2
	ctx, cancel := context.WithTimeout(ctx, g.timeout*time.Duration(blocksInRange))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("Accept", "application/vnd.ipld.car;version=1;order=dfs;dups=n")
	resp, err := g.client.Do(req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%s: range of %s: %w", g, root, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("%s: range of %s: HTTP %s", g, root, resp.Status)
	}
	return cancelCloser{resp.Body, cancel}, nil
}

// cancelCloser releases a request's context when its body is closed.
type cancelCloser struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelCloser) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}
