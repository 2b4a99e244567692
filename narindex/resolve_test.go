package narindex

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// memSubstituter is a Substituter held in memory, with a fixed error for
// every request when err is set. It counts the requests it answers.
type memSubstituter struct {
	url      string
	narinfos map[string]*NarInfo
	listings map[string][]byte
	lsErr    error
	err      error

	mu               sync.Mutex
	infoReqs, lsReqs int
}

func (m *memSubstituter) URL() string { return m.url }
func (m *memSubstituter) CacheInfo(context.Context) (*CacheInfo, error) {
	return &CacheInfo{StoreDir: StoreDir}, m.err
}
func (m *memSubstituter) NarInfo(_ context.Context, h string) (*NarInfo, error) {
	m.mu.Lock()
	m.infoReqs++
	m.mu.Unlock()
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
	m.mu.Lock()
	m.lsReqs++
	m.mu.Unlock()
	if m.lsErr != nil {
		return nil, m.lsErr
	}
	ls, ok := m.listings[h]
	if !ok {
		return nil, ErrNotFound
	}
	return ls, nil
}

func (m *memSubstituter) requests() (info, ls int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.infoReqs, m.lsReqs
}

const testCid = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"

// testListing is the listing the narinfos of topInfo sign.
var testListing = []byte(`{"version":1,"root":{"type":"directory","entries":{}}}`)

