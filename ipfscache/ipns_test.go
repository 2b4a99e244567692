package ipfscache

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/boxo/ipns"
	"github.com/ipfs/boxo/path"
	"github.com/ipfs/go-cid"
	"github.com/ipfs/kubo/client/rpc"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	mh "github.com/multiformats/go-multihash"
)

func mustHash(s string) mh.Multihash {
	h, err := mh.Sum([]byte(s), mh.SHA2_256, -1)
	if err != nil {
		panic(err)
	}
	return h
}

// fixedKey is an ed25519 key made from a fixed seed.
func fixedKey(seed byte) crypto.PrivKey {
	sk, _, err := crypto.GenerateEd25519Key(bytes.NewReader(bytes.Repeat([]byte{seed}, 64)))
	if err != nil {
		panic(err)
	}
	return sk
}

func nameOf(sk crypto.PrivKey) ipns.Name {
	id, err := peer.IDFromPrivateKey(sk)
	if err != nil {
		panic(err)
	}
	return ipns.NameFromPeer(id)
}

// record makes a serialized IPNS record of sk pointing to value.
func record(t testing.TB, sk crypto.PrivKey, value path.Path, seq uint64, eol time.Time) []byte {
	t.Helper()
	rec, err := ipns.NewRecord(sk, value, seq, eol, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	data, err := ipns.MarshalRecord(rec)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func dirCid(s string) cid.Cid { return cid.NewCidV1(cid.DagProtobuf, mustHash(s)) }

func mustPath(t testing.TB, s string) path.Path {
	p, err := path.NewPath(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestVerifyRecord(t *testing.T) {
	sk, other := fixedKey(1), fixedKey(2)
	name := nameOf(sk)
	root := dirCid("root")
	later := time.Now().Add(time.Hour)

	got, seq, err := VerifyRecord(name, record(t, sk, path.FromCid(root), 7, later))
	if err != nil || got != root || seq != 7 {
		t.Fatalf("VerifyRecord = %s, %d, %v", got, seq, err)
	}
	for what, data := range map[string][]byte{
		"signed by another key": record(t, other, path.FromCid(root), 8, later),
		"expired":               record(t, sk, path.FromCid(root), 8, time.Now().Add(-time.Minute)),
		"points to a name":      record(t, sk, mustPath(t, "/ipns/"+name.String()), 8, later),
		"points below a dir":    record(t, sk, mustPath(t, "/ipfs/"+root.String()+"/sub"), 8, later),
		"points to a raw block": record(t, sk, path.FromCid(cid.NewCidV1(cid.Raw, mustHash("x"))), 8, later),
		"garbage":               []byte("not a record"),
		"empty":                 nil,
		"too large":             bytes.Repeat([]byte{1}, ipns.MaxRecordSize+1),
	} {
		if c, _, err := VerifyRecord(name, data); err == nil {
			t.Errorf("%s: accepted, pointing to %s", what, c)
		}
	}
	// A record tampered with after signing.
	data := record(t, sk, path.FromCid(root), 9, later)
	evil := dirCid("evil").String()
	tampered := bytes.Replace(data, []byte(root.String()), []byte(evil), -1)
	if bytes.Equal(tampered, data) {
		// The CBOR value holds the path as bytes; replace there too.
		tampered = bytes.Replace(data, root.Bytes(), dirCid("evil").Bytes(), -1)
	}
	if c, _, err := VerifyRecord(name, tampered); err == nil && c != root {
		t.Errorf("tampered record accepted, pointing to %s", c)
	}
}

// FuzzVerifyRecord: whatever the bytes, VerifyRecord returns an error or a
// dag-pb root, never panics.
func FuzzVerifyRecord(f *testing.F) {
	sk := fixedKey(1)
	name := nameOf(sk)
	later := time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Add(record(f, sk, path.FromCid(dirCid("a")), 1, later))
	f.Add(record(f, fixedKey(2), path.FromCid(dirCid("a")), 1, later))
	f.Add([]byte{0x0a, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, _, err := VerifyRecord(name, data)
		if err == nil && c.Type() != cid.DagProtobuf {
			t.Fatalf("accepted a root of codec %#x", c.Type())
		}
	})
}

// gatewayStub serves IPNS records as a trustless gateway does.
type gatewayStub struct {
	mu      sync.Mutex
	records map[string][]byte // by name
	asked   int
}

func (g *gatewayStub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.asked++
	name, ok := strings.CutPrefix(r.URL.Path, "/ipns/")
	if !ok || r.URL.Query().Get("format") != "ipns-record" {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	data, ok := g.records[name]
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/vnd.ipfs.ipns-record")
	w.Write(data)
}

func (g *gatewayStub) set(name ipns.Name, data []byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.records[name.String()] = data
}

func TestGatewayResolver(t *testing.T) {
	ctx := context.Background()
	sk := fixedKey(1)
	name := nameOf(sk)
	gw := &gatewayStub{records: map[string][]byte{}}
	srv := httptest.NewServer(gw)
	defer srv.Close()
	r := &GatewayResolver{Base: srv.URL}
	if _, err := r.ResolveName(ctx, name); err == nil {
		t.Error("absent record resolved")
	}
	gw.set(name, record(t, sk, path.FromCid(dirCid("one")), 3, time.Now().Add(time.Hour)))
	res, err := r.ResolveName(ctx, name)
	if err != nil || res.Root != dirCid("one") || res.Seq != 3 || !res.Verified {
		t.Fatalf("ResolveName = %+v, %v", res, err)
	}
	// The gateway answers with a record of another key: refused.
	gw.set(name, record(t, fixedKey(2), path.FromCid(dirCid("evil")), 4, time.Now().Add(time.Hour)))
	if res, err := r.ResolveName(ctx, name); err == nil {
		t.Errorf("foreign record accepted: %+v", res)
	}
	// An endless answer is cut at the record size limit.
	gw.set(name, bytes.Repeat([]byte{0x0a}, 1<<20))
	if _, err := r.ResolveName(ctx, name); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("oversized answer: %v", err)
	}
}

// kuboStub answers routing/get (with the record, or an error as a node
// without routing gives) and name/resolve.
type kuboStub struct {
	record  []byte // nil: routing/get fails
	resolve string // name/resolve's Path
	calls   map[string]int
	nocache string // of the last name/resolve
	mu      sync.Mutex
}

func (k *kuboStub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	k.mu.Lock()
	defer k.mu.Unlock()
	cmd := strings.TrimPrefix(r.URL.Path, "/api/v0/")
	k.calls[cmd]++
	w.Header().Set("Content-Type", "application/json")
	switch {
	case cmd == "routing/get" && k.record != nil:
		json.NewEncoder(w).Encode(map[string]any{"Extra": base64.StdEncoding.EncodeToString(k.record), "Type": 5})
	case cmd == "name/resolve" && k.resolve != "":
		k.nocache = r.URL.Query().Get("nocache")
		json.NewEncoder(w).Encode(map[string]string{"Path": k.resolve})
	default:
		w.WriteHeader(http.StatusInternalServerError)
		json.NewEncoder(w).Encode(map[string]any{"Message": "routing: not found", "Code": 0, "Type": "error"})
	}
}

func TestKuboResolver(t *testing.T) {
	ctx := context.Background()
	sk := fixedKey(1)
	name := nameOf(sk)
	stub := &kuboStub{calls: map[string]int{}}
	srv := httptest.NewServer(stub)
	defer srv.Close()
	api, err := rpc.NewURLApiWithClient(srv.URL, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	r := &KuboResolver{API: api, URL: srv.URL}

	// A record over routing/get is verified.
	stub.record = record(t, sk, path.FromCid(dirCid("rec")), 5, time.Now().Add(time.Hour))
	res, err := r.ResolveName(ctx, name)
	if err != nil || res.Root != dirCid("rec") || !res.Verified || res.Seq != 5 {
		t.Fatalf("routing/get: %+v, %v", res, err)
	}
	// A record of another key is refused, not passed over.
	stub.record = record(t, fixedKey(2), path.FromCid(dirCid("evil")), 6, time.Now().Add(time.Hour))
	stub.resolve = "/ipfs/" + dirCid("evil").String()
	if res, err := r.ResolveName(ctx, name); err == nil {
		t.Errorf("foreign record accepted: %+v", res)
	}
	// No record to give: name/resolve, trusted, unverified.
	stub.record = nil
	stub.resolve = "/ipfs/" + dirCid("resolved").String()
	res, err = r.ResolveName(ctx, name)
	if err != nil || res.Root != dirCid("resolved") || res.Verified {
		t.Fatalf("name/resolve: %+v, %v", res, err)
	}
	if stub.nocache != "true" {
		t.Errorf("name/resolve asked with nocache=%q: kubo's cache would hide new records", stub.nocache)
	}
	// What name/resolve answers must still be a directory's path.
	for _, bad := range []string{"/ipns/" + name.String(), "/ipfs/" + dirCid("x").String() + "/a", "nonsense", ""} {
		stub.resolve = bad
		if res, err := r.ResolveName(ctx, name); err == nil {
			t.Errorf("name/resolve %q accepted: %+v", bad, res)
		}
	}
}
