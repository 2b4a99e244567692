package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/spf13/pflag"

	"github.com/ipnix/ipnix/cache"
	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fusefs"
	"github.com/ipnix/ipnix/narindex"
)

// memoryHeadroom is what the mount process may use beside its block cache:
// in-flight blocks, parsed DAG nodes, listings, FUSE buffers.
const memoryHeadroom = 64 << 20

// mountConfig is everything `ipnix mount` is told, from flags and -o.
type mountConfig struct {
	MountPoint    string
	Substituters  []string
	TrustedKeys   []string
	API           string
	Gateways      []string
	MemoryCache   int64
	CacheDir      string
	CacheSize     int64
	Readahead     int64
	BatchFetch    bool
	NoPassthrough bool
	NoRequireSigs bool
	BlockTimeout  time.Duration
	Metrics       string
	Debug         bool
	AllowOther    bool
	KernelOptions []string
}

const mountSynopsis = `Usage: ipnix mount [flags] [SOURCE] MOUNTPOINT

Serve a read-only Nix store at MOUNTPOINT. <MOUNTPOINT>/<hash>-<name> appears
when looked up, once its narinfo is found in a substituter, signed by a
trusted key and carries an IpfsCid; its files are fetched from IPFS block by
block when read, each block checked against its CID, and the whole NAR checked
against the signed NarHash once every file has been read. Runs in the
foreground; SIGINT or SIGTERM unmounts. SOURCE is ignored (mount(8) passes one).

Example:
  ipnix mount --substituter file:///srv/cache \
    --trusted-public-key "$(cat cache.pub)" /mnt/ipnix
`

