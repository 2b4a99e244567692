package main

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fusefs"
	"github.com/ipnix/ipnix/ipfscache"
	"github.com/ipnix/ipnix/narindex"
)

// memoryHeadroom is what the mount process may use beside its block cache
// and its listings: in-flight blocks, parsed DAG nodes, FUSE buffers.
const memoryHeadroom = 64 << 20

// Defaults of the mount flags.
const (
	defaultMemoryCache   = 64 << 20
	defaultCacheSize     = 10 << 30
	defaultReadahead     = 8 << 20
	defaultReadTimeout   = fetch.DefaultReadTimeout
	defaultBlockTimeout  = fetch.DefaultBlockTimeout
	defaultMaxEntries    = 1_000_000
	defaultListingMemory = 256 << 20
)

// mountConfig is everything `ipnix mount` is told, from flags and -o.
type mountConfig struct {
	MountPoint         string
	Substituters       []string
	IpnsRefresh        time.Duration
	TrustedKeys        []string
	API                string
	KuboRepo           string
	Gateways           []string
	MemoryCache        int64
	CacheDir           string
	CacheSize          int64
	DiskBlocks         diskBlocks
	Readahead          int64
	BatchFetch         bool
	RangeFetch         string
	BackgroundFetch    bool
	NoPassthrough      bool
	NoPushPages        bool
	NoRequireSigs      bool
	RequireCidSig      bool
	ReadTimeout        time.Duration
	BlockTimeout       time.Duration
	MaxEntries         int
	ListingMemory      int64
	Metrics            string
	MetricsAllowRemote bool
	Debug              bool
	AllowOther         bool
	KernelOptions      []string
	Closures           []string
	ClosuresFrom       string
	Overlay            string
}

const mountSynopsis = `Usage: ipnix mount [flags] [SOURCE] MOUNTPOINT

Serve a read-only Nix store at MOUNTPOINT. <MOUNTPOINT>/<hash>-<name> appears
when looked up, once its narinfo is found in a substituter, signed by a
trusted key and carries an IpfsCid. A path whose IpfsCidSig (by a trusted
key) covers its CID and listing is served lazily: its files are fetched from
IPFS block by block when read, each block checked against the signed CID.
Any other path is fetched whole and checked against the signed NarHash
before anything of it is shown (or refused, with --require-cid-sig). Runs in
the foreground; SIGINT or SIGTERM unmounts. SOURCE is ignored (mount(8)
passes one).

Example:
  ipnix mount --substituter file:///srv/cache \
    --trusted-public-key "$(cat cache.pub)" /mnt/ipnix
`

// notOptions are the flags that -o does not set.
var notOptions = map[string]bool{"option": true, "help": true}

