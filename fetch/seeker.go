package fetch

import (
	"context"
	"errors"
	"io"
	"time"
)

// ReadSeeker reads bytes of f as an io.ReadSeeker, through a 64 KiB
// buffer, each fetch under ctx and, when timeout is positive, bounded by
// it: for readers that want the io shapes (a NAR header walk, an HTTP
// range response).
func (f *File) ReadSeeker(ctx context.Context, timeout time.Duration) io.ReadSeeker {
	return newSeekBuffer(fileReaderAt{ctx, f, timeout}, f.size)
}

// fileReaderAt gives a File the io.ReaderAt shape with a fixed context.
type fileReaderAt struct {
	ctx     context.Context
	f       *File
	timeout time.Duration
}

func (r fileReaderAt) ReadAt(p []byte, off int64) (int, error) {
	ctx := r.ctx
	if r.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.timeout)
		defer cancel()
	}
	return r.f.ReadAt(ctx, p, off)
}

// seekBuffer reads an io.ReaderAt as an io.ReadSeeker through a buffer, so
// that a NAR parser's many small token reads become few block reads while
// its seeks over file contents still skip them (and an HTTP range copy
// reads whole buffers).
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
