package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/ipnix/ipnix/mirror"
	"github.com/ipnix/ipnix/narindex"
)

const mirrorSynopsis = `Usage: ipnix mirror --from CACHE --trusted-public-key KEY [flags] [STOREPATH...]

Pin, on the kubo node behind --api, the NAR (IpfsCid, recursively) of every
narinfo of the binary cache CACHE, so that this node holds and serves every
block of the cache, whether or not the publisher is up.

CACHE is a directory or file:///dir (every *.narinfo in it), or an
http(s):// URL: HTTP caches cannot be listed, so name the store paths as
arguments or on standard input, one a line (/nix/store/<hash>-<name>, a
result symlink, <hash>-<name> or a bare <hash>). Arguments also pick paths
out of a directory cache.

A narinfo is pinned only when its Sig and its IpfsCidSig both verify under
a --trusted-public-key (Sig alone does not cover the CID); the others are
counted as rejected and named on standard error. Pins run in parallel
(--jobs); CIDs the node already pins recursively are skipped (one pin/ls),
so an interrupted mirror resumes where it stopped. A failing pin is named
and does not stop the others; the exit status is 1 if any failed. Progress
goes to standard error, and a one-line summary to standard output.

Which blocks the node announces to the DHT is its Provide.Strategy's
choice: "roots" announces one record per NAR (see the README).
`

type mirrorConfig struct {
	From          string
	API           string
	TrustedKeys   []string
	NoRequireSigs bool
	Jobs          int
	StallTimeout  time.Duration
	Debug         bool
	Paths         []string
}

func parseMirrorArgs(args []string, out io.Writer) (*mirrorConfig, error) {
	c := &mirrorConfig{}
	fs := newFlagSet("mirror", mirrorSynopsis, out)
	fs.StringVar(&c.From, "from", "", "binary cache to mirror: a directory, file:///dir, or http(s)://... (required)")
	fs.StringVar(&c.API, "api", "", "kubo RPC API of the node to pin on, a multiaddr or http:// URL (default: $IPFS_PATH/api, else /ip4/127.0.0.1/tcp/5001)")
	fs.StringArrayVar(&c.TrustedKeys, "trusted-public-key", nil, "public key, as name:base64, that Sig and IpfsCidSig must verify under (repeatable)")
	fs.BoolVar(&c.NoRequireSigs, "no-require-sigs", false, "pin the CID of every narinfo, signed or not (NOT recommended: whoever can write to the cache chooses what this node fetches and serves)")
	fs.IntVarP(&c.Jobs, "jobs", "j", 4, "narinfos read and pins run at once")
	fs.DurationVar(&c.StallTimeout, "stall-timeout", 5*time.Minute, "cancel a pin (and count it failed) when the node fetches no block of it for this long")
	fs.BoolVar(&c.Debug, "debug", false, "log debug messages")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err}
	}
	c.Paths = fs.Args()
	switch {
	case c.From == "":
		return nil, usageError{errors.New("mirror needs --from CACHE")}
	case len(c.TrustedKeys) == 0 && !c.NoRequireSigs:
		return nil, usageError{errors.New("no --trusted-public-key given; signatures are required (pass --no-require-sigs to pin whatever the cache names)")}
	case c.Jobs < 1:
		return nil, usageError{fmt.Errorf("--jobs %d: at least 1", c.Jobs)}
	case c.StallTimeout <= 0:
		return nil, usageError{fmt.Errorf("--stall-timeout %v: must be positive", c.StallTimeout)}
	}
	for _, a := range c.Paths {
		if _, err := mirror.HashPart(a); err != nil {
			return nil, usageError{err}
		}
	}
	return c, nil
}

// mirrorSource turns --from into a substituter URL and, for a local
// cache, its directory.
func mirrorSource(from string) (subURL, dir string, err error) {
	if !strings.Contains(from, "://") {
		abs, err := filepath.Abs(from)
		if err != nil {
			return "", "", err
		}
		return "file://" + abs, abs, nil
	}
	u, err := url.Parse(from)
	if err != nil {
		return "", "", fmt.Errorf("%q: %v", from, err)
	}
	if u.Scheme == "file" {
		return from, u.Path, nil
	}
	return from, "", nil
}

func runMirror(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	c, err := parseMirrorArgs(args, stdout)
	if err != nil {
		return err
	}
	log := newLogger(stderr, c.Debug)
	var keys []narindex.PublicKey
	for _, k := range c.TrustedKeys {
		pk, err := parseTrustedKey(k)
		if err != nil {
			return usageError{err}
		}
		keys = append(keys, pk)
	}
	if len(keys) == 0 {
		log.Warn("--no-require-sigs: pinning the CID of every narinfo, signed or not")
	}
	subURL, dir, err := mirrorSource(c.From)
	if err != nil {
		return usageError{fmt.Errorf("--from: %w", err)}
	}
	cache, err := narindex.OpenSubstituter(subURL, narindex.SubstituterOptions{})
	if err != nil {
		return usageError{fmt.Errorf("--from: %w", err)}
	}
	var entries iter.Seq[mirror.Entry]
	total := 0
	switch {
	case len(c.Paths) > 0:
		entries, total = mirror.ArgEntries(c.Paths), len(c.Paths)
	case dir != "":
		list, err := mirror.DirEntries(dir)
		if err != nil {
			return fmt.Errorf("--from: %w", err)
		}
		entries, total = func(yield func(mirror.Entry) bool) {
			for _, e := range list {
				if !yield(e) {
					return
				}
			}
		}, len(list)
	default:
		if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			fmt.Fprintln(stderr, "ipnix mirror: reading store paths from standard input, one a line")
		}
		entries = mirror.LineEntries(stdin, "standard input")
	}

	api, url, err := connectKubo(ctx, c.API)
	if err != nil {
		return err
	}
	noteProvideStrategy(ctx, api, url, log, slog.LevelWarn)
	node := &mirror.Kubo{API: api}
	s, err := mirror.Run(ctx, cache, entries, node, mirror.Options{
		TrustedKeys:  keys,
		Jobs:         c.Jobs,
		StallTimeout: c.StallTimeout,
		Progress:     stderr,
		Total:        total,
		Log:          log,
	})
	fmt.Fprintln(stdout, s)
	if err != nil {
		return err
	}
	if s.Failed > 0 {
		return fmt.Errorf("%d narinfos or pins failed (named above)", s.Failed)
	}
	return nil
}
