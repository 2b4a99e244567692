package fetch

import (
	"context"
	"sync"
	"sync/atomic"

	blocks "github.com/ipfs/go-block-format"
)

// Prefetcher fetches blocks ahead of readers on a bounded pool of workers.
// Its work runs under a context it owns (cancelled by Close), never a
// request's: a reader that returns must not cancel fetches others will use.
// Prefetching only warms the layer it was given (normally the caches); it
// never blocks a reader: when the queue is full, work is dropped.
type Prefetcher struct {
	bg     BlockGetter
	batch  RangeSource        // when set, ranges come in one request each
	put    func(blocks.Block) // where batched blocks go (the cache)
	ctx    context.Context
	cancel context.CancelFunc
	jobs   chan prefetchJob
	wg     sync.WaitGroup
	once   sync.Once

	Stats PrefetchStats
}

// PrefetchStats counts read-ahead work.
type PrefetchStats struct {
	Blocks  atomic.Int64 // blocks fetched (or found cached) by read-ahead
	Batches atomic.Int64 // ranges fetched in one request
	Dropped atomic.Int64 // jobs dropped because the queue was full
	Errors  atomic.Int64 // read-ahead fetches that failed (the reader will retry)
}

type prefetchJob struct {
	f    *File
	off  int64
	end  int64     // a byte range to resolve into leaves, or
	leaf LeafRange // one leaf to fetch
	stop func() bool
}

// NewPrefetcher starts workers fetching through bg with a queue of queue
// jobs.
func NewPrefetcher(bg BlockGetter, workers, queue int) *Prefetcher {
	ctx, cancel := context.WithCancel(context.Background())
	p := &Prefetcher{bg: bg, ctx: ctx, cancel: cancel, jobs: make(chan prefetchJob, queue)}
	for range workers {
		p.wg.Go(p.work)
	}
	return p
}

// Prefetch asks for the blocks holding bytes [off, end) of f. stop, when
// set and true, abandons the work not yet started (the reader closed the
// file, or its data was refused).
func (p *Prefetcher) Prefetch(f *File, off, end int64, stop func() bool) {
	if end > f.Size() {
		end = f.Size()
	}
	if off >= end {
		return
	}
	p.enqueue(prefetchJob{f: f, off: off, end: end, stop: stop})
}

func (p *Prefetcher) enqueue(j prefetchJob) {
	if p.ctx.Err() != nil {
		return
	}
	select {
	case p.jobs <- j:
	default:
		p.Stats.Dropped.Add(1)
	}
}

func (p *Prefetcher) work() {
	for {
		var j prefetchJob
		select {
		case <-p.ctx.Done():
			return
		case j = <-p.jobs:
		}
		if j.stop != nil && j.stop() {
			continue
		}
		if j.f != nil && j.leaf.Cid.Defined() {
			if _, err := p.bg.GetBlock(p.ctx, j.leaf.Cid); err != nil {
				p.Stats.Errors.Add(1)
			} else {
				p.Stats.Blocks.Add(1)
			}
			continue
		}
		// Resolve the range into leaves (loading intermediate nodes under
		// our context) and fan them out to the pool.
		leaves, err := j.f.Leaves(p.ctx, j.off, j.end)
		if err != nil {
			p.Stats.Errors.Add(1)
			continue
		}
		if p.batch != nil && len(leaves) > 1 {
			got := map[string]bool{}
			_, err := j.f.FetchRange(p.ctx, p.batch, j.off, j.end, func(b blocks.Block) {
				got[string(b.Cid().Hash())] = true
				p.put(b)
				p.Stats.Blocks.Add(1)
			})
			p.Stats.Batches.Add(1)
			if err == nil {
				continue
			}
			p.Stats.Errors.Add(1)
			// Fall back to single blocks for what did not arrive.
			var rest []LeafRange
			for _, l := range leaves {
				if !got[string(l.Cid.Hash())] {
					rest = append(rest, l)
				}
			}
			leaves = rest
		}
		for _, l := range leaves {
			if l.data != nil {
				continue
			}
			p.enqueue(prefetchJob{f: j.f, leaf: l, stop: j.stop})
		}
	}
}

// SetBatch makes the prefetcher fetch each range of more than one missing
// block from src in one request, handing the verified blocks to put. Call
// before use.
func (p *Prefetcher) SetBatch(src RangeSource, put func(blocks.Block)) {
	p.batch, p.put = src, put
}

// Close cancels outstanding work and waits for the workers to finish.
func (p *Prefetcher) Close() {
	p.once.Do(func() {
		p.cancel()
		p.wg.Wait()
	})
}

// Readahead decides, for one open file, what to fetch ahead of a reader: a
// window that starts at MinWindow on a sequential start, doubles while reads
// stay sequential, up to max, and closes on a random read.
type Readahead struct {
	mu     sync.Mutex
	max    int64
	slack  int64 // a read this far past the previous one still counts as sequential
	next   int64 // where a sequential reader reads next
	window int64
	ahead  int64 // bytes before this offset were already asked for
	reads  int
}

// MinWindow is the read-ahead window after the first sequential read.
const MinWindow = 1 << 20

// NewReadahead returns a detector with the given maximum window, for one
// file read from its start.
func NewReadahead(max int64) *Readahead { return &Readahead{max: max} }

// NewStreamReadahead returns a detector for a stream read piecewise, such
// as a NAR read file after file in NAR order: a read counts as sequential
// when it starts at most slack bytes after the previous one ended (the gap
// holds the next entries' headers). The first read only sets the position.
func NewStreamReadahead(max, slack int64) *Readahead {
	return &Readahead{max: max, slack: slack, reads: -1}
}

// Observe records a read of n bytes at off in a file of size bytes and
// returns the range to prefetch (from >= to means none).
func (r *Readahead) Observe(off, n, size int64) (from, to int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var sequential bool
	switch {
	case r.reads < 0: // a stream's first read
		r.reads = 0
	case r.slack > 0:
		sequential = off >= r.next && off <= r.next+r.slack
	default:
		sequential = off == r.next && (off > 0 || r.reads == 0)
	}
	r.reads++
	r.next = off + n
	if !sequential || r.max <= 0 {
		r.window, r.ahead = 0, 0
		return 0, 0
	}
	if r.window == 0 {
		r.window = min(MinWindow, r.max)
	} else {
		r.window = min(2*r.window, r.max)
	}
	from = max(r.ahead, off+n)
	to = min(off+n+r.window, size)
	if to > from {
		r.ahead = to
	}
	return from, to
}