func parseMountArgs(args []string, out io.Writer) (*mountConfig, error) {
	c := &mountConfig{}
	fs := newFlagSet("mount", mountSynopsis, out)
	fs.StringArrayVar(&c.Substituters, "substituter", nil, "binary cache holding narinfos with IpfsCid: file:///dir, http(s)://host/path, ipfs://CID (a UnixFS directory, as publish --ipfs-dir adds) or ipns://NAME (the directory an IPNS name points to, resolved again every --ipns-refresh) (repeatable; asked in order)")
	fs.DurationVar(&c.IpnsRefresh, "ipns-refresh", ipfscache.DefaultRefresh, ipnsRefreshHelp)
	fs.StringArrayVar(&c.TrustedKeys, "trusted-public-key", nil, "public key narinfos must be signed with, as name:base64 (repeatable)")
	fs.StringVar(&c.API, "api", "", "kubo RPC API, a multiaddr (/ip4/127.0.0.1/tcp/5001) or http:// URL (default, unless only --gateway is given: $IPFS_PATH/api, else /ip4/127.0.0.1/tcp/5001)")
	fs.StringVar(&c.KuboRepo, "kubo-repo", "", kuboRepoHelp)
	fs.StringArrayVar(&c.Gateways, "gateway", nil, "HTTP trustless gateway to fetch blocks from, e.g. https://gw.example.org (repeatable, tried in order). With no --api the gateways are the only block sources and no kubo is needed; with --api they are asked before it (default: the local kubo's gateway when it listens on loopback)")
	c.MemoryCache = defaultMemoryCache
	fs.Var(sizeValue{&c.MemoryCache}, "memory-cache", "bytes of blocks kept in memory, e.g. 256MiB")
	fs.StringVar(&c.CacheDir, "cache-dir", "", "directory for the on-disk cache (local copies of verified files for FUSE passthrough, and verified blocks: see --disk-blocks); none if empty")
	c.CacheSize = defaultCacheSize
	fs.Var(sizeValue{&c.CacheSize}, "cache-size", "bytes the on-disk cache may hold (half for blocks, half for local copies; all for local copies when blocks are not kept)")
	c.DiskBlocks = diskBlocksAuto
	fs.Var(diskBlocksValue{&c.DiskBlocks}, "disk-blocks", diskBlocksHelp)
	c.Readahead = defaultReadahead
	fs.Var(sizeValue{&c.Readahead}, "readahead", "largest window fetched ahead of a sequential reader; 0 disables")
	fs.BoolVar(&c.NoPassthrough, "no-passthrough", false, "never hand local copies of verified files to the kernel (FUSE passthrough: Linux 6.9+, root, --cache-dir). Without passthrough the kernel opens files without asking ipnix, which is faster for many small files and slower for large files read after a remount")
	fs.BoolVar(&c.BackgroundFetch, "background-fetch", true, "when a reader walks a store path file after file in NAR order (find, tar, cp -r, nix hash path), fetch the rest of it in the background ahead of the reader: up to half the memory cache ahead, or half the disk block cache with one")
	fs.StringVar(&c.RangeFetch, "range-fetch", "bytes", "how read-ahead fetches runs of blocks from the first gateway: bytes (one ranged GET of the file's bytes, cut at the leaf boundaries and each leaf checked against its CID; raw leaves only), car (one trustless CAR stream), off (a request per block)")
	fs.BoolVar(&c.BatchFetch, "batch-fetch", false, "same as --range-fetch car")
	fs.MarkDeprecated("batch-fetch", "use --range-fetch car")
	fs.BoolVar(&c.NoPushPages, "no-push-pages", false, "never write small files into the kernel's page cache once their blocks are verified (by default a walk over many small files then costs a READ per block, not per file)")
	fs.BoolVar(&c.NoRequireSigs, "no-require-sigs", false, "show store paths whose narinfo is unsigned or signed by an untrusted key (NOT recommended)")
	fs.BoolVar(&c.RequireCidSig, "require-cid-sig", false, "refuse store paths whose narinfo has no IpfsCidSig by a trusted key (without it such paths are fetched whole and checked against NarHash before anything of them is served)")
	fs.DurationVar(&c.ReadTimeout, "read-timeout", defaultReadTimeout, "longest time one read or lookup may take, whatever the DAG depth, sources and retries, before it fails with EIO")
	fs.DurationVar(&c.BlockTimeout, "block-timeout", defaultBlockTimeout, "longest wait for one block from one source before the next source is tried")
	fs.IntVar(&c.MaxEntries, "max-entries", defaultMaxEntries, "most entries a store path's listing may have; larger store paths are refused")
	c.ListingMemory = defaultListingMemory
	fs.Var(sizeValue{&c.ListingMemory}, "listing-memory", "bytes of parsed listings kept in memory; listings of idle store paths are dropped and fetched again")
	fs.StringVar(&c.Metrics, "metrics", "", "serve counters (/metrics, Prometheus text) and Go profiles (/debug/pprof) over HTTP on this address, e.g. 127.0.0.1:9464; only loopback addresses unless --metrics-allow-remote")
	fs.BoolVar(&c.MetricsAllowRemote, "metrics-allow-remote", false, "let --metrics listen on a non-loopback address (anyone who can reach it can read the counters and profile the process)")
	fs.StringArrayVar(&c.Closures, "closure", nil, "resolve this store path and everything it references at start, so that the root lists them before any lookup: /nix/store/..., a result symlink, or <hash>-<name> (repeatable)")
	fs.StringVar(&c.Overlay, "overlay", "", "as root, overlay the mount onto this Nix store directory (normally /nix/store, which stays the upper layer), register the --closure paths with nix-store --load-db and give them GC roots; undone in reverse order on stop")
	fs.StringVar(&c.ClosuresFrom, "closures-from", "", "read more --closure paths from this file, one a line (# starts a comment)")
	opts := fs.StringArrayP("option", "o", nil, "mount options as mount(8) passes them: opt,opt=value,... (see below)")
	fs.BoolVar(&c.Debug, "debug", false, "log debug messages and every FUSE request")
	fs.Usage = func() {
		fmt.Fprintf(out, "%s\nFlags:\n%s\n%s", mountSynopsis, fs.FlagUsages(), mountOptionsHelp)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err}
	}
	for _, o := range *opts {
		if err := c.applyOptions(fs, o); err != nil {
			return nil, usageError{err}
		}
	}
	switch fs.NArg() {
	case 1:
		c.MountPoint = fs.Arg(0)
	case 2:
		c.MountPoint = fs.Arg(1)
	default:
		return nil, usageError{fmt.Errorf("mount needs exactly one MOUNTPOINT (got %d arguments)", fs.NArg())}
	}
	if err := c.check(); err != nil {
		return nil, usageError{err}
	}
	return c, nil
}

