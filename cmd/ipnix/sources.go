package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/cache"
	"github.com/ipnix/ipnix/fetch"
)

// blockFlags are the flags that choose where blocks come from and how
// they are cached, shared by mount and serve.
type blockFlags struct {
	API          string
	Gateways     []string
	BlockTimeout time.Duration
	CacheDir     string
	DiskBytes    int64 // quota of the disk block store under CacheDir
	MemoryBytes  int64
	RangeFetch   string // bytes, car or off (see --range-fetch)
}

// blockStack is the read path below a mount or a server: each source
// verified, failover between them, failures that cost time remembered
// briefly, then the disk and memory caches.
type blockStack struct {
	fetched fetch.Stats
	mem     *cache.Memory
	disk    *cache.Disk       // nil without --cache-dir
	batch   *fetch.Batch      // nil with --range-fetch off or no gateway
	names   []string          // the sources, in the order asked
	top     fetch.BlockGetter // mem
}

// openBlocks builds the block stack of f. The local kubo's gateway is
// used first when none is given and it listens on loopback.
func openBlocks(ctx context.Context, f blockFlags, log *slog.Logger) (*blockStack, error) {
	kubo, err := fetch.NewKubo(f.API, f.BlockTimeout)
	if err != nil {
		return nil, usageError{fmt.Errorf("--api: %w", err)}
	}
	if err := pingKubo(ctx, kubo); err != nil {
		log.Warn("kubo API not answering yet; reads will fail until it does", "api", kubo.String(), "err", err)
	}
	gateways := f.Gateways
	if len(gateways) == 0 {
		if gw := localGateway(ctx, f.API, kubo); gw != "" {
			gateways = []string{gw}
		}
	}
	st := &blockStack{}
	var sources fetch.Failover
	for _, u := range gateways {
		gw, err := fetch.NewGateway(u, f.BlockTimeout)
		if err != nil {
			return nil, usageError{fmt.Errorf("--gateway: %w", err)}
		}
		sources = append(sources, fetch.Verify(gw, &st.fetched))
		st.names = append(st.names, gw.String())
		if st.batch == nil {
			if st.batch, err = st.rangeFetcher(f.RangeFetch, gw, log); err != nil {
				return nil, err
			}
		}
	}
	if f.RangeFetch == "car" && st.batch == nil {
		return nil, usageError{errors.New("--range-fetch car needs a --gateway (or a local kubo gateway to discover)")}
	}
	sources = append(sources, fetch.Verify(kubo, &st.fetched))
	st.names = append(st.names, kubo.String())
	// A block that no source delivered in time fails again at once for a
	// few seconds: the kernel's immediate retries of a failed read must
	// not each wait the whole --read-timeout.
	var below fetch.BlockGetter = fetch.RememberFailures(sources, fetch.DefaultFailureMemory)
	if f.CacheDir != "" {
		st.disk, err = cache.OpenDisk(f.CacheDir, f.DiskBytes, below)
		if err != nil {
			return nil, usageError{fmt.Errorf("--cache-dir: %w", err)}
		}
		below = st.disk
	}
	st.mem = cache.NewMemory(below, f.MemoryBytes)
	if st.batch != nil {
		st.batch.Held, st.batch.Expect, st.batch.Put = st.mem.Held, st.mem.Expect, st.mem.Put
	}
	return st, nil
}

// rangeFetcher returns how read-ahead fetches runs of blocks from gw in
// one request each (nil for mode off). The blocks it delivers are
// verified (FetchBytes and FetchRange check each against its CID) and
// counted as fetched.
func (st *blockStack) rangeFetcher(mode string, gw *fetch.Gateway, log *slog.Logger) (*fetch.Batch, error) {
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
				return f.FetchBytes(ctx, gw, run, counted(put))
			}}, nil
	case "car":
		return &fetch.Batch{OnError: onError,
			Fetch: func(ctx context.Context, f *fetch.File, run []fetch.LeafRange, put func(blocks.Block)) (int, error) {
				last := run[len(run)-1]
				return f.FetchRange(ctx, gw, run[0].Start, last.Start+last.Size, counted(put))
			}}, nil
	}
	return nil, usageError{fmt.Errorf("--range-fetch %q: want bytes, car or off", mode)}
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
