package integration

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ipnix/ipnix/integration/runenv"
	"github.com/ipnix/ipnix/narindex"
)

// startServe runs `ipnix serve` on a loopback port and returns its URL;
// the server is stopped by the test's cleanup.
func startServe(t *testing.T, args ...string) (string, *runenv.Proc) {
	t.Helper()
	p, err := runenv.Start(exec.Command(ipnixBin, append([]string{"serve", "--listen", "127.0.0.1:0"}, args...)...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("ipnix serve log:\n%s", p.Log.String())
		}
	})
	if err := p.WaitFor(30*time.Second, "ipnix: serving http://"); err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`serving (http://[0-9.:]+)`).FindStringSubmatch(p.Log.String())
	if m == nil {
		t.Fatalf("no address in:\n%s", p.Log.String())
	}
	return m[1], p
}

// nixCopy copies path from the binary cache at from into a fresh store
// rooted in a temporary directory (the machine's store is not touched),
// with signatures required and only key trusted. Nix keeps the narinfos
// it fetched in ~/.cache/nix for a month, by URL: a server started on a
// port an earlier test's server had, signing with another key, would get
// the earlier narinfo ("lacks a valid signature"). Each copy gets a cache
// of its own.
func nixCopy(t *testing.T, from, key, path string) (string, []byte, error) {
	t.Helper()
	dest := t.TempDir()
	cmd := exec.Command("nix", "--extra-experimental-features", "nix-command", "copy",
		"--from", from, "--to", dest, "--option", "require-sigs", "true",
		"--option", "trusted-public-keys", key, "--option", "substituters", "", path)
	cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	return dest, out, err
}

// Plain Nix substitutes a closure through `ipnix serve`, signatures
// required; when the IPFS data behind a narinfo is another NAR, Nix gets a
// NAR cut short and refuses it, and the server refuses the path after.
func TestServeToNixCopy(t *testing.T) {
	p := publishClosure(t)
	url, _ := startServe(t, "--api", p.kubo.api, "--substituter", "file://"+p.cache, "--trusted-public-key", p.pub)
	dest, out, err := nixCopy(t, url, p.pub, p.closure.top)
	if err != nil {
		t.Fatalf("nix copy through ipnix serve: %v\n%s", err, out)
	}
	for _, sp := range p.closure.paths {
		v := exec.Command("nix-store", "--store", dest, "--verify-path", sp)
		if o, err := v.CombinedOutput(); err != nil {
			t.Errorf("nix-store --verify-path %s in the copy: %v\n%s", sp, err, o)
		}
	}
	lib := p.closure.path(t, "ipnix-test-lib")
	a, err := os.ReadFile(filepath.Join(dest, lib, "share/big.bin"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(lib, "share/big.bin"))
	if err != nil || !bytes.Equal(a, b) {
		t.Fatalf("copied file differs: %v", err)
	}

	// Range requests, for a path whose CID a trusted key signed.
	sp, _ := narindex.ParseStorePath(lib)
	req, _ := http.NewRequest(http.MethodGet, url+"/nar/"+sp.Hash+".nar", nil)
	req.Header.Set("Range", "bytes=1000-1999")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	part, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	narBytes, err := os.ReadFile(filepath.Join(p.cache, p.narInfo(t, lib).URL))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, narBytes[1000:2000]) {
		t.Fatalf("range request: %s, %d bytes, equal=%v", resp.Status, len(part), bytes.Equal(part, narBytes[1000:2000]))
	}

	// The listing is served only when it is the one the publisher signed:
	// the true one is, a tampered one (narinfo and signatures untouched)
	// is not, and Nix gets no unauthenticated names, modes or targets.
	getLs := func(base string) (int, []byte) {
		resp, err := http.Get(base + "/" + sp.Hash + ".ls")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	trueLs, err := os.ReadFile(filepath.Join(p.cache, sp.Hash+".ls"))
	if err != nil {
		t.Fatal(err)
	}
	if code, b := getLs(url); code != http.StatusOK || !bytes.Equal(b, trueLs) {
		t.Fatalf("signed listing: %d, equal=%v", code, bytes.Equal(b, trueLs))
	}
	lsTampered := t.TempDir()
	p.copyEntry(t, lsTampered, lib, nil)
	evilLs := bytes.Replace(trueLs, []byte(`"share"`), []byte(`"shore"`), 1)
	if err := os.WriteFile(filepath.Join(lsTampered, sp.Hash+".ls"), evilLs, 0o644); err != nil {
		t.Fatal(err)
	}
	url3, _ := startServe(t, "--api", p.kubo.api, "--substituter", "file://"+lsTampered, "--trusted-public-key", p.pub)
	if code, b := getLs(url3); code != http.StatusNotFound || bytes.Contains(b, []byte("shore")) {
		t.Fatalf("tampered listing served: %d %q", code, b)
	}

	// Another NAR of the same size behind the narinfo, IpfsCidSig stripped
	// (the ordinary Sig stays valid: it does not cover the CID).
	ni := p.narInfo(t, lib)
	nar, err := os.ReadFile(filepath.Join(p.cache, ni.URL))
	if err != nil {
		t.Fatal(err)
	}
	evil := bytes.Clone(nar)
	evil[len(evil)/2] ^= 0xff
	evilCid := p.kubo.ipfs(t, bytes.NewReader(evil), "add", "-Q", "--cid-version=1", "--raw-leaves", "--chunker=size-262144")
	tampered := t.TempDir()
	p.copyEntry(t, tampered, lib, func(n *narindex.NarInfo) { n.IpfsCid, n.IpfsCidSig = evilCid, "" })
	url2, srv := startServe(t, "--api", p.kubo.api, "--substituter", "file://"+tampered, "--trusted-public-key", p.pub)
	_, out, err = nixCopy(t, url2, p.pub, lib)
	if err == nil {
		t.Fatalf("nix copy of a path whose CID names another NAR succeeded:\n%s", out)
	}
	t.Logf("nix copy refused the tampered path: %s", lastLine(string(out)))
	if !strings.Contains(srv.Log.String(), "store path refused") {
		t.Errorf("the server did not log the refusal:\n%s", srv.Log.String())
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
