package narindex

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"
)

// smallNARs are valid NARs of every node kind, small enough to split at
// every byte.
func smallNARs(t testing.TB) map[string][]byte {
	t.Helper()
	tree := fstest.MapFS{
		"bin/x":         {Data: []byte("#!/bin/sh\n"), Mode: 0o555},
		"f8":            {Data: []byte("12345678"), Mode: 0o444},
		"f9":            {Data: []byte("123456789"), Mode: 0o444},
		"empty":         {Data: nil, Mode: 0o444},
		"link":          {Data: []byte("bin/x"), Mode: fs.ModeSymlink | 0o777},
		"long-link":     {Data: bytes.Repeat([]byte("t"), 300), Mode: fs.ModeSymlink | 0o777},
		"d/e/f/g":       {Data: []byte("deep"), Mode: 0o444},
		"empty-dir":     {Mode: fs.ModeDir | 0o555},
		"name-of-eight": {Data: []byte("x"), Mode: 0o444},
		"12345678":      {Data: []byte("x"), Mode: 0o444},
	}
	var tr bytes.Buffer
	if err := DumpFS(&tr, tree, "."); err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{
		"tree":       tr.Bytes(),
		"file":       file(nb(), "hello").Bytes(),
		"empty file": file(nb(), "").Bytes(),
		"executable": nb().s("(", "type", "regular", "executable", "", "contents", "#!", ")").Bytes(),
		"symlink":    nb().s("(", "type", "symlink", "target", "x", ")").Bytes(),
		"dir":        dirWith("a", "b", "c"),
		"not UTF-8":  dirWith("a", "\xff"),
		"empty dir":  nb().s("(", "type", "directory", ")").Bytes(),
	}
}

// buildListing writes nar to a builder in pieces cut at the given
// offsets, scribbling over each piece after Write to prove it is not kept.
func buildListing(nar []byte, max int, cuts ...int) (*Listing, error) {
	b := NewListingBuilderLimit(max)
	prev := 0
	for _, c := range append(cuts, len(nar)) {
		piece := bytes.Clone(nar[prev:c])
		n, err := b.Write(piece)
		if err != nil {
			if n > len(piece) {
				panic("Write claims more than it was given")
			}
			return nil, err
		}
		if n != len(piece) {
			panic("short write without an error")
		}
		for i := range piece {
			piece[i] = 0xA5
		}
		prev = c
	}
	return b.Finish()
}

func TestListingBuilderMatchesListingFromNar(t *testing.T) {
	for name, nar := range smallNARs(t) {
		want, err := ListingFromNar(bytes.NewReader(nar))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		check := func(how string, l *Listing, err error) {
			t.Helper()
			if err != nil {
				t.Fatalf("%s, %s: %v", name, how, err)
			}
			if !reflect.DeepEqual(l.Root, want.Root) || l.Entries() != want.Entries() {
				t.Fatalf("%s, %s: listing differs from ListingFromNar's", name, how)
			}
		}
		l, err := buildListing(nar, 0)
		check("one write", l, err)
		for i := 0; i <= len(nar); i++ {
			l, err := buildListing(nar, 0, i)
			check("cut at "+fmtInt(i), l, err)
		}
		cuts := make([]int, len(nar))
		for i := range cuts {
			cuts[i] = i
		}
		l, err = buildListing(nar, 0, cuts...)
		check("byte by byte", l, err)
	}
}

func TestListingBuilderLargeTree(t *testing.T) {
	nar := nixDumpOrDumpPath(t, writeTree(t))
	want, err := ListingFromNar(bytes.NewReader(nar))
	if err != nil {
		t.Fatal(err)
	}
	b := NewListingBuilder()
	// Odd-sized pieces, as a hasher or a network would hand them over.
	for off, step := 0, 1; off < len(nar); off, step = off+step, step*3%65537+1 {
		end := min(off+step, len(nar))
		if _, err := b.Write(nar[off:end]); err != nil {
			t.Fatal(err)
		}
	}
	l, err := b.Finish()
	if err != nil || !reflect.DeepEqual(l.Root, want.Root) {
		t.Fatalf("listing differs (%v)", err)
	}
}

