package fetch

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
)

// Prefetcher fetches blocks ahead of readers on a bounded pool of workers.
// Its work runs under a context it owns (cancelled by Close), never a
// request's: a reader that returns must not cancel fetches others will use.
// Prefetching only warms the layer it was given (normally the caches); it
// never blocks a reader: when the queue is full, work is dropped.
type Prefetcher struct {
	bg     BlockGetter
	batch  *Batch // when set, runs of leaves come in one request each
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
	Again   atomic.Int64 // blocks a batched fetch brought that were held already
}

type prefetchJob struct {
	f    *File
	off  int64
	end  int64       // a byte range to resolve into leaves, or
	leaf LeafRange   // one leaf to fetch, or
	run  []LeafRange // leaves to fetch in one request
	stop func() bool
}

// NewPrefetcher starts workers fetching through bg with a queue of queue
// jobs.
func NewPrefetcher(bg BlockGetter, workers, queue int) *Prefetcher {
	ctx, cancel := context.WithCancel(Background(context.Background()))
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
		switch {
		case len(j.run) > 0:
			p.fetchRun(j)
		case j.leaf.Cid.Defined():
			if b, err := p.bg.GetBlock(p.ctx, j.leaf.Cid); err != nil {
				p.Stats.Errors.Add(1)
			} else {
				p.Stats.Blocks.Add(1)
				j.f.Offer(j.leaf, b)
			}
		default:
			p.split(j)
		}
	}
}

// split resolves a byte range into leaves (loading intermediate nodes
// under the prefetcher's context) and queues them: runs of several
// leaves as one job each when batching, the others a job per leaf.
func (p *Prefetcher) split(j prefetchJob) {
	jobs, err := p.plan(p.ctx, j)
	if err != nil {
		p.Stats.Errors.Add(1)
		return
	}
	for _, job := range jobs {
		p.enqueue(job)
	}
}

// plan turns a byte range into the jobs that fetch what of it is not held.
func (p *Prefetcher) plan(ctx context.Context, j prefetchJob) ([]prefetchJob, error) {
	leaves, err := j.f.Leaves(ctx, j.off, j.end)
	if err != nil {
		return nil, err
	}
	var held func(cid.Cid) bool
	if p.batch != nil {
		held = p.batch.Held
	}
	var jobs []prefetchJob
	batched := map[int64]bool{} // leaf starts queued in a run
	if p.batch != nil && p.batch.Fetch != nil {
		for _, run := range Runs(leaves, held) {
			if len(run) < 2 {
				continue
			}
			for _, l := range run {
				batched[l.Start] = true
			}
			jobs = append(jobs, prefetchJob{f: j.f, run: run, stop: j.stop})
		}
	}
	for _, l := range leaves {
		if l.data != nil || batched[l.Start] || (held != nil && held(l.Cid)) {
			continue
		}
		jobs = append(jobs, prefetchJob{f: j.f, leaf: l, stop: j.stop})
	}
	return jobs, nil
}

// fetchNowAhead is how many single blocks FetchNow has on their way at
// once: a walk over a local blockstore otherwise waits for each file's
// read from disk, then hashes it, with the other core idle.
const fetchNowAhead = 4

// FetchNow fetches the blocks holding bytes [off, end) of f that are not
// held, under ctx, as read-ahead would (runs in one request each when
// batching), and returns when they are all in: single blocks up to
// fetchNowAhead at once, offered to f in order. It is for background work
// that paces itself; the error is the first fetch that failed.
func (p *Prefetcher) FetchNow(ctx context.Context, f *File, off, end int64) error {
	ctx, cancel := context.WithCancel(Background(ctx))
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait() // no fetch outlives the call
	}()
	jobs, err := p.plan(ctx, prefetchJob{f: f, off: off, end: min(end, f.Size())})
	if err != nil {
		return err
	}
	type pending struct {
		j    prefetchJob
		b    blocks.Block
		err  error
		done chan struct{}
	}
	var window []*pending
	// next waits for the oldest block on its way and offers it.
	next := func() error {
		pd := window[0]
		window = window[1:]
		<-pd.done
		if pd.err != nil {
			return pd.err
		}
		p.Stats.Blocks.Add(1)
		pd.j.f.Offer(pd.j.leaf, pd.b)
		return nil
	}
	for _, j := range jobs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if len(j.run) > 0 {
			for len(window) > 0 {
				if err := next(); err != nil {
					return err
				}
			}
			if err := p.fetchRunCtx(ctx, j); err != nil {
				return err
			}
			continue
		}
		pd := &pending{j: j, done: make(chan struct{})}
		window = append(window, pd)
		wg.Go(func() {
			pd.b, pd.err = p.bg.GetBlock(ctx, pd.j.leaf.Cid)
			close(pd.done)
		})
		if len(window) >= fetchNowAhead {
			if err := next(); err != nil {
				return err
			}
		}
	}
	for len(window) > 0 {
		if err := next(); err != nil {
			return err
		}
	}
	return nil
}

