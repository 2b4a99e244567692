package fusefs

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipnix/ipnix/fetch"
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
	// walkBytes read one after the other in one file make the rest of
	// that file fetched in the background.
	walkBytes = 32 << 20
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
	done  atomic.Int64          // the limit a walker reached: none again below it
	moved chan struct{}         // signalled (non-blocking) when front moves
	// byOffset: the listing's non-empty files in NAR order, built on the
	// first gap (under mu).
	byOffset []*narindex.ListingNode
	bytes    int64 // bytes read one after the other in the current file
	dirEnd   int64 // end of the directory a walk began in (0: none yet)
	// dirEnds maps each file to the end of its directory, built on the
	// first walk (under mu).
	dirEnds map[*narindex.ListingNode]int64
	// runEnds maps each file to the end of its run (see runEnd), built on
	// the first read-ahead across files (under mu).
	runEnds map[*narindex.ListingNode]int64
	limit   atomic.Int64 // where the walk stops: the end of a file, or of the NAR
}

// WalkStats counts background fetch work.
type WalkStats struct {
	Started atomic.Int64 // walks that began fetching ahead
	Bytes   atomic.Int64 // bytes of NAR a walker went through (fetched or found held)
	Yields  atomic.Int64 // times a walker waited for readers before a request
	Stopped atomic.Int64 // walks stopped before the end (quarantine, close, idle reader, error)
}

// noteWalk records a read of [off, end) of ln (NAR offsets) and starts a
// walker when the reads have become a walk. It returns where the read
// counts from for read-ahead in NAR order: the end of the previous read
// when every file between them was served already (pushed into the
// kernel's cache, so the reader never asked for it), else off; and how
// many files have been read one after the other.
func (sp *storePath) noteWalk(ln *narindex.ListingNode, off, end int64) (from int64, files int) {
	f := sp.fs
	w := &sp.walk
	w.mu.Lock()
	from = off
	sequential := off >= w.next && off <= w.next+walkSlack
	skipped := 0 // files between, served without a READ
	if !sequential && off > w.next {
		skipped, sequential = sp.gapServed(w.next, off)
		if sequential {
			from = w.next
		}
	}
	switch {
	case !sequential:
		w.files, w.bytes = 0, 0
	case ln != w.last:
		w.files += 1 + skipped
		w.bytes = end - off
	default:
		w.bytes += end - off
	}
	w.last, w.next = ln, end
	files = w.files
	var limit int64
	switch {
	case w.files >= walkFiles && w.dirEnd > 0 && off >= w.dirEnd:
		// The walk went on past the end of the directory it began in:
		// the rest of the path.
		limit = sp.nar.Size()
	case w.files >= walkFiles:
		// A walk through a directory (a compiler reads the start of every
		// file of a package to learn which to build): the rest of that
		// directory, and more if the walk goes on past it.
		if w.dirEnd == 0 {
			w.dirEnd = sp.dirEnd(ln)
		}
		limit = w.dirEnd
	case w.bytes >= walkBytes:
		limit = ln.NarOffset + ln.Size // one large file read on: the rest of it
	}
	if !sequential {
		w.dirEnd = 0
	}
	w.mu.Unlock()
	raise(&w.limit, limit) // a walker reads it between streams
	start := limit > 0
	if raise(&w.front, end) {
		select {
		case w.moved <- struct{}{}:
		default:
		}
	}
	if start && limit > w.done.Load() && f.cfg.WalkAhead >= 0 && f.prefetch != nil && !w.on.Load() && !sp.quarantined() {
		f.startWalk(sp)
	}
	return from, files
}

// raise sets v to x if x is larger, and reports whether it did; concurrent
// callers never make v smaller.
func raise(v *atomic.Int64, x int64) bool {
	for {
		old := v.Load()
		if x <= old {
			return false
		}
		if v.CompareAndSwap(old, x) {
			return true
		}
	}
}

// maxGapFiles bounds the files gapServed looks at.
const maxGapFiles = 512

// gapServed reports whether every non-empty regular file with bytes in
// [from, to) of the NAR was served already, and how many there are. Called with walk.mu held.
func (sp *storePath) gapServed(from, to int64) (n int, ok bool) {
	files := sp.walk.byOffset
	if files == nil {
		sp.listingFiles(func(n *narindex.ListingNode) { files = append(files, n) })
		slices.SortFunc(files, func(a, b *narindex.ListingNode) int { return cmp.Compare(a.NarOffset, b.NarOffset) })
		sp.walk.byOffset = files
	}
	i, _ := slices.BinarySearchFunc(files, from, func(n *narindex.ListingNode, off int64) int { return cmp.Compare(n.NarOffset, off) })
	if i > 0 && files[i-1].NarOffset+files[i-1].Size > from {
		i-- // the gap starts inside this file
	}
	for ; i < len(files) && files[i].NarOffset < to; i++ {
		if n++; n > maxGapFiles || !sp.chk.Served(files[i]) {
			return 0, false
		}
	}
	return n, true
}

// dirEnd returns the NAR offset where the directory holding file ln ends
// (the end of its last file, at any depth). Called with walk.mu held.
func (sp *storePath) dirEnd(ln *narindex.ListingNode) int64 {
	if sp.walk.dirEnds == nil {
		ends := map[*narindex.ListingNode]int64{}
		var walk func(n *narindex.ListingNode) int64
		walk = func(n *narindex.ListingNode) int64 {
			var end int64
			for _, c := range n.Entries {
				switch c.Type {
				case narindex.TypeRegular:
					end = max(end, c.NarOffset+c.Size)
				case narindex.TypeDirectory:
					end = max(end, walk(c))
				}
			}
			if n == sp.listing.Root {
				end = sp.nar.Size() // the root's end is the NAR's
			}
			for _, c := range n.Entries {
				if c.Type == narindex.TypeRegular {
					ends[c] = end
				}
			}
			return end
		}
		walk(sp.listing.Root)
		sp.walk.dirEnds = ends
	}
	if e, ok := sp.walk.dirEnds[ln]; ok && e > 0 {
		return e
	}
	return sp.nar.Size()
}

