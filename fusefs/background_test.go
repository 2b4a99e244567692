package fusefs

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/narindex"
)

// walkTree is 48 small files, then a large one at the end of the NAR.
func walkTree() fstest.MapFS {
	tree := fstest.MapFS{"z-big": {Data: noise(12<<20, 9), Mode: 0o444}}
	for i := range 48 {
		tree[fmt.Sprintf("f%03d", i)] = &fstest.MapFile{Data: pattern(6000+i, byte(i)), Mode: 0o444}
	}
	return tree
}

// noise is n bytes without repeats, so that no two leaves share a CID
// (pattern repeats every 256 bytes).
func noise(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// leavesOf returns the leaf CIDs of bytes [off, end) of base's NAR.
func leavesOf(t *testing.T, e *env, base string, off, end int64) []cid.Cid {
	t.Helper()
	nf, err := fetch.OpenFile(context.Background(), e.store, mustCid(t, e, base))
	if err != nil {
		t.Fatal(err)
	}
	leaves, err := nf.Leaves(context.Background(), off, end)
	if err != nil {
		t.Fatal(err)
	}
	var out []cid.Cid
	for _, l := range leaves {
		out = append(out, l.Cid)
	}
	return out
}

func readFiles(t *testing.T, root string, names ...string) {
	t.Helper()
	tree := walkTree()
	for _, n := range names {
		got, err := os.ReadFile(filepath.Join(root, n))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, tree[n].Data) {
			t.Fatalf("%s: wrong bytes", n)
		}
	}
}

// waitForWalk is waitFor, saying on a timeout where the walk of base
// stood.
func waitForWalk(t *testing.T, e *env, base, what string, cond func() bool) {
	t.Helper()
	waitForOr(t, what, cond, func() string {
		e.fsys.mu.Lock()
		sp := e.fsys.paths[base]
		e.fsys.mu.Unlock()
		state := "path not held"
		if sp != nil {
			w := &sp.walk
			w.mu.Lock()
			state = fmt.Sprintf("files in a row %d, next %d, limit %d, done %d, on %v, quarantined %v",
				w.files, w.next, w.limit.Load(), w.done.Load(), w.on.Load(), sp.quarantined())
			w.mu.Unlock()
		}
		return fmt.Sprintf("walks started %d, stopped %d; reads %d, pages pushed %d; %s",
			e.fsys.Walks.Started.Load(), e.fsys.Walks.Stopped.Load(), e.fsys.Stats.Reads.Load(), e.fsys.Stats.PagePushes.Load(), state)
	})
}

func fileNames(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("f%03d", i))
	}
	return out
}

// Files read one after the other in NAR order make a walk: the rest of
// the path (here a 12 MiB file nobody read) is fetched in the background.
// A random pick of as many files is no walk and fetches nothing more.
func TestBackgroundFetchOfWalk(t *testing.T) {
	e := newEnv(t, Config{EagerVerifyBytes: -1, WalkAhead: math.MaxInt64, NoPushPages: true})
	tree := walkTree()
	nar, ls := makeNar(t, tree)
	l, _ := narindex.ParseListing(ls)
	big, _ := l.Lookup("z-big")
	// Past its first 1 MiB: the leaf where the small files end holds the
	// start of the large file.
	bigLeaves := leavesOf(t, e, e.add(t, "walk", nar, nar, ls), big.NarOffset+1<<20, big.NarOffset+big.Size)
	base := testHash + "-walk"
	root := filepath.Join(e.dir, base)

	// Backwards, in another store path of the same NAR: no walk, no
	// read-ahead.
	var names []string
	for i := 47; i >= 0; i-- {
		names = append(names, fmt.Sprintf("f%03d", i))
	}
	readFiles(t, filepath.Join(e.dir, e.add(t, "pick", nar, nar, ls)), names...)
	time.Sleep(50 * time.Millisecond)
	if n := e.fsys.Walks.Started.Load(); n != 0 {
		t.Fatalf("a random pick of files started %d walks", n)
	}
	for _, c := range bigLeaves {
		if e.mem.Contains(c) {
			t.Fatal("a random pick of files fetched the large file")
		}
	}

	// In NAR order: a walk.
	readFiles(t, root, fileNames(0, walkFiles+2)...)
	e.fsys.mu.Lock()
	sp := e.fsys.paths[base]
	e.fsys.mu.Unlock()
	waitForWalk(t, e, base, "a walk to start", func() bool { return e.fsys.Walks.Started.Load() == 1 })
	waitFor(t, "the large file fetched ahead of the reader", func() bool {
		for _, c := range bigLeaves {
			if !e.mem.Contains(c) {
				return false
			}
		}
		return true
	})
	waitFor(t, "the walk to end", func() bool { return sp.walk.done.Load() == int64(len(nar)) })
	if e.fsys.Walks.Stopped.Load() != 0 {
		t.Fatal("walk counted as stopped")
	}
	// Reading on does not start it again, and the bytes are right.
	readFiles(t, root, fileNames(walkFiles+2, 48)...)
	readFiles(t, root, "z-big")
	if n := e.fsys.Walks.Started.Load(); n != 1 {
		t.Fatalf("%d walks", n)
	}
}