// walkAhead is how far ahead of a reader walking a store path the rest
// of it is fetched: the blocks must still be held when the reader gets
// there, in half the memory cache, or in half the disk block cache.
func walkAhead(c *mountConfig, st *blockStack) int64 {
	switch {
	case !c.BackgroundFetch || c.Readahead == 0:
		return -1
	case st.disk != nil:
		return max(st.disk.Max()/2, heldAhead(c))
	case heldAhead(c) < minWalkAhead:
		return -1 // nothing fetched ahead would still be there
	}
	return heldAhead(c)
}

// minWalkAhead is the least a walk may go ahead: one leaf.
const minWalkAhead = 256 << 10

// mountProcs is how many goroutines of the mount run Go code at once:
// twice the CPUs Go would use. Reads of block files and of /dev/fuse block
// in the kernel while holding their P until the scheduler's monitor takes
// it back (after 20 us, or up to 10 ms once it backs off), and a cold read
// left a core idle meanwhile: with twice the Ps, B1 cold read 441-453 ->
// 498-524 MiB/s and B3 cold 1226 -> 1169 ms (medians of alternating
// rounds), at the same peak RSS. GOMAXPROCS, when set, wins.
func mountProcs(envSet bool, procs int) int {
	if envSet {
		return procs
	}
	return 2 * procs
}

// heldAhead is how much can be fetched ahead of readers and still be in
// the memory cache when they come: half of it.
func heldAhead(c *mountConfig) int64 { return c.MemoryCache / 2 }

// execAhead is how much of a program being started is fetched at once:
// half the memory cache, where the blocks must still be when its page
// faults come, and at most 64 MiB (256 leaves, a quarter of read-ahead's
// queue, which other readers share).
func execAhead(c *mountConfig) int64 {
	if h := heldAhead(c); h > 0 {
		return min(h, 64<<20)
	}
	return -1 // no memory cache: nothing would be held
}

