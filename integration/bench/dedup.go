package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	chunk "github.com/ipfs/boxo/chunker"
	"github.com/ipfs/boxo/ipld/merkledag"
	"github.com/ipfs/boxo/ipld/unixfs/importer/balanced"
	"github.com/ipfs/boxo/ipld/unixfs/importer/helpers"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"

	"github.com/ipnix/ipnix/narindex"
)

// B12: what an upgrade costs in bytes. For two versions of one package,
// each added to the Nix store and dumped as a NAR, it counts the bytes of
// version B's blocks that are not among version A's: what a machine that
// holds A must fetch to hold all of B. It does so under ipnix's encoding
// (fixed 256 KiB chunks) and under kubo's content-defined chunkers
// (buzhash, rabin), and for scale under fixed 1 MiB chunks (IPIP-499's
// unixfs-v1-2025 profile) and per whole file (what an encoding that
// addresses each file by its contents would share). Every DAG is built with
// boxo's importer, as `ipfs add --cid-version=1 --raw-leaves --chunker=C`
// builds it, and its root is checked against that command on the
// benchmark's kubo. Byte counts are deterministic and measured once; the
// chunk-and-hash throughput of each chunker (the CPU side of publishing) is
// measured in every round.
//
// The pairs: the source of one Go module at two releases (fetched through
// the Go module proxy), and the ipnix binary built at two commits of this
// repository (a temporary `git worktree` under the working directory).
const (
	dedupModule        = "github.com/ipfs/kubo"
	dedupModuleA       = "v0.42.0"
	dedupModuleB       = "v0.43.0"
	dedupRevA          = "HEAD~40"
	dedupRevB          = "HEAD"
	ipnixChunker       = "size-262144"
	dedupWholeFileName = "per whole file"
)

// dedupChunkers: ipnix's, the two content-defined ones, and a larger
// fixed size. The first two are the row's own figures.
var dedupChunkers = []string{ipnixChunker, "buzhash", "rabin", "size-1048576"}

// dedupPair is two versions of one package, as NARs.
type dedupPair struct {
	what       string
	verA, verB string
	narA, narB []byte
}

func (b *bench) b12Dedup() error {
	dir, err := os.MkdirTemp(b.work, "b12-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var errs []error
	for _, build := range []func(string) (*dedupPair, func(), error){b.dedupModulePair, b.dedupIpnixPair} {
		p, done, err := build(dir)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		err = b.dedupRow(p)
		done()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p.what, err))
		}
	}
	return errors.Join(errs...)
}

// dedupRow measures one pair and adds its row.
func (b *bench) dedupRow(p *dedupPair) error {
	r := b.newRow(row{ID: "B12",
		What: fmt.Sprintf("upgrade %s %s → %s (NARs %s → %s): bytes of B's blocks not among A's",
			p.what, p.verA, p.verB, humanize.IBytes(uint64(len(p.narA))), humanize.IBytes(uint64(len(p.narB)))),
		Ipnix:    figure{Label: "fixed 256 KiB", Unit: "B"},
		Baseline: &figure{Label: "buzhash", Unit: "B"}, RatioOf: "fixed/buzhash bytes to fetch",
		Target: "n/a", Note: "byte counts measured once (deterministic); every DAG's root checked against `ipfs add --only-hash`"})
	counts := map[string]int64{}
	for _, c := range dedupChunkers {
		a, err := importBlocks(p.narA, c)
		if err != nil {
			return err
		}
		bb, err := importBlocks(p.narB, c)
		if err != nil {
			return err
		}
		for _, x := range []struct {
			nar  []byte
			root cid.Cid
		}{{p.narA, a.root}, {p.narB, bb.root}} {
			out, err := b.kubo.Run(bytes.NewReader(x.nar), "add", "-Q", "--only-hash", "--cid-version=1", "--raw-leaves", "--chunker="+c)
			if err != nil {
				return err
			}
			if out != x.root.String() {
				return fmt.Errorf("--chunker=%s: boxo's importer gives %s, kubo %s: the blocks counted are not kubo's", c, x.root, out)
			}
		}
		n := newBytes(a, bb)
		counts[c] = n
		switch c {
		case ipnixChunker:
			r.ipnix(float64(n))
		case "buzhash":
			r.base(float64(n))
		default:
			r.extra(chunkerName(c), "B", float64(n))
		}
	}
	files, err := newFileBytes(p.narA, p.narB)
	if err != nil {
		return err
	}
	r.extra(dedupWholeFileName, "B", float64(files))
	var shares []string
	for _, c := range dedupChunkers {
		shares = append(shares, fmt.Sprintf("%s %.1f %%", chunkerName(c), 100*float64(counts[c])/float64(len(p.narB))))
	}
	shares = append(shares, fmt.Sprintf("%s %.1f %%", dedupWholeFileName, 100*float64(files)/float64(len(p.narB))))
	r.note("share of B's NAR to fetch: " + strings.Join(shares, ", "))
	return b.eachRound("B12 "+p.what, func(int) error {
		for _, c := range dedupChunkers {
			start := time.Now()
			if _, err := importBlocks(p.narB, c); err != nil {
				return err
			}
			r.extra("chunk+hash "+chunkerName(c), "MiB/s", mbps(int64(len(p.narB)), time.Since(start)))
		}
		return nil
	})
}

