package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/ipfscache"
	"github.com/ipnix/ipnix/narindex"
)

const ipnsRefreshHelp = "how often an ipns:// substituter's name is resolved again, so that paths published after the start appear (at least 1s)"

// ipfsCaches opens the ipfs:// and ipns:// substituters of a mount or a
// server. They read through the command's own block stack (every block
// checked against its CID, the same sources and caches as the NARs), and
// resolve IPNS names through the gateways (signed records, verified) and
// then kubo's RPC API.
type ipfsCaches struct {
	blocks    fetch.BlockGetter
	resolvers []ipfscache.NameResolver
	refresh   time.Duration
	log       *slog.Logger
	caches    []*ipfscache.Cache
}

// newIPFSCaches prepares ipfs:// and ipns:// substituters over st; api is
// the --api flag.
func newIPFSCaches(st *blockStack, api string, timeout, refresh time.Duration, log *slog.Logger) (*ipfsCaches, error) {
	ic := &ipfsCaches{blocks: st.mem, refresh: refresh, log: log}
	for _, gw := range st.gateways {
		ic.resolvers = append(ic.resolvers, &ipfscache.GatewayResolver{Base: gw, Timeout: timeout})
	}
	// As for blocks: with gateways and no --api, no kubo is asked.
	if api == "" && len(st.gateways) > 0 {
		return ic, nil
	}
	kr, err := ipfscache.NewKuboResolver(api, timeout)
	if err != nil {
		return nil, usageError{fmt.Errorf("--api: %w", err)}
	}
	ic.resolvers = append(ic.resolvers, kr)
	return ic, nil
}

// open opens one ipfs:// or ipns:// substituter.
func (ic *ipfsCaches) open(u string) (narindex.Substituter, error) {
	ref, err := ipfscache.ParseURL(u)
	if err != nil {
		return nil, err
	}
	c, err := ipfscache.Open(ref, ipfscache.Options{Blocks: ic.blocks, Resolvers: ic.resolvers, Refresh: ic.refresh, Log: ic.log})
	if err != nil {
		return nil, err
	}
	ic.caches = append(ic.caches, c)
	return c.Substituter(), nil
}

// run re-resolves the IPNS names until ctx ends.
func (ic *ipfsCaches) run(ctx context.Context) {
	if ic == nil {
		return
	}
	for _, c := range ic.caches {
		go c.Run(ctx)
	}
}

// checkIPFSSubstituters refuses malformed ipfs:// and ipns:// URLs while
// the flags are checked, before any source is contacted.
func checkIPFSSubstituters(urls []string, refresh time.Duration) error {
	for _, u := range urls {
		if !ipfscache.IsURL(u) {
			continue
		}
		if _, err := ipfscache.ParseURL(u); err != nil {
			return fmt.Errorf("--substituter: %w", err)
		}
	}
	if refresh < ipfscache.MinRefresh {
		return fmt.Errorf("--ipns-refresh %v: at least %v", refresh, ipfscache.MinRefresh)
	}
	return nil
}

// checkSubstituters checks the file:// and http(s):// substituters as
// newResolver will, without contacting anything, so that a mistyped one
// is a usage error before the block sources are opened (ipfs:// and
// ipns:// ones need those, and are checked with the flags).
func checkSubstituters(urls []string) error {
	for _, u := range urls {
		if ipfscache.IsURL(u) {
			continue
		}
		if _, err := newResolver([]string{u}, nil, false, false, nil); err != nil {
			return err
		}
	}
	return nil
}

// trustFlags are the flags that say which narinfos are accepted, shared
// by mount, serve and prefetch.
type trustFlags struct {
	Substituters  []string
	TrustedKeys   []string
	RequireSigs   bool
	RequireCidSig bool
	IpnsRefresh   time.Duration // how often ipns:// names are resolved again
}

// openSources opens where a command gets blocks and narinfos: the block
// stack, and a resolver over the substituters, ipfs:// and ipns:// ones
// read through those blocks. The caller closes the stack; run starts the
// re-resolution of IPNS names until ctx ends.
func openSources(ctx context.Context, bf blockFlags, tf trustFlags, log *slog.Logger) (st *blockStack, res *narindex.Resolver, run func(context.Context), err error) {
	if err := checkSubstituters(tf.Substituters); err != nil {
		return nil, nil, nil, err
	}
	if st, err = openBlocks(ctx, bf, log); err != nil {
		return nil, nil, nil, err
	}
	ipfs, err := newIPFSCaches(st, bf.API, bf.BlockTimeout, tf.IpnsRefresh, log)
	if err == nil {
		res, err = newResolver(tf.Substituters, tf.TrustedKeys, tf.RequireSigs, tf.RequireCidSig, ipfs)
	}
	if err != nil {
		st.Close()
		return nil, nil, nil, err
	}
	return st, res, ipfs.run, nil
}
