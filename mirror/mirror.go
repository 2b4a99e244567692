package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/narindex"
)

// Pinner is the IPFS node a mirror pins on.
type Pinner interface {
	// RecursivePins calls fn with the root of every recursive pin.
	RecursivePins(ctx context.Context, fn func(cid.Cid)) error
	// Pin pins c recursively, fetching what the node does not hold.
	// progress, when the node reports it, is called (from Pin's
	// goroutine) with the blocks and bytes walked so far.
	Pin(ctx context.Context, c cid.Cid, progress func(PinProgress)) error
}

// PinProgress is how far a pin has walked its DAG.
type PinProgress struct {
	Blocks int
	Bytes  uint64
}

// Entry names one narinfo of the cache.
type Entry struct {
	Name string // as the user gave it, for messages
	Hash string // the store path's hash part
	Err  error  // when set, Name names no narinfo, and this says why
}

// Options tune Run. Zero values mean defaults.
type Options struct {
	// TrustedKeys, when not empty, are the keys both Sig and IpfsCidSig
	// must verify under; when empty, narinfos are not checked.
	TrustedKeys []narindex.PublicKey
	// Jobs is how many narinfos are handled (and pins run) at once;
	// default 4.
	Jobs int
	// StallTimeout cancels a pin on which the node has fetched no block
	// for that long; default 5 minutes.
	StallTimeout time.Duration
	// Progress receives a line at most every ProgressEvery (default 1s)
	// while something changes; nil reports nothing.
	Progress      io.Writer
	ProgressEvery time.Duration
	// Total is the number of entries, when known, for progress lines.
	Total int
	// Log receives a line per rejected or failed narinfo; may be nil.
	Log *slog.Logger
}

// Summary counts what a run did.
type Summary struct {
	Pinned        int           // pins made by this run
	AlreadyPinned int           // CIDs the node pinned recursively before
	Rejected      int           // narinfos whose signatures did not verify
	NoCid         int           // narinfos without an IpfsCid
	Failed        int           // narinfos that could not be read, or pins that failed
	NarBytes      uint64        // NarSize of the paths pinned by this run
	Walked        uint64        // bytes of blocks the node walked for the pins
	Elapsed       time.Duration // of the run
}

// String is the one-line summary of a run.
func (s Summary) String() string {
	return fmt.Sprintf("mirror: pinned %d (%s of NAR), %d already pinned, %d rejected, %d without IpfsCid, %d failed, in %.1fs",
		s.Pinned, humanize.IBytes(s.NarBytes), s.AlreadyPinned, s.Rejected, s.NoCid, s.Failed, s.Elapsed.Seconds())
}

// ErrStalled says that a pin was cancelled after the node fetched no block
// for Options.StallTimeout.
var ErrStalled = errors.New("no block fetched")

