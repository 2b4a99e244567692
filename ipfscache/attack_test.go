package ipfscache

// Attacks by whoever controls the directory's blocks (a hostile publisher,
// or a root an attacker talked someone into using): every shape below must
// end a lookup with ErrMalformedDir (or an absence), never a panic, never
// bytes of an entry the DAG does not hold.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/ipfs/boxo/ipld/merkledag"
	"github.com/ipfs/boxo/ipld/unixfs"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
	"github.com/ipnix/ipnix/narindex"
)

// attackStore builds hostile blocks in a fetchtest.Store.
type attackStore struct {
	t  *testing.T
	st *fetchtest.Store
}

func (a attackStore) node(data []byte, links ...*ipld.Link) cid.Cid {
	a.t.Helper()
	nd := merkledag.NodeWithData(data)
	nd.SetCidBuilder(merkledag.V1CidPrefix())
	for _, l := range links {
		if err := nd.AddRawLink(l.Name, l); err != nil {
			a.t.Fatal(err)
		}
	}
	if err := a.st.Put(nd); err != nil {
		a.t.Fatal(err)
	}
	return nd.Cid()
}

func (a attackStore) shardData(bitfield []byte, fanout uint64) []byte {
	a.t.Helper()
	d, err := unixfs.HAMTShardData(bitfield, fanout, 0x22)
	if err != nil {
		a.t.Fatal(err)
	}
	return d
}

// full8 is a fanout-8 shard with every slot used, slot i holding link(i):
// any name lands on one of them, so the attacker chooses what a lookup
// meets without computing murmur3.
func (a attackStore) full8(link func(i int) *ipld.Link) cid.Cid {
	var ls []*ipld.Link
	for i := range 8 {
		ls = append(ls, link(i))
	}
	return a.node(a.shardData([]byte{0xff}, 8), ls...)
}

// rawBlock stores a block of another codec and returns its CID.
func (a attackStore) rawBlock(codec uint64, data []byte) cid.Cid {
	a.t.Helper()
	c, err := cid.V1Builder{Codec: codec, MhType: 0x12}.Sum(data)
	if err != nil {
		a.t.Fatal(err)
	}
	b, _ := blocks.NewBlockWithCid(data, c)
	if err := a.st.Put(b); err != nil {
		a.t.Fatal(err)
	}
	return c
}

// fileNode stores a dag-pb UnixFS file node with the given declared size,
// inline data and children (with the block sizes it declares for them).
func (a attackStore) fileNode(declared uint64, data []byte, kids []cid.Cid, sizes []uint64) cid.Cid {
	a.t.Helper()
	fsn := unixfs.NewFSNode(unixfs.TFile)
	fsn.SetData(data)
	for _, s := range sizes {
		fsn.AddBlockSize(s)
	}
	b, err := fsn.GetBytes()
	if err != nil {
		a.t.Fatal(err)
	}
	// GetBytes computes filesize from data and block sizes: set the lie.
	var ls []*ipld.Link
	for i, k := range kids {
		ls = append(ls, &ipld.Link{Name: "", Cid: k, Size: sizes[i]})
	}
	return a.node(withFileSize(a.t, b, declared), ls...)
}

// withFileSize rewrites the filesize field of a serialized UnixFS Data.
func withFileSize(t *testing.T, data []byte, size uint64) []byte {
	t.Helper()
	fsn, err := unixfs.FSNodeFromBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	// The protobuf's Filesize field is what FileSize reports; rebuild the
	// message by hand: type, data, filesize, blocksizes.
	var out []byte
	out = appendVarintField(out, 1, uint64(fsn.Type()))
	if d := fsn.Data(); len(d) > 0 {
		out = appendBytesField(out, 2, d)
	}
	out = appendVarintField(out, 3, size)
	for _, s := range fsn.BlockSizes() {
		out = appendVarintField(out, 4, s)
	}
	if got, err := unixfs.FSNodeFromBytes(out); err != nil || got.FileSize() != size {
		t.Fatalf("rebuilt UnixFS data: %v", err)
	}
	return out
}

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func appendVarintField(b []byte, field int, v uint64) []byte {
	return appendVarint(append(b, byte(field<<3)), v)
}

func appendBytesField(b []byte, field int, d []byte) []byte {
	b = appendVarint(append(b, byte(field<<3|2)), uint64(len(d)))
	return append(b, d...)
}

