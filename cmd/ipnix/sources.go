package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/cache"
	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/prefetch"
)

// blockFlags are the flags that choose where blocks come from and how
// they are cached, shared by mount and serve.
type blockFlags struct {
	API          string
	Gateways     []string
	BlockTimeout time.Duration
	CacheDir     string
	DiskBytes    int64 // quota of the disk block store under CacheDir
	DiskBlocks   diskBlocks
	MemoryBytes  int64
	RangeFetch   string // bytes, car or off (see --range-fetch)
	KuboRepo     string // --kubo-repo: a directory, "none", or "" for auto
}

// diskBlocks says when verified blocks are kept on disk under --cache-dir.
type diskBlocks string

const (
	// diskBlocksAuto keeps them when a block source is remote. A kubo
	// whose API is on loopback or a unix socket, and a gateway on
	// loopback, are local: the node's blockstore already holds every
	// block it hands out (it stores what it fetches from the network), so
	// a second copy would cost a disk write per byte read and buy
	// nothing.
	diskBlocksAuto   diskBlocks = "auto"
	diskBlocksAlways diskBlocks = "always"
	diskBlocksNever  diskBlocks = "never"
)

const diskBlocksHelp = "keep verified blocks on disk under --cache-dir: auto keeps them only when a block source is remote (a --gateway or --api neither on loopback nor a unix socket), since a local kubo's blockstore already holds every block it serves and a second copy would only double the disk writes, or when closures were prefetched into --cache-dir (ipnix prefetch); always; never"

// diskBlocksValue is the pflag.Value of --disk-blocks.
type diskBlocksValue struct{ p *diskBlocks }

func (v diskBlocksValue) String() string {
	if v.p == nil || *v.p == "" {
		return string(diskBlocksAuto)
	}
	return string(*v.p)
}

func (v diskBlocksValue) Set(s string) error {
	switch d := diskBlocks(s); d {
	case diskBlocksAuto, diskBlocksAlways, diskBlocksNever:
		*v.p = d
		return nil
	}
	return fmt.Errorf("%q is not one of auto, always, never", s)
}

func (v diskBlocksValue) Type() string { return "auto|always|never" }