// fsConfig is the filesystem's configuration from the flags and the
// block stack, all but the resolver, logger and listings hook.
func fsConfig(c *mountConfig, st *blockStack) fusefs.Config {
	readahead := c.Readahead
	if readahead == 0 {
		readahead = -1 // off
	}
	var filesDir string
	filesQuota := c.CacheSize
	if c.CacheDir != "" {
		filesDir = filepath.Join(c.CacheDir, "files")
	}
	if st.disk != nil {
		filesQuota = c.CacheSize - c.CacheSize/2
	}
	cfg := fusefs.Config{
		FilesDir:      filesDir,
		FilesQuota:    filesQuota,
		Blocks:        st.mem,
		Evict:         st.evict,
		Readahead:     readahead,
		Batch:         st.batch,
		ReadTimeout:   c.ReadTimeout,
		MaxEntries:    c.MaxEntries,
		ListingMemory: c.ListingMemory,
		NoPushPages:   c.NoPushPages,
		WalkAhead:     walkAhead(c, st),
		ExecAhead:     execAhead(c),
	}
	// A background walk makes way for readers waiting for blocks when
	// they share a link to another machine. From this machine's own
	// kubo there is no link to share, and a walk that paused read the Go
	// toolchain (B3 cold) 4 % slower (5 alternating rounds).
	if len(st.remote) > 0 {
		cfg.Demand = st.mem.Demand
	}
	return cfg
}

// rangeFetch is the --range-fetch mode, --batch-fetch counting as car.
func (c *mountConfig) rangeFetch() string {
	if c.BatchFetch {
		return "car"
	}
	return c.RangeFetch
}

// check refuses settings that cannot work together.
func (c *mountConfig) check() error {
	switch {
	case len(c.Substituters) == 0:
		return errors.New("no --substituter given: where should narinfos come from?")
	case len(c.TrustedKeys) == 0 && !c.NoRequireSigs:
		return errors.New("no --trusted-public-key given; signatures are required (pass --no-require-sigs to accept unsigned narinfos)")
	case len(c.TrustedKeys) == 0 && c.RequireCidSig:
		return errors.New("--require-cid-sig needs a --trusted-public-key to check IpfsCidSig against")
	case c.BlockTimeout <= 0:
		return fmt.Errorf("--block-timeout %v must be positive", c.BlockTimeout)
	case c.ReadTimeout <= 0:
		return fmt.Errorf("--read-timeout %v must be positive", c.ReadTimeout)
	case c.ReadTimeout < c.BlockTimeout:
		return fmt.Errorf("--read-timeout %v is shorter than --block-timeout %v: a read could never wait for one block", c.ReadTimeout, c.BlockTimeout)
	case c.MaxEntries <= 0:
		return fmt.Errorf("--max-entries %d must be positive", c.MaxEntries)
	case c.ListingMemory <= 0:
		return fmt.Errorf("--listing-memory %d must be positive", c.ListingMemory)
	case c.RangeFetch != "bytes" && c.RangeFetch != "car" && c.RangeFetch != "off":
		return fmt.Errorf("--range-fetch %q: want bytes, car or off", c.RangeFetch)
	}
	if err := checkIPFSSubstituters(c.Substituters, c.IpnsRefresh); err != nil {
		return err
	}
	if c.Overlay != "" && len(c.Closures) == 0 && c.ClosuresFrom == "" {
		return errors.New("--overlay needs --closure (or --closures-from): the paths to register in the Nix database")
	}
	if c.Metrics != "" && !c.MetricsAllowRemote {
		if err := checkLoopback(c.Metrics); err != nil {
			return fmt.Errorf("--metrics %q: %w; the endpoint also serves /debug/pprof, so pass --metrics-allow-remote (-o metrics-allow-remote) to expose it anyway", c.Metrics, err)
		}
	}
	for _, k := range c.TrustedKeys {
		if _, err := parseTrustedKey(k); err != nil {
			return err
		}
	}
	return nil
}

