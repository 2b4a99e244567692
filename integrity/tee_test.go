package integrity

import (
	"bytes"
	"context"
	"testing"
)

// teeSink collects what a tee hands out and checks that it comes in NAR
// order without gaps.
type teeSink struct {
	t    *testing.T
	from int64
	got  []byte
}

func (s *teeSink) write(off int64, p []byte) {
	if want := s.from + int64(len(s.got)); off != want {
		s.t.Errorf("tee got %d bytes at %d, want them at %d", len(p), off, want)
	}
	s.got = append(s.got, p...)
}

// The tee sees every byte of the NAR from the frontier at which it was
// attached, in order, before Verify returns: bytes streamed in order,
// leaves kept ahead and fed later, and what Verify read itself.
func TestTeeSeesEveryByteInOrder(t *testing.T) {
	n := makeNar(t)
	c := New(n.hash, int64(len(n.data)), 0, nil)
	c.Serve(n.listing)
	c.OnLeaf(0, n.data[:3000])
	s := &teeSink{t: t}
	s.from = c.Tee(s.write, nil)
	if s.from != 3000 {
		t.Fatalf("Tee returned frontier %d, want 3000", s.from)
	}
	c.OnLeaf(3000, n.data[3000:6000])
	c.OnLeaf(9000, n.data[9000:12000]) // ahead, kept
	c.OnLeaf(6000, n.data[6000:9000])  // brings the kept leaf along
	if len(s.got) != 9000 {
		t.Fatalf("tee has %d bytes after streaming, want 9000", len(s.got))
	}
	var read int64
	if now, err := c.Verify(context.Background(), readerOf(n.data, &read)); err != nil || !now {
		t.Fatalf("Verify = %v, %v", now, err)
	}
	if !bytes.Equal(s.got, n.data[3000:]) {
		t.Fatalf("tee has %d bytes, differing from the NAR's %d after the frontier", len(s.got), len(n.data)-3000)
	}
}

// Release stops the tee and says so; nothing is handed out afterwards.
func TestTeeReleased(t *testing.T) {
	n := makeNar(t)
	c := New(n.hash, int64(len(n.data)), 0, nil)
	c.Serve(n.listing)
	var got int
	released := 0
	c.Tee(func(off int64, p []byte) { got += len(p) }, func() { released++ })
	c.OnLeaf(0, n.data[:1000])
	c.Release()
	c.OnLeaf(1000, n.data[1000:2000])
	c.Release()
	if got != 1000 || released != 1 {
		t.Fatalf("tee got %d bytes and was released %d times; want 1000 and once", got, released)
	}
}
