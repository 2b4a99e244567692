package fusefs

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/cache"
	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
	"github.com/ipnix/ipnix/integrity"
	"github.com/ipnix/ipnix/narindex"
)

// regularNames lists the regular files of tree in NAR order.
func regularNames(tree fstest.MapFS) []string {
	var names []string
	for name, f := range tree {
		if f.Mode.IsRegular() {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// filesDirEntries lists what the copies directory holds.
func filesDirEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// The copies of a verified path are written as its NAR is hashed: the
// read that completes the verification returns with them in place (no
// waiting), the next open hands the kernel the copy, and the blocks they
// hold are offered for dropping from a disk store. Read in NAR order or
// against it (the checker then hashes kept leaves, in order, at the end).
func TestCopiesUsableOnVerification(t *testing.T) {
	for _, order := range []string{"nar", "reverse"} {
		t.Run(order, func(t *testing.T) {
			filesDir := filepath.Join(t.TempDir(), "files")
			e := newEnv(t, Config{FilesDir: filesDir, FilesQuota: 1 << 30, Readahead: -1})
			var mu sync.Mutex
			var dropped []cid.Cid
			e.fsys.SetCopiedBlocks(func(c cid.Cid) {
				mu.Lock()
				defer mu.Unlock()
				dropped = append(dropped, c)
			})
			tree := testTree()
			nar, ls := makeNar(t, tree)
			base := e.add(t, "pkg", nar, nar, ls)
			names := regularNames(tree)
			if order == "reverse" {
				slices.Reverse(names)
			}
			for _, name := range names {
				got, err := os.ReadFile(filepath.Join(e.dir, base, name))
				if err != nil || !bytes.Equal(got, tree[name].Data) {
					t.Fatalf("read %s: %v", name, err)
				}
			}
			// No waiting: the copies are there when the last read returns.
			st := &e.fsys.Stats
			if st.Verified.Load() != 1 || st.LocalCopies.Load() != 1 || e.fsys.files.streamed.Load() != 1 {
				t.Fatalf("after the verifying read: verified %d, local copies %d (written from the stream %d), want 1 each",
					st.Verified.Load(), st.LocalCopies.Load(), e.fsys.files.streamed.Load())
			}
			nh := narindex.EncodeNix32(sha256Sum(nar))
			if got := filesDirEntries(t, filesDir); !slices.Equal(got, []string{nh}) {
				t.Fatalf("copies directory holds %v, want only %s", got, nh)
			}
			if err := checkCopies(context.Background(), filepath.Join(filesDir, nh), &Stats{}, hashEvery); err != nil {
				t.Fatalf("the copies do not match their manifest: %v", err)
			}
			pagesDropped := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0) == nil
			for _, name := range []string{"share/big", "share/edge"} {
				got, err := os.ReadFile(filepath.Join(e.dir, base, name))
				if err != nil || !bytes.Equal(got, tree[name].Data) {
					t.Fatalf("re-read %s: %v", name, err)
				}
			}
			if e.fsys.opens.Load() {
				if n := st.Passthrough.Load(); n != 2 {
					t.Fatalf("passthrough offered %d times on the opens after verification, want 2", n)
				}
				if n := st.PassthroughFellBack.Load(); pagesDropped && n != 0 {
					t.Fatalf("%d reads reached ipnix on handles with a local copy", n)
				}
			} else {
				t.Log("no passthrough on this kernel or for this user: checked the copies only")
			}
			if !e.fsys.opens.Load() {
				return // copies are not served: their blocks stay
			}
			l, _ := narindex.ParseListing(ls)
			big, _ := l.Lookup("share/big")
			waitFor(t, "the copied blocks offered for dropping", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(dropped) >= int(big.Size/(256<<10))-1
			})
			mu.Lock()
			defer mu.Unlock()
			for _, c := range dropped {
				if c.Type() != cid.Raw {
					t.Fatalf("offered %s, not a leaf, for dropping", c)
				}
			}
		})
	}
}

// A NAR that does not match NarHash leaves no copy directory behind, not
// even a temporary one: the bytes streamed into copies are removed with
// the quarantine.
func TestCopiesMismatchLeavesNothing(t *testing.T) {
	filesDir := filepath.Join(t.TempDir(), "files")
	e := newEnv(t, Config{FilesDir: filesDir, FilesQuota: 1 << 30, Readahead: -1})
	tree := testTree()
	nar, ls := makeNar(t, tree)
	l, _ := narindex.ParseListing(ls)
	big, _ := l.Lookup("share/big")
	bad := bytes.Clone(nar)
	bad[big.NarOffset+12345] ^= 1
	base := e.add(t, "pkg", bad, nar, ls)
	root := filepath.Join(e.dir, base)
	if _, err := os.ReadFile(filepath.Join(root, "share/big")); err != nil {
		t.Fatal(err) // every block matches its CID: served until the NAR is checked
	}
	flushCopies(e.fsys)
	if got := filesDirEntries(t, filesDir); len(got) != 1 || !strings.HasPrefix(got[0], ".tmp-") {
		t.Fatalf("copies directory holds %v while the path is read, want one temporary directory", got)
	}
	readAllWantEIO(t, root, tree)
	if e.fsys.Stats.Quarantined.Load() != 1 {
		t.Fatal("not quarantined")
	}
	if got := filesDirEntries(t, filesDir); len(got) != 0 {
		t.Fatalf("copies directory holds %v after the quarantine, want nothing", got)
	}
}

// streamEnv is a filesystem with local copies, not mounted: store paths
// are loaded and read through their storePath (tier 1).
type streamEnv struct {
	fsys     *FS
	store    *fetchtest.Store
	res      *fakeResolver
	filesDir string
}

func newStreamEnv(t *testing.T) *streamEnv {
	t.Helper()
	se := &streamEnv{store: fetchtest.NewStore(), res: &fakeResolver{paths: map[string]*narindex.Resolved{}},
		filesDir: filepath.Join(t.TempDir(), "files")}
	fsys, err := New(Config{Resolver: se.res, Blocks: cache.NewMemory(fetch.Verify(se.store, nil), 64<<20),
		FilesDir: se.filesDir, FilesQuota: 1 << 30, Readahead: -1, EagerVerifyBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fsys.Close)
	se.fsys = fsys
	return se
}

// load publishes nar (with listing ls, or none) and loads it.
func (se *streamEnv) load(t *testing.T, name string, nar, ls []byte) *storePath {
	t.Helper()
	e := &env{store: se.store, res: se.res}
	base := e.add(t, name, nar, nar, ls)
	sp, err := se.fsys.storePath(context.Background(), base)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

// readAll reads the whole NAR through sp, in NAR order, and verifies it.
func readAllOf(t *testing.T, sp *storePath) {
	t.Helper()
	buf := make([]byte, sp.nar.Size())
	if _, err := sp.nar.ReadAt(context.Background(), buf, 0); err != nil {
		t.Fatal(err)
	}
	if err := sp.verify(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
}

// Without a published listing, the one built from the NAR's headers
// reads the NAR's first bytes before the copy stream is attached: what
// it passed of the first file is read back from blocks, and the copies
// are still written from the stream. When that is too much to read back,
// the copies are written from blocks once the path is verified.
func TestCopyStreamAttachedLate(t *testing.T) {
	small := fstest.MapFS{}
	for i := range 6000 {
		small[fmt.Sprintf("b/%05d", i)] = &fstest.MapFile{Data: pattern(1000, byte(i)), Mode: 0o444}
	}
	for _, tc := range []struct {
		name     string
		tree     fstest.MapFS
		streamed int64
	}{
		{"read back", fstest.MapFS{"a-big": {Data: pattern(1<<20, 3), Mode: 0o444}, "z": {Data: []byte("z"), Mode: 0o444}}, 1},
		{"from blocks", func() fstest.MapFS {
			tree := maps(small)
			tree["a-big"] = &fstest.MapFile{Data: pattern(300<<10, 4), Mode: 0o444}
			return tree
		}(), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			se := newStreamEnv(t)
			nar, _ := makeNar(t, tc.tree)
			sp := se.load(t, "late", nar, nil)
			readAllOf(t, sp)
			waitFor(t, "local copies", func() bool { return se.fsys.Stats.LocalCopies.Load() == 1 })
			if got := se.fsys.files.streamed.Load(); got != tc.streamed {
				t.Fatalf("%d directories written from the stream, want %d", got, tc.streamed)
			}
			dir := filepath.Join(se.filesDir, sp.copiesKey)
			if err := checkCopies(context.Background(), dir, &Stats{}, hashEvery); err != nil {
				t.Fatal(err)
			}
			ln, _ := sp.listing.Lookup("a-big")
			got, err := os.ReadFile(filepath.Join(dir, fmt.Sprint(ln.NarOffset)))
			if err != nil || !bytes.Equal(got, tc.tree["a-big"].Data) {
				t.Fatalf("copy of a-big: %d bytes, %v", len(got), err)
			}
		})
	}
}

// flushCopies waits until the copy streams of fsys have written what
// their checkers handed them (they write on goroutines of their own).
func flushCopies(fsys *FS) {
	fsys.files.mu.Lock()
	var ss []*copyStream
	for _, s := range fsys.files.streams {
		ss = append(ss, s)
	}
	fsys.files.mu.Unlock()
	for _, s := range ss {
		s.flush()
	}
}

func maps(m fstest.MapFS) fstest.MapFS {
	out := fstest.MapFS{}
	for k, v := range m {
		out[k] = v
	}
	return out
}

// A path whose listing is dropped before it is verified lets go of its
// copy stream: the temporary directory goes. The next load of the path
// streams again.
func TestCopyStreamReleased(t *testing.T) {
	se := newStreamEnv(t)
	tree := testTree()
	nar, ls := makeNar(t, tree)
	sp := se.load(t, "pkg", nar, ls)
	buf := make([]byte, len(nar)/2)
	if _, err := sp.nar.ReadAt(context.Background(), buf, 0); err != nil {
		t.Fatal(err)
	}
	flushCopies(se.fsys)
	if got := filesDirEntries(t, se.filesDir); len(got) != 1 || !strings.HasPrefix(got[0], ".tmp-") {
		t.Fatalf("copies directory holds %v while the path is read, want one temporary directory", got)
	}
	sp.chk.Release()
	if got := filesDirEntries(t, se.filesDir); len(got) != 0 {
		t.Fatalf("copies directory holds %v after the release, want nothing", got)
	}
	se.fsys.mu.Lock()
	delete(se.fsys.paths, sp.base)
	se.fsys.mu.Unlock()
	sp2, err := se.fsys.storePath(context.Background(), sp.base)
	if err != nil {
		t.Fatal(err)
	}
	readAllOf(t, sp2)
	if se.fsys.files.streamed.Load() != 1 {
		t.Fatal("the path loaded again did not stream its copies")
	}
}

// A quarantine decided elsewhere (integrity.Checker.Quarantine, then the
// path's cleanup) removes the stream's directory, and a later
// verification cannot bring it back.
func TestCopyStreamQuarantined(t *testing.T) {
	se := newStreamEnv(t)
	nar, ls := makeNar(t, testTree())
	sp := se.load(t, "pkg", nar, ls)
	buf := make([]byte, len(nar)/2)
	if _, err := sp.nar.ReadAt(context.Background(), buf, 0); err != nil {
		t.Fatal(err)
	}
	if !sp.chk.Quarantine() {
		t.Fatal("not quarantined")
	}
	sp.onQuarantine(integrity.ErrQuarantined, nil)
	if got := filesDirEntries(t, se.filesDir); len(got) != 0 {
		t.Fatalf("copies directory holds %v after the quarantine, want nothing", got)
	}
	if err := sp.verify(context.Background(), nil); err == nil {
		t.Fatal("a quarantined path verified")
	}
	if got := filesDirEntries(t, se.filesDir); len(got) != 0 {
		t.Fatalf("copies directory holds %v, want nothing", got)
	}
}

// However the hashed bytes are cut (pieces spanning several files, pieces
// of a few bytes), the copies hold exactly the files' bytes.
func TestCopyStreamAnyChunking(t *testing.T) {
	tree := fstest.MapFS{
		"a": {Data: pattern(256<<10, 1), Mode: 0o444},
		"b": {Data: []byte("small"), Mode: 0o444},
		"c": {Data: pattern(300<<10+3, 2), Mode: 0o555},
		"d": {Data: pattern(256<<10, 3), Mode: 0o444},
	}
	nar, ls := makeNar(t, tree)
	for _, cut := range []int{1 << 20, 256 << 10, 4097, 77, 1} {
		t.Run(fmt.Sprint(cut), func(t *testing.T) {
			se := newStreamEnv(t)
			sp := se.load(t, "cut", nar, ls)
			for off := 0; off < len(nar); off += cut {
				sp.chk.OnLeaf(int64(off), nar[off:min(off+cut, len(nar))])
			}
			if err := sp.verify(context.Background(), nil); err != nil {
				t.Fatal(err)
			}
			if se.fsys.files.streamed.Load() != 1 {
				t.Fatal("copies not written from the stream")
			}
			dir := filepath.Join(se.filesDir, sp.copiesKey)
			if err := checkCopies(context.Background(), dir, &Stats{}, hashEvery); err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{"a", "c", "d"} {
				ln, _ := sp.listing.Lookup(name)
				got, err := os.ReadFile(filepath.Join(dir, fmt.Sprint(ln.NarOffset)))
				if err != nil || !bytes.Equal(got, tree[name].Data) {
					t.Fatalf("copy of %s: %d bytes, %v", name, len(got), err)
				}
			}
			if n := len(filesDirEntries(t, dir)); n != 4 {
				t.Fatalf("%d files in the copies directory, want 3 copies and the manifest", n)
			}
		})
	}
}

// A stream whose writer has stopped (the stream was dropped while the
// checker still feeds it) never holds the checker up: write returns at
// once however much comes, and nothing more reaches the disk.
func TestCopyStreamStoppedNeverBlocks(t *testing.T) {
	s := takenStream(t)
	s.abort()
	done := make(chan struct{})
	go func() {
		defer close(done)
		leaf := make([]byte, 256<<10)
		for i := range 4 * streamQueue {
			s.write(int64(i)*int64(len(leaf)), leaf)
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("write blocked after the writer stopped")
	}
	if s.flush() {
		t.Fatal("a stopped writer flushed")
	}
	if got := filesDirEntries(t, s.fl.dir); len(got) != 0 {
		t.Fatalf("copies directory holds %v after the stream was dropped", got)
	}
}

// A stream's writer runs while bytes come and goes when none come: a path
// read in part keeps no goroutine. Bytes that come later start it again,
// and the copies come out whole.
func TestCopyStreamWriterGoesWhenIdle(t *testing.T) {
	se := newStreamEnv(t)
	nar, ls := makeNar(t, testTree())
	sp := se.load(t, "pkg", nar, ls)
	se.fsys.files.mu.Lock()
	s := se.fsys.files.streams[sp.copiesKey]
	se.fsys.files.mu.Unlock()
	if s == nil {
		t.Fatal("no copy stream")
	}
	buf := make([]byte, len(nar)/2)
	if _, err := sp.nar.ReadAt(context.Background(), buf, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the idle writer to go", func() bool { return !s.writing.Load() })
	readAllOf(t, sp)
	if se.fsys.files.streamed.Load() != 1 {
		t.Fatal("the copies were not written from the stream")
	}
	dir := filepath.Join(se.filesDir, sp.copiesKey)
	for _, ln := range s.todo {
		got, err := os.ReadFile(filepath.Join(dir, fmt.Sprint(ln.NarOffset)))
		if err != nil || !bytes.Equal(got, nar[ln.NarOffset:ln.NarOffset+ln.Size]) {
			t.Fatalf("copy at NAR offset %d: %d bytes, %v", ln.NarOffset, len(got), err)
		}
	}
}

// A stream that stops lets go of the bytes queued for its writer: a
// quarantined path keeps its checker, and the checker its tee, for the
// life of the mount.
func TestCopyStreamStoppedHoldsNothing(t *testing.T) {
	s := takenStream(t)
	s.mu.Lock() // a slow disk: the writer waits with its first span
	for i := range streamQueue + 1 {
		s.write(int64(i)<<20, make([]byte, 1<<20))
	}
	if len(s.queue) == 0 {
		t.Fatal("nothing queued")
	}
	s.stopWriter() // as a quarantine does, through abort
	s.mu.Unlock()
	s.abort()
	if n := len(s.queue); n != 0 {
		t.Fatalf("%d spans still referenced by the stopped stream", n)
	}
	s.write(0, make([]byte, 1<<20))
	if n := len(s.queue); n != 0 {
		t.Fatalf("a span queued after the stop: %d", n)
	}
}

// takenStream loads a path with local copies to stream and takes its copy
// stream out of the filesystem, as dropping it does, before aborting it.
func takenStream(t *testing.T) *copyStream {
	t.Helper()
	se := newStreamEnv(t)
	nar, ls := makeNar(t, testTree())
	sp := se.load(t, "pkg", nar, ls)
	se.fsys.files.mu.Lock()
	s := se.fsys.files.takeStreamLocked(sp.copiesKey)
	se.fsys.files.mu.Unlock()
	if s == nil {
		t.Fatal("no copy stream")
	}
	return s
}