// The walk tests above and below turn page pushing off: a file pushed
// before it is read costs no READ, so which files the mount sees read, and
// when a walk starts, would depend on timing. Files served by pushes count
// toward a walk at the next READ (TestWalkCountsPushedFiles).

// Files served by page pushes, read without a READ, count toward a walk:
// the READ after them finds every file between served and takes the run
// as unbroken.
func TestWalkCountsPushedFiles(t *testing.T) {
	e := newEnv(t, Config{EagerVerifyBytes: -1, WalkAhead: math.MaxInt64})
	tree := walkTree()
	nar, ls := makeNar(t, tree)
	base := e.add(t, "walk", nar, nar, ls)
	root := filepath.Join(e.dir, base)
	if _, err := os.ReadDir(root); err != nil { // the kernel learns every file
		t.Fatal(err)
	}
	for _, name := range fileNames(0, 48) {
		reads := e.fsys.Stats.Reads.Load()
		readAll(t, root, tree, []string{name})
		if e.fsys.Stats.Reads.Load() != reads {
			e.waitPushes(t) // what the READ brought is pushed before the next file
		}
	}
	if reads := e.fsys.Stats.Reads.Load(); reads > 8 {
		t.Fatalf("%d READs for 48 small files in 2 leaves: the files were not pushed, nothing tested", reads)
	}
	// Fewer READs than a walk needs files: the files served by pushes
	// counted, at the READ after them (the large file's at the latest).
	readAll(t, root, tree, []string{"z-big"})
	waitForWalk(t, e, base, "a walk through files served by pushes", func() bool { return e.fsys.Walks.Started.Load() == 1 })
}

// A walk stops when its store path is quarantined and when the mount
// closes, and waits while readers wait for blocks.
func TestBackgroundFetchStopsAndYields(t *testing.T) {
	var demand atomic.Int64
	// One read-ahead worker: at most one of its fetches can be under way
	// when the path is quarantined (queued ones are dropped then), so the
	// count below tells the walk's fetches from read-ahead's. With eight,
	// eight slow read-ahead fetches could finish after the walk stopped.
	e := newEnv(t, Config{EagerVerifyBytes: -1, WalkAhead: math.MaxInt64, Demand: demand.Load, ReadaheadWorkers: 1, NoPushPages: true})
	tree := walkTree()
	nar, ls := makeNar(t, tree)
	base := e.add(t, "walk", nar, nar, ls)
	root := filepath.Join(e.dir, base)

	// Slow blocks, so that the walk is still running when it is stopped.
	var slow atomic.Bool
	e.store.SetDelay(func(cid.Cid) {
		if slow.Load() {
			time.Sleep(20 * time.Millisecond)
		}
	})
	slow.Store(true)
	demand.Store(1) // a reader waits: the walk holds back
	readFiles(t, root, fileNames(0, walkFiles+2)...)
	waitForWalk(t, e, base, "a walk to start", func() bool { return e.fsys.Walks.Started.Load() == 1 })
	waitFor(t, "the walk to yield", func() bool { return e.fsys.Walks.Yields.Load() >= 3 })
	demand.Store(0)
	e.fsys.mu.Lock()
	sp := e.fsys.paths[base]
	e.fsys.mu.Unlock()
	waitFor(t, "the walk to fetch", func() bool { return e.fsys.Walks.Bytes.Load() > 0 || e.store.Gets.Load() > 0 })

	sp.chk.Quarantine()
	waitFor(t, "the walk to stop on quarantine", func() bool { return e.fsys.Walks.Stopped.Load() == 1 && !sp.walk.on.Load() })
	gets := e.store.Gets.Load()
	time.Sleep(100 * time.Millisecond)
	if n := e.store.Gets.Load() - gets; n > 1 {
		t.Fatalf("%d blocks fetched after the walk stopped", n)
	}
	if sp.walk.done.Load() != 0 {
		t.Fatal("a stopped walk counted as done")
	}

	// A second path, walked, then the mount closes under it.
	base2 := e.add(t, "walk2", nar, nar, ls)
	readFiles(t, filepath.Join(e.dir, base2), fileNames(0, walkFiles+2)...)
	waitForWalk(t, e, base2, "a second walk", func() bool { return e.fsys.Walks.Started.Load() == 2 })
	start := time.Now()
	e.fsys.prefetch.Close() // as FS.Close does, first
	e.fsys.bgCancel()
	e.fsys.bg.Wait()
	if e.fsys.Walks.Stopped.Load() != 2 {
		t.Fatalf("walk not stopped by close (stopped %d)", e.fsys.Walks.Stopped.Load())
	}
	t.Logf("walk stopped %v after close", time.Since(start))
}