func nixDumpOrDumpPath(t *testing.T, p string) []byte {
	var buf bytes.Buffer
	if err := DumpPath(&buf, p); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestListingBuilderRejectsMalformed(t *testing.T) {
	for name, nar := range malformedNARs() {
		for _, cut := range []int{-1, len(nar) / 2, len(nar) - 1} {
			var l *Listing
			var err error
			if cut < 0 || cut > len(nar) {
				l, err = buildListing(nar, 0)
			} else {
				l, err = buildListing(nar, 0, cut)
			}
			if err == nil {
				t.Fatalf("%s: accepted: %+v", name, l.Root)
			}
			if !errors.Is(err, ErrMalformedNAR) || !strings.Contains(err.Error(), "at byte") {
				t.Fatalf("%s: error %v does not wrap ErrMalformedNAR or say where", name, err)
			}
		}
	}
	// The error stays: later writes and Finish give it again.
	b := NewListingBuilder()
	_, err := b.Write(nb().s("(", "type", "fifo").Bytes())
	if !errors.Is(err, ErrMalformedNAR) {
		t.Fatalf("Write: %v", err)
	}
	if n, err2 := b.Write([]byte("more")); n != 0 || err2 != err {
		t.Fatalf("Write after error: %d, %v", n, err2)
	}
	if _, err2 := b.Finish(); err2 != err {
		t.Fatalf("Finish after error: %v", err2)
	}
	// Writes after Finish fail; Finish answers again.
	b = NewListingBuilder()
	b.Write(file(nb(), "x").Bytes())
	l1, err1 := b.Finish()
	if _, err := b.Write([]byte{0}); err == nil {
		t.Fatal("write after Finish accepted")
	}
	l2, err2 := b.Finish()
	if err1 != nil || err2 != nil || l1.Root.Size != 1 || !reflect.DeepEqual(l1, l2) {
		t.Fatalf("Finish twice: %v %v", err1, err2)
	}
	// Nothing written is a truncated NAR.
	if _, err := NewListingBuilder().Finish(); !errors.Is(err, ErrMalformedNAR) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("empty: %v", err)
	}
}

func TestListingBuilderLimit(t *testing.T) {
	nar := dirWith("a", "b", "c", "d") // 5 entries with the root
	for _, tc := range []struct {
		max int
		ok  bool
	}{{5, true}, {4, false}, {1, false}, {0, true}} {
		l, err := buildListing(nar, tc.max)
		_, err2 := ListingFromNarLimit(bytes.NewReader(nar), tc.max)
		switch {
		case tc.ok && (err != nil || err2 != nil || l.Entries() != 5):
			t.Errorf("limit %d: %v, %v", tc.max, err, err2)
		case !tc.ok && (!errors.Is(err, ErrTooManyEntries) || !errors.Is(err2, ErrTooManyEntries) ||
			!strings.Contains(err.Error(), "limit of "+fmtInt(tc.max)) || errors.Is(err, ErrMalformedNAR)):
			t.Errorf("limit %d: builder %v, ListingFromNarLimit %v", tc.max, err, err2)
		}
	}
	// The builder stops at the entry beyond the limit: the bytes after
	// it are not even looked at.
	b := NewListingBuilderLimit(2)
	n, err := b.Write(append(bytes.Clone(nar), "garbage"...))
	if !errors.Is(err, ErrTooManyEntries) || n >= len(nar) {
		t.Fatalf("Write = %d of %d, %v", n, len(nar), err)
	}
}

// BenchmarkListingBuilder measures the builder on a NAR of many small
// files and on one of a large file.
func BenchmarkListingBuilder(b *testing.B) {
	many := fstest.MapFS{}
	for i := range 20000 {
		many["d/"+fmtInt(100000+i)] = &fstest.MapFile{Data: []byte("small file contents"), Mode: 0o444}
	}
	big := fstest.MapFS{"big": {Data: bytes.Repeat([]byte("x"), 64<<20), Mode: 0o444}}
	for name, tree := range map[string]fstest.MapFS{"many": many, "big": big} {
		var nar bytes.Buffer
		if err := DumpFS(&nar, tree, "."); err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(nar.Len()))
			for b.Loop() {
				lb := NewListingBuilder()
				data := nar.Bytes()
				for len(data) > 0 {
					n := min(len(data), 256<<10)
					if _, err := lb.Write(data[:n]); err != nil {
						b.Fatal(err)
					}
					data = data[n:]
				}
				if _, err := lb.Finish(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// FuzzListingBuilder: the builder, fed in two pieces, agrees with
// ListingFromNar on every input: the same listing, or an error of the same
// kind.
func FuzzListingBuilder(f *testing.F) {
	for _, nar := range smallNARs(f) {
		f.Add(nar, uint16(len(nar)/3))
	}
	for _, nar := range malformedNARs() {
		if len(nar) < 4096 {
			f.Add(nar, uint16(len(nar)/2))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, cut uint16) {
		const max = 50
		c := min(int(cut), len(data))
		got, err := buildListing(data, max, c)
		want, werr := ListingFromNarLimit(bytes.NewReader(data), max)
		if (err == nil) != (werr == nil) {
			t.Fatalf("builder: %v; ListingFromNar: %v", err, werr)
		}
		if err != nil {
			for _, kind := range []error{ErrMalformedNAR, ErrTooManyEntries} {
				if errors.Is(err, kind) != errors.Is(werr, kind) {
					t.Fatalf("builder: %v; ListingFromNar: %v", err, werr)
				}
			}
			if !errors.Is(err, ErrMalformedNAR) && !errors.Is(err, ErrTooManyEntries) {
				t.Fatalf("error of no known kind: %v", err)
			}
			return
		}
		if !reflect.DeepEqual(got.Root, want.Root) || got.Entries() != want.Entries() {
			t.Fatalf("listings differ")
		}
	})
}
