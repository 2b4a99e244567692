package narindex

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// memSubstituter is a Substituter held in memory, with a fixed error for
// every request when err is set.
type memSubstituter struct {
	url      string
	narinfos map[string]*NarInfo
	listings map[string][]byte
	lsErr    error
	err      error
}

func (m *memSubstituter) URL() string { return m.url }
func (m *memSubstituter) CacheInfo(context.Context) (*CacheInfo, error) {
	return &CacheInfo{StoreDir: StoreDir}, m.err
}
func (m *memSubstituter) NarInfo(_ context.Context, h string) (*NarInfo, error) {
	if m.err != nil {
		return nil, m.err
	}
	n, ok := m.narinfos[h]
	if !ok {
		return nil, fmt.Errorf("%s: %w", h, ErrNotFound)
	}
	c := *n
	return &c, nil
}
func (m *memSubstituter) Listing(_ context.Context, h string) ([]byte, error) {
	if m.lsErr != nil {
		return nil, m.lsErr
	}
	ls, ok := m.listings[h]
	if !ok {
		return nil, ErrNotFound
	}
	return ls, nil
}

const testCid = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"

// topInfo gives the Nix-written narinfo of the top fixture, changed by
// edit and then signed by the keys given.
func topInfo(t *testing.T, edit func(*NarInfo), sign ...SecretKey) *NarInfo {
	t.Helper()
	n, err := ParseNarInfo(readFixture(t, "narinfo/"+topHash+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	n.Sigs = nil
	n.IpfsCid = testCid
	if edit != nil {
		edit(n)
	}
	for _, k := range sign {
		if err := n.Sign(k); err != nil {
			t.Fatal(err)
		}
		if n.IpfsCid != "" {
			if err := n.SignCid(k); err != nil {
				t.Fatal(err)
			}
		}
	}
	return n
}

func mem(name string, n *NarInfo, ls []byte) *memSubstituter {
	m := &memSubstituter{url: "mem://" + name, narinfos: map[string]*NarInfo{}, listings: map[string][]byte{}}
	if n != nil {
		m.narinfos[topHash] = n
	}
	if ls != nil {
		m.listings[topHash] = ls
	}
	return m
}

func TestResolve(t *testing.T) {
	sec, pub, other := loadKeys(t)
	stranger, err := ParseSecretKey("stranger:" + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA7aie8zrakLWKjqNAqbw1zZTIVdx3iQ6Y6wEihi1naKQ==")
	if err != nil {
		t.Fatal(err)
	}
	signed := topInfo(t, nil, sec)
	listing := []byte(`{"version":1}`)
	down := &memSubstituter{url: "mem://down", err: errors.New("HTTP 500")}

	type want struct {
		from      string
		listing   bool
		cidSigned bool
		err       error  // errors.Is target; nil for success
		notIs     bool   // the error must wrap neither ErrNotFound nor ErrRejected
		msg       string // part of the error message
	}
	for _, tc := range []struct {
		name string
		r    Resolver
		base string
		want want
	}{
		{"signed and trusted", Resolver{Substituters: []Substituter{mem("a", signed, listing)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{from: "mem://a", listing: true, cidSigned: true}},
		{"no listing", Resolver{Substituters: []Substituter{mem("a", signed, nil)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{from: "mem://a", cidSigned: true}},
		{"unsigned, sigs required", Resolver{Substituters: []Substituter{mem("a", topInfo(t, nil), listing)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{err: ErrRejected, msg: "no signature"}},
		{"unsigned, sigs not required", Resolver{Substituters: []Substituter{mem("a", topInfo(t, nil), listing)}, TrustedKeys: []PublicKey{pub}}, topBase,
			want{from: "mem://a", listing: true}},
		{"untrusted key", Resolver{Substituters: []Substituter{mem("a", topInfo(t, nil, stranger), nil)}, TrustedKeys: []PublicKey{pub, other}, RequireSigs: true}, topBase,
			want{err: ErrRejected, msg: "no signature by a trusted key: Sig by stranger"}},
		{"tampered", Resolver{Substituters: []Substituter{mem("a", topInfo(t, func(n *NarInfo) { n.NarSize = 601 }), nil)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{err: ErrRejected, msg: "no signature"}},
		{"missing IpfsCid", Resolver{Substituters: []Substituter{mem("a", topInfo(t, func(n *NarInfo) { n.IpfsCid = "" }, sec), nil)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{err: ErrRejected, msg: "no IpfsCid"}},
		{"CID swapped after signing", Resolver{Substituters: []Substituter{mem("a", func() *NarInfo {
			n := topInfo(t, nil, sec)
			n.IpfsCid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
			return n
		}(), nil)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{err: ErrRejected, msg: "IpfsCidSig by trusted key narindex-test-1 does not match"}},
		{"CID signature required", Resolver{Substituters: []Substituter{mem("a", func() *NarInfo {
			n := topInfo(t, nil, sec)
			n.IpfsCidSig = ""
			return n
		}(), nil)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true, RequireCidSig: true}, topBase,
			want{err: ErrRejected, msg: "no signature (IpfsCidSig)"}},
		{"wrong name", Resolver{Substituters: []Substituter{mem("a", signed, nil)}, TrustedKeys: []PublicKey{pub}}, topHash + "-other-name", want{err: ErrRejected, msg: "narinfo is for /nix/store/" + topBase}},
		{"sha512 NarHash", Resolver{Substituters: []Substituter{mem("a", topInfo(t, func(n *NarInfo) {
			n.NarHash = Hash{Algo: "sha512", Digest: make([]byte, 64)}
		}), nil)}}, topBase, want{err: ErrRejected, msg: "is not sha256"}},
		{"first failing, second answering", Resolver{Substituters: []Substituter{down, mem("b", signed, listing)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{from: "mem://b", listing: true, cidSigned: true}},
		{"first rejected, second accepted", Resolver{Substituters: []Substituter{mem("a", topInfo(t, nil), nil), mem("b", signed, listing)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{from: "mem://b", listing: true, cidSigned: true}},
		{"first empty, second answering", Resolver{Substituters: []Substituter{mem("a", nil, nil), mem("b", signed, nil)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{from: "mem://b", cidSigned: true}},
		{"nobody has it", Resolver{Substituters: []Substituter{mem("a", nil, nil), mem("b", nil, nil)}}, topBase,
			want{err: ErrNotFound, msg: "not found in any substituter"}},
		{"no substituters", Resolver{}, topBase, want{err: ErrNotFound, msg: "no substituters"}},
		{"bad name", Resolver{Substituters: []Substituter{mem("a", signed, nil)}}, "../etc", want{err: ErrNotFound, msg: `"../etc" is not a store path name`}},
		{"all failing", Resolver{Substituters: []Substituter{down, &memSubstituter{url: "mem://slow", err: context.DeadlineExceeded}}}, topBase,
			want{notIs: true, msg: "mem://down: HTTP 500; mem://slow: context deadline exceeded"}},
		{"failing and rejecting", Resolver{Substituters: []Substituter{down, mem("b", topInfo(t, nil), nil)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{notIs: true, msg: "rejected: mem://b"}},
		{"listing fails", Resolver{Substituters: []Substituter{&memSubstituter{url: "mem://a", narinfos: map[string]*NarInfo{topHash: signed}, lsErr: errors.New("HTTP 502")}}}, topBase,
			want{notIs: true, msg: "listing from mem://a: HTTP 502"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := tc.r.Resolve(context.Background(), tc.base)
			w := tc.want
			if w.err == nil && !w.notIs {
				if err != nil {
					t.Fatalf("Resolve: %v", err)
				}
				if res.From != w.from || (res.ListingData != nil) != w.listing || res.CidSigned != w.cidSigned ||
					res.Path.Base() != tc.base || res.Info.StorePath != "/nix/store/"+tc.base {
					t.Errorf("Resolve = %+v", res)
				}
				return
			}
			if err == nil {
				t.Fatalf("Resolve = %+v, want an error", res)
			}
			if w.err != nil && !errors.Is(err, w.err) {
				t.Errorf("error %v is not %v", err, w.err)
			}
			if w.notIs && (errors.Is(err, ErrNotFound) || errors.Is(err, ErrRejected)) {
				t.Errorf("error %v claims not found or rejected", err)
			}
			if !strings.Contains(err.Error(), w.msg) {
				t.Errorf("error %q does not say %q", err, w.msg)
			}
		})
	}
}

// TestResolveRealSubstituters runs the resolver over a file:// cache and a
// failing HTTP cache, with the narinfos Nix wrote (which carry no CID).
func TestResolveRealSubstituters(t *testing.T) {
	_, pub, _ := loadKeys(t)
	c, srv := newHTTPCache(t)
	c.status["/prefix/"+topHash+".narinfo"] = 500
	broken, err := OpenSubstituter(srv.URL+"/prefix", SubstituterOptions{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	files, err := OpenSubstituter("file://"+cacheDir(t), SubstituterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := &Resolver{Substituters: []Substituter{broken, files}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}
	_, err = r.Resolve(context.Background(), topBase)
	if err == nil || !strings.Contains(err.Error(), "rejected: file://") || !strings.Contains(err.Error(), "no IpfsCid") {
		t.Fatalf("Resolve = %v, want a rejection for the missing CID", err)
	}
	if !strings.Contains(err.Error(), "500") {
		t.Errorf("error %q does not mention the failing cache", err)
	}
}
