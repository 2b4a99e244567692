package fusefs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/narindex"
)

// Passthrough: once a store path's NAR has matched its NarHash, its larger
// files have local copies in FilesDir: written as the NAR was hashed (see
// copystream.go), or else copied from blocks in the background. An open of
// such a file hands the kernel the copy (FUSE passthrough, Linux 6.9+,
// root), and no request reaches this process per read. Where the kernel or
// the files directory does not allow it, reads take the normal path.
//
// Layout, one directory per verified NAR, named by its NarHash:
//
//	FILES/<nix32 sha256 of the NAR>/manifest    "<narOffset> <size> crc32c:<hex>" per copy (copysum.go)
//	FILES/<nix32 sha256 of the NAR>/<narOffset> the regular file at that offset
//	FILES/.tmp-*                                 being written; removed at start
//
// A directory appears by one rename once every copy in it and the manifest
// are written. Copies hold the bytes that were hashed to match the signed
// NarHash, or blocks that matched their CIDs of a NAR that then matched
// it; each is checksummed for the manifest as it is written. Copies written by
// this process are used at once; a directory found at start is used only
// after every copy in it has been hashed again against its manifest (in
// the background, on the first use of a path with that NarHash); until
// then reads go through verified blocks, and a mismatch drops the
// directory. Copies are found through the listing the path is served
// from (itself authenticated), never through a listing saved here. Whole
// directories are evicted, least recently used first, to stay under
// quota.

// passthroughMin is the smallest file worth a local copy.
const passthroughMin = 256 << 10

// copyGrace bounds how long closing the filesystem waits for copies being
// written; what is unfinished then is abandoned.
const copyGrace = 10 * time.Second

// files manages the directories of local copies.
type files struct {
	dir   string
	quota int64
	log   *slog.Logger

	ctx    context.Context // cancelled by close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	stats *Stats

	mu      sync.Mutex
	lru     *simplelru.LRU[string, int64] // NarHash (nix32) -> bytes, oldest first
	used    int64
	busy    map[string]bool // being written from blocks
	streams map[string]*copyStream
	state   map[string]copyState     // absent: written by this process, or checked
	checked map[string]bool          // "<dir>/<offset>": copies checked one by one
	hashing map[string]chan struct{} // "<dir>/<offset>": being hashed; closed when done

	// copiedBlocks, if set, is told the blocks copies now hold (see
	// FS.SetCopiedBlocks).
	copiedBlocks atomic.Pointer[func(cid.Cid)]
	streamed     atomic.Int64 // directories written from the checker's stream
}

// copyState is where a directory found at start stands.
type copyState int

const (
	unchecked copyState = iota // found at start, not yet hashed again
	checking
)

// openFiles opens (creating it if needed) the copies directory, removes
// unfinished work and trims it to quota.
func openFiles(dir string, quota int64, log *slog.Logger, stats *Stats) (*files, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	lru, _ := simplelru.NewLRU[string, int64](math.MaxInt, nil)
	ctx, cancel := context.WithCancel(context.Background())
	fl := &files{dir: dir, quota: quota, log: log, stats: stats, ctx: ctx, cancel: cancel, lru: lru,
		busy: map[string]bool{}, streams: map[string]*copyStream{}, state: map[string]copyState{}, checked: map[string]bool{}, hashing: map[string]chan struct{}{}}
	type found struct {
		name string
		size int64
		used time.Time
	}
	var all []found
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if !e.IsDir() || !isNix32Hash(e.Name()) {
			// Unfinished copies and anything else not ours to keep.
			if err := os.RemoveAll(p); err != nil {
				return nil, err
			}
			continue
		}
		size, err := dirSize(p)
		fi, serr := os.Stat(p)
		if err != nil || serr != nil {
			os.RemoveAll(p)
			continue
		}
		all = append(all, found{e.Name(), size, fi.ModTime()})
	}
	// Oldest first, so the LRU order survives the restart.
	slices.SortFunc(all, func(a, b found) int { return a.used.Compare(b.used) })
	for _, f := range all {
		fl.lru.Add(f.name, f.size)
		fl.used += f.size
		fl.state[f.name] = unchecked
	}
	fl.mu.Lock()
	fl.evictLocked(0)
	fl.mu.Unlock()
	return fl, nil
}

func isNix32Hash(s string) bool {
	_, err := narindex.DecodeNix32(s)
	return err == nil && len(s) == 52
}

func dirSize(p string) (int64, error) {
	ents, err := os.ReadDir(p)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			return 0, err
		}
		n += fi.Size()
	}
	return n, nil
}

// evictLocked removes least recently used directories until need more
// bytes fit under the quota.
func (fl *files) evictLocked(need int64) {
	for fl.used+need > fl.quota {
		name, size, ok := fl.lru.RemoveOldest()
		if !ok {
			return
		}
		fl.used -= size
		// Open descriptors of removed copies stay valid.
		if err := os.RemoveAll(filepath.Join(fl.dir, name)); err != nil {
			fl.log.Warn("removing local copies", "dir", name, "err", err)
		}
	}
}

