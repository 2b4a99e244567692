package cache_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/cache"
	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
)

// pinned reports whether c has a block file in dir and whether it is
// marked pinned.
func pinnedFile(dir string, c cid.Cid) (there, pinned bool) {
	_, pinned, there = cache.StatBlock(dir, c)
	return there, pinned
}

func get(t *testing.T, d *cache.Disk, cs ...cid.Cid) {
	t.Helper()
	for _, c := range cs {
		if _, err := d.GetBlock(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
}

// Pinned blocks stay through any amount of traffic past the quota, and
// through Release; Remove (quarantine) still drops them.
func TestDiskPinnedBlocksAreNotEvicted(t *testing.T) {
	st := fetchtest.NewStore()
	cids := putBlocks(t, st, 20, 1000)
	dir := t.TempDir()
	d, err := cache.OpenDisk(dir, 5000, fetch.Verify(st, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Pin(context.Background(), cids[0]); !errors.Is(err, cache.ErrNotHeld) {
		t.Fatalf("pinning a block not held: %v, want ErrNotHeld", err)
	}
	get(t, d, cids[:3]...)
	for _, c := range cids[:3] {
		if err := d.Pin(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	get(t, d, cids[3:]...) // 17 more blocks through a 5-block quota
	for i, c := range cids[:3] {
		if there, pinned := pinnedFile(dir, c); !there || !pinned {
			t.Fatalf("pinned block %d: file there %v, marked %v", i, there, pinned)
		}
	}
	if n, b := d.Pinned(); n != 3 || b != 3000 {
		t.Fatalf("Pinned() = %d, %d; want 3, 3000", n, b)
	}
	if d.Bytes() > 5000 || d.Len() != 5 {
		t.Fatalf("%d bytes in %d blocks, quota 5000", d.Bytes(), d.Len())
	}
	d.Release(cids[0])
	if there, _ := pinnedFile(dir, cids[0]); !there {
		t.Fatal("Release dropped a pinned block")
	}
	d.Release(cids[19])
	if there, _ := pinnedFile(dir, cids[19]); there {
		t.Fatal("Release left an unpinned block")
	}
	d.Remove(cids[1])
	if there, _ := pinnedFile(dir, cids[1]); there {
		t.Fatal("Remove left a pinned block")
	}
	// A restart keeps the pins.
	d.Close()
	d2, err := cache.OpenDisk(dir, 1000, fetch.Verify(st, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if n, _ := d2.Pinned(); n != 2 || !d2.IsPinned(cids[0]) || !d2.IsPinned(cids[2]) {
		t.Fatalf("after a restart with a smaller quota: %d pinned", n)
	}
	if d2.Bytes() != 2000 {
		t.Fatalf("after a restart over quota: %d bytes, want the 2000 pinned only", d2.Bytes())
	}
}

// Two stores on one directory, as a running mount and a prefetch: the
// mount does not evict or release a block the prefetch pinned after the
// mount indexed it, does not overwrite (unpin) one the prefetch wrote,
// and reads blocks the prefetch wrote without fetching them.
func TestDiskPinsAcrossStores(t *testing.T) {
	st := fetchtest.NewStore()
	cids := putBlocks(t, st, 12, 1000)
	dir := t.TempDir()
	mountSide, err := cache.OpenDisk(dir, 4000, fetch.Verify(st, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer mountSide.Close()
	get(t, mountSide, cids[0], cids[1])
	// Opened before the prefetch wrote anything, and never reading.
	idle, err := cache.OpenDisk(dir, 4000, fetch.Verify(st, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	prefetchSide, err := cache.OpenDisk(dir, 4000, fetch.Verify(st, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer prefetchSide.Close()
	// The prefetch pins what the mount indexed as unpinned, and brings a
	// block the mount has never seen.
	get(t, prefetchSide, cids[2])
	for _, c := range cids[:3] {
		if err := prefetchSide.Pin(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	mountSide.Release(cids[0])
	gets := st.Gets.Load()
	get(t, mountSide, cids[2])
	if st.Gets.Load() != gets {
		t.Fatal("the mount fetched a block the prefetch had stored")
	}
	if mountSide.Stats.Adopted.Load() != 1 {
		t.Fatalf("adopted %d, want 1", mountSide.Stats.Adopted.Load())
	}
	get(t, mountSide, cids[3:]...) // push the mount far past its quota
	for i, c := range cids[:3] {
		if there, pinned := pinnedFile(dir, c); !there || !pinned {
			t.Fatalf("block %d pinned by the other store: there %v, pinned %v", i, there, pinned)
		}
	}
	if mountSide.Stats.Evictions.Load() == 0 {
		t.Fatal("no evictions: the test pushed nothing out")
	}
	// A block pinned elsewhere and put again by a store that never saw
	// it (a ranged fetch that did not know it was on disk) stays pinned.
	b, _ := st.GetBlock(context.Background(), cids[2])
	idle.Put(b)
	if _, pinned := pinnedFile(dir, cids[2]); !pinned {
		t.Fatal("Put over a pinned block unpinned it")
	}
	if !idle.IsPinned(cids[2]) {
		t.Fatal("the store that put a block pinned elsewhere does not index it as pinned")
	}
}

// setMtime backdates a block's file.
func setMtime(t *testing.T, dir string, c cid.Cid, when time.Time) {
	t.Helper()
	var p string
	filepath.WalkDir(filepath.Join(dir, "blocks"), func(path string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() && filepath.Base(path) == hexKey(c) {
			p = path
		}
		return nil
	})
	if p == "" {
		t.Fatalf("no file for %s", c)
	}
	if err := os.Chtimes(p, when, when); err != nil {
		t.Fatal(err)
	}
}

func hexKey(c cid.Cid) string {
	const digits = "0123456789abcdef"
	k := cache.Key(c)
	out := make([]byte, 0, 2*len(k))
	for i := range len(k) {
		out = append(out, digits[k[i]>>4], digits[k[i]&15])
	}
	return string(out)
}

// GC keeps what is needed (pinning it) and what was used recently
// (unpinning it when no longer needed), drops the rest, and refuses to
// run while a store is open on the directory.
func TestGC(t *testing.T) {
	st := fetchtest.NewStore()
	cids := putBlocks(t, st, 6, 1000)
	dir := t.TempDir()
	d, err := cache.OpenDisk(dir, 1<<20, fetch.Verify(st, nil))
	if err != nil {
		t.Fatal(err)
	}
	get(t, d, cids...)
	// 0, 1: needed (1 not pinned yet). 2: pinned, no longer needed, old.
	// 3: pinned, no longer needed, recent. 4: recent. 5: old.
	for _, i := range []int{0, 2, 3} {
		if err := d.Pin(context.Background(), cids[i]); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-48 * time.Hour)
	for _, i := range []int{0, 1, 2, 5} {
		setMtime(t, dir, cids[i], old)
	}
	needed := func(bg fetch.BlockGetter) (map[string]bool, error) {
		// The reader reads the store's blocks, checked.
		if _, err := bg.GetBlock(context.Background(), cids[0]); err != nil {
			return nil, err
		}
		return map[string]bool{cache.Key(cids[0]): true, cache.Key(cids[1]): true}, nil
	}
	cutoff := time.Now().Add(-time.Hour)
	if _, err := cache.GC(dir, needed, cutoff); !errors.Is(err, cache.ErrInUse) {
		t.Fatalf("GC with a store open: %v, want ErrInUse", err)
	}
	if !cache.InUse(dir) {
		t.Fatal("InUse is false with a store open")
	}
	d.Close()
	if cache.InUse(dir) {
		t.Fatal("InUse is true after Close")
	}
	os.WriteFile(filepath.Join(dir, "blocks", ".tmp-left"), []byte("x"), 0o600)
	r, err := cache.GC(dir, needed, cutoff)
	if err != nil {
		t.Fatal(err)
	}
	want := cache.GCResult{Removed: 2, RemovedBytes: 2000, Kept: 4, KeptBytes: 4000, Needed: 2, NeededBytes: 2000,
		Recent: 2, RecentBytes: 2000, Unpinned: 2, Repinned: 1, Temp: 1}
	if r != want {
		t.Fatalf("GC:\n got %+v\nwant %+v", r, want)
	}
	for i, w := range []struct{ there, pinned bool }{{true, true}, {true, true}, {false, false}, {true, false}, {true, false}, {false, false}} {
		if there, pinned := pinnedFile(dir, cids[i]); there != w.there || pinned != w.pinned {
			t.Errorf("block %d after GC: there %v pinned %v, want %v %v", i, there, pinned, w.there, w.pinned)
		}
	}
	u, err := cache.Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	if u.Blocks != 4 || u.Bytes != 4000 || u.Pinned != 2 || u.PinnedBytes != 2000 || u.Quota != 1<<20 || u.Temp != 0 {
		t.Fatalf("Scan after GC: %+v", u)
	}
	// A failing needed aborts before anything is touched.
	boom := errors.New("boom")
	if _, err := cache.GC(dir, func(fetch.BlockGetter) (map[string]bool, error) { return nil, boom }, time.Now()); !errors.Is(err, boom) {
		t.Fatalf("GC with failing needed: %v", err)
	}
	if u2, _ := cache.Scan(dir); u2 != u {
		t.Fatalf("a failed GC changed the store: %+v, was %+v", u2, u)
	}
	// Not a store.
	if _, err := cache.GC(t.TempDir(), needed, cutoff); err == nil {
		t.Fatal("GC of a directory without a store succeeded")
	}
}

// The read-only reader checks what it reads and says what is missing.
func TestReadOnly(t *testing.T) {
	st := fetchtest.NewStore()
	cids := putBlocks(t, st, 2, 1000)
	dir := t.TempDir()
	d, err := cache.OpenDisk(dir, 1<<20, fetch.Verify(st, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	get(t, d, cids[0])
	bg := cache.ReadOnly(dir)
	if _, err := bg.GetBlock(context.Background(), cids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := bg.GetBlock(context.Background(), cids[1]); !errors.Is(err, fetch.ErrBlockNotFound) {
		t.Fatalf("missing block: %v", err)
	}
	setMtime(t, dir, cids[0], time.Now()) // find the file
	var p string
	filepath.WalkDir(filepath.Join(dir, "blocks"), func(path string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			p = path
		}
		return nil
	})
	os.WriteFile(p, []byte("not the block"), 0o600)
	if _, err := bg.GetBlock(context.Background(), cids[0]); !errors.Is(err, fetch.ErrHashMismatch) {
		t.Fatalf("damaged block: %v", err)
	}
}
