package fusefs

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/fstest"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ipnix/ipnix/narindex"
)

// pushTree is a directory of small files of assorted sizes (some span a
// leaf boundary, one is empty, one is just too large to push) and a large
// file no test reads, so that pushes never complete a path.
func pushTree() fstest.MapFS {
	t := fstest.MapFS{
		"d/empty":       {Data: nil, Mode: 0o444},
		"d/page":        {Data: pattern(4096, 3), Mode: 0o444},
		"d/max":         {Data: pattern(pushMaxFile, 4), Mode: 0o444},
		"d/over":        {Data: pattern(pushMaxFile+1, 5), Mode: 0o555},
		"z-unread/big":  {Data: pattern(600<<10, 6), Mode: 0o444},
		"d/sub/in-dir":  {Data: []byte("deeper\n"), Mode: 0o444},
		"d/sub/in-dir2": {Data: pattern(9000, 7), Mode: 0o444},
	}
	for i := range 60 {
		t[fmt.Sprintf("d/f%02d", i)] = &fstest.MapFile{Data: pattern((i*1777)%20000+1, byte(i)), Mode: 0o444}
	}
	return t
}

// smallNames lists the files of tree that are pushed when known, in NAR
// order.
func smallNames(tree fstest.MapFS) []string {
	var out []string
	for name, f := range tree {
		if f.Mode.IsRegular() && len(f.Data) > 0 && len(f.Data) <= pushMaxFile {
			out = append(out, name)
		}
	}
	sort.Strings(out) // NAR order within one directory level here
	return out
}

// pushRecorder records every push and checks it against the file the
// node is: whole, from offset 0, never past its end, and never taken
// twice for the same node. It counts the files the kernel took, not the
// stores tried: on a loaded machine the worker often gets to a file
// before the kernel has taken in its lookup's reply (ENOENT), and tries
// again (pushRetries); and a file may be pushed again to a new node after
// something dropped the kernel's caches.
type pushRecorder struct {
	mu    sync.Mutex
	files map[string]bool // files the kernel took
	nodes map[uint64]bool // nodes it took them for
	bad   []string
}

func (e *env) recordPushes(t *testing.T, base string, tree fstest.MapFS) *pushRecorder {
	t.Helper()
	r := &pushRecorder{files: map[string]bool{}, nodes: map[uint64]bool{}}
	store := func(n *notifier, node uint64, data []byte) error {
		err := n.store(node, 0, data)
		r.mu.Lock()
		defer r.mu.Unlock()
		name, size := e.fileOfNode(base, node, tree)
		switch {
		case name == "":
			r.bad = append(r.bad, fmt.Sprintf("node %d is no file of %s", node, base))
		case int64(len(data)) != size || !bytes.Equal(data, tree[name].Data):
			r.bad = append(r.bad, fmt.Sprintf("%s: pushed %d bytes, file has %d (or other bytes)", name, len(data), size))
		case err != nil:
			// The kernel did not take it (ENOENT: it does not know the node yet).
		case r.nodes[node]:
			r.bad = append(r.bad, fmt.Sprintf("%s: pushed twice to node %d", name, node))
		default:
			r.nodes[node], r.files[name] = true, true
		}
		return err
	}
	e.fsys.pages.testStore.Store(&store)
	return r
}

// check fails t for every wrong push and returns how many files were
// pushed.
func (r *pushRecorder) check(t *testing.T) int {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.bad {
		t.Error(b)
	}
	return len(r.files)
}

// fileOfNode finds the file of tree whose inode has kernel node id node.
func (e *env) fileOfNode(base string, node uint64, tree fstest.MapFS) (string, int64) {
	for name, f := range tree {
		in := e.fsys.root.GetChild(base)
		for _, c := range strings.Split(name, "/") {
			if in != nil {
				in = in.GetChild(c)
			}
		}
		if in != nil && nodeID(in) == node {
			return name, int64(len(f.Data))
		}
	}
	return "", 0
}

func (e *env) sp(t *testing.T, base string) *storePath {
	t.Helper()
	e.fsys.mu.Lock()
	defer e.fsys.mu.Unlock()
	sp := e.fsys.paths[base]
	if sp == nil {
		t.Fatalf("%s not loaded", base)
	}
	return sp
}

func (e *env) waitPushes(t *testing.T) {
	t.Helper()
	if !e.fsys.pages.waitIdle(10 * time.Second) {
		t.Fatal("page pushing still busy after 10s")
	}
}