// topInfo gives the Nix-written narinfo of the top fixture with a CID and
// the digest of testListing, changed by edit and then signed (Sig and
// IpfsCidSig) by the keys given.
func topInfo(t *testing.T, edit func(*NarInfo), sign ...SecretKey) *NarInfo {
	t.Helper()
	n, err := ParseNarInfo(readFixture(t, "narinfo/"+topHash+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	n.Sigs = nil
	n.IpfsCid = testCid
	sum := sha256.Sum256(testListing)
	n.IpfsLsHash = SHA256(sum[:])
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
	listing := testListing
	tampered := []byte(`{"version":1,"root":{"type":"symlink","target":"/tmp/evil"}}`)
	down := &memSubstituter{url: "mem://down", err: errors.New("HTTP 500")}
	v1Signed := func(require bool) *Resolver {
		n := topInfo(t, nil, sec)
		v1, _ := n.cidFingerprintV1()
		n.IpfsCidSig = sec.Sign(v1)
		return &Resolver{Substituters: []Substituter{mem("a", n, listing)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true, RequireCidSig: require}
	}
	malformed := &memSubstituter{url: "mem://bad", err: fmt.Errorf("mem://bad/x.narinfo: %w", tag(ErrMalformedNarInfo, errors.New("narinfo: line 1 is not \"Key: value\"")))}
	wrongHash := &memSubstituter{url: "mem://other", err: tag(ErrRejected, errors.New("mem://other/x.narinfo describes /nix/store/y"))}

	type want struct {
		from      string
		listing   bool
		cidSigned bool
		note      string // part of ListingNote; empty: ListingNote must be empty
		err       error  // errors.Is target; nil for success
		notIs     bool   // the error must wrap neither ErrNotFound nor ErrRejected
		msg       string // part of the error message
	}
	for _, tc := range []struct {
		name string
		r    *Resolver
		base string
		want want
	}{
		{"signed and trusted", &Resolver{Substituters: []Substituter{mem("a", signed, listing)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{from: "mem://a", listing: true, cidSigned: true}},
		{"listing tampered", &Resolver{Substituters: []Substituter{mem("a", signed, tampered)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{from: "mem://a", cidSigned: true, note: "not the signed IpfsLsHash " + signed.IpfsLsHash.String()}},
		{"no listing", &Resolver{Substituters: []Substituter{mem("a", signed, nil)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{from: "mem://a", cidSigned: true, note: "substituter has no listing"}},
		{"listing too large", &Resolver{Substituters: []Substituter{&memSubstituter{url: "mem://a", narinfos: map[string]*NarInfo{topHash: signed},
			lsErr: tag(errTooLarge, errors.New("mem://a/x.ls: larger than the limit of 67108864 bytes"))}}, TrustedKeys: []PublicKey{pub}}, topBase,
			want{from: "mem://a", cidSigned: true, note: "larger than the limit"}},
		{"signed without IpfsLsHash", &Resolver{Substituters: []Substituter{mem("a", topInfo(t, func(n *NarInfo) { n.IpfsLsHash = Hash{} }, sec), listing)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true, RequireCidSig: true}, topBase,
			want{from: "mem://a", cidSigned: true, note: "no IpfsLsHash"}},
		{"unsigned, sigs required", &Resolver{Substituters: []Substituter{mem("a", topInfo(t, nil), listing)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{err: ErrRejected, msg: "no signature"}},
		{"unsigned, sigs not required", &Resolver{Substituters: []Substituter{mem("a", topInfo(t, nil), listing)}, TrustedKeys: []PublicKey{pub}}, topBase,
			want{from: "mem://a", note: "no trusted IpfsCidSig"}},
		{"CID signature stripped", &Resolver{Substituters: []Substituter{mem("a", func() *NarInfo {
			n := topInfo(t, nil, sec)
			n.IpfsCidSig = ""
			return n
		}(), listing)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{from: "mem://a", note: "no trusted IpfsCidSig (/nix/store/" + topBase + ": no signature (IpfsCidSig))"}},
		{"legacy field name IPFSHash, signed", &Resolver{Substituters: []Substituter{mem("a", topInfo(t, func(n *NarInfo) { n.LegacyIPFSHash = true }, sec), listing)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{from: "mem://a", listing: true, cidSigned: true}},
		{"CID signed by a stranger", &Resolver{Substituters: []Substituter{mem("a", topInfo(t, nil, stranger), listing)}, TrustedKeys: []PublicKey{pub}}, topBase,
			want{from: "mem://a", note: "IpfsCidSig by stranger"}},
		{"CID signed by a stranger, required", &Resolver{Substituters: []Substituter{mem("a", topInfo(t, nil, stranger), listing)}, TrustedKeys: []PublicKey{pub}, RequireCidSig: true}, topBase,
			want{err: ErrRejected, msg: "IpfsCidSig by stranger; a trusted IpfsCidSig is required"}},
		{"retired v1 CID signature", v1Signed(false), topBase,
			want{from: "mem://a", note: "retired ipnix-cid-1"}},
		{"retired v1 CID signature, required", v1Signed(true), topBase,
			want{err: ErrRejected, msg: "retired ipnix-cid-1"}},
		{"untrusted key", &Resolver{Substituters: []Substituter{mem("a", topInfo(t, nil, stranger), nil)}, TrustedKeys: []PublicKey{pub, other}, RequireSigs: true}, topBase,
			want{err: ErrRejected, msg: "no signature by a trusted key: Sig by stranger"}},
		{"tampered", &Resolver{Substituters: []Substituter{mem("a", topInfo(t, func(n *NarInfo) { n.NarSize = 601 }), nil)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{err: ErrRejected, msg: "no signature"}},
		{"missing IpfsCid", &Resolver{Substituters: []Substituter{mem("a", topInfo(t, func(n *NarInfo) { n.IpfsCid = "" }, sec), nil)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{err: ErrRejected, msg: "no IpfsCid"}},
		{"CID swapped after signing", &Resolver{Substituters: []Substituter{mem("a", func() *NarInfo {
			n := topInfo(t, nil, sec)
			n.IpfsCid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
			return n
		}(), nil)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{err: ErrRejected, msg: "IpfsCidSig by trusted key narindex-test-1 does not match"}},
		{"IpfsLsHash swapped after signing", &Resolver{Substituters: []Substituter{mem("a", func() *NarInfo {
			n := topInfo(t, nil, sec)
			sum := sha256.Sum256(tampered)
			n.IpfsLsHash = SHA256(sum[:])
			return n
		}(), tampered)}, TrustedKeys: []PublicKey{pub}}, topBase,
			want{err: ErrRejected, msg: "IpfsCidSig by trusted key narindex-test-1 does not match"}},
		{"CID signature required", &Resolver{Substituters: []Substituter{mem("a", func() *NarInfo {
			n := topInfo(t, nil, sec)
			n.IpfsCidSig = ""
			return n
		}(), nil)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true, RequireCidSig: true}, topBase,
			want{err: ErrRejected, msg: "no signature (IpfsCidSig)"}},
		{"wrong name", &Resolver{Substituters: []Substituter{mem("a", signed, nil)}, TrustedKeys: []PublicKey{pub}}, topHash + "-other-name", want{err: ErrRejected, msg: "narinfo is for /nix/store/" + topBase}},
		{"malformed narinfo", &Resolver{Substituters: []Substituter{malformed}}, topBase, want{err: ErrRejected, msg: "rejected: mem://bad: mem://bad/x.narinfo: narinfo: line 1"}},
		{"narinfo for another hash", &Resolver{Substituters: []Substituter{wrongHash}}, topBase, want{err: ErrRejected, msg: "rejected: mem://other: mem://other/x.narinfo describes"}},
		{"malformed, then accepted", &Resolver{Substituters: []Substituter{malformed, mem("b", signed, listing)}, TrustedKeys: []PublicKey{pub}}, topBase,
			want{from: "mem://b", listing: true, cidSigned: true}},
		{"sha512 NarHash", &Resolver{Substituters: []Substituter{mem("a", topInfo(t, func(n *NarInfo) {
			n.NarHash = Hash{Algo: "sha512", Digest: make([]byte, 64)}
		}), nil)}}, topBase, want{err: ErrRejected, msg: "is not sha256"}},
		{"first failing, second answering", &Resolver{Substituters: []Substituter{down, mem("b", signed, listing)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{from: "mem://b", listing: true, cidSigned: true}},
		{"first rejected, second accepted", &Resolver{Substituters: []Substituter{mem("a", topInfo(t, nil), nil), mem("b", signed, listing)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{from: "mem://b", listing: true, cidSigned: true}},
		{"first empty, second answering", &Resolver{Substituters: []Substituter{mem("a", nil, nil), mem("b", signed, nil)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{from: "mem://b", cidSigned: true, note: "no listing"}},
		{"nobody has it", &Resolver{Substituters: []Substituter{mem("a", nil, nil), mem("b", nil, nil)}}, topBase,
			want{err: ErrNotFound, msg: "not found in any substituter"}},
		{"no substituters", &Resolver{}, topBase, want{err: ErrNotFound, msg: "no substituters"}},
		{"bad name", &Resolver{Substituters: []Substituter{mem("a", signed, nil)}}, "../etc", want{err: ErrNotFound, msg: `"../etc" is not a store path name`}},
		{"all failing", &Resolver{Substituters: []Substituter{down, &memSubstituter{url: "mem://slow", err: context.DeadlineExceeded}}}, topBase,
			want{notIs: true, msg: "mem://down: HTTP 500; mem://slow: context deadline exceeded"}},
		{"failing and rejecting", &Resolver{Substituters: []Substituter{down, mem("b", topInfo(t, nil), nil)}, TrustedKeys: []PublicKey{pub}, RequireSigs: true}, topBase,
			want{notIs: true, msg: "rejected: mem://b"}},
		{"listing fails", &Resolver{Substituters: []Substituter{&memSubstituter{url: "mem://a", narinfos: map[string]*NarInfo{topHash: signed}, lsErr: errors.New("HTTP 502")}}, TrustedKeys: []PublicKey{pub}}, topBase,
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
				if res.ListingData != nil && !bytes.Equal(res.ListingData, listing) {
					t.Errorf("ListingData = %s", res.ListingData)
				}
				if w.note == "" && res.ListingNote != "" || !strings.Contains(res.ListingNote, w.note) {
					t.Errorf("ListingNote = %q, want one containing %q", res.ListingNote, w.note)
				}
				// A listing is asked for only when it can be trusted.
				for _, s := range tc.r.Substituters {
					if m, ok := s.(*memSubstituter); ok {
						if _, ls := m.requests(); ls > 0 && (!res.CidSigned || res.Info.IpfsLsHash.IsZero()) {
							t.Errorf("listing fetched from %s for a narinfo that cannot vouch for it", m.url)
						}
					}
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
			if errors.Is(err, ErrRemembered) {
				t.Errorf("first error %v claims to be remembered", err)
			}
			if !strings.Contains(err.Error(), w.msg) {
				t.Errorf("error %q does not say %q", err, w.msg)
			}
		})
	}
}

// anySubstituter answers every hash part with the same narinfo (made to
// fit the hash) or error, and counts the requests per hash part.
type anySubstituter struct {
	info func(hashPart string) (*NarInfo, error)
	mu   sync.Mutex
	reqs map[string]int
}

func (a *anySubstituter) URL() string { return "mem://any" }
func (a *anySubstituter) CacheInfo(context.Context) (*CacheInfo, error) {
	return &CacheInfo{StoreDir: StoreDir}, nil
}
func (a *anySubstituter) NarInfo(_ context.Context, h string) (*NarInfo, error) {
	a.mu.Lock()
	if a.reqs == nil {
		a.reqs = map[string]int{}
	}
	a.reqs[h]++
	a.mu.Unlock()
	return a.info(h)
}
func (a *anySubstituter) Listing(context.Context, string) ([]byte, error) { return nil, ErrNotFound }
func (a *anySubstituter) count(h string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reqs[h]
}

func TestResolveRemembersRejections(t *testing.T) {
	now := time.Unix(1e9, 0)
	clock := func() time.Time { return now }
	malformed := func(string) (*NarInfo, error) {
		return nil, tag(ErrMalformedNarInfo, errors.New("narinfo: empty"))
	}
	sub := &anySubstituter{info: malformed}
	r := &Resolver{Substituters: []Substituter{sub}, clock: clock}
	ctx := context.Background()

	_, err := r.Resolve(ctx, topBase)
	if !errors.Is(err, ErrRejected) || errors.Is(err, ErrRemembered) {
		t.Fatalf("first: %v", err)
	}
	// Within the TTL: the same rejection, from memory.
	now = now.Add(DefaultRejectTTL - time.Second)
	_, err2 := r.Resolve(ctx, topBase)
	if !errors.Is(err2, ErrRejected) || !errors.Is(err2, ErrRemembered) || !strings.HasPrefix(err2.Error(), err.Error()) {
		t.Fatalf("second: %v", err2)
	}
	if !strings.Contains(err2.Error(), "asked again in 1s") {
		t.Errorf("second error %q does not say when the path is asked for again", err2)
	}
	if n := sub.count(topHash); n != 1 {
		t.Fatalf("narinfo fetched %d times within the TTL, want 1", n)
	}
	// After it: asked again.
	now = now.Add(2 * time.Second)
	if _, err := r.Resolve(ctx, topBase); errors.Is(err, ErrRemembered) || sub.count(topHash) != 2 {
		t.Fatalf("after the TTL: %v, %d requests", err, sub.count(topHash))
	}

	// A transient failure, an absence and an acceptance are not
	// remembered.
	for name, info := range map[string]func(string) (*NarInfo, error){
		"failure":   func(string) (*NarInfo, error) { return nil, errors.New("HTTP 503") },
		"not found": func(string) (*NarInfo, error) { return nil, ErrNotFound },
		"accepted": func(h string) (*NarInfo, error) {
			n := topInfo(t, nil)
			n.StorePath = StoreDir + "/" + h + "-narindex-top"
			return n, nil
		},
	} {
		sub := &anySubstituter{info: info}
		r := &Resolver{Substituters: []Substituter{sub}, clock: clock}
		r.Resolve(ctx, topBase)
		r.Resolve(ctx, topBase)
		if n := sub.count(topHash); n != 2 {
			t.Errorf("%s: %d requests for two lookups, want 2", name, n)
		}
	}

	// A negative RejectTTL turns the memory off; a positive one sets it.
	sub = &anySubstituter{info: malformed}
	r = &Resolver{Substituters: []Substituter{sub}, clock: clock, RejectTTL: -1}
	for range 3 {
		if _, err := r.Resolve(ctx, topBase); errors.Is(err, ErrRemembered) || !errors.Is(err, ErrRejected) {
			t.Fatalf("memory off: %v", err)
		}
	}
	if n := sub.count(topHash); n != 3 {
		t.Fatalf("memory off: %d requests, want 3", n)
	}
	sub = &anySubstituter{info: malformed}
	r = &Resolver{Substituters: []Substituter{sub}, clock: clock, RejectTTL: time.Minute}
	r.Resolve(ctx, topBase)
	now = now.Add(61 * time.Second)
	r.Resolve(ctx, topBase)
	if n := sub.count(topHash); n != 2 {
		t.Fatalf("RejectTTL 1m: %d requests after 61s, want 2", n)
	}

	// Rejections recorded by the caller are remembered too.
	sub = &anySubstituter{info: malformed}
	r = &Resolver{Substituters: []Substituter{sub}, clock: clock}
	r.RememberRejection(topBase, fmt.Errorf("%w: NAR is not a NAR", ErrRejected))
	if _, err := r.Resolve(ctx, topBase); !errors.Is(err, ErrRemembered) || !strings.Contains(err.Error(), "NAR is not a NAR") || sub.count(topHash) != 0 {
		t.Fatalf("RememberRejection: %v", err)
	}
}

// The memory holds at most maxRemembered store paths and a bounded
// reason for each.
func TestResolveRememberedBounded(t *testing.T) {
	long := strings.Repeat("reason ", 10000)
	hash := func(i int) string { return EncodeNix32([]byte(fmt.Sprintf("%020d", i)))[:storeHashLen] }
	longFor := map[string]bool{}
	for i := 0; i < maxRemembered+10; i += 1000 {
		longFor[hash(i)] = true
	}
	sub := &anySubstituter{info: func(h string) (*NarInfo, error) {
		if longFor[h] {
			return nil, tag(ErrMalformedNarInfo, errors.New(long))
		}
		return nil, tag(ErrMalformedNarInfo, errors.New("narinfo: empty"))
	}}
	r := &Resolver{Substituters: []Substituter{sub}}
	ctx := context.Background()
	var first string
	for i := range maxRemembered + 10 {
		base := hash(i) + "-x"
		if i == 0 {
			first = base
		}
		if _, err := r.Resolve(ctx, base); !errors.Is(err, ErrRejected) {
			t.Fatalf("%s: %v", base, err)
		}
	}
	r.mu.Lock()
	n := r.rejected.Len()
	var longest int
	for _, k := range r.rejected.Keys() {
		v, _ := r.rejected.Peek(k)
		longest = max(longest, len(v.msg))
	}
	r.mu.Unlock()
	if n != maxRemembered || longest > maxRememberedMsg+3 || longest < maxRememberedMsg {
		t.Fatalf("%d paths remembered (limit %d), longest reason %d bytes", n, maxRemembered, longest)
	}
	// The oldest was forgotten and is asked for again.
	if _, err := r.Resolve(ctx, first); errors.Is(err, ErrRemembered) {
		t.Fatalf("oldest still remembered: %v", err)
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

// A file:// cache that serves garbage, or another path's narinfo, under a
// store path's name: a rejection, remembered, not a transient failure.
func TestResolveMalformedFromRealSubstituter(t *testing.T) {
	for name, data := range map[string][]byte{
		"garbage":        []byte("<html>503 Service Unavailable</html>\n"),
		"other path":     readFixture(t, "narinfo/rlrqqcnicslvlqdf5ww8w1pwnmgakfda.narinfo"),
		"over the limit": bytes.Repeat([]byte("X: y\n"), MaxNarInfoSize/5+1),
	} {
		dir := cacheDir(t)
		if err := os.WriteFile(filepath.Join(dir, topHash+".narinfo"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := OpenSubstituter("file://"+dir, SubstituterOptions{})
		if err != nil {
			t.Fatal(err)
		}
		r := &Resolver{Substituters: []Substituter{s}}
		_, err = r.Resolve(context.Background(), topBase)
		if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), topHash+".narinfo") {
			t.Errorf("%s: %v", name, err)
		}
		if _, err := r.Resolve(context.Background(), topBase); !errors.Is(err, ErrRemembered) {
			t.Errorf("%s: second lookup: %v", name, err)
		}
	}
}

// IpfsEncoding (RFC 133's draft) is informational: a narinfo that carries
// one resolves like one without, whatever the value (ipnix's own, the
// draft's example, an encoding ipnix never writes, not even JSON), read
// through a real file:// cache, with both signatures required. It is not
// signed, so a value added or changed after signing changes nothing
// either: the CID is what the blocks are checked against.
func TestResolveAcceptsIpfsEncoding(t *testing.T) {
	sec, pub, _ := loadKeys(t)
	ipnix := FixedSizeEncoding(256 << 10).String()
	for _, tc := range []struct{ name, signed, served string }{
		{"ipnix's", ipnix, ipnix},
		{"the draft's example", rfc133Example, rfc133Example},
		{"content-defined, trickle", "", `{"method":"unixfs-nar","chunking":{"leaf-format":"dag-pb","strategy":"rabin","avg":262144},"layout":"trickle","max-width":1024}`},
		{"not JSON", "buzhash; trust me", "buzhash; trust me"},
		{"added after signing", "", ipnix},
		{"changed after signing", ipnix, "x"},
		{"removed after signing", ipnix, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := topInfo(t, func(n *NarInfo) { n.IpfsEncoding = tc.signed }, sec)
			n.IpfsEncoding = tc.served
			dir := cacheDir(t)
			if err := os.WriteFile(filepath.Join(dir, topHash+".narinfo"), n.Marshal(), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, topHash+".ls"), testListing, 0o644); err != nil {
				t.Fatal(err)
			}
			s, err := OpenSubstituter("file://"+dir, SubstituterOptions{})
			if err != nil {
				t.Fatal(err)
			}
			r := &Resolver{Substituters: []Substituter{s}, TrustedKeys: []PublicKey{pub}, RequireSigs: true, RequireCidSig: true}
			res, err := r.Resolve(context.Background(), topBase)
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if !res.CidSigned || !bytes.Equal(res.ListingData, testListing) || res.Info.IpfsCid != testCid {
				t.Errorf("Resolve = %+v", res)
			}
			if res.Info.IpfsEncoding != tc.served {
				t.Errorf("IpfsEncoding %q, the narinfo has %q", res.Info.IpfsEncoding, tc.served)
			}
		})
	}
}
