package fusefs

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/ipnix/ipnix/narindex"
)

// Passthrough: once a store path's NAR has been verified in this process,
// an open of one of its larger files may be served by the kernel straight
// from a local copy (FUSE passthrough, Linux 6.9+, root), with no request
// reaching this process per read. The copy is written from verified blocks
// into FilesDir; copies left by earlier processes are not trusted and are
// removed at start. Where the kernel or the files directory does not allow
// it, reads fall back to the normal path.

// passthroughMin is the smallest file worth a local copy.
const passthroughMin = 256 << 10

// files manages the local copies of verified files.
type files struct {
	dir   string
	quota int64

	used atomic.Int64
	mu   sync.Mutex
	done map[string]bool // copies written by this process
}

func newFiles(dir string, quota int64) (*files, error) {
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("clearing %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return &files{dir: dir, quota: quota, done: map[string]bool{}}, nil
}

// open returns a read-only descriptor of the local copy of file ln of sp,
// writing the copy first when this process has not.
func (fl *files) open(ctx context.Context, sp *storePath, ln *narindex.ListingNode, ordinal uint32) (int, error) {
	p := filepath.Join(fl.dir, narindex.EncodeNix32(sp.info.NarHash.Digest), strconv.FormatUint(uint64(ordinal), 10))
	fl.mu.Lock()
	ok := fl.done[p]
	fl.mu.Unlock()
	if !ok {
		if fl.used.Add(ln.Size) > fl.quota {
			fl.used.Add(-ln.Size)
			return -1, fmt.Errorf("local copies at their quota of %d bytes", fl.quota)
		}
		if err := fl.write(ctx, sp, ln, p); err != nil {
			fl.used.Add(-ln.Size)
			return -1, err
		}
		fl.mu.Lock()
		fl.done[p] = true
		fl.mu.Unlock()
	}
	return syscall.Open(p, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
}

func (fl *files) write(ctx context.Context, sp *storePath, ln *narindex.ListingNode, p string) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	r := io.NewSectionReader(ctxReaderAt{ctx, sp.nar}, ln.NarOffset, ln.Size)
	if n, err := io.Copy(tmp, r); err != nil || n != ln.Size {
		return fmt.Errorf("copying %d bytes: %d, %v", ln.Size, n, err)
	}
	if err := tmp.Chmod(0o400); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), p)
}
