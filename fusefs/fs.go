package fusefs

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"
	"github.com/ipfs/go-cid"
	"golang.org/x/sync/singleflight"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/integrity"
	"github.com/ipnix/ipnix/narindex"
)

// Resolver finds and accepts a store path's narinfo and listing.
// *narindex.Resolver implements it.
type Resolver interface {
	Resolve(ctx context.Context, base string) (*narindex.Resolved, error)
}

// Config is what a mount is built from; cmd/ipnix wires concrete types in.
type Config struct {
	Resolver Resolver
	// Blocks serves verified blocks (fetch.Verify under any caches).
	Blocks fetch.BlockGetter
	// Evict drops a block from every cache; called when a store path is
	// quarantined. May be nil.
	Evict func(cid.Cid)
	// EagerVerifyBytes: NARs up to this size are fetched and checked against
	// NarHash before the store path is shown. Default 1 MiB; negative
	// disables.
	EagerVerifyBytes int64
	// Readahead is the largest window fetched ahead of a sequential reader
	// (default 8 MiB; negative disables read-ahead).
	Readahead int64
	// ReadaheadWorkers bounds concurrent read-ahead fetches (default 8).
	ReadaheadWorkers int
	// Batch, when set, fetches read-ahead runs of leaves in one request
	// each (see fetch.Batch).
	Batch *fetch.Batch
	// FilesDir, when set, holds local copies of the larger files of
	// verified store paths for FUSE passthrough, up to FilesQuota bytes;
	// they are kept across restarts (see passthrough.go).
	FilesDir   string
	FilesQuota int64
	// ReadTimeout bounds one read or lookup as a whole, whatever the DAG
	// depth, the number of sources and retries (default
	// fetch.DefaultReadTimeout).
	ReadTimeout time.Duration
	// MaxEntries bounds the entries of one store path's listing (default
	// narindex.MaxListingEntries).
	MaxEntries int
	// ListingMemory bounds the memory of the listings held (default 256
	// MiB); listings of paths the kernel has forgotten are dropped first.
	ListingMemory int64
	// NoPushPages turns off writing small files into the kernel's page
	// cache once their blocks are verified (pagepush.go).
	NoPushPages bool
	// OnListings, if set, is told the estimated memory of the listings
	// held whenever it changes (cmd/ipnix sets the GC limit from it).
	OnListings func(bytes int64)
	// ExecAhead is how much of a file being executed (a program, or its
	// ELF interpreter) is fetched at once, from its start, on the first
	// read (default 32 MiB; needs read-ahead on; negative disables).
	ExecAhead int64
	// WalkAhead is how far ahead of a reader walking a store path in NAR
	// order the rest of the path is fetched in the background (see
	// background.go): default 32 MiB; math.MaxInt64 for the whole path (a
	// disk cache holds the blocks); negative disables.
	WalkAhead int64
	// Demand, if set, tells how many readers wait now for blocks not on
	// their way (cache.Memory.Demand): background fetch yields to them.
	Demand func() int64
	Log    *slog.Logger
}

// Defaults for Config.
const (
	defaultReadahead = 8 << 20
	defaultExecAhead = 32 << 20
	defaultWorkers   = 8
	// Files up to this size are fetched whole when opened.
	smallFileBytes       = 512 << 10
	defaultListingMemory = 256 << 20
	defaultReadTimeout   = 30 * time.Second
	// rejectedTTL is how long a store path refused at load (bad CID, DAG
	// shape, NAR that does not match) is remembered as refused.
	rejectedTTL = 5 * time.Minute
)

// Stats counts what the filesystem did; fields are updated atomically.
type Stats struct {
	Lookups              atomic.Int64 // store paths resolved and shown
	LookupsRefused       atomic.Int64 // store-path lookups answered ENOENT or EIO
	Verified             atomic.Int64 // store paths whose whole NAR matched NarHash
	LocalCopies          atomic.Int64 // store paths whose larger files were copied for passthrough
	Passthrough          atomic.Int64 // opens offered a local copy for passthrough
	ExecFetches          atomic.Int64 // files fetched whole (to ExecAhead) because executed
	PassthroughFellBack  atomic.Int64 // reads that reached us on a handle with a local copy
	Quarantined          atomic.Int64 // store paths whose NAR did not
	VerifiedWhole        atomic.Int64 // store paths verified whole before shown (no trusted IpfsCidSig)
	LocalCopiesChecked   atomic.Int64 // directories of local copies from an earlier run found intact
	LocalCopiesDropped   atomic.Int64 // directories of local copies dropped because a check failed
	LocalCopyBytesHashed atomic.Int64 // bytes of local copies found at start hashed again to check them
	ListingsDropped      atomic.Int64 // listings of idle store paths dropped to stay under ListingMemory
	Reads                atomic.Int64 // READ requests that reached the filesystem
	ReadNanos            atomic.Int64 // time READ requests spent getting their bytes (fetch, wait, copy)
	OffersDropped        atomic.Int64 // leaves from read-ahead not hashed or pushed on arrival (queue full)
	PagePushes           atomic.Int64 // small files written into the kernel's page cache
	PagePushBytes        atomic.Int64 // bytes of those files
	PagePushDrops        atomic.Int64 // page pushes dropped because the queue was full
	PagePushErrors       atomic.Int64 // page pushes the kernel refused (other than for unknown inodes)
}

