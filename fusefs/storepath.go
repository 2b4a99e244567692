package fusefs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync/atomic"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/ipfs/go-cid"
	"golang.org/x/sync/errgroup"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/integrity"
	"github.com/ipnix/ipnix/narindex"
)

// narGapSlack is how far past the end of one read the next may start and
// still continue a walk in NAR order: the headers of the next entries (and
// of empty files, symlinks and directories between) sit in that gap.
const narGapSlack = 4 << 10

// narWalkFiles is how many files read one after the other (no file
// skipped) turn on read-ahead across files.
const narWalkFiles = 8

// storePath is one accepted store path: its narinfo, its NAR as a UnixFS
// file, the listing its tree is served from, the inode numbering of that
// listing, and its integrity state. What may be served and when is decided
// by chk (package integrity); this type wires it to the kernel.
type storePath struct {
	fs       *FS
	index    uint32
	base     string
	info     *narindex.NarInfo
	cid      cid.Cid
	nar      *fetch.File
	listing  *narindex.Listing
	ordinals map[*narindex.ListingNode]uint32
	chk      *integrity.Checker
	pages    pathPages // pushing small files into the kernel's page cache

	// narRA spots readers that walk the store path in NAR order (tar, cp
	// -r, nix hash path, find -exec cat) and reads ahead across files.
	narRA *fetch.Readahead
	walk  walk // readers walking the path in NAR order (background.go)

	// Leaves brought by read-ahead, for onLeaf (offer.go).
	offers   chan offered
	offering atomic.Bool

	// copiesKey names the local copies' directory: the NarHash in nix32.
	copiesKey string

	bytes   int64        // estimated memory of the listing (see listings.go)
	lastUse atomic.Int64 // unix nanoseconds
}

func (sp *storePath) state() integrity.State { return sp.chk.State() }

// quarantined reports whether the store path's data was refused.
func (sp *storePath) quarantined() bool { return sp.chk.State() == integrity.Quarantined }

// storePath returns the accepted store path named base, resolving it on
// first use. Concurrent lookups of one name share one resolution, which
// runs under a context of its own (bounded by the lookup timeout): one
// interrupted lookup must not fail the others.
func (f *FS) storePath(ctx context.Context, base string) (*storePath, error) {
	f.mu.Lock()
	sp := f.paths[base]
	f.mu.Unlock()
	if sp != nil {
		return sp, nil
	}
	if err, ok := f.rejected.Get(base); ok {
		return nil, fmt.Errorf("%w (%w)", err, narindex.ErrRemembered)
	}
	ch := f.lookups.DoChan(base, func() (any, error) {
		sctx := context.WithoutCancel(ctx)
		rctx, cancel := context.WithTimeout(sctx, f.cfg.ReadTimeout)
		start := time.Now()
		res, err := f.cfg.Resolver.Resolve(rctx, base)
		cancel()
		if err != nil {
			return nil, err
		}
		resolved := time.Now()
		sp, err := f.load(sctx, base, res)
		if err != nil {
			return nil, err
		}
		f.log.Debug("store path loaded", "path", base, "resolve", resolved.Sub(start), "load", time.Since(resolved), "entries", len(sp.ordinals))
		return f.register(base, sp), nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			if errors.Is(r.Err, narindex.ErrRejected) && !errors.Is(r.Err, narindex.ErrRemembered) {
				f.rejected.Add(base, r.Err)
			}
			return nil, r.Err
		}
		return r.Val.(*storePath), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// register adds a loaded store path to the mount, unless another lookup
// got there first, and returns the one that is registered.
func (f *FS) register(base string, sp *storePath) *storePath {
	f.mu.Lock()
	defer f.mu.Unlock()
	if old := f.paths[base]; old != nil {
		return old
	}
	if idx := f.pinned[base]; idx != 0 {
		sp.index = idx
	} else {
		f.next++
		sp.index = f.next
	}
	f.paths[base] = sp
	sp.touch()
	total := f.listingBytes.Add(sp.bytes)
	f.listingsChanged(total)
	if total > f.cfg.ListingMemory {
		go f.trimListings()
	}
	// The kernel keeps the root's listing (directories are cached without
	// asking, see rawShim). A new root mtime, fetched again once the
	// notification has dropped the root's attributes, makes it list the
	// newcomer.
	f.rootGen.Add(1)
	if f.served.Load() {
		go f.dropPages(&f.root.Inode) // its cached listing
	}
	return sp
}

// Preload loads the store paths of resolved closures before the mount
// serves, up to workers at a time, so that the root lists all of them
// from the start; they stay listed for the mount's life (a listing
// dropped for memory is found again on lookup). The first path that
// cannot be loaded is the error.
func (f *FS) Preload(ctx context.Context, closure []*narindex.Resolved, workers int) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(workers, 1))
	for _, res := range closure {
		base := res.Path.Base()
		g.Go(func() error {
			sp, err := f.load(gctx, base, res)
			if err != nil {
				return err
			}
			sp = f.register(base, sp)
			f.mu.Lock()
			f.pinned[base] = sp.index
			f.mu.Unlock()
			return nil
		})
	}
	return g.Wait()
}

