package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/pflag"

	"github.com/ipnix/ipnix/narindex"
	"github.com/ipnix/ipnix/prefetch"
)

// prefetchConfig is everything `ipnix prefetch` is told.
type prefetchConfig struct {
	CacheDir      string
	CacheSize     int64
	Substituters  []string
	TrustedKeys   []string
	NoRequireSigs bool
	RequireCidSig bool
	API           string
	KuboRepo      string
	Gateways      []string
	BlockTimeout  time.Duration
	Jobs          int
	Debug         bool
	Roots         []string // base names
}

const prefetchSynopsis = `Usage: ipnix prefetch --cache-dir DIR --substituter URL --trusted-public-key KEY [flags] STOREPATH...

Fetch every block of the closures of STOREPATHs into the disk block store of
DIR, so that "ipnix mount --cache-dir DIR" reads them with every IPFS source
gone (offline). Narinfos are checked as the mount checks them (a signature
by a trusted key, required by default); every block is checked against its
CID; a path without a trusted IpfsCidSig is also checked against its
NarHash. Blocks already in DIR are not fetched again: run it again to
resume. The blocks are pinned: no mount evicts them, and "ipnix cache gc"
keeps them until the closure is dropped with "ipnix cache gc --forget". The
closures are recorded in DIR/prefetched ("ipnix cache stats" lists them).

The block store gets half of --cache-size, as in a mount: a prefetch whose
closures do not fit there beside what is pinned already fails before it
fetches them (nothing is evicted). Give the mount the same --cache-size.

STOREPATH is /nix/store/<hash>-<name>, a result symlink, or <hash>-<name>.
Progress goes to stderr, a summary line to stdout.
`

func parsePrefetchArgs(args []string, out io.Writer) (*prefetchConfig, error) {
	c := &prefetchConfig{}
	fs := newFlagSet("prefetch", prefetchSynopsis, out)
	fs.StringVar(&c.CacheDir, "cache-dir", "", "cache directory to fill, the --cache-dir of the mount that will read it (required)")
	c.CacheSize = defaultCacheSize
	fs.Var(sizeValue{&c.CacheSize}, "cache-size", "bytes the cache directory may hold, as for the mount: half of it for blocks")
	fs.StringArrayVar(&c.Substituters, "substituter", nil, "binary cache holding narinfos with IpfsCid: file:///dir, http(s)://host/path, ipfs://CID or ipns://NAME (a UnixFS directory, as publish --ipfs-dir adds; the name is resolved once) (repeatable; asked in order)")
	fs.StringArrayVar(&c.TrustedKeys, "trusted-public-key", nil, "public key narinfos must be signed with, as name:base64 (repeatable)")
	fs.BoolVar(&c.NoRequireSigs, "no-require-sigs", false, "accept narinfos that are unsigned or signed by an untrusted key (NOT recommended)")
	fs.BoolVar(&c.RequireCidSig, "require-cid-sig", false, "refuse store paths whose narinfo has no IpfsCidSig by a trusted key")
	fs.StringVar(&c.API, "api", "", "kubo RPC API, a multiaddr or http:// URL (default, unless only --gateway is given: $IPFS_PATH/api, else /ip4/127.0.0.1/tcp/5001)")
	fs.StringVar(&c.KuboRepo, "kubo-repo", "", kuboRepoHelp)
	fs.StringArrayVar(&c.Gateways, "gateway", nil, "HTTP trustless gateway to fetch blocks from (repeatable, tried in order; with no --api the only block sources). Runs of blocks are fetched in one ranged request each")
	fs.DurationVar(&c.BlockTimeout, "block-timeout", defaultBlockTimeout, "longest wait for one block from one source before the next source is tried")
	fs.IntVarP(&c.Jobs, "jobs", "j", 8, "requests (blocks, or runs of blocks) in flight at once")
	fs.BoolVar(&c.Debug, "debug", false, "log debug messages")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err}
	}
	switch {
	case c.CacheDir == "":
		return nil, usageError{errors.New("prefetch needs --cache-dir DIR: the cache directory the mount will use")}
	case fs.NArg() == 0:
		return nil, usageError{errors.New("prefetch needs STOREPATH arguments: the closures to fetch")}
	case len(c.Substituters) == 0:
		return nil, usageError{errors.New("no --substituter given: where should narinfos come from?")}
	case len(c.TrustedKeys) == 0 && !c.NoRequireSigs:
		return nil, usageError{errors.New("no --trusted-public-key given; signatures are required (pass --no-require-sigs to accept unsigned narinfos)")}
	case len(c.TrustedKeys) == 0 && c.RequireCidSig:
		return nil, usageError{errors.New("--require-cid-sig needs a --trusted-public-key to check IpfsCidSig against")}
	case c.Jobs < 1:
		return nil, usageError{fmt.Errorf("--jobs %d: at least 1", c.Jobs)}
	case c.BlockTimeout <= 0:
		return nil, usageError{fmt.Errorf("--block-timeout %v must be positive", c.BlockTimeout)}
	case c.CacheSize <= 0:
		return nil, usageError{fmt.Errorf("--cache-size %d must be positive", c.CacheSize)}
	}
	seen := map[string]bool{}
	for _, a := range fs.Args() {
		sp, err := narindex.StorePathArg(a)
		if err != nil {
			return nil, usageError{err}
		}
		if !seen[sp.Base()] {
			seen[sp.Base()] = true
			c.Roots = append(c.Roots, sp.Base())
		}
	}
	return c, nil
}

