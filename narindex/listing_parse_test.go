package narindex

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// stdParseListing is the encoding/json parser ParseListing replaced, kept
// as an oracle: whatever ParseListing accepts, it accepts with the same
// result (ParseListing is the stricter of the two).
func stdParseListing(data []byte) (*ListingNode, error) {
	type jsonNode struct {
		Type       string               `json:"type"`
		Size       *int64               `json:"size,omitempty"`
		Executable bool                 `json:"executable,omitempty"`
		NarOffset  *int64               `json:"narOffset,omitempty"`
		Target     *string              `json:"target,omitempty"`
		Entries    map[string]*jsonNode `json:"entries,omitempty"`
	}
	var jl struct {
		Version int       `json:"version"`
		Root    *jsonNode `json:"root"`
	}
	if err := json.Unmarshal(data, &jl); err != nil {
		return nil, err
	}
	if jl.Version != 1 || jl.Root == nil {
		return nil, errors.New("version or root")
	}
	var conv func(j *jsonNode, depth int) (*ListingNode, error)
	conv = func(j *jsonNode, depth int) (*ListingNode, error) {
		if j == nil {
			return nil, errors.New("null")
		}
		n := &ListingNode{}
		switch j.Type {
		case "regular":
			if j.Size == nil || *j.Size < 0 || j.NarOffset == nil || *j.NarOffset <= 0 {
				return nil, errors.New("regular")
			}
			n.Type, n.Size, n.NarOffset, n.Executable = TypeRegular, *j.Size, *j.NarOffset, j.Executable
		case "symlink":
			if j.Target == nil || *j.Target == "" || len(*j.Target) > MaxTargetLen || strings.IndexByte(*j.Target, 0) >= 0 {
				return nil, errors.New("symlink")
			}
			n.Type, n.Target = TypeSymlink, *j.Target
		case "directory":
			if depth >= MaxDepth {
				return nil, errors.New("depth")
			}
			n.Type, n.Entries = TypeDirectory, map[string]*ListingNode{}
			for name, c := range j.Entries {
				if checkName(name) != nil || len(name) > MaxNameLen {
					return nil, errors.New("name")
				}
				cn, err := conv(c, depth+1)
				if err != nil {
					return nil, err
				}
				n.Entries[name] = cn
			}
		default:
			return nil, errors.New("type")
		}
		return n, nil
	}
	return conv(jl.Root, 0)
}

const sampleListing = `{"version":1,"root":{"type":"directory","entries":{"d":{"type":"directory","entries":{"a":{"type":"regular","size":3,"executable":true,"narOffset":400}}},"e":{"type":"regular","size":0,"narOffset":624},"l":{"type":"symlink","target":"d/a"}}}}`

func TestParseListingAccepts(t *testing.T) {
	for name, data := range map[string]string{
		"nix":               sampleListing,
		"white space":       " {\n\t\"version\" : 1 ,\r\n \"root\" : { \"type\" : \"regular\" , \"size\" : 1 , \"narOffset\" : 96 } } \n",
		"root first":        `{"root":{"narOffset":96,"size":0,"type":"regular"},"version":1}`,
		"unknown fields":    `{"version":1,"x":[1,-2.5e+3,"s",true,false,null,{"a":[]}],"root":{"type":"symlink","target":"t","y":{"z":null}}}`,
		"escapes":           `{"version":1,"root":{"type":"directory","entries":{"\u00e9\ud83d\ude00\n\"\\":{"type":"symlink","target":"\/\t"}}}}`,
		"utf-8":             `{"version":1,"root":{"type":"directory","entries":{"é😀":{"type":"symlink","target":"x"}}}}`,
		"executable false":  `{"version":1,"root":{"type":"regular","size":1,"executable":false,"narOffset":96}}`,
		"directory no list": `{"version":1,"root":{"type":"directory"}}`,
		"empty directory":   `{"version":1,"root":{"type":"directory","entries":{}}}`,
	} {
		l, err := ParseListing([]byte(data))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		want, err := stdParseListing([]byte(data))
		if err != nil || !reflect.DeepEqual(l.Root, want) {
			t.Errorf("%s: parsed %+v, encoding/json gives %+v (%v)", name, l.Root, want, err)
		}
	}
	l, _ := ParseListing([]byte(sampleListing))
	if l.Entries() != 5 || (&Listing{Root: l.Root}).Entries() != 5 {
		t.Errorf("Entries = %d, counted %d, want 5", l.Entries(), (&Listing{Root: l.Root}).Entries())
	}
	if n, _ := l.Lookup("\u00e9"); n != nil {
		t.Error("lookup of a missing name succeeded")
	}
}