// load opens the NAR behind an accepted narinfo and decides how the path
// is served. With a trusted IpfsCidSig (res.CidSigned) every block is
// checked against a signed root, so the path is served lazily from a
// listing whose digest matched the signed IpfsLsHash, or else from the
// NAR's own headers. Without one, nothing of the path is served until its
// whole NAR has matched NarHash, and the listing is the one parsed from
// those verified bytes. ctx carries no deadline: each step gets its own
// bound.
func (f *FS) load(ctx context.Context, base string, res *narindex.Resolved) (*storePath, error) {
	bctx, cancel := context.WithTimeout(ctx, f.cfg.ReadTimeout)
	defer cancel()
	info := res.Info
	c, err := cid.Decode(info.IpfsCid)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: IpfsCid %q: %v", narindex.ErrRejected, base, info.IpfsCid, err)
	}
	// The signed listing is parsed while the NAR's root block is fetched.
	parsed := make(chan parsedListing, 1)
	go func() { parsed <- f.parseListing(res) }()
	nar, err := fetch.OpenFile(bctx, f.cfg.Blocks, c)
	if err != nil {
		return nil, refusal(fmt.Errorf("%s: opening NAR %s: %w", base, c, err))
	}
	if nar.Size() != int64(info.NarSize) {
		return nil, fmt.Errorf("%w: %s: CID %s holds %d bytes but NarSize is %d", narindex.ErrRejected, base, c, nar.Size(), info.NarSize)
	}
	sp := &storePath{fs: f, base: base, info: info, cid: c, nar: nar,
		chk:       integrity.New(info.NarHash, nar.Size(), f.cfg.MaxEntries, f.ahead),
		copiesKey: narindex.EncodeNix32(info.NarHash.Digest)}
	sp.walk.moved = make(chan struct{}, 1)
	nar.SetLeafHook(sp.onLeaf) // the checker's, then page pushing (pagepush.go)
	sp.offers = make(chan offered, offerQueue)
	nar.SetOfferHook(sp.offerLeaf) // the same, on a goroutine of the path's (offer.go)
	if f.prefetch != nil {
		sp.narRA = fetch.NewStreamReadahead(f.cfg.Readahead, narGapSlack)
	}
	if !res.CidSigned {
		// A large NAR needs longer than one read: the bound grows with
		// its size at wholeVerifyRate.
		wctx, cancel := context.WithTimeout(ctx, f.cfg.ReadTimeout+time.Duration(info.NarSize/wholeVerifyRate)*time.Second)
		defer cancel()
		if err := sp.verifyWhole(wctx); err != nil {
			return nil, refusal(err)
		}
		sp.listing = sp.chk.Parsed()
		if f.files != nil {
			f.files.materialize(sp)
		}
	} else {
		if err := sp.lazyListing(bctx, res, <-parsed); err != nil {
			return nil, refusal(err)
		}
		sp.chk.Serve(sp.listing)
		sp.pages.lazy.Store(true)
		if f.files != nil {
			f.files.stream(bctx, sp) // copies written as the NAR is hashed
		}
	}
	if err := sp.number(); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", narindex.ErrRejected, base, err)
	}
	if f.files != nil {
		f.files.check(sp.copiesKey) // local copies from an earlier run, if any
	}
	if res.CidSigned && int64(info.NarSize) <= f.cfg.EagerVerifyBytes {
		if err := sp.verify(bctx, nil); err != nil {
			if errors.Is(err, integrity.ErrQuarantined) {
				return nil, fmt.Errorf("%w: %s: %v", narindex.ErrRejected, base, err)
			}
			return nil, refusal(err)
		}
	}
	return sp, nil
}