// Run pins on node the IpfsCid of every entry's narinfo in cache. It
// returns an error only when the whole run cannot go on (the node's pins
// cannot be listed, ctx is cancelled); a narinfo or pin that fails is
// counted in the Summary and logged.
func Run(ctx context.Context, cache narindex.Substituter, entries iter.Seq[Entry], node Pinner, o Options) (Summary, error) {
	if o.Jobs <= 0 {
		o.Jobs = 4
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = 5 * time.Minute
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = time.Second
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	r := &run{cache: cache, node: node, o: o, start: time.Now(), pinned: map[string]struct{}{}, flights: map[string]*flight{}}
	if _, err := cache.CacheInfo(ctx); err != nil {
		return r.summary(), fmt.Errorf("binary cache %s: %w", cache.URL(), err)
	}
	err := node.RecursivePins(ctx, func(c cid.Cid) { r.pinned[key(c)] = struct{}{} })
	if err != nil {
		return r.summary(), fmt.Errorf("listing the node's recursive pins: %w", err)
	}
	stopProgress := r.reportProgress()
	defer stopProgress()

	work := make(chan Entry)
	var wg sync.WaitGroup
	for range o.Jobs {
		wg.Go(func() {
			for e := range work {
				r.entry(ctx, e)
			}
		})
	}
feed:
	for e := range entries {
		select {
		case work <- e:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	return r.summary(), ctx.Err()
}

// run is the state of one Run.
type run struct {
	cache narindex.Substituter
	node  Pinner
	o     Options
	start time.Time

	pinned map[string]struct{} // recursive pins before the run; read-only once filled

	mu      sync.Mutex
	flights map[string]*flight // pins of this run, by key
	s       Summary            // but Walked
	walked  atomic.Uint64
	running atomic.Int32
	changed atomic.Bool
}

// flight is one pin of this run; a second narinfo naming the same CID (two
// store paths with the same NAR) waits for it.
type flight struct {
	done chan struct{}
	err  error
}

func (r *run) count(f func(*Summary)) {
	r.mu.Lock()
	f(&r.s)
	r.mu.Unlock()
	r.changed.Store(true)
}

func (r *run) summary() Summary {
	r.mu.Lock()
	s := r.s
	r.mu.Unlock()
	s.Walked = r.walked.Load()
	s.Elapsed = time.Since(r.start)
	return s
}

// entry handles one narinfo: read, check, pin.
func (r *run) entry(ctx context.Context, e Entry) {
	if ctx.Err() != nil {
		return
	}
	fail := func(msg string, err error, attrs ...any) {
		r.o.Log.Error(msg, append([]any{"entry", e.Name, "err", err}, attrs...)...)
		r.count(func(s *Summary) { s.Failed++ })
	}
	if e.Err != nil {
		fail("not a narinfo", e.Err)
		return
	}
	ni, err := r.cache.NarInfo(ctx, e.Hash)
	if err != nil {
		if ctx.Err() == nil {
			fail("narinfo", err)
		}
		return
	}
	if ni.IpfsCid == "" {
		r.o.Log.Warn("narinfo has no IpfsCid, skipped", "path", ni.StorePath)
		r.count(func(s *Summary) { s.NoCid++ })
		return
	}
	if err := r.check(ni); err != nil {
		r.o.Log.Error("narinfo rejected, not pinned", "path", ni.StorePath, "cid", ni.IpfsCid, "err", err)
		r.count(func(s *Summary) { s.Rejected++ })
		return
	}
	c, err := cid.Parse(ni.IpfsCid)
	if err != nil {
		fail("bad IpfsCid", err, "path", ni.StorePath, "cid", ni.IpfsCid)
		return
	}
	k := key(c)
	if _, ok := r.pinned[k]; ok {
		r.count(func(s *Summary) { s.AlreadyPinned++ })
		return
	}
	r.mu.Lock()
	f, dup := r.flights[k]
	if !dup {
		f = &flight{done: make(chan struct{})}
		r.flights[k] = f
	}
	r.mu.Unlock()
	if dup {
		// Another store path with the same NAR: one pin serves both.
		select {
		case <-f.done:
		case <-ctx.Done():
			return
		}
		if f.err != nil {
			fail("pin", f.err, "path", ni.StorePath, "cid", c)
		} else {
			r.count(func(s *Summary) { s.AlreadyPinned++ })
		}
		return
	}
	f.err = r.pin(ctx, c)
	close(f.done)
	if f.err != nil {
		if ctx.Err() == nil {
			fail("pin", f.err, "path", ni.StorePath, "cid", c)
		}
		return
	}
	r.count(func(s *Summary) { s.Pinned++; s.NarBytes += ni.NarSize })
}

// check applies the trust policy: with trusted keys, both signatures must
// verify.
func (r *run) check(ni *narindex.NarInfo) error {
	if len(r.o.TrustedKeys) == 0 {
		return nil
	}
	if err := ni.VerifySigs(r.o.TrustedKeys); err != nil {
		return err
	}
	if err := ni.VerifyCidSig(r.o.TrustedKeys); err != nil {
		return fmt.Errorf("%w (Sig does not cover IpfsCid, so the CID is not trusted)", err)
	}
	return nil
}

// pin pins c, cancelling it when the node fetches no block for the stall
// bound.
func (r *run) pin(ctx context.Context, c cid.Cid) error {
	r.running.Add(1)
	defer r.running.Add(-1)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := time.AfterFunc(r.o.StallTimeout, func() { cancel(ErrStalled) })
	defer stall.Stop()
	var last PinProgress
	err := r.node.Pin(ctx, c, func(p PinProgress) {
		if p.Blocks > last.Blocks {
			stall.Reset(r.o.StallTimeout)
		}
		if p.Bytes > last.Bytes {
			r.walked.Add(p.Bytes - last.Bytes)
			r.changed.Store(true)
		}
		last = p
	})
	if err != nil && errors.Is(context.Cause(ctx), ErrStalled) {
		return fmt.Errorf("%w for %v after %d blocks (%s), cancelled: %v",
			ErrStalled, r.o.StallTimeout, last.Blocks, humanize.IBytes(last.Bytes), err)
	}
	return err
}

// reportProgress writes a progress line every ProgressEvery while things
// change; the function it returns stops it.
func (r *run) reportProgress() (stop func()) {
	if r.o.Progress == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(r.o.ProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			if !r.changed.Swap(false) {
				continue
			}
			s := r.summary()
			n := s.Pinned + s.AlreadyPinned + s.Rejected + s.NoCid + s.Failed
			of := ""
			if r.o.Total > 0 {
				of = fmt.Sprintf(" of %d", r.o.Total)
			}
			fmt.Fprintf(r.o.Progress, "mirror: %d%s narinfos: %d pinned, %d already pinned, %d rejected, %d failed; %s walked, %d pins running\n",
				n, of, s.Pinned, s.AlreadyPinned, s.Rejected, s.Failed, humanize.IBytes(s.Walked), r.running.Load())
		}
	})
	return func() { close(done); wg.Wait() }
}

// key identifies a DAG: its codec and multihash, so that the CIDv0 and
// CIDv1 of one dag-pb root are one pin.
func key(c cid.Cid) string {
	return cid.NewCidV1(c.Type(), c.Hash()).KeyString()
}
