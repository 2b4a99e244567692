package ipfscache

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/boxo/ipld/merkledag"
	"github.com/ipfs/boxo/ipld/unixfs"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
	"github.com/ipnix/ipnix/narindex"
)

// readName is what the cache does for one name: lookup, then read.
func readName(ctx context.Context, bg fetch.BlockGetter, root cid.Cid, name string, limit int64) ([]byte, error) {
	c, err := lookup(ctx, bg, root, name)
	if err != nil {
		return nil, err
	}
	return readEntry(ctx, bg, c, name, limit)
}

// TestLookupLayouts: every entry of a plain directory and of HAMT-sharded
// ones (kubo's fanout of 256, and the narrowest, 8, which makes the
// deepest trie) is found with its bytes; absent names are ErrNotFound; a
// lookup in the sharded directory costs one block per level it descends.
func TestLookupLayouts(t *testing.T) {
	ctx := context.Background()
	files := manyFiles(3000)
	big := bytes.Repeat([]byte("listing "), 100_000) // 800 kB: a chunked file
	files[hashPart(7)+".ls"] = big
	for _, tc := range []struct {
		name      string
		root      func(st *fetchtest.Store) cid.Cid
		maxBlocks int64 // directory blocks one lookup may fetch
	}{
		{"basic", func(st *fetchtest.Store) cid.Cid { return basicDir(t, st, files) }, 1},
		{"hamt-256", func(st *fetchtest.Store) cid.Cid { return shardedDir(t, st, files, 256) }, 3},
		{"hamt-8", func(st *fetchtest.Store) cid.Cid { return shardedDir(t, st, files, 8) }, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := fetchtest.NewStore()
			root := tc.root(st)
			bg := fetch.Verify(st, nil)
			for _, i := range []int{0, 1, 31, 32, 1000, 2999} {
				name := hashPart(i) + ".narinfo"
				before := st.Gets.Load()
				c, err := lookup(ctx, bg, root, name)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if got := st.Gets.Load() - before; got > tc.maxBlocks {
					t.Errorf("%s: lookup fetched %d blocks, want at most %d", name, got, tc.maxBlocks)
				}
				data, err := readEntry(ctx, bg, c, name, narindex.MaxNarInfoSize)
				if err != nil || !bytes.Equal(data, files[name]) {
					t.Errorf("%s = %q, %v; want %q", name, data, err, files[name])
				}
			}
			if data, err := readName(ctx, bg, root, hashPart(7)+".ls", narindex.MaxListingSize); err != nil || !bytes.Equal(data, big) {
				t.Errorf("chunked listing: %d bytes, %v", len(data), err)
			}
			if data, err := readName(ctx, bg, root, "nix-cache-info", 1<<10); err != nil || !strings.HasPrefix(string(data), "StoreDir") {
				t.Errorf("nix-cache-info = %q, %v", data, err)
			}
			for _, name := range []string{hashPart(3000) + ".narinfo", hashPart(5) + ".ls", "", "nar", strings.Repeat("x", 10000)} {
				if _, err := lookup(ctx, bg, root, name); !errors.Is(err, narindex.ErrNotFound) {
					t.Errorf("absent %.20q: %v", name, err)
				}
			}
			// Over the limit: refused by its declared size, before its
			// leaves are fetched.
			before := st.Gets.Load()
			if _, err := readName(ctx, bg, root, hashPart(7)+".ls", 1000); !errors.Is(err, narindex.ErrTooLarge) {
				t.Errorf("listing over the limit: %v", err)
			}
			if got := st.Gets.Load() - before; got > tc.maxBlocks+2 {
				t.Errorf("refusing an entry over the limit fetched %d blocks", got)
			}
		})
	}
}

