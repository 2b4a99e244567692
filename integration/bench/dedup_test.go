package main

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"testing/fstest"

	"github.com/ipnix/ipnix/narindex"
)

// A version B that differs from A by 100 bytes inserted near the start:
// fixed chunks share nothing after the insertion, content-defined ones
// find their boundaries again. The measure must tell them apart.
func TestNewBytesSeesShiftedContent(t *testing.T) {
	a := make([]byte, 8<<20)
	rand.NewChaCha8([32]byte{12}).Read(a)
	b := append(append(append([]byte{}, a[:1000]...), bytes.Repeat([]byte{'x'}, 100)...), a[1000:]...)
	share := map[string]float64{}
	for _, c := range []string{"size-262144", "buzhash", "rabin"} {
		sa, err := importBlocks(a, c)
		if err != nil {
			t.Fatal(err)
		}
		sb, err := importBlocks(b, c)
		if err != nil {
			t.Fatal(err)
		}
		if n := newBytes(sa, sa); n != 0 {
			t.Errorf("%s: A given A needs %d bytes", c, n)
		}
		share[c] = float64(newBytes(sa, sb)) / float64(len(b))
	}
	if share["size-262144"] < 0.99 {
		t.Errorf("fixed chunks: %.2f of B new after a shift; want all of it", share["size-262144"])
	}
	for _, c := range []string{"buzhash", "rabin"} {
		if share[c] > 0.2 {
			t.Errorf("%s: %.2f of B new after a 100-byte insertion", c, share[c])
		}
	}
}

func TestNewFileBytes(t *testing.T) {
	nar := func(files map[string]string) []byte {
		tree := fstest.MapFS{}
		for name, data := range files {
			tree[name] = &fstest.MapFile{Data: []byte(data), Mode: 0o444}
		}
		var buf bytes.Buffer
		if err := narindex.DumpFS(&buf, tree, "."); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	a := nar(map[string]string{"same": "unchanged", "moved": "moved content", "old": "version 1"})
	b := nar(map[string]string{"same": "unchanged", "elsewhere/moved": "moved content", "old": "version 22", "twice1": "new!", "twice2": "new!"})
	// "version 22" and "new!" (once): 10 + 4.
	if n, err := newFileBytes(a, b); err != nil || n != 14 {
		t.Errorf("newFileBytes = %d, %v; want 14", n, err)
	}
}
