package ipfscache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"golang.org/x/sync/singleflight"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/narindex"
)

// DefaultRefresh is how often an IPNS name is resolved again unless told
// otherwise.
const DefaultRefresh = time.Minute

// MinRefresh is the shortest refresh interval accepted: resolving costs a
// request to every resolver that fails before the one that answers.
const MinRefresh = time.Second

// failureMemory is how long a failed first resolution is answered from
// memory, so that a burst of lookups while no resolver answers does not
// send each of them to every resolver.
const failureMemory = 5 * time.Second

// defaultResolveTimeout bounds one resolution in the background.
const defaultResolveTimeout = 30 * time.Second

// Options configure Open.
type Options struct {
	// Blocks fetches blocks, each checked against its CID (fetch.Verify
	// below any cache): the mount's own block path.
	Blocks fetch.BlockGetter
	// Resolvers find what an IPNS name points to: for the first
	// resolution asked in order until one answers, for each refresh all
	// at once, the verified record of highest sequence winning. Needed
	// for ipns://.
	Resolvers []NameResolver
	// Refresh is how often an IPNS name is resolved again; 0 means
	// DefaultRefresh.
	Refresh time.Duration
	// Log receives a line when the name points to a new directory and
	// when a refresh fails; nil discards.
	Log *slog.Logger
}

// Cache is a Nix binary cache held in a UnixFS directory: nix-cache-info,
// <hash>.narinfo and <hash>.ls are entries of the directory (a plain one
// or a HAMT-sharded one) and are read through Options.Blocks, every block
// checked against its CID. The narinfos are then checked by the resolver
// as any others (signatures by trusted keys): the directory only says
// where they are.
//
// For an IPNS name the directory is the one the name pointed to at the
// last resolution; Run resolves it again every Refresh. A record with a
// lower sequence number than one already verified is ignored (a gateway
// cannot roll the cache back). Nothing absent is remembered: each lookup
// walks the current root, whose blocks the block cache keeps, so an entry
// published under a new root is found by the first lookup after the
// refresh that saw it.
type Cache struct {
	ref Ref
	o   Options
	sub narindex.Substituter

	resolving singleflight.Group

	mu       sync.Mutex
	root     cid.Cid // current directory; Undef until resolved
	seq      uint64  // sequence of the last verified record
	verified bool    // seq is meaningful
	failed   error   // last failure of the first resolution
	failedAt time.Time
}

