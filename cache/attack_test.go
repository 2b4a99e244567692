package cache_test

// Block files that are not files: whoever can write to the cache directory
// (or a disk that fails) must not make a store hang on a FIFO, follow a
// symlink to /dev/zero and fill memory, or serve anything unverified.

import (
	"bytes"
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/cache"
	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
)

func blockFileOf(dir string, c cid.Cid) string {
	h := hex.EncodeToString(c.Hash())
	return filepath.Join(dir, "blocks", h[len(h)-2:], h)
}

// within fails the test when f does not return in time (and lets it end:
// unblock is called first).
func within(t *testing.T, what string, unblock func(), f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { f(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		unblock()
		<-done
		t.Fatalf("%s blocked", what)
	}
}

func TestAttackBlockFilesNotFiles(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	cids := putBlocks(t, st, 3, 1000)
	dir := t.TempDir()
	d, err := cache.OpenDisk(dir, 1<<20, fetch.Verify(st, nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cids {
		if _, err := d.GetBlock(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	d.Close()
	fifo, zero, outside := blockFileOf(dir, cids[0]), blockFileOf(dir, cids[1]), blockFileOf(dir, cids[2])
	os.Remove(fifo)
	if err := syscall.Mkfifo(fifo, 0o400); err != nil {
		t.Skip("mkfifo:", err)
	}
	unblock := func() {
		if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
	}
	os.Remove(zero)
	os.Symlink("/dev/zero", zero)
	// A symlink to a file outside holding the right bytes: it may be
	// read (the bytes are checked), or refused; never more than that.
	right, _ := st.GetBlock(ctx, cids[2])
	ext := filepath.Join(t.TempDir(), "ext")
	os.WriteFile(ext, right.RawData(), 0o600)
	os.Remove(outside)
	os.Symlink(ext, outside)

	// The store alone (gc, stats): errors, no hang.
	within(t, "ReadOnly on a FIFO", unblock, func() {
		if _, err := cache.ReadOnly(dir).GetBlock(ctx, cids[0]); err == nil {
			t.Error("ReadOnly served a FIFO")
		}
	})
	within(t, "ReadOnly on a symlink to /dev/zero", unblock, func() {
		if _, err := cache.ReadOnly(dir).GetBlock(ctx, cids[1]); err == nil {
			t.Error("ReadOnly served /dev/zero")
		}
	})
	// An open store: the right bytes, fetched again.
	within(t, "a store on a FIFO and /dev/zero", unblock, func() {
		d, err := cache.OpenDisk(dir, 1<<20, fetch.Verify(st, nil))
		if err != nil {
			t.Error(err)
			return
		}
		defer d.Close()
		for _, c := range cids {
			want, _ := st.GetBlock(ctx, c)
			b, err := d.GetBlock(ctx, c)
			if err != nil || !bytes.Equal(b.RawData(), want.RawData()) {
				t.Errorf("%s: %v", c, err)
			}
		}
		if err := d.Pin(context.Background(), cids[0]); err != nil {
			t.Errorf("pin after refetch: %v", err)
		}
	})
}
