package narindex

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrMalformedNAR is wrapped by every error that says the bytes are not a
// valid NAR (as opposed to failing to read them).
var ErrMalformedNAR = errors.New("malformed NAR")

// NodeType is the kind of a NAR entry.
type NodeType uint8

// The kinds of NAR entries.
const (
	TypeRegular NodeType = iota + 1
	TypeDirectory
	TypeSymlink
)

func (t NodeType) String() string {
	switch t {
	case TypeRegular:
		return "regular"
	case TypeDirectory:
		return "directory"
	case TypeSymlink:
		return "symlink"
	}
	return fmt.Sprintf("NodeType(%d)", uint8(t))
}

// Limits Nix's own parser applies (or that keep a hostile NAR from costing
// unbounded memory).
const (
	narMagic       = "nix-archive-1"
	MaxNameLen     = 255
	MaxTargetLen   = 4095
	MaxDepth       = 64
	maxTokenLen    = 4096
	maxContentSize = 1 << 62
)

// NarEntry is one object of a NAR, in NAR order.
type NarEntry struct {
	Path       string // "" for the root, else slash-separated relative path
	Type       NodeType
	Executable bool
	Size       int64 // regular files: content length
	Offset     int64 // regular files: offset of the contents in the NAR
	Target     string
}

// NarReader reads a NAR as a stream of entries, validating as strictly as
// Nix: token order, strictly sorted names, name and target rules, zero
// padding, depth, and no bytes after the end.
type NarReader struct {
	r    io.Reader
	seek io.Seeker // when r can seek, unread contents are skipped with it
	pos  int64

	dirs     []dirFrame
	started  bool
	inFile   bool
	fileLeft int64
	fileSize int64
	nodeDone bool
	err      error
	scratch  [8]byte
}

type dirFrame struct {
	path string
	last string
}

// NewNarReader returns a reader of the NAR in r. If r is also an io.Seeker,
// file contents the caller does not read are skipped with Seek, so only
// header bytes are read.
func NewNarReader(r io.Reader) *NarReader {
	nr := &NarReader{r: r}
	if s, ok := r.(io.Seeker); ok {
		nr.seek = s
	}
	return nr
}

func (r *NarReader) malformed(format string, args ...any) error {
	return fmt.Errorf("%w: at byte %d: %s", ErrMalformedNAR, r.pos, fmt.Sprintf(format, args...))
}

// Next returns the next entry, or io.EOF after the end of a valid NAR.
func (r *NarReader) Next() (*NarEntry, error) {
	if r.err != nil {
		return nil, r.err
	}
	e, err := r.next()
	if err != nil {
		r.err = err
	}
	return e, err
}

func (r *NarReader) next() (*NarEntry, error) {
	if !r.started {
		r.started = true
		if err := r.expect(narMagic); err != nil {
			return nil, err
		}
		return r.node("")
	}
	for {
		if r.inFile {
			if err := r.skip(r.fileLeft); err != nil {
				return nil, err
			}
			r.inFile, r.fileLeft = false, 0
			if err := r.padding(r.fileSize); err != nil {
				return nil, err
			}
			if err := r.expect(")"); err != nil {
				return nil, err
			}
			r.nodeDone = true
		}
		if r.nodeDone {
			r.nodeDone = false
			if len(r.dirs) == 0 {
				return nil, r.end()
			}
			// Close the "entry ( name N node <node> )" wrapper.
			if err := r.expect(")"); err != nil {
				return nil, err
			}
		}
		tok, err := r.token()
		if err != nil {
			return nil, err
		}
		top := &r.dirs[len(r.dirs)-1]
		switch tok {
		case ")":
			r.dirs = r.dirs[:len(r.dirs)-1]
			r.nodeDone = true
		case "entry":
			if err := r.expectAll("(", "name"); err != nil {
				return nil, err
			}
			name, err := r.str(MaxNameLen, "entry name")
			if err != nil {
				return nil, err
			}
			if err := checkName(name); err != nil {
				return nil, r.malformed("%v", err)
			}
			if top.last != "" && name <= top.last {
				return nil, r.malformed("entry names not sorted: %q after %q", name, top.last)
			}
			top.last = name
			if err := r.expect("node"); err != nil {
				return nil, err
			}
			p := name
			if top.path != "" {
				p = top.path + "/" + name
			}
			return r.node(p)
		default:
			return nil, r.malformed("expected \"entry\" or \")\" in directory, got %q", tok)
		}
	}
}

// checkName applies Nix's rules for directory entry names.
func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("empty entry name")
	case name == "." || name == "..":
		return fmt.Errorf("entry name %q", name)
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("entry name %q contains '/' or NUL", name)
	}
	return nil
}