// checkLoopback accepts host:port addresses that only loopback can reach:
// 127.0.0.0/8, ::1 and localhost. An empty host means every interface.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("not host:port: %w", err)
	}
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	if host == "" {
		return errors.New("an empty host listens on every interface, not only loopback")
	}
	return fmt.Errorf("%q is not a loopback address (127.0.0.0/8, ::1 or localhost)", host)
}

// parseTrustedKey parses a --trusted-public-key. Its errors name the key by
// its name part only: a secret key pasted here by mistake must not end up
// in a log or a terminal scrollback.
func parseTrustedKey(s string) (narindex.PublicKey, error) {
	pk, err := narindex.ParsePublicKey(s)
	if err == nil {
		return pk, nil
	}
	name, b64, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok || name == "" || b64 == "" {
		return pk, errors.New("--trusted-public-key: not a public key: want name:base64, as in the .pub file nix-store --generate-binary-cache-key writes")
	}
	raw, decErr := base64.StdEncoding.DecodeString(b64)
	switch {
	case decErr != nil:
		return pk, fmt.Errorf("--trusted-public-key %q: the part after the name is not base64", name)
	case len(raw) == ed25519.PrivateKeySize:
		return pk, fmt.Errorf("--trusted-public-key %q: this looks like a secret key (%d bytes); give the public key instead (the .pub file, or nix key convert-secret-to-public), and keep the secret one secret", name, len(raw))
	default:
		return pk, fmt.Errorf("--trusted-public-key %q: the key is %d bytes, want %d", name, len(raw), ed25519.PublicKeySize)
	}
}

const mountOptionsHelp = `Mount options (-o), as in fstab:
  NAME=VALUE         any flag above that takes a value, e.g. substituter=URL,
                     trusted-public-key=KEY, memory-cache=SIZE, read-timeout=30s,
                     listing-memory=SIZE, metrics=ADDR (substituter, gateway and
                     trusted-public-key may repeat; ',' inside a value is not
                     supported)
  NAME               any flag above that takes no value, e.g. no-require-sigs,
                     require-cid-sig, no-passthrough, no-push-pages,
                     metrics-allow-remote, debug
  require-sigs       undoes no-require-sigs
  allow_other        let every user read the mount (needed for a /nix/store overlay)
  default_permissions, nosuid, nodev, noexec, exec, suid, dev
                     passed to the kernel (default_permissions always is: the
                     kernel checks modes itself)
  ro                 accepted (the mount is always read-only); rw is refused
  _netdev, nofail, noauto, auto, user, users, defaults
                     fstab-only words, ignored
`

// applyOptions applies one -o argument: comma-separated words. A word
// named after a flag sets that flag through fs, so both spellings share one
// definition.
func (c *mountConfig) applyOptions(fs *pflag.FlagSet, s string) error {
	for _, o := range strings.Split(s, ",") {
		if o == "" {
			continue
		}
		key, val, hasVal := strings.Cut(o, "=")
		if f := fs.Lookup(key); f != nil && !notOptions[key] {
			if !hasVal {
				if f.NoOptDefVal == "" {
					return fmt.Errorf("mount option %q needs a value (%s=...)", key, key)
				}
				val = f.NoOptDefVal
			} else if val == "" && f.NoOptDefVal == "" {
				return fmt.Errorf("mount option %q needs a value (%s=...)", key, key)
			}
			if err := fs.Set(key, val); err != nil {
				// The value may be a key: name the option, and the
				// value only when it cannot be one.
				if key == "trusted-public-key" {
					return fmt.Errorf("mount option %q: %w", key, err)
				}
				return fmt.Errorf("mount option %q: %w", o, err)
			}
			continue
		}
		switch key {
		case "require-sigs":
			c.NoRequireSigs = false
		case "allow_other":
			c.AllowOther = true
		case "default_permissions", "nosuid", "nodev", "noexec", "exec", "suid", "dev":
			c.KernelOptions = append(c.KernelOptions, key)
		case "ro", "_netdev", "nofail", "noauto", "auto", "user", "users", "defaults":
		case "rw":
			return errors.New("mount option rw: ipnix mounts are read-only")
		default:
			// The word only: a mistyped name may carry a key as value.
			return fmt.Errorf("unknown mount option %q", key)
		}
	}
	return nil
}

