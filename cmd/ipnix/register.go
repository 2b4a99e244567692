package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/spf13/pflag"

	"github.com/ipnix/ipnix/narindex"
)

const registerSynopsis = `Usage: ipnix register [flags] STOREPATH...

Write, on standard output (or --output), what "nix-store --load-db" reads to
make Nix hold STOREPATH (and, by default, its whole closure) as valid paths:
for each path, references first, its store path, NarHash, NarSize, deriver
and references. Every narinfo must pass the checks a mount applies
(signature by a trusted key, name, IpfsCid), so only what a mount would
serve is registered. Nothing is read from the files themselves: load the
output only where an ipnix mount serves these paths under /nix/store.

STOREPATH may be /nix/store/<hash>-<name>, a result symlink, or a bare
<hash>-<name>.

Example:
  ipnix register --substituter file:///srv/cache \
    --trusted-public-key "$(cat cache.pub)" ./result | nix-store --load-db
`

type registerConfig struct {
	Substituters  []string
	TrustedKeys   []string
	NoRequireSigs bool
	RequireCidSig bool
	NoClosure     bool
	Output        string
	Paths         []string
}

func parseRegisterArgs(args []string, out io.Writer) (*registerConfig, error) {
	c := &registerConfig{}
	fs := newFlagSet("register", registerSynopsis, out)
	fs.StringArrayVar(&c.Substituters, "substituter", nil, "binary cache holding the narinfos, as for ipnix mount (repeatable; asked in order)")
	fs.StringArrayVar(&c.TrustedKeys, "trusted-public-key", nil, "public key narinfos must be signed with, as name:base64 (repeatable)")
	closure := fs.Bool("closure", true, "register the closure of each path (its references, recursively); the default")
	fs.BoolVar(&c.NoClosure, "no-closure", false, "register only the paths named (their references must be valid already)")
	fs.BoolVar(&c.RequireCidSig, "require-cid-sig", false, "refuse narinfos without an IpfsCidSig by a trusted key, as mount --require-cid-sig")
	fs.BoolVar(&c.NoRequireSigs, "no-require-sigs", false, "accept unsigned narinfos (NOT recommended)")
	fs.StringVarP(&c.Output, "output", "O", "", "write to this file instead of standard output")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err}
	}
	if fs.Changed("closure") && !*closure {
		c.NoClosure = true
	}
	c.Paths = fs.Args()
	switch {
	case len(c.Paths) == 0:
		return nil, usageError{errors.New("register needs at least one STOREPATH")}
	case len(c.Substituters) == 0:
		return nil, usageError{errors.New("no --substituter given: where should narinfos come from?")}
	case len(c.TrustedKeys) == 0 && !c.NoRequireSigs:
		return nil, usageError{errors.New("no --trusted-public-key given; signatures are required (pass --no-require-sigs to accept unsigned narinfos)")}
	}
	return c, nil
}

func runRegister(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseRegisterArgs(args, stdout)
	if err != nil {
		return err
	}
	res, err := newResolver(c.Substituters, c.TrustedKeys, !c.NoRequireSigs, c.RequireCidSig, nil)
	if err != nil {
		return err
	}
	var roots []string
	for _, a := range c.Paths {
		p, err := narindex.StorePathArg(a)
		if err != nil {
			return usageError{err}
		}
		roots = append(roots, p.Base())
	}
	var paths []*narindex.Resolved
	if c.NoClosure {
		for _, r := range roots {
			rp, err := res.Resolve(ctx, r)
			if err != nil {
				return err
			}
			paths = append(paths, rp)
		}
	} else if paths, err = res.Closure(ctx, roots, closureWorkers); err != nil {
		return err
	}
	w := stdout
	if c.Output != "" {
		f, err := os.Create(c.Output)
		if err != nil {
			return usageError{fmt.Errorf("--output: %w", err)}
		}
		defer f.Close()
		w = f
	}
	bw := bufio.NewWriter(w)
	for _, p := range paths {
		writeLoadDB(bw, p.Info)
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if c.Output != "" {
		if err := w.(*os.File).Close(); err != nil {
			return err
		}
	}
	fmt.Fprintf(stderr, "ipnix: %d store paths to register\n", len(paths))
	return nil
}

// writeLoadDB writes one path as nix-store --load-db (and --dump-db)
// write it: path, NarHash, NarSize, deriver (empty when unknown), the
// number of references, then each reference as a full path.
func writeLoadDB(w io.Writer, ni *narindex.NarInfo) {
	fmt.Fprintln(w, ni.StorePath)
	fmt.Fprintln(w, "sha256:"+narindex.EncodeNix32(ni.NarHash.Digest))
	fmt.Fprintln(w, strconv.FormatUint(ni.NarSize, 10))
	deriver := ""
	if ni.Deriver != "" {
		deriver = narindex.StoreDir + "/" + ni.Deriver
	}
	fmt.Fprintln(w, deriver)
	fmt.Fprintln(w, len(ni.References))
	for _, r := range ni.References {
		fmt.Fprintln(w, narindex.StoreDir+"/"+r)
	}
}