// narBytes serves byte ranges of one NAR, as a gateway does, counting the
// requests; flip, when set, is a NAR offset whose byte it sends wrong.
type narBytes struct {
	nar      []byte
	requests atomic.Int64
	flip     atomic.Int64 // 0: none
}

func (s *narBytes) GetBytes(ctx context.Context, root cid.Cid, from, to int64) (io.ReadCloser, error) {
	s.requests.Add(1)
	b := bytes.Clone(s.nar[from:to])
	if at := s.flip.Load(); at > from && at < to {
		b[at-from] ^= 1
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

// A walk streams the rest of the path in one request; a stream whose bytes
// do not match stops the walk, and readers still get the right bytes.
func TestBackgroundFetchStreams(t *testing.T) {
	for _, tampered := range []bool{false, true} {
		t.Run(fmt.Sprintf("tampered=%v", tampered), func(t *testing.T) {
			src := &narBytes{}
			batch := &fetch.Batch{Stream: func(ctx context.Context, f *fetch.File, from, to int64, resolved func([]fetch.LeafRange), put func(fetch.LeafRange, blocks.Block) error) (int64, error) {
				return f.Stream(ctx, src, from, to, resolved, put)
			}}
			// A small read-ahead window: the walk, not read-ahead, fetches the large file.
			e := newEnv(t, Config{EagerVerifyBytes: -1, WalkAhead: math.MaxInt64, Batch: batch, Readahead: 256 << 10, NoPushPages: true})
			batch.Held, batch.Expect, batch.Put = e.mem.Held, e.mem.Expect, e.mem.Put
			tree := walkTree()
			nar, ls := makeNar(t, tree)
			src.nar = nar
			l, _ := narindex.ParseListing(ls)
			big, _ := l.Lookup("z-big")
			if tampered {
				src.flip.Store(big.NarOffset + 11<<20) // past what read-ahead fetches before the walk
			}
			base := e.add(t, "walk", nar, nar, ls)
			bigLeaves := leavesOf(t, e, base, big.NarOffset+1<<20, big.NarOffset+big.Size)
			root := filepath.Join(e.dir, base)
			readFiles(t, root, fileNames(0, walkFiles+2)...)
			waitForWalk(t, e, base, "a walk to start", func() bool { return e.fsys.Walks.Started.Load() == 1 })
			e.fsys.mu.Lock()
			sp := e.fsys.paths[base]
			e.fsys.mu.Unlock()
			waitFor(t, "the walk to end", func() bool { return !sp.walk.on.Load() })
			if tampered {
				if e.fsys.Walks.Stopped.Load() != 1 {
					t.Fatalf("a stream with a wrong byte did not stop the walk: started %d stopped %d bytes %d done %d requests %d", e.fsys.Walks.Started.Load(), e.fsys.Walks.Stopped.Load(), e.fsys.Walks.Bytes.Load(), sp.walk.done.Load(), src.requests.Load())
				}
			} else {
				if src.requests.Load() != 1 || sp.walk.done.Load() != int64(len(nar)) {
					t.Fatalf("%d requests, walk done to %d of %d", src.requests.Load(), sp.walk.done.Load(), len(nar))
				}
				for _, c := range bigLeaves {
					if !e.mem.Contains(c) {
						t.Fatal("the large file was not streamed ahead of the reader")
					}
				}
			}
			readFiles(t, root, append(fileNames(walkFiles+2, 48), "z-big")...)
		})
	}
}

// A walk through one directory fetches the rest of that directory only;
// a walk that goes on past its end fetches the rest of the path.
func TestBackgroundFetchStaysInDirectory(t *testing.T) {
	e := newEnv(t, Config{EagerVerifyBytes: -1, WalkAhead: math.MaxInt64, Readahead: 256 << 10, NoPushPages: true})
	tree := fstest.MapFS{"b/z-big": {Data: noise(12<<20, 7), Mode: 0o444}, "c/more": {Data: pattern(100, 8), Mode: 0o444}}
	for i := range 48 {
		tree[fmt.Sprintf("a/f%03d", i)] = &fstest.MapFile{Data: pattern(6000+i, byte(i)), Mode: 0o444}
	}
	nar, ls := makeNar(t, tree)
	base := e.add(t, "dirs", nar, nar, ls)
	l, _ := narindex.ParseListing(ls)
	big, _ := l.Lookup("b/z-big")
	bigLeaves := leavesOf(t, e, base, big.NarOffset+1<<20, big.NarOffset+big.Size)
	root := filepath.Join(e.dir, base)
	for i := range 48 {
		name := fmt.Sprintf("a/f%03d", i)
		got, err := os.ReadFile(filepath.Join(root, name))
		if err != nil || !bytes.Equal(got, tree[name].Data) {
			t.Fatalf("%s: %v", name, err)
		}
	}
	waitFor(t, "a walk", func() bool { return e.fsys.Walks.Started.Load() == 1 })
	e.fsys.mu.Lock()
	sp := e.fsys.paths[base]
	e.fsys.mu.Unlock()
	waitFor(t, "the walk of a/ to end", func() bool { return !sp.walk.on.Load() })
	for _, c := range bigLeaves {
		if e.mem.Contains(c) {
			t.Fatalf("a walk through a/ fetched b/z-big: limit %d done %d, big at %d; walk bytes %d, read-ahead blocks %d, reads %d, pushes %d", sp.walk.limit.Load(), sp.walk.done.Load(), big.NarOffset, e.fsys.Walks.Bytes.Load(), e.fsys.PrefetchStats().Blocks.Load(), e.fsys.Stats.Reads.Load(), e.fsys.Stats.PagePushes.Load())
		}
	}
	// Reading on into b/: the rest of the path.
	f, err := os.Open(filepath.Join(root, "b/z-big"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	if _, err := io.ReadFull(f, buf); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rest of the path fetched", func() bool {
		for _, c := range bigLeaves {
			if !e.mem.Contains(c) {
				return false
			}
		}
		return true
	})
}

// Read-ahead across files (files read one after the other in NAR order)
// stops at the end of the run of files the reader is in: a subdirectory
// that follows (another package, to a compiler) is not fetched, while a
// file of the same run is.
func TestReadaheadAcrossFilesStopsAtSubdirectory(t *testing.T) {
	for _, bigName := range []string{"a/sub/z-big", "a/z-big"} {
		t.Run(bigName, func(t *testing.T) {
			// No walker and no pushed pages: read-ahead across files
			// alone, at most 1 MiB ahead.
			e := newEnv(t, Config{EagerVerifyBytes: -1, WalkAhead: -1, NoPushPages: true, Readahead: 1 << 20})
			tree := fstest.MapFS{bigName: {Data: noise(4<<20, 3), Mode: 0o444}}
			for i := range 12 {
				tree[fmt.Sprintf("a/f%03d", i)] = &fstest.MapFile{Data: noise(300<<10, uint64(10+i)), Mode: 0o444}
			}
			nar, ls := makeNar(t, tree)
			base := e.add(t, "run", nar, nar, ls)
			l, _ := narindex.ParseListing(ls)
			big, _ := l.Lookup(bigName)
			// Leaves of the large file alone (past the one it shares
			// with the last small file, which the reader reads).
			bigLeaves := leavesOf(t, e, base, big.NarOffset+256<<10, big.NarOffset+big.Size)
			root := filepath.Join(e.dir, base)
			for i := range 12 {
				name := fmt.Sprintf("a/f%03d", i)
				got, err := os.ReadFile(filepath.Join(root, name))
				if err != nil || !bytes.Equal(got, tree[name].Data) {
					t.Fatalf("%s: %v", name, err)
				}
			}
			held := func() int {
				n := 0
				for _, c := range bigLeaves {
					if e.mem.Contains(c) {
						n++
					}
				}
				return n
			}
			if bigName == "a/z-big" {
				waitFor(t, "the next file of the run fetched ahead", func() bool { return held() > 0 })
				return
			}
			time.Sleep(300 * time.Millisecond) // read-ahead is asynchronous
			if n := held(); n != 0 {
				t.Fatalf("read-ahead across the files of a/ fetched %d of %d leaves of a/sub/", n, len(bigLeaves))
			}
		})
	}
}
