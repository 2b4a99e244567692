package publish

import (
	"errors"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// directAlign is the alignment O_DIRECT writes keep: of the memory,
	// the file offset and the length. Chunks are whole pages from the Go
	// heap, so every chunk of a NAR but its last qualifies.
	directAlign = 4096
	// writeBehindStep is how many bytes written through the page cache
	// are let accumulate before the kernel is asked to write them out.
	writeBehindStep = 8 << 20
)

// narFile writes a NAR file that nobody reads soon: bypassing the page
// cache (O_DIRECT) where the file system allows, which costs the least
// CPU and leaves the cache to the store paths being read, and otherwise
// starting writeback as it goes, so that the fsync at the end waits for
// the last few megabytes, not for the whole NAR (a machine with plenty of
// memory would otherwise keep it all dirty until then). Either way the
// caller's fsync is what makes the file durable.
type narFile struct {
	f      *os.File
	direct bool
	off    int64 // bytes written
	synced int64 // bytes whose writeback was started
}

func newNarFile(f *os.File) *narFile {
	w := &narFile{f: f}
	w.direct = w.setDirect(true) == nil
	return w
}

func (w *narFile) setDirect(on bool) error {
	fd := w.f.Fd()
	fl, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	if on {
		fl |= unix.O_DIRECT
	} else {
		fl &^= unix.O_DIRECT
	}
	_, err = unix.FcntlInt(fd, unix.F_SETFL, fl)
	return err
}

func (w *narFile) Write(p []byte) (int, error) {
	if w.direct && (len(p)%directAlign != 0 || w.off%directAlign != 0 ||
		uintptr(unsafe.Pointer(unsafe.SliceData(p)))%directAlign != 0) {
		w.stopDirect()
	}
	n, err := w.f.Write(p)
	if w.direct && n == 0 && errors.Is(err, unix.EINVAL) {
		// A file system that takes the flag but not the write.
		w.stopDirect()
		n, err = w.f.Write(p)
	}
	w.off += int64(n)
	if !w.direct && w.off-w.synced >= writeBehindStep {
		// Advice only: a failure shows in the fsync.
		unix.SyncFileRange(int(w.f.Fd()), w.synced, w.off-w.synced, unix.SYNC_FILE_RANGE_WRITE)
		w.synced = w.off
	}
	return n, err
}

// stopDirect writes the rest through the page cache.
func (w *narFile) stopDirect() {
	w.setDirect(false)
	w.direct = false
	w.synced = w.off
}
