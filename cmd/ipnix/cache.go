package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/pflag"

	"github.com/ipnix/ipnix/cache"
	"github.com/ipnix/ipnix/narindex"
	"github.com/ipnix/ipnix/prefetch"
)

const cacheSynopsis = `Usage: ipnix cache stats --cache-dir DIR
       ipnix cache gc --cache-dir DIR [--keep-recent DURATION] [--forget STOREPATH]...

stats: what the cache directory of a mount or prefetch holds: blocks and
their bytes (pinned ones, the quota), local copies of verified files, and
the prefetched closures, each complete (every block there: it reads with no
source) or not.

gc: drop the blocks that no prefetched closure needs and that were not used
within --keep-recent, after dropping the closures named by --forget from
the record; print what was freed. Local copies are left alone (a mount
keeps them under its quota). gc refuses to run while a mount, serve or
prefetch has the directory open (they hold DIR/LOCK); a mount starting
meanwhile waits for it.
`

const defaultKeepRecent = 24 * time.Hour

func runCache(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "stats" && args[0] != "gc") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprint(stdout, cacheSynopsis)
			return nil
		}
		return usageError{fmt.Errorf("cache needs a subcommand, stats or gc\n\n%s", cacheSynopsis)}
	}
	sub := args[0]
	flags := newFlagSet("cache "+sub, cacheSynopsis, stdout)
	var dir string
	keepRecent := defaultKeepRecent
	var forget []string
	flags.StringVar(&dir, "cache-dir", "", "the cache directory of a mount or prefetch (required)")
	if sub == "gc" {
		flags.DurationVar(&keepRecent, "keep-recent", defaultKeepRecent, "keep blocks used within this long (a block's use is recorded to within a minute), even when no prefetched closure needs them; 0 keeps only those")
		flags.StringArrayVar(&forget, "forget", nil, "drop this prefetched closure (its root: /nix/store/..., a result symlink or <hash>-<name>) from the record first, so its blocks are kept no longer (repeatable)")
	}
	if err := flags.Parse(args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	switch {
	case dir == "":
		return usageError{fmt.Errorf("cache %s needs --cache-dir DIR", sub)}
	case flags.NArg() > 0:
		return usageError{fmt.Errorf("cache %s takes no arguments (got %q)", sub, flags.Args())}
	case keepRecent < 0:
		return usageError{fmt.Errorf("--keep-recent %v must not be negative", keepRecent)}
	}
	var roots []string
	for _, a := range forget {
		sp, err := narindex.StorePathArg(a)
		if err != nil {
			return usageError{fmt.Errorf("--forget: %w", err)}
		}
		roots = append(roots, sp.Base())
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return usageError{fmt.Errorf("--cache-dir %s is not a directory", dir)}
	}
	if sub == "stats" {
		return cacheStats(ctx, dir, stdout)
	}
	return cacheGC(ctx, dir, keepRecent, roots, stdout)
}

func cacheStats(ctx context.Context, dir string, w io.Writer) error {
	u, err := cache.Scan(dir)
	if err != nil {
		return err
	}
	rec, err := prefetch.LoadRecord(dir)
	if err != nil {
		return err
	}
	inUse := "not in use"
	if cache.InUse(dir) {
		inUse = "in use by a running mount, serve or prefetch"
	}
	fmt.Fprintf(w, "cache directory %s (%s)\n", dir, inUse)
	quota := "unknown"
	if u.Quota > 0 {
		quota = humanize.IBytes(uint64(u.Quota)) + " (of the last mount or prefetch opened on it)"
		if u.Bytes > u.Quota {
			quota += fmt.Sprintf(", exceeded by %s", humanize.IBytes(uint64(u.Bytes-u.Quota)))
		}
	}
	fmt.Fprintf(w, "blocks: %d (%s), %d of them pinned (%s); quota %s\n", u.Blocks, humanize.IBytes(uint64(u.Bytes)), u.Pinned, humanize.IBytes(uint64(u.PinnedBytes)), quota)
	if u.Temp > 0 {
		fmt.Fprintf(w, "temporary files: %d (writes in progress, or left by a process that was killed; gc removes them)\n", u.Temp)
	}
	paths, files, bytes := localCopies(filepath.Join(dir, "files"))
	fmt.Fprintf(w, "local copies: %d files (%s) of %d verified store paths\n", files, humanize.IBytes(uint64(bytes)), paths)
	sts, err := prefetch.Status(ctx, dir, rec)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "prefetched closures: %d\n", len(sts))
	for _, s := range sts {
		state := "complete"
		if !s.Complete {
			state = "incomplete (first missing in " + s.Missing + "; run ipnix prefetch again)"
		}
		fmt.Fprintf(w, "  %s: %s; %d store paths, %s of %s of NAR held, %d/%d blocks present, %d pinned; prefetched %s\n",
			s.Root, state, len(s.Paths), humanize.IBytes(uint64(s.PresentBytes)), humanize.IBytes(uint64(s.Bytes)),
			s.Present, s.Blocks, s.Pinned, s.Time.UTC().Format(time.RFC3339))
	}
	return nil
}

// localCopies counts the local copies of verified files under filesDir
// (see fusefs/passthrough.go: a directory per NAR, its copies and a
// manifest).
func localCopies(filesDir string) (paths, files int, bytes int64) {
	ents, err := os.ReadDir(filesDir)
	if err != nil {
		return 0, 0, 0
	}
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".tmp-") {
			continue
		}
		paths++
		filepath.WalkDir(filepath.Join(filesDir, e.Name()), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() == "manifest" {
				return nil
			}
			if fi, err := d.Info(); err == nil {
				files++
				bytes += fi.Size()
			}
			return nil
		})
	}
	return paths, files, bytes
}

func cacheGC(ctx context.Context, dir string, keepRecent time.Duration, forget []string, w io.Writer) error {
	before, err := cache.Scan(dir)
	if err != nil {
		return err
	}
	r, rec, err := prefetch.Collect(ctx, dir, keepRecent, forget)
	if err != nil {
		return err
	}
	for _, root := range forget {
		fmt.Fprintf(w, "ipnix cache gc: forgot closure %s\n", root)
	}
	fmt.Fprintf(w, "ipnix cache gc: freed %s (%s) of %d (%s); kept %d (%s): %d (%s) needed by %s, %d (%s) used within %v",
		prefetch.Count(r.Removed, "block"), humanize.IBytes(uint64(r.RemovedBytes)), before.Blocks, humanize.IBytes(uint64(before.Bytes)),
		r.Kept, humanize.IBytes(uint64(r.KeptBytes)), r.Needed, humanize.IBytes(uint64(r.NeededBytes)), prefetch.Count(len(rec.Closures), "prefetched closure"),
		r.Recent, humanize.IBytes(uint64(r.RecentBytes)), keepRecent)
	if r.Unpinned > 0 || r.Repinned > 0 || r.Temp > 0 {
		fmt.Fprintf(w, "; unpinned %d, pinned again %d, temporary files removed %d", r.Unpinned, r.Repinned, r.Temp)
	}
	fmt.Fprintln(w)
	return nil
}
