package fusefs

import (
	"bytes"
	"context"
	"errors"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipnix/ipnix/narindex"
)

// addUnsigned publishes nar as e.add does, but as a narinfo without a
// trusted IpfsCidSig: the resolver hands over no listing (a lying one is
// passed here to show it is not used).
func (e *env) addUnsigned(t *testing.T, name string, nar, narHashOf, listing []byte) string {
	t.Helper()
	base := e.add(t, name, nar, narHashOf, listing)
	e.res.mu.Lock()
	e.res.paths[base].CidSigned = false
	e.res.mu.Unlock()
	return base
}

// A path without a trusted CID signature is fetched whole and checked
// against NarHash before anything of it is shown; its listing is the one
// parsed from those bytes, whatever the substituter offered.
func TestUnsignedCidVerifiedWholeFirst(t *testing.T) {
	e := newEnv(t, Config{Readahead: -1})
	tree := testTree()
	nar, ls := makeNar(t, tree)
	lie, _ := narindex.ParseListing(ls)
	lie.Root.Entries["lib"].Entries["link-rel"].Target = "/tmp/evil"
	lieData, _ := lie.Marshal()
	base := e.addUnsigned(t, "pkg", nar, nar, lieData)
	target, err := os.Readlink(filepath.Join(e.dir, base, "lib/link-rel"))
	if err != nil || target != "../share/doc/readme" {
		t.Fatalf("readlink = %q, %v", target, err)
	}
	if e.fsys.Stats.VerifiedWhole.Load() != 1 {
		t.Fatal("shown before the whole NAR was verified")
	}
	got, err := os.ReadFile(filepath.Join(e.dir, base, "share/big"))
	if err != nil || !bytes.Equal(got, tree["share/big"].Data) {
		t.Fatalf("read: %v", err)
	}

	// The CID of a same-size evil NAR under a narinfo without IpfsCidSig:
	// refused at lookup, nothing of it ever shown.
	l, _ := narindex.ParseListing(ls)
	big, _ := l.Lookup("share/big")
	evil := bytes.Clone(nar)
	evil[big.NarOffset+7] ^= 0xff
	bad := e.addUnsignedNamed(t, "evil", evil, nar, ls)
	if _, err := os.Lstat(filepath.Join(e.dir, bad)); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("lookup of an unsigned CID of the wrong NAR: %v, want ENOENT", err)
	}
	if _, err := os.ReadFile(filepath.Join(e.dir, bad, "share/big")); err == nil {
		t.Fatal("a byte of the evil NAR was served")
	}
}

func (e *env) addUnsignedNamed(t *testing.T, name string, nar, narHashOf, listing []byte) string {
	t.Helper()
	e.res.mu.Lock()
	for k := range e.res.paths {
		delete(e.res.paths, k) // one name per hash in this fixture
	}
	e.res.mu.Unlock()
	return e.addUnsigned(t, name, nar, narHashOf, listing)
}