// FS is the state of one mount: every node points to it.
type FS struct {
	cfg      Config
	log      *slog.Logger
	root     *rootNode
	prefetch *fetch.Prefetcher // nil when read-ahead is off
	files    *files            // nil when passthrough is off
	pages    *pusher           // nil when page pushing is off
	Stats    Stats
	Walks    WalkStats

	// Background work (walks) runs under bgCtx, cancelled by Close.
	bgCtx    context.Context
	bgCancel context.CancelFunc
	bg       sync.WaitGroup
	walkers  chan struct{} // one token per walk running

	mu    sync.Mutex
	paths map[string]*storePath // accepted store paths by basename
	// pinned names the store paths of the closures given at start, with
	// their index: listed in the root even while their listing is dropped
	// (Nix drops from its database what the store's listing lacks), and
	// found again under the same inode numbers.
	pinned map[string]uint32
	next   uint32 // last store-path index handed out

	rootGen      atomic.Uint32 // bumped when a store path is added or dropped
	listingBytes atomic.Int64  // estimated memory of the listings held

	// opens is whether OPEN is worth a round trip: only to hand the kernel
	// a local copy for passthrough. Otherwise the first OPEN is answered
	// ENOSYS and the kernel opens files without asking from then on
	// (keeping their pages cached), which halves the round trips of a
	// walk over many small files. Set by Mount.
	opens atomic.Bool
	// served is set once the kernel has mounted the filesystem: before
	// that (paths preloaded at start) there is no kernel cache to notify.
	served atomic.Bool
	// notify writes cache invalidations to the FUSE device (notify.go);
	// nil until mounted, or when the device cannot be found.
	notify atomic.Pointer[notifier]

	execs    execReads // reads of files being executed (rawshim.go)
	lookups  singleflight.Group
	rejected *expirable.LRU[string, error] // store paths refused at load
	idleFor  time.Duration                 // see listings.go
	// ahead bounds, across all store paths, the leaves kept for hashing
	// ahead of each path's frontier.
	ahead *integrity.Budget
}

// New returns a filesystem serving cfg.
func New(cfg Config) (*FS, error) {
	if cfg.EagerVerifyBytes == 0 {
		cfg.EagerVerifyBytes = 1 << 20
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Readahead == 0 {
		cfg.Readahead = defaultReadahead
	}
	if cfg.ExecAhead == 0 {
		cfg.ExecAhead = defaultExecAhead
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = defaultReadTimeout
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = narindex.MaxListingEntries
	}
	if cfg.ListingMemory <= 0 {
		cfg.ListingMemory = defaultListingMemory
	}
	if cfg.ReadaheadWorkers <= 0 {
		cfg.ReadaheadWorkers = defaultWorkers
	}
	f := &FS{cfg: cfg, log: log, paths: make(map[string]*storePath), pinned: map[string]uint32{},
		rejected: expirable.NewLRU[string, error](1<<14, nil, rejectedTTL), idleFor: idleFor,
		ahead: integrity.NewBudget(integrity.DefaultAheadBytes)}
	f.root = &rootNode{fsys: f}
	if cfg.WalkAhead == 0 {
		f.cfg.WalkAhead = defaultWalkAhead
	}
	f.bgCtx, f.bgCancel = context.WithCancel(context.Background())
	f.walkers = make(chan struct{}, maxWalkers)
	if cfg.FilesDir != "" {
		fl, err := openFiles(cfg.FilesDir, cfg.FilesQuota, log, &f.Stats)
		if err != nil {
			return nil, err
		}
		f.files = fl
	}
	if !cfg.NoPushPages {
		f.pages = newPusher(f)
	}
	if cfg.Readahead > 0 {
		f.prefetch = fetch.NewPrefetcher(cfg.Blocks, cfg.ReadaheadWorkers, 1024)
		if cfg.Batch != nil {
			f.prefetch.SetBatch(cfg.Batch)
		}
	}
	return f, nil
}

// Close stops background work (read-ahead, page pushing; local copies
// being written get a few seconds to finish). Call it after unmounting.
func (f *FS) Close() {
	// Read-ahead first: its workers hand leaves to background work.
	if f.prefetch != nil {
		f.prefetch.Close()
	}
	f.bgCancel()
	f.bg.Wait()
	if f.files != nil {
		f.files.close()
	}
	if f.pages != nil {
		f.pages.close()
	}
	if n := f.notify.Load(); n != nil {
		n.close()
	}
}

// PrefetchStats returns the read-ahead counters (nil when it is off).
func (f *FS) PrefetchStats() *fetch.PrefetchStats {
	if f.prefetch == nil {
		return nil
	}
	return &f.prefetch.Stats
}

// Timeouts handed to the kernel. Store paths never change, so whatever the
// kernel learns about their insides may be kept long. A name that is not
// (yet) published may appear later, so root-level misses are kept briefly.
const (
	immutableTimeout    = 24 * time.Hour
	rootNegativeTimeout = 30 * time.Second
	// The root's own attributes are kept briefly: they change as paths
	// are added, and a stat of the mount point should find a dead server.
	rootAttrTimeout = time.Second
)

// errno maps an error from below to what the kernel gets. Errors that are
// neither "not there" nor "interrupted" are logged by the caller and become
// EIO.
func errno(err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, narindex.ErrNotFound), errors.Is(err, narindex.ErrRejected):
		return syscall.ENOENT
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	default:
		return syscall.EIO
	}
}

// ino builds an inode number from a store-path index and an entry ordinal.
func ino(index, ordinal uint32) uint64 {
	return uint64(index)<<32 | uint64(ordinal)
}
