package ipfscache

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/boxo/ipns"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
	"github.com/ipnix/ipnix/narindex"
)

// fakeResolver answers what it is told.
type fakeResolver struct {
	mu    sync.Mutex
	res   Resolution
	err   error
	calls int
}

func (f *fakeResolver) ResolveName(ctx context.Context, name ipns.Name) (Resolution, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	return f.res, f.err
}

func (f *fakeResolver) String() string { return "fake" }

func (f *fakeResolver) set(root cid.Cid, seq uint64, verified bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.res, f.err = Resolution{Root: root, Seq: seq, Verified: verified, From: "fake"}, err
}

func (f *fakeResolver) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// narinfo writes a narinfo for hash, signed (Sig and IpfsCidSig) by key
// when it is not nil.
func narinfo(t *testing.T, hash string, key *narindex.SecretKey) []byte {
	t.Helper()
	sum := sha256.Sum256([]byte(hash))
	text := fmt.Sprintf("StorePath: /nix/store/%s-test\nURL: nar/%s.nar\nCompression: none\nNarHash: %s\nNarSize: 1000\nReferences: \nIpfsCid: %s\n",
		hash, hash, narindex.SHA256(sum[:]), cid.NewCidV1(cid.Raw, mustHash(hash)))
	ni, err := narindex.ParseNarInfo([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if key != nil {
		if err := ni.Sign(*key); err != nil {
			t.Fatal(err)
		}
		if err := ni.SignCid(*key); err != nil {
			t.Fatal(err)
		}
	}
	return ni.Marshal()
}

func newKey(t *testing.T, name string) narindex.SecretKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return narindex.SecretKey{Name: name, Key: k}
}

// TestCacheIPNS: an ipns:// cache behind narindex.Resolver finds signed
// narinfos of the directory the name points to, refuses unsigned ones and
// those of untrusted keys, finds a path published under a new root after
// the refresh that sees it (no miss remembered), and ignores an older
// record.
func TestCacheIPNS(t *testing.T) {
	ctx := context.Background()
	key, untrusted := newKey(t, "cache-1"), newKey(t, "evil-1")
	st := fetchtest.NewStore()
	bg := fetch.Verify(st, nil)
	a, b, unsigned, foreign := hashPart(5001), hashPart(5002), hashPart(5003), hashPart(5004)
	files := manyFiles(2500) // sharded at fanout 256: several levels
	files["nix-cache-info"] = []byte("StoreDir: /nix/store\nPriority: 30\n")
	files[a+".narinfo"] = narinfo(t, a, &key)
	files[unsigned+".narinfo"] = narinfo(t, unsigned, nil)
	files[foreign+".narinfo"] = narinfo(t, foreign, &untrusted)
	root1 := shardedDir(t, st, files, 256)
	files[b+".narinfo"] = narinfo(t, b, &key)
	root2 := shardedDir(t, st, files, 256)

	fr := &fakeResolver{}
	fr.set(root1, 1, true, nil)
	ref := Ref{Name: nameOf(fixedKey(1))}
	c, err := Open(ref, Options{Blocks: bg, Resolvers: []NameResolver{fr}})
	if err != nil {
		t.Fatal(err)
	}
	res := &narindex.Resolver{Substituters: []narindex.Substituter{c.Substituter()}, TrustedKeys: []narindex.PublicKey{key.Public()}, RequireSigs: true, RejectTTL: -1}
	if info, err := c.Substituter().CacheInfo(ctx); err != nil || info.Priority != 30 {
		t.Fatalf("CacheInfo = %+v, %v", info, err)
	}
	if r, err := res.Resolve(ctx, a+"-test"); err != nil || !r.CidSigned || r.From != ref.String() {
		t.Fatalf("signed path: %+v, %v", r, err)
	}
	for _, h := range []string{unsigned, foreign} {
		if _, err := res.Resolve(ctx, h+"-test"); !errors.Is(err, narindex.ErrRejected) {
			t.Errorf("%s: %v, want a rejection", h, err)
		}
	}
	if _, err := res.Resolve(ctx, b+"-test"); !errors.Is(err, narindex.ErrNotFound) {
		t.Fatalf("not yet published: %v", err)
	}
	// Published under a new root: found once a refresh has seen it.
	fr.set(root2, 2, true, nil)
	if changed, err := c.Refresh(ctx); !changed || err != nil {
		t.Fatalf("Refresh = %v, %v", changed, err)
	}
	if _, err := res.Resolve(ctx, b+"-test"); err != nil {
		t.Fatalf("published after a miss: %v", err)
	}
	// An older record (a gateway replaying one) does not roll back.
	fr.set(root1, 1, true, nil)
	if changed, err := c.Refresh(ctx); changed || err != nil {
		t.Errorf("older record: changed %v, %v", changed, err)
	}
	if got, _ := c.Root(); got != root2 {
		t.Errorf("root %s after an older record, want %s", got, root2)
	}
	// A failed refresh keeps the directory in use.
	fr.set(cid.Undef, 0, false, errors.New("down"))
	if _, err := c.Refresh(ctx); err == nil {
		t.Error("failed refresh reported no error")
	}
	if _, err := res.Resolve(ctx, b+"-test"); err != nil {
		t.Errorf("after a failed refresh: %v", err)
	}
}

// TestCacheUnresolved: while the name cannot be resolved, lookups fail
// (not "not found": a passing failure), at most one resolution is asked
// for every few seconds, and the first success is used.
func TestCacheUnresolved(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	root := basicDir(t, st, map[string][]byte{"nix-cache-info": []byte("StoreDir: /nix/store\n")})
	fr := &fakeResolver{}
	fr.set(cid.Undef, 0, false, errors.New("no record"))
	c, err := Open(Ref{Name: nameOf(fixedKey(1))}, Options{Blocks: fetch.Verify(st, nil), Resolvers: []NameResolver{fr}})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		_, err := c.Substituter().NarInfo(ctx, hashPart(1))
		if err == nil || errors.Is(err, narindex.ErrNotFound) {
			t.Fatalf("unresolved name: %v", err)
		}
	}
	if n := fr.count(); n != 1 {
		t.Errorf("%d resolutions for 5 lookups within the failure memory", n)
	}
	fr.set(root, 1, true, nil)
	if _, err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Substituter().NarInfo(ctx, hashPart(1)); !errors.Is(err, narindex.ErrNotFound) {
		t.Errorf("resolved name, absent narinfo: %v", err)
	}
}