// fetchRun fetches one run of leaves in one request. Readers asking for
// its blocks meanwhile wait for them (Batch.Expect); what does not arrive
// is queued again a block at a time.
func (p *Prefetcher) fetchRun(j prefetchJob) { p.fetchRunCtx(p.ctx, j) }

// fetchRunCtx is fetchRun under ctx; it returns the run's error (its
// blocks that did not arrive are queued a block at a time).
func (p *Prefetcher) fetchRunCtx(ctx context.Context, j prefetchJob) error {
	b := p.batch
	deliver := make(map[string]func(blocks.Block), len(j.run))
	run := j.run
	if b.Expect != nil {
		// Leaves held or on their way by now (another read-ahead of the
		// same bytes) are not fetched again: the run is cut around them.
		for _, l := range run {
			if d := b.Expect(l.Cid); d != nil {
				deliver[l.Cid.KeyString()] = d
			}
		}
		var err error
		for _, sub := range Runs(run, func(c cid.Cid) bool { return deliver[c.KeyString()] == nil }) {
			if err = p.fetchRunPart(ctx, j, sub, deliver); err != nil {
				break
			}
		}
		for _, d := range deliver {
			d(nil)
		}
		p.afterRun(j, err, deliver)
		return err
	}
	err := p.fetchRunPart(ctx, j, run, deliver)
	p.afterRun(j, err, nil)
	return err
}

// fetchRunPart fetches run in one request, handing each block to the
// reader waiting for it (deliver, which loses the entry) or to Put.
func (p *Prefetcher) fetchRunPart(ctx context.Context, j prefetchJob, run []LeafRange, deliver map[string]func(blocks.Block)) error {
	b := p.batch
	at := make(map[string][]LeafRange, len(run)) // a CID may hold several leaves
	for _, l := range run {
		at[l.Cid.KeyString()] = append(at[l.Cid.KeyString()], l)
	}
	_, err := b.Fetch(ctx, j.f, run, func(blk blocks.Block) {
		k := blk.Cid().KeyString()
		p.arrived(j.f, at[k], blk, deliver)
		delete(at, k)
	})
	p.Stats.Batches.Add(1)
	return err
}

// afterRun handles the end of a run's fetch: on failure, the leaves that
// did not arrive (left in undelivered) are queued a block at a time.
func (p *Prefetcher) afterRun(j prefetchJob, err error, undelivered map[string]func(blocks.Block)) {
	if err == nil {
		return
	}
	p.Stats.Errors.Add(1)
	if p.batch.OnError != nil {
		p.batch.OnError(err)
	}
	for _, l := range j.run {
		if undelivered == nil || undelivered[l.Cid.KeyString()] != nil {
			p.enqueue(prefetchJob{f: j.f, leaf: l, stop: j.stop})
		}
	}
}

// Batch lets the prefetcher fetch runs of leaves in one request each.
type Batch struct {
	// Fetch fetches one run of contiguous leaves (see Runs), handing each
	// block that arrived and matched its CID to put. FetchBytes and
	// FetchRange do this. May be nil (no runs, blocks one by one).
	Fetch func(ctx context.Context, f *File, run []LeafRange, put func(blocks.Block)) (int, error)
	// Held reports a block held already, which is not fetched again. May
	// be nil.
	Held func(cid.Cid) bool
	// Expect announces a block about to arrive, so that readers wait for
	// it instead of fetching it again (see cache.Memory.Expect). May be nil.
	Expect func(cid.Cid) func(blocks.Block)
	// Put stores a verified block that was not expected. May be nil.
	Put func(blocks.Block)
	// OnError, if set, is told of each run that failed (its blocks are
	// then fetched one by one).
	OnError func(error)
	// Stream, if set, streams the leaves of a byte range in one request
	// (see File.Stream), handing each verified leaf to put.
	Stream func(ctx context.Context, f *File, from, to int64, resolved func([]LeafRange), put func(LeafRange, blocks.Block) error) (int64, error)
}

