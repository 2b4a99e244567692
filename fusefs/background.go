package fusefs

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipnix/ipnix/narindex"
)

// Background fetch of a store path being walked. A reader that goes
// through a store path file after file in NAR order (find -exec cat, tar,
// cp -r, nix hash path, a compiler reading a whole tree) will read all of
// it; fetching what it reads only as it asks, even with read-ahead, makes
// it wait on every gap. Once walkFiles files have been read one after the
// other in NAR order, a walker streams the rest of the NAR, in NAR order
// and in large ranged requests, ahead of the reader: at most
// Config.WalkAhead bytes ahead (the blocks must still be held when the
// reader gets there), or to the end when the blocks go to a disk cache.
// A random pick of files (a program starting, a compile job reading some
// headers) is never a walk and fetches only what it reads.
//
// The walker yields to readers: while a reader waits for a block that is
// not on its way (Config.Demand), it does not start its next request. It
// stops when the store path is quarantined, when the mount closes, and
// when the reader has not moved for walkIdle.

const (
	// walkFiles is how many files read one after the other in NAR order
	// make a walk.
	walkFiles = 32
	// walkSlack is the most that may lie between two files read one after
	// the other for them to count as a walk: the NAR headers of the next
	// entries, not a file skipped (a compiler reading some files of a
	// directory and not its tests is not walking it).
	walkSlack = 4 << 10
	// walkChunk is what the walker asks for in one go.
	walkChunk = 4 << 20
	// walkIdle ends a walk whose reader stopped.
	walkIdle = 2 * time.Second
	// walkYield bounds one wait of the walker for readers.
	walkYield = 5 * time.Millisecond
	// defaultWalkAhead is how far ahead of the reader a walk fetches by
	// default.
	defaultWalkAhead = 32 << 20
	// maxWalkers bounds the walks running at once in a mount.
	maxWalkers = 2
)

// walk is the walk state of one store path.
type walk struct {
	mu    sync.Mutex
	next  int64                 // NAR offset just past the last read
	last  *narindex.ListingNode // the file read last
	files int                   // files read one after the other in NAR order
	front atomic.Int64          // furthest NAR offset read
	on    atomic.Bool           // a walker runs
	done  atomic.Bool           // a walker reached the end: none again
	moved chan struct{}         // signalled (non-blocking) when front moves
}

// WalkStats counts background fetch work.
type WalkStats struct {
	Started atomic.Int64 // walks that began fetching ahead
	Bytes   atomic.Int64 // bytes of NAR a walker went through (fetched or found held)
	Yields  atomic.Int64 // times a walker waited for readers before a request
	Stopped atomic.Int64 // walks stopped before the end (quarantine, close, idle reader, error)
}

// noteRead records a read of [off, end) of ln (NAR offsets) and starts a
// walker when the reads have become a walk.
func (sp *storePath) noteWalk(ln *narindex.ListingNode, off, end int64) {
	f := sp.fs
	if f.cfg.WalkAhead < 0 || f.prefetch == nil {
		return
	}
	w := &sp.walk
	w.mu.Lock()
	sequential := off >= w.next && off <= w.next+walkSlack
	switch {
	case !sequential:
		w.files = 0
	case ln != w.last:
		w.files++
	}
	w.last, w.next = ln, end
	start := w.files >= walkFiles
	w.mu.Unlock()
	if end > w.front.Load() {
		w.front.Store(end)
		select {
		case w.moved <- struct{}{}:
		default:
		}
	}
	if start && !w.on.Load() && !w.done.Load() && !sp.quarantined() {
		f.startWalk(sp)
	}
}

// startWalk runs a walker for sp if fewer than maxWalkers run.
func (f *FS) startWalk(sp *storePath) {
	select {
	case f.walkers <- struct{}{}:
	default:
		return
	}
	if !sp.walk.on.CompareAndSwap(false, true) {
		<-f.walkers
		return
	}
	f.Walks.Started.Add(1)
	f.bg.Add(1)
	go func() {
		defer func() {
			sp.walk.on.Store(false)
			<-f.walkers
			f.bg.Done()
		}()
		if sp.runWalk(f.bgCtx) {
			sp.walk.done.Store(true)
		} else {
			f.Walks.Stopped.Add(1)
		}
	}()
}

// runWalk fetches the NAR from the reader's front to its end, paced as
// described above. It reports whether it reached the end.
func (sp *storePath) runWalk(ctx context.Context) bool {
	f, w := sp.fs, &sp.walk
	size := sp.nar.Size()
	ahead := min(f.cfg.WalkAhead, size) // no overflow in front+ahead
	pos := w.front.Load()
	idle := time.NewTimer(walkIdle)
	defer idle.Stop()
	for pos < size {
		if ctx.Err() != nil || sp.quarantined() {
			return false
		}
		if front := w.front.Load(); pos < front {
			pos = front // the reader overtook the walk
			continue
		}
		if ahead > 0 && pos >= w.front.Load()+ahead {
			idle.Reset(walkIdle)
			select {
			case <-w.moved:
				continue
			case <-idle.C:
				return false
			case <-ctx.Done():
				return false
			}
		}
		// Readers waiting for blocks not on their way go first.
		for tries := 0; f.cfg.Demand != nil && f.cfg.Demand() > 0 && tries < 10; tries++ {
			f.Walks.Yields.Add(1)
			select {
			case <-time.After(walkYield):
			case <-ctx.Done():
				return false
			}
		}
		end := min(pos+walkChunk, size)
		if ahead > 0 {
			end = min(end, w.front.Load()+ahead)
		}
		cctx, cancel := context.WithTimeout(ctx, f.cfg.ReadTimeout)
		err := f.prefetch.FetchNow(cctx, sp.nar, pos, end)
		cancel()
		if err != nil {
			f.log.Debug("background fetch stopped", "path", sp.base, "at", pos, "err", err)
			return false
		}
		f.Walks.Bytes.Add(end - pos)
		pos = end
	}
	return true
}
