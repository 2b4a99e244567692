package ipfscache

import (
	"strings"
	"testing"

	"github.com/ipfs/go-cid"
)

// Test references: a dag-pb and a raw CID, a CIDv0, and the IPNS name of
// a fixed key as a k51... CID and as a peer ID.
var (
	testDirCid = cid.NewCidV1(cid.DagProtobuf, mustHash("dir")).String()
	testRawCid = cid.NewCidV1(cid.Raw, mustHash("raw")).String()
	testV0Cid  = cid.NewCidV0(mustHash("v0")).String()
	testName   = nameOf(fixedKey(1)).String()
	testPeerID = nameOf(fixedKey(1)).Peer().String()
)

func TestParseURL(t *testing.T) {
	if !strings.HasPrefix(testName, "k51") || !strings.HasPrefix(testPeerID, "12D3Koo") {
		t.Fatalf("test name %s, peer ID %s", testName, testPeerID)
	}
	for _, tc := range []struct{ in, want string }{
		{"ipfs://" + testDirCid, "ipfs://" + testDirCid},
		{"ipfs://" + testDirCid + "/", "ipfs://" + testDirCid},
		{"IPFS://" + testDirCid + "?priority=10", "ipfs://" + testDirCid},
		{"ipfs://" + testV0Cid, "ipfs://" + testV0Cid},
		{"ipns://" + testName, "ipns://" + testName},
		{"ipns://" + testName + "/?trusted=1#x", "ipns://" + testName},
		{"ipns://" + testPeerID, "ipns://" + testName}, // a peer ID is written as its CID
	} {
		r, err := ParseURL(tc.in)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", tc.in, err)
			continue
		}
		if r.String() != tc.want {
			t.Errorf("ParseURL(%q) = %s, want %s", tc.in, r, tc.want)
		}
		if got, err := ParseURL(r.String()); err != nil || got != r {
			t.Errorf("canonical %s does not parse to itself: %v, %v", r, got, err)
		}
	}
	for _, bad := range []string{
		"ipfs://",
		"ipfs:///" + testDirCid,
		"ipfs://" + testDirCid + "/sub",
		"ipfs://" + testRawCid,         // not a directory
		"ipfs://nonsense",              // not a CID
		"ipns://example.com",           // DNSLink
		"ipns://" + testDirCid,         // a CID, but not a key
		"ipns://" + testName + "/path", // below the root
		"ipns://nonsense",
		"ipfs:" + testDirCid,
		"file:///x",
		"ipfs://" + strings.Repeat("b", 1000),
	} {
		if r, err := ParseURL(bad); err == nil {
			t.Errorf("ParseURL(%q) = %s, want an error", bad, r)
		} else if len(err.Error()) > 2*maxURLLen+300 {
			t.Errorf("error for %q is %d bytes", bad, len(err.Error()))
		}
	}
	if !IsURL("ipns://x") || !IsURL("IPFS://x") || IsURL("file:///x") || IsURL("ipfs:x") {
		t.Error("IsURL")
	}
}

// FuzzParseURL: whatever the string, ParseURL returns a reference or an
// error, never panics; a reference is of the right kind and its canonical
// URL parses back to it.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{
		"ipfs://" + testDirCid, "ipfs://" + testV0Cid + "/?x", "ipns://" + testName,
		"ipns://" + testPeerID, "ipns://example.com", "ipfs://" + testRawCid, "IPNS://a/b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseURL(s)
		if err != nil {
			return
		}
		if r.IsName() {
			if r.Name.Cid().Type() != cid.Libp2pKey {
				t.Fatalf("%q: name %s is not a libp2p key", s, r.Name)
			}
		} else if r.Root.Type() != cid.DagProtobuf {
			t.Fatalf("%q: root %s is not dag-pb", s, r.Root)
		}
		again, err := ParseURL(r.String())
		if err != nil || again.String() != r.String() {
			t.Fatalf("%q: canonical %s parses to %v, %v", s, r, again, err)
		}
	})
}
