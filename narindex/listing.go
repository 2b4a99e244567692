package narindex

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

// jsonNode is the form Nix writes; field order is Nix's.
type jsonNode struct {
	Type       string               `json:"type"`
	Size       *int64               `json:"size,omitempty"`
	Executable bool                 `json:"executable,omitempty"`
	NarOffset  *int64               `json:"narOffset,omitempty"`
	Target     *string              `json:"target,omitempty"`
	Entries    map[string]*jsonNode `json:"entries,omitempty"`
}

type jsonListing struct {
	Version int       `json:"version"`
	Root    *jsonNode `json:"root"`
}

// ParseListing parses and checks a listing: version 1, known types, names
// as NAR allows them, depth, non-negative numbers.
func ParseListing(data []byte) (*Listing, error) {
	if len(data) > maxListingSize {
		return nil, fmt.Errorf("listing of %d bytes exceeds %d", len(data), maxListingSize)
	}
	var jl jsonListing
	if err := json.Unmarshal(data, &jl); err != nil {
		return nil, fmt.Errorf("listing: %w", err)
	}
	if jl.Version != 1 {
		return nil, fmt.Errorf("listing: version %d, want 1", jl.Version)
	}
	if jl.Root == nil {
		return nil, errors.New("listing: no root")
	}
	root, err := fromJSON(jl.Root, "", 0)
	if err != nil {
		return nil, fmt.Errorf("listing: %w", err)
	}
	return &Listing{Version: 1, Root: root}, nil
}

func fromJSON(j *jsonNode, path string, depth int) (*ListingNode, error) {
	if j == nil {
		return nil, fmt.Errorf("%q: null entry", path)
	}
	n := &ListingNode{}
	switch j.Type {
	case "regular":
		n.Type = TypeRegular
		if j.Size == nil || *j.Size < 0 {
			return nil, fmt.Errorf("%q: regular file without a valid size", path)
		}
		if j.NarOffset == nil || *j.NarOffset <= 0 {
			return nil, fmt.Errorf("%q: regular file without a valid narOffset", path)
		}
		n.Size, n.NarOffset, n.Executable = *j.Size, *j.NarOffset, j.Executable
	case "symlink":
		n.Type = TypeSymlink
		if j.Target == nil || *j.Target == "" || len(*j.Target) > MaxTargetLen || strings.IndexByte(*j.Target, 0) >= 0 {
			return nil, fmt.Errorf("%q: symlink without a valid target", path)
		}
		n.Target = *j.Target
	case "directory":
		n.Type = TypeDirectory
		if depth >= MaxDepth {
			return nil, fmt.Errorf("%q: directories nested deeper than %d", path, MaxDepth)
		}
		n.Entries = make(map[string]*ListingNode, len(j.Entries))
		for name, c := range j.Entries {
			if err := checkName(name); err != nil {
				return nil, fmt.Errorf("%q: %v", path, err)
			}
			if len(name) > MaxNameLen {
				return nil, fmt.Errorf("%q: entry name longer than %d bytes", path, MaxNameLen)
			}
			child, err := fromJSON(c, joinPath(path, name), depth+1)
			if err != nil {
				return nil, err
			}
			n.Entries[name] = child
		}
	default:
		return nil, fmt.Errorf("%q: unknown type %q", path, j.Type)
	}
	return n, nil
}

func joinPath(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// Validate checks the listing against the size of its NAR: every file's
// contents lie inside it.
func (l *Listing) Validate(narSize int64) error {
	var walk func(n *ListingNode, path string) error
	walk = func(n *ListingNode, path string) error {
		if n.Type == TypeRegular && (n.NarOffset <= 0 || n.Size < 0 || n.NarOffset > narSize || n.Size > narSize-n.NarOffset) {
			return fmt.Errorf("listing: %q: contents [%d, +%d) outside the %d-byte NAR", path, n.NarOffset, n.Size, narSize)
		}
		for name, c := range n.Entries {
			if err := walk(c, joinPath(path, name)); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(l.Root, "")
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

// ListingFromNar builds the listing of the NAR in r. If r can seek, file
// contents are skipped, so only header bytes are read.
func ListingFromNar(r io.Reader) (*Listing, error) {
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
