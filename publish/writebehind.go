package publish

import (
	"os"

	"golang.org/x/sys/unix"
)

// writeBehindStep is how many bytes of a NAR file are written before the
// kernel is asked to start writing them to disk.
const writeBehindStep = 8 << 20

// writeBehind writes a file and starts its writeback as it goes, so that
// the fsync at the end waits for the last few megabytes, not for the
// whole NAR (a machine with plenty of memory would otherwise keep it all
// dirty until then).
type writeBehind struct {
	f      *os.File
	off    int64 // bytes written
	synced int64 // bytes whose writeback was started
}

func (w *writeBehind) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.off += int64(n)
	if w.off-w.synced >= writeBehindStep {
		// Advice only: a failure shows in the fsync.
		unix.SyncFileRange(int(w.f.Fd()), w.synced, w.off-w.synced, unix.SYNC_FILE_RANGE_WRITE)
		w.synced = w.off
	}
	return n, err
}
