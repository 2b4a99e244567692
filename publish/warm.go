package publish

import (
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// warmAhead asks the kernel to start reading the regular files under root
// in the order a NAR visits them (entries sorted bytewise), staying at
// most window bytes ahead of progress, the NAR bytes written so far. A
// store path of many small files, read one after another, otherwise waits
// for the disk once per file. Advice only: errors are ignored. The
// returned stop ends the walk.
func warmAhead(root string, progress *atomic.Int64, window int64) (stop func()) {
	quit := make(chan struct{})
	done := make(chan struct{})
	var queued int64
	var walk func(p string) bool
	walk = func(p string) bool {
		fi, err := os.Lstat(p)
		if err != nil {
			return true
		}
		switch {
		case fi.Mode().IsRegular():
			for queued-progress.Load() > window {
				select {
				case <-quit:
					return false
				case <-time.After(time.Millisecond):
				}
			}
			if f, err := os.Open(p); err == nil {
				unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_WILLNEED)
				f.Close()
			}
			queued += fi.Size()
		case fi.IsDir():
			ents, err := os.ReadDir(p) // sorted by name, bytewise, as in a NAR
			if err != nil {
				return true
			}
			for _, e := range ents {
				if !walk(filepath.Join(p, e.Name())) {
					return false
				}
			}
		}
		return true
	}
	go func() {
		defer close(done)
		walk(root)
	}()
	return func() {
		close(quit)
		<-done
	}
}

// progressWriter counts the bytes written through it.
type progressWriter struct {
	w interface{ Write([]byte) (int, error) }
	n *atomic.Int64
}

func (p progressWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	p.n.Add(int64(n))
	return n, err
}