// readAll reads names under root and compares them with tree.
func readAll(t *testing.T, root string, tree fstest.MapFS, names []string) {
	t.Helper()
	for _, name := range names {
		got, err := os.ReadFile(filepath.Join(root, name))
		if err != nil || !bytes.Equal(got, tree[name].Data) {
			t.Fatalf("read %s: %d bytes, %v", name, len(got), err)
		}
	}
}

// dropPageCache drops the kernel's pages of the files (only theirs: other
// tests on the machine keep their caches).
func dropPageCache(t *testing.T, root string, names []string) {
	t.Helper()
	for _, name := range names {
		fd, err := unix.Open(filepath.Join(root, name), unix.O_RDONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		err = unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
	}
}

// undisturbed runs a check that counts requests or pages up to three
// times, on a fresh mount each: another process on the machine may drop
// the kernel's caches (drop_caches) in the middle of one, which a test
// cannot prevent. check fails the test itself for anything else, and
// returns what it counted wrong, or "".
func undisturbed(t *testing.T, check func() string) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		msg := check()
		if msg == "" {
			return
		}
		if attempt == 3 {
			t.Fatal(msg)
		}
		t.Logf("attempt %d: %s; again (caches dropped by another process?)", attempt, msg)
	}
}

// Once the leaves of a path are read, the small files they hold that the
// kernel knows are in its page cache: reading them back reaches the
// filesystem not once, gives their bytes, and leaves their sizes as they
// were; after the pages are dropped they are read the normal way.
func TestPushedPages(t *testing.T) {
	tree := pushTree()
	nar, ls := makeNar(t, tree)
	names := smallNames(tree)
	undisturbed(t, func() string {
		e := newEnv(t, Config{Readahead: -1, EagerVerifyBytes: -1})
		base := e.add(t, "pkg", nar, nar, ls)
		root := filepath.Join(e.dir, base)
		rec := e.recordPushes(t, base, tree)
		for _, name := range append(names, "d/over", "d/empty") {
			if _, err := os.Lstat(filepath.Join(root, name)); err != nil {
				t.Fatal(err)
			}
		}
		// Every leaf read once, as readers would bring them.
		sp := e.sp(t, base)
		if _, err := sp.nar.ReadAt(context.Background(), make([]byte, len(nar)), 0); err != nil {
			t.Fatal(err)
		}
		e.waitPushes(t)
		if got := rec.check(t); got != len(names) || e.fsys.Stats.PagePushes.Load() != int64(len(names)) {
			return fmt.Sprintf("%d pushes (%d counted) for %d small files known", got, e.fsys.Stats.PagePushes.Load(), len(names))
		}
		var bytesWant int64
		for _, name := range names {
			bytesWant += int64(len(tree[name].Data))
		}
		if got := e.fsys.Stats.PagePushBytes.Load(); got != bytesWant {
			t.Errorf("pushed %d bytes, want %d", got, bytesWant)
		}

		reads := e.fsys.Stats.Reads.Load()
		for _, name := range names {
			fd, err := unix.Open(filepath.Join(root, name), unix.O_RDONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			size := len(tree[name].Data)
			n, want := residentPages(t, fd, size), (size+os.Getpagesize()-1)/os.Getpagesize()
			unix.Close(fd)
			if n != want {
				return fmt.Sprintf("%s: %d of %d pages in the page cache after its push", name, n, want)
			}
		}
		readAll(t, root, tree, names)
		if got := e.fsys.Stats.Reads.Load() - reads; got != 0 {
			return fmt.Sprintf("%d READs reached the filesystem for pushed files", got)
		}
		for _, name := range append(names, "d/over") {
			fi, err := os.Stat(filepath.Join(root, name))
			if err != nil || fi.Size() != int64(len(tree[name].Data)) || fi.ModTime().Unix() != 1 {
				t.Fatalf("%s after pushes: %v (size %d, want %d)", name, err, fi.Size(), len(tree[name].Data))
			}
		}
		// The file too large to push is read the normal way.
		readAll(t, root, tree, []string{"d/over"})
		if e.fsys.Stats.Reads.Load() == reads {
			t.Fatal("d/over was pushed")
		}

		dropPageCache(t, root, names)
		reads = e.fsys.Stats.Reads.Load()
		readAll(t, root, tree, names)
		if got := e.fsys.Stats.Reads.Load() - reads; got < int64(len(names)) {
			t.Fatalf("after dropping the pages only %d READs for %d files: pages were not dropped, the test proves nothing", got, len(names))
		}
		if e.fsys.Stats.Verified.Load() != 0 {
			t.Fatal("verified though z-unread/big was never read")
		}
		rec.check(t)
		return ""
	})
}

// A walk like find -exec cat: the directory is listed (the kernel learns
// every file), then the files are read in order. Each READ brings a leaf,
// whose other files are pushed before the reader gets to them.
func TestPushedPagesWalk(t *testing.T) {
	tree := pushTree()
	nar, ls := makeNar(t, tree)
	undisturbed(t, func() string {
		e := newEnv(t, Config{EagerVerifyBytes: -1})
		base := e.add(t, "pkg", nar, nar, ls)
		root := filepath.Join(e.dir, base)
		rec := e.recordPushes(t, base, tree)
		var names []string
		err := filepath.WalkDir(filepath.Join(root, "d"), func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				names = append(names, p)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range names {
			rel, _ := filepath.Rel(root, p)
			readAll(t, root, tree, []string{rel})
			e.waitPushes(t) // no timing in the test: the push is done before the next read
		}
		rec.check(t)
		leaves := int64(len(nar)/(256<<10) + 1)
		reads, pushes := e.fsys.Stats.Reads.Load(), e.fsys.Stats.PagePushes.Load()
		t.Logf("%d files: %d READs, %d pushes, %d leaves", len(names), reads, pushes, leaves)
		// d/over needs its READs (up to 2 with the kernel's read-ahead),
		// and each leaf at most one READ for the first file the walk
		// reads in it and one for a file that spans into the next.
		if reads > 2*leaves+2 {
			return fmt.Sprintf("%d READs for %d files in %d leaves", reads, len(names), leaves)
		}
		return ""
	})
}

// A file looked up after its leaf went by is pushed from the leaves kept,
// once the lookup has been answered.
func TestPushAfterLookup(t *testing.T) {
	tree := pushTree()
	nar, ls := makeNar(t, tree)
	undisturbed(t, func() string {
		e := newEnv(t, Config{Readahead: -1, EagerVerifyBytes: -1})
		base := e.add(t, "pkg", nar, nar, ls)
		root := filepath.Join(e.dir, base)
		rec := e.recordPushes(t, base, tree)
		readAll(t, root, tree, []string{"d/f00"})
		e.waitPushes(t)
		if n := rec.check(t); n != 0 {
			t.Fatalf("%d pushes with no other file known", n)
		}
		if _, err := os.Lstat(filepath.Join(root, "d/f01")); err != nil {
			t.Fatal(err)
		}
		e.waitPushes(t)
		if n := rec.check(t); n != 1 {
			return fmt.Sprintf("%d pushes after a lookup of a file in a leaf read, want 1", n)
		}
		reads := e.fsys.Stats.Reads.Load()
		readAll(t, root, tree, []string{"d/f01"})
		if e.fsys.Stats.Reads.Load() != reads {
			return "the file pushed after its lookup was read through the filesystem"
		}
		return ""
	})
}

// A small path is verified whole at lookup; its files are pushed as the
// kernel learns them.
func TestPushSmallPathAtLookup(t *testing.T) {
	tree := fstest.MapFS{
		"bin/a":   {Data: []byte("#!/bin/sh\n"), Mode: 0o555},
		"share/b": {Data: pattern(5000, 1), Mode: 0o444},
		"share/c": {Data: pattern(70000, 2), Mode: 0o444},
	}
	nar, ls := makeNar(t, tree)
	undisturbed(t, func() string {
		e := newEnv(t, Config{Readahead: -1})
		base := e.add(t, "small", nar, nar, ls)
		root := filepath.Join(e.dir, base)
		rec := e.recordPushes(t, base, tree)
		for name := range tree {
			if _, err := os.Lstat(filepath.Join(root, name)); err != nil {
				t.Fatal(err)
			}
		}
		e.waitPushes(t)
		if e.fsys.Stats.Verified.Load() != 1 {
			t.Fatal("not verified at lookup")
		}
		if n := rec.check(t); n != len(tree) {
			return fmt.Sprintf("%d pushes for %d files", n, len(tree))
		}
		readAll(t, root, tree, []string{"bin/a", "share/b", "share/c"})
		if n := e.fsys.Stats.Reads.Load(); n != 0 {
			return fmt.Sprintf("%d READs for pushed files", n)
		}
		return ""
	})
}

// A push counts as serving: one that would serve a lazy path's last
// unserved bytes is not made, and the READ that comes instead checks the
// whole NAR first.
func TestPushNeverServesLastBytesUnverified(t *testing.T) {
	tree := fstest.MapFS{}
	for i := range 20 {
		tree[fmt.Sprintf("f%02d", i)] = &fstest.MapFile{Data: pattern(9000+i, byte(i)), Mode: 0o444}
	}
	nar, ls := makeNar(t, tree)
	names := smallNames(tree)
	undisturbed(t, func() string {
		e := newEnv(t, Config{Readahead: -1, EagerVerifyBytes: -1})
		base := e.add(t, "all-small", nar, nar, ls)
		root := filepath.Join(e.dir, base)
		for _, name := range names {
			if _, err := os.Lstat(filepath.Join(root, name)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := e.sp(t, base).nar.ReadAt(context.Background(), make([]byte, len(nar)), 0); err != nil {
			t.Fatal(err)
		}
		e.waitPushes(t)
		if got := e.fsys.Stats.PagePushes.Load(); got >= int64(len(names)) {
			t.Fatalf("%d pushes for %d files: the last was pushed unverified", got, len(names))
		}
		if e.fsys.Stats.Verified.Load() != 0 {
			t.Fatal("verified without a read")
		}
		readAll(t, root, tree, names)
		if e.fsys.Stats.Verified.Load() != 1 {
			t.Fatal("the last bytes were served without verifying the NAR")
		}
		if got, r := e.fsys.Stats.PagePushes.Load(), e.fsys.Stats.Reads.Load(); got != int64(len(names)-1) || r != 1 {
			return fmt.Sprintf("%d pushes and %d READs for %d files, want all but one pushed and one READ", got, r, len(names))
		}
		return ""
	})
}

// A quarantined path gets no pushes, and what the kernel holds of it is
// dropped, pushed pages included.
func TestQuarantinedPathNotPushed(t *testing.T) {
	e := newEnv(t, Config{Readahead: -1, EagerVerifyBytes: -1})
	tree := pushTree()
	nar, ls := makeNar(t, tree)
	l, _ := narindex.ParseListing(ls)
	big, _ := l.Lookup("z-unread/big")
	bad := bytes.Clone(nar)
	bad[big.NarOffset+4321] ^= 1 // every block matches its CID; the NAR hash does not
	base := e.add(t, "pkg", bad, nar, ls)
	root := filepath.Join(e.dir, base)
	names := smallNames(tree)
	for _, name := range names {
		if _, err := os.Lstat(filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	sp := e.sp(t, base)
	if _, err := sp.nar.ReadAt(context.Background(), make([]byte, len(nar)), 0); err != nil {
		t.Fatal(err)
	}
	e.waitPushes(t)
	if e.fsys.Stats.PagePushes.Load() == 0 {
		t.Fatal("nothing pushed before the quarantine: the test proves nothing")
	}
	readAllWantEIO(t, root, tree)
	if e.fsys.Stats.Quarantined.Load() != 1 {
		t.Fatal("not quarantined")
	}
	for _, name := range names {
		if _, err := os.ReadFile(filepath.Join(root, name)); err == nil {
			t.Fatalf("%s still read after the quarantine (pushed pages kept?)", name)
		}
	}
	pushes := e.fsys.Stats.PagePushes.Load()
	var calls atomic.Int64
	store := func(n *notifier, node uint64, data []byte) error { calls.Add(1); return n.store(node, 0, data) }
	e.fsys.pages.testStore.Store(&store)
	// Leaves of the quarantined path going by, and a lookup.
	sp.onLeaf(0, nar[:256<<10])
	sp.noteLookup(e.fsys.root.GetChild(base), "x", l.Root.Entries["d"].Entries["f00"])
	e.waitPushes(t)
	if e.fsys.Stats.PagePushes.Load() != pushes || calls.Load() != 0 {
		t.Fatalf("%d pushes for a quarantined path", calls.Load())
	}
}

// A push that loses the race with a quarantine (the quarantine and the
// kernel's forgetting of the path happen between the pusher's check and
// its write) is taken back: the kernel keeps no page of it.
func TestPushRacingQuarantine(t *testing.T) {
	e := newEnv(t, Config{Readahead: -1, EagerVerifyBytes: -1})
	tree := pushTree()
	nar, ls := makeNar(t, tree)
	base := e.add(t, "pkg", nar, nar, ls)
	root := filepath.Join(e.dir, base)
	if _, err := os.Lstat(filepath.Join(root, "d/f00")); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(filepath.Join(root, "d/f00"), unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	sp := e.sp(t, base)
	var pushed sync.WaitGroup
	pushed.Add(1)
	store := func(n *notifier, node uint64, data []byte) error {
		defer pushed.Done()
		sp.chk.Quarantine() // forget would run here and find nothing yet
		return n.store(node, 0, data)
	}
	e.fsys.pages.testStore.Store(&store)
	if _, err := sp.nar.ReadAt(context.Background(), make([]byte, 256<<10), 0); err != nil {
		t.Fatal(err)
	}
	pushed.Wait()
	e.waitPushes(t)
	if n := residentPages(t, fd, len(tree["d/f00"].Data)); n != 0 {
		t.Fatalf("%d pages pushed for a quarantined path still in the kernel's cache", n)
	}
	if _, err := os.ReadFile(filepath.Join(root, "d/f00")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of a file pushed while quarantined: %v, want EIO", err)
	}
}

// residentPages counts the pages of the file open at fd, size bytes long,
// that are in the kernel's page cache (mincore of a mapping: no request
// reaches the filesystem).
func residentPages(t *testing.T, fd, size int) int {
	t.Helper()
	m, err := unix.Mmap(fd, 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (size+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// The notification is what include/uapi/linux/fuse.h says: an out header
// with unique 0 and the code as error, fuse_notify_store_out, the data.
func TestNotifyStoreMessage(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	n := &notifier{fd: p[1]}
	data := pattern(5000, 9)
	if err := n.store(0x1122334455, 0, data); err != nil {
		t.Fatal(err)
	}
	n.close()
	if err := n.store(1, 0, data); !errors.Is(err, syscall.EBADF) {
		t.Fatalf("store after close: %v, want EBADF", err)
	}
	msg := make([]byte, 1<<16)
	m, err := unix.Read(p[0], msg)
	if err != nil {
		t.Fatal(err)
	}
	msg = msg[:m]
	le := binary.LittleEndian
	if m != 16+24+len(data) || le.Uint32(msg[0:]) != uint32(m) || int32(le.Uint32(msg[4:])) != notifyStore || le.Uint64(msg[8:]) != 0 {
		t.Fatalf("header % x (length %d)", msg[:16], m)
	}
	if le.Uint64(msg[16:]) != 0x1122334455 || le.Uint64(msg[24:]) != 0 || le.Uint32(msg[32:]) != uint32(len(data)) || le.Uint32(msg[36:]) != 0 {
		t.Fatalf("fuse_notify_store_out % x", msg[16:40])
	}
	if !bytes.Equal(msg[40:], data) {
		t.Fatal("data differs")
	}

	// Pieces go out as one message, the same as their concatenation.
	var q [2]int
	if err := unix.Pipe2(q[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(q[0])
	n = &notifier{fd: q[1]}
	defer n.close()
	if err := n.store(0x1122334455, 0, data[:1000], data[1000:1000], data[1000:]); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1<<16)
	if m, err = unix.Read(q[0], got); err != nil || !bytes.Equal(got[:m], msg) {
		t.Fatalf("a store in pieces: %d bytes, %v; not the message of the whole", m, err)
	}
}

// Files are pushed from the leaves kept even across a leaf boundary, and
// only when every byte is there.
func TestKeptLeavesAssemble(t *testing.T) {
	p := &pusher{}
	sp := &storePath{}
	a, b := pattern(100, 1), pattern(100, 2)
	p.keep(sp, 0, a)
	if got := p.assemble(sp, 50, 100); got != nil {
		t.Fatal("assembled bytes not kept")
	}
	p.keep(sp, 100, b)
	want := slices.Concat(a[50:], b[:50])
	if got := p.assemble(sp, 50, 100); len(got) != 2 || !bytes.Equal(slices.Concat(got...), want) {
		t.Fatalf("wrong bytes across a leaf boundary: %d pieces", len(got))
	}
	// Within one leaf: the leaf's own bytes, not a copy.
	if got := p.assemble(sp, 110, 20); len(got) != 1 || &got[0][0] != &b[10] || len(got[0]) != 20 {
		t.Fatal("bytes within one leaf copied or wrong")
	}
	if !p.keeps(sp, 0, 200) || p.keeps(sp, 0, 201) || p.keeps(&storePath{}, 0, 1) {
		t.Fatal("keeps")
	}
	leaf := pattern(64<<10, 3)
	for i := range 2 * pushKeepBytes / len(leaf) {
		p.keep(&storePath{}, int64(i), leaf)
	}
	if p.keeps(sp, 0, 1) || p.keptBytes > pushKeepBytes {
		t.Fatalf("kept %d bytes, bound %d", p.keptBytes, pushKeepBytes)
	}
	p.drop(sp)
}
