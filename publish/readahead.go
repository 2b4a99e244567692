package publish

import (
	"sync"

	"golang.org/x/sys/unix"
)

// heldFiles bounds the files all walks keep open for their writers (and
// a quarter of the process's limit does); past it a walk closes a file
// once it has asked for it to be read, and the writer opens it again.
const heldFiles = 1024

func maxHeldFiles() int {
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) != nil {
		return 16
	}
	return int(min(max(lim.Cur/4, 1), heldFiles))
}

// readAhead is the window of file bytes walkers may have asked the
// kernel for but writers have not yet consumed, and the files they hold
// open.
type readAhead struct {
	mu      sync.Mutex
	window  int64
	ahead   int64
	changed chan struct{} // closed and replaced when ahead drops
	waiting bool          // someone waits on changed
	fds     chan struct{} // a token per file held open
}

func newReadAhead(window int64) *readAhead {
	return &readAhead{window: window, changed: make(chan struct{}), fds: make(chan struct{}, maxHeldFiles())}
}

// holdFile takes a token for a file to keep open, if one is left.
func (r *readAhead) holdFile() bool {
	select {
	case r.fds <- struct{}{}:
		return true
	default:
		return false
	}
}

// done gives back what an item held: its file, its token, its charge.
func (r *readAhead) done(it *dumpItem) {
	if it.fd >= 0 {
		unix.Close(it.fd)
		it.fd = -1
		<-r.fds
	}
	r.release(it.charge)
	it.charge = 0
}

// defaultWindow is the read-ahead window for a machine of this much
// memory: an eighth of it, within 32 and 256 MiB.
func defaultWindow() int64 {
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) != nil {
		return 64 << 20
	}
	return min(max(int64(si.Totalram)*int64(si.Unit)/8, 32<<20), 256<<20)
}

// acquire waits until n more bytes fit in the window (or nothing is
// ahead, so that a file larger than the window still goes), or quit.
func (r *readAhead) acquire(n int64, quit <-chan struct{}) bool {
	for {
		r.mu.Lock()
		if r.ahead == 0 || r.ahead+n <= r.window {
			r.ahead += n
			r.mu.Unlock()
			return true
		}
		ch := r.changed
		r.waiting = true
		r.mu.Unlock()
		select {
		case <-ch:
		case <-quit:
			return false
		}
	}
}

// held returns the bytes acquired and not yet released.
func (r *readAhead) held() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ahead
}

func (r *readAhead) release(n int64) {
	if n == 0 {
		return
	}
	r.mu.Lock()
	r.ahead -= n
	if r.waiting {
		close(r.changed)
		r.changed = make(chan struct{})
		r.waiting = false
	}
	r.mu.Unlock()
}
