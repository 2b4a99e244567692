package publish

import (
	"io"
	"sync"
	"sync/atomic"
)

const (
	// chunkSize is the unit a NAR travels in from its source to the sinks
	// (the upload, the hash and listing, the NAR file).
	chunkSize = 1 << 20
	// chunksInFlight bounds the memory of one ingest: the source waits
	// for a free chunk when the slowest sink is this far behind.
	chunksInFlight = 16
)

// chunk is a piece of a NAR shared, read-only, by every sink.
type chunk struct {
	b    []byte // the bytes; cap chunkSize
	refs atomic.Int32
}

// fanout hands each chunk of a NAR to every sink in order, without
// copying it; a chunk is reused once every sink has released it. The
// first failure, of the source or of any sink, is recorded and stops the
// source; sinks keep releasing what reaches them, so nothing blocks.
type fanout struct {
	made  int // chunks taken from chunkPool; only get touches it
	free  chan *chunk
	sinks []chan *chunk
	abort chan struct{} // closed after err is set
	once  sync.Once
	err   error
}

func newFanout(nsinks int) *fanout {
	f := &fanout{free: make(chan *chunk, chunksInFlight), abort: make(chan struct{})}
	for range nsinks {
		// Room for every chunk there is: send never blocks.
		f.sinks = append(f.sinks, make(chan *chunk, chunksInFlight))
	}
	return f
}

// get returns an empty chunk, or the first failure.
func (f *fanout) get() (*chunk, error) {
	select {
	case <-f.abort:
		return nil, f.err
	default:
	}
	var c *chunk
	select {
	case c = <-f.free:
	default:
		if f.made < chunksInFlight {
			f.made++
			c = chunkPool.Get().(*chunk)
			break
		}
		select {
		case c = <-f.free:
		case <-f.abort:
			return nil, f.err
		}
	}
	c.b = c.b[:0]
	return c, nil
}

// chunkPool keeps chunks between the NARs of a run: most store paths are
// small, and a fresh megabyte for each is expensive to clear.
var chunkPool = sync.Pool{New: func() any { return &chunk{b: make([]byte, 0, chunkSize)} }}

// recycle returns the free chunks to chunkPool once the stream is over.
func (f *fanout) recycle() {
	for {
		select {
		case c := <-f.free:
			chunkPool.Put(c)
		default:
			return
		}
	}
}

// send passes c to every sink; the source must not touch it afterwards.
func (f *fanout) send(c *chunk) {
	if len(c.b) == 0 {
		f.free <- c
		return
	}
	c.refs.Store(int32(len(f.sinks)))
	for _, s := range f.sinks {
		s <- c
	}
}

// release is a sink's word that it is done with c.
func (f *fanout) release(c *chunk) {
	if c.refs.Add(-1) == 0 {
		f.free <- c
	}
}

// fail records err as the failure unless one came first.
func (f *fanout) fail(err error) {
	f.once.Do(func() {
		f.err = err
		close(f.abort)
	})
}

// failed returns the first failure, or nil.
func (f *fanout) failed() error {
	select {
	case <-f.abort:
		return f.err
	default:
		return nil
	}
}

// close ends the stream; the source calls it once, last.
func (f *fanout) close() {
	for _, s := range f.sinks {
		close(s)
	}
}

// drain runs sink i: w sees every chunk in order until it fails; the
// returned wait blocks until the stream ended and returns w's error.
func (f *fanout) drain(i int, w func([]byte) error) (wait func() error) {
	done := make(chan struct{})
	var err error
	go func() {
		defer close(done)
		for c := range f.sinks[i] {
			if err == nil {
				if err = w(c.b); err != nil {
					f.fail(err)
				}
			}
			f.release(c)
		}
	}()
	return func() error { <-done; return err }
}

// chunkReader reads sink i as a byte stream, for an uploader that pulls.
// A stream the source or a sink failed ends with that failure, not EOF, so
// that a truncated NAR is never stored as if complete.
type chunkReader struct {
	f   *fanout
	in  chan *chunk
	cur *chunk
	off int
	eof atomic.Bool // the whole stream was read
}

func (f *fanout) reader(i int) *chunkReader { return &chunkReader{f: f, in: f.sinks[i]} }

func (r *chunkReader) next() error {
	if r.cur != nil {
		r.f.release(r.cur)
		r.cur = nil
	}
	c, ok := <-r.in
	if !ok {
		if err := r.f.failed(); err != nil {
			return err
		}
		r.eof.Store(true)
		return io.EOF
	}
	r.cur, r.off = c, 0
	return nil
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for r.cur == nil || r.off == len(r.cur.b) {
		if err := r.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.cur.b[r.off:])
	r.off += n
	return n, nil
}

// WriteTo hands whole chunks to w, for an uploader that pushes.
func (r *chunkReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if r.cur == nil || r.off == len(r.cur.b) {
			if err := r.next(); err == io.EOF {
				return total, nil
			} else if err != nil {
				return total, err
			}
		}
		n, err := w.Write(r.cur.b[r.off:])
		r.off += n
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
}

// discard releases whatever the uploader left unread and reports whether
// it had read everything.
func (r *chunkReader) discard() bool {
	read := r.eof.Load()
	for r.next() == nil {
	}
	if r.cur != nil {
		r.f.release(r.cur)
		r.cur = nil
	}
	return read
}
