package cache

import (
	"context"
	"math"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"golang.org/x/sync/singleflight"

	"github.com/ipnix/ipnix/fetch"
)

// Stats counts cache traffic; fields are updated atomically.
type Stats struct {
	Hits      atomic.Int64
	Misses    atomic.Int64
	Evictions atomic.Int64
	// ExpectTimeouts counts readers that stopped waiting for a block on its
	// way (a ranged fetch) and fetched it themselves.
	ExpectTimeouts atomic.Int64
	// EvictedUnread counts blocks that arrived by read-ahead or another
	// batched fetch (Put) and left the cache before anything read them
	// through it (bytes used straight from the arrival, such as pages
	// pushed into the kernel's cache, are not seen here).
	EvictedUnread atomic.Int64
}

// Memory is a byte-bounded LRU of blocks in front of another BlockGetter.
type Memory struct {
	src      fetch.BlockGetter
	maxBytes int64
	Stats    Stats

	mu    sync.Mutex
	lru   *simplelru.LRU[string, []byte]
	bytes int64

	inflight singleflight.Group
	pending  map[string]*expected // blocks on their way (see Expect), under mu
	unread   map[string]bool      // put and not read since, under mu
	demand   atomic.Int64         // readers (not background work) waiting for a fetch
}

// Demand is the number of readers waiting now for a block to be fetched
// (read-ahead and other background work not counted): background work
// yields while it is not zero.
func (m *Memory) Demand() int64 { return m.demand.Load() }

// NewMemory returns a cache of at most maxBytes of block data in front of src.
// A maxBytes of zero or less disables caching but still merges concurrent
// fetches.
func NewMemory(src fetch.BlockGetter, maxBytes int64) *Memory {
	m := &Memory{src: src, maxBytes: maxBytes, unread: map[string]bool{}}
	// The LRU's own bound is by count; the byte bound is kept in add.
	m.lru, _ = simplelru.NewLRU[string, []byte](math.MaxInt32, func(_ string, v []byte) {
		m.bytes -= int64(len(v))
	})
	return m
}

// GetBlock returns the block from memory or fetches it from the layer below.
func (m *Memory) GetBlock(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	key := string(c.Hash())
	if data, ok := m.get(key); ok {
		m.Stats.Hits.Add(1)
		return blocks.NewBlockWithCid(data, c)
	}
	if data, err := m.awaitExpected(ctx, key); err != nil {
		return nil, err
	} else if data != nil {
		m.Stats.Hits.Add(1)
		return blocks.NewBlockWithCid(data, c)
	}
	m.Stats.Misses.Add(1)
	if !fetch.IsBackground(ctx) {
		m.demand.Add(1)
		defer m.demand.Add(-1)
	}
	return fetchShared(ctx, &m.inflight, m.src, key, c, m.add)
}

func (m *Memory) get(key string) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	data, ok := m.lru.Get(key)
	if ok {
		delete(m.unread, key)
	}
	return data, ok
}

func (m *Memory) add(key string, data []byte) { m.addAs(key, data, false) }

func (m *Memory) addAs(key string, data []byte, unread bool) {
	size := int64(len(data))
	if size > m.maxBytes {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lru.Contains(key) {
		return
	}
	for m.bytes+size > m.maxBytes {
		k, _, ok := m.lru.RemoveOldest()
		if !ok {
			break
		}
		m.Stats.Evictions.Add(1)
		if m.unread[k] {
			delete(m.unread, k)
			m.Stats.EvictedUnread.Add(1)
		}
	}
	m.lru.Add(key, data)
	m.bytes += size
	if unread {
		m.unread[key] = true
	}
}

// Put stores a block that arrived by another path (a batched fetch), here
// and in the layer below if that stores blocks too. The caller vouches that
// it was verified.
func (m *Memory) Put(b blocks.Block) {
	m.addAs(string(b.Cid().Hash()), b.RawData(), true)
	if p, ok := m.src.(interface{ Put(blocks.Block) }); ok {
		p.Put(b)
	}
}

// Remove drops the block named by c, if held.
func (m *Memory) Remove(c cid.Cid) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lru.Remove(string(c.Hash()))
	delete(m.unread, string(c.Hash()))
}

// Contains reports whether the block named by c is held, without touching
// its recency.
func (m *Memory) Contains(c cid.Cid) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lru.Contains(string(c.Hash()))
}

// Bytes is the amount of block data held.
func (m *Memory) Bytes() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.bytes
}

// Len is the number of blocks held.
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lru.Len()
}
