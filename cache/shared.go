package cache

import (
	"context"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"golang.org/x/sync/singleflight"

	"github.com/ipnix/ipnix/fetch"
)

// fetchShared fetches c from src once for all concurrent callers asking
// for the same multihash (key), hands the bytes to store, and returns the
// block. The fetch outlives a caller that is interrupted (its ctx is
// cancelled) but keeps that caller's deadline: shared work is bounded as
// the read that started it.
func fetchShared(ctx context.Context, g *singleflight.Group, src fetch.BlockGetter, key string, c cid.Cid, store func(key string, data []byte)) (blocks.Block, error) {
	ch := g.DoChan(key, func() (any, error) {
		sctx, cancel := fetch.Detach(ctx)
		defer cancel()
		b, err := src.GetBlock(sctx, c)
		if err != nil {
			return nil, err
		}
		store(key, b.RawData())
		return b.RawData(), nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		// Callers may ask under another CID of the same multihash.
		return blocks.NewBlockWithCid(r.Val.([]byte), c)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
