package prefetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/cache"
	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
	"github.com/ipnix/ipnix/narindex"
)

// fakeClosure is a resolver over made-up store paths whose "NARs" are
// random bytes imported into an in-memory block store.
type fakeClosure struct {
	paths map[string]*narindex.Resolved
	data  map[string][]byte
	calls int
}

func (f *fakeClosure) Closure(ctx context.Context, roots []string, workers int) ([]*narindex.Resolved, error) {
	f.calls++
	var out []*narindex.Resolved
	seen := map[string]bool{}
	var visit func(string) error
	visit = func(base string) error {
		if seen[base] {
			return nil
		}
		seen[base] = true
		r := f.paths[base]
		if r == nil {
			return fmt.Errorf("%s: %w", base, narindex.ErrNotFound)
		}
		for _, ref := range r.Info.References {
			if err := visit(ref); err != nil {
				return err
			}
		}
		out = append(out, r)
		return nil
	}
	for _, root := range roots {
		if err := visit(root); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// storeBase makes a valid store path base name from a short name.
func storeBase(name string) string {
	const alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
	h := sha256.Sum256([]byte(name))
	var b strings.Builder
	for i := range 32 {
		b.WriteByte(alphabet[int(h[i])%32])
	}
	return b.String() + "-" + name
}

// add puts a path of size bytes referring to refs into st and f.
func (f *fakeClosure) add(t *testing.T, st *fetchtest.Store, name string, size int, cidSigned bool, refs ...string) string {
	t.Helper()
	data := make([]byte, size)
	rng := rand.NewChaCha8([32]byte([]byte(fmt.Sprintf("%-32s", name))))
	rng.Read(data)
	c, err := st.AddFile(data, fetchtest.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	base := storeBase(name)
	var refBases []string
	for _, r := range refs {
		refBases = append(refBases, storeBase(r))
	}
	sum := sha256.Sum256(data)
	sp, _ := narindex.ParseStorePathBase(base)
	f.paths[base] = &narindex.Resolved{Path: sp, CidSigned: cidSigned, Info: &narindex.NarInfo{
		StorePath: sp.String(), NarHash: narindex.SHA256(sum[:]), NarSize: uint64(size), IpfsCid: c.String(), References: refBases}}
	f.data[base] = data
	return base
}

type env struct {
	st   *fetchtest.Store
	fc   *fakeClosure
	dir  string
	top  string
	libs []string
}

// cacheDir is a temporary directory removed after the test once nothing
// writes to it any more: a fetch shared through the store outlives the
// run that failed (it fills the store for the next reader).
func cacheDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "prefetch-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i := 0; ; i++ {
			err := os.RemoveAll(dir)
			if err == nil || i == 50 {
				if err != nil {
					t.Error(err)
				}
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	return dir
}

// newEnv: top -> lib -> base, and an unrelated path other.
func newEnv(t *testing.T) *env {
	e := &env{st: fetchtest.NewStore(), fc: &fakeClosure{paths: map[string]*narindex.Resolved{}, data: map[string][]byte{}}, dir: cacheDir(t)}
	base := e.fc.add(t, e.st, "base", 3<<20+17, true)
	lib := e.fc.add(t, e.st, "lib", 100_000, false, "base")
	e.top = e.fc.add(t, e.st, "top", 700_000, true, "lib", "base", "top")
	e.fc.add(t, e.st, "other", 1<<20, true)
	e.libs = []string{base, lib}
	return e
}

func (e *env) open(t *testing.T, quota int64) *cache.Disk {
	t.Helper()
	d, err := cache.OpenDisk(e.dir, quota, fetch.Verify(e.st, nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func (e *env) run(t *testing.T, d *cache.Disk, batch bool, roots ...string) (*Summary, error) {
	t.Helper()
	var progress bytes.Buffer
	o := Options{Disk: d, Resolver: e.fc, Jobs: 4, Progress: &progress, ProgressEvery: time.Millisecond}
	if batch {
		o.Batch = func(ctx context.Context, f *fetch.File, run []fetch.LeafRange, put func(blocks.Block)) (int, error) {
			// Deliver half the run, then fail: the rest must come block
			// by block.
			n := 0
			for _, l := range run[:len(run)/2] {
				b, err := e.st.GetBlock(ctx, l.Cid)
				if err != nil {
					return n, err
				}
				put(b)
				n++
			}
			return n, errors.New("run cut short")
		}
	}
	s, err := Run(context.Background(), roots, o)
	if err == nil && !strings.Contains(progress.String(), "to fetch") {
		t.Errorf("no progress lines:\n%s", progress.String())
	}
	return s, err
}

// readAll reads a path's NAR from the store alone.
func (e *env) readAll(t *testing.T, base string) []byte {
	t.Helper()
	c, _ := cid.Decode(e.fc.paths[base].Info.IpfsCid)
	f, err := fetch.OpenFile(context.Background(), cache.ReadOnly(e.dir), c)
	if err != nil {
		t.Fatalf("%s from the store alone: %v", base, err)
	}
	buf := make([]byte, f.Size())
	if _, err := f.ReadAt(context.Background(), buf, 0); err != nil {
		t.Fatalf("%s from the store alone: %v", base, err)
	}
	return buf
}

// A prefetch fetches every block of the closure once, pins it, records
// the closure; a second run fetches nothing; the store alone then holds
// every byte.
func TestRunFetchesClosureOnce(t *testing.T) {
	for _, batch := range []bool{false, true} {
		t.Run(fmt.Sprintf("batch=%v", batch), func(t *testing.T) {
			e := newEnv(t)
			d := e.open(t, 1<<30)
			s, err := e.run(t, d, batch, e.top)
			if err != nil {
				t.Fatal(err)
			}
			if s.Paths != 3 || s.Closures != 1 || s.Fetched != s.Blocks || s.Held != 0 || s.VerifiedWhole != 1 {
				t.Fatalf("first run: %+v", s)
			}
			if s.Blocks < 17 || s.FetchedBytes < 3<<20+800_000 {
				t.Fatalf("first run counted %d blocks, %d bytes", s.Blocks, s.FetchedBytes)
			}
			if n, b := d.Pinned(); n != s.Blocks || b != s.Bytes || s.Pinned != b {
				t.Fatalf("pinned %d blocks, %d bytes; summary %+v", n, b, s)
			}
			gets := e.st.Gets.Load()
			s2, err := e.run(t, d, batch, e.top)
			if err != nil {
				t.Fatal(err)
			}
			if s2.Fetched != 0 || s2.FetchedBytes != 0 || s2.Held != s.Blocks || e.st.Gets.Load() != gets {
				t.Fatalf("second run: %+v, %d blocks asked of the source", s2, e.st.Gets.Load()-gets)
			}
			for _, base := range append(e.libs, e.top) {
				if !bytes.Equal(e.readAll(t, base), e.fc.data[base]) {
					t.Fatalf("%s: wrong bytes from the store", base)
				}
			}
			rec, err := LoadRecord(e.dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(rec.Closures) != 1 || rec.Closures[0].Root != e.top || len(rec.Closures[0].Paths) != 3 {
				t.Fatalf("record: %+v", rec)
			}
			sts, err := Status(context.Background(), e.dir, rec)
			if err != nil {
				t.Fatal(err)
			}
			if !sts[0].Complete || sts[0].Present != sts[0].Blocks || sts[0].Pinned != sts[0].Blocks || sts[0].PresentBytes != sts[0].Bytes {
				t.Fatalf("status: %+v", sts[0])
			}
		})
	}
}

// An interrupted prefetch is resumed: what it stored is not fetched
// again, and stats says the closure is incomplete until then.
func TestRunResumes(t *testing.T) {
	e := newEnv(t)
	d := e.open(t, 1<<30)
	// The source dies after a few blocks.
	var served atomic.Int64
	e.st.SetDelay(func(cid.Cid) { served.Add(1) })
	dead := errors.New("source gone")
	bg := fetch.BlockGetterFunc(func(ctx context.Context, c cid.Cid) (blocks.Block, error) {
		if served.Load() >= 8 {
			return nil, dead
		}
		return e.st.GetBlock(ctx, c)
	})
	d2, err := cache.OpenDisk(e.dir, 1<<30, fetch.Verify(bg, nil))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Run(context.Background(), []string{e.top}, Options{Disk: d2, Resolver: e.fc, Jobs: 1})
	if !errors.Is(err, dead) {
		t.Fatalf("run with a dying source: %v", err)
	}
	d2.Close()
	rec, _ := LoadRecord(e.dir)
	sts, err := Status(context.Background(), e.dir, rec)
	if err != nil {
		t.Fatal(err)
	}
	if len(sts) != 1 || sts[0].Complete || sts[0].Missing == "" || sts[0].Present == 0 {
		t.Fatalf("status of an interrupted prefetch: %+v", sts)
	}
	e.st.SetDelay(nil)
	s, err := e.run(t, d, false, e.top)
	if err != nil {
		t.Fatal(err)
	}
	if s.Held == 0 || s.Fetched == 0 || s.Held+s.Fetched != s.Blocks {
		t.Fatalf("resumed: %+v", s)
	}
}

// A closure that does not fit beside what is pinned is refused before
// its leaves are fetched; nothing pinned is evicted.
func TestRunRefusesWhatDoesNotFit(t *testing.T) {
	e := newEnv(t)
	d := e.open(t, 4<<20) // top's closure needs ~3.8 MiB
	other := storeBase("other")
	if _, err := e.run(t, d, false, other); err != nil {
		t.Fatal(err)
	}
	_, pinned := d.Pinned()
	gets := e.st.Gets.Load()
	_, err := e.run(t, d, false, e.top)
	var nr *NoRoomError
	if !errors.As(err, &nr) || nr.Pinned != pinned || nr.Quota != 4<<20 || nr.Need < 3<<20 {
		t.Fatalf("over quota: %v (%+v)", err, nr)
	}
	if got := e.st.Gets.Load() - gets; got > 10 {
		t.Fatalf("fetched %d blocks before refusing (inner nodes only expected)", got)
	}
	if _, p := d.Pinned(); p != pinned {
		t.Fatalf("pinned bytes went from %d to %d", pinned, p)
	}
	rec, _ := LoadRecord(e.dir)
	if rec.Find(e.top) != nil {
		t.Fatal("a refused closure was recorded")
	}
	for _, c := range []string{other} {
		if !bytes.Equal(e.readAll(t, c), e.fc.data[c]) {
			t.Fatal("the prefetched closure lost bytes")
		}
	}
}

// A path without a trusted IpfsCidSig whose NAR does not match NarHash
// fails the prefetch and leaves the record.
func TestRunChecksNarHashOfUnsignedCids(t *testing.T) {
	e := newEnv(t)
	d := e.open(t, 1<<30)
	lib := e.libs[1]
	e.fc.paths[lib].Info.NarHash = narindex.SHA256(make([]byte, 32))
	_, err := e.run(t, d, false, e.top)
	if err == nil || !strings.Contains(err.Error(), "NarHash") || !strings.Contains(err.Error(), lib) {
		t.Fatalf("wrong NarHash: %v", err)
	}
	if rec, _ := LoadRecord(e.dir); rec.Find(e.top) != nil {
		t.Fatal("a closure with a bad NAR stayed recorded")
	}
}

// A CID holding another size than NarSize is refused, as a mount refuses
// it.
func TestRunRefusesWrongSize(t *testing.T) {
	e := newEnv(t)
	d := e.open(t, 1<<30)
	e.fc.paths[e.libs[0]].Info.NarSize++
	if _, err := e.run(t, d, false, e.top); err == nil || !strings.Contains(err.Error(), "NarSize") {
		t.Fatalf("wrong NarSize: %v", err)
	}
}

// gc keeps the blocks of prefetched closures and recent blocks, and drops
// the rest; forgetting a closure lets its blocks go.
func TestCollect(t *testing.T) {
	e := newEnv(t)
	d := e.open(t, 1<<30)
	if _, err := e.run(t, d, false, e.top); err != nil {
		t.Fatal(err)
	}
	// Blocks a mount read: "other", not prefetched.
	oc, _ := cid.Decode(e.fc.paths[storeBase("other")].Info.IpfsCid)
	f, err := fetch.OpenFile(context.Background(), d, oc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(context.Background(), make([]byte, f.Size()), 0); err != nil {
		t.Fatal(err)
	}
	_, pinnedBytes := d.Pinned()
	total := d.Bytes()
	if _, _, err := Collect(context.Background(), e.dir, 0, nil); !errors.Is(err, cache.ErrInUse) {
		t.Fatalf("gc with the store open: %v", err)
	}
	d.Close()
	// Recent: everything stays.
	r, _, err := Collect(context.Background(), e.dir, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Removed != 0 || r.KeptBytes != total || r.NeededBytes != pinnedBytes {
		t.Fatalf("gc keeping an hour: %+v (total %d, pinned %d)", r, total, pinnedBytes)
	}
	// Nothing recent: only the closure stays, and reads whole.
	r, rec, err := Collect(context.Background(), e.dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.RemovedBytes != total-pinnedBytes || r.KeptBytes != pinnedBytes || len(rec.Closures) != 1 {
		t.Fatalf("gc keeping nothing recent: %+v (total %d, pinned %d)", r, total, pinnedBytes)
	}
	for _, base := range append(e.libs, e.top) {
		if !bytes.Equal(e.readAll(t, base), e.fc.data[base]) {
			t.Fatalf("%s lost bytes to gc", base)
		}
	}
	if _, err := fetch.OpenFile(context.Background(), cache.ReadOnly(e.dir), oc); !errors.Is(err, fetch.ErrBlockNotFound) {
		t.Fatalf("blocks of a path not prefetched survived gc: %v", err)
	}
	// Forgetting an unknown closure changes nothing.
	if _, _, err := Collect(context.Background(), e.dir, 0, []string{storeBase("nope")}); err == nil || !strings.Contains(err.Error(), "not a prefetched closure") {
		t.Fatalf("forgetting an unknown closure: %v", err)
	}
	if u, _ := cache.Scan(e.dir); u.Bytes != pinnedBytes {
		t.Fatalf("a refused forget changed the store: %d bytes", u.Bytes)
	}
	// Forgotten: its blocks go.
	r, rec, err = Collect(context.Background(), e.dir, 0, []string{e.top})
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Closures) != 0 || r.Kept != 0 || r.RemovedBytes != pinnedBytes || r.Unpinned != r.Removed {
		t.Fatalf("gc after forgetting: %+v", r)
	}
}
