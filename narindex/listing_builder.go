package narindex

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ListingBuilder builds the listing of a NAR that is handed over in
// pieces, in order, through Write, as it streams past on its way
// elsewhere (into a hash, a file, IPFS). It validates the NAR exactly as
// NarReader does and Finish gives the listing ListingFromNar would.
//
// It parses in the caller's goroutine as the bytes arrive: file contents
// are counted, not copied, and no more than one NAR token (4 KiB) is held
// back between writes. It owns no goroutine or other resource, so a
// builder may be dropped at any point without Finish. A ListingBuilder is
// not safe for concurrent use.
type ListingBuilder struct {
	max     int
	pos     int64 // bytes consumed
	err     error // first error, returned ever after
	done    bool  // Finish was called
	entries int
	root    *ListingNode

	// What the next bytes are.
	mode   lbMode
	num    [8]byte // a length being read
	numN   int
	str    []byte // a string body being read
	strLen int
	left   int64 // contents bytes still to come
	pad    int   // padding bytes still to come
	padFor lbMode

	// Where in the NAR grammar the next token belongs.
	state lbState
	dirs  []lbDir
	name  string // of the entry whose node comes next
	exec  bool   // the regular file being read is executable
}

type lbDir struct {
	node *ListingNode
	last string // the last entry name, to check the order
}

type lbMode uint8

const (
	modeLen      lbMode = iota // the 8-byte length of a string or of contents
	modeStr                    // a string's bytes
	modeContents               // a regular file's contents
	modePad                    // zero padding to a multiple of 8
	modeEnd                    // after the NAR: nothing may follow
)

type lbState uint8

const (
	stMagic lbState = iota
	stOpen
	stType
	stTypeVal
	stRegular    // "executable" or "contents"
	stExecMarker // ""
	stContents   // "contents" after the executable marker
	stSize       // the contents' length (not a string)
	stRegClose
	stTarget
	stTargetVal
	stSymClose
	stDir // "entry" or ")"
	stEntryOpen
	stEntryName
	stEntryNameVal
	stEntryNode
	stEntryClose
	stEnd
)

// NewListingBuilder returns a builder that refuses NARs of more than
// MaxListingEntries entries.
func NewListingBuilder() *ListingBuilder { return NewListingBuilderLimit(MaxListingEntries) }

// NewListingBuilderLimit returns a builder that refuses NARs of more than
// max entries (max <= 0 means MaxListingEntries) with an error wrapping
// ErrTooManyEntries, as soon as the entry beyond the limit arrives.
func NewListingBuilderLimit(max int) *ListingBuilder {
	if max <= 0 {
		max = MaxListingEntries
	}
	return &ListingBuilder{max: max}
}

// Write parses the next bytes of the NAR. It does not keep p. Once the
// bytes are not a valid NAR (or have too many entries) it returns that
// error, as do all later calls and Finish; the error says where, and wraps
// ErrMalformedNAR or ErrTooManyEntries.
func (b *ListingBuilder) Write(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.done {
		return 0, errors.New("listing builder: write after Finish")
	}
	total := len(p)
	for len(p) > 0 {
		n, err := b.step(p)
		p = p[n:]
		if err == nil {
			err = b.settle()
		}
		if err != nil {
			b.err = err
			return total - len(p), err
		}
	}
	return total, nil
}

// step consumes a prefix of p, as much as the current mode takes, moves
// pos past it and acts on what it completes.
func (b *ListingBuilder) step(p []byte) (int, error) {
	switch b.mode {
	case modeLen:
		n := copy(b.num[b.numN:], p)
		b.numN += n
		b.pos += int64(n)
		if b.numN < 8 {
			return n, nil
		}
		b.numN = 0
		return n, b.length(binary.LittleEndian.Uint64(b.num[:]))
	case modeStr:
		n := min(b.strLen-len(b.str), len(p))
		b.str = append(b.str, p[:n]...)
		b.pos += int64(n)
		if len(b.str) == b.strLen {
			return n, b.padding(b.strLen, modeStr)
		}
		return n, nil
	case modeContents:
		n := int(min(b.left, int64(len(p))))
		b.left -= int64(n)
		b.pos += int64(n)
		return n, nil // settle ends the contents when none are left
	case modePad:
		n := min(b.pad, len(p))
		for i, c := range p[:n] {
			if c != 0 {
				b.pos += int64(i)
				return i, b.malformed("non-zero padding")
			}
		}
		b.pad -= n
		b.pos += int64(n)
		return n, nil
	default: // modeEnd
		return 0, b.malformed("trailing bytes after the end of the NAR")
	}
}

// settle completes what needs no more bytes: the end of contents or of
// padding. Write calls it after each step.
func (b *ListingBuilder) settle() error {
	for {
		switch {
		case b.mode == modeContents && b.left == 0:
			if err := b.padding(int(b.pos%8), modeContents); err != nil {
				return err
			}
		case b.mode == modePad && b.pad == 0:
			b.mode = modeLen
			if err := b.complete(b.padFor); err != nil {
				return err
			}
		default:
			return nil
		}
	}
}

// length acts on a length just read: of contents, or of a string.
func (b *ListingBuilder) length(v uint64) error {
	if b.state == stSize {
		if v > maxContentSize {
			return b.malformed("file size %d too large", v)
		}
		n := &ListingNode{Type: TypeRegular, Size: int64(v), NarOffset: b.pos, Executable: b.exec}
		if err := b.add(n); err != nil {
			return err
		}
		b.mode, b.left = modeContents, int64(v)
		return b.settle()
	}
	max, what := maxTokenLen, "token"
	switch b.state {
	case stTargetVal:
		max, what = MaxTargetLen, "symlink target"
	case stEntryNameVal:
		max, what = MaxNameLen, "entry name"
	}
	if v > uint64(max) {
		return b.malformed("%s of %d bytes exceeds %d", what, v, max)
	}
	b.mode, b.str, b.strLen = modeStr, b.str[:0], int(v)
	if v == 0 {
		return b.padding(0, modeStr)
	}
	return nil
}