// node reads a node's header up to its contents (regular), its end
// (symlink) or its first entry (directory).
func (r *NarReader) node(path string) (*NarEntry, error) {
	if err := r.expectAll("(", "type"); err != nil {
		return nil, err
	}
	t, err := r.token()
	if err != nil {
		return nil, err
	}
	switch t {
	case "regular":
		e := &NarEntry{Path: path, Type: TypeRegular}
		tok, err := r.token()
		if err != nil {
			return nil, err
		}
		if tok == "executable" {
			marker, err := r.token()
			if err != nil {
				return nil, err
			}
			if marker != "" {
				return nil, r.malformed("executable marker must be empty, got %q", marker)
			}
			e.Executable = true
			if tok, err = r.token(); err != nil {
				return nil, err
			}
		}
		if tok != "contents" {
			return nil, r.malformed("expected \"contents\", got %q", tok)
		}
		size, err := r.u64()
		if err != nil {
			return nil, err
		}
		if size > maxContentSize {
			return nil, r.malformed("file size %d too large", size)
		}
		e.Size, e.Offset = int64(size), r.pos
		r.inFile, r.fileLeft, r.fileSize = true, int64(size), int64(size)
		return e, nil
	case "symlink":
		if err := r.expect("target"); err != nil {
			return nil, err
		}
		target, err := r.str(MaxTargetLen, "symlink target")
		if err != nil {
			return nil, err
		}
		if target == "" || strings.IndexByte(target, 0) >= 0 {
			return nil, r.malformed("symlink target %q is empty or contains NUL", target)
		}
		if err := r.expect(")"); err != nil {
			return nil, err
		}
		r.nodeDone = true
		return &NarEntry{Path: path, Type: TypeSymlink, Target: target}, nil
	case "directory":
		if len(r.dirs) >= MaxDepth {
			return nil, r.malformed("directories nested deeper than %d", MaxDepth)
		}
		r.dirs = append(r.dirs, dirFrame{path: path})
		return &NarEntry{Path: path, Type: TypeDirectory}, nil
	}
	return nil, r.malformed("unknown node type %q", t)
}

// Read reads the contents of the current regular file.
func (r *NarReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if !r.inFile || r.fileLeft == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.fileLeft {
		p = p[:r.fileLeft]
	}
	n, err := r.r.Read(p)
	r.pos += int64(n)
	r.fileLeft -= int64(n)
	if err == io.EOF && r.fileLeft > 0 {
		err = r.truncated()
	} else if err == io.EOF {
		err = nil
	}
	if err != nil {
		r.err = err
	}
	return n, err
}

func (r *NarReader) truncated() error {
	return fmt.Errorf("%w: at byte %d: truncated: %w", ErrMalformedNAR, r.pos, io.ErrUnexpectedEOF)
}

func (r *NarReader) full(p []byte) error {
	n, err := io.ReadFull(r.r, p)
	r.pos += int64(n)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return r.truncated()
	}
	return err
}

func (r *NarReader) skip(n int64) error {
	if n == 0 {
		return nil
	}
	if r.seek != nil {
		if _, err := r.seek.Seek(n, io.SeekCurrent); err != nil {
			return err
		}
		r.pos += n
		return nil
	}
	m, err := io.CopyN(io.Discard, r.r, n)
	r.pos += m
	if err == io.EOF {
		return r.truncated()
	}
	return err
}

func (r *NarReader) u64() (uint64, error) {
	if err := r.full(r.scratch[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(r.scratch[:]), nil
}

// padding reads the zero bytes that align a string of length n to 8.
func (r *NarReader) padding(n int64) error {
	pad := (8 - n%8) % 8
	if pad == 0 {
		return nil
	}
	b := r.scratch[:pad]
	if err := r.full(b); err != nil {
		return err
	}
	for _, c := range b {
		if c != 0 {
			return r.malformed("non-zero padding")
		}
	}
	return nil
}

// str reads a length-prefixed, padded string of at most max bytes.
func (r *NarReader) str(max int, what string) (string, error) {
	n, err := r.u64()
	if err != nil {
		return "", err
	}
	if n > uint64(max) {
		return "", r.malformed("%s of %d bytes exceeds %d", what, n, max)
	}
	b := make([]byte, n)
	if err := r.full(b); err != nil {
		return "", err
	}
	if err := r.padding(int64(n)); err != nil {
		return "", err
	}
	return string(b), nil
}

func (r *NarReader) token() (string, error) { return r.str(maxTokenLen, "token") }

func (r *NarReader) expect(want string) error {
	got, err := r.token()
	if err != nil {
		return err
	}
	if got != want {
		if len(got) > 64 {
			got = got[:64] + "..."
		}
		return r.malformed("expected %q, got %q", want, got)
	}
	return nil
}

func (r *NarReader) expectAll(want ...string) error {
	for _, w := range want {
		if err := r.expect(w); err != nil {
			return err
		}
	}
	return nil
}

// end checks that nothing follows the root node.
func (r *NarReader) end() error {
	var b [1]byte
	n, err := io.ReadFull(r.r, b[:])
	if n > 0 {
		return r.malformed("trailing bytes after the end of the NAR")
	}
	if err == io.EOF {
		return io.EOF
	}
	if err == nil || err == io.ErrUnexpectedEOF {
		return r.malformed("trailing bytes after the end of the NAR")
	}
	return err
}
