package fetch

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
)

// DefaultReadTimeout bounds one read as a whole: every block it needs,
// from every source, at every DAG level.
const DefaultReadTimeout = 30 * time.Second

// DefaultFailureMemory is how long RememberFailures keeps a failure.
const DefaultFailureMemory = 5 * time.Second

// RememberFailures wraps src so that a block whose fetch ran out of time
// (a source or the caller's deadline expired before any source delivered
// it) fails again at once for ttl, instead of costing the whole bound
// again. The kernel retries a failed read at once (a read-ahead page, then
// the read itself); without this, each retry would wait the full bound
// again. Failures that cost no time (a refused connection, a cut stream,
// bad bytes) are not remembered: trying again is cheap and may succeed. A
// fetch cancelled by its caller is not remembered either, and nothing is
// kept longer than ttl: sources come back.
func RememberFailures(src BlockGetter, ttl time.Duration) BlockGetter {
	if ttl <= 0 {
		ttl = DefaultFailureMemory
	}
	return &failureMemo{src: src, failed: expirable.NewLRU[string, error](4096, nil, ttl)}
}

type failureMemo struct {
	src    BlockGetter
	failed *expirable.LRU[string, error] // by multihash
}

// ErrRecentlyFailed wraps the remembered failure of a block.
var ErrRecentlyFailed = errors.New("failed moments ago")

func (m *failureMemo) GetBlock(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	key := string(c.Hash())
	if err, ok := m.failed.Get(key); ok {
		return nil, fmt.Errorf("block %s %w: %w", c, ErrRecentlyFailed, err)
	}
	b, err := m.src.GetBlock(ctx, c)
	if err != nil && errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		m.failed.Add(key, err)
	}
	return b, err
}

// Detach returns a context for work shared by several callers: it is not
// cancelled when ctx is (one interrupted caller must not fail the others)
// but ends at ctx's deadline, if it has one, so shared work stays within
// the bound of the read that started it.
func Detach(ctx context.Context) (context.Context, context.CancelFunc) {
	d := context.WithoutCancel(ctx)
	if dl, ok := ctx.Deadline(); ok {
		return context.WithDeadline(d, dl)
	}
	return context.WithCancel(d)
}