func parseMountArgs(args []string, out io.Writer) (*mountConfig, error) {
	c := &mountConfig{MemoryCache: 64 << 20, CacheSize: 10 << 30, Readahead: 8 << 20}
	fs := newFlagSet("mount", mountSynopsis, out)
	fs.StringArrayVar(&c.Substituters, "substituter", nil, "binary cache holding narinfos with IpfsCid: file:///dir or http(s)://host/path (repeatable; asked in order)")
	fs.StringArrayVar(&c.TrustedKeys, "trusted-public-key", nil, "public key narinfos must be signed with, as name:base64 (repeatable)")
	fs.StringVar(&c.API, "api", "", "kubo RPC API, a multiaddr (/ip4/127.0.0.1/tcp/5001) or http:// URL (default: $IPFS_PATH/api, else /ip4/127.0.0.1/tcp/5001)")
	fs.StringArrayVar(&c.Gateways, "gateway", nil, "HTTP trustless gateway to fetch blocks from before the kubo RPC API, e.g. http://127.0.0.1:8080 (repeatable; default: the local kubo's gateway when it listens on loopback)")
	fs.Var(sizeValue{&c.MemoryCache}, "memory-cache", "bytes of blocks kept in memory, e.g. 256MiB")
	fs.StringVar(&c.CacheDir, "cache-dir", "", "directory for the on-disk cache (verified blocks, and local copies of verified files for FUSE passthrough); none if empty")
	fs.Var(sizeValue{&c.CacheSize}, "cache-size", "bytes the on-disk cache may hold")
	fs.Var(sizeValue{&c.Readahead}, "readahead", "largest window fetched ahead of a sequential reader; 0 disables")
	fs.BoolVar(&c.NoPassthrough, "no-passthrough", false, "never hand local copies of verified files to the kernel (FUSE passthrough: Linux 6.9+, root, --cache-dir). Without passthrough the kernel opens files without asking ipnix, which is faster for many small files and slower for large files read after a remount")
	fs.BoolVar(&c.BatchFetch, "batch-fetch", false, "fetch read-ahead ranges from the first --gateway as one CAR stream each (fewer requests: for remote gateways)")
	fs.BoolVar(&c.NoRequireSigs, "no-require-sigs", false, "show store paths whose narinfo is unsigned or signed by an untrusted key (NOT recommended)")
	fs.DurationVar(&c.BlockTimeout, "block-timeout", fetch.DefaultBlockTimeout, "longest wait for one block before the read fails with EIO")
	fs.StringVar(&c.Metrics, "metrics", "", "serve counters over HTTP on this loopback address, e.g. 127.0.0.1:9464 (/metrics, Prometheus text)")
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
		if err := c.applyOptions(o); err != nil {
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
	if len(c.Substituters) == 0 {
		return nil, usageError{errors.New("no --substituter given: where should narinfos come from?")}
	}
	if len(c.TrustedKeys) == 0 && !c.NoRequireSigs {
		return nil, usageError{errors.New("no --trusted-public-key given; signatures are required (pass --no-require-sigs to accept unsigned narinfos)")}
	}
	if c.BlockTimeout <= 0 {
		return nil, usageError{fmt.Errorf("--block-timeout %v must be positive", c.BlockTimeout)}
	}
	return c, nil
}

const mountOptionsHelp = `Mount options (-o), as in fstab:
  substituter=URL, trusted-public-key=KEY, api=ADDR, gateway=URL, memory-cache=SIZE,
  cache-dir=DIR, cache-size=SIZE,
  readahead=SIZE, block-timeout=DURATION, metrics=ADDR
                     the flags of the same name (substituter and trusted-public-key
                     may repeat; use ';' inside one value is not supported)
  no-require-sigs, batch-fetch, no-passthrough
                     as the flags; require-sigs undoes no-require-sigs
  debug              as --debug
  allow_other        let every user read the mount (needed for a /nix/store overlay)
  default_permissions, nosuid, nodev, noexec, exec, suid, dev
                     passed to the kernel
  ro                 accepted (the mount is always read-only); rw is refused
  _netdev, nofail, noauto, auto, user, users, defaults
                     fstab-only words, ignored
`

// applyOptions applies one -o argument: comma-separated words.
func (c *mountConfig) applyOptions(s string) error {
	for _, o := range strings.Split(s, ",") {
		if o == "" {
			continue
		}
		key, val, hasVal := strings.Cut(o, "=")
		need := func() error {
			if !hasVal || val == "" {
				return fmt.Errorf("mount option %q needs a value (%s=...)", key, key)
			}
			return nil
		}
		var err error
		switch key {
		case "substituter":
			if err = need(); err == nil {
				c.Substituters = append(c.Substituters, val)
			}
		case "trusted-public-key":
			if err = need(); err == nil {
				c.TrustedKeys = append(c.TrustedKeys, val)
			}
		case "api":
			if err = need(); err == nil {
				c.API = val
			}
		case "gateway":
			if err = need(); err == nil {
				c.Gateways = append(c.Gateways, val)
			}
		case "memory-cache":
			if err = need(); err == nil {
				c.MemoryCache, err = parseSize(val)
			}
		case "cache-dir":
			if err = need(); err == nil {
				c.CacheDir = val
			}
		case "cache-size":
			if err = need(); err == nil {
				c.CacheSize, err = parseSize(val)
			}
		case "readahead":
			if err = need(); err == nil {
				c.Readahead, err = parseSize(val)
			}
		case "block-timeout":
			if err = need(); err == nil {
				c.BlockTimeout, err = time.ParseDuration(val)
			}
		case "metrics":
			if err = need(); err == nil {
				c.Metrics = val
			}
		case "batch-fetch":
			c.BatchFetch = true
		case "no-passthrough":
			c.NoPassthrough = true
		case "no-require-sigs":
			c.NoRequireSigs = true
		case "require-sigs":
			c.NoRequireSigs = false
		case "debug":
			c.Debug = true
		case "allow_other":
			c.AllowOther = true
		case "default_permissions", "nosuid", "nodev", "noexec", "exec", "suid", "dev":
			c.KernelOptions = append(c.KernelOptions, key)
		case "ro", "_netdev", "nofail", "noauto", "auto", "user", "users", "defaults":
		case "rw":
			return errors.New("mount option rw: ipnix mounts are read-only")
		default:
			return fmt.Errorf("unknown mount option %q", o)
		}
		if err != nil {
			return fmt.Errorf("mount option %q: %w", o, err)
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
	// twice the cache. GOMEMLIMIT, when set, wins.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(c.MemoryCache + memoryHeadroom)
	}

	res := &narindex.Resolver{RequireSigs: !c.NoRequireSigs}
	for _, k := range c.TrustedKeys {
		pk, err := narindex.ParsePublicKey(k)
		if err != nil {
			return usageError{fmt.Errorf("--trusted-public-key %q: %w", k, err)}
		}
		res.TrustedKeys = append(res.TrustedKeys, pk)
	}
	for _, u := range c.Substituters {
		s, err := narindex.OpenSubstituter(u, narindex.SubstituterOptions{})
		if err != nil {
			return usageError{fmt.Errorf("--substituter %q: %w", u, err)}
		}
		res.Substituters = append(res.Substituters, s)
	}
	kubo, err := fetch.NewKubo(c.API, c.BlockTimeout)
	if err != nil {
		return usageError{fmt.Errorf("--api: %w", err)}
	}
	if err := pingKubo(ctx, kubo); err != nil {
		log.Warn("kubo API not answering yet; reads will fail until it does", "api", kubo.String(), "err", err)
	}
	gateways := c.Gateways
	if len(gateways) == 0 {
		if gw := localGateway(ctx, c.API, kubo); gw != "" {
			gateways = []string{gw}
		}
	}
	var fetched fetch.Stats
	var sources fetch.Failover
	var names []string
	var batch fetch.RangeSource
	for _, u := range gateways {
		gw, err := fetch.NewGateway(u, c.BlockTimeout)
		if err != nil {
			return usageError{fmt.Errorf("--gateway: %w", err)}
		}
		sources = append(sources, fetch.Verify(gw, &fetched))
		names = append(names, gw.String())
		if batch == nil && c.BatchFetch {
			batch = gw
		}
	}
	if c.BatchFetch && batch == nil {
		return usageError{errors.New("--batch-fetch needs a --gateway (or a local kubo gateway to discover)")}
	}
	sources = append(sources, fetch.Verify(kubo, &fetched))
	names = append(names, kubo.String())
	var below fetch.BlockGetter = sources
	var disk *cache.Disk
	if c.CacheDir != "" {
		// Blocks and local file copies share the quota half and half.
		disk, err = cache.OpenDisk(c.CacheDir, c.CacheSize/2, sources)
		if err != nil {
			return usageError{fmt.Errorf("--cache-dir: %w", err)}
		}
		defer disk.Close()
		below = disk
	}
	mem := cache.NewMemory(below, c.MemoryCache)
	evict := mem.Remove
	if disk != nil {
		evict = func(c cid.Cid) { mem.Remove(c); disk.Remove(c) }
	}
	readahead := c.Readahead
	if readahead == 0 {
		readahead = -1 // off
	}
	var filesDir string
	if c.CacheDir != "" {
		filesDir = filepath.Join(c.CacheDir, "files")
	}
	fsys, err := fusefs.New(fusefs.Config{
		FilesDir:   filesDir,
		FilesQuota: c.CacheSize / 2,
		Resolver:   res,
		Blocks:     mem,
		Evict:      evict,
		Readahead:  readahead,
		Batch:      batch,
		Put: func(b blocks.Block) { // verified by FetchRange
			fetched.Blocks.Add(1)
			fetched.Bytes.Add(int64(len(b.RawData())))
			mem.Put(b)
		},
		Log: log,
	})
	if err != nil {
		return err
	}
	defer fsys.Close()
	if c.Metrics != "" {
		ln, err := net.Listen("tcp", c.Metrics)
		if err != nil {
			return usageError{fmt.Errorf("--metrics %q: %w", c.Metrics, err)}
		}
		stopMetrics := serveMetrics(ln, &metrics{fetched: &fetched, mem: mem, disk: disk, fs: fsys}, log)
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
	fmt.Fprintf(stderr, "ipnix: serving %s (substituters: %s; block sources: %s)\n", c.MountPoint, strings.Join(c.Substituters, " "), strings.Join(names, ", "))
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()
	select {
	case <-done:
		log.Info("unmounted from outside", "dir", c.MountPoint)
	case <-ctx.Done():
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
