package narindex

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// writeTree makes a directory with every kind of object a NAR can hold and
// the sizes around padding and chunk boundaries.
func writeTree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "tree")
	mk := func(p string, data []byte, mode os.FileMode) {
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []int{0, 1, 7, 8, 9, 15, 16, 17, 262143, 262144, 262145} {
		mk(filepath.Join("sizes", "f"+strings.Repeat("0", 6-len(fmtInt(n)))+fmtInt(n)), bytes.Repeat([]byte{byte(n)}, n), 0o644)
	}
	mk("big", bytes.Repeat([]byte("0123456789abcdef"), 6<<20/16+3), 0o644)
	mk("bin/tool", []byte("#!/bin/sh\n"), 0o755)
	mk("a/b/c/d/e", []byte("deep"), 0o600)
	for _, n := range []string{"B", "a", "_", "é", "Z z", ".hidden"} {
		mk(filepath.Join("names", n), []byte(n), 0o644)
	}
	if err := os.MkdirAll(filepath.Join(root, "empty-dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{"rel": "bin/tool", "abs": "/etc/hostname", "dangling": "no/such/thing"} {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func fmtInt(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func nixDump(t *testing.T, p string) []byte {
	t.Helper()
	if _, err := exec.LookPath("nix-store"); err != nil {
		t.Skip("nix-store not installed")
	}
	out, err := exec.Command("nix-store", "--dump", p).Output()
	if err != nil {
		t.Fatalf("nix-store --dump %s: %v", p, err)
	}
	return out
}

func TestDumpPathMatchesNixStoreDump(t *testing.T) {
	root := writeTree(t)
	for _, p := range []string{root, filepath.Join(root, "bin/tool"), filepath.Join(root, "rel"), filepath.Join(root, "empty-dir"), filepath.Join(root, "sizes/f000000")} {
		var buf bytes.Buffer
		if err := DumpPath(&buf, p); err != nil {
			t.Fatal(err)
		}
		if want := nixDump(t, p); !bytes.Equal(buf.Bytes(), want) {
			t.Errorf("%s: DumpPath differs from nix-store --dump (%d vs %d bytes)", p, buf.Len(), len(want))
		}
	}
}

func TestNarReaderReadsBackTree(t *testing.T) {
	root := writeTree(t)
	var buf bytes.Buffer
	if err := DumpPath(&buf, root); err != nil {
		t.Fatal(err)
	}
	nar := buf.Bytes()
	nr := NewNarReader(bytes.NewReader(nar))
	seen := map[string]bool{}
	for {
		e, err := nr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		seen[e.Path] = true
		p := filepath.Join(root, e.Path)
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatalf("%q: %v", e.Path, err)
		}
		switch e.Type {
		case TypeRegular:
			want, _ := os.ReadFile(p)
			got, err := io.ReadAll(nr)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%q: contents differ (%v)", e.Path, err)
			}
			if !bytes.Equal(nar[e.Offset:e.Offset+e.Size], want) {
				t.Fatalf("%q: Offset %d does not point at the contents", e.Path, e.Offset)
			}
			if e.Executable != (fi.Mode()&0o100 != 0) {
				t.Fatalf("%q: executable=%v", e.Path, e.Executable)
			}
		case TypeSymlink:
			want, _ := os.Readlink(p)
			if e.Target != want {
				t.Fatalf("%q: target %q, want %q", e.Path, e.Target, want)
			}
		case TypeDirectory:
			if !fi.IsDir() {
				t.Fatalf("%q is not a directory", e.Path)
			}
		}
	}
	for _, p := range []string{"", "big", "empty-dir", "a/b/c/d/e", "names/é", "dangling"} {
		if !seen[p] {
			t.Errorf("entry %q not seen", p)
		}
	}
}

// countingSeeker counts the bytes read through it.
type countingSeeker struct {
	r    io.ReadSeeker
	read int64
}

func (c *countingSeeker) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read += int64(n)
	return n, err
}

func (c *countingSeeker) Seek(off int64, whence int) (int64, error) { return c.r.Seek(off, whence) }