// ErrNoStream is returned by Prefetcher.Stream when the source cannot
// stream.
var ErrNoStream = errors.New("no streaming source")

// Stream streams the leaves holding bytes [from, to) of f in one request
// (Batch.Stream), storing each as read-ahead does and handing it to f's
// leaf hook. Before each leaf, pace(start) may wait, or stop the stream
// by returning an error. It returns the end of the last leaf delivered;
// ErrNoStream when there is no streaming source, an error wrapping
// ErrNotRawLeaves where the leaves cannot be streamed.
func (p *Prefetcher) Stream(ctx context.Context, f *File, from, to int64, pace func(int64) error) (int64, error) {
	b := p.batch
	if b == nil || b.Stream == nil {
		return from, ErrNoStream
	}
	// Start past the leaves held or on their way already (read-ahead got
	// there first).
	if b.Held != nil {
		leaves, err := f.Leaves(ctx, from, min(from+streamStep, to))
		if err != nil {
			return from, err
		}
		for _, l := range leaves {
			if !b.Held(l.Cid) {
				break
			}
			from = l.Start + l.Size
		}
		if from >= to {
			return to, nil
		}
	}
	// Readers asking for leaves the stream has resolved wait for them
	// rather than fetching them again.
	deliver := map[string]func(blocks.Block){}
	defer func() {
		for _, d := range deliver {
			d(nil)
		}
	}()
	resolved := func(leaves []LeafRange) {
		if b.Expect == nil {
			return
		}
		for _, l := range leaves {
			if d := b.Expect(l.Cid); d != nil {
				deliver[l.Cid.KeyString()] = d
			}
		}
	}
	return b.Stream(Background(ctx), f, from, to, resolved, func(l LeafRange, blk blocks.Block) error {
		if err := pace(l.Start); err != nil {
			return err
		}
		p.arrived(f, []LeafRange{l}, blk, deliver)
		return nil
	})
}

// arrived stores a verified block that a batched fetch brought: to the
// reader waiting for it (deliver, which loses the entry), else to Put
// unless held already; and hands it to f's leaf hook as each of leaves
// (the leaves it is, none for an intermediate node).
func (p *Prefetcher) arrived(f *File, leaves []LeafRange, blk blocks.Block, deliver map[string]func(blocks.Block)) {
	b := p.batch
	k := blk.Cid().KeyString()
	if d := deliver[k]; d != nil {
		d(blk)
		delete(deliver, k)
	} else if b.Held != nil && b.Held(blk.Cid()) {
		p.Stats.Again.Add(1)
	} else if b.Put != nil {
		b.Put(blk)
	}
	p.Stats.Blocks.Add(1)
	for _, l := range leaves {
		f.Offer(l, blk)
	}
}

// SetBatch makes the prefetcher fetch runs of several leaves through b,
// one request per run. Call before use.
func (p *Prefetcher) SetBatch(b *Batch) { p.batch = b }

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
	// While at least half a window is asked for ahead of the reader,
	// wait: read-ahead then goes out in pieces of half a window or more,
	// which a ranged fetch serves in one request.
	if r.ahead-(off+n) >= r.window/2 && r.ahead < size {
		return 0, 0
	}
	from = max(r.ahead, off+n)
	to = min(off+n+r.window, size)
	if to > from {
		r.ahead = to
	}
	return from, to
}

type backgroundKey struct{}

// Background marks ctx as background work (read-ahead, prefetch): a cache
// can then tell readers waiting for a block from work that can wait.
func Background(ctx context.Context) context.Context {
	return context.WithValue(ctx, backgroundKey{}, true)
}

// IsBackground reports whether ctx was marked by Background.
func IsBackground(ctx context.Context) bool {
	b, _ := ctx.Value(backgroundKey{}).(bool)
	return b
}