// After a quarantine the kernel holds nothing of the path: symlink
// targets, attributes and names looked up before all answer EIO, and the
// path is gone from the root's listing.
func TestQuarantineForgetsKernelCaches(t *testing.T) {
	e := newEnv(t, Config{Readahead: -1})
	if e.fsys.notify.Load() == nil {
		t.Fatal("no FUSE device for invalidations: go-fuse's Server or Inode fields changed (see notify.go)")
	}
	tree := testTree()
	nar, ls := makeNar(t, tree)
	l, _ := narindex.ParseListing(ls)
	big, _ := l.Lookup("share/big")
	bad := bytes.Clone(nar)
	bad[big.NarOffset+12345] ^= 1
	base := e.add(t, "pkg", bad, nar, ls)
	root := filepath.Join(e.dir, base)
	// Fill the kernel's caches: a symlink target, attributes, names.
	if target, err := os.Readlink(filepath.Join(root, "lib/link-rel")); err != nil || target != "../share/doc/readme" {
		t.Fatalf("readlink before: %q %v", target, err)
	}
	for _, name := range []string{"bin/tool", "share/doc/deep/file", "empty-dir"} {
		if _, err := os.Stat(filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.ReadDir(filepath.Join(root, "lib")); err != nil {
		t.Fatal(err)
	}
	readAllWantEIO(t, root, tree)
	if _, err := os.Readlink(filepath.Join(root, "lib/link-rel")); err == nil {
		t.Fatal("readlink still answered after the quarantine")
	}
	for _, name := range []string{"", "bin/tool", "share/doc/deep/file", "empty-dir", "lib"} {
		if _, err := os.Stat(filepath.Join(root, name)); err == nil {
			t.Fatalf("stat %q still answered after the quarantine", name)
		}
	}
	if _, err := os.ReadDir(filepath.Join(root, "lib")); err == nil {
		t.Fatal("directory still listed after the quarantine")
	}
	ents, err := os.ReadDir(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range ents {
		if de.Name() == base {
			t.Fatal("quarantined path still in the root's listing")
		}
	}
}

// A refused store path is remembered: the resolver is not asked again
// for it within the TTL, and the reason is logged once.
func TestRefusalRemembered(t *testing.T) {
	e := newEnv(t, Config{})
	tree := testTree()
	nar, ls := makeNar(t, tree)
	wrongSize := append(bytes.Clone(nar), 0) // the CID's size is not NarSize
	base := e.add(t, "pkg", wrongSize, nar, ls)
	ctx := context.Background()
	for i := range 3 {
		_, err := e.fsys.storePath(ctx, base)
		if !errors.Is(err, narindex.ErrRejected) {
			t.Fatalf("lookup %d: %v, want a rejection", i, err)
		}
		if remembered := errors.Is(err, narindex.ErrRemembered); remembered != (i > 0) {
			t.Fatalf("lookup %d: remembered=%v", i, remembered)
		}
	}
	if e.res.calls != 1 {
		t.Fatalf("resolver asked %d times, want 1", e.res.calls)
	}
}

// blockingResolver holds every resolution until release is closed.
type blockingResolver struct {
	*fakeResolver
	release chan struct{}
}

func (r *blockingResolver) Resolve(ctx context.Context, base string) (*narindex.Resolved, error) {
	select {
	case <-r.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return r.fakeResolver.Resolve(ctx, base)
}

// Concurrent lookups of one name share one resolution, which must not run
// under the first caller's context: an interrupted lookup fails alone.
func TestInterruptedLookupFailsAlone(t *testing.T) {
	e := newEnv(t, Config{})
	tree := testTree()
	nar, ls := makeNar(t, tree)
	base := e.add(t, "pkg", nar, nar, ls)
	br := &blockingResolver{fakeResolver: e.res, release: make(chan struct{})}
	e.fsys.cfg.Resolver = br

	first, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var err1, err2 error
	wg.Add(2)
	go func() { defer wg.Done(); _, err1 = e.fsys.storePath(first, base) }()
	time.Sleep(50 * time.Millisecond) // the first caller starts the shared work
	go func() { defer wg.Done(); _, err2 = e.fsys.storePath(context.Background(), base) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	time.Sleep(50 * time.Millisecond)
	close(br.release)
	wg.Wait()
	if !errors.Is(err1, context.Canceled) {
		t.Errorf("interrupted lookup: %v, want context.Canceled", err1)
	}
	if err2 != nil {
		t.Errorf("the other lookup failed with the first one: %v", err2)
	}
}

// Listings are bounded: past ListingMemory, the listing of an idle path
// is offered back to the kernel and dropped once forgotten; its next
// lookup finds it again, intact.
func TestIdleListingsDropped(t *testing.T) {
	e := newEnv(t, Config{ListingMemory: 1})
	e.fsys.idleFor = 0
	tree := testTree()
	nar, ls := makeNar(t, tree)
	first := e.add(t, "first", nar, nar, ls)
	e.res.mu.Lock()
	res := e.res.paths[first]
	second := "1c6kzph7l0dcbfmjap64f0czdafn3b7x-second"
	e.res.paths[second] = res // same NAR, another name
	e.res.mu.Unlock()
	if _, err := os.ReadFile(filepath.Join(e.dir, first, "share/doc/readme")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	if _, err := os.Lstat(filepath.Join(e.dir, second)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the idle path's listing dropped", func() bool {
		e.fsys.mu.Lock()
		defer e.fsys.mu.Unlock()
		_, kept := e.fsys.paths[first]
		return !kept && e.fsys.Stats.ListingsDropped.Load() >= 1
	})
	e.res.mu.Lock()
	calls := e.res.calls
	e.res.mu.Unlock()
	got, err := os.ReadFile(filepath.Join(e.dir, first, "share/doc/readme"))
	if err != nil || string(got) != "read me\n" {
		t.Fatalf("read after the listing was dropped: %q %v", got, err)
	}
	e.res.mu.Lock()
	defer e.res.mu.Unlock()
	if e.res.calls == calls {
		t.Fatal("the dropped path was not resolved again")
	}
}

// Closures given at start are loaded before anything is looked up: the
// root lists them (with . and ..) at once, and they stay listed.
func TestPreloadListsClosure(t *testing.T) {
	e := newEnv(t, Config{})
	nar, ls := makeNar(t, testTree())
	first := e.add(t, "first", nar, nar, ls)
	e.res.mu.Lock()
	res := *e.res.paths[first]
	res.Path, _ = narindex.ParseStorePathBase(first)
	second := res
	second.Path, _ = narindex.ParseStorePathBase("1c6kzph7l0dcbfmjap64f0czdafn3b7x-second")
	e.res.calls = 0
	e.res.mu.Unlock()
	if err := e.fsys.Preload(context.Background(), []*narindex.Resolved{&res, &second}, 2); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ls", "-a", e.dir).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Fields(string(out)), []string{".", "..", first, second.Path.Base()}; !slices.Equal(got, want) {
		t.Fatalf("ls -a of the root: %q, want %q", got, want)
	}
	if _, err := os.ReadFile(filepath.Join(e.dir, second.Path.Base(), "share/doc/readme")); err != nil {
		t.Fatal(err)
	}
	e.res.mu.Lock()
	defer e.res.mu.Unlock()
	if e.res.calls != 0 {
		t.Fatalf("preloaded paths resolved again %d times", e.res.calls)
	}
}

// The root has an empty, read-only .links, as Nix wants in a store it
// opens for writing (a local-overlay store's lower store, load-db).
func TestRootLinksDir(t *testing.T) {
	e := newEnv(t, Config{})
	fi, err := os.Stat(filepath.Join(e.dir, ".links"))
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o555 {
		t.Fatalf(".links: %v %v", fi, err)
	}
	ents, err := os.ReadDir(filepath.Join(e.dir, ".links"))
	if err != nil || len(ents) != 0 {
		t.Fatalf(".links lists %v, %v", ents, err)
	}
	if err := os.Mkdir(filepath.Join(e.dir, ".links", "x"), 0o755); err == nil {
		t.Fatal(".links is writable")
	}
	var root, links syscall.Stat_t
	syscall.Stat(e.dir, &root)
	syscall.Stat(filepath.Join(e.dir, ".links"), &links)
	if root.Ino == links.Ino {
		t.Fatal(".links has the root's inode number")
	}
}

// Reads are answered from memory: go-fuse is not asked to splice them
// (before, every 1 MiB read failed to grow a pipe and logged a line).
func TestNoSpliceAttempts(t *testing.T) {
	var logged bytes.Buffer
	log.SetOutput(&logged)
	t.Cleanup(func() { log.SetOutput(os.Stderr) })
	e := newEnv(t, Config{})
	tree := testTree()
	nar, ls := makeNar(t, tree)
	base := e.add(t, "pkg", nar, nar, ls)
	f, err := os.Open(filepath.Join(e.dir, base, "share/big"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Read(buf); err != nil {
			break
		}
	}
	if strings.Contains(logged.String(), "trySplice") {
		t.Fatalf("go-fuse tried to splice:\n%s", logged.String())
	}
}
