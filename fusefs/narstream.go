package fusefs

import (
	"io"

	"github.com/ipnix/ipnix/narindex"
)

// narStream parses a NAR handed over in pieces, in order, as it streams
// past the hasher, into the listing it really holds. Checking that listing
// against the one served then needs no second pass over the NAR's headers
// (which, on a path of many small files, lie in nearly every block, long
// evicted from the memory cache by the time the last file is read).
type narStream struct {
	pieces chan []byte
	done   chan parsed
}

type parsed struct {
	l   *narindex.Listing
	err error
}

func newNarStream() *narStream {
	s := &narStream{pieces: make(chan []byte, 64), done: make(chan parsed, 1)}
	go func() {
		r := &piecesReader{ch: s.pieces}
		l, err := narindex.ListingFromNar(r)
		for range s.pieces { // whatever follows a malformed NAR
		}
		s.done <- parsed{l, err}
	}()
	return s
}

// write hands over the next piece; it must not be modified afterwards.
func (s *narStream) write(p []byte) {
	if len(p) > 0 {
		s.pieces <- p
	}
}

// finish ends the stream and returns the parsed listing.
func (s *narStream) finish() (*narindex.Listing, error) {
	close(s.pieces)
	r := <-s.done
	return r.l, r.err
}

// piecesReader reads a channel of byte slices as one stream.
type piecesReader struct {
	ch  <-chan []byte
	cur []byte
}

func (r *piecesReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		next, ok := <-r.ch
		if !ok {
			return 0, io.EOF
		}
		r.cur = next
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}