func runMount(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseMountArgs(args, stdout)
	if err != nil {
		return err
	}
	log := newLogger(stderr, c.Debug)
	// Keep the process near its configured size: the cache holds large
	// pointer-free byte slices, so a tighter GC costs little, while the
	// default (heap may double before a collection) would let RSS reach
	// twice the cache. The limit follows the listings actually held (the
	// mount reports their estimated size as it changes): a limit below
	// what they hold would have the GC run without end, one at their full
	// budget would let garbage grow into it. GOMEMLIMIT, when set, wins.
	var onListings func(int64)
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit(c, 0))
		onListings = func(b int64) { debug.SetMemoryLimit(memoryLimit(c, b)) }
	}
	runtime.GOMAXPROCS(mountProcs(os.Getenv("GOMAXPROCS") != "", runtime.GOMAXPROCS(0)))

	st, res, runIPNS, err := openSources(ctx, blockFlags{API: c.API, Gateways: c.Gateways, BlockTimeout: c.BlockTimeout,
		CacheDir: c.CacheDir, DiskBytes: c.CacheSize / 2, DiskBlocks: c.DiskBlocks, MemoryBytes: c.MemoryCache, RangeFetch: c.rangeFetch(), KuboRepo: c.KuboRepo},
		trustFlags{c.Substituters, c.TrustedKeys, !c.NoRequireSigs, c.RequireCidSig, c.IpnsRefresh}, log)
	if err != nil {
		return err
	}
	defer st.Close()
	runIPNS(ctx)
	warnUnanswered(ctx, res.Substituters, c.Gateways, log)
	fetched, mem, disk, names := &st.fetched, st.mem, st.disk, st.names
	cfg := fsConfig(c, st)
	cfg.Resolver, cfg.OnListings, cfg.Log = res, onListings, log
	fsys, err := fusefs.New(cfg)
	if err != nil {
		return err
	}
	defer fsys.Close()
	if disk != nil {
		// A block whose bytes a local copy holds need not be on disk twice;
		// prefetched (pinned) blocks stay, as the copies may go first.
		fsys.SetCopiedBlocks(disk.Release)
	}
	closure, roots, err := preloadClosures(ctx, c, res, fsys, stderr)
	if err != nil {
		return err
	}
	if c.Metrics != "" {
		ln, err := listenMetrics(c.Metrics, c.MetricsAllowRemote)
		if err != nil {
			return usageError{fmt.Errorf("--metrics %q: %w", c.Metrics, err)}
		}
		stopMetrics := serveMetrics(ln, &metrics{fetched: fetched, mem: mem, disk: disk, local: st.local, fs: fsys}, log)
		defer stopMetrics()
		fmt.Fprintf(stderr, "ipnix: metrics on http://%s/metrics\n", ln.Addr())
	}
	srv, err := fusefs.Mount(c.MountPoint, fsys, fusefs.MountOptions{
		AllowOther:    c.AllowOther,
		Options:       c.KernelOptions,
		Debug:         c.Debug,
		NoPassthrough: c.NoPassthrough,
	})
	if err != nil {
		return codedError{exitMount, err}
	}
	var ovl *overlay
	if c.Overlay != "" {
		if ovl, err = startOverlay(c.Overlay, c.MountPoint, closure, roots, log); err != nil {
			unmountServer(srv, c.MountPoint, log)
			return codedError{exitMount, err}
		}
		fmt.Fprintf(stderr, "ipnix: %s overlaid on %s; %d store paths registered\n", c.MountPoint, c.Overlay, len(closure))
	}
	fmt.Fprintf(stderr, "ipnix: serving %s (substituters: %s; block sources: %s)\n", c.MountPoint, strings.Join(c.Substituters, " "), strings.Join(names, ", "))
	notifyReady(log) // systemd Type=notify: the store is mounted
	signalReady()    // mount(8) through mount.fuse.ipnix
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()
	select {
	case <-done:
		log.Info("unmounted from outside", "dir", c.MountPoint)
	case <-ctx.Done():
		notifyStopping()
		if ovl != nil {
			ovl.stop()
		}
		unmountServer(srv, c.MountPoint, log)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			log.Warn("mount still busy; exiting with it detached", "dir", c.MountPoint)
		}
	}
	fmt.Fprintf(stderr, "ipnix: unmounted %s; fetched %d blocks, %d bytes\n", c.MountPoint, fetched.Blocks.Load(), fetched.Bytes.Load())
	return nil
}

