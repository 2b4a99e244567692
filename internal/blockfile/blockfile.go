// Package blockfile reads a file that holds one block, from a directory
// that is not trusted to hold only regular files: a cache directory, or a
// kubo repository's blockstore; and it bounds in time reads of files on a
// disk that may stop answering (Bounded).
package blockfile

import (
	"fmt"
	"io"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// Read reads the block file p, which must be a regular file (a symlink is
// not followed) of at most max bytes; it is opened without blocking, so
// that a FIFO put in its place fails rather than waits for a writer. Its
// bytes are the caller's to check.
func Read(p string, max int64) ([]byte, fs.FileInfo, error) {
	return read(p, max, unix.O_NOFOLLOW)
}

// ReadFollowing is Read for a small file that may be reached through a
// symlink, such as kubo's api file: a FIFO or a device there still fails
// at once rather than blocks.
func ReadFollowing(p string, max int64) ([]byte, fs.FileInfo, error) {
	return read(p, max, 0)
}

func read(p string, max int64, flags int) ([]byte, fs.FileInfo, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|flags, 0)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s is not a regular file (%v)", p, fi.Mode().Type())
	}
	if fi.Size() > max {
		return nil, nil, fmt.Errorf("%s holds %d bytes, more than it may (%d)", p, fi.Size(), max)
	}
	data := make([]byte, fi.Size())
	if _, err := io.ReadFull(f, data); err != nil {
		return nil, nil, fmt.Errorf("reading %s: %w", p, err)
	}
	return data, fi, nil
}
