package prefetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dustin/go-humanize"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"golang.org/x/sync/errgroup"

	"github.com/ipnix/ipnix/cache"
	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/narindex"
)

// Resolver finds the closure of store paths, each narinfo accepted as a
// mount accepts it (*narindex.Resolver).
type Resolver interface {
	Closure(ctx context.Context, roots []string, workers int) ([]*narindex.Resolved, error)
}

// Options say where Run finds narinfos and blocks and where blocks go.
type Options struct {
	// Disk is the block store filled; its source is where blocks come
	// from (verified sources, wrapped in fetch.Verify).
	Disk     *cache.Disk
	Resolver Resolver
	// Batch, when set, fetches a run of contiguous raw leaves in one
	// request (a ranged GET from a gateway), handing each block that
	// matched its CID to put. What it does not deliver is fetched block by
	// block.
	Batch func(ctx context.Context, f *fetch.File, run []fetch.LeafRange, put func(blocks.Block)) (int, error)
	// Jobs is the number of requests (blocks or runs) at once.
	Jobs int
	// Progress, when set, gets a line per phase and one every
	// ProgressEvery while blocks are fetched.
	Progress      io.Writer
	ProgressEvery time.Duration
}

// Summary says what Run did. Blocks are counted once however many NARs
// hold them.
type Summary struct {
	Closures, Paths int
	Blocks          int   // blocks of the closures' NARs
	Bytes           int64 // their bytes
	Fetched         int   // of Blocks: fetched by this run
	FetchedBytes    int64
	Held            int // of Blocks: in the store already
	HeldBytes       int64
	VerifiedWhole   int   // paths without a trusted IpfsCidSig, checked against NarHash
	Pinned          int64 // bytes pinned in the store after the run (every closure)
	Quota           int64 // the store's quota
}

// NoRoomError says that the closures asked for do not fit in the store
// beside what other prefetched closures keep pinned. Nothing of them was
// fetched but the inner nodes of their DAGs (which say how large they are).
type NoRoomError struct {
	Roots  []string
	Need   int64 // bytes of their blocks not pinned yet
	Pinned int64 // bytes pinned already
	Quota  int64
}

func (e *NoRoomError) Error() string {
	return fmt.Sprintf("the closures of %v need %s more of pinned blocks; with the %s pinned already (other prefetched closures) that is %s, more than the block store's quota of %s",
		e.Roots, humanize.IBytes(uint64(e.Need)), humanize.IBytes(uint64(e.Pinned)), humanize.IBytes(uint64(e.Need+e.Pinned)), humanize.IBytes(uint64(e.Quota)))
}

// Run fetches every block of the NARs of the closures of roots (store
// path base names) into o.Disk, each checked against its CID, and pins
// them there; it records the closures in the store's directory (see
// Record). Blocks the store holds already are not fetched again, so an
// interrupted run is resumed by running it again; they are read back and
// checked against their CIDs, and one whose file holds wrong bytes is
// fetched again. Paths without a trusted
// IpfsCidSig are also checked against their NarHash, as a mount would
// check them before showing them.
//
// Before fetching leaves it checks that the closures fit in the store's
// quota beside what is pinned (a *NoRoomError otherwise): a prefetch never
// evicts what was prefetched.
func Run(ctx context.Context, roots []string, o Options) (*Summary, error) {
	r := &run{o: o, disk: o.Disk, blocks: map[string]*block{}}
	if o.Jobs < 1 {
		r.o.Jobs = 1
	}
	closure, err := o.Resolver.Closure(ctx, roots, r.o.Jobs)
	if err != nil {
		return nil, err
	}
	r.say("%s in the closures of %s; reading the inner nodes of their NARs", Count(len(closure), "store path"), Count(len(roots), "root"))
	nars, err := r.openAll(ctx, closure)
	if err != nil {
		return nil, err
	}
	if err := r.checkRoom(roots); err != nil {
		return nil, err
	}
	if err := r.record(roots, closure, nars); err != nil {
		return nil, fmt.Errorf("recording the closures in %s: %w", r.disk.Dir(), err)
	}
	if err := r.fetchAll(ctx, nars); err != nil {
		return nil, err
	}
	s := &Summary{Closures: len(roots), Paths: len(closure), Quota: r.disk.Max()}
	for _, n := range nars {
		if n.res.CidSigned {
			continue
		}
		if err := r.verifyWhole(ctx, n); err != nil {
			return nil, err
		}
		s.VerifiedWhole++
	}
	for _, b := range r.blocks {
		s.Blocks++
		s.Bytes += b.size
		if b.held {
			s.Held++
			s.HeldBytes += b.size
		} else {
			s.Fetched++
			s.FetchedBytes += b.size
		}
	}
	_, s.Pinned = r.disk.Pinned()
	return s, nil
}

