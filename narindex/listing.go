package narindex

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
)

// maxListingSize bounds a .ls file.
const maxListingSize = 64 << 20

// Listing is a NAR listing (`<hash>.ls`, version 1): the tree of a NAR with
// each regular file's size and the offset of its contents in the NAR.
type Listing struct {
	Version int
	Root    *ListingNode

	entries int // counted by the parsers and builders; 0 when unknown
}

// Entries gives the number of entries (nodes, the root included).
func (l *Listing) Entries() int {
	if l.entries > 0 || l.Root == nil {
		return l.entries
	}
	var count func(n *ListingNode) int
	count = func(n *ListingNode) int {
		c := 1
		for _, e := range n.Entries {
			c += count(e)
		}
		return c
	}
	return count(l.Root)
}

// ListingNode is one entry of a listing.
type ListingNode struct {
	Type       NodeType
	Size       int64
	Executable bool
	NarOffset  int64
	Target     string
	Entries    map[string]*ListingNode
}

// Validate checks the listing against the size of its NAR: every file's
// contents lie inside it. The path of an entry is built only for the
// error that names it.
func (l *Listing) Validate(narSize int64) error {
	var walk func(n *ListingNode) []string
	walk = func(n *ListingNode) []string {
		if n.Type == TypeRegular && (n.NarOffset <= 0 || n.Size < 0 || n.NarOffset > narSize || n.Size > narSize-n.NarOffset) {
			return []string{}
		}
		for name, c := range n.Entries {
			if bad := walk(c); bad != nil {
				return append(bad, name)
			}
		}
		return nil
	}
	bad := walk(l.Root)
	if bad == nil {
		return nil
	}
	slices.Reverse(bad)
	n := l.Root
	for _, name := range bad {
		n = n.Entries[name]
	}
	return fmt.Errorf("listing: %q: contents [%d, +%d) outside the %d-byte NAR", strings.Join(bad, "/"), n.NarOffset, n.Size, narSize)
}

// Marshal writes the listing as Nix does.
func (l *Listing) Marshal() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString(`{"version":1,"root":`)
	if err := writeNode(&buf, l.Root); err != nil {
		return nil, err
	}
	buf.WriteString("}")
	return buf.Bytes(), nil
}

func writeNode(buf *bytes.Buffer, n *ListingNode) error {
	str := func(s string) {
		b, _ := json.Marshal(s)
		buf.Write(b)
	}
	buf.WriteString(`{"type":`)
	str(n.Type.String())
	switch n.Type {
	case TypeRegular:
		fmt.Fprintf(buf, `,"size":%d`, n.Size)
		if n.Executable {
			buf.WriteString(`,"executable":true`)
		}
		fmt.Fprintf(buf, `,"narOffset":%d`, n.NarOffset)
	case TypeSymlink:
		buf.WriteString(`,"target":`)
		str(n.Target)
	case TypeDirectory:
		buf.WriteString(`,"entries":{`)
		names := make([]string, 0, len(n.Entries))
		for name := range n.Entries {
			names = append(names, name)
		}
		sort.Strings(names)
		for i, name := range names {
			if i > 0 {
				buf.WriteByte(',')
			}
			str(name)
			buf.WriteByte(':')
			if err := writeNode(buf, n.Entries[name]); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	default:
		return fmt.Errorf("listing: unknown node type %v", n.Type)
	}
	buf.WriteByte('}')
	return nil
}

// ListingFromNar builds the listing of the NAR in r, with at most
// MaxListingEntries entries; see ListingFromNarLimit.
func ListingFromNar(r io.Reader) (*Listing, error) {
	return ListingFromNarLimit(r, MaxListingEntries)
}

// ListingFromNarLimit builds the listing of the NAR in r. If r can seek,
// file contents are skipped, so only header bytes are read. A NAR of more
// than max entries (max <= 0 means MaxListingEntries) is refused with an
// error wrapping ErrTooManyEntries as soon as the entry beyond the limit
// is read. To build a listing from bytes handed over in pieces, use a
// ListingBuilder.
func ListingFromNarLimit(r io.Reader, max int) (*Listing, error) {
	if max <= 0 {
		max = MaxListingEntries
	}
	nr := NewNarReader(r)
	l := &Listing{Version: 1}
	dirs := map[string]*ListingNode{}
	for {
		e, err := nr.Next()
		if err == io.EOF {
			return l, nil
		}
		if err != nil {
			return nil, err
		}
		if l.entries++; l.entries > max {
			return nil, tooManyEntries(max)
		}
		n := &ListingNode{Type: e.Type, Size: e.Size, Executable: e.Executable, NarOffset: e.Offset, Target: e.Target}
		if e.Type != TypeRegular {
			n.Size, n.NarOffset = 0, 0
		}
		if e.Type == TypeDirectory {
			n.Entries = map[string]*ListingNode{}
			dirs[e.Path] = n
		}
		if e.Path == "" {
			l.Root = n
			continue
		}
		parent, name := "", e.Path
		if i := strings.LastIndexByte(e.Path, '/'); i >= 0 {
			parent, name = e.Path[:i], e.Path[i+1:]
		}
		dirs[parent].Entries[name] = n
	}
}

// Lookup finds the entry at p ("" for the root, else "a/b").
func (l *Listing) Lookup(p string) (*ListingNode, error) {
	n := l.Root
	if p == "" {
		return n, nil
	}
	for _, name := range strings.Split(p, "/") {
		if n.Type != TypeDirectory {
			return nil, fmt.Errorf("listing: %q: not a directory on the way", p)
		}
		c, ok := n.Entries[name]
		if !ok {
			return nil, fmt.Errorf("listing: %q: %w", p, ErrNotFound)
		}
		n = c
	}
	return n, nil
}
