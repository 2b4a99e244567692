package cache_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/cache"
	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
	"github.com/ipnix/ipnix/internal/hangfs"
)

// blockFiles lists the block files under dir with their total size.
func blockFiles(t *testing.T, dir string) ([]string, int64) {
	t.Helper()
	var files []string
	var total int64
	filepath.WalkDir(filepath.Join(dir, "blocks"), func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			fi, _ := e.Info()
			files = append(files, p)
			total += fi.Size()
		}
		return nil
	})
	return files, total
}

func TestDiskQuotaUnderLoad(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	cids := putBlocks(t, st, 60, 1000)
	dir := t.TempDir()
	d, err := cache.OpenDisk(dir, 20_000, fetch.Verify(st, nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cids { // 3x the quota
		if _, err := d.GetBlock(ctx, c); err != nil {
			t.Fatal(err)
		}
		if d.Bytes() > 20_000 {
			t.Fatalf("index says %d bytes, quota 20000", d.Bytes())
		}
		if _, total := blockFiles(t, dir); total > 20_000 {
			t.Fatalf("%d bytes of block files on disk, quota 20000", total)
		}
	}
	if d.Stats.Evictions.Load() == 0 || d.Len() != 20 {
		t.Fatalf("evictions %d, len %d", d.Stats.Evictions.Load(), d.Len())
	}
}

func TestDiskSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	cids := putBlocks(t, st, 10, 1000)
	dir := t.TempDir()
	d, err := cache.OpenDisk(dir, 1<<20, st)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cids {
		if _, err := d.GetBlock(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	d.Close()
	gets := st.Gets.Load()
	d2, err := cache.OpenDisk(dir, 1<<20, st)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range cids {
		b, err := d2.GetBlock(ctx, c)
		if err != nil || b.RawData()[0] != byte(i) {
			t.Fatalf("block %d after restart: %v", i, err)
		}
	}
	if st.Gets.Load() != gets || d2.Stats.Hits.Load() != int64(len(cids)) {
		t.Fatalf("after restart: %d fetches, %d hits", st.Gets.Load()-gets, d2.Stats.Hits.Load())
	}
	// A smaller quota on reopen trims, oldest first.
	d3, err := cache.OpenDisk(dir, 3000, st)
	if err != nil {
		t.Fatal(err)
	}
	if d3.Len() != 3 {
		t.Fatalf("reopened with a 3-block quota: %d blocks", d3.Len())
	}
}

func TestDiskDetectsCorruptAndTornFiles(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	cids := putBlocks(t, st, 2, 1000)
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
	files, _ := blockFiles(t, dir)
	if len(files) != 2 {
		t.Fatalf("%d files", len(files))
	}
	// One flipped byte, one truncated file.
	data, _ := os.ReadFile(files[0])
	data[10] ^= 0xff
	os.WriteFile(files[0], data, 0o600)
	os.Truncate(files[1], 300)
	gets := st.Gets.Load()
	for i, c := range cids {
		b, err := d.GetBlock(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		if err := fetch.CheckBlock(c, b.RawData()); err != nil || b.RawData()[0] != byte(i) {
			t.Fatalf("block %d: wrong bytes served after corruption", i)
		}
	}
	if d.Stats.Corrupt.Load() != 2 || st.Gets.Load()-gets != 2 {
		t.Fatalf("corrupt=%d refetched=%d, want 2 and 2", d.Stats.Corrupt.Load(), st.Gets.Load()-gets)
	}
	// Rewritten intact.
	for _, c := range cids {
		if _, err := d.GetBlock(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if d.Stats.Corrupt.Load() != 2 {
		t.Fatal("refetched blocks were not rewritten intact")
	}
}

func TestDiskOpenCleansAndChecksVersion(t *testing.T) {
	st := fetchtest.NewStore()
	dir := t.TempDir()
	if _, err := cache.OpenDisk(dir, 1<<20, st); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "blocks", "ab", ".tmp-123")
	os.MkdirAll(filepath.Dir(tmp), 0o700)
	os.WriteFile(tmp, []byte("half a block"), 0o600)
	if _, err := cache.OpenDisk(dir, 1<<20, st); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Fatal("leftover temp file not removed at open")
	}
	os.WriteFile(filepath.Join(dir, "VERSION"), []byte("something-else-9\n"), 0o600)
	if _, err := cache.OpenDisk(dir, 1<<20, st); err == nil || !strings.Contains(err.Error(), "something-else-9") {
		t.Fatalf("foreign format: %v", err)
	}
}

func TestDiskSharesCidVersionsAndRemoves(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	data := []byte("one block, two names")
	v1, _ := cid.V1Builder{Codec: cid.Raw, MhType: 0x12}.Sum(data)
	b, _ := blocks.NewBlockWithCid(data, v1)
	st.Put(b)
	dir := t.TempDir()
	d, err := cache.OpenDisk(dir, 1<<20, st)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.GetBlock(ctx, v1); err != nil {
		t.Fatal(err)
	}
	pb := cid.NewCidV1(cid.DagProtobuf, v1.Hash())
	if got, err := d.GetBlock(ctx, pb); err != nil || !got.Cid().Equals(pb) {
		t.Fatalf("other name: %v", err)
	}
	if d.Stats.Hits.Load() != 1 {
		t.Fatal("second name of one multihash was not a hit")
	}
	d.Remove(v1)
	if files, _ := blockFiles(t, dir); len(files) != 0 || d.Bytes() != 0 {
		t.Fatalf("Remove left %d files, %d bytes", len(files), d.Bytes())
	}
	// Bigger than the quota: served, not stored.
	small, _ := cache.OpenDisk(t.TempDir(), 5, st)
	if _, err := small.GetBlock(ctx, v1); err != nil || small.Len() != 0 {
		t.Fatalf("over-quota block: %v, %d stored", err, small.Len())
	}
}

// One suite for what every cache promises.
func TestCacheSuite(t *testing.T) {
	impls := map[string]func(t *testing.T, src fetch.BlockGetter, max int64) interface {
		fetch.BlockGetter
		Bytes() int64
	}{
		"memory": func(t *testing.T, src fetch.BlockGetter, max int64) interface {
			fetch.BlockGetter
			Bytes() int64
		} {
			return cache.NewMemory(src, max)
		},
		"disk": func(t *testing.T, src fetch.BlockGetter, max int64) interface {
			fetch.BlockGetter
			Bytes() int64
		} {
			d, err := cache.OpenDisk(t.TempDir(), max, src)
			if err != nil {
				t.Fatal(err)
			}
			return d
		},
	}
	for name, open := range impls {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			st := fetchtest.NewStore()
			cids := putBlocks(t, st, 30, 1000)
			c := open(t, st, 10_000)
			// Bounded.
			for _, id := range cids {
				if _, err := c.GetBlock(ctx, id); err != nil {
					t.Fatal(err)
				}
				if c.Bytes() > 10_000 {
					t.Fatalf("%d bytes held, bound 10000", c.Bytes())
				}
			}
			// Errors are not cached.
			missing, _ := cid.V1Builder{Codec: cid.Raw, MhType: 0x12}.Sum([]byte("nowhere"))
			for range 2 {
				if _, err := c.GetBlock(ctx, missing); err == nil {
					t.Fatal("missing block served")
				}
			}
			// Concurrent misses merge into one fetch.
			fresh := putBlocks(t, st, 31, 1000)[30]
			release := make(chan struct{})
			st.SetDelay(func(cid.Cid) { <-release })
			before := st.Gets.Load()
			var wg sync.WaitGroup
			for range 16 {
				wg.Go(func() {
					if _, err := c.GetBlock(ctx, fresh); err != nil {
						t.Error(err)
					}
				})
			}
			time.Sleep(50 * time.Millisecond)
			close(release)
			wg.Wait()
			st.SetDelay(nil)
			if n := st.Gets.Load() - before; n != 1 {
				t.Fatalf("16 concurrent readers caused %d fetches", n)
			}
		})
	}
}

func BenchmarkDiskHit(b *testing.B) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	data := make([]byte, 256<<10)
	c, _ := cid.V1Builder{Codec: cid.Raw, MhType: 0x12}.Sum(data)
	bl, _ := blocks.NewBlockWithCid(data, c)
	st.Put(bl)
	d, err := cache.OpenDisk(b.TempDir(), 1<<30, st)
	if err != nil {
		b.Fatal(err)
	}
	d.GetBlock(ctx, c)
	b.SetBytes(256 << 10)
	b.ResetTimer()
	for range b.N {
		if _, err := d.GetBlock(ctx, c); err != nil {
			b.Fatal(err)
		}
	}
}

// hangingShard is a disk store holding one block of st (fetched through
// it, bound 200 ms), then the shard directory of that block replaced with
// a symlink to a file system whose reads never return; indexed says
// whether the store still lists the block.
func hangingShard(t *testing.T, indexed bool) (d *cache.Disk, st *fetchtest.Store, c cid.Cid, shard string) {
	t.Helper()
	hang := hangfs.Dir(t)
	st = fetchtest.NewStore()
	c = putBlocks(t, st, 1, 1000)[0]
	dir := t.TempDir()
	d, err := cache.OpenDisk(dir, 1<<20, fetch.Verify(st, nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	d.Timeout = 200 * time.Millisecond
	if _, err := d.GetBlock(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	files, _ := blockFiles(t, dir)
	if len(files) != 1 {
		t.Fatalf("%d block files, want 1", len(files))
	}
	if !indexed {
		d.Remove(c)
	}
	shard = filepath.Dir(files[0])
	if err := os.RemoveAll(shard); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(hang, shard); err != nil {
		t.Fatal(err)
	}
	return d, st, c, shard
}

// A block file whose read never returns (a disk that stopped answering)
// holds no read past its bound: the block is asked of the layer below,
// and the file, which may be intact, is counted and left, not deleted as
// corrupt.
func TestDiskHangingFileBounded(t *testing.T) {
	d, st, c, shard := hangingShard(t, true)
	gets := st.Gets.Load()
	done := make(chan error, 1)
	go func() {
		b, err := d.GetBlock(context.Background(), c)
		if err == nil && b.RawData()[0] != 0 {
			err = errors.New("wrong bytes")
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("past a block file that never reads: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a block file that never reads holds the read past its bound")
	}
	if got := st.Gets.Load() - gets; got != 1 {
		t.Errorf("the layer below was asked %d times, want 1", got)
	}
	if u, c := d.Stats.Unanswered.Load(), d.Stats.Corrupt.Load(); u != 1 || c != 0 {
		t.Errorf("unanswered %d, corrupt %d; want 1 and 0", u, c)
	}
	if _, err := os.Lstat(shard); err != nil {
		t.Errorf("the unanswering file was removed: %v", err)
	}
	// A caller that gives up first (an interrupted read) says nothing of
	// the disk: not counted.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := d.GetBlock(ctx, c); err == nil {
		t.Error("a block past the caller's deadline")
	}
	if u := d.Stats.Unanswered.Load(); u != 1 {
		t.Errorf("unanswered %d after a caller gave up, want still 1", u)
	}
}

// Pinning a block whose file does not answer says so, rather than that
// the block is not held (which a prefetch would take for a full disk).
func TestPinHangingFileSaysSo(t *testing.T) {
	d, _, c, _ := hangingShard(t, false)
	done := make(chan error, 1)
	go func() { done <- d.Pin(context.Background(), c) }()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, cache.ErrNotHeld) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("pinning a block whose file does not answer: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("pinning a block whose file never reads did not return")
	}
}