// Count says n things, in the plural unless n is 1.
func Count(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return fmt.Sprintf("%d %ss", n, thing)
}

// run is the state of one Run.
type run struct {
	o    Options
	disk *cache.Disk

	mu     sync.Mutex
	blocks map[string]*block // every block of the NARs, by key

	done      atomic.Int64 // blocks fetched or found, and pinned
	doneBytes atomic.Int64
}

// block is a block of a NAR's DAG.
type block struct {
	c    cid.Cid
	size int64 // as stored; for leaves not fetched yet, as their parent says
	held bool  // in the store before this run asked for it
}

// nar is the DAG of one store path's NAR.
type nar struct {
	res    *narindex.Resolved
	root   cid.Cid
	f      *fetch.File
	leaves []fetch.LeafRange
	known  []cid.Cid // every block: root, inner nodes, leaves
}

func (r *run) say(format string, a ...any) {
	if r.o.Progress != nil {
		fmt.Fprintf(r.o.Progress, "ipnix prefetch: "+format+"\n", a...)
	}
}

// GetBlock reads through the store, noting for each block whether the
// store held it before this run first asked for it.
func (r *run) GetBlock(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	key := cache.Key(c)
	r.mu.Lock()
	b := r.blocks[key]
	if b == nil {
		b = &block{c: c, size: -1, held: r.has(c)}
		r.blocks[key] = b
	}
	r.mu.Unlock()
	blk, err := r.disk.GetBlock(ctx, c)
	if err == nil {
		r.mu.Lock()
		b.size = int64(len(blk.RawData()))
		r.mu.Unlock()
	}
	return blk, err
}

// has reports whether the store holds c: indexed, or written by another
// process since the store was opened.
func (r *run) has(c cid.Cid) bool {
	if r.disk.Contains(c) {
		return true
	}
	_, _, ok := cache.StatBlock(r.disk.Dir(), c)
	return ok
}