// chunkerName is a chunker as the table names it.
func chunkerName(c string) string {
	switch c {
	case "size-262144":
		return "fixed 256 KiB"
	case "size-1048576":
		return "fixed 1 MiB"
	}
	return c
}

// blockSet is the blocks of one DAG: size by CID.
type blockSet struct {
	root  cid.Cid
	sizes map[cid.Cid]int
}

// importBlocks builds data's DAG as `ipfs add --cid-version=1 --raw-leaves
// --chunker=c` does (balanced, 174 links per node, sha2-256) and gives
// its blocks.
func importBlocks(data []byte, c string) (*blockSet, error) {
	spl, err := chunk.FromString(bytes.NewReader(data), c)
	if err != nil {
		return nil, err
	}
	rec := &recordDAG{sizes: map[cid.Cid]int{}}
	params := helpers.DagBuilderParams{
		Dagserv:    rec,
		Maxlinks:   helpers.DefaultLinksPerBlock,
		RawLeaves:  true,
		CidBuilder: merkledag.V1CidPrefix(),
	}
	db, err := params.New(spl)
	if err != nil {
		return nil, err
	}
	nd, err := balanced.Layout(db)
	if err != nil {
		return nil, err
	}
	return &blockSet{root: nd.Cid(), sizes: rec.sizes}, nil
}

// newBytes is the size of b's distinct blocks that a does not hold.
func newBytes(a, b *blockSet) int64 {
	var n int64
	for c, size := range b.sizes {
		if _, ok := a.sizes[c]; !ok {
			n += int64(size)
		}
	}
	return n
}

// newFileBytes is the size of the regular files of narB whose contents
// are those of no regular file of narA, each distinct content once.
func newFileBytes(narA, narB []byte) (int64, error) {
	have := map[[32]byte]bool{}
	if err := eachFile(narA, func(content []byte) { have[sha256.Sum256(content)] = true }); err != nil {
		return 0, err
	}
	var n int64
	err := eachFile(narB, func(content []byte) {
		if sum := sha256.Sum256(content); !have[sum] {
			have[sum] = true
			n += int64(len(content))
		}
	})
	return n, err
}

// eachFile calls f with the contents of every regular file of a NAR.
func eachFile(nar []byte, f func([]byte)) error {
	l, err := narindex.ListingFromNar(bytes.NewReader(nar))
	if err != nil {
		return err
	}
	var walk func(n *narindex.ListingNode)
	walk = func(n *narindex.ListingNode) {
		if n.Type == narindex.TypeRegular {
			f(nar[n.NarOffset : n.NarOffset+n.Size])
		}
		for _, e := range n.Entries {
			walk(e)
		}
	}
	walk(l.Root)
	return nil
}

// recordDAG is a DAG service that keeps only the size of what is added.
type recordDAG struct{ sizes map[cid.Cid]int }

func (d *recordDAG) Add(_ context.Context, n ipld.Node) error {
	d.sizes[n.Cid()] = len(n.RawData())
	return nil
}

func (d *recordDAG) AddMany(_ context.Context, ns []ipld.Node) error {
	for _, n := range ns {
		d.sizes[n.Cid()] = len(n.RawData())
	}
	return nil
}

func (d *recordDAG) Get(context.Context, cid.Cid) (ipld.Node, error) {
	return nil, errors.New("recordDAG keeps no blocks")
}

func (d *recordDAG) GetMany(context.Context, []cid.Cid) <-chan *ipld.NodeOption {
	ch := make(chan *ipld.NodeOption)
	close(ch)
	return ch
}

func (d *recordDAG) Remove(context.Context, cid.Cid) error       { return nil }
func (d *recordDAG) RemoveMany(context.Context, []cid.Cid) error { return nil }