// loopbackURL reports whether URL u names a host on this machine only:
// localhost, 127.0.0.0/8 or ::1. Names are not resolved: any other name
// counts as remote.
func loopbackURL(u string) bool {
	p, err := url.Parse(u)
	if err != nil {
		return false
	}
	host := p.Hostname()
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// localKubo reports whether the kubo RPC API at addr (see
// fetch.KuboAPIURL) is on this machine: a unix socket or loopback.
func localKubo(addr string) bool {
	u, sock, err := fetch.KuboAPIURL(addr)
	if err != nil {
		return false
	}
	return sock != "" || loopbackURL(u)
}

// blockStack is the read path below a mount or a server: each source
// verified, failover between them, failures that cost time remembered
// briefly, then the disk and memory caches.
type blockStack struct {
	fetched  fetch.Stats
	mem      *cache.Memory
	disk     *cache.Disk       // nil without --cache-dir, or when blocks are not kept on disk
	batch    *fetch.Batch      // nil with --range-fetch off, no gateway, or a kubo blockstore read directly
	local    *fetch.Blockstore // the local kubo's blockstore, read directly; nil if none
	names    []string          // the sources, in the order asked
	gateways []string          // base URLs of the gateways asked for blocks, in order
	remote   []string          // the sources not on this machine
	top      fetch.BlockGetter // mem
}

// openBlocks builds the block stack of f. With --gateway and no --api the
// gateways are the only sources: no kubo is asked for anything, so a thin
// client needs none. Otherwise the kubo RPC API comes after the gateways,
// and the local kubo's gateway is used first when none is given and it
// listens on loopback.
func openBlocks(ctx context.Context, f blockFlags, log *slog.Logger) (*blockStack, error) {
	var kubo *fetch.Kubo
	if f.API != "" || len(f.Gateways) == 0 {
		var err error
		if kubo, err = fetch.NewKubo(f.API, f.BlockTimeout); err != nil {
			return nil, usageError{fmt.Errorf("--api: %w", err)}
		}
		if err := pingKubo(ctx, kubo); err != nil {
			log.Warn("kubo API not answering yet; reads will fail until it does", "api", kubo.String(), "err", err)
		}
	}
	gateways := f.Gateways
	if len(gateways) == 0 {
		if gw := localGateway(ctx, f.API, kubo); gw != "" {
			gateways = []string{gw}
		}
	}
	st := &blockStack{}
	var sources fetch.Failover
	var err error
	if st.local, err = localBlockstore(f, kubo != nil, log); err != nil {
		return nil, err
	}
	if st.local != nil {
		st.local.Timeout = f.BlockTimeout
		sources = append(sources, fetch.Verify(st.local, &st.fetched))
		st.names = append(st.names, st.local.String())
	}
	var gws []*fetch.Gateway
	for _, u := range gateways {
		gw, err := fetch.NewGateway(u, f.BlockTimeout)
		if err != nil {
			return nil, usageError{fmt.Errorf("--gateway: %w", err)}
		}
		gws = append(gws, gw)
		sources = append(sources, fetch.Verify(gw, &st.fetched))
		st.names = append(st.names, gw.String())
		st.gateways = append(st.gateways, strings.TrimRight(u, "/"))
		if !loopbackURL(u) {
			st.remote = append(st.remote, gw.String())
		}
	}
	if len(gws) > 0 {
		var err error
		if st.batch, err = st.rangeFetcher(f.RangeFetch, &gatewayPick{gws: gws}, log); err != nil {
			return nil, err
		}
	}
	if f.RangeFetch == "car" && st.batch == nil {
		return nil, usageError{errors.New("--range-fetch car needs a --gateway (or a local kubo gateway to discover)")}
	}
	if st.local != nil && st.batch != nil {
		// A ranged request would have kubo read the same files and copy
		// them through HTTP: read-ahead reads them itself, several at once.
		st.batch = nil
		log.Debug("read-ahead reads blocks from the kubo blockstore, not in ranged requests to a gateway", "blockstore", st.local.String())
	}
	if kubo != nil {
		sources = append(sources, fetch.Verify(kubo, &st.fetched))
		st.names = append(st.names, kubo.String())
		if !localKubo(f.API) {
			st.remote = append(st.remote, kubo.String())
		}
	}
	// A block that no source delivered in time fails again at once for a
	// few seconds: the kernel's immediate retries of a failed read must
	// not each wait the whole --read-timeout.
	var below fetch.BlockGetter = fetch.RememberFailures(sources, fetch.DefaultFailureMemory)
	if st.keepBlocks(f) {
		var err error
		st.disk, err = cache.OpenDisk(f.CacheDir, f.DiskBytes, below)
		if err != nil {
			return nil, usageError{fmt.Errorf("--cache-dir: %w", err)}
		}
		st.disk.Timeout = f.BlockTimeout
		if n, b := st.disk.Pinned(); b > f.DiskBytes {
			log.Warn("the blocks pinned by prefetched closures exceed the disk block store's quota: no other block is kept on disk (raise --cache-size, or drop closures with ipnix cache gc --forget)",
				"pinned_blocks", n, "pinned_bytes", b, "quota", f.DiskBytes)
		}
		below = st.disk
	} else if f.CacheDir != "" && f.DiskBlocks != diskBlocksNever {
		log.Info("not keeping blocks on disk: every block source is on this machine, whose kubo blockstore holds them already (--disk-blocks=always keeps them anyway)", "sources", strings.Join(st.names, ", "))
	}
	st.mem = cache.NewMemory(below, f.MemoryBytes)
	if st.batch != nil {
		st.batch.Held, st.batch.Expect, st.batch.Put = st.mem.Held, st.mem.Expect, st.mem.Put
	}
	return st, nil
}

const kuboRepoHelp = "kubo repository on this machine whose blockstore (flatfs, kubo's default) is read directly before any source is asked: a block kubo holds then costs a file read, not kubo's CPU to read it and copy it through HTTP; blocks are checked against their CIDs as from any source, and those it lacks come from the gateways and the API. Default: the repository the ipfs command uses ($IPFS_PATH, else ~/.ipfs) when its api file names the --api kubo; \"none\" never reads one"

// localBlockstore opens the blockstore of the kubo repository read
// directly (--kubo-repo): the directory given (an error if it has none),
// none for "none"; by default, when a kubo on this machine is asked
// (--api), that of the repository the ipfs command would use ($IPFS_PATH,
// else ~/.ipfs) if its api file names that kubo and it has a flatfs
// blockstore, as the ipfs command finds its daemon.
func localBlockstore(f blockFlags, haveKubo bool, log *slog.Logger) (*fetch.Blockstore, error) {
	switch {
	case f.KuboRepo == "none":
		return nil, nil
	case f.KuboRepo != "":
		bs, err := fetch.OpenBlockstore(f.KuboRepo)
		if err != nil {
			return nil, usageError{fmt.Errorf("--kubo-repo: %w", err)}
		}
		return bs, nil
	case !haveKubo || !localKubo(f.API):
		return nil, nil
	}
	repo := fetch.KuboRepoPath()
	if repo == "" {
		return nil, nil
	}
	addr, err := fetch.RepoAPI(repo)
	if err != nil {
		return nil, nil
	}
	u1, s1, err1 := fetch.KuboAPIURL(f.API)
	u2, s2, err2 := fetch.KuboAPIURL(addr)
	if err1 != nil || err2 != nil || u1 != u2 || s1 != s2 {
		return nil, nil
	}
	bs, err := fetch.OpenBlockstore(repo)
	if err != nil {
		log.Debug("not reading the local kubo's blockstore directly", "repo", repo, "err", err)
		return nil, nil
	}
	return bs, nil
}

// gatewayPick is the gateway that ranged fetches go to: the first, until a
// ranged fetch from it fails (a gateway that is down or lies), then the
// next, in turn. Single blocks fail over on their own (fetch.Failover).
type gatewayPick struct {
	gws []*fetch.Gateway
	cur atomic.Int32
}

// get returns the gateway to ask and its number, for failed.
func (p *gatewayPick) get() (int32, *fetch.Gateway) {
	i := p.cur.Load()
	return i, p.gws[i]
}

// failed moves on from gateway i after err, unless the fetch was
// cancelled by its caller (or another fetch has moved on already).
func (p *gatewayPick) failed(i int32, err error) {
	if err == nil || errors.Is(err, context.Canceled) || len(p.gws) < 2 {
		return
	}
	p.cur.CompareAndSwap(i, (i+1)%int32(len(p.gws)))
}

// rangeFetcher returns how read-ahead fetches runs of blocks from a
// gateway in one request each (nil for mode off). The blocks it delivers
// are verified (FetchBytes and FetchRange check each against its CID) and
// counted as fetched.
func (st *blockStack) rangeFetcher(mode string, pick *gatewayPick, log *slog.Logger) (*fetch.Batch, error) {
	counted := func(put func(blocks.Block)) func(blocks.Block) {
		return func(b blocks.Block) {
			st.fetched.Blocks.Add(1)
			st.fetched.Bytes.Add(int64(len(b.RawData())))
			put(b)
		}
	}
	onError := func(err error) {
		st.fetched.Failures.Add(1)
		if errors.Is(err, fetch.ErrHashMismatch) {
			st.fetched.HashMismatches.Add(1)
			log.Warn("ranged fetch refused: bytes do not match their leaf CIDs; fetching those blocks one by one", "err", err)
			return
		}
		log.Debug("ranged fetch failed; fetching its blocks one by one", "err", err)
	}
	switch mode {
	case "off":
		return nil, nil
	case "bytes", "":
		return &fetch.Batch{OnError: onError,
			Fetch: func(ctx context.Context, f *fetch.File, run []fetch.LeafRange, put func(blocks.Block)) (int, error) {
				i, gw := pick.get()
				n, err := f.FetchBytes(ctx, gw, run, counted(put))
				pick.failed(i, err)
				return n, err
			},
			Stream: func(ctx context.Context, f *fetch.File, from, to int64, resolved func([]fetch.LeafRange), put func(fetch.LeafRange, blocks.Block) error) (int64, error) {
				i, gw := pick.get()
				end, err := f.Stream(ctx, gw, from, to, resolved, func(l fetch.LeafRange, b blocks.Block) error {
					st.fetched.Blocks.Add(1)
					st.fetched.Bytes.Add(int64(len(b.RawData())))
					return put(l, b)
				})
				if errors.Is(err, fetch.ErrHashMismatch) {
					onError(err)
					pick.failed(i, err)
				}
				return end, err
			}}, nil
	case "car":
		return &fetch.Batch{OnError: onError,
			Fetch: func(ctx context.Context, f *fetch.File, run []fetch.LeafRange, put func(blocks.Block)) (int, error) {
				last := run[len(run)-1]
				i, gw := pick.get()
				n, err := f.FetchRange(ctx, gw, run[0].Start, last.Start+last.Size, counted(put))
				pick.failed(i, err)
				return n, err
			}}, nil
	}
	return nil, usageError{fmt.Errorf("--range-fetch %q: want bytes, car or off", mode)}
}

// keepBlocks decides whether verified blocks go to disk (see diskBlocks).
// Under auto, a cache directory holding prefetched closures is always
// used: their blocks may be nowhere else (the machine is offline).
func (st *blockStack) keepBlocks(f blockFlags) bool {
	switch {
	case f.CacheDir == "" || f.DiskBlocks == diskBlocksNever:
		return false
	case f.DiskBlocks == diskBlocksAlways || len(st.remote) > 0:
		return true
	}
	return prefetch.Recorded(f.CacheDir)
}

// evict drops a block from every cache.
func (st *blockStack) evict(c cid.Cid) {
	st.mem.Remove(c)
	if st.disk != nil {
		st.disk.Remove(c)
	}
}

// Close closes the disk store.
func (st *blockStack) Close() {
	if st.disk != nil {
		st.disk.Close()
	}
}