// TestCacheRun: the refresh loop picks up a new root by itself.
func TestCacheRun(t *testing.T) {
	st := fetchtest.NewStore()
	root1 := basicDir(t, st, map[string][]byte{"nix-cache-info": []byte("StoreDir: /nix/store\n")})
	root2 := basicDir(t, st, map[string][]byte{"nix-cache-info": []byte("StoreDir: /nix/store\n"), "x": nil})
	fr := &fakeResolver{}
	fr.set(root1, 1, true, nil)
	c, err := Open(Ref{Name: nameOf(fixedKey(1))}, Options{Blocks: fetch.Verify(st, nil), Resolvers: []NameResolver{fr}, Refresh: MinRefresh})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	fr.set(root2, 2, true, nil)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if got, _ := c.Root(); got == root2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the refresh loop did not pick up the new root")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestCacheFixedAndOptions: an ipfs:// cache needs no resolver and never
// refreshes; an ipns:// one without resolvers, or with a refresh below
// MinRefresh, is refused.
func TestCacheFixedAndOptions(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	root := basicDir(t, st, map[string][]byte{"nix-cache-info": []byte("StoreDir: /nix/store\n"), hashPart(1) + ".ls": []byte("[]")})
	c, err := Open(Ref{Root: root}, Options{Blocks: fetch.Verify(st, nil)})
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := c.Refresh(ctx); changed || err != nil {
		t.Errorf("Refresh of ipfs:// = %v, %v", changed, err)
	}
	if ls, err := c.Substituter().Listing(ctx, hashPart(1)); err != nil || string(ls) != "[]" {
		t.Errorf("Listing = %q, %v", ls, err)
	}
	if !strings.HasPrefix(c.URL(), "ipfs://") {
		t.Errorf("URL %s", c.URL())
	}
	if _, err := Open(Ref{Name: nameOf(fixedKey(1))}, Options{Blocks: st}); err == nil {
		t.Error("ipns:// without resolvers accepted")
	}
	if _, err := Open(Ref{Root: root}, Options{Blocks: st, Refresh: time.Millisecond}); err == nil {
		t.Error("refresh of 1ms accepted")
	}
}

// TestCacheMalformedEntry: a narinfo entry that is a directory is a
// rejection of that path; a listing entry that is one is no listing.
func TestCacheMalformedEntry(t *testing.T) {
	ctx := context.Background()
	st := fetchtest.NewStore()
	sub := basicDir(t, st, map[string][]byte{"y": []byte("y")})
	files := map[string][]byte{"nix-cache-info": []byte("StoreDir: /nix/store\n")}
	links := addFiles(t, st, files)
	links[hashPart(1)+".narinfo"] = subLink(hashPart(1)+".narinfo", sub)
	links[hashPart(1)+".ls"] = subLink(hashPart(1)+".ls", sub)
	root := dirOfLinks(t, st, links)
	c, err := Open(Ref{Root: root}, Options{Blocks: fetch.Verify(st, nil)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Substituter().NarInfo(ctx, hashPart(1)); !errors.Is(err, narindex.ErrMalformedNarInfo) {
		t.Errorf("narinfo that is a directory: %v", err)
	}
	if _, err := c.Substituter().Listing(ctx, hashPart(1)); !errors.Is(err, narindex.ErrNotFound) {
		t.Errorf("listing that is a directory: %v", err)
	}
}