// memoryLimit is the GC's soft limit with listings of listingBytes (as
// estimated) held: the block cache, twice the listings (the estimate is
// rough, and parsing one needs room), and headroom.
func memoryLimit(c *mountConfig, listingBytes int64) int64 {
	return c.MemoryCache + 2*min(listingBytes, c.ListingMemory) + memoryHeadroom
}

// listenMetrics listens on addr, and checks the address it got as well as
// the one asked for: a name like localhost could resolve to anything.
func listenMetrics(addr string, allowRemote bool) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !allowRemote && !tcp.IP.IsLoopback() {
		ln.Close()
		return nil, fmt.Errorf("listening on %s, which is not loopback (see --metrics-allow-remote)", tcp)
	}
	return ln, nil
}

// unmounter is the part of *fuse.Server unmountServer needs.
type unmounter interface{ Unmount() error }

// unmountServer unmounts, retrying while the mount is busy, and detaches it
// lazily as a last resort so the process can always exit.
func unmountServer(srv unmounter, dir string, log *slog.Logger) {
	for i := range 5 {
		err := srv.Unmount()
		if err == nil {
			return
		}
		log.Warn("unmount failed; retrying", "dir", dir, "attempt", i+1, "err", err)
		time.Sleep(200 * time.Millisecond)
	}
	log.Warn("detaching busy mount lazily", "dir", dir)
	_ = fusefs.Detach(dir)
}

