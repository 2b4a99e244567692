package fusefs

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ipnix/ipnix/narindex"
)

// The manifest of local copies is read from disk: any content is refused
// or parsed, never a panic, and what parses is canonical.
func FuzzReadManifest(f *testing.F) {
	f.Add("0 262144 " + strings.Repeat("ab", 32) + "\n")
	f.Add("12 3 x\n")
	f.Add("")
	f.Add("-1 5 " + strings.Repeat("0", 64) + "\n")
	f.Add("0 262144 crc32c:0123abcd\n1 2 crc32c:0123ABCD\n")
	f.Add("7 1 crc32c:\n")
	f.Fuzz(func(t *testing.T, s string) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "manifest"), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		m, err := readManifest(dir)
		if err != nil {
			return
		}
		for name, e := range m {
			kind, ok := parseCopySum(e.sum)
			if e.size < 0 || !ok || kind != e.kind || strings.ContainsAny(name, "/\x00") || name == "" {
				t.Fatalf("accepted entry %q %+v", name, e)
			}
		}
	})
}

// hashEvery has checkCopies hash every copy.
func hashEvery(string) (func(bool), bool, error) { return func(bool) {}, true, nil }

// A copy found at start that an open asks for while the background pass
// hashes it is hashed once: the open waits for that pass's result, and a
// copy that does not match is refused to both.
func TestCopyCheckedOnce(t *testing.T) {
	for _, c := range []struct {
		kind   copySum
		intact bool
	}{{crc32cCopySum, true}, {crc32cCopySum, false}, {legacySHA256Sum, true}, {legacySHA256Sum, false}} {
		intact := c.intact
		dir := t.TempDir()
		nh := narindex.EncodeNix32(make([]byte, 32))
		p := filepath.Join(dir, nh)
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		data := bytes.Repeat([]byte("ipnix"), (64<<20)/5)
		h := c.kind.new()
		h.Write(data)
		sum := c.kind.format(h)
		if !intact {
			data[len(data)-1] ^= 1
		}
		if err := os.WriteFile(filepath.Join(p, "4096"), data, 0o400); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "manifest"), fmt.Appendf(nil, "4096 %d %s\n", len(data), sum), 0o400); err != nil {
			t.Fatal(err)
		}
		stats := &Stats{}
		fl, err := openFiles(dir, 1<<30, slog.New(slog.DiscardHandler), stats)
		if err != nil {
			t.Fatal(err)
		}
		ln := &narindex.ListingNode{Type: narindex.TypeRegular, NarOffset: 4096, Size: int64(len(data))}
		fl.check(nh) // the background pass, from a lookup
		fd, err := fl.open(nh, ln)
		if fd >= 0 {
			syscall.Close(fd)
		}
		fl.wg.Wait()
		fl.close()
		if intact && err != nil {
			t.Fatalf("open of an intact copy: %v", err)
		}
		if !intact && err == nil {
			t.Fatal("a copy that does not match its manifest was opened")
		}
		if got := stats.LocalCopyBytesHashed.Load(); got != int64(len(data)) {
			t.Errorf("intact=%v: %d bytes hashed for a copy of %d", intact, got, len(data))
		}
		if _, err := os.Stat(p); intact == errors.Is(err, os.ErrNotExist) {
			t.Errorf("intact=%v: directory kept=%v", intact, err == nil)
		}
	}
}