// openAll opens every NAR and walks its DAG down to the leaves (the inner
// nodes are fetched into the store on the way), jobs at a time.
func (r *run) openAll(ctx context.Context, closure []*narindex.Resolved) ([]*nar, error) {
	nars := make([]*nar, len(closure))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.o.Jobs)
	for i, res := range closure {
		g.Go(func() error {
			n, err := r.open(gctx, res)
			nars[i] = n
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	// Leaves not read yet: known by their parent's word, to be fetched.
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range nars {
		for _, l := range n.leaves {
			if !l.Cid.Defined() {
				continue // bytes inline in the parent
			}
			if _, ok := r.blocks[cache.Key(l.Cid)]; !ok {
				r.blocks[cache.Key(l.Cid)] = &block{c: l.Cid, size: l.Size, held: r.has(l.Cid)}
			}
		}
		for _, c := range n.known {
			if _, ok := r.blocks[cache.Key(c)]; !ok { // a link the walk did not need to read
				r.blocks[cache.Key(c)] = &block{c: c, size: 0, held: r.has(c)}
			}
		}
	}
	return nars, nil
}

// open checks a path's NAR as a mount does at lookup (its CID, a sane DAG
// of NarSize bytes) and lists its blocks.
func (r *run) open(ctx context.Context, res *narindex.Resolved) (*nar, error) {
	base, info := res.Path.Base(), res.Info
	c, err := cid.Decode(info.IpfsCid)
	if err != nil {
		return nil, fmt.Errorf("%s: IpfsCid %q: %v", base, info.IpfsCid, err)
	}
	f, err := fetch.OpenFile(ctx, r, c)
	if err != nil {
		return nil, fmt.Errorf("%s: opening NAR %s: %w", base, c, err)
	}
	if f.Size() != int64(info.NarSize) {
		return nil, fmt.Errorf("%s: CID %s holds %d bytes but NarSize is %d", base, c, f.Size(), info.NarSize)
	}
	leaves, err := f.Leaves(ctx, 0, f.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: walking the DAG of NAR %s: %w", base, c, err)
	}
	return &nar{res: res, root: c, f: f, leaves: leaves, known: f.KnownBlocks()}, nil
}

// checkRoom refuses closures whose blocks, pinned, would not fit in the
// store's quota beside the blocks pinned already.
func (r *run) checkRoom(roots []string) error {
	var need int64
	for _, b := range r.blocks {
		if !r.disk.IsPinned(b.c) {
			need += max(b.size, 0)
		}
	}
	_, pinned := r.disk.Pinned()
	if pinned+need > r.disk.Max() {
		return &NoRoomError{Roots: roots, Need: need, Pinned: pinned, Quota: r.disk.Max()}
	}
	return nil
}

// record writes each root's closure into the record before its leaves
// are fetched: a stats run meanwhile shows it incomplete, and a gc keeps
// what an interrupted run fetched.
func (r *run) record(roots []string, closure []*narindex.Resolved, nars []*nar) error {
	byBase := make(map[string]*narindex.Resolved, len(closure))
	rootCid := make(map[string]cid.Cid, len(nars))
	for i, res := range closure {
		byBase[res.Path.Base()] = res
		rootCid[res.Path.Base()] = nars[i].root
	}
	now := time.Now()
	return UpdateRecord(r.disk.Dir(), func(rec *Record) error {
		for _, root := range roots {
			c := Closure{Root: root, Time: now}
			seen := map[string]bool{root: true}
			for todo := []string{root}; len(todo) > 0; {
				base := todo[0]
				todo = todo[1:]
				res := byBase[base]
				if res == nil {
					return fmt.Errorf("%s is in the closure of %s but was not resolved", base, root)
				}
				c.Paths = append(c.Paths, Path{Base: base, Cid: rootCid[base], NarSize: res.Info.NarSize})
				for _, ref := range res.Info.References {
					if !seen[ref] {
						seen[ref] = true
						todo = append(todo, ref)
					}
				}
			}
			rec.Set(c)
		}
		return nil
	})
}

// fetchAll fetches and pins every block, jobs requests at a time: runs of
// raw leaves in one request each when there is a Batch, the rest block by
// block. A last pass makes sure every block is on disk and pinned (a
// store open elsewhere may have evicted one just before it was pinned).
func (r *run) fetchAll(ctx context.Context, nars []*nar) error {
	var todo, todoBytes int64
	for _, b := range r.blocks {
		if !b.held {
			todo++
			todoBytes += max(b.size, 0)
		}
	}
	r.say("%d blocks (%s); %d blocks (%s) to fetch, the rest held already", len(r.blocks), humanize.IBytes(uint64(r.total())), todo, humanize.IBytes(uint64(todoBytes)))
	stop := r.progress(len(r.blocks))
	defer stop()

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.o.Jobs)
	claimed := map[string]bool{}
	for _, n := range nars {
		if r.o.Batch != nil {
			runs := fetch.Runs(n.leaves, func(c cid.Cid) bool {
				return claimed[cache.Key(c)] || r.blocks[cache.Key(c)].held
			})
			for _, run := range runs {
				for _, l := range run {
					claimed[cache.Key(l.Cid)] = true
				}
				g.Go(func() error { return r.fetchRun(gctx, n, run) })
			}
		}
		for _, c := range n.known {
			if claimed[cache.Key(c)] {
				continue
			}
			claimed[cache.Key(c)] = true
			g.Go(func() error { return r.ensure(gctx, c, n) })
		}
	}
	if err := g.Wait(); err != nil {
		return err
	}
	// The last pass.
	for _, b := range r.blocks {
		if _, pinned, ok := cache.StatBlock(r.disk.Dir(), b.c); ok && pinned {
			continue
		}
		if err := r.ensure(ctx, b.c, nil); err != nil {
			return err
		}
		if _, pinned, ok := cache.StatBlock(r.disk.Dir(), b.c); !ok || !pinned {
			return fmt.Errorf("block %s could not be kept pinned in %s", b.c, r.disk.Dir())
		}
	}
	return nil
}

// total is the bytes of every block.
func (r *run) total() int64 {
	var n int64
	for _, b := range r.blocks {
		n += max(b.size, 0)
	}
	return n
}

// fetchRun fetches a run of leaves in one request, then makes sure of
// each (fetching what the request did not deliver).
func (r *run) fetchRun(ctx context.Context, n *nar, run []fetch.LeafRange) error {
	_, err := r.o.Batch(ctx, n.f, run, r.disk.Put)
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	// A failed run costs nothing more than its request: its blocks are
	// asked for one by one, from every source in turn.
	for _, l := range run {
		if err := r.ensure(ctx, l.Cid, n); err != nil {
			return err
		}
	}
	return nil
}

// ensure gets block c into the store, fetching it when it is not there,
// and pins it. n names the path for errors (nil: none).
func (r *run) ensure(ctx context.Context, c cid.Cid, n *nar) error {
	r.mu.Lock()
	b := r.blocks[cache.Key(c)]
	r.mu.Unlock()
	if b != nil && b.held {
		// Held before this run, pinned or not: read it back first (the
		// store checks it against its CID and fetches again a file whose
		// bytes are wrong), so that a closure reported complete reads
		// with no source at all.
		if _, err := r.GetBlock(ctx, c); err != nil {
			if n != nil {
				return fmt.Errorf("%s: block %s of NAR %s: %w", n.res.Path.Base(), c, n.root, err)
			}
			return fmt.Errorf("block %s: %w", c, err)
		}
	}
	for range 3 {
		err := r.disk.Pin(ctx, c)
		if err == nil {
			size, _, _ := cache.StatBlock(r.disk.Dir(), c)
			r.done.Add(1)
			r.doneBytes.Add(size)
			return nil
		}
		if !errors.Is(err, cache.ErrNotHeld) {
			return err
		}
		if _, err := r.GetBlock(ctx, c); err != nil {
			if n != nil {
				return fmt.Errorf("%s: block %s of NAR %s: %w", n.res.Path.Base(), c, n.root, err)
			}
			return fmt.Errorf("block %s: %w", c, err)
		}
	}
	return fmt.Errorf("block %s could not be kept in %s (is its disk full?)", c, r.disk.Dir())
}

// progress prints a line every ProgressEvery while blocks are fetched;
// the returned function stops it.
func (r *run) progress(total int) func() {
	if r.o.Progress == nil {
		return func() {}
	}
	every := r.o.ProgressEvery
	if every <= 0 {
		every = 2 * time.Second
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		last := int64(-1)
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if d := r.done.Load(); d != last {
					last = d
					r.say("%d/%d blocks (%s) on disk and pinned", d, total, humanize.IBytes(uint64(r.doneBytes.Load())))
				}
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// verifyWhole checks the NAR of a path without a trusted IpfsCidSig
// against its NarHash, reading it from the store. A mismatch drops the
// closures holding the path from the record: a mount would refuse it.
func (r *run) verifyWhole(ctx context.Context, n *nar) error {
	h := sha256.New()
	buf := make([]byte, 4<<20)
	for off := int64(0); off < n.f.Size(); {
		k, err := n.f.ReadAt(ctx, buf, off)
		h.Write(buf[:k])
		off += int64(k)
		if err != nil && !(errors.Is(err, io.EOF) && off == n.f.Size()) {
			return fmt.Errorf("%s: reading NAR %s from the store: %w", n.res.Path.Base(), n.root, err)
		}
	}
	want := n.res.Info.NarHash
	if got := h.Sum(nil); !bytes.Equal(got, want.Digest) {
		base := n.res.Path.Base()
		uerr := UpdateRecord(r.disk.Dir(), func(rec *Record) error {
			var drop []string
			for _, c := range rec.Closures {
				for _, p := range c.Paths {
					if p.Base == base && p.Cid.Equals(n.root) {
						drop = append(drop, c.Root)
						break
					}
				}
			}
			for _, root := range drop {
				rec.Remove(root)
			}
			return nil
		})
		return errors.Join(fmt.Errorf("%s: the NAR of CID %s hashes to %s, not the signed NarHash %s (the narinfo has no trusted IpfsCidSig; a mount would refuse this path); its closures are dropped from the record", base, n.root, narindex.SHA256(got), want), uerr)
	}
	return nil
}
