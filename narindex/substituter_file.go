package narindex

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/ipnix/ipnix/internal/blockfile"
)

// fileFetcher reads a binary cache in a local directory.
type fileFetcher struct{ dir string }

// fileReads bounds the reads of file:// binary caches running at once (see
// blockfile.Limiter).
var fileReads = blockfile.NewLimiter(blockfile.DefaultPending)

// fetch reads name within ctx: a cache directory on a disk or network
// file system that stopped answering holds no lookup past its bound.
func (f fileFetcher) fetch(ctx context.Context, name string, limit int64) ([]byte, error) {
	path := filepath.Join(f.dir, name)
	return blockfile.Bounded(ctx, fileReads, path, func() ([]byte, error) { return readCacheFile(path, limit) })
}

// readCacheFile reads the file path of a binary cache, of at most limit
// bytes.
func readCacheFile(path string, limit int64) ([]byte, error) {
	// Non-blocking, so that a FIFO put in place of a narinfo cannot hang
	// the reader; only a regular file (symlinks followed, as Nix does) is
	// read.
	file, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", path, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	defer file.Close()
	fi, err := file.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%s)", path, fi.Mode().Type())
	}
	return readLimited(file, limit, path)
}

// errTooLarge is wrapped by the error of readLimited for a file over the
// limit.
var errTooLarge = errors.New("larger than the limit")

// readLimited reads r to its end, refusing more than limit bytes.
func readLimited(r io.Reader, limit int64, what string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if int64(len(data)) > limit {
		return nil, tag(errTooLarge, fmt.Errorf("%s: larger than the limit of %d bytes", what, limit))
	}
	return data, nil
}
