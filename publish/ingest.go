package publish

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/narindex"
)

// ingested is what one pass over a NAR stream produced.
type ingested struct {
	cid     cid.Cid
	hash    narindex.Hash
	size    uint64
	listing []byte
}

// ingest streams a NAR once: into IPFS through add, into a SHA-256, into
// the listing builder (which also validates the NAR and refuses more than
// maxEntries entries; 0 means the default), and into extra (may be nil).
// The caller checks hash and size against what it was promised.
func ingest(ctx context.Context, add Adder, nar io.Reader, extra io.Writer, maxEntries int) (*ingested, error) {
	h := sha256.New()
	cnt := &counter{}
	lb := narindex.NewListingBuilderLimit(maxEntries)
	writers := []io.Writer{h, cnt, lb}
	if extra != nil {
		writers = append(writers, extra)
	}
	// Hashing, parsing and writing the NAR file run beside the upload,
	// not in its path. A malformed NAR fails the side writer, and with it
	// the upload, early.
	side := newAsyncWriter(io.MultiWriter(writers...))
	src := io.TeeReader(nar, side)
	c, err := add.Add(ctx, src)
	if err == nil {
		// Whatever add did not consume still has to be hashed and parsed.
		_, err = io.Copy(io.Discard, src)
	}
	if sideErr := side.Close(); sideErr != nil {
		// The side's failure (a malformed NAR, a full disk) is the cause
		// of whatever add made of it.
		err = sideErr
	}
	if err != nil {
		if errors.Is(err, narindex.ErrMalformedNAR) || errors.Is(err, narindex.ErrTooManyEntries) {
			return nil, fmt.Errorf("not a valid NAR: %w", err)
		}
		return nil, err
	}
	l, err := lb.Finish()
	if err != nil {
		return nil, fmt.Errorf("not a valid NAR: %w", err)
	}
	data, err := l.Marshal()
	if err != nil {
		return nil, err
	}
	return &ingested{cid: c, hash: narindex.SHA256(h.Sum(nil)), size: cnt.n, listing: data}, nil
}

type counter struct{ n uint64 }

func (c *counter) Write(p []byte) (int, error) { c.n += uint64(len(p)); return len(p), nil }

// checkNar compares what was ingested with what the source promised.
func (in *ingested) check(what string, want narindex.Hash, wantSize uint64) error {
	if in.size != wantSize {
		return fmt.Errorf("%s: NAR is %d bytes, expected NarSize %d", what, in.size, wantSize)
	}
	if want.Algo != "sha256" || !bytes.Equal(in.hash.Digest, want.Digest) {
		return fmt.Errorf("%s: NAR hash is %s, expected %s", what, in.hash, want)
	}
	return nil
}

// asyncWriter hands writes to a goroutine through a short queue of copies,
// so that a slow writer below delays the caller only when the queue is
// full. The first error below is returned by later writes and by Close.
type asyncWriter struct {
	ch   chan []byte
	done chan struct{}
	w    io.Writer
	err  error         // the first error below, set once
	fail chan struct{} // closed after err is set
	once sync.Once
}

func newAsyncWriter(w io.Writer) *asyncWriter {
	a := &asyncWriter{ch: make(chan []byte, 16), done: make(chan struct{}), fail: make(chan struct{}), w: w}
	go func() {
		defer close(a.done)
		for p := range a.ch {
			if a.err != nil {
				continue
			}
			if _, err := a.w.Write(p); err != nil {
				a.err = err
				close(a.fail)
			}
		}
	}()
	return a
}

func (a *asyncWriter) Write(p []byte) (int, error) {
	// a.err is written before fail closes, and never again.
	select {
	case <-a.fail:
		return 0, a.err
	default:
	}
	select {
	case a.ch <- bytes.Clone(p):
		return len(p), nil
	case <-a.fail:
		return 0, a.err
	}
}

// Close waits for every queued write and returns the first error.
func (a *asyncWriter) Close() error {
	a.once.Do(func() { close(a.ch) })
	<-a.done
	return a.err
}
