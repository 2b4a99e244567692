package ipfscache

import (
	"context"
	"fmt"
	"sort"
	"testing"

	"github.com/ipfs/boxo/ipld/merkledag"
	"github.com/ipfs/boxo/ipld/unixfs"
	"github.com/ipfs/boxo/ipld/unixfs/hamt"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"

	"github.com/ipnix/ipnix/fetch/fetchtest"
)

// storeDAG writes the nodes boxo builds into a fetchtest.Store.
type storeDAG struct{ st *fetchtest.Store }

func (d storeDAG) Get(ctx context.Context, c cid.Cid) (ipld.Node, error) {
	b, err := d.st.GetBlock(ctx, c)
	if err != nil {
		return nil, err
	}
	if c.Type() == cid.Raw {
		return merkledag.NewRawNode(b.RawData()), nil
	}
	return merkledag.DecodeProtobufBlock(b)
}

func (d storeDAG) GetMany(ctx context.Context, cs []cid.Cid) <-chan *ipld.NodeOption {
	out := make(chan *ipld.NodeOption, len(cs))
	for _, c := range cs {
		n, err := d.Get(ctx, c)
		out <- &ipld.NodeOption{Node: n, Err: err}
	}
	close(out)
	return out
}

func (d storeDAG) Add(_ context.Context, n ipld.Node) error { return d.st.Put(n) }
func (d storeDAG) AddMany(ctx context.Context, ns []ipld.Node) error {
	for _, n := range ns {
		if err := d.Add(ctx, n); err != nil {
			return err
		}
	}
	return nil
}
func (d storeDAG) Remove(context.Context, cid.Cid) error       { return nil }
func (d storeDAG) RemoveMany(context.Context, []cid.Cid) error { return nil }

// addFiles imports each file as `ipfs add --cid-version=1` would and
// returns the links a directory of them holds.
func addFiles(t testing.TB, st *fetchtest.Store, files map[string][]byte) map[string]*ipld.Link {
	t.Helper()
	links := map[string]*ipld.Link{}
	for name, data := range files {
		c, err := st.AddFile(data, fetchtest.DefaultOptions)
		if err != nil {
			t.Fatal(err)
		}
		links[name] = &ipld.Link{Name: name, Cid: c, Size: uint64(len(data))}
	}
	return links
}

// basicDir stores a plain UnixFS directory of files and returns its root.
func basicDir(t testing.TB, st *fetchtest.Store, files map[string][]byte) cid.Cid {
	t.Helper()
	return dirOfLinks(t, st, addFiles(t, st, files))
}

func subLink(name string, c cid.Cid) *ipld.Link { return &ipld.Link{Name: name, Cid: c} }

// dirOfLinks stores a plain UnixFS directory of the given entries.
func dirOfLinks(t testing.TB, st *fetchtest.Store, links map[string]*ipld.Link) cid.Cid {
	t.Helper()
	names := make([]string, 0, len(links))
	for n := range links {
		names = append(names, n)
	}
	sort.Strings(names)
	nd := merkledag.NodeWithData(unixfs.FolderPBData())
	nd.SetCidBuilder(merkledag.V1CidPrefix())
	for _, n := range names {
		if err := nd.AddRawLink(n, links[n]); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Put(nd); err != nil {
		t.Fatal(err)
	}
	return nd.Cid()
}

// shardedDir stores a HAMT-sharded UnixFS directory of files, of the
// given fanout, and returns its root.
func shardedDir(t testing.TB, st *fetchtest.Store, files map[string][]byte, fanout int) cid.Cid {
	t.Helper()
	ctx := context.Background()
	sh, err := hamt.NewShard(storeDAG{st}, fanout)
	if err != nil {
		t.Fatal(err)
	}
	sh.SetCidBuilder(merkledag.V1CidPrefix())
	for name, l := range addFiles(t, st, files) {
		if err := sh.SetLink(ctx, name, l); err != nil {
			t.Fatal(err)
		}
	}
	nd, err := sh.Node()
	if err != nil {
		t.Fatal(err)
	}
	return nd.Cid()
}

// hashPart makes the i-th distinct store path hash part.
func hashPart(i int) string {
	const nix32 = "0123456789abcdfghijklmnpqrsvwxyz"
	b := []byte("00000000000000000000000000000000")
	for j := 31; j >= 0 && i > 0; j-- {
		b[j] = nix32[i%32]
		i /= 32
	}
	return string(b)
}

// manyFiles is a cache directory's worth of small entries.
func manyFiles(n int) map[string][]byte {
	files := map[string][]byte{"nix-cache-info": []byte("StoreDir: /nix/store\n")}
	for i := range n {
		h := hashPart(i)
		files[h+".narinfo"] = fmt.Appendf(nil, "narinfo %d\n", i)
	}
	return files
}