// Open returns the cache ref names. Nothing is fetched yet.
func Open(ref Ref, o Options) (*Cache, error) {
	if o.Blocks == nil {
		return nil, errors.New("ipfscache: no block source")
	}
	if ref.IsName() && len(o.Resolvers) == 0 {
		return nil, fmt.Errorf("%s: no way to resolve an IPNS name (need a kubo RPC API or a gateway)", ref)
	}
	if o.Refresh == 0 {
		o.Refresh = DefaultRefresh
	}
	if o.Refresh < MinRefresh {
		return nil, fmt.Errorf("IPNS refresh interval %v is shorter than %v", o.Refresh, MinRefresh)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	c := &Cache{ref: ref, o: o, root: ref.Root}
	c.sub = narindex.NewSubstituter(ref.String(), c.fetch)
	return c, nil
}

// Substituter is the cache as the resolver sees it.
func (c *Cache) Substituter() narindex.Substituter { return c.sub }

// URL is the canonical ipfs:// or ipns:// URL.
func (c *Cache) URL() string { return c.ref.String() }

// Root returns the directory now in use, or false before an IPNS name has
// first been resolved.
func (c *Cache) Root() (cid.Cid, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.root, c.root.Defined()
}

// fetch reads one file of the current directory (narindex.FetchFunc).
func (c *Cache) fetch(ctx context.Context, name string, limit int64) ([]byte, error) {
	root, err := c.current(ctx)
	if err != nil {
		return nil, err
	}
	data, err := c.read(ctx, root, name, limit)
	if err == nil || !errors.Is(err, ErrMalformedDir) {
		return data, err
	}
	c.o.Log.Warn("binary cache directory is malformed", "cache", c.ref.String(), "root", root.String(), "entry", name, "err", err)
	switch {
	case strings.HasSuffix(name, ".narinfo"):
		// A rejection of this path, as for a narinfo that does not parse.
		return nil, fmt.Errorf("%s/%s: %w: %w", c.ref, name, narindex.ErrMalformedNarInfo, err)
	case strings.HasSuffix(name, ".ls"):
		// No usable listing: the mount reads the NAR's headers instead.
		return nil, fmt.Errorf("%s/%s: %w (%w)", c.ref, name, narindex.ErrNotFound, err)
	}
	return nil, err
}

func (c *Cache) read(ctx context.Context, root cid.Cid, name string, limit int64) ([]byte, error) {
	entry, err := lookup(ctx, c.o.Blocks, root, name)
	if err != nil {
		return nil, fmt.Errorf("%s (directory %s): %w", c.ref, root, err)
	}
	data, err := readEntry(ctx, c.o.Blocks, entry, name, limit)
	if err != nil {
		return nil, fmt.Errorf("%s (directory %s): %w", c.ref, root, err)
	}
	return data, nil
}

// current returns the directory to read: for an IPNS name not resolved
// yet, it resolves it now (one resolution at a time; a failure is
// answered again for a few seconds).
func (c *Cache) current(ctx context.Context) (cid.Cid, error) {
	c.mu.Lock()
	root, failed, failedAt := c.root, c.failed, c.failedAt
	c.mu.Unlock()
	if root.Defined() {
		return root, nil
	}
	if failed != nil && time.Since(failedAt) < failureMemory {
		return cid.Undef, failed
	}
	ch := c.resolving.DoChan("", func() (any, error) {
		// Shared by every waiting lookup: not bound to the first one's
		// interruption, but to its deadline.
		rctx, cancel := fetch.Detach(ctx)
		defer cancel()
		_, err := c.refresh(rctx, true)
		return nil, err
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return cid.Undef, r.Err
		}
	case <-ctx.Done():
		return cid.Undef, ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.root.Defined() {
		return cid.Undef, fmt.Errorf("%s: not resolved", c.ref)
	}
	return c.root, nil
}

// Refresh resolves the name now and reports whether the directory
// changed: every resolver is asked at once and the best answer wins (see
// resolve), so that one replaying an older signed record cannot hide a
// newer one that another holds. For ipfs:// it does nothing.
func (c *Cache) Refresh(ctx context.Context) (changed bool, err error) {
	return c.refresh(ctx, false)
}

// refresh is Refresh; with first, the resolvers are asked in order and the
// first answer wins (a lookup waits for the first resolution; the
// refreshes after it look at every answer).
func (c *Cache) refresh(ctx context.Context, first bool) (changed bool, err error) {
	if !c.ref.IsName() {
		return false, nil
	}
	var res Resolution
	if first {
		res, err = c.resolveFirst(ctx)
	} else {
		res, err = c.resolveBest(ctx)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		if !c.root.Defined() {
			c.failed, c.failedAt = err, time.Now()
		}
		return false, err
	}
	c.failed = nil
	switch {
	case res.Root == c.root:
		if res.Verified && res.Seq > c.seq {
			c.seq, c.verified = res.Seq, true
		}
		return false, nil
	case res.Verified && c.verified && res.Seq < c.seq:
		c.o.Log.Warn("ignoring an IPNS record older than the one in use", "name", c.ref.String(), "from", res.From, "seq", res.Seq, "inUse", c.seq, "root", c.root.String())
		return false, nil
	}
	old := c.root
	c.root = res.Root
	if res.Verified {
		c.seq, c.verified = res.Seq, true
	}
	if old.Defined() {
		c.o.Log.Info("IPNS name points to a new cache directory", "name", c.ref.String(), "root", res.Root.String(), "was", old.String(), "seq", res.Seq, "verified", res.Verified, "from", res.From)
	} else {
		c.o.Log.Info("IPNS name resolved", "name", c.ref.String(), "root", res.Root.String(), "seq", res.Seq, "verified", res.Verified, "from", res.From)
	}
	return true, nil
}

// resolveFirst asks the resolvers in order until one answers.
func (c *Cache) resolveFirst(ctx context.Context) (Resolution, error) {
	var errs []error
	for _, r := range c.o.Resolvers {
		res, err := r.ResolveName(ctx, c.ref.Name)
		if err == nil {
			return res, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return Resolution{}, fmt.Errorf("%s: no resolver answered: %w", c.ref, errors.Join(errs...))
}

// resolveBest asks every resolver at once and returns the verified record
// of the highest sequence (the earliest resolver's on a tie), or else the
// first unverified answer in order (kubo's name/resolve).
func (c *Cache) resolveBest(ctx context.Context) (Resolution, error) {
	type answer struct {
		res Resolution
		err error
	}
	answers := make([]answer, len(c.o.Resolvers))
	var wg sync.WaitGroup
	for i, r := range c.o.Resolvers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := r.ResolveName(ctx, c.ref.Name)
			answers[i] = answer{res, err}
		}()
	}
	wg.Wait()
	best := -1
	var errs []error
	for i, a := range answers {
		switch {
		case a.err != nil:
			errs = append(errs, a.err)
		case best < 0:
			best = i
		case a.res.Verified && (!answers[best].res.Verified || a.res.Seq > answers[best].res.Seq):
			best = i
		}
	}
	if best < 0 {
		return Resolution{}, fmt.Errorf("%s: no resolver answered: %w", c.ref, errors.Join(errs...))
	}
	return answers[best].res, nil
}

// Run resolves an IPNS name every Refresh until ctx ends (and returns at
// once for ipfs://). A failed refresh is logged and the directory in use
// is kept: store paths do not change, so an old directory serves what it
// holds, and a lookup never waits for a refresh.
func (c *Cache) Run(ctx context.Context) {
	if !c.ref.IsName() {
		return
	}
	t := time.NewTicker(c.o.Refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, min(c.o.Refresh, defaultResolveTimeout))
		_, err := c.Refresh(rctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			c.o.Log.Warn("IPNS refresh failed; keeping the cache directory in use", "name", c.ref.String(), "err", err)
		}
	}
}
