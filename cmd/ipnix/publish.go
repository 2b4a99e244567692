package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/ipnix/ipnix/narindex"
	"github.com/ipnix/ipnix/publish"
)

type publishConfig struct {
	To        string
	From      string
	SecretKey string
	API       string
	NoClosure bool
	Chunker   string
	Jobs      int
	Debug     bool
	Paths     []string
	IpfsDir   bool   // also add DIR to IPFS as a directory (publish_ipfsdir.go)
	IpnsKey   string // and point this kubo key's IPNS name at it
}

const publishSynopsis = `Usage: ipnix publish --to DIR [flags] STOREPATH...
       ipnix publish --to DIR [flags] --from CACHE
       ipnix publish --to DIR --ipfs-dir [--ipns-key NAME]

Add store paths from the local Nix store (with their closure, unless
--no-closure) to IPFS through a kubo node, and write DIR as a binary cache:
nix-cache-info, <hash>.narinfo (with IpfsCid, and with --secret-key a Sig and
an IpfsCidSig), <hash>.ls and nar/<hash>.nar. DIR is also a normal binary
cache that plain Nix can substitute from (file://DIR).

With --from, republish an existing local binary cache (a directory or
file:// URL; NARs compressed with xz, zstd, bzip2 or none), keeping its
narinfo fields and signatures.

Paths whose narinfo in DIR already has an IpfsCid are skipped. NARs are
stored as CIDv1, raw leaves, 256 KiB chunks, balanced layout of at most
174 links a node, pinned, and the narinfo says so in IpfsEncoding: anyone
holding the NAR can recompute the CID with "ipfs add --cid-version=1
--raw-leaves --chunker=size-262144 --max-file-links=174" (--trickle off).

With --ipfs-dir, DIR itself (nix-cache-info, narinfos and listings; not
nar/, whose NARs are in IPFS already) is then added to IPFS as one UnixFS
directory, HAMT-sharded when large, and its CID printed on stdout: mount
it with --substituter ipfs://CID. With --ipns-key NAME, the IPNS name of
kubo key NAME (ipfs key gen NAME, once) is pointed at it and printed on a
second line: mount with --substituter ipns://NAME to follow each publish.
`

func parsePublishArgs(args []string, out io.Writer) (*publishConfig, error) {
	c := &publishConfig{}
	fs := newFlagSet("publish", publishSynopsis, out)
	fs.StringVar(&c.To, "to", "", "binary cache directory to write (required)")
	fs.StringVar(&c.From, "from", "", "republish this local binary cache (directory or file:// URL) instead of store paths")
	fs.StringVar(&c.SecretKey, "secret-key", "", "Nix secret key file (nix-store --generate-binary-cache-key) to sign narinfos and CIDs with")
	fs.StringVar(&c.API, "api", "", "kubo RPC API, a multiaddr or http:// URL (default: $IPFS_PATH/api, else /ip4/127.0.0.1/tcp/5001)")
	fs.BoolVar(&c.NoClosure, "no-closure", false, "publish only the paths named, not what they reference")
	fs.StringVar(&c.Chunker, "chunker", publish.DefaultChunker, "kubo chunker for NARs (size-N, rabin-..., buzhash)")
	fs.IntVarP(&c.Jobs, "jobs", "j", 2, "store paths to stream into kubo at once")
	fs.BoolVar(&c.IpfsDir, "ipfs-dir", false, "then add DIR's narinfos, listings and nix-cache-info to IPFS as one UnixFS directory (pinned; HAMT-sharded when large) and print its CID on stdout")
	fs.StringVar(&c.IpnsKey, "ipns-key", "", "then point the IPNS name of this kubo key (create it once with ipfs key gen NAME) at that directory and print the name (k51...) on a second line; implies --ipfs-dir")
	fs.BoolVar(&c.Debug, "debug", false, "log debug messages")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err}
	}
	c.Paths = fs.Args()
	if c.IpnsKey != "" {
		c.IpfsDir = true
	}
	switch {
	case c.To == "":
		return nil, usageError{errors.New("publish needs --to DIR")}
	case c.From == "" && len(c.Paths) == 0 && !c.IpfsDir:
		return nil, usageError{errors.New("publish needs STOREPATH arguments or --from CACHE (or --ipfs-dir alone, to add DIR as it is)")}
	case c.From != "" && len(c.Paths) > 0:
		return nil, usageError{errors.New("give either STOREPATH arguments or --from, not both")}
	case c.Jobs < 1:
		return nil, usageError{fmt.Errorf("--jobs %d: at least 1", c.Jobs)}
	}
	// Store paths as Nix users write them: /nix/store/..., a result
	// symlink, <hash>-<name>.
	for i, arg := range c.Paths {
		sp, err := narindex.StorePathArg(arg)
		if err != nil {
			return nil, usageError{err}
		}
		c.Paths[i] = sp.String()
	}
	return c, nil
}

func runPublish(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parsePublishArgs(args, stdout)
	if err != nil {
		return err
	}
	log := newLogger(stderr, c.Debug)
	var key *narindex.SecretKey
	if c.SecretKey != "" {
		k, err := narindex.LoadSecretKeyFile(c.SecretKey)
		if err != nil {
			return usageError{fmt.Errorf("--secret-key %s: %w", c.SecretKey, err)}
		}
		key = &k
	}
	api, url, err := connectKubo(ctx, c.API)
	if err != nil {
		return err
	}
	if err := checkIpfsDir(ctx, c, api); err != nil {
		return err
	}
	noteProvideStrategy(ctx, api, url, log, slog.LevelInfo)
	isTerm := false
	if f, ok := stderr.(*os.File); ok {
		isTerm = term.IsTerminal(int(f.Fd()))
	}
	p, err := publish.New(&publish.KuboAdder{API: api, Chunker: c.Chunker}, publish.Options{
		To:        c.To,
		SecretKey: key,
		Progress:  publish.NewProgress(stderr, isTerm),
		Log:       log,
		Streams:   c.Jobs,
	})
	if err != nil {
		return err
	}
	if c.From != "" {
		_, err = p.Cache(ctx, c.From)
	} else if len(c.Paths) > 0 {
		_, err = p.StorePaths(ctx, c.Paths, !c.NoClosure)
	}
	if err != nil || !c.IpfsDir {
		return err
	}
	return publishIpfsDir(ctx, c, api, stdout, stderr)
}