// TestAttackHamtShapes: HAMT shards and entries that kubo never writes.
func TestAttackHamtShapes(t *testing.T) {
	ctx := context.Background()
	a := attackStore{t, fetchtest.NewStore()}
	bg := fetch.Verify(a.st, nil)
	good, err := a.st.AddFile([]byte("StorePath: x\n"), fetchtest.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	cbor := a.rawBlock(cid.DagCBOR, []byte{0xa0})
	raw := a.rawBlock(cid.Raw, []byte("raw bytes"))
	plainDir := basicDir(t, a.st, map[string][]byte{"x.narinfo": []byte("inner")})
	shardTo := func(c cid.Cid) func(int) *ipld.Link {
		return func(i int) *ipld.Link { return &ipld.Link{Name: fmt.Sprintf("%X", i), Cid: c} }
	}
	valueTo := func(c cid.Cid) func(int) *ipld.Link {
		return func(i int) *ipld.Link { return &ipld.Link{Name: fmt.Sprintf("%X", i) + "x.narinfo", Cid: c} }
	}
	// A fanout-8 shard whose bitfield claims all 8 children but that
	// links only one.
	claimsMore := a.node(a.shardData([]byte{0xff}, 8), valueTo(good)(0))
	// A bitfield of 4 bytes in a fanout-8 shard (one byte is its width).
	wideBitfield := a.node(a.shardData([]byte{0xff, 0xff, 0xff, 0xff}, 8), valueTo(good)(0))
	// A sub-shard of an absurd fanout below a sane root.
	hugeSub := a.node(a.shardData(make([]byte, 1), 1<<20))
	// Links with names shorter than the index prefix.
	emptyNames := a.full8(func(int) *ipld.Link { return &ipld.Link{Name: "", Cid: good} })
	// Entries whose declared sizes lie.
	leaf := a.rawBlock(cid.Raw, bytes.Repeat([]byte("L"), 1000))
	sizeSmaller := a.fileNode(10, nil, []cid.Cid{leaf}, []uint64{1000})
	sizeLarger := a.fileNode(5000, nil, []cid.Cid{leaf}, []uint64{1000})
	blockSizeLies := a.fileNode(10, nil, []cid.Cid{leaf}, []uint64{10})

	for _, tc := range []struct {
		name string
		root cid.Cid
	}{
		{"bitfield claims children that do not exist", claimsMore},
		{"bitfield wider than the fanout", wideBitfield},
		{"sub-shard of fanout 2^20", a.full8(shardTo(hugeSub))},
		{"sub-shard is a raw block", a.full8(shardTo(raw))},
		{"sub-shard is dag-cbor", a.full8(shardTo(cbor))},
		{"sub-shard is a plain directory", a.full8(shardTo(plainDir))},
		{"sub-shard claims more than it links", a.full8(shardTo(claimsMore))},
		{"link names shorter than the prefix", emptyNames},
		{"entry is dag-cbor", a.full8(valueTo(cbor))},
		{"entry is a directory", a.full8(valueTo(plainDir))},
		{"entry declares fewer bytes than its parts", a.full8(valueTo(sizeSmaller))},
		{"entry declares more bytes than its parts", a.full8(valueTo(sizeLarger))},
		{"entry's block size is smaller than its leaf", a.full8(valueTo(blockSizeLies))},
		{"plain dir entry is dag-cbor", dirOfLinks(t, a.st, map[string]*ipld.Link{"x.narinfo": subLink("x.narinfo", cbor)})},
		{"plain dir entry's sizes lie", dirOfLinks(t, a.st, map[string]*ipld.Link{"x.narinfo": subLink("x.narinfo", sizeLarger)})},
		{"root with empty data", a.node(nil)},
		{"root is a file with directory children", a.fileNode(0, nil, []cid.Cid{plainDir}, []uint64{0})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, err := readName(ctx, bg, tc.root, "x.narinfo", narindex.MaxNarInfoSize)
			if err == nil {
				t.Fatalf("served %q", data)
			}
			t.Log(err)
			if !errors.Is(err, ErrMalformedDir) {
				t.Errorf("%v, want ErrMalformedDir", err)
			}
		})
	}
}

// TestAttackWrongNarinfoUnderName: a directory entry <A>.narinfo holding a
// narinfo validly signed for path B, and entries under names that are not
// hash parts: the resolver refuses the first, and names with separators
// or NUL never reach the directory at all.
func TestAttackWrongNarinfoUnderName(t *testing.T) {
	ctx := context.Background()
	key := newKey(t, "cache-1")
	st := fetchtest.NewStore()
	a, b := hashPart(1), hashPart(2)
	links := addFiles(t, st, map[string][]byte{
		"nix-cache-info":   []byte("StoreDir: /nix/store\n"),
		a + ".narinfo":     narinfo(t, b, &key), // B's narinfo under A's name
		"../x.narinfo":     narinfo(t, b, &key),
		"a\x00b.narinfo":   narinfo(t, b, &key),
		b + "/../.narinfo": narinfo(t, b, &key),
	})
	root := dirOfLinks(t, st, links)
	c, err := Open(Ref{Root: root}, Options{Blocks: fetch.Verify(st, nil)})
	if err != nil {
		t.Fatal(err)
	}
	res := &narindex.Resolver{Substituters: []narindex.Substituter{c.Substituter()}, TrustedKeys: []narindex.PublicKey{key.Public()}, RequireSigs: true, RejectTTL: -1}
	if r, err := res.Resolve(ctx, a+"-test"); err == nil {
		t.Errorf("B's narinfo served for A: %+v", r)
	}
	before := st.Gets.Load()
	for _, h := range []string{"../x", "a\x00b", b + "/..", "", "/"} {
		if ni, err := c.Substituter().NarInfo(ctx, h); err == nil {
			t.Errorf("hash part %q: served %+v", h, ni)
		}
		if ls, err := c.Substituter().Listing(ctx, h); err == nil {
			t.Errorf("hash part %q: listing %q", h, ls)
		}
	}
	if got := st.Gets.Load() - before; got != 0 {
		t.Errorf("names that are not hash parts fetched %d blocks", got)
	}
}
