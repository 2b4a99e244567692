package integrity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
	"testing/fstest"

	"github.com/ipnix/ipnix/narindex"
)

// testNar is a small NAR with a directory, files (one executable, one
// empty), a symlink, and its true listing and hash.
type testNar struct {
	data    []byte
	hash    narindex.Hash
	listing *narindex.Listing
}

func makeNar(t *testing.T) testNar {
	t.Helper()
	tree := fstest.MapFS{
		"bin/run":       {Data: bytes.Repeat([]byte("#!run\n"), 3000), Mode: 0o555},
		"share/a.txt":   {Data: []byte("hello\n"), Mode: 0o444},
		"share/b.bin":   {Data: bytes.Repeat([]byte{7}, 100_000), Mode: 0o444},
		"share/empty":   {Data: nil, Mode: 0o444},
		"share/link":    {Data: []byte("a.txt"), Mode: 0o777 | 1<<27}, // fs.ModeSymlink
		"lib/x/deep.so": {Data: []byte("deep"), Mode: 0o444},
	}
	var buf bytes.Buffer
	if err := narindex.DumpFS(&buf, tree, "."); err != nil {
		t.Fatal(err)
	}
	l, err := narindex.ListingFromNar(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	return testNar{data: buf.Bytes(), hash: narindex.SHA256(sum[:]), listing: l}
}

// readerOf serves the NAR and counts the bytes it was asked for.
func readerOf(data []byte, count *int64) ReadAtFunc {
	return func(ctx context.Context, p []byte, off int64) (int, error) {
		n := copy(p, data[off:])
		*count += int64(n)
		return n, nil
	}
}

func failRead(t *testing.T) ReadAtFunc {
	return func(ctx context.Context, p []byte, off int64) (int, error) {
		t.Errorf("Verify read %d bytes at %d; streaming should have brought them", len(p), off)
		return 0, errors.New("unexpected read")
	}
}

// regularFiles lists the served listing's non-empty regular files.
func regularFiles(l *narindex.Listing) []*narindex.ListingNode {
	var out []*narindex.ListingNode
	var walk func(n *narindex.ListingNode)
	walk = func(n *narindex.ListingNode) {
		if n.Type == narindex.TypeRegular && n.Size > 0 {
			out = append(out, n)
		}
		for _, e := range n.Entries {
			walk(e)
		}
	}
	walk(l.Root)
	return out
}

func chunks(data []byte, size int) (starts []int64, pieces [][]byte) {
	for off := 0; off < len(data); off += size {
		end := min(off+size, len(data))
		starts = append(starts, int64(off))
		pieces = append(pieces, data[off:end])
	}
	return
}

func TestVerifyStreamedInOrder(t *testing.T) {
	n := makeNar(t)
	c := New(n.hash, int64(len(n.data)), 0, nil)
	c.Serve(n.listing)
	starts, pieces := chunks(n.data, 4096)
	for i := range starts {
		c.OnLeaf(starts[i], pieces[i])
	}
	files := regularFiles(n.listing)
	for i, f := range files {
		last := c.NoteRead(f, 0, f.Size)
		if want := i == len(files)-1; last != want {
			t.Fatalf("NoteRead of file %d/%d reported %v", i+1, len(files), last)
		}
	}
	if now, err := c.Verify(context.Background(), failRead(t)); err != nil || !now {
		t.Fatalf("Verify = %v, %v", now, err)
	}
	if now, err := c.Verify(context.Background(), failRead(t)); err != nil || now {
		t.Fatalf("second Verify = %v, %v", now, err)
	}
	if c.State() != Verified {
		t.Fatalf("state %v", c.State())
	}
	if p := ListingDiff(c.Parsed().Root, n.listing.Root); p != "" {
		t.Fatalf("parsed listing differs at %s", p)
	}
	if c.Quarantine() || c.State() != Verified {
		t.Fatal("a verified path was quarantined")
	}
}

func TestVerifyStreamedOutOfOrder(t *testing.T) {
	n := makeNar(t)
	c := New(n.hash, int64(len(n.data)), 0, nil)
	c.Serve(n.listing)
	starts, pieces := chunks(n.data, 1000)
	for i := len(starts) - 1; i >= 0; i-- { // all but the first arrive early
		c.OnLeaf(starts[i], pieces[i])
	}
	if _, err := c.Verify(context.Background(), failRead(t)); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyReadsWhatStreamingMissed(t *testing.T) {
	n := makeNar(t)
	c := New(n.hash, int64(len(n.data)), 0, nil)
	c.Serve(n.listing)
	c.OnLeaf(0, n.data[:5000])
	var read int64
	if _, err := c.Verify(context.Background(), readerOf(n.data, &read)); err != nil {
		t.Fatal(err)
	}
	if want := int64(len(n.data) - 5000); read != want {
		t.Fatalf("read %d bytes, want %d", read, want)
	}
}

// Without a served listing (a path verified whole before anything of it
// is served), the listing comes from the NAR itself.
func TestVerifyWholeGivesListing(t *testing.T) {
	n := makeNar(t)
	c := New(n.hash, int64(len(n.data)), 0, nil)
	var read int64
	if _, err := c.Verify(context.Background(), readerOf(n.data, &read)); err != nil {
		t.Fatal(err)
	}
	if p := ListingDiff(c.Parsed().Root, n.listing.Root); p != "" {
		t.Fatalf("parsed listing differs at %s", p)
	}
}

func TestHashMismatchQuarantines(t *testing.T) {
	n := makeNar(t)
	bad := bytes.Clone(n.data)
	bad[len(bad)/2] ^= 1
	c := New(n.hash, int64(len(bad)), 0, nil)
	c.Serve(n.listing)
	var read int64
	now, err := c.Verify(context.Background(), readerOf(bad, &read))
	if !errors.Is(err, ErrQuarantined) || !now {
		t.Fatalf("Verify = %v, %v; want the call that quarantines", now, err)
	}
	now, err = c.Verify(context.Background(), readerOf(n.data, &read))
	if !errors.Is(err, ErrQuarantined) || now {
		t.Fatalf("second Verify = %v, %v", now, err)
	}
	if c.State() != Quarantined || c.NoteRead(regularFiles(n.listing)[0], 0, 1) {
		t.Fatal("quarantine did not stick")
	}
}

// The NAR is genuine, the listing served beside it lies: every kind of lie
// is caught.
func TestServedListingLiesQuarantine(t *testing.T) {
	lies := map[string]func(l *narindex.Listing){
		"symlink target": func(l *narindex.Listing) { l.Root.Entries["share"].Entries["link"].Target = "/tmp/evil" },
		"exec bit":       func(l *narindex.Listing) { l.Root.Entries["share"].Entries["a.txt"].Executable = true },
		"offset":         func(l *narindex.Listing) { l.Root.Entries["bin"].Entries["run"].NarOffset += 8 },
		"size":           func(l *narindex.Listing) { l.Root.Entries["share"].Entries["a.txt"].Size-- },
		"extra entry": func(l *narindex.Listing) {
			l.Root.Entries["bin"].Entries["sh"] = &narindex.ListingNode{Type: narindex.TypeSymlink, Target: "/bin/sh"}
		},
		"missing entry": func(l *narindex.Listing) { delete(l.Root.Entries["lib"].Entries, "x") },
		"root symlink": func(l *narindex.Listing) {
			l.Root = &narindex.ListingNode{Type: narindex.TypeSymlink, Target: "/tmp"}
		},
		"type": func(l *narindex.Listing) {
			l.Root.Entries["share"].Entries["empty"] = &narindex.ListingNode{Type: narindex.TypeDirectory, Entries: map[string]*narindex.ListingNode{}}
		},
	}
	for name, lie := range lies {
		t.Run(name, func(t *testing.T) {
			n := makeNar(t)
			lied, err := narindex.ListingFromNar(bytes.NewReader(n.data))
			if err != nil {
				t.Fatal(err)
			}
			lie(lied)
			c := New(n.hash, int64(len(n.data)), 0, nil)
			c.Serve(lied)
			var read int64
			now, err := c.Verify(context.Background(), readerOf(n.data, &read))
			if !errors.Is(err, ErrQuarantined) || !now {
				t.Fatalf("Verify = %v, %v", now, err)
			}
		})
	}
}

// Bytes that hash to the signed NarHash but are no NAR are refused too.
func TestSignedGarbageQuarantines(t *testing.T) {
	junk := bytes.Repeat([]byte("not a nar "), 1000)
	sum := sha256.Sum256(junk)
	c := New(narindex.SHA256(sum[:]), int64(len(junk)), 0, nil)
	var read int64
	if _, err := c.Verify(context.Background(), readerOf(junk, &read)); !errors.Is(err, ErrQuarantined) {
		t.Fatalf("Verify = %v", err)
	}
}

// A read that fails is not a verdict; the next call picks up where the
// failed one stopped, without reading anything twice.
func TestReadFailureKeepsProgress(t *testing.T) {
	n := makeNar(t)
	c := New(n.hash, int64(len(n.data)), 0, nil)
	c.Serve(n.listing)
	var read int64
	calls := 0
	flaky := func(ctx context.Context, p []byte, off int64) (int, error) {
		calls++
		if calls == 1 {
			m := copy(p[:len(p)/3], n.data[off:])
			read += int64(m)
			return m, errors.New("source went away")
		}
		return readerOf(n.data, &read)(ctx, p, off)
	}
	if _, err := c.Verify(context.Background(), flaky); err == nil || errors.Is(err, ErrQuarantined) {
		t.Fatalf("first Verify = %v; want the read error", err)
	}
	if c.State() != Unverified {
		t.Fatalf("state %v after a read error", c.State())
	}
	// Streaming resumes after a failed Verify.
	if _, err := c.Verify(context.Background(), flaky); err != nil {
		t.Fatal(err)
	}
	if read != int64(len(n.data)) {
		t.Fatalf("read %d bytes in all for a %d-byte NAR", read, len(n.data))
	}
}

func TestVerifyHonoursContext(t *testing.T) {
	n := makeNar(t)
	c := New(n.hash, int64(len(n.data)), 0, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var read int64
	if _, err := c.Verify(ctx, readerOf(n.data, &read)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Verify = %v", err)
	}
	if c.State() != Unverified {
		t.Fatal("cancelled Verify changed the state")
	}
}

func TestShortNarQuarantinesNotHangs(t *testing.T) {
	n := makeNar(t)
	c := New(n.hash, int64(len(n.data))+10, 0, nil)
	var read int64
	_, err := c.Verify(context.Background(), readerOf(n.data, &read))
	if err == nil {
		t.Fatal("a NAR shorter than NarSize verified")
	}
}

func TestCoverage(t *testing.T) {
	var c coverage
	steps := []struct {
		lo, hi int64
		done   bool
	}{{10, 20, false}, {30, 40, false}, {0, 10, false}, {20, 30, false}, {40, 50, true}}
	for i, s := range steps {
		if got := c.add(s.lo, s.hi, 50); got != s.done {
			t.Fatalf("step %d [%d,%d): done=%v", i, s.lo, s.hi, got)
		}
	}
}

func TestNoteReadNeedsEveryByte(t *testing.T) {
	n := makeNar(t)
	c := New(n.hash, int64(len(n.data)), 0, nil)
	c.Serve(n.listing)
	files := regularFiles(n.listing)
	for _, f := range files {
		if c.NoteRead(f, 0, f.Size-1) {
			t.Fatal("all read with a byte missing")
		}
	}
	for i, f := range files {
		got := c.NoteRead(f, f.Size-1, f.Size)
		if want := i == len(files)-1; got != want {
			t.Fatalf("file %d: %v", i, got)
		}
	}
}

func ExampleListingDiff() {
	a := &narindex.ListingNode{Type: narindex.TypeDirectory, Entries: map[string]*narindex.ListingNode{
		"bin": {Type: narindex.TypeSymlink, Target: "x"},
	}}
	b := &narindex.ListingNode{Type: narindex.TypeDirectory, Entries: map[string]*narindex.ListingNode{
		"bin": {Type: narindex.TypeSymlink, Target: "/tmp"},
	}}
	fmt.Println(ListingDiff(a, b))
	// Output: /bin
}

// Leaves kept ahead of the frontier come out of one budget shared by all
// checkers: many paths read from the middle cannot hold many times it.
// What does not fit is read again by Verify; the budget comes back.
func TestAheadBudgetShared(t *testing.T) {
	n := makeNar(t)
	size := int64(len(n.data)) - 1000 // what the first checker keeps
	budget := NewBudget(size)
	a := New(n.hash, int64(len(n.data)), 0, budget)
	b := New(n.hash, int64(len(n.data)), 0, budget)
	starts, pieces := chunks(n.data, 1000)
	for _, c := range []*Checker{a, b} {
		for i := 1; i < len(starts); i++ { // all but the first: kept ahead
			c.OnLeaf(starts[i], pieces[i])
		}
	}
	if left := budget.left.Load(); left != 0 {
		t.Fatalf("budget left %d after two checkers kept leaves", left)
	}
	var readA, readB int64
	if _, err := a.Verify(context.Background(), readerOf(n.data, &readA)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Verify(context.Background(), readerOf(n.data, &readB)); err != nil {
		t.Fatal(err)
	}
	if readA != 1000 || readB != int64(len(n.data)) {
		t.Fatalf("Verify read %d and %d bytes: the first checker kept all but one leaf, the second none", readA, readB)
	}
	if left := budget.left.Load(); left != size {
		t.Fatalf("budget not returned: %d of %d", left, size)
	}
}