// open returns a read-only descriptor of the local copy of regular file ln
// of the NAR whose hash is nh.
func (fl *files) open(nh string, ln *narindex.ListingNode) (int, error) {
	p := filepath.Join(fl.dir, nh, strconv.FormatInt(ln.NarOffset, 10))
	fd, err := syscall.Open(p, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil || st.Size != ln.Size {
		syscall.Close(fd)
		fl.log.Warn("dropping local copies: a copy has the wrong size", "file", p, "size", st.Size, "want", ln.Size)
		fl.drop(nh)
		return -1, fmt.Errorf("local copy %s is %d bytes, want %d", p, st.Size, ln.Size)
	}
	if err := fl.checkOne(nh, ln.NarOffset, fd); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

// drop removes the copies of one NAR.
func (fl *files) drop(nh string) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	fl.dropLocked(nh)
}

func (fl *files) dropLocked(nh string) {
	if s := fl.takeStreamLocked(nh); s != nil {
		s.abort()
	}
	delete(fl.state, nh)
	for k := range fl.checked {
		if strings.HasPrefix(k, nh+"/") {
			delete(fl.checked, k)
		}
	}
	if size, ok := fl.lru.Peek(nh); ok {
		fl.lru.Remove(nh)
		fl.used -= size
	}
	os.RemoveAll(filepath.Join(fl.dir, nh))
}

// copyable lists the files of sp worth a local copy and their total size.
func copyable(sp *storePath) ([]*narindex.ListingNode, int64) {
	var out []*narindex.ListingNode
	var total int64
	var walk func(n *narindex.ListingNode)
	walk = func(n *narindex.ListingNode) {
		if n.Type == narindex.TypeRegular && n.Size >= passthroughMin {
			out = append(out, n)
			total += n.Size
		}
		for _, c := range n.Entries {
			walk(c)
		}
	}
	walk(sp.listing.Root)
	return out, total
}

// materialize makes the copies of store path sp, verified this moment,
// usable: those its copy stream wrote, at once, or else it starts copying
// them from blocks, unless they exist, are being written, or do not fit.
func (fl *files) materialize(sp *storePath) {
	nh := sp.copiesKey
	fl.mu.Lock()
	s := fl.streams[nh]
	fl.mu.Unlock()
	if s != nil && s.sp == sp {
		err := s.finish()
		if err == nil {
			fl.streamed.Add(1)
			sp.fs.Stats.LocalCopies.Add(1)
			fl.log.Debug("local copies written as the NAR was verified", "path", sp.base, "files", len(s.todo), "bytes", s.total)
			fl.uncache(sp, s.todo)
			return
		}
		fl.log.Debug("local copies not written from the verified stream; copying from blocks", "path", sp.base, "err", err)
	}
	todo, total := copyable(sp)
	if len(todo) == 0 || total > fl.quota {
		return
	}
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.lru.Contains(nh) || fl.busy[nh] || fl.ctx.Err() != nil {
		return
	}
	fl.busy[nh] = true
	fl.wg.Go(func() {
		start := time.Now()
		err := fl.write(sp, nh, todo, total)
		fl.mu.Lock()
		delete(fl.busy, nh)
		fl.mu.Unlock()
		if err != nil {
			fl.log.Warn("no local copies for passthrough", "path", sp.base, "err", err)
			return
		}
		sp.fs.Stats.LocalCopies.Add(1)
		fl.log.Debug("local copies written", "path", sp.base, "files", len(todo), "bytes", total, "took", time.Since(start))
		fl.uncache(sp, todo)
	})
}

func (fl *files) write(sp *storePath, nh string, todo []*narindex.ListingNode, total int64) error {
	tmp, err := os.MkdirTemp(fl.dir, ".tmp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	buf := make([]byte, 1<<20)
	var manifest strings.Builder
	for _, ln := range todo {
		sum, err := fl.copyFile(sp, ln, filepath.Join(tmp, strconv.FormatInt(ln.NarOffset, 10)), buf)
		if err != nil {
			return err
		}
		fmt.Fprintf(&manifest, "%d %d %s\n", ln.NarOffset, ln.Size, sum)
	}
	if err := writeSynced(filepath.Join(tmp, "manifest"), []byte(manifest.String())); err != nil {
		return err
	}
	if err := syncDir(tmp); err != nil {
		return err
	}
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.ctx.Err() != nil {
		return context.Canceled
	}
	size, err := dirSize(tmp)
	if err != nil {
		return err
	}
	fl.evictLocked(size)
	if err := os.Rename(tmp, filepath.Join(fl.dir, nh)); err != nil {
		return err
	}
	fl.lru.Add(nh, size)
	fl.used += size
	delete(fl.state, nh)
	return syncDir(fl.dir)
}

// copyFile writes regular file ln of sp to p and returns its manifest
// checksum.
func (fl *files) copyFile(sp *storePath, ln *narindex.ListingNode, p string, buf []byte) (string, error) {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o400)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := newCopySum()
	for off := int64(0); off < ln.Size; {
		n := min(int64(len(buf)), ln.Size-off)
		m, err := sp.nar.ReadAt(fl.ctx, buf[:n], ln.NarOffset+off)
		if int64(m) < n {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return "", fmt.Errorf("copying %d bytes at NAR offset %d: %w", ln.Size, ln.NarOffset, err)
		}
		h.Write(buf[:n])
		if _, err := f.Write(buf[:n]); err != nil {
			return "", err
		}
		off += n
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	return crc32cCopySum.format(h), f.Close()
}

func writeSynced(p string, data []byte) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o400)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

func syncDir(p string) error {
	d, err := os.Open(p)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// close waits up to copyGrace for copies being written, then abandons them.
func (fl *files) close() {
	done := make(chan struct{})
	go func() { fl.wg.Wait(); close(done) }()
	t := time.NewTimer(copyGrace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		fl.log.Warn("abandoning local copies still being written", "after", copyGrace)
	}
	fl.cancel()
	fl.stopStreams()
	fl.wg.Wait()
}