// runEnd returns where the run of files holding ln ends: its directory's
// regular files that follow it in NAR order, up to the next subdirectory.
// Read-ahead across files stops there. A compiler reads the files of one
// package (go/build reads every file of the directory for its build
// constraints), and what follows a run (testdata/, a subpackage) is
// another package, read only if imported: reading ahead into it fetched 26
// blocks nobody read in the compile job of the benchmark (B11). A walk
// past the run (tar, cp -r) is the background walker's.
func (sp *storePath) runEnd(ln *narindex.ListingNode) int64 {
	w := &sp.walk
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.runEnds == nil {
		ends := map[*narindex.ListingNode]int64{}
		var walk func(n *narindex.ListingNode)
		walk = func(n *narindex.ListingNode) {
			var run []*narindex.ListingNode
			flush := func() {
				if len(run) > 0 {
					last := run[len(run)-1]
					for _, f := range run {
						ends[f] = last.NarOffset + last.Size
					}
					run = run[:0]
				}
			}
			for _, name := range sortedNames(n) {
				switch c := n.Entries[name]; c.Type {
				case narindex.TypeRegular:
					run = append(run, c)
				case narindex.TypeDirectory:
					flush()
					walk(c)
				}
			}
			flush()
		}
		walk(sp.listing.Root)
		w.runEnds = ends
	}
	if e, ok := w.runEnds[ln]; ok {
		return e
	}
	return sp.nar.Size()
}

// listingFiles calls fn with every non-empty regular file of the listing.
func (sp *storePath) listingFiles(fn func(*narindex.ListingNode)) {
	var walk func(n *narindex.ListingNode)
	walk = func(n *narindex.ListingNode) {
		if n.Type == narindex.TypeRegular && n.Size > 0 {
			fn(n)
		}
		for _, c := range n.Entries {
			walk(c)
		}
	}
	walk(sp.listing.Root)
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
		if reached := sp.runWalk(f.bgCtx); reached > 0 {
			sp.walk.done.Store(reached)
		} else {
			f.Walks.Stopped.Add(1)
		}
	}()
}

// errWalkStopped ends a stream the walk no longer wants.
var errWalkStopped = errors.New("walk stopped")

// runWalk fetches the NAR from the reader's front to the walk's limit
// (which may grow while it runs), paced as described above: one streaming
// request when the source can stream, else a request per walkChunk. It
// returns the limit it reached, 0 when it stopped before.
func (sp *storePath) runWalk(ctx context.Context) int64 {
	f, w := sp.fs, &sp.walk
	size := sp.nar.Size()
	ahead := min(f.cfg.WalkAhead, size) // no overflow in front+ahead
	idle := time.NewTimer(walkIdle)
	defer idle.Stop()
	// yield waits while readers wait for blocks not on their way (a
	// bounded while): called between requests, never inside a stream,
	// whose next leaves readers may be waiting for.
	yield := func() {
		for tries := 0; f.cfg.Demand != nil && f.cfg.Demand() > 0 && tries < 10; tries++ {
			f.Walks.Yields.Add(1)
			select {
			case <-time.After(walkYield):
			case <-ctx.Done():
			}
		}
	}
	// pace waits until the walk may fetch at p: not too far ahead of the
	// reader.
	pace := func(p int64) error {
		for ahead > 0 && p >= w.front.Load()+ahead {
			if ctx.Err() != nil || sp.quarantined() {
				return errWalkStopped
			}
			idle.Reset(walkIdle)
			select {
			case <-w.moved:
			case <-idle.C:
				return errWalkStopped
			case <-ctx.Done():
				return errWalkStopped
			}
		}
		if ctx.Err() != nil || sp.quarantined() {
			return errWalkStopped
		}
		return nil
	}
	pos := w.front.Load()
	stream := true
	for {
		limit := min(w.limit.Load(), size)
		pos = max(pos, w.front.Load()) // the reader may have overtaken the walk
		if pos >= limit {
			return limit
		}
		yield()
		if err := pace(pos); err != nil {
			return 0
		}
		if stream {
			end, err := f.prefetch.Stream(ctx, sp.nar, pos, limit, pace)
			f.Walks.Bytes.Add(max(end, pos) - pos)
			pos = max(pos, end)
			switch {
			case err == nil:
				continue // the limit may have grown
			case errors.Is(err, errWalkStopped):
				return 0
			case errors.Is(err, fetch.ErrNoStream), errors.Is(err, fetch.ErrNotRawLeaves):
				stream = false // a request per chunk from here
			default:
				f.log.Debug("background fetch stopped", "path", sp.base, "at", pos, "err", err)
				return 0
			}
		}
		end := min(pos+walkChunk, limit)
		if ahead > 0 {
			end = min(end, w.front.Load()+ahead)
		}
		if end <= pos {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, f.cfg.ReadTimeout)
		err := f.prefetch.FetchNow(cctx, sp.nar, pos, end)
		cancel()
		if err != nil {
			f.log.Debug("background fetch stopped", "path", sp.base, "at", pos, "err", err)
			return 0
		}
		f.Walks.Bytes.Add(end - pos)
		pos = end
	}
}
