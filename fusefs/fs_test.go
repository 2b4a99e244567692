package fusefs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
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

// fakeResolver serves narinfos and listings from memory.
type fakeResolver struct {
	mu    sync.Mutex
	paths map[string]*narindex.Resolved
	calls int
}

func (r *fakeResolver) Resolve(ctx context.Context, base string) (*narindex.Resolved, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	res, ok := r.paths[base]
	if !ok {
		return nil, fmt.Errorf("%s: %w", base, narindex.ErrNotFound)
	}
	return res, nil
}

// fixture is a store path built from an in-memory tree.
type fixture struct {
	base    string
	nar     []byte
	listing []byte
}

func makeNar(t *testing.T, tree fstest.MapFS) ([]byte, []byte) {
	t.Helper()
	var buf bytes.Buffer
	if err := narindex.DumpFS(&buf, tree, "."); err != nil {
		t.Fatal(err)
	}
	l, err := narindex.ListingFromNar(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	ls, err := l.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), ls
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	return b
}

// testTree has every kind of entry and a file large enough to be lazy.
func testTree() fstest.MapFS {
	return fstest.MapFS{
		"bin/tool":            {Data: []byte("#!/bin/sh\necho hi\n"), Mode: 0o555},
		"share/doc/readme":    {Data: []byte("read me\n"), Mode: 0o444},
		"share/empty":         {Data: nil, Mode: 0o444},
		"share/big":           {Data: pattern(3<<20+17, 1), Mode: 0o444},
		"share/edge":          {Data: pattern(256<<10, 2), Mode: 0o444},
		"lib/link-rel":        {Data: []byte("../share/doc/readme"), Mode: fs.ModeSymlink | 0o777},
		"lib/link-abs":        {Data: []byte("/nix/store/00000000000000000000000000000000-x"), Mode: fs.ModeSymlink | 0o777},
		"lib/dangling":        {Data: []byte("nowhere"), Mode: fs.ModeSymlink | 0o777},
		"empty-dir":           {Mode: fs.ModeDir | 0o555},
		"share/doc/deep/file": {Data: []byte("deep"), Mode: 0o444},
	}
}

const testHash = "0c6kzph7l0dcbfmjap64f0czdafn3b7x"

// env is a mounted filesystem over an in-memory block store.
type env struct {
	fsys  *FS
	dir   string
	store *fetchtest.Store
	res   *fakeResolver
	stats *fetch.Stats
	mem   *cache.Memory
}

// requireFuse skips a test that needs to mount when this machine cannot,
// or fails it when IPNIX_REQUIRE_INTEGRATION=1 (CI): there a missing
// /dev/fuse must not pass for a green run.
func requireFuse(t testing.TB) {
	t.Helper()
	requireMount(t, fuseMissing(), os.Getenv("IPNIX_REQUIRE_INTEGRATION") == "1")
}

// fuseMissing names what this machine lacks to mount ("" if nothing).
func fuseMissing() string {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return "/dev/fuse"
	}
	if os.Geteuid() != 0 {
		if _, err := exec.LookPath("fusermount3"); err != nil {
			return "fusermount3 (not root)"
		}
	}
	return ""
}

func requireMount(t testing.TB, missing string, required bool) {
	t.Helper()
	switch {
	case missing == "":
	case required:
		t.Fatalf("cannot mount: no %s, and IPNIX_REQUIRE_INTEGRATION=1", missing)
	default:
		t.Skipf("cannot mount: no %s", missing)
	}
}

// newEnv mounts in-process and unmounts in cleanup, even on failure.
func newEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	return newEnvCache(t, cfg, 64<<20)
}

func newEnvCache(t *testing.T, cfg Config, memBytes int64) *env {
	t.Helper()
	return newEnvOpts(t, cfg, memBytes, MountOptions{})
}

