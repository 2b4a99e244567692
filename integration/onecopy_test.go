package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipnix/ipnix/narindex"
)

// blockFiles counts the block files of the disk cache under cacheDir and
// their bytes (none when it was never made).
func blockFiles(t *testing.T, cacheDir string) (n int, size int64) {
	t.Helper()
	err := filepath.WalkDir(filepath.Join(cacheDir, "blocks"), func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && p == filepath.Join(cacheDir, "blocks") {
			return filepath.SkipDir
		}
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		n++
		size += fi.Size()
		return nil
	})
	must(t, err)
	return n, size
}

// writeBytes is the bytes the process has caused to be written to storage
// (/proc/PID/io, counted when pages are dirtied).
func writeBytes(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	must(t, err)
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "write_bytes: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			must(t, err)
			return n
		}
	}
	t.Fatalf("no write_bytes in /proc/%d/io", pid)
	return 0
}

// With a local kubo (API and gateway on loopback), --cache-dir keeps no
// blocks: kubo's blockstore holds them. A full read writes the local
// copies once (about one byte per NAR byte, not two), and they are usable
// the moment the read that completed the verification returns.
func TestDiskCacheLocalKuboOneCopy(t *testing.T) {
	p := publishClosure(t)
	cacheDir := t.TempDir()
	lib := p.closure.path(t, "ipnix-test-lib")
	narSize := int64(p.narInfo(t, lib).NarSize)
	m := p.mount(t, "--cache-dir", cacheDir, "--cache-size", "1GiB")
	if !m.waitLog("not keeping blocks on disk") {
		t.Error("the log does not say that blocks are not kept on disk")
	}
	pid := m.proc().Pid
	before := writeBytes(t, pid)
	root := filepath.Join(m.dir, filepath.Base(lib))
	withTimeout(t, 2*time.Minute, "reading the path", func(context.Context) { must(t, readTree(root)) })
	// No waiting: the copies are in place when the verifying read returns.
	if v := m.metric(t, "ipnix_store_paths_verified_total"); v != 1 {
		t.Fatalf("verified %d", v)
	}
	if c := m.metric(t, "ipnix_local_copies_total"); c != 1 {
		t.Fatalf("local copies %d right after the verifying read, want 1", c)
	}
	got, err := os.ReadFile(filepath.Join(root, "share/big.bin"))
	must(t, err)
	want, err := os.ReadFile(filepath.Join(lib, "share/big.bin"))
	must(t, err)
	if !bytes.Equal(got, want) {
		t.Fatal("share/big.bin read through its copy differs")
	}
	if n := m.metric(t, "ipnix_passthrough_opens_total"); n == 0 {
		t.Error("the open right after verification was not offered the local copy")
	}
	written := writeBytes(t, pid) - before
	n, size := blockFiles(t, cacheDir)
	t.Logf("NAR %d bytes; the mount wrote %d bytes (%.3f per NAR byte); %d block files, %d bytes", narSize, written, float64(written)/float64(narSize), n, size)
	if n != 0 {
		t.Errorf("%d block files (%d bytes) written beside a local kubo", n, size)
	}
	if written > narSize*11/10 {
		t.Errorf("wrote %d bytes to disk for a %d-byte NAR: more than 1.1 per NAR byte", written, narSize)
	}
}

// With --disk-blocks=always (a gateway on loopback counts as local, so
// this stands for a remote one), blocks go to disk; once the path's local
// copies are written, the blocks they hold leave the disk store.
func TestDiskCacheAlwaysKeepsBlocks(t *testing.T) {
	p := publishClosure(t)
	cacheDir := t.TempDir()
	lib := p.closure.path(t, "ipnix-test-lib")
	narSize := int64(p.narInfo(t, lib).NarSize)
	m := p.mount(t, "--cache-dir", cacheDir, "--cache-size", "1GiB", "--disk-blocks", "always")
	root := filepath.Join(m.dir, filepath.Base(lib))
	msg := filepath.Join(root, "share/msg")
	if _, err := os.ReadFile(msg); err != nil {
		t.Fatal(err)
	}
	if n, _ := blockFiles(t, cacheDir); n == 0 {
		t.Fatal("no block written to disk with --disk-blocks=always")
	}
	withTimeout(t, 2*time.Minute, "reading the path", func(context.Context) { must(t, readTree(root)) })
	if c := m.metric(t, "ipnix_local_copies_total"); c != 1 {
		t.Fatalf("local copies %d right after the verifying read, want 1", c)
	}
	// share/big.bin (6 MB) is copied: its whole leaves leave the disk.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, size := blockFiles(t, cacheDir)
		if size <= narSize-5_000_000 {
			t.Logf("disk blocks: %d bytes for a %d-byte NAR once the copies are written", size, narSize)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("disk blocks: %d bytes for a %d-byte NAR whose 6 MB file has a local copy", size, narSize)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if d := m.metric(t, "ipnix_disk_cache_bytes"); d > narSize-5_000_000 {
		t.Errorf("ipnix_disk_cache_bytes %d after the copies' blocks were dropped", d)
	}
}

// A NAR that does not match NarHash (its CID signed by mistake) leaves no
// local copy behind, finished or not.
func TestLocalCopiesNoneOnMismatch(t *testing.T) {
	p := publishClosure(t)
	lib := p.closure.path(t, "ipnix-test-lib")
	ni := p.narInfo(t, lib)
	nar, err := os.ReadFile(filepath.Join(p.cache, ni.URL))
	must(t, err)
	sp, _ := narindex.ParseStorePath(lib)
	lsData, err := os.ReadFile(filepath.Join(p.cache, sp.Hash+".ls"))
	must(t, err)
	listing, err := narindex.ParseListing(lsData)
	must(t, err)
	bigNode, err := listing.Lookup("share/big.bin")
	must(t, err)
	bad := bytes.Clone(nar)
	bad[bigNode.NarOffset+1000] ^= 0xff
	badCid := p.kubo.ipfs(t, bytes.NewReader(bad), "add", "-Q", "--cid-version=1", "--raw-leaves", "--chunker=size-262144")
	key, err := narindex.LoadSecretKeyFile(p.sec)
	must(t, err)
	resigned := t.TempDir()
	p.copyEntry(t, resigned, lib, func(ni *narindex.NarInfo) {
		ni.IpfsCid = badCid
		must(t, ni.SignCid(key))
	})
	cacheDir := t.TempDir()
	m := startMount(t, "--api", p.kubo.api, "--substituter", "file://"+resigned, "--trusted-public-key", p.pub, "--cache-dir", cacheDir)
	root := filepath.Join(m.dir, filepath.Base(lib))
	var readErr error
	withTimeout(t, 2*time.Minute, "reading the tampered path", func(context.Context) { readErr = readTree(root) })
	if !errors.Is(readErr, syscall.EIO) {
		t.Fatalf("reading every file of a path with a wrong NAR: %v, want EIO", readErr)
	}
	ents, err := os.ReadDir(filepath.Join(cacheDir, "files"))
	must(t, err)
	if len(ents) != 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("the copies directory holds %v after the mismatch, want nothing", names)
	}
}
