package fusefs

import (
	"errors"
	"io"
)

// seekBuffer reads an io.ReaderAt as an io.ReadSeeker through a buffer, so
// that a NAR parser's many small token reads become few block reads while
// its seeks over file contents still skip them.
type seekBuffer struct {
	ra     io.ReaderAt
	size   int64
	pos    int64
	buf    []byte
	bufOff int64
}

func newSeekBuffer(ra io.ReaderAt, size int64) *seekBuffer {
	return &seekBuffer{ra: ra, size: size, buf: make([]byte, 0, 64<<10)}
}

func (s *seekBuffer) Read(p []byte) (int, error) {
	if s.pos >= s.size {
		return 0, io.EOF
	}
	if s.pos < s.bufOff || s.pos >= s.bufOff+int64(len(s.buf)) {
		n := min(int64(cap(s.buf)), s.size-s.pos)
		s.buf = s.buf[:n]
		m, err := s.ra.ReadAt(s.buf, s.pos)
		s.buf, s.bufOff = s.buf[:m], s.pos
		if m == 0 {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
	}
	n := copy(p, s.buf[s.pos-s.bufOff:])
	s.pos += int64(n)
	return n, nil
}

func (s *seekBuffer) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += s.pos
	case io.SeekEnd:
		off += s.size
	default:
		return 0, errors.New("seekBuffer: bad whence")
	}
	if off < 0 {
		return 0, errors.New("seekBuffer: negative position")
	}
	s.pos = off
	return off, nil
}