// dedupModulePair downloads two releases of a Go module through the Go
// module proxy and makes NARs of their source trees.
func (b *bench) dedupModulePair(dir string) (*dedupPair, func(), error) {
	what := "Go module " + dedupModule + " source"
	cmd := exec.Command("go", "mod", "download", "-json", dedupModule+"@"+dedupModuleA, dedupModule+"@"+dedupModuleB)
	cmd.Dir = dir // outside any module
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		return nil, nil, fmt.Errorf("%s: go mod download: %v\n%s%s", what, err, stderr, out)
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	var dirs []string
	for {
		var m struct{ Version, Dir, Error string }
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, nil, fmt.Errorf("%s: go mod download: %v", what, err)
		}
		if m.Error != "" || m.Dir == "" {
			return nil, nil, fmt.Errorf("%s: go mod download %s: %s", what, m.Version, m.Error)
		}
		// The module cache's name has an '@', which a store path name
		// may not: copy the tree under a name Nix takes.
		to := filepath.Join(dir, "kubo-src-"+m.Version)
		if err := copyTree(m.Dir, to); err != nil {
			return nil, nil, err
		}
		dirs = append(dirs, to)
	}
	if len(dirs) != 2 {
		return nil, nil, fmt.Errorf("%s: go mod download gave %d modules, not 2", what, len(dirs))
	}
	return b.dedupNars(what, dedupModuleA, dedupModuleB, dirs[0], dirs[1])
}

// dedupIpnixPair builds the ipnix binary at two commits, each in a
// temporary worktree, and makes NARs of them.
func (b *bench) dedupIpnixPair(dir string) (*dedupPair, func(), error) {
	what := "ipnix binary"
	top, err := output("git", "rev-parse", "--show-toplevel")
	if err != nil {
		return nil, nil, fmt.Errorf("%s: not run from the ipnix repository: %w", what, err)
	}
	top = strings.TrimSpace(top)
	var dirs, vers []string
	for i, rev := range []string{dedupRevA, dedupRevB} {
		short, err := output("git", "-C", top, "rev-parse", "--short", rev)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %s (a shallow clone?): %w", what, rev, err)
		}
		short = strings.TrimSpace(short)
		wt := filepath.Join(dir, fmt.Sprintf("worktree-%d", i))
		if _, err := output("git", "-C", top, "worktree", "add", "--detach", wt, short); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", what, err)
		}
		bin := filepath.Join(dir, "ipnix-"+short)
		build := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-o", filepath.Join(bin, "bin", "ipnix"), "./cmd/ipnix")
		build.Dir = wt
		out, err := build.CombinedOutput()
		// The worktree goes whatever happened; prune forgets it.
		if _, rmErr := output("git", "-C", top, "worktree", "remove", "--force", wt); rmErr != nil {
			b.logf("B12: %v", rmErr)
			os.RemoveAll(wt)
			output("git", "-C", top, "worktree", "prune")
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: go build at %s: %v\n%s", what, rev, err, out)
		}
		dirs = append(dirs, bin)
		vers = append(vers, rev+" ("+short+")")
	}
	return b.dedupNars(what, vers[0], vers[1], dirs[0], dirs[1])
}

// dedupNars adds two trees to the Nix store, dumps their NARs and gives a
// function that deletes the store paths again.
func (b *bench) dedupNars(what, verA, verB, dirA, dirB string) (*dedupPair, func(), error) {
	var paths []string
	done := func() {
		for _, p := range paths {
			if _, err := output("nix-store", "--delete", p); err != nil {
				b.logf("B12: %v", err)
			}
		}
	}
	var nars [][]byte
	for _, d := range []string{dirA, dirB} {
		out, err := output("nix-store", "--add", d)
		if err != nil {
			done()
			return nil, nil, fmt.Errorf("%s: %w", what, err)
		}
		sp := strings.TrimSpace(out)
		paths = append(paths, sp)
		nar, err := exec.Command("nix-store", "--dump", sp).Output()
		if err != nil {
			done()
			return nil, nil, fmt.Errorf("%s: nix-store --dump %s: %w", what, sp, err)
		}
		nars = append(nars, nar)
		b.logf("B12: %s %s: %s of NAR", what, sp, humanize.IBytes(uint64(len(nar))))
	}
	return &dedupPair{what: what, verA: verA, verB: verB, narA: nars[0], narB: nars[1]}, done, nil
}

// copyTree copies the regular files, directories and symlinks under from
// to a new directory to, writable by its owner, keeping executable bits.
func copyTree(from, to string) error {
	return filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(dst, 0o755)
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, dst)
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(dst, data, 0o644|fi.Mode().Perm()&0o111)
		}
		return fmt.Errorf("%s: neither file, directory nor symlink", p)
	})
}
