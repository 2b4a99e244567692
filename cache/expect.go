package cache

import (
	"context"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
)

// Held reports whether the block named by c is held here or in the layer
// below (the disk store), or is on its way (see Expect), without fetching
// it or touching its recency.
func (m *Memory) Held(c cid.Cid) bool {
	m.mu.Lock()
	here := m.lru.Contains(string(c.Hash())) || m.pending[string(c.Hash())] != nil
	m.mu.Unlock()
	if here {
		return true
	}
	h, ok := m.src.(interface{ Contains(cid.Cid) bool })
	return ok && h.Contains(c)
}

// expected is a block announced by Expect: done is closed when it came
// (data set) or will not come (data nil).
type expected struct {
	done chan struct{}
	data []byte
}

// Expect announces that the block named by c is about to arrive by another
// path (a ranged fetch of many blocks). Until the returned function is
// called, a reader asking for c waits for it rather than fetching it a
// second time. The function must be called once: with the verified block,
// which is then stored as by Put, or with nil when it did not come; the
// readers waiting then fetch it from the layer below as usual. Expect
// returns nil when the block is held or expected already.
func (m *Memory) Expect(c cid.Cid) func(blocks.Block) {
	key := string(c.Hash())
	m.mu.Lock()
	if m.lru.Contains(key) || m.pending[key] != nil {
		m.mu.Unlock()
		return nil
	}
	if m.pending == nil {
		m.pending = map[string]*expected{}
	}
	e := &expected{done: make(chan struct{})}
	m.pending[key] = e
	m.mu.Unlock()
	return func(b blocks.Block) {
		if b != nil {
			m.Put(b)
			e.data = b.RawData()
		}
		m.mu.Lock()
		delete(m.pending, key)
		m.mu.Unlock()
		close(e.done)
	}
}

// maxExpectWait bounds how long a reader waits for a block on its way
// before fetching it itself.
const maxExpectWait = 5 * time.Second

// awaitExpected waits for the block key if it is expected; it returns its
// bytes, or nil when it is not expected or did not come. A reader waits
// at most half the time it has left (and maxExpectWait): a stream that
// trickles must not spend the whole of a read that another source could
// serve.
func (m *Memory) awaitExpected(ctx context.Context, key string) ([]byte, error) {
	m.mu.Lock()
	e := m.pending[key]
	m.mu.Unlock()
	if e == nil {
		return nil, nil
	}
	wait := maxExpectWait
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl)/2)
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-e.done:
		return e.data, nil
	case <-t.C:
		m.Stats.ExpectTimeouts.Add(1)
		return nil, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Contains reports whether the block named by c is stored, without
// reading it or touching its recency.
func (d *Disk) Contains(c cid.Cid) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	key := string(c.Hash())
	_, pinned := d.pinned[key]
	return pinned || d.lru.Contains(key)
}
