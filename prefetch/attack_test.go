package prefetch

// Attacks on prefetch: a source that lies, and block files in the cache
// directory whose bytes are not their block's (tampered, or rotted)
// before a prefetch runs. A prefetch that reports a closure complete must
// leave every byte of it readable from the store alone.

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/cache"
	"github.com/ipnix/ipnix/fetch"
)

// blockFile is where the store in dir keeps block c (see cache's layout).
func blockFile(dir string, c cid.Cid) string {
	h := hex.EncodeToString(c.Hash())
	return filepath.Join(dir, "blocks", h[len(h)-2:], h)
}

// leafOf returns a raw leaf of base's NAR.
func (e *env) leafOf(t *testing.T, base string, i int) cid.Cid {
	t.Helper()
	c, _ := cid.Decode(e.fc.paths[base].Info.IpfsCid)
	f, err := fetch.OpenFile(context.Background(), e.st, c)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := f.Leaves(context.Background(), 0, f.Size())
	if err != nil || len(ls) <= i {
		t.Fatalf("leaves: %d, %v", len(ls), err)
	}
	return ls[i].Cid
}

// TestAttackPrefetchLyingSource: the source answers a leaf with other
// bytes: the prefetch fails naming the mismatch, and the wrong bytes are
// neither stored nor pinned.
func TestAttackPrefetchLyingSource(t *testing.T) {
	e := newEnv(t)
	leaf := e.leafOf(t, e.top, 1)
	real, _ := e.st.GetBlock(context.Background(), leaf)
	e.st.Override(leaf, bytes.Repeat([]byte{0}, len(real.RawData())))
	d := e.open(t, 1<<30)
	_, err := e.run(t, d, true, e.top)
	if !errors.Is(err, fetch.ErrHashMismatch) {
		t.Fatalf("prefetch through a lying source: %v", err)
	}
	if _, _, ok := cache.StatBlock(e.dir, leaf); ok {
		t.Error("the lying source's bytes were stored")
	}
}