// localGateway finds the HTTP gateway of the kubo node whose RPC API we
// use, when it listens on loopback: the gateway file kubo writes into
// $IPFS_PATH (when the API came from there too), else its configuration.
func localGateway(ctx context.Context, api string, k *fetch.Kubo) string {
	if api == "" {
		root := os.Getenv("IPFS_PATH")
		if root == "" {
			if home, err := os.UserHomeDir(); err == nil {
				root = filepath.Join(home, ".ipfs")
			}
		}
		if b, err := os.ReadFile(filepath.Join(root, "gateway")); err == nil {
			if u := strings.TrimSpace(string(b)); strings.HasPrefix(u, "http://127.0.0.1:") {
				return u
			}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	u, err := k.GatewayURL(ctx)
	if err != nil {
		return ""
	}
	return u
}

func pingKubo(ctx context.Context, k *fetch.Kubo) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return k.Ping(ctx)
}

// closureRoots gives the base names of --closure and --closures-from.
func closureRoots(c *mountConfig) ([]string, error) {
	args := append([]string(nil), c.Closures...)
	if c.ClosuresFrom != "" {
		data, err := os.ReadFile(c.ClosuresFrom)
		if err != nil {
			return nil, usageError{fmt.Errorf("--closures-from: %w", err)}
		}
		for line := range strings.Lines(string(data)) {
			line, _, _ = strings.Cut(line, "#")
			if line = strings.TrimSpace(line); line != "" {
				args = append(args, line)
			}
		}
	}
	var roots []string
	for _, a := range args {
		p, err := narindex.StorePathArg(a)
		if err != nil {
			return nil, usageError{fmt.Errorf("--closure: %w", err)}
		}
		roots = append(roots, p.Base())
	}
	return roots, nil
}

// preloadClosures resolves the closures asked for (narinfos, signatures,
// references, in parallel) and loads every path of them into the mount
// before it serves, so that its root lists them from the start.
func preloadClosures(ctx context.Context, c *mountConfig, res *narindex.Resolver, fsys *fusefs.FS, stderr io.Writer) (closure []*narindex.Resolved, roots []string, err error) {
	roots, err = closureRoots(c)
	if err != nil || len(roots) == 0 {
		return nil, nil, err
	}
	start := time.Now()
	closure, err = res.Closure(ctx, roots, closureWorkers)
	if err == nil {
		err = fsys.Preload(ctx, closure, closureWorkers)
	}
	if err != nil {
		return nil, nil, codedError{exitClosure, fmt.Errorf("resolving the closures asked for: %w", err)}
	}
	fmt.Fprintf(stderr, "ipnix: %d store paths of %d closures ready in %v\n", len(closure), len(roots), time.Since(start).Round(time.Millisecond))
	return closure, roots, nil
}

// closureWorkers bounds the narinfos fetched and paths loaded at once at
// start.
const closureWorkers = 8

// newResolver builds the resolver of --substituter and --trusted-public-key
// flags; errors are usage errors naming the flag. ipfs opens ipfs:// and
// ipns:// substituters; nil refuses them.
func newResolver(substituters, keys []string, requireSigs, requireCidSig bool, ipfs *ipfsCaches) (*narindex.Resolver, error) {
	res := &narindex.Resolver{RequireSigs: requireSigs, RequireCidSig: requireCidSig}
	for _, k := range keys {
		pk, err := parseTrustedKey(k)
		if err != nil {
			return nil, usageError{err}
		}
		res.TrustedKeys = append(res.TrustedKeys, pk)
	}
	for _, u := range substituters {
		if ipfscache.IsURL(u) {
			if ipfs == nil {
				return nil, usageError{fmt.Errorf("--substituter %q: ipfs:// and ipns:// caches are read by mount and serve only", u)}
			}
			s, err := ipfs.open(u)
			if err != nil {
				return nil, usageError{fmt.Errorf("--substituter: %w", err)}
			}
			res.Substituters = append(res.Substituters, s)
			continue
		}
		s, err := narindex.OpenSubstituter(u, narindex.SubstituterOptions{})
		if err != nil {
			return nil, usageError{fmt.Errorf("--substituter %q: %w", u, err)}
		}
		if dir, ok := strings.CutPrefix(s.URL(), "file://"); ok {
			// A local cache that is not there is a typo, not an outage.
			if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
				return nil, usageError{fmt.Errorf("--substituter %q: %s is not a directory", u, dir)}
			}
		}
		res.Substituters = append(res.Substituters, s)
	}
	return res, nil
}

// warnUnanswered names, in a warning, each substituter and --gateway that
// does not answer at start (in parallel, a few seconds at most): the mount
// still starts, since sources come and go.
func warnUnanswered(ctx context.Context, subs []narindex.Substituter, gateways []string, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, s := range subs {
		wg.Go(func() {
			if _, err := s.CacheInfo(ctx); err != nil {
				log.Warn("substituter not answering at start", "substituter", s.URL(), "err", err)
			}
		})
	}
	for _, g := range gateways {
		wg.Go(func() {
			req, err := http.NewRequestWithContext(ctx, http.MethodHead, strings.TrimRight(g, "/")+"/ipfs/bafkqaaa", nil)
			if err == nil {
				var resp *http.Response
				if resp, err = http.DefaultClient.Do(req); err == nil {
					resp.Body.Close()
				}
			}
			if err != nil {
				log.Warn("gateway not answering at start", "gateway", g, "err", err)
			}
		})
	}
	wg.Wait()
}
