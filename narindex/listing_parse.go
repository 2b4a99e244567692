package narindex

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// MaxListingEntries is the default limit on the entries (nodes, the root
// included) of one store path's listing, applied by ParseListing,
// ListingFromNar and ListingBuilder. A listing costs about 200 bytes of
// memory per entry.
const MaxListingEntries = 1_000_000

// ErrTooManyEntries is wrapped by the error a listing parser or builder
// gives when a listing has more entries than its limit.
var ErrTooManyEntries = errors.New("too many entries")

func tooManyEntries(max int) error {
	return fmt.Errorf("listing: %w: more than the limit of %d", ErrTooManyEntries, max)
}

// ParseListing parses and checks a listing with the default entry limit,
// MaxListingEntries; see ParseListingLimit.
func ParseListing(data []byte) (*Listing, error) {
	return ParseListingLimit(data, MaxListingEntries)
}

// ParseListingLimit parses and checks a listing, the JSON Nix writes:
// version 1, known types with exactly their fields, names as NAR allows
// them, depth, non-negative numbers, at most max entries (max <= 0 means
// MaxListingEntries). It reads the JSON in one pass and stops at the
// entry beyond the limit, so a listing that is too large costs no more
// than the limit. It is stricter than encoding/json: field names are
// matched exactly, a repeated field or entry name, null, non-integer
// numbers and invalid UTF-8 are refused; unknown fields are skipped.
func ParseListingLimit(data []byte, max int) (*Listing, error) {
	if len(data) > maxListingSize {
		return nil, fmt.Errorf("listing of %d bytes exceeds %d", len(data), maxListingSize)
	}
	if max <= 0 {
		max = MaxListingEntries
	}
	p := &listingParser{data: data, max: max}
	l, err := p.listing()
	if err != nil {
		return nil, err
	}
	return l, nil
}

// listingParser is a recursive-descent parser of the listing JSON; the
// recursion is bounded by MaxDepth (nodes) and maxSkipDepth (unknown
// values).
type listingParser struct {
	data  []byte
	i     int
	max   int      // entry limit
	n     int      // entries so far
	names []string // path to the node being parsed, for messages
	buf   []byte   // scratch for strings with escapes
}

const maxSkipDepth = 64

func (p *listingParser) path() string { return strings.Join(p.names, "/") }

func (p *listingParser) syntax(format string, args ...any) error {
	return fmt.Errorf("listing: at byte %d: %s", p.i, fmt.Sprintf(format, args...))
}

// invalid reports a well-formed but unacceptable node.
func (p *listingParser) invalid(format string, args ...any) error {
	return fmt.Errorf("listing: %q: %s", p.path(), fmt.Sprintf(format, args...))
}

