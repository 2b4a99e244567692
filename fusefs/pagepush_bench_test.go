package fusefs

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"testing/fstest"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/cache"
	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
	"github.com/ipnix/ipnix/internal/testmounts"
	"github.com/ipnix/ipnix/narindex"
)

// manySmallFiles is a tree like a package's share/: dirs directories of
// files, most under 4 KiB, some up to 128 KiB.
func manySmallFiles(dirs, perDir int) fstest.MapFS {
	t := fstest.MapFS{}
	for d := range dirs {
		for f := range perDir {
			i := d*perDir + f
			size := 100 + (i*7919)%4000
			switch {
			case i%20 == 0:
				size = 32<<10 + (i*104729)%(96<<10)
			case i%4 == 0:
				size = 4<<10 + (i*7919)%(28<<10)
			}
			t[fmt.Sprintf("d%02d/f%04d", d, f)] = &fstest.MapFile{Data: pattern(size, byte(i)), Mode: 0o444}
		}
	}
	return t
}

// BenchmarkFindCat times `find DIR -type f -exec cat {} + >/dev/null` over a
// fresh mount (cold: new memory cache, new kernel caches) of 3,000 small
// files, with page pushing and without, alternating, and reports the
// median of each and the READs that reached the filesystem. Blocks come
// from memory, after IPNIX_BENCH_BLOCK_DELAY (a duration, e.g. 500us: a
// local kubo's round trip) per block. Run with -benchtime=3x.
func BenchmarkFindCat(b *testing.B) {
	requireFuse(b)
	tree := manySmallFiles(30, 100)
	var buf bytes.Buffer
	if err := narindex.DumpFS(&buf, tree, "."); err != nil {
		b.Fatal(err)
	}
	nar := buf.Bytes()
	var delay time.Duration
	if d := os.Getenv("IPNIX_BENCH_BLOCK_DELAY"); d != "" {
		var err error
		if delay, err = time.ParseDuration(d); err != nil {
			b.Fatal(err)
		}
	}
	var times [2][]time.Duration
	var reads, pushes [2][]int64
	b.ResetTimer()
	for range b.N {
		for i, noPush := range []bool{false, true} {
			dt, r, p := findCatOnce(b, nar, delay, noPush)
			times[i] = append(times[i], dt)
			reads[i] = append(reads[i], r)
			pushes[i] = append(pushes[i], p)
		}
	}
	b.StopTimer()
	for i, name := range []string{"push", "nopush"} {
		slices.Sort(times[i])
		slices.Sort(reads[i])
		slices.Sort(pushes[i])
		mid := len(times[i]) / 2
		b.ReportMetric(float64(times[i][mid].Milliseconds()), "ms-"+name)
		b.ReportMetric(float64(times[i][0].Milliseconds()), "ms-min-"+name)
		b.ReportMetric(float64(times[i][len(times[i])-1].Milliseconds()), "ms-max-"+name)
		b.ReportMetric(float64(reads[i][mid]), "reads-"+name)
		b.ReportMetric(float64(pushes[i][mid]), "pushes-"+name)
	}
	b.Logf("%d files, NAR %d bytes, block delay %v", len(tree), len(nar), delay)
}

func findCatOnce(b *testing.B, nar []byte, delay time.Duration, noPush bool) (time.Duration, int64, int64) {
	store := fetchtest.NewStore()
	c, err := store.AddFile(nar, fetchtest.DefaultOptions)
	if err != nil {
		b.Fatal(err)
	}
	sum := sha256.Sum256(nar)
	base := testHash + "-many"
	res := &fakeResolver{paths: map[string]*narindex.Resolved{base: {
		Info: &narindex.NarInfo{StorePath: narindex.StoreDir + "/" + base, URL: "nar/x.nar",
			NarHash: narindex.SHA256(sum[:]), NarSize: uint64(len(nar)), IpfsCid: c.String()},
		From: "memory", CidSigned: true, // the listing from the NAR's headers
	}}}
	mem := cache.NewMemory(fetch.Verify(store, &fetch.Stats{}), 256<<20)
	fsys, err := New(Config{Resolver: res, Blocks: mem, Evict: mem.Remove, NoPushPages: noPush, EagerVerifyBytes: -1})
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	srv, err := Mount(dir, fsys, MountOptions{})
	if err != nil {
		b.Fatal(err)
	}
	untrack := testmounts.Track(dir)
	defer func() {
		if err := srv.Unmount(); err != nil {
			_ = Detach(dir)
		}
		untrack()
		fsys.Close()
	}()
	root := filepath.Join(dir, base)
	if _, err := os.Lstat(root); err != nil {
		b.Fatal(err)
	}
	if delay > 0 {
		store.SetDelay(func(cid.Cid) { time.Sleep(delay) })
	}
	start := time.Now()
	cmd := exec.Command("sh", "-c", "find "+strconv.Quote(root)+" -type f -exec cat {} + >/dev/null")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("find: %v: %s", err, out)
	}
	return time.Since(start), fsys.Stats.Reads.Load(), fsys.Stats.PagePushes.Load()
}