func TestListingFromNarSkipsContents(t *testing.T) {
	root := writeTree(t)
	var buf bytes.Buffer
	if err := DumpPath(&buf, root); err != nil {
		t.Fatal(err)
	}
	cs := &countingSeeker{r: bytes.NewReader(buf.Bytes())}
	l, err := ListingFromNar(cs)
	if err != nil {
		t.Fatal(err)
	}
	if cs.read*100 > int64(buf.Len()) {
		t.Fatalf("read %d of %d NAR bytes to build a listing", cs.read, buf.Len())
	}
	n, err := l.Lookup("big")
	if err != nil || n.Size != int64(16*(6<<20/16+3)) {
		t.Fatalf("big: %+v %v", n, err)
	}
	if err := l.Validate(int64(buf.Len())); err != nil {
		t.Fatal(err)
	}
	if err := l.Validate(n.NarOffset + n.Size - 1); err == nil {
		t.Fatal("Validate accepted a NAR too short for its files")
	}
}

// The listing Nix writes (nix copy with write-nar-listing=true) is what
// ListingFromNar and Marshal produce, byte for byte.
func TestListingMatchesNix(t *testing.T) {
	if _, err := exec.LookPath("nix"); err != nil {
		t.Skip("nix not installed")
	}
	root := writeTree(t)
	out, err := exec.Command("nix-store", "--add", root).Output()
	if err != nil {
		t.Fatalf("nix-store --add: %v", err)
	}
	sp := strings.TrimSpace(string(out))
	cache := t.TempDir()
	if out, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "copy", "--to",
		"file://"+cache+"?compression=none&write-nar-listing=true", sp).CombinedOutput(); err != nil {
		t.Fatalf("nix copy: %v\n%s", err, out)
	}
	p, _ := ParseStorePath(sp)
	want, err := os.ReadFile(filepath.Join(cache, p.Hash+".ls"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := ListingFromNar(bytes.NewReader(nixDump(t, sp)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := l.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("listing differs from Nix's:\n got %s\nwant %s", got, want)
	}
	parsed, err := ParseListing(want)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := parsed.Marshal()
	if !bytes.Equal(again, want) {
		t.Fatal("ParseListing+Marshal does not round-trip Nix's listing")
	}
}

// narBuilder writes NAR tokens, to build malformed NARs.
type narBuilder struct{ bytes.Buffer }

func (b *narBuilder) s(tokens ...string) *narBuilder {
	for _, t := range tokens {
		b.raw(uint64(len(t)), t, 0)
	}
	return b
}

// raw writes a length, the bytes and padding filled with pad.
func (b *narBuilder) raw(n uint64, data string, pad byte) *narBuilder {
	var l [8]byte
	binary.LittleEndian.PutUint64(l[:], n)
	b.Write(l[:])
	b.WriteString(data)
	for i := len(data); i%8 != 0; i++ {
		b.WriteByte(pad)
	}
	return b
}

func nb() *narBuilder { b := &narBuilder{}; b.s(narMagic); return b }

func file(b *narBuilder, contents string) *narBuilder {
	return b.s("(", "type", "regular", "contents", contents, ")")
}

func dirWith(names ...string) []byte {
	b := nb().s("(", "type", "directory")
	for _, n := range names {
		b.s("entry", "(", "name", n, "node")
		file(b, "x")
		b.s(")")
	}
	b.s(")")
	return b.Bytes()
}

// malformedNARs gives invalid NARs by what is wrong with them.
func malformedNARs() map[string][]byte {
	valid := file(nb(), "hello").Bytes()
	deep := nb()
	for range MaxDepth + 1 {
		deep.s("(", "type", "directory", "entry", "(", "name", "d", "node")
	}
	cases := map[string][]byte{
		"bad magic":                   file((&narBuilder{}).s("nix-archive-2"), "x").Bytes(),
		"empty input":                 {},
		"unknown type":                nb().s("(", "type", "fifo", ")").Bytes(),
		"wrong token":                 nb().s("(", "kind", "regular").Bytes(),
		"unsorted names":              dirWith("b", "a"),
		"duplicate names":             dirWith("a", "a"),
		"empty name":                  dirWith(""),
		"dot name":                    dirWith("."),
		"dotdot name":                 dirWith(".."),
		"slash in name":               dirWith("a/b"),
		"NUL in name":                 dirWith("a\x00b"),
		"name of 256 bytes":           dirWith(strings.Repeat("n", 256)),
		"empty target":                nb().s("(", "type", "symlink", "target", "", ")").Bytes(),
		"NUL in target":               nb().s("(", "type", "symlink", "target", "a\x00", ")").Bytes(),
		"target of 4096 bytes":        nb().s("(", "type", "symlink", "target", strings.Repeat("t", 4096), ")").Bytes(),
		"non-zero padding":            nb().s("(", "type", "regular", "contents").raw(5, "hello", 1).s(")").Bytes(),
		"executable after contents":   nb().s("(", "type", "regular", "contents", "x", "executable", "", ")").Bytes(),
		"executable marker not empty": nb().s("(", "type", "regular", "executable", "yes", "contents", "x", ")").Bytes(),
		"depth 65":                    deep.Bytes(),
		"huge token length":           nb().raw(1<<40, "", 0).Bytes(),
		"huge contents length":        nb().s("(", "type", "regular", "contents").raw(1<<63, "", 0).Bytes(),
		"trailing bytes":              append(bytes.Clone(valid), 0, 0, 0, 0, 0, 0, 0, 0),
		"missing close":               nb().s("(", "type", "regular", "contents", "x").Bytes(),
	}
	for i := 1; i < len(valid); i += 7 {
		cases["truncated at "+fmtInt(i)] = valid[:i]
	}
	return cases
}

func TestNarReaderRejectsMalformed(t *testing.T) {
	valid := file(nb(), "hello").Bytes()
	cases := malformedNARs()
	for name, nar := range cases {
		t.Run(name, func(t *testing.T) {
			err := drain(NewNarReader(bytes.NewReader(nar)))
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrMalformedNAR) {
				t.Fatalf("error does not wrap ErrMalformedNAR: %v", err)
			}
			if !strings.Contains(err.Error(), "at byte") {
				t.Fatalf("error does not say where: %v", err)
			}
		})
	}
	if err := drain(NewNarReader(bytes.NewReader(valid))); err != nil {
		t.Fatalf("valid NAR rejected: %v", err)
	}
}

// drain reads every entry and all contents; nil means a valid NAR.
func drain(nr *NarReader) error {
	for {
		e, err := nr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if e.Type == TypeRegular {
			if _, err := io.Copy(io.Discard, nr); err != nil {
				return err
			}
		}
	}
}

func TestParseListingRejects(t *testing.T) {
	for name, data := range map[string]string{
		"version 2":        `{"version":2,"root":{"type":"regular","size":1,"narOffset":96}}`,
		"no root":          `{"version":1}`,
		"unknown type":     `{"version":1,"root":{"type":"fifo"}}`,
		"negative size":    `{"version":1,"root":{"type":"regular","size":-1,"narOffset":96}}`,
		"missing offset":   `{"version":1,"root":{"type":"regular","size":1}}`,
		"slash name":       `{"version":1,"root":{"type":"directory","entries":{"a/b":{"type":"regular","size":1,"narOffset":96}}}}`,
		"dotdot name":      `{"version":1,"root":{"type":"directory","entries":{"..":{"type":"directory"}}}}`,
		"empty target":     `{"version":1,"root":{"type":"symlink","target":""}}`,
		"null entry":       `{"version":1,"root":{"type":"directory","entries":{"a":null}}}`,
		"not json":         `{"version":1,`,
		"wrong field type": `{"version":"1"}`,
	} {
		if _, err := ParseListing([]byte(data)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzNarReader(f *testing.F) {
	f.Add(file(nb(), "hello").Bytes())
	f.Add(dirWith("a", "b", "c"))
	f.Add(nb().s("(", "type", "symlink", "target", "x", ")").Bytes())
	f.Add(nb().s("(", "type", "regular", "executable", "", "contents", "#!", ")").Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		nr := NewNarReader(bytes.NewReader(data))
		err := drain(nr)
		if err != nil && !errors.Is(err, ErrMalformedNAR) {
			t.Fatalf("error from an in-memory NAR is not ErrMalformedNAR: %v", err)
		}
		if err == nil {
			// A valid NAR also yields a valid listing, seeking or not.
			if _, err := ListingFromNar(bytes.NewReader(data)); err != nil {
				t.Fatalf("valid NAR, listing failed: %v", err)
			}
		}
	})
}
