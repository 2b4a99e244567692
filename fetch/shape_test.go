package fetch_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/ipfs/boxo/ipld/merkledag"
	"github.com/ipfs/boxo/ipld/unixfs"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
)

// Every layout `ipfs add` produces with its usual chunkers stays accepted
// under the DAG shape limits, and reads back exactly.
func TestDAGShapeAcceptsIpfsAddLayouts(t *testing.T) {
	for i, tc := range []struct {
		name string
		size int
		opts fetchtest.Options
	}{
		{"default", 5<<20 + 17, fetchtest.DefaultOptions},
		// 12 MiB of 64 KiB chunks: more than 174 leaves, so two levels.
		{"size-65536", 12<<20 + 1, fetchtest.Options{Chunker: "size-65536", RawLeaves: true}},
		{"size-1048576", 5<<20 + 3, fetchtest.Options{Chunker: "size-1048576", RawLeaves: true}},
		{"size-4096", 1<<20 + 5, fetchtest.Options{Chunker: "size-4096", RawLeaves: true}},
		{"rabin", 6 << 20, fetchtest.Options{Chunker: "rabin", RawLeaves: true}},
		{"rabin-min-4096", 2 << 20, fetchtest.Options{Chunker: "rabin-4096-65536-131072", RawLeaves: true}},
		{"buzhash", 6 << 20, fetchtest.Options{Chunker: "buzhash", RawLeaves: true}},
		{"trickle", 12 << 20, fetchtest.Options{Chunker: "size-65536", RawLeaves: true, Trickle: true}},
		{"cidv0-pb-leaves", 3 << 20, fetchtest.Options{ChunkSize: 256 << 10, CidV0: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			st := fetchtest.NewStore()
			data := randomBytes(tc.size, uint64(100+i))
			root, err := st.AddFile(data, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			f, err := fetch.OpenFile(ctx, fetch.Verify(st, nil), root)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(data))
			if n, err := f.ReadAt(ctx, got, 0); err != nil || n != len(data) {
				t.Fatalf("ReadAt: n=%d err=%v", n, err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("content differs")
			}
		})
	}
}

// DAGs whose shape costs far more blocks than their size needs are
// refused, at OpenFile or at the first read that meets the bad node.
func TestDAGShapeRefusesWastefulDAGs(t *testing.T) {
	ctx := context.Background()
	for i, tc := range []struct {
		name string
		size int
		opts fetchtest.Options
	}{
		{"64-byte-leaves", 1 << 20, fetchtest.Options{ChunkSize: 64, RawLeaves: true}},
		{"4095-byte-leaves", 1 << 20, fetchtest.Options{ChunkSize: 4095, RawLeaves: true}},
		{"64-byte-pb-leaves", 100 << 10, fetchtest.Options{ChunkSize: 64}},
		// The root's children hold 6400 bytes each and pass; their own
		// 64-byte children are met at the first read.
		{"tiny-leaves-below", 1 << 20, fetchtest.Options{ChunkSize: 64, RawLeaves: true, MaxLinks: 100}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := fetchtest.NewStore()
			root, err := st.AddFile(randomBytes(tc.size, uint64(i)), tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			f, err := fetch.OpenFile(ctx, fetch.Verify(st, nil), root)
			where := "OpenFile"
			if err == nil {
				where = "ReadAt"
				_, err = f.ReadAt(ctx, make([]byte, 64<<10), 0)
			}
			if !errors.Is(err, fetch.ErrMalformedDAG) {
				t.Fatalf("err=%v, want ErrMalformedDAG", err)
			}
			t.Logf("refused at %s: %v", where, err)
		})
	}

	// A node with more than MaxLinks links, each a valid 4 KiB leaf.
	st := fetchtest.NewStore()
	leafRaw, err := merkledag.NewRawNodeWPrefix(bytes.Repeat([]byte{7}, 4096), merkledag.V1CidPrefix().WithCodec(0x55))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(leafRaw); err != nil {
		t.Fatal(err)
	}
	fsn := unixfs.NewFSNode(unixfs.TFile)
	pn := merkledag.NodeWithData(nil)
	pn.SetCidBuilder(merkledag.V1CidPrefix())
	for range fetch.MaxLinks + 1 {
		fsn.AddBlockSize(4096)
		if err := pn.AddNodeLink("", leafRaw); err != nil {
			t.Fatal(err)
		}
	}
	fsData, err := fsn.GetBytes()
	if err != nil {
		t.Fatal(err)
	}
	pn.SetData(fsData)
	if err := st.Put(pn); err != nil {
		t.Fatal(err)
	}
	if _, err := fetch.OpenFile(ctx, fetch.Verify(st, nil), pn.Cid()); !errors.Is(err, fetch.ErrMalformedDAG) {
		t.Fatalf("%d links: err=%v, want ErrMalformedDAG", fetch.MaxLinks+1, err)
	} else {
		t.Log(err)
	}
}