// TestAttackPrefetchCorruptBlockFiles: block files of the closure hold
// wrong bytes of the right size before the prefetch: one plain, one
// pinned (mode 0400) as a prefetch leaves it, and one torn (short). After
// the prefetch reports success, every path reads correctly from the
// store alone (no source), and a store reading a corrupt file refetches
// it rather than serving it.
func TestAttackPrefetchCorruptBlockFiles(t *testing.T) {
	e := newEnv(t)
	// A first prefetch of the closure, then damage.
	d := e.open(t, 1<<30)
	if _, err := e.run(t, d, false, e.top); err != nil {
		t.Fatal(err)
	}
	d.Close()
	damaged := []cid.Cid{e.leafOf(t, e.top, 0), e.leafOf(t, e.libs[0], 2), e.leafOf(t, e.libs[1], 0)}
	for i, c := range damaged {
		p := blockFile(e.dir, c)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o600); err != nil {
			t.Fatal(err)
		}
		junk := bytes.Repeat([]byte{0xee}, int(fi.Size()))
		if i == 2 {
			junk = junk[:len(junk)/2] // torn
		}
		if err := os.WriteFile(p, junk, 0o600); err != nil {
			t.Fatal(err)
		}
		if i != 1 {
			// Still pinned, as the first prefetch left it.
			if err := os.Chmod(p, 0o400); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The prefetch is run again (as a user would, to make sure).
	d = e.open(t, 1<<30)
	if _, err := e.run(t, d, false, e.top); err != nil {
		t.Fatal(err)
	}
	d.Close()
	for _, base := range append(e.libs, e.top) {
		if got := e.readAll(t, base); !bytes.Equal(got, e.fc.data[base]) {
			t.Errorf("%s: wrong bytes from the store after a prefetch reported success", base)
		}
	}
}

// TestAttackPinnedCorruptBlockNotServed: a store never serves a pinned
// (0400) block file whose bytes are wrong: it counts it corrupt and
// fetches the block again.
func TestAttackPinnedCorruptBlockNotServed(t *testing.T) {
	e := newEnv(t)
	d := e.open(t, 1<<30)
	if _, err := e.run(t, d, false, e.top); err != nil {
		t.Fatal(err)
	}
	d.Close()
	leaf := e.leafOf(t, e.top, 0)
	p := blockFile(e.dir, leaf)
	want, _ := os.ReadFile(p)
	os.Chmod(p, 0o600)
	os.WriteFile(p, bytes.Repeat([]byte{1}, len(want)), 0o600)
	os.Chmod(p, 0o400)
	d = e.open(t, 1<<30)
	gets := e.st.Gets.Load()
	b, err := d.GetBlock(context.Background(), leaf)
	if err != nil || !bytes.Equal(b.RawData(), want) {
		t.Fatalf("GetBlock: %v, right bytes %v", err, err == nil && bytes.Equal(b.RawData(), want))
	}
	if d.Stats.Corrupt.Load() != 1 || e.st.Gets.Load() == gets {
		t.Errorf("corrupt=%d, refetched %d", d.Stats.Corrupt.Load(), e.st.Gets.Load()-gets)
	}
	// And the store alone refuses it rather than serving it.
	d.Close()
	os.Chmod(p, 0o600)
	os.WriteFile(p, bytes.Repeat([]byte{1}, len(want)), 0o600)
	os.Chmod(p, 0o400)
	if _, err := cache.ReadOnly(e.dir).GetBlock(context.Background(), leaf); err == nil {
		t.Error("the store alone served a corrupt block")
	}
}

// TestAttackTamperedRecord: a record file that does not parse (a path
// outside the store, a CID of another codec written oddly, a huge line)
// makes gc refuse, deleting nothing: gc must never take a damaged record
// for an empty one. A CID of another codec that parses only keeps that
// block.
func TestAttackTamperedRecord(t *testing.T) {
	e := newEnv(t)
	d := e.open(t, 1<<30)
	if _, err := e.run(t, d, false, e.top); err != nil {
		t.Fatal(err)
	}
	d.Close()
	good, err := os.ReadFile(filepath.Join(e.dir, RecordName))
	if err != nil {
		t.Fatal(err)
	}
	count := func() int {
		u, err := cache.Scan(e.dir)
		if err != nil {
			t.Fatal(err)
		}
		return u.Blocks
	}
	before := count()
	cbor := cid.NewCidV1(cid.DagCBOR, cid.NewCidV1(cid.Raw, nil).Hash())
	for what, rec := range map[string]string{
		"path outside the store": string(good) + "path ../../etc/passwd-x " + cbor.String() + " 10\n",
		"absolute path":          string(good) + "path /etc/passwd " + cbor.String() + " 10\n",
		"huge line":              string(good) + "path " + string(bytes.Repeat([]byte("a"), 1<<20)) + "\n",
		"NUL":                    string(good) + "path \x00 x 1\n",
		"garbage":                "\x00\x01\x02",
	} {
		if err := os.WriteFile(filepath.Join(e.dir, RecordName), []byte(rec), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, _, err := Collect(context.Background(), e.dir, 0, nil); err == nil {
			t.Errorf("%s: gc ran on a damaged record", what)
		}
		if Recorded(e.dir) {
			t.Errorf("%s: a damaged record counts as recorded closures", what)
		}
		if got := count(); got != before {
			t.Fatalf("%s: gc removed %d blocks", what, before-got)
		}
	}
}

// TestAttackRecordNotAFile: a record that is a FIFO or a huge sparse file
// must not hang or exhaust memory whoever reads it (a mount at start
// asks Recorded).
func TestAttackRecordNotAFile(t *testing.T) {
	dir := cacheDir(t)
	p := filepath.Join(dir, RecordName)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(8 << 30); err != nil { // 8 GiB, sparse
		t.Skip("sparse file:", err)
	}
	f.Close()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	if _, err := LoadRecord(dir); err == nil {
		t.Error("an 8 GiB record loaded")
	}
	runtime.ReadMemStats(&m1)
	if got := m1.TotalAlloc - m0.TotalAlloc; got > 256<<20 {
		t.Errorf("refusing an 8 GiB record allocated %d MiB", got>>20)
	}
	os.Remove(p)
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Skip("mkfifo:", err)
	}
	done := make(chan error, 1)
	go func() { _, err := LoadRecord(dir); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("a FIFO loaded as a record")
		}
	case <-time.After(20 * time.Second):
		if w, err := os.OpenFile(p, os.O_WRONLY, 0); err == nil {
			w.Close()
		}
		<-done
		t.Fatal("LoadRecord blocked on a FIFO")
	}
}