// TestLookupMalformed: a root or shard that is not a directory, a HAMT of
// absurd fanout or hash, an entry that is a directory: ErrMalformedDir,
// never a panic, and no entry served.
func TestLookupMalformed(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	bg := fetch.Verify(st, nil)
	fileRoot, err := st.AddFile([]byte("not a directory"), fetchtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rawRoot, _ := st.AddFile([]byte("raw"), fetchtest.DefaultOptions)
	put := func(data []byte, links ...*ipld.Link) cid.Cid {
		nd := merkledag.NodeWithData(data)
		nd.SetCidBuilder(merkledag.V1CidPrefix())
		for _, l := range links {
			if err := nd.AddRawLink(l.Name, l); err != nil {
				t.Fatal(err)
			}
		}
		if err := st.Put(nd); err != nil {
			t.Fatal(err)
		}
		return nd.Cid()
	}
	hamtData := func(fanout, hash uint64) []byte {
		d, err := unixfs.HAMTShardData(make([]byte, 1), fanout, hash)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	allToFile := func() []*ipld.Link {
		var ls []*ipld.Link
		for i := range 8 {
			ls = append(ls, &ipld.Link{Name: string(rune('0' + i)), Cid: fileRoot})
		}
		return ls
	}
	fullShard, err := unixfs.HAMTShardData([]byte{0xff}, 8, 0x22)
	if err != nil {
		t.Fatal(err)
	}
	subdir := put(unixfs.FolderPBData())
	entryIsDir := put(unixfs.FolderPBData(), &ipld.Link{Name: "x.narinfo", Cid: subdir})
	for name, root := range map[string]cid.Cid{
		"file root":       fileRoot,
		"raw root":        rawRoot,
		"not unixfs":      put([]byte("garbage")),
		"huge fanout":     put(hamtData(1<<30, 0x22)),
		"fanout 1":        put(hamtData(1, 0x22)),
		"fanout 12":       put(hamtData(12, 0x22)),
		"not murmur3":     put(hamtData(256, 0x12)),
		"symlink root":    put(mustSymlink(t)),
		"entry is a dir":  entryIsDir,
		"hamt child file": put(fullShard, allToFile()...),
	} {
		_, err := readName(ctx, bg, root, "x.narinfo", 1<<20)
		if !errors.Is(err, ErrMalformedDir) {
			t.Errorf("%s: %v, want ErrMalformedDir", name, err)
		}
	}
}

func mustSymlink(t *testing.T) []byte {
	d, err := unixfs.SymlinkData("/etc")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestLookupDeep: a chain of shards deeper than the name's hash can
// address (which kubo never writes, but a hostile publisher can: every
// level of fanout 8 holds all eight children, all the next level) ends
// the lookup as malformed, within MaxDirBlocks blocks.
func TestLookupDeep(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	bg := fetch.Verify(st, nil)
	var next cid.Cid
	for level := 40; level >= 0; level-- {
		data, err := unixfs.HAMTShardData([]byte{0xff}, 8, 0x22)
		if err != nil {
			t.Fatal(err)
		}
		nd := merkledag.NodeWithData(data)
		nd.SetCidBuilder(merkledag.V1CidPrefix())
		if next.Defined() {
			for i := range 8 {
				if err := nd.AddRawLink(string(rune('0'+i)), &ipld.Link{Cid: next}); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := st.Put(nd); err != nil {
			t.Fatal(err)
		}
		next = nd.Cid()
	}
	before := st.Gets.Load()
	_, err := lookup(ctx, bg, next, "a.narinfo")
	if !errors.Is(err, ErrMalformedDir) {
		t.Errorf("deep chain: %v, want ErrMalformedDir", err)
	}
	if got := st.Gets.Load() - before; got > MaxDirBlocks {
		t.Errorf("fetched %d blocks, more than MaxDirBlocks %d", got, MaxDirBlocks)
	}
}

// TestLookupLyingSource: a block whose bytes do not match its CID is a
// fetch failure (the next source would be asked), not an absence and not
// a malformed directory.
func TestLookupLyingSource(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	root := shardedDir(t, st, manyFiles(500), 256)
	st.Override(root, []byte("lies"))
	_, err := lookup(ctx, fetch.Verify(st, nil), root, hashPart(1)+".narinfo")
	if !errors.Is(err, fetch.ErrHashMismatch) || errors.Is(err, narindex.ErrNotFound) || errors.Is(err, ErrMalformedDir) {
		t.Errorf("lying source: %v", err)
	}
}

// FuzzLookup feeds arbitrary bytes to the directory walker as a root and
// as every block below it (a source that answers anything; verification
// is not the point here): lookup and readEntry return an entry, an
// absence or an error, never panic, and fetch at most MaxDirBlocks
// directory blocks.
func FuzzLookup(f *testing.F) {
	st := fetchtest.NewStore()
	files := manyFiles(300)
	for _, root := range []cid.Cid{basicDir(f, st, files), shardedDir(f, st, files, 8), shardedDir(f, st, files, 256)} {
		b, err := st.GetBlock(context.Background(), root)
		if err != nil {
			f.Fatal(err)
		}
		nd, _ := merkledag.DecodeProtobufBlock(b)
		child := []byte("x")
		if links := nd.Links(); len(links) > 0 {
			if cb, err := st.GetBlock(context.Background(), links[0].Cid); err == nil {
				child = cb.RawData()
			}
		}
		f.Add(b.RawData(), child, hashPart(7)+".narinfo")
	}
	f.Fuzz(func(t *testing.T, rootData, child []byte, name string) {
		root, err := cid.V1Builder{Codec: cid.DagProtobuf, MhType: 0x12}.Sum(rootData)
		if err != nil {
			t.Skip()
		}
		var gets int
		bg := fetch.BlockGetterFunc(func(ctx context.Context, c cid.Cid) (blocks.Block, error) {
			gets++
			if c == root {
				return blocks.NewBlockWithCid(rootData, c)
			}
			return blocks.NewBlockWithCid(child, c)
		})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := lookup(ctx, bg, root, name)
		if gets > MaxDirBlocks {
			t.Fatalf("lookup fetched %d blocks", gets)
		}
		if err == nil {
			data, err := readEntry(ctx, bg, c, name, 1<<16)
			if err == nil && len(data) > 1<<16 {
				t.Fatalf("entry of %d bytes over the limit", len(data))
			}
		}
	})
}