func (p *listingParser) ws() {
	for p.i < len(p.data) {
		switch p.data[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// peek skips white space and gives the next byte, or 0 at the end.
func (p *listingParser) peek() byte {
	p.ws()
	if p.i >= len(p.data) {
		return 0
	}
	return p.data[p.i]
}

func (p *listingParser) expect(c byte) error {
	if got := p.peek(); got != c {
		if got == 0 {
			return p.syntax("unexpected end, expected %q", c)
		}
		return p.syntax("expected %q, got %q", c, got)
	}
	p.i++
	return nil
}

// object calls member for each key of an object; member parses the value.
func (p *listingParser) object(member func(key []byte) error) error {
	if err := p.expect('{'); err != nil {
		return err
	}
	if p.peek() == '}' {
		p.i++
		return nil
	}
	for {
		if p.peek() != '"' {
			return p.syntax("expected a field name")
		}
		key, err := p.strBytes()
		if err != nil {
			return err
		}
		if err := p.expect(':'); err != nil {
			return err
		}
		if err := member(key); err != nil {
			return err
		}
		switch p.peek() {
		case ',':
			p.i++
		case '}':
			p.i++
			return nil
		default:
			return p.syntax("expected ',' or '}' in object")
		}
	}
}

func (p *listingParser) listing() (*Listing, error) {
	var (
		version    int64
		hasVersion bool
		root       *ListingNode
	)
	err := p.object(func(key []byte) error {
		var err error
		switch string(key) {
		case "version":
			if hasVersion {
				return p.syntax("second \"version\"")
			}
			hasVersion = true
			if version, err = p.integer(); err != nil {
				return err
			}
			if version != 1 {
				return fmt.Errorf("listing: version %d, want 1", version)
			}
		case "root":
			if root != nil {
				return p.syntax("second \"root\"")
			}
			root, err = p.node(0)
		default:
			err = p.skip(0)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if p.peek() != 0 {
		return nil, p.syntax("trailing bytes after the listing")
	}
	switch {
	case !hasVersion:
		return nil, errors.New("listing: no version, want 1")
	case root == nil:
		return nil, errors.New("listing: no root")
	}
	return &Listing{Version: 1, Root: root, entries: p.n}, nil
}

// node parses one entry at the given depth (the number of directories
// above it).
func (p *listingParser) node(depth int) (*ListingNode, error) {
	if p.peek() != '{' {
		return nil, p.invalid("entry is not an object")
	}
	p.n++
	if p.n > p.max {
		return nil, tooManyEntries(p.max)
	}
	var (
		typ                 string
		size, off           int64
		target              string
		exec                bool
		seen                [6]bool // type size executable narOffset target entries
		entries             map[string]*ListingNode
		hasSize, hasOff     bool
		hasTarget, hasEntry bool
	)
	once := func(i int, key string) error {
		if seen[i] {
			return p.invalid("second %q", key)
		}
		seen[i] = true
		return nil
	}
	err := p.object(func(k []byte) error {
		var err error
		// Matched without allocating; k may be the parser's buffer, which
		// the value's parse reuses, so the cases name their key.
		switch string(k) {
		case "type":
			if err = once(0, "type"); err == nil {
				if p.peek() != '"' {
					return p.invalid("type is not a string")
				}
				var t []byte
				if t, err = p.strBytes(); err == nil {
					typ = typeName(t)
				}
			}
		case "size":
			if err = once(1, "size"); err == nil {
				size, err = p.integer()
				hasSize = true
			}
		case "executable":
			if err = once(2, "executable"); err == nil {
				exec, err = p.boolean()
			}
		case "narOffset":
			if err = once(3, "narOffset"); err == nil {
				off, err = p.integer()
				hasOff = true
			}
		case "target":
			if err = once(4, "target"); err == nil {
				if p.peek() != '"' {
					return p.invalid("target is not a string")
				}
				target, err = p.str()
				hasTarget = true
			}
		case "entries":
			if err = once(5, "entries"); err == nil {
				hasEntry = true
				entries, err = p.entries(depth)
			}
		default:
			err = p.skip(0)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	n := &ListingNode{}
	switch typ {
	case "regular":
		n.Type = TypeRegular
		if hasTarget || hasEntry {
			return nil, p.invalid("regular file with a target or entries")
		}
		if !hasSize || size < 0 {
			return nil, p.invalid("regular file without a valid size")
		}
		if !hasOff || off <= 0 {
			return nil, p.invalid("regular file without a valid narOffset")
		}
		n.Size, n.NarOffset, n.Executable = size, off, exec
	case "symlink":
		n.Type = TypeSymlink
		if seen[1] || seen[2] || seen[3] || hasEntry {
			return nil, p.invalid("symlink with a size, executable, narOffset or entries")
		}
		if !hasTarget || target == "" || len(target) > MaxTargetLen || strings.IndexByte(target, 0) >= 0 {
			return nil, p.invalid("symlink without a valid target")
		}
		n.Target = target
	case "directory":
		n.Type = TypeDirectory
		if seen[1] || seen[2] || seen[3] || hasTarget {
			return nil, p.invalid("directory with a size, executable, narOffset or target")
		}
		if depth >= MaxDepth {
			return nil, p.invalid("directories nested deeper than %d", MaxDepth)
		}
		if entries == nil {
			entries = map[string]*ListingNode{}
		}
		n.Entries = entries
	default:
		return nil, p.invalid("unknown type %q", typ)
	}
	return n, nil
}

// typeName returns the entry type t names as a constant string (no
// allocation for the three types a listing has), or t itself.
func typeName(t []byte) string {
	switch string(t) {
	case "regular":
		return "regular"
	case "directory":
		return "directory"
	case "symlink":
		return "symlink"
	}
	return string(t)
}

// entries parses a directory's entries; depth is the directory's.
func (p *listingParser) entries(depth int) (map[string]*ListingNode, error) {
	if depth >= MaxDepth {
		return nil, p.invalid("directories nested deeper than %d", MaxDepth)
	}
	if p.peek() != '{' {
		return nil, p.invalid("entries is not an object")
	}
	m := map[string]*ListingNode{}
	err := p.object(func(key []byte) error {
		name := string(key)
		if err := checkName(name); err != nil {
			return p.invalid("%v", err)
		}
		if len(name) > MaxNameLen {
			return p.invalid("entry name longer than %d bytes", MaxNameLen)
		}
		p.names = append(p.names, name)
		c, err := p.node(depth + 1)
		if err != nil {
			return err
		}
		p.names = p.names[:len(p.names)-1]
		n := len(m)
		if m[name] = c; len(m) == n { // one map operation, not two
			return p.invalid("second entry %q", name)
		}
		return nil
	})
	return m, err
}

// str parses a JSON string (the next byte is '"'); the result is valid
// UTF-8 and the input must be too.
func (p *listingParser) str() (string, error) {
	b, err := p.strBytes()
	return string(b), err
}

// strBytes is str without the copy: the bytes are the input's own, or
// the parser's buffer (escapes), valid until the next string is parsed.
// Field names and types are matched on them without allocating.
func (p *listingParser) strBytes() ([]byte, error) {
	start := p.i + 1
	// Fast path: no escapes, ASCII only.
	for j := start; j < len(p.data); j++ {
		c := p.data[j]
		if c == '"' {
			p.i = j + 1
			return p.data[start:j], nil
		}
		if c == '\\' || c < 0x20 || c >= utf8.RuneSelf {
			break
		}
	}
	b := p.buf[:0]
	j := start
	for {
		if j >= len(p.data) {
			p.i = j
			return nil, p.syntax("unterminated string")
		}
		c := p.data[j]
		switch {
		case c == '"':
			p.i, p.buf = j+1, b
			return b, nil
		case c < 0x20:
			p.i = j
			return nil, p.syntax("control character in string")
		case c == '\\':
			if j+1 >= len(p.data) {
				p.i = j
				return nil, p.syntax("unterminated string")
			}
			j++
			switch e := p.data[j]; e {
			case '"', '\\', '/':
				b = append(b, e)
			case 'b':
				b = append(b, '\b')
			case 'f':
				b = append(b, '\f')
			case 'n':
				b = append(b, '\n')
			case 'r':
				b = append(b, '\r')
			case 't':
				b = append(b, '\t')
			case 'u':
				r, ok := p.hex4(j + 1)
				if !ok {
					p.i = j
					return nil, p.syntax("invalid \\u escape")
				}
				j += 4
				if utf16.IsSurrogate(r) {
					r2, ok := rune(0), false
					if j+6 < len(p.data) && p.data[j+1] == '\\' && p.data[j+2] == 'u' {
						r2, ok = p.hex4(j + 3)
					}
					r = utf16.DecodeRune(r, r2)
					if !ok || r == utf8.RuneError {
						p.i = j
						return nil, p.syntax("unpaired surrogate in string")
					}
					j += 6
				}
				b = utf8.AppendRune(b, r)
			default:
				p.i = j
				return nil, p.syntax("invalid escape %q", e)
			}
			j++
		case c < utf8.RuneSelf:
			b = append(b, c)
			j++
		default:
			r, size := utf8.DecodeRune(p.data[j:])
			if r == utf8.RuneError && size == 1 {
				p.i = j
				return nil, p.syntax("invalid UTF-8 in string")
			}
			b = append(b, p.data[j:j+size]...)
			j += size
		}
	}
}

func (p *listingParser) hex4(at int) (rune, bool) {
	if at+4 > len(p.data) {
		return 0, false
	}
	v, err := strconv.ParseUint(string(p.data[at:at+4]), 16, 16)
	return rune(v), err == nil
}

// integer parses a JSON number that must be an integer in int64.
func (p *listingParser) integer() (int64, error) {
	p.ws()
	start := p.i
	end := p.number()
	if end == start {
		return 0, p.syntax("expected a number")
	}
	v, err := strconv.ParseInt(string(p.data[start:end]), 10, 64)
	if err != nil {
		return 0, p.syntax("%.40q is not an integer", p.data[start:end])
	}
	p.i = end
	return v, nil
}

// number gives the end of the JSON number at p.i, or p.i when there is
// none.
func (p *listingParser) number() int {
	d, j := p.data, p.i
	digits := func() bool {
		k := j
		for j < len(d) && d[j] >= '0' && d[j] <= '9' {
			j++
		}
		return j > k
	}
	if j < len(d) && d[j] == '-' {
		j++
	}
	if j < len(d) && d[j] == '0' {
		j++
	} else if !digits() {
		return p.i
	}
	if j < len(d) && d[j] == '.' {
		j++
		if !digits() {
			return p.i
		}
	}
	if j < len(d) && (d[j] == 'e' || d[j] == 'E') {
		j++
		if j < len(d) && (d[j] == '+' || d[j] == '-') {
			j++
		}
		if !digits() {
			return p.i
		}
	}
	return j
}

func (p *listingParser) literal(word string) bool {
	if bytes.HasPrefix(p.data[p.i:], []byte(word)) {
		p.i += len(word)
		return true
	}
	return false
}

func (p *listingParser) boolean() (bool, error) {
	p.ws()
	switch {
	case p.literal("true"):
		return true, nil
	case p.literal("false"):
		return false, nil
	}
	return false, p.syntax("expected true or false")
}

// skip parses and discards any JSON value (of an unknown field).
func (p *listingParser) skip(depth int) error {
	if depth > maxSkipDepth {
		return p.syntax("unknown field nested deeper than %d", maxSkipDepth)
	}
	switch c := p.peek(); {
	case c == '{':
		return p.object(func([]byte) error { return p.skip(depth + 1) })
	case c == '[':
		p.i++
		if p.peek() == ']' {
			p.i++
			return nil
		}
		for {
			if err := p.skip(depth + 1); err != nil {
				return err
			}
			switch p.peek() {
			case ',':
				p.i++
			case ']':
				p.i++
				return nil
			default:
				return p.syntax("expected ',' or ']' in array")
			}
		}
	case c == '"':
		_, err := p.str()
		return err
	case c == '-' || (c >= '0' && c <= '9'):
		end := p.number()
		if end == p.i {
			return p.syntax("invalid number")
		}
		p.i = end
		return nil
	case p.literal("true"), p.literal("false"), p.literal("null"):
		return nil
	case c == 0:
		return p.syntax("unexpected end, expected a value")
	}
	return p.syntax("unexpected %q", p.data[p.i])
}
