package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

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
	BatchFetch   bool
}

// blockStack is the read path below a mount or a server: each source
// verified, failover between them, failures that cost time remembered
// briefly, then the disk and memory caches.
type blockStack struct {
	fetched fetch.Stats
	mem     *cache.Memory
	disk    *cache.Disk       // nil without --cache-dir
	batch   fetch.RangeSource // nil without --batch-fetch
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
		if st.batch == nil && f.BatchFetch {
			st.batch = gw
		}
	}
	if f.BatchFetch && st.batch == nil {
		return nil, usageError{errors.New("--batch-fetch needs a --gateway (or a local kubo gateway to discover)")}
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
	return st, nil
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
