package integration

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipnix/ipnix/narindex"
)

// published is a closure published by `ipnix publish` into a binary cache.
type published struct {
	kubo    *kubo
	closure *testClosure
	cache   string // directory
	pub     string // trusted public key
	sec     string // file holding the matching secret key
}

func publishClosure(t *testing.T) *published {
	t.Helper()
	requireReal(t)
	p := &published{kubo: startKubo(t), closure: buildClosure(t), cache: t.TempDir()}
	sec, pub := genKey(t, "ipnix-test-1")
	p.pub, p.sec = pub, sec
	out, err := ipnixCmd(t, nil, "publish", "--api", p.kubo.api, "--to", p.cache, "--secret-key", sec, p.closure.top)
	if err != nil {
		t.Fatalf("ipnix publish: %v\n%s", err, out)
	}
	if !strings.Contains(out, "published 4 store paths") {
		t.Fatalf("publish summary: %q", out)
	}
	return p
}

func (p *published) narInfo(t *testing.T, storePath string) *narindex.NarInfo {
	t.Helper()
	sp, err := narindex.ParseStorePath(storePath)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(p.cache, sp.Hash+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	ni, err := narindex.ParseNarInfo(b)
	if err != nil {
		t.Fatal(err)
	}
	return ni
}

func (p *published) mount(t *testing.T, extra ...string) *mount {
	// Blocks come from kubo's gateway first, its RPC API second.
	return startMount(t, append([]string{"--api", p.kubo.api, "--gateway", p.kubo.Gateway, "--substituter", "file://" + p.cache, "--trusted-public-key", p.pub}, extra...)...)
}

func TestEndToEnd(t *testing.T) {
	p := publishClosure(t)
	m := p.mount(t)
	checkMountedClosure(t, p, m)

	t.Run("unknown-paths-are-enoent", func(t *testing.T) {
		for _, name := range []string{
			"00000000000000000000000000000000-nothing",
			"not-a-store-path",
			filepath.Base(p.closure.path(t, "ipnix-test-bin")) + "x",
		} {
			_, err := os.Lstat(filepath.Join(m.dir, name))
			if !errors.Is(err, syscall.ENOENT) {
				t.Errorf("stat %s: %v, want ENOENT", name, err)
			}
		}
		_, err := os.Lstat(filepath.Join(m.dir, filepath.Base(p.closure.top), "nope"))
		if !errors.Is(err, syscall.ENOTDIR) {
			t.Errorf("lookup under a file store path: %v", err)
		}
	})

	t.Run("read-only", func(t *testing.T) {
		f := filepath.Join(m.dir, filepath.Base(p.closure.path(t, "ipnix-test-lib")), "share", "msg")
		if err := os.WriteFile(f, []byte("x"), 0o644); err == nil {
			t.Fatal("write succeeded on a read-only mount")
		}
		if err := os.Mkdir(filepath.Join(m.dir, "newdir"), 0o755); err == nil {
			t.Fatal("mkdir succeeded on a read-only mount")
		}
	})
}

// checkMountedClosure is the differential test of a mount serving the
// published closure: Nix hashes every mounted path to the narinfo's
// NarHash and to the original's hash, every tree equals the original
// (diff -r, types, modes, sizes, symlink targets), each path was verified,
// and a program runs from the mount.
func checkMountedClosure(t *testing.T, p *published, m *mount) {
	t.Helper()
	t.Run("nar-hash-matches-narinfo", func(t *testing.T) {
		for _, sp := range p.closure.paths {
			ni := p.narInfo(t, sp)
			if ni.IpfsCid == "" || len(ni.Sigs) == 0 || ni.IpfsCidSig == "" {
				t.Fatalf("%s: narinfo lacks IpfsCid, Sig or IpfsCidSig:\n%s", sp, ni.Marshal())
			}
			mounted := filepath.Join(m.dir, filepath.Base(sp))
			var got string
			withTimeout(t, 2*time.Minute, "nix hash path", func(context.Context) { got = nixHashPath(t, mounted) })
			if want := ni.NarHash.String(); got != want {
				t.Errorf("%s: Nix hashes the mounted path as %s, narinfo says %s", sp, got, want)
			}
			if orig := nixHashPath(t, sp); orig != got {
				t.Errorf("%s: mounted %s, original %s", sp, got, orig)
			}
		}
		if v := m.metric(t, "ipnix_store_paths_verified_total"); v != int64(len(p.closure.paths)) {
			t.Errorf("verified %d store paths after reading all, want %d", v, len(p.closure.paths))
		}
	})

	t.Run("tree-equals-original", func(t *testing.T) {
		for _, sp := range p.closure.paths {
			mounted := filepath.Join(m.dir, filepath.Base(sp))
			if out, err := exec.Command("diff", "-r", "--no-dereference", sp, mounted).CombinedOutput(); err != nil {
				t.Errorf("diff -r --no-dereference %s %s: %v\n%s", sp, mounted, err, out)
			}
			if a, b := treeModes(t, sp), treeModes(t, mounted); a != b {
				t.Errorf("%s: types, modes or sizes differ:\noriginal:\n%s\nmounted:\n%s", sp, a, b)
			}
		}
	})

	t.Run("program-runs-from-mount", func(t *testing.T) {
		bin := filepath.Join(m.dir, filepath.Base(p.closure.path(t, "ipnix-test-bin")), "bin")
		out, err := exec.Command(filepath.Join(bin, "echo"), "ran", "from", "ipnix").CombinedOutput()
		if err != nil || string(out) != "ran from ipnix\n" {
			t.Fatalf("echo from the mount: %v %q", err, out)
		}
		out, err = exec.Command(filepath.Join(bin, "hello-rel")).CombinedOutput()
		if err != nil || string(out) != "hello from lib\n" {
			t.Fatalf("script via relative symlink: %v %q", err, out)
		}
	})
}

// A small read of a large store path fetches a small part of its NAR.
func TestLazyRead(t *testing.T) {
	p := publishClosure(t)
	m := p.mount(t)
	big := p.closure.path(t, "ipnix-test-big")
	ni := p.narInfo(t, big)
	before := m.metric(t, "ipnix_fetch_bytes_total")
	got, err := os.ReadFile(filepath.Join(m.dir, filepath.Base(big), "small.txt"))
	if err != nil || string(got) != "small\n" {
		t.Fatalf("read small.txt: %v %q", err, got)
	}
	fetched := m.metric(t, "ipnix_fetch_bytes_total") - before
	t.Logf("read %d bytes of a %d-byte NAR; fetched %d bytes (%.2f%%)", len(got), ni.NarSize, fetched, 100*float64(fetched)/float64(ni.NarSize))
	if fetched <= 0 {
		t.Fatal("nothing was fetched: is the counter wired?")
	}
	if fetched*10 >= int64(ni.NarSize) {
		t.Fatalf("fetched %d bytes, not less than 10%% of the %d-byte NAR", fetched, ni.NarSize)
	}
}

// treeModes lists every entry with its type, permission bits, size and
// symlink target, in order.
func treeModes(t *testing.T, root string) string {
	t.Helper()
	out, err := treeModesE(root)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A mount whose process was killed leaves a dead FUSE mount (ENOTCONN);
// the next start at the same place clears it and serves again.
func TestStaleMountCleared(t *testing.T) {
	p := publishClosure(t)
	dir := t.TempDir()
	args := []string{"--api", p.kubo.api, "--substituter", "file://" + p.cache, "--trusted-public-key", p.pub}
	first := startMountAt(t, dir, args...)
	// Attributes the kernel keeps must not hide the dead server.
	if _, err := os.Stat(dir); err != nil {
		t.Fatal(err)
	}
	if err := first.proc().Kill(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := os.Stat(dir)
		if errors.Is(err, syscall.ENOTCONN) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after SIGKILL, stat gives %v, want ENOTCONN", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	second := startMountAt(t, dir, args...)
	top := filepath.Join(second.dir, filepath.Base(p.closure.top))
	if _, err := os.ReadFile(top); err != nil {
		t.Fatalf("reading through the new mount: %v", err)
	}
}

// With --cache-dir and blocks kept on disk (always: this kubo is local), a
// remount serves what was read before from disk, even with kubo gone;
// large files of verified paths go through passthrough.
func TestDiskCacheAcrossRemount(t *testing.T) {
	p := publishClosure(t)
	cacheDir := t.TempDir()
	lib := p.closure.path(t, "ipnix-test-lib")
	args := []string{"--cache-dir", cacheDir, "--cache-size", "1GiB", "--disk-blocks", "always"}
	m := p.mount(t, args...)
	root := filepath.Join(m.dir, filepath.Base(lib))
	if err := readTree(root); err != nil {
		t.Fatal(err)
	}
	if v := m.metric(t, "ipnix_store_paths_verified_total"); v != 1 {
		t.Fatalf("verified %d", v)
	}
	// Verified: its large files are copied into the cache directory, and
	// opening the 6 MB file again offers the kernel the copy.
	deadline := time.Now().Add(time.Minute)
	for m.metric(t, "ipnix_local_copies_total") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("no local copies written for a verified path")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.ReadFile(filepath.Join(root, "share/big.bin")); err != nil {
		t.Fatal(err)
	}
	if n := m.metric(t, "ipnix_passthrough_opens_total"); n == 0 {
		t.Error("no passthrough offered for a large file of a verified path")
	}
	if err := m.Stop(); err != nil {
		t.Fatal(err)
	}
	p.kubo.Stop()

	m2 := p.mount(t, args...)
	var got string
	withTimeout(t, 2*time.Minute, "nix hash path", func(context.Context) {
		got = nixHashPath(t, filepath.Join(m2.dir, filepath.Base(lib)))
	})
	if want := p.narInfo(t, lib).NarHash.String(); got != want {
		t.Fatalf("from the disk cache alone: %s, want %s", got, want)
	}
	if f := m2.metric(t, "ipnix_fetch_bytes_total"); f != 0 {
		t.Fatalf("fetched %d bytes with everything on disk", f)
	}
	if h := m2.metric(t, "ipnix_disk_cache_hits_total"); h == 0 {
		t.Fatal("no disk cache hits")
	}
	// The copies outlive the first mount: once the remount has hashed
	// them again against their manifest, it hands the kernel the copy of
	// the large file.
	deadline = time.Now().Add(time.Minute)
	for m2.metric(t, "ipnix_local_copies_checked_total") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("local copies from before the remount never checked")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.ReadFile(filepath.Join(m2.dir, filepath.Base(lib), "share/big.bin")); err != nil {
		t.Fatal(err)
	}
	if n := m2.metric(t, "ipnix_passthrough_opens_total"); n == 0 {
		t.Error("no passthrough after the remount")
	}
}
