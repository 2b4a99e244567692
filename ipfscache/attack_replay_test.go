package ipfscache

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/boxo/path"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
)

// TestAttackReplayFreeze: the first resolver asked replays an older, still
// valid record of the name for ever while a later one has the newer
// record. The cache must not be frozen on the old directory by the first
// answer: a record older than the one in use sends the question on to
// the next resolver.
func TestAttackReplayFreeze(t *testing.T) {
	ctx := context.Background()
	sk := fixedKey(1)
	name := nameOf(sk)
	later := time.Now().Add(time.Hour)
	st := fetchtest.NewStore()
	root1 := basicDir(t, st, map[string][]byte{"nix-cache-info": []byte("StoreDir: /nix/store\n")})
	root2 := basicDir(t, st, map[string][]byte{"nix-cache-info": []byte("StoreDir: /nix/store\n"), "new": nil})
	root3 := basicDir(t, st, map[string][]byte{"nix-cache-info": []byte("StoreDir: /nix/store\n"), "newer": nil})

	evil := &gatewayStub{records: map[string][]byte{}}
	honest := &gatewayStub{records: map[string][]byte{}}
	evilSrv, honestSrv := httptest.NewServer(evil), httptest.NewServer(honest)
	defer evilSrv.Close()
	defer honestSrv.Close()
	evil.set(name, record(t, sk, path.FromCid(root1), 1, later))
	honest.set(name, record(t, sk, path.FromCid(root2), 2, later))

	c, err := Open(Ref{Name: name}, Options{Blocks: fetch.Verify(st, nil), Resolvers: []NameResolver{
		&GatewayResolver{Base: evilSrv.URL}, &GatewayResolver{Base: honestSrv.URL}}})
	if err != nil {
		t.Fatal(err)
	}
	// The first lookup takes the first answer (the replay: a fresh client
	// cannot tell); the refreshes after it look at every answer.
	if _, err := c.Substituter().CacheInfo(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.Root(); got != root1 {
		t.Fatalf("first lookup: root %s, want the first gateway's root1", got)
	}
	if changed, err := c.Refresh(ctx); err != nil || !changed {
		t.Fatalf("Refresh = %v, %v", changed, err)
	}
	if got, _ := c.Root(); got != root2 {
		t.Fatalf("after a refresh: root %s, want root2 (seq 2, the second gateway's)", got)
	}
	honest.set(name, record(t, sk, path.FromCid(root3), 3, later))
	for range 3 {
		if _, err := c.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := c.Root(); got != root3 {
		which := map[cid.Cid]string{root1: "root1 (replayed seq 1)", root2: "root2 (seq 2)"}[got]
		t.Errorf("after refreshes the cache uses %s %s, want root3 (seq 3, offered by the second gateway)", got, which)
	}
	// And a record older than the one in use is never taken, whoever
	// answers first.
	honest.set(name, record(t, sk, path.FromCid(root2), 2, later))
	if _, err := c.Refresh(ctx); err != nil && !strings.Contains(err.Error(), "older") {
		t.Fatal(err)
	}
	if got, _ := c.Root(); got != root3 {
		t.Errorf("rolled back to %s", got)
	}
}
