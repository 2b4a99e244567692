package publish

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/fetch/fetchtest"
	"github.com/ipnix/ipnix/narindex"
)

func TestKuboAdderEncoding(t *testing.T) {
	for chunker, want := range map[string]int64{
		"":             256 << 10,
		"size-262144":  256 << 10,
		"size-1048576": 1 << 20,
		"size-4096":    4096,
		// Not described: the draft has no words for content-defined
		// chunkers, and kubo's own spellings are left alone.
		"buzhash":                   0,
		"rabin":                     0,
		"rabin-262144":              0,
		"rabin-87381-262144-393216": 0,
		"size-":                     0,
		"size-0":                    0,
		"size-01":                   0,
		"size-x":                    0,
		"size--1":                   0,
		"default":                   0,
	} {
		e, ok := (&KuboAdder{Chunker: chunker}).Encoding()
		if ok != (want != 0) || (ok && e != narindex.FixedSizeEncoding(want)) {
			t.Errorf("chunker %q: Encoding() = %+v, %v; want size %d", chunker, e, ok, want)
		}
	}
}

// testBytes is n bytes the same on every run.
func testBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

// RecomputeCID gives the CIDs kubo 0.43 gives for the same bytes (testBytes
// written to a file F):
//
//	ipfs add --offline --only-hash -Q --cid-version=1 --raw-leaves --chunker=size-N --max-file-links=W < F
//
// Two levels of nodes, one level, a one-block file, and another width, so
// that a divergence from `ipfs add` fails here.
func TestRecomputeCIDMatchesKubo(t *testing.T) {
	for _, tc := range []struct {
		name  string
		data  []byte
		e     narindex.IpfsEncoding
		width int
		kubo  string
	}{
		{"257 leaves of 4 KiB, two levels", testBytes(1<<20+5, 1), narindex.FixedSizeEncoding(4096), 0, "bafybeiewlm7iypf7a5db73dhwcwlgt7262thpqi4yg5h7vctfr26b4gyuq"},
		{"width 1024: one level", testBytes(1<<20+5, 1), narindex.FixedSizeEncoding(4096), 1024, "bafybeif6wj7f7pqtlosmcytedjkw7w4nmgz7nrn4gt4dd2ekeddxdfjloa"},
		{"13 leaves of 256 KiB", testBytes(3<<20+17, 2), narindex.FixedSizeEncoding(256 << 10), 0, "bafybeibkgt73e2v5t5rjrk2ifcz3ax7gtptqbfhf6opxnhue2nl734q6oq"},
		{"one block", testBytes(1000, 3), narindex.FixedSizeEncoding(256 << 10), 0, "bafkreih3fyqou2ceshppruwwsj2ssvjrpp2czvoanz7ijjbracta3owsai"},
	} {
		if tc.width != 0 {
			tc.e.MaxWidth = tc.width
		}
		want := cid.MustParse(tc.kubo)
		got, err := RecomputeCID(context.Background(), bytes.NewReader(tc.data), tc.e, want)
		if err != nil || got != want {
			t.Errorf("%s: RecomputeCID = %s, %v; kubo gives %s", tc.name, got, err, want)
		}
	}
}

