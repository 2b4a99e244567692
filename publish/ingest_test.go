package publish

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/fetch/fetchtest"
	"github.com/ipnix/ipnix/narindex"
)

// storeAdder adds into an in-memory block store, as kubo would.
type storeAdder struct{ st *fetchtest.Store }

func (a storeAdder) Add(ctx context.Context, r io.Reader) (cid.Cid, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return cid.Undef, err
	}
	return a.st.AddFile(data, fetchtest.DefaultOptions)
}

// failingAdder reads a little and fails, like a kubo that goes away.
type failingAdder struct{}

func (failingAdder) Add(ctx context.Context, r io.Reader) (cid.Cid, error) {
	io.CopyN(io.Discard, r, 1000)
	return cid.Undef, errors.New("kubo went away")
}

func testNar(t *testing.T) []byte {
	var buf bytes.Buffer
	tree := fstest.MapFS{
		"bin/x": {Data: []byte("#!/bin/sh\n"), Mode: 0o555},
		"big":   {Data: bytes.Repeat([]byte("ipnix"), 300000), Mode: 0o444},
		"link":  {Data: []byte("big"), Mode: fs.ModeSymlink | 0o777},
		"empty": {Mode: fs.ModeDir | 0o555},
	}
	if err := narindex.DumpFS(&buf, tree, "."); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestIngest(t *testing.T) {
	nar := testNar(t)
	st := fetchtest.NewStore()
	var extra bytes.Buffer
	in, err := ingest(context.Background(), storeAdder{st}, bytes.NewReader(nar), &extra, 0)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(nar)
	if err := in.check("test", narindex.SHA256(sum[:]), uint64(len(nar))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(extra.Bytes(), nar) {
		t.Fatal("the NAR file copy differs from the NAR")
	}
	want, _ := st.AddFile(nar, fetchtest.DefaultOptions)
	if !in.cid.Equals(want) {
		t.Fatalf("cid %s, want %s", in.cid, want)
	}
	l, err := narindex.ParseListing(in.listing)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := l.Lookup("big"); err != nil || n.Size != 1500000 {
		t.Fatalf("listing: %+v %v", n, err)
	}
	// A promise the NAR does not keep is an error naming both sides.
	if err := in.check("test", narindex.SHA256(make([]byte, 32)), uint64(len(nar))); err == nil || !strings.Contains(err.Error(), "expected") {
		t.Fatalf("wrong NarHash: %v", err)
	}
	if err := in.check("test", narindex.SHA256(sum[:]), 5); err == nil {
		t.Fatal("wrong NarSize accepted")
	}
}

func TestIngestRejectsMalformedNar(t *testing.T) {
	nar := testNar(t)
	bad := append(bytes.Clone(nar), 1, 2, 3)
	_, err := ingest(context.Background(), storeAdder{fetchtest.NewStore()}, bytes.NewReader(bad), nil, 0)
	if !errors.Is(err, narindex.ErrMalformedNAR) {
		t.Fatalf("trailing bytes: %v", err)
	}
}

func TestIngestAdderFailure(t *testing.T) {
	nar := testNar(t)
	_, err := ingest(context.Background(), failingAdder{}, bytes.NewReader(nar), nil, 0)
	if err == nil || !strings.Contains(err.Error(), "went away") {
		t.Fatalf("adder failure: %v", err)
	}
}

func TestDecompressUnknown(t *testing.T) {
	if _, _, err := decompress("lz4", strings.NewReader("")); err == nil || !strings.Contains(err.Error(), `"lz4"`) {
		t.Fatalf("lz4: %v", err)
	}
	if _, err := cacheDir("s3://bucket"); err == nil {
		t.Fatal("s3 accepted as --from")
	}
}

// shortAdder answers with the root of what it read, having read only part.
type shortAdder struct{ storeAdder }

func (a shortAdder) Add(ctx context.Context, r io.Reader) (cid.Cid, error) {
	return a.storeAdder.Add(ctx, io.LimitReader(r, 1000))
}

// A root for part of the NAR is refused.
func TestIngestAdderReadsPart(t *testing.T) {
	nar := testNar(t)
	_, err := ingest(context.Background(), shortAdder{storeAdder{fetchtest.NewStore()}}, bytes.NewReader(nar), nil, 0)
	if err == nil || !strings.Contains(err.Error(), "whole NAR") {
		t.Fatalf("root of a part accepted: %v", err)
	}
}