func runPrefetch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parsePrefetchArgs(args, stdout)
	if err != nil {
		return err
	}
	log := newLogger(stderr, c.Debug)
	// Blocks always go to disk here, whatever --disk-blocks would decide
	// for a mount: that is the point. An ipns:// name is resolved once
	// (its names are not re-resolved: prefetch is short-lived).
	st, res, _, err := openSources(ctx, blockFlags{API: c.API, Gateways: c.Gateways, BlockTimeout: c.BlockTimeout,
		CacheDir: c.CacheDir, DiskBytes: c.CacheSize / 2, DiskBlocks: diskBlocksAlways, RangeFetch: "bytes", KuboRepo: c.KuboRepo},
		trustFlags{c.Substituters, c.TrustedKeys, !c.NoRequireSigs, c.RequireCidSig, time.Hour}, log)
	if err != nil {
		return err
	}
	defer st.Close()
	opts := prefetch.Options{Disk: st.disk, Resolver: res, Jobs: c.Jobs, Progress: stderr}
	if st.batch != nil {
		opts.Batch = st.batch.Fetch
	}
	fmt.Fprintf(stderr, "ipnix prefetch: into %s from %s (block sources: %s)\n", c.CacheDir, joinOr(c.Substituters), joinOr(st.names))
	s, err := prefetch.Run(ctx, c.Roots, opts)
	if err != nil {
		var nr *prefetch.NoRoomError
		if errors.As(err, &nr) {
			return fmt.Errorf("%w: the block store gets half of --cache-size; pass --cache-size %s or more (to the mount too), or drop other closures with ipnix cache gc --forget",
				err, humanize.IBytes(uint64(2*(nr.Need+nr.Pinned))))
		}
		return err
	}
	whole := ""
	if s.VerifiedWhole > 0 {
		whole = fmt.Sprintf("; %d without a trusted IpfsCidSig matched their NarHash", s.VerifiedWhole)
	}
	fmt.Fprintf(stdout, "ipnix prefetch: %s in %s, %s (%s): fetched %s (%s), %d held already (%s)%s; %s pinned in %s, quota %s\n",
		prefetch.Count(s.Paths, "store path"), prefetch.Count(s.Closures, "closure"), prefetch.Count(s.Blocks, "block"), humanize.IBytes(uint64(s.Bytes)),
		prefetch.Count(s.Fetched, "block"), humanize.IBytes(uint64(s.FetchedBytes)),
		s.Held, humanize.IBytes(uint64(s.HeldBytes)), whole, humanize.IBytes(uint64(s.Pinned)), c.CacheDir, humanize.IBytes(uint64(s.Quota)))
	return nil
}

// joinOr joins names with commas, or says none.
func joinOr(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}
