package publish

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/ipnix/ipnix/fetch/fetchtest"
	"github.com/ipnix/ipnix/narindex"
)

// narOfSize is a NAR of one directory holding one file, exactly size
// bytes long (size and the NAR framing are multiples of 8).
func narOfSize(t *testing.T, size int) []byte {
	t.Helper()
	dump := func(n int) []byte {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(i*7 + i/4096)
		}
		var buf bytes.Buffer
		if err := narindex.DumpFS(&buf, fstest.MapFS{"f": {Data: data, Mode: 0o444}}, "."); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	overhead := len(dump(0))
	nar := dump(size - overhead)
	if len(nar) != size {
		t.Fatalf("NAR of %d bytes, want %d", len(nar), size)
	}
	return nar
}

// uncompressedCache is a binary cache holding helloPath as the
// uncompressed NAR file, described by a narinfo for nar, changed by edit.
func uncompressedCache(t *testing.T, file, nar []byte, edit func(*narindex.NarInfo)) string {
	t.Helper()
	return writeCache(t, "StoreDir: /nix/store\n", "nar/hello.nar", "none", nar, file, edit)
}

// The copy of an uncompressed NAR (an O_DIRECT sink of the ingest where
// the file system takes it) is byte for byte the source, whether its size
// is a multiple of 4096 (every write stays O_DIRECT, the last chunk
// included), a multiple of the chunk size (the last read is empty) or
// neither; a NAR that fails its checks leaves nothing under nar/.
func TestCacheCopiesUncompressedNarExactly(t *testing.T) {
	for _, size := range []int{
		4096, 5 * 4096, chunkSize, chunkSize + 4096, chunkSize + 8,
		2*chunkSize - 4096, 2 * chunkSize, 3*chunkSize + 5*4096 + 8, 4096 + 8, 512,
	} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			nar := narOfSize(t, size)
			to := copyNar(t, uncompressedCache(t, nar, nar, nil), "nar/hello.nar", nar)
			checkNarDir(t, to, "hello.nar")
		})
	}

	nar := narOfSize(t, 2*chunkSize)
	for name, tc := range map[string]struct {
		file []byte
		edit func(*narindex.NarInfo)
		want string
	}{
		"wrong NarHash":   {nar, func(ni *narindex.NarInfo) { ni.NarHash.Digest[0] ^= 1 }, "NAR hash is"},
		"truncated file":  {nar[:chunkSize+4096], nil, "not a valid NAR"},
		"trailing bytes":  {append(append([]byte{}, nar...), make([]byte, 4096)...), nil, "trailing bytes"},
		"wrong NarSize":   {nar, func(ni *narindex.NarInfo) { ni.NarSize -= 4096 }, "expected NarSize"},
		"bytes flipped":   {flipped(nar, chunkSize+100), nil, "NAR hash is"},
		"aligned garbage": {make([]byte, 3*4096), nil, "not a valid NAR"},
	} {
		t.Run(name, func(t *testing.T) {
			from := uncompressedCache(t, tc.file, nar, tc.edit)
			to := t.TempDir()
			p, err := New(storeAdder{fetchtest.NewStore()}, Options{To: to})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.Cache(context.Background(), from); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Cache: %v, want an error saying %q", err, tc.want)
			}
			checkNarDir(t, to)
			if _, err := os.Stat(filepath.Join(to, "rsw37b3mfmf5mwk74h93w7daljgm23cm.narinfo")); err == nil {
				t.Fatal("narinfo written")
			}
		})
	}
}

func flipped(b []byte, at int) []byte {
	c := append([]byte{}, b...)
	c[at] ^= 1
	return c
}

// copyNar publishes the binary cache from into a new directory, which it
// returns, and checks that the copy of the one NAR at url is nar, byte for
// byte.
func copyNar(t *testing.T, from, url string, nar []byte) string {
	t.Helper()
	to := t.TempDir()
	p, err := New(storeAdder{fetchtest.NewStore()}, Options{To: to})
	if err != nil {
		t.Fatal(err)
	}
	if sum, err := p.Cache(context.Background(), from); err != nil || sum.Published != 1 {
		t.Fatalf("Cache: %+v, %v", sum, err)
	}
	got, err := os.ReadFile(filepath.Join(to, filepath.FromSlash(url)))
	if err != nil || !bytes.Equal(got, nar) {
		t.Fatalf("copied NAR: %d bytes (want %d), equal %v, %v", len(got), len(nar), bytes.Equal(got, nar), err)
	}
	return to
}

// A NAR whose URL lies outside nar/ is copied to its URL, by way of a
// temporary file in nar/ (where the next publish sweeps what a killed one
// left): nothing temporary stays anywhere.
func TestCacheCopiesNarOutsideNarDir(t *testing.T) {
	nar := narOfSize(t, chunkSize+8)
	from := writeCache(t, "StoreDir: /nix/store\n", "custom/sub/hello.nar", "none", nar, nar, nil)
	to := copyNar(t, from, "custom/sub/hello.nar", nar)
	checkNarDir(t, to)
	ents, err := os.ReadDir(filepath.Join(to, "custom/sub"))
	if err != nil || len(ents) != 1 || ents[0].Name() != "hello.nar" {
		t.Fatalf("custom/sub holds %v (%v), want only hello.nar", ents, err)
	}
}

// checkNarDir fails unless to/nar holds exactly the files named.
func checkNarDir(t *testing.T, to string, want ...string) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(to, "nar"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("nar/ holds %q, want %q", got, want)
	}
}
