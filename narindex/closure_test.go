package narindex

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// closureCache is a substituter holding a small closure:
// app -> lib -> libc, app -> data, every path referring to itself too.
func closureCache(t *testing.T, k SecretKey) (*memSubstituter, map[string]string) {
	t.Helper()
	names := []string{"app", "lib", "libc", "data"}
	base := map[string]string{}
	for i, n := range names {
		base[n] = EncodeNix32(bytes.Repeat([]byte{byte(i + 1)}, 20)) + "-" + n
	}
	refs := map[string][]string{"app": {"app", "lib", "data"}, "lib": {"lib", "libc"}, "libc": {"libc"}, "data": nil}
	m := &memSubstituter{url: "mem://closure", narinfos: map[string]*NarInfo{}, listings: map[string][]byte{}}
	for _, n := range names {
		ni := &NarInfo{StorePath: StoreDir + "/" + base[n], URL: "nar/x.nar", NarHash: SHA256(make([]byte, 32)), NarSize: 100, IpfsCid: testCid}
		for _, r := range refs[n] {
			ni.References = append(ni.References, base[r])
		}
		if err := ni.Sign(k); err != nil {
			t.Fatal(err)
		}
		if err := ni.SignCid(k); err != nil {
			t.Fatal(err)
		}
		m.narinfos[strings.SplitN(base[n], "-", 2)[0]] = ni
	}
	return m, base
}

func testSecretKey(t *testing.T) SecretKey {
	t.Helper()
	return SecretKey{Name: "closure-test-1", Key: ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))}
}

func TestClosureReferencesFirst(t *testing.T) {
	k := testSecretKey(t)
	m, base := closureCache(t, k)
	r := &Resolver{Substituters: []Substituter{m}, TrustedKeys: []PublicKey{k.Public()}, RequireSigs: true}
	got, err := r.Closure(context.Background(), []string{base["app"]}, 2)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, res := range got {
		pos[res.Path.Name] = i
		if !res.CidSigned {
			t.Errorf("%s not CID-signed", res.Path)
		}
	}
	if len(got) != 4 {
		t.Fatalf("closure has %d paths, want 4", len(got))
	}
	for _, e := range [][2]string{{"lib", "app"}, {"data", "app"}, {"libc", "lib"}} {
		if pos[e[0]] > pos[e[1]] {
			t.Errorf("%s listed after %s, which refers to it", e[0], e[1])
		}
	}
	if info, _ := m.requests(); info != 4 {
		t.Errorf("%d narinfo requests for 4 paths", info)
	}
}

// A reference that no substituter has (or whose narinfo is refused) fails
// the closure, naming the path and who referred to it.
func TestClosureMissingReference(t *testing.T) {
	k := testSecretKey(t)
	m, base := closureCache(t, k)
	delete(m.narinfos, strings.SplitN(base["libc"], "-", 2)[0])
	r := &Resolver{Substituters: []Substituter{m}, TrustedKeys: []PublicKey{k.Public()}, RequireSigs: true}
	_, err := r.Closure(context.Background(), []string{base["app"]}, 4)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), base["libc"]) || !strings.Contains(err.Error(), "reference of "+base["lib"]) {
		t.Fatalf("err = %v", err)
	}
	// Signed by a key not trusted: refused.
	r.TrustedKeys = []PublicKey{{Name: "other", Key: make([]byte, 32)}}
	if _, err := r.Closure(context.Background(), []string{base["data"]}, 1); !errors.Is(err, ErrRejected) {
		t.Fatalf("untrusted closure: %v", err)
	}
}

func TestStorePathArg(t *testing.T) {
	const b = "0c6kzph7l0dcbfmjap64f0czdafn3b7x-hello-2.12"
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink(StoreDir+"/"+b, filepath.Join(dir, "result")))
	must(os.Symlink("result", filepath.Join(dir, "result-2")))
	for _, in := range []string{StoreDir + "/" + b, StoreDir + "/" + b + "/bin/hello", b, filepath.Join(dir, "result"), filepath.Join(dir, "result-2")} {
		p, err := StorePathArg(in)
		if err != nil || p.Base() != b {
			t.Errorf("StorePathArg(%q) = %v, %v", in, p, err)
		}
	}
	must(os.Symlink("/etc", filepath.Join(dir, "elsewhere")))
	must(os.Symlink("loop", filepath.Join(dir, "loop")))
	for _, in := range []string{"", "hello", "/nix/store", "/nix/store/", "/tmp/" + b, filepath.Join(dir, "elsewhere"), filepath.Join(dir, "loop"), "../" + b} {
		if p, err := StorePathArg(in); err == nil {
			t.Errorf("StorePathArg(%q) = %v, want an error", in, p)
		}
	}
}

// StorePathArg never panics and, when it accepts, gives a valid store path.
func FuzzStorePathArg(f *testing.F) {
	for _, s := range []string{"/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-hello", "0c6kzph7l0dcbfmjap64f0czdafn3b7x-x/y", "result", "", "/", "/nix/store//"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := StorePathArg(s)
		if err != nil {
			return
		}
		if _, err := ParseStorePathBase(p.Base()); err != nil {
			t.Fatalf("StorePathArg(%q) = %q, not a valid store path: %v", s, p.Base(), err)
		}
	})
}

// ResolveHash finds a path by its hash part with one narinfo request, and
// applies Resolve's checks.
func TestResolveHash(t *testing.T) {
	k := testSecretKey(t)
	m, base := closureCache(t, k)
	r := &Resolver{Substituters: []Substituter{m}, TrustedKeys: []PublicKey{k.Public()}, RequireSigs: true}
	hash := strings.SplitN(base["lib"], "-", 2)[0]
	res, err := r.ResolveHash(context.Background(), hash)
	if err != nil || res.Path.Base() != base["lib"] || !res.CidSigned {
		t.Fatalf("ResolveHash = %+v, %v", res, err)
	}
	if info, _ := m.requests(); info != 1 {
		t.Fatalf("%d narinfo requests, want 1", info)
	}
	for _, bad := range []string{"", "x", strings.Repeat("e", 32), hash + "x"} {
		if _, err := r.ResolveHash(context.Background(), bad); !errors.Is(err, ErrNotFound) {
			t.Errorf("ResolveHash(%q) = %v, want not found", bad, err)
		}
	}
	r.TrustedKeys = []PublicKey{{Name: "other", Key: make([]byte, 32)}}
	if _, err := r.ResolveHash(context.Background(), hash); !errors.Is(err, ErrRejected) {
		t.Fatalf("untrusted: %v", err)
	}
}
