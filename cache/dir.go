package cache

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/internal/blockfile"
)

// Working on a store directory without opening a store: reading blocks
// (ReadOnly, StatBlock), counting them (Scan), collecting garbage (GC).

// Key is the index key of a block: its multihash, shared by the CIDv0 and
// CIDv1 names of one block.
func Key(c cid.Cid) string { return string(c.Hash()) }

// ReadOnly returns a BlockGetter over the blocks stored in dir: each is
// checked against its CID; a missing one is an error wrapping
// fetch.ErrBlockNotFound. It fetches, writes and touches nothing, and takes
// no lock: a store open on dir may evict a block meanwhile.
func ReadOnly(dir string) fetch.BlockGetter { return dirBlocks(dir) }

type dirBlocks string

func (d dirBlocks) GetBlock(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	data, _, err := readBlockFile(ctx, readOnlyReads, blockPath(string(d), Key(c)), 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s is not in %s", fetch.ErrBlockNotFound, c, string(d))
	}
	if err != nil {
		return nil, err
	}
	if err := fetch.CheckBlock(c, data); err != nil {
		return nil, fmt.Errorf("block file in %s: %w", string(d), err)
	}
	return blocks.NewBlockWithCid(data, c)
}

// readOnlyReads bounds the reads of ReadOnly stores running at once.
var readOnlyReads = blockfile.NewLimiter(blockfile.DefaultPending)

// readBlockFile reads the block file p within ctx, timeout (0:
// fetch.DefaultBlockTimeout) and a slot of l (see blockfile.ReadBounded):
// a disk that stopped answering holds no read past its bound.
func readBlockFile(ctx context.Context, l *blockfile.Limiter, p string, timeout time.Duration) ([]byte, fs.FileInfo, error) {
	if timeout <= 0 {
		timeout = fetch.DefaultBlockTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return blockfile.ReadBounded(ctx, l, p, fetch.MaxBlockSize)
}

// StatBlock reports whether the block c has a file in the store in dir,
// its size and whether it is pinned, without reading it.
func StatBlock(dir string, c cid.Cid) (size int64, pinned, ok bool) {
	fi, err := os.Lstat(blockPath(dir, Key(c)))
	if err != nil || !fi.Mode().IsRegular() {
		return 0, false, false
	}
	return fi.Size(), pinnedMode(fi.Mode()), true
}

// Usage is what a store directory holds.
type Usage struct {
	Blocks      int
	Bytes       int64
	Pinned      int // of Blocks
	PinnedBytes int64
	Temp        int   // temporary files of writes in progress or abandoned
	Quota       int64 // the quota of the last store opened on it; 0 if unknown
}

// Scan counts the blocks of the store in dir.
func Scan(dir string) (Usage, error) {
	var u Usage
	if err := checkVersion(dir, false); err != nil {
		return u, err
	}
	if b, err := os.ReadFile(filepath.Join(dir, quotaName)); err == nil {
		if q, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && q >= 0 {
			u.Quota = q
		}
	}
	err := walkBlocks(dir, func(p, key string, fi fs.FileInfo) error {
		if key == "" {
			u.Temp++
			return nil
		}
		u.Blocks++
		u.Bytes += fi.Size()
		if pinnedMode(fi.Mode()) {
			u.Pinned++
			u.PinnedBytes += fi.Size()
		}
		return nil
	})
	return u, err
}

// walkBlocks calls f with every file under dir/blocks: key is the block's
// multihash, or "" for a file that is not a block (a temporary file).
// Files that vanish meanwhile are skipped.
func walkBlocks(dir string, f func(p, key string, fi fs.FileInfo) error) error {
	return filepath.WalkDir(filepath.Join(dir, "blocks"), func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if e.IsDir() {
			return nil
		}
		fi, err := e.Info()
		if err != nil {
			return nil
		}
		raw, herr := hex.DecodeString(e.Name())
		if herr != nil || len(raw) == 0 || !fi.Mode().IsRegular() {
			return f(p, "", fi)
		}
		return f(p, string(raw), fi)
	})
}

// GCResult says what GC did.
type GCResult struct {
	Removed      int // block files deleted
	RemovedBytes int64
	Kept         int // block files left
	KeptBytes    int64
	Needed       int // of Kept: needed (and pinned)
	NeededBytes  int64
	Recent       int // of Kept: not needed, used since the cutoff
	RecentBytes  int64
	Unpinned     int // pinned files no longer needed (removed or kept as recent)
	Repinned     int // needed files found unpinned (fetched again by a mount), pinned
	Temp         int // temporary files deleted
}

// GC collects garbage in the store in dir: blocks that needed does not
// name and that were not used since cutoff are deleted; needed blocks are
// pinned, and pinned blocks it does not name are unpinned. needed is
// called under the directory's lock with a reader of the stored blocks
// (see ReadOnly) and returns the keys (see Key) to keep. GC holds the
// lock exclusively: it fails at once, wrapping ErrInUse, while a store is
// open on dir (a mount, a server, a prefetch), and a store opening
// meanwhile waits for it.
func GC(dir string, needed func(fetch.BlockGetter) (map[string]bool, error), cutoff time.Time) (GCResult, error) {
	var r GCResult
	if err := checkVersion(dir, false); err != nil {
		return r, err
	}
	lock, err := lockExclusive(dir)
	if err != nil {
		return r, err
	}
	defer lock.Close()
	keep, err := needed(ReadOnly(dir))
	if err != nil {
		return r, err
	}
	err = walkBlocks(dir, func(p, key string, fi fs.FileInfo) error {
		switch {
		case key == "":
			// No store is open: a temporary file is abandoned.
			if os.Remove(p) == nil {
				r.Temp++
			}
			return nil
		case keep[key]:
			if !pinnedMode(fi.Mode()) {
				if err := os.Chmod(p, modePinned); err != nil {
					return err
				}
				r.Repinned++
			}
			r.Needed++
			r.NeededBytes += fi.Size()
		case fi.ModTime().Before(cutoff):
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			if pinnedMode(fi.Mode()) {
				r.Unpinned++
			}
			r.Removed++
			r.RemovedBytes += fi.Size()
			return nil
		default:
			if pinnedMode(fi.Mode()) {
				if err := os.Chmod(p, modeBlock); err != nil {
					return err
				}
				r.Unpinned++
			}
			r.Recent++
			r.RecentBytes += fi.Size()
		}
		r.Kept++
		r.KeptBytes += fi.Size()
		return nil
	})
	return r, err
}