// refusal marks err as a rejection (ENOENT, remembered) when it says the
// CID's DAG is malformed: that is a fact about the signed data, not a
// passing failure of a source.
func refusal(err error) error {
	if errors.Is(err, fetch.ErrMalformedDAG) && !errors.Is(err, narindex.ErrRejected) {
		return fmt.Errorf("%w: %w", narindex.ErrRejected, err)
	}
	return err
}

// wholeVerifyRate is the slowest fetch, in bytes per second, that a path
// verified whole before it is shown is given time for.
const wholeVerifyRate = 1 << 20

// verifyWhole fetches and checks the whole NAR of a path without a trusted
// CID signature, before anything of it is shown. A mismatch is a rejection
// (ENOENT) and is logged; a failure to fetch is transient (EIO).
func (sp *storePath) verifyWhole(ctx context.Context) error {
	start := time.Now()
	_, err := sp.chk.Verify(ctx, sp.nar.ReadAt)
	if errors.Is(err, integrity.ErrQuarantined) {
		sp.fs.Stats.Quarantined.Add(1)
		return fmt.Errorf("%w: %s: verified whole (no trusted IpfsCidSig): %v", narindex.ErrRejected, sp.base, err)
	}
	if err != nil {
		return fmt.Errorf("%s: verifying the whole NAR (no trusted IpfsCidSig): %w", sp.base, err)
	}
	sp.fs.Stats.Verified.Add(1)
	sp.fs.Stats.VerifiedWhole.Add(1)

	sp.fs.log.Info("store path verified whole before serving (no trusted IpfsCidSig)", "path", sp.base, "bytes", sp.nar.Size(), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// parsedListing is the substituter's listing of a path, parsed and
// checked against the NAR's signed size, or why not.
type parsedListing struct {
	l   *narindex.Listing
	err error
}

// parseListing parses the listing the resolver handed over, which it does
// only when the listing matched the signed digest.
func (f *FS) parseListing(res *narindex.Resolved) parsedListing {
	if !res.CidSigned || res.ListingData == nil {
		return parsedListing{}
	}
	l, err := narindex.ParseListingLimit(res.ListingData, f.cfg.MaxEntries)
	if err == nil {
		err = l.Validate(int64(res.Info.NarSize))
	}
	return parsedListing{l, err}
}

// lazyListing finds the listing of a CID-signed path: the substituter's,
// parsed (see parseListing), or else the one built from the NAR's headers
// (authenticated block by block against the signed CID).
func (sp *storePath) lazyListing(ctx context.Context, res *narindex.Resolved, p parsedListing) error {
	max := sp.fs.cfg.MaxEntries
	switch {
	case p.l != nil && p.err == nil:
		sp.listing = p.l
		return nil
	case errors.Is(p.err, narindex.ErrTooManyEntries):
		return fmt.Errorf("%w: %s: %v", narindex.ErrRejected, sp.base, p.err)
	case p.err != nil:
		// Signed and wrong: the publisher's listing is broken.
		sp.fs.log.Warn("ignoring signed listing that does not parse; reading NAR headers instead", "path", sp.base, "err", p.err)
	case res.ListingNote != "":
		sp.fs.log.Info("not using the substituter's listing; reading NAR headers instead", "path", sp.base, "from", res.From, "why", res.ListingNote)
	}
	l, err := narindex.ListingFromNarLimit(sp.nar.ReadSeeker(ctx, 0), max)
	if err != nil {
		if errors.Is(err, narindex.ErrMalformedNAR) || errors.Is(err, narindex.ErrTooManyEntries) {
			return fmt.Errorf("%w: %s: NAR %s: %v", narindex.ErrRejected, sp.base, sp.cid, err)
		}
		return fmt.Errorf("%s: reading NAR headers of %s: %w", sp.base, sp.cid, err)
	}
	sp.listing = l
	return nil
}

// number gives every listing entry its ordinal in NAR order, and adds
// up the listing's estimated memory (see listings.go) on the way. The
// names of the directories being walked share one slice, a stack.
func (sp *storePath) number() error {
	if sp.listing.Entries() >= 1<<32-1 {
		return errors.New("too many entries for 32-bit ordinals")
	}
	sp.ordinals = make(map[*narindex.ListingNode]uint32, sp.listing.Entries())
	var names []string
	var walk func(n *narindex.ListingNode)
	walk = func(n *narindex.ListingNode) {
		sp.ordinals[n] = uint32(len(sp.ordinals))
		// The node, its names' bytes, its ordinal and, when listed, its
		// directory entries.
		sp.bytes += entryOverhead + int64(len(n.Target))
		if len(n.Entries) == 0 {
			return
		}
		base := len(names)
		for name := range n.Entries {
			names = append(names, name)
			sp.bytes += int64(len(name))
		}
		slices.Sort(names[base:])
		for i := base; i < base+len(n.Entries); i++ {
			walk(n.Entries[names[i]])
		}
		names = names[:base]
	}
	walk(sp.listing.Root)
	return nil
}

func sortedNames(n *narindex.ListingNode) []string {
	names := make([]string, 0, len(n.Entries))
	for name := range n.Entries {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// verify checks the whole NAR (see integrity.Checker.Verify). The call
// that finds a mismatch quarantines the path and makes the kernel forget
// it before returning. reading is the inode whose read brought the last
// bytes, or nil.
func (sp *storePath) verify(ctx context.Context, reading *fs.Inode) error {
	now, err := sp.chk.Verify(ctx, sp.nar.ReadAt)
	switch {
	case now && err != nil:
		sp.onQuarantine(err, reading)
		return integrity.ErrQuarantined
	case err != nil:
		return err
	case now:
		sp.fs.Stats.Verified.Add(1)
		sp.fs.log.Debug("NAR verified", "path", sp.base, "cid", sp.cid, "bytes", sp.nar.Size())
		if sp.fs.files != nil {
			sp.fs.files.materialize(sp)
		}
	}
	return nil
}

// onQuarantine does what follows a quarantine: count, log, drop the
// path's blocks and local copies, and make the kernel forget everything
// it cached of the path. reading (may be nil) is skipped for its pages,
// which the kernel holds locked until the failing read is answered.
func (sp *storePath) onQuarantine(reason error, reading *fs.Inode) {
	f := sp.fs
	f.Stats.Quarantined.Add(1)
	f.log.Error("store path quarantined", "path", sp.base, "cid", sp.cid, "reason", reason)
	if f.cfg.Evict != nil {
		for _, c := range sp.nar.KnownBlocks() {
			f.cfg.Evict(c)
		}
	}
	if f.files != nil {
		f.files.drop(sp.copiesKey)
	}
	f.forget(sp.base, reading)
}