// newEnvOpts mounts cfg with mount options o.
func newEnvOpts(t *testing.T, cfg Config, memBytes int64, o MountOptions) *env {
	t.Helper()
	requireFuse(t)
	e := &env{store: fetchtest.NewStore(), res: &fakeResolver{paths: map[string]*narindex.Resolved{}}, stats: &fetch.Stats{}}
	e.mem = cache.NewMemory(fetch.Verify(e.store, e.stats), memBytes)
	cfg.Resolver = e.res
	cfg.Blocks = e.mem
	cfg.Evict = e.mem.Remove
	fsys, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.fsys = fsys
	e.dir = t.TempDir()
	srv, err := Mount(e.dir, e.fsys, o)
	if err != nil {
		t.Fatal(err)
	}
	untrack := testmounts.Track(e.dir)
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
			_ = Detach(e.dir)
		}
		untrack()
		e.fsys.Close()
	})
	return e
}

// add publishes nar under name; narHashOf is the NAR whose hash the
// narinfo claims (normally nar itself).
func (e *env) add(t *testing.T, name string, nar, narHashOf, listing []byte) string {
	t.Helper()
	c, err := e.store.AddFile(nar, fetchtest.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(narHashOf)
	base := testHash + "-" + name
	ni := &narindex.NarInfo{
		StorePath: narindex.StoreDir + "/" + base,
		URL:       "nar/x.nar",
		NarHash:   narindex.SHA256(sum[:]),
		NarSize:   uint64(len(narHashOf)),
		IpfsCid:   c.String(),
	}
	e.res.mu.Lock()
	e.res.paths[base] = &narindex.Resolved{Info: ni, ListingData: listing, From: "memory", CidSigned: true}
	e.res.mu.Unlock()
	return base
}

func TestTreeMatchesSource(t *testing.T) {
	for _, withListing := range []bool{true, false} {
		t.Run(fmt.Sprintf("listing=%v", withListing), func(t *testing.T) {
			e := newEnv(t, Config{})
			tree := testTree()
			nar, ls := makeNar(t, tree)
			if !withListing {
				ls = nil
			}
			base := e.add(t, "pkg", nar, nar, ls)
			root := filepath.Join(e.dir, base)
			for name, f := range tree {
				p := filepath.Join(root, name)
				fi, err := os.Lstat(p)
				if err != nil {
					t.Fatalf("lstat %s: %v", name, err)
				}
				switch {
				case f.Mode&fs.ModeSymlink != 0:
					got, err := os.Readlink(p)
					if err != nil || got != string(f.Data) {
						t.Errorf("readlink %s = %q, %v", name, got, err)
					}
				case f.Mode.IsDir():
					if fi.Mode().Perm() != 0o555 || !fi.IsDir() {
						t.Errorf("%s: mode %v", name, fi.Mode())
					}
				default:
					got, err := os.ReadFile(p)
					if err != nil || !bytes.Equal(got, f.Data) {
						t.Errorf("read %s: %d bytes, %v", name, len(got), err)
					}
					want := fs.FileMode(0o444)
					if f.Mode&0o100 != 0 {
						want = 0o555
					}
					if fi.Mode().Perm() != want {
						t.Errorf("%s: mode %v, want %v", name, fi.Mode().Perm(), want)
					}
				}
				st := fi.Sys().(*syscall.Stat_t)
				if st.Mtim.Sec != 1 || st.Uid != 0 {
					t.Errorf("%s: mtime %d uid %d", name, st.Mtim.Sec, st.Uid)
				}
			}
			if e.fsys.Stats.Verified.Load() != 1 {
				t.Fatalf("reading every file did not verify the NAR (verified=%d)", e.fsys.Stats.Verified.Load())
			}
		})
	}
}

func TestInodeNumbersStableAndDistinct(t *testing.T) {
	e := newEnv(t, Config{})
	nar, ls := makeNar(t, testTree())
	base := e.add(t, "pkg", nar, nar, ls)
	seen := map[uint64]string{}
	root := filepath.Join(e.dir, base)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		ino := fi.Sys().(*syscall.Stat_t).Ino
		if other, dup := seen[ino]; dup {
			t.Errorf("%s and %s share inode %d", p, other, ino)
		}
		seen[ino] = p
		if ino>>32 != 1 {
			t.Errorf("%s: inode %#x does not carry store-path index 1", p, ino)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Lstat(root)
	if fi.Sys().(*syscall.Stat_t).Ino != 1<<32 {
		t.Errorf("store path root inode %#x, want 1<<32", fi.Sys().(*syscall.Stat_t).Ino)
	}
}

func TestLazyRead(t *testing.T) {
	e := newEnv(t, Config{})
	nar, ls := makeNar(t, testTree())
	base := e.add(t, "pkg", nar, nar, ls)
	if _, err := os.ReadFile(filepath.Join(e.dir, base, "share/doc/readme")); err != nil {
		t.Fatal(err)
	}
	if got := e.stats.Bytes.Load(); got*4 > int64(len(nar)) {
		t.Fatalf("reading one small file fetched %d of %d NAR bytes", got, len(nar))
	}
	if e.fsys.Stats.Verified.Load() != 0 {
		t.Fatal("verified before everything was read")
	}
}

func TestQuarantine(t *testing.T) {
	// Without read-ahead, so no fetch is in flight when the cache is purged.
	e := newEnv(t, Config{Readahead: -1})
	tree := testTree()
	nar, ls := makeNar(t, tree)
	// Same size, one byte of share/big different: every block matches its
	// CID, only the NAR hash disagrees.
	l, _ := narindex.ParseListing(ls)
	big, _ := l.Lookup("share/big")
	bad := bytes.Clone(nar)
	bad[big.NarOffset+12345] ^= 1
	base := e.add(t, "pkg", bad, nar, ls)
	root := filepath.Join(e.dir, base)
	readAllWantEIO(t, root, tree)
	if e.fsys.Stats.Quarantined.Load() != 1 {
		t.Fatal("not counted as quarantined")
	}
	if _, err := os.ReadFile(filepath.Join(root, "share/doc/readme")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read after quarantine: %v, want EIO", err)
	}
	if e.mem.Len() != 0 {
		t.Fatalf("%d blocks of the quarantined path still cached", e.mem.Len())
	}
}

func TestSmallNarVerifiedAtLookup(t *testing.T) {
	e := newEnv(t, Config{})
	tree := fstest.MapFS{"f": {Data: []byte("small"), Mode: 0o444}}
	nar, ls := makeNar(t, tree)
	wrong := bytes.Clone(nar)
	wrong[len(wrong)-20] ^= 1
	good := e.add(t, "good", nar, nar, ls)
	if _, err := os.Lstat(filepath.Join(e.dir, good)); err != nil {
		t.Fatal(err)
	}
	if e.fsys.Stats.Verified.Load() != 1 {
		t.Fatal("small NAR not verified at lookup")
	}
	badBase := e.add(t, "bad", wrong, nar, ls)
	if _, err := os.Lstat(filepath.Join(e.dir, badBase)); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("lookup of a small path with a wrong NAR: %v, want ENOENT", err)
	}
}

func TestLookupRefusals(t *testing.T) {
	e := newEnv(t, Config{})
	nar, ls := makeNar(t, testTree())
	base := e.add(t, "pkg", nar, nar, ls)
	// NarSize disagreeing with the CID's size.
	e.res.mu.Lock()
	res := *e.res.paths[base]
	ni := *res.Info
	ni.NarSize++
	res.Info = &ni
	e.res.paths[testHash+"-wrongsize"] = &res
	e.res.mu.Unlock()
	for _, name := range []string{"nothing", testHash + "-wrongsize", "00000000000000000000000000000000-missing"} {
		if _, err := os.Lstat(filepath.Join(e.dir, name)); !errors.Is(err, syscall.ENOENT) {
			t.Errorf("lookup %s: %v, want ENOENT", name, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(e.dir, base, "no-such-entry")); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("missing entry: %v", err)
	}
	if err := os.WriteFile(filepath.Join(e.dir, base, "share/doc/readme"), []byte("x"), 0); err == nil {
		t.Error("write succeeded")
	}
}

func TestConcurrentReaders(t *testing.T) {
	e := newEnv(t, Config{})
	tree := testTree()
	nar, ls := makeNar(t, tree)
	base := e.add(t, "pkg", nar, nar, ls)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			name := []string{"share/big", "share/edge", "bin/tool", "share/doc/readme"}[i%4]
			got, err := os.ReadFile(filepath.Join(e.dir, base, name))
			if err != nil || !bytes.Equal(got, tree[name].Data) {
				t.Errorf("reader %d: %s: %v", i, name, err)
			}
		})
	}
	wg.Wait()
}