func TestRecomputeCIDRefuses(t *testing.T) {
	like := cid.MustParse("bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi")
	ok := narindex.FixedSizeEncoding(256 << 10)
	for _, tc := range []struct {
		name string
		edit func(*narindex.IpfsEncoding)
		like cid.Cid
		want string
	}{
		{"method", func(e *narindex.IpfsEncoding) { e.Method = "git-tree" }, like, `method "git-tree"`},
		{"leaves", func(e *narindex.IpfsEncoding) { e.LeafFormat = "dag-pb" }, like, `leaf format "dag-pb"`},
		{"strategy", func(e *narindex.IpfsEncoding) { e.Strategy = "buzhash" }, like, `strategy "buzhash"`},
		{"no size (the draft's example)", func(e *narindex.IpfsEncoding) { e.ChunkSize = 0 }, like, "chunk size 0"},
		{"size too large", func(e *narindex.IpfsEncoding) { e.ChunkSize = 4 << 20 }, like, "chunk size 4194304"},
		{"layout", func(e *narindex.IpfsEncoding) { e.Layout = "trickle" }, like, `layout "trickle"`},
		{"width", func(e *narindex.IpfsEncoding) { e.MaxWidth = 1 }, like, "max-width 1"},
		{"no CID", func(*narindex.IpfsEncoding) {}, cid.Undef, "not the root of a UnixFS file"},
		{"CBOR CID", func(*narindex.IpfsEncoding) {}, cid.NewCidV1(cid.DagCBOR, like.Hash()), "not the root of a UnixFS file"},
	} {
		e := ok
		tc.edit(&e)
		_, err := RecomputeCID(context.Background(), strings.NewReader("x"), e, tc.like)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want an error containing %q", tc.name, err, tc.want)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := RecomputeCID(ctx, bytes.NewReader(make([]byte, 1<<20)), ok, like); err == nil {
		t.Error("RecomputeCID ignores a cancelled context")
	}
}

// describedAdder adds with fixed chunks of size bytes and says so.
type describedAdder struct {
	st   *fetchtest.Store
	size int64
}

func (a describedAdder) Add(ctx context.Context, r io.Reader) (cid.Cid, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return cid.Undef, err
	}
	return a.st.AddFile(data, fetchtest.Options{ChunkSize: a.size, RawLeaves: true})
}

func (a describedAdder) Encoding() (narindex.IpfsEncoding, bool) {
	return narindex.FixedSizeEncoding(a.size), true
}

// Every narinfo publish writes says how its DAG was made, replacing what
// the source said; the NAR rebuilt that way has the narinfo's CID. An
// Adder that cannot describe itself leaves the field out, rather than
// keep the source's.
func TestPublishWritesEncoding(t *testing.T) {
	nar, compressed := helloNar(t)
	from := sourceCache(t, "StoreDir: /nix/store\n", compressed, func(ni *narindex.NarInfo) {
		ni.IpfsCid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
		ni.IpfsEncoding = `{"method":"stale"}`
	})
	read := func(to string) *narindex.NarInfo {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(to, "rsw37b3mfmf5mwk74h93w7daljgm23cm.narinfo"))
		if err != nil {
			t.Fatal(err)
		}
		ni, err := narindex.ParseNarInfo(data)
		if err != nil {
			t.Fatal(err)
		}
		return ni
	}
	// Chunks small enough that the NAR's leaves need two levels of nodes.
	const size = 4
	if len(nar) <= narindex.DefaultMaxWidth*size {
		t.Fatalf("the NAR is %d bytes: one level of %d-byte leaves", len(nar), size)
	}
	to := t.TempDir()
	p, err := New(describedAdder{fetchtest.NewStore(), size}, Options{To: to})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Cache(context.Background(), from); err != nil {
		t.Fatal(err)
	}
	ni := read(to)
	if want := narindex.FixedSizeEncoding(size).String(); ni.IpfsEncoding != want {
		t.Fatalf("IpfsEncoding %q, want %q", ni.IpfsEncoding, want)
	}
	e, err := narindex.ParseIpfsEncoding(ni.IpfsEncoding)
	if err != nil {
		t.Fatal(err)
	}
	c, err := cid.Parse(ni.IpfsCid)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := RecomputeCID(context.Background(), bytes.NewReader(nar), e, c); err != nil || got != c {
		t.Errorf("the NAR rebuilt as IpfsEncoding says has CID %s (%v), the narinfo %s", got, err, c)
	}

	to = t.TempDir()
	p, _ = New(storeAdder{fetchtest.NewStore()}, Options{To: to})
	if _, err := p.Cache(context.Background(), from); err != nil {
		t.Fatal(err)
	}
	if ni := read(to); ni.IpfsEncoding != "" {
		t.Errorf("an Adder that cannot describe itself: IpfsEncoding %q", ni.IpfsEncoding)
	}
}