// padding starts the padding after a string or contents whose length
// ends at an offset of n mod 8.
func (b *ListingBuilder) padding(n int, after lbMode) error {
	b.mode, b.padFor, b.pad = modePad, after, (8-n%8)%8
	return b.settle()
}

// complete acts on a string, or the end of contents, and its padding.
func (b *ListingBuilder) complete(what lbMode) error {
	if what == modeContents {
		b.state = stRegClose
		return nil
	}
	return b.token(string(b.str))
}

func (b *ListingBuilder) expect(tok, want string, next lbState) error {
	if tok != want {
		return b.unexpected(want, tok)
	}
	b.state = next
	return nil
}

func (b *ListingBuilder) unexpected(want, got string) error {
	if len(got) > 64 {
		got = got[:64] + "..."
	}
	return b.malformed("expected %q, got %q", want, got)
}

// token advances the grammar by one string.
func (b *ListingBuilder) token(tok string) error {
	switch b.state {
	case stMagic:
		return b.expect(tok, narMagic, stOpen)
	case stOpen:
		return b.expect(tok, "(", stType)
	case stType:
		return b.expect(tok, "type", stTypeVal)
	case stTypeVal:
		switch tok {
		case "regular":
			b.state, b.exec = stRegular, false
		case "symlink":
			b.state = stTarget
		case "directory":
			if len(b.dirs) >= MaxDepth {
				return b.malformed("directories nested deeper than %d", MaxDepth)
			}
			n := &ListingNode{Type: TypeDirectory, Entries: map[string]*ListingNode{}}
			if err := b.add(n); err != nil {
				return err
			}
			b.dirs = append(b.dirs, lbDir{node: n})
			b.state = stDir
		default:
			return b.malformed("unknown node type %q", tok)
		}
	case stRegular:
		switch tok {
		case "executable":
			b.state, b.exec = stExecMarker, true
		case "contents":
			b.state = stSize
		default:
			return b.unexpected("contents", tok)
		}
	case stExecMarker:
		if tok != "" {
			return b.malformed("executable marker must be empty, got %q", tok)
		}
		b.state = stContents
	case stContents:
		return b.expect(tok, "contents", stSize)
	case stRegClose, stSymClose:
		if err := b.expect(tok, ")", stEnd); err != nil {
			return err
		}
		b.nodeDone()
	case stTarget:
		return b.expect(tok, "target", stTargetVal)
	case stTargetVal:
		if tok == "" || strings.IndexByte(tok, 0) >= 0 {
			return b.malformed("symlink target %q is empty or contains NUL", tok)
		}
		if err := b.add(&ListingNode{Type: TypeSymlink, Target: tok}); err != nil {
			return err
		}
		b.state = stSymClose
	case stDir:
		switch tok {
		case ")":
			b.dirs = b.dirs[:len(b.dirs)-1]
			b.nodeDone()
		case "entry":
			b.state = stEntryOpen
		default:
			return b.malformed("expected \"entry\" or \")\" in directory, got %q", tok)
		}
	case stEntryOpen:
		return b.expect(tok, "(", stEntryName)
	case stEntryName:
		return b.expect(tok, "name", stEntryNameVal)
	case stEntryNameVal:
		if err := checkName(tok); err != nil {
			return b.malformed("%v", err)
		}
		top := &b.dirs[len(b.dirs)-1]
		if top.last != "" && tok <= top.last {
			return b.malformed("entry names not sorted: %q after %q", tok, top.last)
		}
		top.last, b.name = tok, tok
		b.state = stEntryNode
	case stEntryNode:
		return b.expect(tok, "node", stOpen)
	case stEntryClose:
		return b.expect(tok, ")", stDir)
	default:
		return b.malformed("unexpected state %d", b.state) // not reached
	}
	return nil
}

// add counts a new node and hangs it into its directory.
func (b *ListingBuilder) add(n *ListingNode) error {
	if b.entries++; b.entries > b.max {
		return tooManyEntries(b.max)
	}
	if len(b.dirs) == 0 {
		b.root = n
	} else {
		b.dirs[len(b.dirs)-1].node.Entries[b.name] = n
	}
	return nil
}

// nodeDone follows the end of a node: the NAR ends, or the entry wrapping
// the node is closed next.
func (b *ListingBuilder) nodeDone() {
	if len(b.dirs) == 0 {
		b.state, b.mode = stEnd, modeEnd
		return
	}
	b.state = stEntryClose
}

func (b *ListingBuilder) malformed(format string, args ...any) error {
	return fmt.Errorf("%w: at byte %d: %s", ErrMalformedNAR, b.pos, fmt.Sprintf(format, args...))
}

// Finish ends the NAR and returns its listing, or the error that the bytes
// written so far are not one complete valid NAR. Later calls give the same
// answer; writes after Finish fail.
func (b *ListingBuilder) Finish() (*Listing, error) {
	b.done = true
	if b.err != nil {
		return nil, b.err
	}
	if b.state != stEnd {
		b.err = fmt.Errorf("%w: at byte %d: truncated: %w", ErrMalformedNAR, b.pos, io.ErrUnexpectedEOF)
		return nil, b.err
	}
	return &Listing{Version: 1, Root: b.root, entries: b.entries}, nil
}
