package integration

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipnix/ipnix/narindex"
)

// copyEntry writes storePath's narinfo (after edit) and listing from p's
// cache into a new cache directory, which it returns.
func (p *published) copyEntry(t *testing.T, dst, storePath string, edit func(ni *narindex.NarInfo)) {
	t.Helper()
	sp, _ := narindex.ParseStorePath(storePath)
	ni := p.narInfo(t, storePath)
	if edit != nil {
		edit(ni)
	}
	must(t, os.WriteFile(filepath.Join(dst, sp.Hash+".narinfo"), ni.Marshal(), 0o644))
	ls, err := os.ReadFile(filepath.Join(p.cache, sp.Hash+".ls"))
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dst, sp.Hash+".ls"), ls, 0o644))
	info, err := os.ReadFile(filepath.Join(p.cache, "nix-cache-info"))
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dst, "nix-cache-info"), info, 0o644))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// readTree reads every regular file under root and returns the first error.
func readTree(root string) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			_, err = os.ReadFile(path)
		}
		return err
	})
}

// A narinfo whose IpfsCid names another NAR of the same size: the ordinary
// Sig still verifies (it does not cover the CID), every block matches its
// CID, and only the whole-NAR check can tell. Reading everything ends in
// EIO and the path stays quarantined.
func TestQuarantineOnNarHashMismatch(t *testing.T) {
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
	if badCid == ni.IpfsCid {
		t.Fatal("tampered NAR has the original CID")
	}

	// With its IpfsCidSig kept, the swapped CID is caught at lookup.
	signed := t.TempDir()
	p.copyEntry(t, signed, lib, func(ni *narindex.NarInfo) { ni.IpfsCid = badCid })
	ms := startMount(t, "--api", p.kubo.api, "--substituter", "file://"+signed, "--trusted-public-key", p.pub)
	if _, err := os.Lstat(filepath.Join(ms.dir, filepath.Base(lib))); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("swapped CID with the original IpfsCidSig: %v, want ENOENT", err)
	}

	// An attacker strips IpfsCidSig: the path is fetched whole and checked
	// against NarHash before anything of it is shown, so it never is.
	dir := t.TempDir()
	p.copyEntry(t, dir, lib, func(ni *narindex.NarInfo) { ni.IpfsCid, ni.IpfsCidSig = badCid, "" })
	m := startMount(t, "--api", p.kubo.api, "--substituter", "file://"+dir, "--trusted-public-key", p.pub)
	if _, err := os.Lstat(filepath.Join(m.dir, filepath.Base(lib))); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("stripped IpfsCidSig over the CID of a wrong NAR: %v, want ENOENT", err)
	}
	if !m.waitLog("verified whole") {
		t.Errorf("no log line about the refusal:\n%s", m.log.String())
	}

	// The publisher's key signed the wrong CID (a publisher bug): the path
	// is served lazily, and the whole-NAR check at the end quarantines it.
	key, err := narindex.LoadSecretKeyFile(p.sec)
	must(t, err)
	resigned := t.TempDir()
	p.copyEntry(t, resigned, lib, func(ni *narindex.NarInfo) {
		ni.IpfsCid = badCid
		must(t, ni.SignCid(key))
	})
	mq := startMount(t, "--api", p.kubo.api, "--substituter", "file://"+resigned, "--trusted-public-key", p.pub)
	root := filepath.Join(mq.dir, filepath.Base(lib))
	var readErr error
	withTimeout(t, 2*time.Minute, "reading the tampered path", func(context.Context) { readErr = readTree(root) })
	if !errors.Is(readErr, syscall.EIO) {
		t.Fatalf("reading every file of a path with a wrong NAR: %v, want EIO", readErr)
	}
	if q := mq.metric(t, "ipnix_store_paths_quarantined_total"); q != 1 {
		t.Fatalf("quarantined counter = %d, want 1", q)
	}
	// Stays quarantined: files read before (and cached) fail too.
	for _, f := range []string{"share/msg", "sizes/f1", "share/big.bin"} {
		if _, err := os.ReadFile(filepath.Join(root, f)); !errors.Is(err, syscall.EIO) {
			t.Errorf("after quarantine, read %s: %v, want EIO", f, err)
		}
	}
	if !mq.waitLog("quarantined") {
		t.Errorf("no log line about the quarantine:\n%s", mq.log.String())
	}
}

// A CID whose file size is not NarSize is refused at lookup.
func TestCidOfWrongSizeRefused(t *testing.T) {
	p := publishClosure(t)
	bin := p.closure.path(t, "ipnix-test-bin")
	other := p.narInfo(t, p.closure.path(t, "ipnix-test-big")).IpfsCid
	dir := t.TempDir()
	p.copyEntry(t, dir, bin, func(ni *narindex.NarInfo) { ni.IpfsCid, ni.IpfsCidSig = other, "" })
	m := startMount(t, "--api", p.kubo.api, "--substituter", "file://"+dir, "--trusted-public-key", p.pub)
	if _, err := os.Lstat(filepath.Join(m.dir, filepath.Base(bin))); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("lookup with a CID of the wrong size: %v, want ENOENT", err)
	}
	if !m.waitLog("NarSize") {
		t.Errorf("log does not say why:\n%s", m.log.String())
	}
}

func TestSignatures(t *testing.T) {
	p := publishClosure(t)
	bin := p.closure.path(t, "ipnix-test-bin")
	dir := t.TempDir()
	p.copyEntry(t, dir, bin, func(ni *narindex.NarInfo) {
		// Corrupt the signature's base64 payload, keep its key name.
		for i, s := range ni.Sigs {
			name, sig, _ := strings.Cut(s, ":")
			b := []byte(sig)
			if b[0] == 'A' {
				b[0] = 'B'
			} else {
				b[0] = 'A'
			}
			ni.Sigs[i] = name + ":" + string(b)
		}
	})
	name := filepath.Base(bin)

	t.Run("bad-signature-is-enoent", func(t *testing.T) {
		m := startMount(t, "--api", p.kubo.api, "--substituter", "file://"+dir, "--trusted-public-key", p.pub)
		if _, err := os.Lstat(filepath.Join(m.dir, name)); !errors.Is(err, syscall.ENOENT) {
			t.Fatalf("lookup with a bad signature: %v, want ENOENT", err)
		}
		if !m.waitLog(name, "signature") {
			t.Errorf("no logged reason naming the path and the signature:\n%s", m.log.String())
		}
	})
	t.Run("untrusted-key-is-enoent", func(t *testing.T) {
		_, otherPub := genKey(t, "someone-else-1")
		m := startMount(t, "--api", p.kubo.api, "--substituter", "file://"+p.cache, "--trusted-public-key", otherPub)
		if _, err := os.Lstat(filepath.Join(m.dir, name)); !errors.Is(err, syscall.ENOENT) {
			t.Fatalf("lookup signed by an untrusted key: %v, want ENOENT", err)
		}
	})
	t.Run("no-require-sigs-shows-it", func(t *testing.T) {
		m := startMount(t, "--api", p.kubo.api, "--substituter", "file://"+dir, "--no-require-sigs")
		got, err := os.ReadFile(filepath.Join(m.dir, name, "bin", "hello"))
		if err != nil || !strings.Contains(string(got), "share/msg") {
			t.Fatalf("with --no-require-sigs: %v %q", err, got)
		}
	})
}
