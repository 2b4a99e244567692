package fetch

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// flatfsRepo makes a kubo repository with a flatfs blockstore sharded as
// kubo does by default.
func flatfsRepo(t *testing.T, sharding string) string {
	t.Helper()
	repo := t.TempDir()
	if err := os.MkdirAll(filepath.Join(repo, "blocks"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, "blocks", "SHARDING"), []byte(sharding), 0o644); err != nil {
		t.Fatal(err)
	}
	return repo
}

// testBlockstore opens a fresh, empty blockstore sharded as kubo does by
// default.
func testBlockstore(t *testing.T) *Blockstore {
	t.Helper()
	bs, err := OpenBlockstore(flatfsRepo(t, "/repo/flatfs/shard/v1/next-to-last/2\n"))
	if err != nil {
		t.Fatal(err)
	}
	return bs
}

func rawBlock(t *testing.T, data []byte) cid.Cid {
	t.Helper()
	c, err := cid.V1Builder{Codec: cid.Raw, MhType: mh.SHA2_256}.Sum(data)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Blocks are found where kubo's flatfs puts them: the key is the base32
// of the multihash, and next-to-last/2 shards by the two characters
// before the last (a layout checked against a real kubo repository in
// integration/blockstore_test.go).
func TestBlockstoreReadsFlatfs(t *testing.T) {
	bs := testBlockstore(t)
	data := []byte("a block held by kubo")
	c := rawBlock(t, data)
	p := bs.path(c)
	key := strings.TrimSuffix(filepath.Base(p), ".data")
	if !strings.HasPrefix(key, "CIQ") || filepath.Base(filepath.Dir(p)) != key[len(key)-3:len(key)-1] {
		t.Fatalf("block %s at %s: not kubo's flatfs layout", c, p)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := bs.GetBlock(context.Background(), c)
	if err != nil || !bytes.Equal(b.RawData(), data) || !b.Cid().Equals(c) {
		t.Fatalf("GetBlock: %v, %q", err, b)
	}
	_, err = bs.GetBlock(context.Background(), rawBlock(t, []byte("not there")))
	if !errors.Is(err, ErrBlockNotFound) {
		t.Fatalf("a block the repository lacks: %v, want ErrBlockNotFound", err)
	}
	if bs.Read.Load() != 1 || bs.Missing.Load() != 1 {
		t.Fatalf("read %d, missing %d; want 1 and 1", bs.Read.Load(), bs.Missing.Load())
	}
}

// The blockstore is a source like any other: what a file there holds is
// checked against the CID by the verifier above it, and files that are
// not regular files of block size are refused without being read (a FIFO
// must not hang the read path).
func TestBlockstoreRefusesOddFiles(t *testing.T) {
	bs := testBlockstore(t)
	place := func(c cid.Cid) string {
		p := bs.path(c)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	var stats Stats
	verified := Verify(bs, &stats)

	tampered := rawBlock(t, []byte("the real block"))
	if err := os.WriteFile(place(tampered), []byte("the fake block"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := verified.GetBlock(context.Background(), tampered); !errors.Is(err, ErrHashMismatch) || !strings.Contains(err.Error(), "kubo blockstore") {
		t.Fatalf("tampered block file: %v, want a hash mismatch naming the blockstore", err)
	}

	fifo := rawBlock(t, []byte("a fifo"))
	if err := syscall.Mkfifo(place(fifo), 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := bs.GetBlock(context.Background(), fifo); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("FIFO: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("reading a FIFO in the blockstore hangs")
	}

	link := rawBlock(t, []byte("a symlink"))
	if err := os.Symlink("/etc/passwd", place(link)); err != nil {
		t.Fatal(err)
	}
	if _, err := bs.GetBlock(context.Background(), link); err == nil {
		t.Fatal("a symlink in the blockstore was followed")
	}

	big := rawBlock(t, []byte("too large"))
	if err := os.WriteFile(place(big), make([]byte, MaxBlockSize+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := bs.GetBlock(context.Background(), big); err == nil || !strings.Contains(err.Error(), "more than it may") {
		t.Fatalf("oversized block file: %v", err)
	}
	if bs.Read.Load() != 1 { // the tampered one, refused above it
		t.Fatalf("%d blocks read, want 1", bs.Read.Load())
	}
}

func TestOpenBlockstoreRefuses(t *testing.T) {
	for name, sharding := range map[string]string{
		"negative":  "/repo/flatfs/shard/v1/prefix/-1",
		"huge":      "/repo/flatfs/shard/v1/suffix/99999999",
		"unknown":   "/repo/flatfs/shard/v1/middle/2",
		"version":   "/repo/flatfs/shard/v2/prefix/2",
		"empty":     "",
		"no prefix": "next-to-last/2",
	} {
		if _, err := OpenBlockstore(flatfsRepo(t, sharding)); err == nil {
			t.Errorf("%s: SHARDING %q accepted", name, sharding)
		}
	}
	if _, err := OpenBlockstore(t.TempDir()); err == nil || !strings.Contains(err.Error(), "no flatfs blockstore") {
		t.Errorf("a directory without blocks/SHARDING: %v", err)
	}
}

// SHARDING is read from a directory ipnix does not own: any content is
// refused or parsed, never a panic, and what parses shards every key into
// a short directory name.
func FuzzParseSharding(f *testing.F) {
	for _, s := range []string{"/repo/flatfs/shard/v1/next-to-last/2", "/repo/flatfs/shard/v1/prefix/4\n",
		"/repo/flatfs/shard/v1/suffix/1", "/repo/flatfs/shard/v1/prefix/-3", "/repo/flatfs/shard/v1/x/2", "/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		shard, err := ParseSharding(s)
		if err != nil {
			return
		}
		for _, key := range []string{"", "A", "CIQNBQU572PCUODBX6XKBM2W54GRI4N6FBZK6ODSVPPOV42EOMIC22I"} {
			if d := shard(key); len(d) == 0 || len(d) > 16 || strings.ContainsAny(d, "/\x00") {
				t.Fatalf("sharding %q puts %q in directory %q", s, key, d)
			}
		}
	})
}

// The default kubo API comes from $IPFS_PATH/api, a file whoever owns the
// repository controls: a FIFO there is not waited on (the default address
// is used), and a symlinked api file is still followed.
func TestKuboAPIFileNotWaitedOn(t *testing.T) {
	repo := t.TempDir()
	t.Setenv("IPFS_PATH", repo)
	if err := syscall.Mkfifo(filepath.Join(repo, "api"), 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan string, 1)
	go func() { u, _, _ := KuboAPIURL(""); done <- u }()
	select {
	case u := <-done:
		if u != "http://127.0.0.1:5001" {
			t.Errorf("with a FIFO for an api file: %q, want the default", u)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a FIFO as $IPFS_PATH/api hangs KuboAPIURL")
	}
	if err := os.Remove(filepath.Join(repo, "api")); err != nil {
		t.Fatal(err)
	}
	real := filepath.Join(t.TempDir(), "api")
	if err := os.WriteFile(real, []byte("/ip4/127.0.0.1/tcp/45999\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, filepath.Join(repo, "api")); err != nil {
		t.Fatal(err)
	}
	if u, _, err := KuboAPIURL(""); err != nil || u != "http://127.0.0.1:45999" {
		t.Errorf("a symlinked api file: %q, %v", u, err)
	}
}