// Beyond what encoding/json refused, ParseListing refuses ambiguity and
// what Nix never writes.
func TestParseListingStrict(t *testing.T) {
	reg := `{"type":"regular","size":1,"narOffset":96}`
	for name, data := range map[string]string{
		"second type":           `{"version":1,"root":{"type":"regular","type":"symlink","size":1,"narOffset":96}}`,
		"second size":           `{"version":1,"root":{"type":"regular","size":1,"size":2,"narOffset":96}}`,
		"second root":           `{"version":1,"root":` + reg + `,"root":` + reg + `}`,
		"second version":        `{"version":1,"version":1,"root":` + reg + `}`,
		"second entry":          `{"version":1,"root":{"type":"directory","entries":{"a":` + reg + `,"a":` + reg + `}}}`,
		"null root":             `{"version":1,"root":null}`,
		"null size":             `{"version":1,"root":{"type":"regular","size":null,"narOffset":96}}`,
		"null executable":       `{"version":1,"root":{"type":"regular","size":1,"executable":null,"narOffset":96}}`,
		"float size":            `{"version":1,"root":{"type":"regular","size":1.0,"narOffset":96}}`,
		"exponent offset":       `{"version":1,"root":{"type":"regular","size":1,"narOffset":1e2}}`,
		"huge offset":           `{"version":1,"root":{"type":"regular","size":1,"narOffset":9223372036854775808}}`,
		"key in other case":     `{"version":1,"root":{"Type":"regular","size":1,"narOffset":96}}`,
		"target on regular":     `{"version":1,"root":{"type":"regular","size":1,"narOffset":96,"target":"x"}}`,
		"entries on regular":    `{"version":1,"root":{"type":"regular","size":1,"narOffset":96,"entries":{}}}`,
		"size on symlink":       `{"version":1,"root":{"type":"symlink","target":"x","size":1}}`,
		"executable on dir":     `{"version":1,"root":{"type":"directory","executable":true}}`,
		"invalid UTF-8":         "{\"version\":1,\"root\":{\"type\":\"symlink\",\"target\":\"\xff\"}}",
		"lone surrogate":        `{"version":1,"root":{"type":"symlink","target":"\ud83d"}}`,
		"control character":     "{\"version\":1,\"root\":{\"type\":\"symlink\",\"target\":\"a\nb\"}}",
		"trailing bytes":        `{"version":1,"root":` + reg + `}x`,
		"trailing comma":        `{"version":1,"root":` + reg + `,}`,
		"no version":            `{"root":` + reg + `}`,
		"version 2":             `{"version":2,"root":` + reg + `}`,
		"version string":        `{"version":"1","root":` + reg + `}`,
		"root is an array":      `{"version":1,"root":[]}`,
		"entries is an array":   `{"version":1,"root":{"type":"directory","entries":[]}}`,
		"truncated":             sampleListing[:len(sampleListing)-2],
		"bad escape":            `{"version":1,"root":{"type":"symlink","target":"\x"}}`,
		"short unicode escape":  `{"version":1,"root":{"type":"symlink","target":"\u12"}}`,
		"unknown nested deeply": `{"version":1,"x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `,"root":` + reg + `}`,
	} {
		if l, err := ParseListing([]byte(data)); err == nil {
			t.Errorf("%s: accepted: %+v", name, l.Root)
		} else if !strings.HasPrefix(err.Error(), "listing") {
			t.Errorf("%s: error %q does not say listing", name, err)
		}
	}
}

// dirListing gives the listing of a directory holding n symlinks.
func dirListing(n int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"version":1,"root":{"type":"directory","entries":{`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"%08d":{"type":"symlink","target":"x"}`, i)
	}
	b.WriteString(`}}}`)
	return b.Bytes()
}

func TestParseListingLimit(t *testing.T) {
	data := dirListing(99)
	for _, tc := range []struct {
		max int
		ok  bool
	}{{100, true}, {99, false}, {1, false}, {0, true}, {-1, true}} {
		l, err := ParseListingLimit(data, tc.max)
		switch {
		case tc.ok && (err != nil || l.Entries() != 100):
			t.Errorf("limit %d: %v", tc.max, err)
		case !tc.ok && (!errors.Is(err, ErrTooManyEntries) || !strings.Contains(err.Error(), fmt.Sprint(tc.max))):
			t.Errorf("limit %d: error %v does not wrap ErrTooManyEntries or name the limit", tc.max, err)
		}
	}
	// The default limit, reached by a listing of a directory with more
	// entries than that (about 40 MB of JSON).
	big := dirListing(MaxListingEntries)
	if _, err := ParseListing(big); !errors.Is(err, ErrTooManyEntries) || !strings.Contains(err.Error(), "1000000") {
		t.Fatalf("1,000,001 entries: %v", err)
	}
}

func FuzzParseListing(f *testing.F) {
	f.Add([]byte(sampleListing))
	f.Add([]byte(`{"version":1,"root":{"type":"regular","size":3,"narOffset":96}}`))
	f.Add([]byte(`{"version":1,"x":[1,-2.5e+3,"s",true,false,null,{"a":[]}],"root":{"type":"symlink","target":"t\u00e9\ud83d\ude00"}}`))
	f.Add(dirListing(3))
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := ParseListingLimit(data, 20)
		if err != nil {
			if _, err2 := ParseListingLimit(data, 0); err2 == nil && !errors.Is(err, ErrTooManyEntries) {
				t.Fatalf("refused under a low limit, but not for its size: %v", err)
			}
			return
		}
		if l.Entries() > 20 || l.Entries() != (&Listing{Root: l.Root}).Entries() {
			t.Fatalf("Entries = %d, counted %d", l.Entries(), (&Listing{Root: l.Root}).Entries())
		}
		// Validate refuses exactly the listings with a file outside the
		// NAR, and names a path to an entry that is outside it.
		for _, size := range []int64{0, 100, 1 << 20} {
			err := l.Validate(size)
			if bad := outsideNar(l.Root, size); (err != nil) != bad {
				t.Fatalf("Validate(%d) = %v, but a file outside the NAR: %v", size, err, bad)
			}
			if err != nil {
				msg := err.Error()
				q := msg[len("listing: "):]
				quoted, perr := strconv.QuotedPrefix(q)
				path, _ := strconv.Unquote(quoted)
				n, lerr := l.Lookup(path)
				if perr != nil || lerr != nil || !outsideNar(n, size) || n.Type != TypeRegular {
					t.Fatalf("Validate(%d) = %v: names no file outside the NAR (%v, %v)", size, err, perr, lerr)
				}
			}
		}
		if caseVariantKeys(data) {
			// encoding/json matches field names regardless of case;
			// Nix (and ParseListing) do not: "Executable" is an
			// unknown field, not "executable".
			return
		}
		want, err := stdParseListing(data)
		if err != nil {
			t.Fatalf("accepted what encoding/json refuses: %v", err)
		}
		if !reflect.DeepEqual(l.Root, want) {
			t.Fatalf("parsed\n%+v\nencoding/json gives\n%+v", l.Root, want)
		}
		out, err := l.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		l2, err := ParseListing(out)
		if err != nil {
			t.Fatalf("marshalled listing does not parse: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(l.Root, l2.Root) {
			t.Fatalf("round trip differs:\n%s", out)
		}
	})
}

// BenchmarkParseListing compares ParseListing with the encoding/json
// parser it replaced, on a directory of 100,000 symlinks.
func BenchmarkParseListing(b *testing.B) {
	data := dirListing(100_000)
	b.Run("ParseListing", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if _, err := ParseListing(data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if _, err := stdParseListing(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// caseVariantKeys reports whether data holds a listing field name in
// another case than the one Nix writes.
func caseVariantKeys(data []byte) bool {
	lower := bytes.ToLower(data)
	for _, k := range []string{"version", "root", "type", "size", "executable", "naroffset", "target", "entries"} {
		q := []byte(`"` + k + `"`)
		if bytes.Count(lower, q) != bytes.Count(data, q) && k != "naroffset" {
			return true
		}
		if k == "naroffset" && bytes.Count(lower, q) != bytes.Count(data, []byte(`"narOffset"`)) {
			return true
		}
	}
	return false
}

// Field names, types and entry names written with escapes mean what they
// spell (as for encoding/json): they are matched on the parser's buffer,
// which the next string reuses.
func TestParseListingEscapedKeys(t *testing.T) {
	data := `{"v\u0065rsion":1,"root":{"typ\u0065":"dir\u0065ctory","entri\u0065s":{` +
		`"\u0061":{"type":"r\u0065gular","siz\u0065":3,"narOff\u0073et":96,"ex\u0065cutable":true},` +
		`"b":{"t\u0079pe":"symlink","targ\u0065t":"\u0061"}}}}`
	l, err := ParseListing([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	want, err := stdParseListing([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(l.Root, want) {
		t.Fatalf("parsed\n%+v\nencoding/json gives\n%+v", l.Root, want)
	}
	if a := l.Root.Entries["a"]; a == nil || a.Type != TypeRegular || a.Size != 3 || !a.Executable || l.Root.Entries["b"].Target != "a" {
		t.Fatalf("entries %+v", l.Root.Entries)
	}
}

// outsideNar tells whether a regular file under n (n included) has
// contents outside a NAR of size bytes: Validate's rule, written plainly.
func outsideNar(n *ListingNode, size int64) bool {
	if n.Type == TypeRegular && (n.NarOffset <= 0 || n.Size < 0 || n.NarOffset > size || n.Size > size-n.NarOffset) {
		return true
	}
	for _, c := range n.Entries {
		if outsideNar(c, size) {
			return true
		}
	}
	return false
}

// Validate names the entry whose contents lie outside the NAR, however
// deep, and accepts a listing whose files all lie inside it.
func TestValidateNamesTheEntry(t *testing.T) {
	l, err := ParseListing([]byte(`{"version":1,"root":{"type":"directory","entries":{
		"a":{"type":"regular","size":3,"narOffset":100},
		"d":{"type":"directory","entries":{"e":{"type":"directory","entries":{
			"f":{"type":"regular","size":10,"narOffset":200},
			"l":{"type":"symlink","target":"f"}}}}}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Validate(210); err != nil {
		t.Fatalf("a listing inside its NAR: %v", err)
	}
	err = l.Validate(209)
	if err == nil || !strings.Contains(err.Error(), `"d/e/f": contents [200, +10) outside the 209-byte NAR`) {
		t.Fatalf("got %v, want the error to name d/e/f", err)
	}
	err = l.Validate(102)
	if err == nil || !strings.Contains(err.Error(), `outside the 102-byte NAR`) || !strings.Contains(err.Error(), `"a"`) && !strings.Contains(err.Error(), `"d/e/f"`) {
		t.Fatalf("got %v", err)
	}
}
