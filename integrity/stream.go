package integrity

import (
	"io"

	"github.com/ipnix/ipnix/narindex"
)

// listingStream parses a NAR handed over in pieces, in order.
// TODO(lead): replace with narindex.ListingBuilder once it lands.
type listingStream struct {
	pieces chan []byte
	done   chan parsed
}

type parsed struct {
	l   *narindex.Listing
	err error
}

func newListingStream(maxEntries int) *listingStream {
	s := &listingStream{pieces: make(chan []byte, 64), done: make(chan parsed, 1)}
	go func() {
		r := &piecesReader{ch: s.pieces}
		l, err := narindex.ListingFromNar(r)
		for range s.pieces {
		}
		s.done <- parsed{l, err}
	}()
	return s
}

func (s *listingStream) write(p []byte) {
	if len(p) > 0 {
		s.pieces <- p
	}
}

func (s *listingStream) finish() (*narindex.Listing, error) {
	close(s.pieces)
	r := <-s.done
	return r.l, r.err
}

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