func TestReadaheadSequentialNotRandom(t *testing.T) {
	e := newEnv(t, Config{EagerVerifyBytes: -1})
	tree := fstest.MapFS{
		"seq":  {Data: pattern(12<<20, 3), Mode: 0o444},
		"rand": {Data: pattern(12<<20, 4), Mode: 0o444},
	}
	nar, ls := makeNar(t, tree)
	base := e.add(t, "pkg", nar, nar, ls)
	ps := e.fsys.PrefetchStats()

	// Random reads: a few scattered small preads.
	f, err := os.Open(filepath.Join(e.dir, base, "rand"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for _, off := range []int64{9 << 20, 3 << 20, 7 << 20, 1 << 20} {
		if _, err := f.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	if n := ps.Blocks.Load(); n != 0 {
		t.Fatalf("random reads caused %d read-ahead fetches", n)
	}

	// A sequential reader: read-ahead fetches blocks beyond what was read.
	f, err = os.Open(filepath.Join(e.dir, base, "seq"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, 2<<20)
	if _, err := io.ReadFull(f, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, tree["seq"].Data[:2<<20]) {
		t.Fatal("sequential read returned wrong bytes")
	}
	deadline := time.Now().Add(10 * time.Second)
	for ps.Blocks.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no read-ahead for a sequential reader")
		}
		time.Sleep(time.Millisecond)
	}
	// Blocks past what the reader (and the kernel's own 1 MiB read-ahead)
	// asked for are now in the cache.
	l, _ := narindex.ParseListing(ls)
	seq, _ := l.Lookup("seq")
	nf, err := fetch.OpenFile(context.Background(), e.store, mustCid(t, e, base))
	if err != nil {
		t.Fatal(err)
	}
	ahead, err := nf.Leaves(context.Background(), seq.NarOffset+4<<20, seq.NarOffset+4<<20+1)
	if err != nil {
		t.Fatal(err)
	}
	for !e.mem.Contains(ahead[0].Cid) {
		if time.Now().After(deadline) {
			t.Fatalf("block at 4 MiB not fetched ahead of a reader at 2 MiB (read-ahead blocks %d)", ps.Blocks.Load())
		}
		time.Sleep(time.Millisecond)
	}
}

func mustCid(t *testing.T, e *env, base string) cid.Cid {
	t.Helper()
	c, err := cid.Decode(e.res.paths[base].Info.IpfsCid)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Reading a store path in NAR order verifies it without a second pass over
// the NAR, even when the cache is far smaller than the NAR.
func TestVerifyStreamsWithReaders(t *testing.T) {
	e := newEnvCache(t, Config{EagerVerifyBytes: -1, Readahead: -1}, 512<<10)
	tree := fstest.MapFS{
		"a": {Data: pattern(3<<20, 5), Mode: 0o444},
		"b": {Data: pattern(2<<20+5, 6), Mode: 0o444},
		"c": {Data: []byte("tail"), Mode: 0o444},
	}
	nar, ls := makeNar(t, tree)
	base := e.add(t, "pkg", nar, nar, ls)
	for _, name := range []string{"a", "b", "c"} {
		got, err := os.ReadFile(filepath.Join(e.dir, base, name))
		if err != nil || !bytes.Equal(got, tree[name].Data) {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if e.fsys.Stats.Verified.Load() != 1 {
		t.Fatal("not verified after reading everything")
	}
	blocks := int64(len(nar)+256<<10-1) / (256 << 10)
	// Each leaf once, plus the root; a second pass would double it.
	if got := e.stats.Blocks.Load(); got > blocks+2 {
		t.Fatalf("fetched %d blocks for a %d-leaf NAR: verification re-read it", got, blocks)
	}
}

// Once a store path is verified, opening a large file hands the kernel a
// local copy (FUSE passthrough): its reads no longer reach this process.
// Without room for copies, reads take the normal path and stay correct.
func TestPassthrough(t *testing.T) {
	for _, quota := range []int64{1 << 30, 1} {
		t.Run(fmt.Sprintf("quota=%d", quota), func(t *testing.T) {
			e := newEnv(t, Config{FilesDir: filepath.Join(t.TempDir(), "files"), FilesQuota: quota})
			tree := testTree()
			nar, ls := makeNar(t, tree)
			base := e.add(t, "pkg", nar, nar, ls)
			for name, f := range tree {
				if f.Mode.IsRegular() {
					if _, err := os.ReadFile(filepath.Join(e.dir, base, name)); err != nil {
						t.Fatal(err)
					}
				}
			}
			if e.fsys.Stats.Verified.Load() != 1 {
				t.Fatal("not verified")
			}
			if quota > 1 {
				waitFor(t, "local copies", func() bool { return e.fsys.Stats.LocalCopies.Load() == 1 })
			}
			// Drop the pages the first reads left, so that reads must go
			// somewhere: to the local copy, or back to this process.
			dropped := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0) == nil
			big := filepath.Join(e.dir, base, "share/big")
			got, err := os.ReadFile(big)
			if err != nil || !bytes.Equal(got, tree["share/big"].Data) {
				t.Fatalf("read through passthrough: %v", err)
			}
			offered, fellBack := e.fsys.Stats.Passthrough.Load(), e.fsys.Stats.PassthroughFellBack.Load()
			t.Logf("passthrough offered %d, reads that reached ipnix on such handles %d", offered, fellBack)
			if quota > 1 {
				if offered == 0 {
					t.Fatal("a verified large file was not offered for passthrough")
				}
				switch {
				case !dropped:
					t.Log("cannot drop the page cache here; not checking where reads went")
				case fellBack != 0:
					t.Fatalf("kernel did not use the passthrough copy: %d reads reached ipnix", fellBack)
				}
			} else if offered != 0 {
				t.Fatal("passthrough offered without room for a local copy")
			}
		})
	}
}

// Directories are listed without OPENDIR (see rawShim): a directory of
// many entries, read in several READDIRPLUS requests, comes back whole and
// in order, twice; the root's listing, cached by the kernel, still grows
// as store paths are looked up.
func TestListingsWithoutOpendir(t *testing.T) {
	e := newEnv(t, Config{})
	tree := fstest.MapFS{}
	var want []string
	for i := range 1500 {
		name := fmt.Sprintf("f%05d-with-a-longish-name", i)
		tree["many/"+name] = &fstest.MapFile{Data: []byte{byte(i)}, Mode: 0o444}
		want = append(want, name)
	}
	nar, ls := makeNar(t, tree)
	base := e.add(t, "many", nar, nar, ls)
	rootNames := func() []string {
		ents, err := os.ReadDir(e.dir)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, d := range ents {
			names = append(names, d.Name())
		}
		return names
	}
	if got := rootNames(); len(got) != 0 {
		t.Fatalf("root lists %v before any lookup", got)
	}
	for range 2 {
		ents, err := os.ReadDir(filepath.Join(e.dir, base, "many"))
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) != len(want) {
			t.Fatalf("listed %d entries, want %d", len(ents), len(want))
		}
		for i, d := range ents {
			if d.Name() != want[i] {
				t.Fatalf("entry %d is %q, want %q", i, d.Name(), want[i])
			}
		}
	}
	// The kernel's cached listing is dropped asynchronously.
	waitRoot := func(want ...string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for got := rootNames(); !slices.Equal(got, want); got = rootNames() {
			if time.Now().After(deadline) {
				t.Fatalf("root lists %v, want %v: the kernel's cached listing was not dropped", got, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitRoot(base)
	nar2, ls2 := makeNar(t, testTree())
	base2 := e.add(t, "pkg", nar2, nar2, ls2)
	if _, err := os.Stat(filepath.Join(e.dir, base2)); err != nil {
		t.Fatal(err)
	}
	want2 := []string{base, base2}
	slices.Sort(want2)
	waitRoot(want2...)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitForOr(t, what, cond, nil)
}

// waitForOr is waitFor, adding state() to the message on a timeout.
func waitForOr(t *testing.T, what string, cond func() bool, state func() string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			if state != nil {
				t.Fatalf("timed out waiting for %s: %s", what, state())
			}
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Local copies outlive the process that wrote them: a new mount over the
// same files directory hashes them again against their manifest, in the
// background, and then hands the kernel the copies without fetching the
// file's blocks. A copy found damaged (cut short, or one bit flipped at
// the same size) is dropped, never served, and the file is read the
// normal way.
func TestLocalCopiesSurviveRestart(t *testing.T) {
	filesDir := filepath.Join(t.TempDir(), "files")
	tree := testTree()
	nar, ls := makeNar(t, tree)
	bigSize := int64(len(tree["share/big"].Data))

	e1 := newEnv(t, Config{FilesDir: filesDir, FilesQuota: 1 << 30})
	base := e1.add(t, "pkg", nar, nar, ls)
	for name, f := range tree {
		if f.Mode.IsRegular() {
			if _, err := os.ReadFile(filepath.Join(e1.dir, base, name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, "local copies", func() bool { return e1.fsys.Stats.LocalCopies.Load() == 1 })
	if fi, err := os.Stat(filesDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("files directory: %v %v, want mode 0700", fi.Mode(), err)
	}
	if err := os.Mkdir(filepath.Join(filesDir, ".tmp-left-by-a-crash"), 0o700); err != nil {
		t.Fatal(err)
	}

	e2 := newEnv(t, Config{FilesDir: filesDir, FilesQuota: 1 << 30})
	e2.add(t, "pkg", nar, nar, ls)
	if _, err := os.Stat(filepath.Join(filesDir, ".tmp-left-by-a-crash")); !os.IsNotExist(err) {
		t.Errorf("unfinished copy not removed at start: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(e2.dir, base)); err != nil {
		t.Fatal(err)
	}
	st := &e2.fsys.Stats
	waitFor(t, "copies checked", func() bool { return st.LocalCopiesChecked.Load() == 1 })
	got, err := os.ReadFile(filepath.Join(e2.dir, base, "share/big"))
	if err != nil || !bytes.Equal(got, tree["share/big"].Data) {
		t.Fatalf("read after restart: %v", err)
	}
	t.Logf("after restart: checked %d, passthrough %d, fell back %d, fetched %d bytes",
		st.LocalCopiesChecked.Load(), st.Passthrough.Load(), st.PassthroughFellBack.Load(), e2.stats.Bytes.Load())
	if st.Passthrough.Load() == 0 {
		t.Fatal("the copies written before the restart were not used")
	}
	if st.PassthroughFellBack.Load() != 0 || e2.stats.Bytes.Load() >= bigSize/10 {
		t.Fatal("reads of a passed-through file reached ipnix")
	}

	for _, damage := range []string{"bit flipped", "cut short"} {
		t.Run(damage, func(t *testing.T) {
			if _, err := os.Stat(filepath.Join(filesDir, narindex.EncodeNix32(sha256Sum(nar)))); err != nil {
				// Written again by the last mount's reads.
				waitFor(t, "copies rewritten", func() bool {
					_, err := os.Stat(filepath.Join(filesDir, narindex.EncodeNix32(sha256Sum(nar))))
					return err == nil
				})
			}
			copies, _ := filepath.Glob(filepath.Join(filesDir, "*", "[0-9]*"))
			if len(copies) == 0 {
				t.Fatal("no copies found")
			}
			for _, c := range copies {
				damageFile(t, c, damage)
			}
			e3 := newEnv(t, Config{FilesDir: filesDir, FilesQuota: 1 << 30})
			e3.add(t, "pkg", nar, nar, ls)
			if _, err := os.Lstat(filepath.Join(e3.dir, base)); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "damaged copies dropped", func() bool { return e3.fsys.Stats.LocalCopiesDropped.Load() == 1 })
			got, err := os.ReadFile(filepath.Join(e3.dir, base, "share/big"))
			if err != nil || !bytes.Equal(got, tree["share/big"].Data) {
				t.Fatalf("read with a damaged copy: %v", err)
			}
			if e3.fsys.Stats.Passthrough.Load() != 0 {
				t.Fatal("a damaged copy was offered for passthrough")
			}
			for _, c := range copies {
				if _, err := os.Stat(c); err == nil {
					t.Fatalf("damaged copy %s kept", c)
				}
			}
			// Reading everything verifies the NAR again and writes fresh copies.
			for name, f := range tree {
				if f.Mode.IsRegular() {
					if _, err := os.ReadFile(filepath.Join(e3.dir, base, name)); err != nil {
						t.Fatal(err)
					}
				}
			}
			waitFor(t, "fresh copies", func() bool { return e3.fsys.Stats.LocalCopies.Load() == 1 })
		})
	}
}

func sha256Sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

func damageFile(t *testing.T, p, how string) {
	t.Helper()
	switch how {
	case "cut short":
		if err := os.Truncate(p, 1000); err != nil {
			t.Fatal(err)
		}
	case "bit flipped":
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 1
		if err := os.Chmod(p, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o400); err != nil {
			t.Fatal(err)
		}
	}
}

// The files directory is trimmed to its quota at start, oldest first.
func TestLocalCopiesQuotaAtStart(t *testing.T) {
	dir := t.TempDir()
	var names []string
	for i := range 3 {
		name := narindex.EncodeNix32(bytes.Repeat([]byte{byte(i + 1)}, 32))
		names = append(names, name)
		p := filepath.Join(dir, name)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "0"), make([]byte, 100), 0o400); err != nil {
			t.Fatal(err)
		}
		when := time.Unix(int64(1000+i), 0)
		os.Chtimes(p, when, when)
	}
	fl, err := openFiles(dir, 250, slog.New(slog.DiscardHandler), &Stats{})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.close()
	if _, err := os.Stat(filepath.Join(dir, names[0])); !os.IsNotExist(err) {
		t.Error("the least recently used copies were kept over quota")
	}
	for _, n := range names[1:] {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			t.Errorf("copies %s removed under quota: %v", n, err)
		}
	}
	if fl.used != 200 {
		t.Errorf("used %d bytes, want 200", fl.used)
	}
}

// Reads that finish out of order (the kernel's concurrent read-ahead) still
// feed the hash in one pass: leaves ahead of the frontier are kept for it.
func TestVerifyStreamsOutOfOrder(t *testing.T) {
	e := newEnvCache(t, Config{EagerVerifyBytes: -1, Readahead: -1}, 512<<10)
	data := pattern(4<<20+3, 7)
	tree := fstest.MapFS{"a": {Data: data, Mode: 0o444}}
	nar, ls := makeNar(t, tree)
	base := e.add(t, "pkg", nar, nar, ls)
	f, err := os.Open(filepath.Join(e.dir, base, "a"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Back to front, one block at a time.
	const chunk = 256 << 10
	got := make([]byte, len(data))
	for off := (len(data) - 1) / chunk * chunk; off >= 0; off -= chunk {
		n, err := f.ReadAt(got[off:min(off+chunk, len(data))], int64(off))
		if err != nil && n < min(chunk, len(data)-off) {
			t.Fatalf("read at %d: %v", off, err)
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatal("wrong bytes")
	}
	if e.fsys.Stats.Verified.Load() != 1 {
		t.Fatal("not verified after reading everything")
	}
	blocks := int64(len(nar)+chunk-1) / chunk
	if got := e.stats.Blocks.Load(); got > blocks+2 {
		t.Fatalf("fetched %d blocks for a %d-leaf NAR: verification re-read it", got, blocks)
	}
}

// readAllWantEIO reads every non-empty file of tree under root, as the
// reader that brings a wrong NAR's last bytes does, and wants EIO.
func readAllWantEIO(t *testing.T, root string, tree fstest.MapFS) {
	t.Helper()
	var readErr error
	for name, f := range tree {
		if f.Mode.IsRegular() && len(f.Data) > 0 {
			if _, err := os.ReadFile(filepath.Join(root, name)); err != nil {
				readErr = err
			}
		}
	}
	if !errors.Is(readErr, syscall.EIO) {
		t.Fatalf("reading everything: %v, want EIO", readErr)
	}
}
