package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipfs/boxo/datastore/dshelp"
	"github.com/ipfs/go-cid"
)

// A mount beside its kubo reads the blocks straight from the files of
// kubo's blockstore (--kubo-repo, or found through $IPFS_PATH as the ipfs
// command finds its daemon): every block of the closure comes from there,
// none from kubo's gateway or API, and the differential checks of
// TestEndToEnd pass. Kubo's real repository is the test of the layout.
func TestKuboBlockstoreDirect(t *testing.T) {
	p := publishClosure(t)
	check := func(t *testing.T, m *mount) {
		checkMountedClosure(t, p, m)
		read, fetched := m.metric(t, "ipnix_kubo_blockstore_reads_total"), m.metric(t, "ipnix_fetch_blocks_total")
		if read == 0 || read != fetched {
			t.Errorf("%d blocks read from kubo's blockstore of %d fetched: want all of them", read, fetched)
		}
		if n := m.metric(t, "ipnix_kubo_blockstore_missing_total"); n != 0 {
			t.Errorf("%d blocks missing from kubo's blockstore", n)
		}
	}
	t.Run("explicit", func(t *testing.T) {
		check(t, p.mount(t, "--kubo-repo", p.kubo.Path))
	})
	t.Run("found-through-IPFS_PATH", func(t *testing.T) {
		t.Setenv("IPFS_PATH", p.kubo.Path)
		check(t, p.mount(t))
	})
	t.Run("none", func(t *testing.T) {
		t.Setenv("IPFS_PATH", p.kubo.Path)
		m := p.mount(t, "--kubo-repo", "none")
		withTimeout(t, 2*time.Minute, "reading lib", func(context.Context) {
			must(t, readTree(filepath.Join(m.dir, filepath.Base(p.closure.path(t, "ipnix-test-lib")))))
		})
		if _, err := m.Metric("ipnix_kubo_blockstore_reads_total"); err == nil {
			t.Error("--kubo-repo none: the mount reads kubo's blockstore")
		}
		if n := m.metric(t, "ipnix_fetch_blocks_total"); n == 0 {
			t.Error("no block fetched")
		}
	})
}

// The blockstore is trusted for nothing: a block file damaged on disk is
// refused (its hash does not match the CID) and, since kubo serves the
// same damaged file through its gateway and API, the read fails with EIO.
// No byte of it is ever served.
func TestKuboBlockstoreDamagedBlock(t *testing.T) {
	p := publishClosure(t)
	lib := p.closure.path(t, "ipnix-test-lib")
	root := p.narInfo(t, lib).IpfsCid
	refs := strings.Fields(p.kubo.ipfs(t, nil, "refs", "-r", root))
	var leaf cid.Cid
	for _, r := range refs {
		c, err := cid.Decode(r)
		must(t, err)
		if c.Type() == cid.Raw {
			leaf = c // the last raw leaf of the NAR
		}
	}
	if !leaf.Defined() {
		t.Fatalf("no raw leaf among the %d blocks of %s", len(refs), root)
	}
	key := dshelp.MultihashToDsKey(leaf.Hash()).String()[1:]
	files, _ := filepath.Glob(filepath.Join(p.kubo.Path, "blocks", "*", key+".data"))
	if len(files) != 1 {
		t.Fatalf("block %s: %d files in kubo's blockstore", leaf, len(files))
	}
	data, err := os.ReadFile(files[0])
	must(t, err)
	data[len(data)/2] ^= 0x01
	must(t, os.WriteFile(files[0], data, 0o644))

	m := p.mount(t, "--kubo-repo", p.kubo.Path, "--block-timeout", "2s", "--read-timeout", "10s")
	dir := filepath.Join(m.dir, filepath.Base(lib))
	var readErr error
	withTimeout(t, 2*time.Minute, "reading lib", func(context.Context) {
		readErr = compareTree(t, dir, lib)
	})
	if readErr == nil {
		t.Fatal("every file of lib read whole although one of its blocks is damaged in every source")
	}
	if n := m.metric(t, "ipnix_fetch_hash_mismatches_total"); n < 1 {
		t.Errorf("%d hash mismatches counted", n)
	}
	t.Logf("read error (expected): %v", readErr)
}

// compareTree reads every regular file under dir and compares it with the
// same file under orig: a file that differs fails the test; the first
// read error is returned.
func compareTree(t *testing.T, dir, orig string) error {
	t.Helper()
	var first error
	err := filepath.WalkDir(orig, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(orig, p)
		got, rerr := os.ReadFile(filepath.Join(dir, rel))
		if rerr != nil {
			if first == nil {
				first = rerr
			}
			return nil
		}
		want, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if string(got) != string(want) {
			t.Errorf("%s: served bytes differ from the original", rel)
		}
		return nil
	})
	must(t, err)
	return first
}

// A blockstore that holds only some of the blocks, the others replaced by
// files it must refuse (a FIFO, a symlink to the real block file, a file
// of the wrong bytes): read-ahead and background fetch still deliver the
// whole closure, the missing and refused blocks from kubo's gateway and
// API, and every mounted path hashes to its NarHash.
func TestKuboBlockstorePartial(t *testing.T) {
	p := publishClosure(t)
	repo := t.TempDir()
	src := filepath.Join(p.kubo.Path, "blocks")
	sharding, err := os.ReadFile(filepath.Join(src, "SHARDING"))
	must(t, err)
	must(t, os.MkdirAll(filepath.Join(repo, "blocks"), 0o755))
	must(t, os.WriteFile(filepath.Join(repo, "blocks", "SHARDING"), sharding, 0o644))
	files, _ := filepath.Glob(filepath.Join(src, "*", "*.data"))
	if len(files) < 8 {
		t.Fatalf("%d block files in kubo's blockstore", len(files))
	}
	var kept, odd int
	for i, f := range files {
		dst := filepath.Join(repo, "blocks", filepath.Base(filepath.Dir(f)), filepath.Base(f))
		must(t, os.MkdirAll(filepath.Dir(dst), 0o755))
		switch i % 5 {
		case 0, 2:
			data, err := os.ReadFile(f)
			must(t, err)
			must(t, os.WriteFile(dst, data, 0o644))
			kept++
		case 1:
			// missing
		case 3:
			if i%2 == 0 {
				must(t, syscall.Mkfifo(dst, 0o644))
			} else {
				must(t, os.Symlink(f, dst))
			}
			odd++
		case 4:
			data, err := os.ReadFile(f)
			must(t, err)
			data[0] ^= 0xff
			must(t, os.WriteFile(dst, data, 0o644))
			odd++
		}
	}
	t.Logf("%d block files: %d copied, %d replaced by odd files, the rest missing", len(files), kept, odd)
	m := p.mount(t, "--kubo-repo", repo, "--block-timeout", "5s", "--read-timeout", "20s")
	checkMountedClosure(t, p, m)
	read, missing := m.metric(t, "ipnix_kubo_blockstore_reads_total"), m.metric(t, "ipnix_kubo_blockstore_missing_total")
	fetched := m.metric(t, "ipnix_fetch_blocks_total")
	t.Logf("blockstore: %d read, %d missing; %d blocks fetched in all", read, missing, fetched)
	if read == 0 || missing == 0 || fetched <= read {
		t.Errorf("blocks read %d, missing %d, fetched %d: want some of each, and more fetched than read from the blockstore", read, missing, fetched)
	}
}
