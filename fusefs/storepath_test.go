package fusefs

import (
	"testing"

	"github.com/ipnix/ipnix/narindex"
)

// Entries are numbered in NAR order (a directory, then its entries by
// name, each with everything under it), so inode numbers are the same on
// every mount, and the listing's estimated memory counts every name.
func TestOrdinalsInNarOrder(t *testing.T) {
	l, err := narindex.ParseListing([]byte(`{"version":1,"root":{"type":"directory","entries":{
		"z":{"type":"regular","size":1,"narOffset":900},
		"b":{"type":"directory","entries":{
			"y":{"type":"symlink","target":"../z"},
			"c":{"type":"directory","entries":{"q":{"type":"regular","size":1,"narOffset":500}}},
			"a":{"type":"regular","size":1,"narOffset":300}}},
		"B":{"type":"regular","size":1,"narOffset":100}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	sp := &storePath{listing: l}
	if err := sp.number(); err != nil {
		t.Fatal(err)
	}
	want := map[string]uint32{"": 0, "B": 1, "b": 2, "b/a": 3, "b/c": 4, "b/c/q": 5, "b/y": 6, "z": 7}
	for path, ord := range want {
		n, err := l.Lookup(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := sp.ordinals[n]; got != ord {
			t.Errorf("%q: ordinal %d, want %d", path, got, ord)
		}
	}
	if len(sp.ordinals) != len(want) {
		t.Errorf("%d ordinals for %d entries", len(sp.ordinals), len(want))
	}
	names := int64(len("zbycqaB") + len("../z"))
	if wantBytes := int64(len(want))*entryOverhead + names; sp.bytes != wantBytes {
		t.Errorf("estimated %d bytes, want %d", sp.bytes, wantBytes)
	}
}
