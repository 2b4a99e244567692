package narindex

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func loadKeys(t testing.TB) (SecretKey, PublicKey, PublicKey) {
	t.Helper()
	sec, err := LoadSecretKeyFile(filepath.Join("testdata", "narindex-test-1.sec"))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParsePublicKey(string(readFixture(t, "narindex-test-1.pub")))
	if err != nil {
		t.Fatal(err)
	}
	other, err := ParsePublicKey(string(readFixture(t, "other-key.pub")))
	if err != nil {
		t.Fatal(err)
	}
	return sec, pub, other
}

func TestKeyFiles(t *testing.T) {
	sec, pub, _ := loadKeys(t)
	if sec.Name != "narindex-test-1" || !sec.Public().Key.Equal(pub.Key) || sec.Public().Name != pub.Name {
		t.Errorf("secret key %s does not match public key %s", sec.Public(), pub)
	}
	// String gives the file's contents back (Nix writes no newline).
	if got, want := pub.String(), string(readFixture(t, "narindex-test-1.pub")); got != want {
		t.Errorf("String() = %q, file has %q", got, want)
	}
}

func TestParseKeyRejects(t *testing.T) {
	sec, pub, _ := loadKeys(t)
	b64 := pub.String()[len(pub.Name)+1:]
	for _, tc := range []struct {
		in, want string
		secret   bool
	}{
		{in: "", want: `not "name:base64"`},
		{in: "noname", want: `not "name:base64"`},
		{in: ":" + b64, want: `not "name:base64"`},
		{in: "k:", want: `not "name:base64"`},
		{in: "k:***", want: "illegal base64"},
		{in: "k:" + base64.StdEncoding.EncodeToString(pub.Key[:30]), want: "30 bytes, want 32"},
		{in: "k:" + b64, want: "bytes, want 64", secret: true},
		{in: "k:" + base64.StdEncoding.EncodeToString(append(sec.Key, 0)), want: "65 bytes, want 64", secret: true},
	} {
		var err error
		if tc.secret {
			_, err = ParseSecretKey(tc.in)
		} else {
			_, err = ParsePublicKey(tc.in)
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parse %q: %v, want %q", tc.in, err, tc.want)
		}
	}
	// A secret key whose public half belongs to another key.
	bad := append(ed25519.PrivateKey(nil), sec.Key...)
	bad[40] ^= 1
	if _, err := ParseSecretKey("k:" + base64.StdEncoding.EncodeToString(bad)); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("mismatched halves: %v", err)
	}
	if _, err := LoadSecretKeyFile(filepath.Join("testdata", "missing.sec")); err == nil {
		t.Error("missing key file loads")
	}
}

// TestNixSignaturesVerify checks every Sig Nix wrote into the fixtures.
func TestNixSignaturesVerify(t *testing.T) {
	_, pub, other := loadKeys(t)
	for name, data := range nixFixtures(t) {
		n, err := ParseNarInfo(data)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.VerifySigs([]PublicKey{pub}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		fp, _ := n.Fingerprint()
		for _, s := range n.Sigs {
			var k PublicKey
			switch {
			case strings.HasPrefix(s, pub.Name+":"):
				k = pub
			case strings.HasPrefix(s, other.Name+":"):
				k = other
			}
			if !k.Verify(fp, s) {
				t.Errorf("%s: %s does not verify", name, s)
			}
		}
	}
}

// TestSignMatchesNix: ed25519 is deterministic, so signing the same
// fingerprint with the same key must give exactly Nix's signature.
func TestSignMatchesNix(t *testing.T) {
	sec, _, _ := loadKeys(t)
	for name, data := range nixFixtures(t) {
		n, _ := ParseNarInfo(data)
		var nixSig string
		for _, s := range n.Sigs {
			if strings.HasPrefix(s, sec.Name+":") {
				nixSig = s
			}
		}
		fp, _ := n.Fingerprint()
		if got := sec.Sign(fp); got != nixSig {
			t.Errorf("%s: Sign = %s, Nix wrote %s", name, got, nixSig)
		}
		// NarInfo.Sign replaces the signature by the same key name in place
		// of appending a second one, and keeps the others.
		before := len(n.Sigs)
		if err := n.Sign(sec); err != nil {
			t.Fatal(err)
		}
		if len(n.Sigs) != before || n.Sigs[len(n.Sigs)-1] != nixSig {
			t.Errorf("%s: after Sign: %q", name, n.Sigs)
		}
	}
}

func TestTamperedNarInfos(t *testing.T) {
	_, pub, other := loadKeys(t)
	data := readFixture(t, "narinfo/"+topHash+".narinfo")
	wrong := PublicKey{Name: pub.Name, Key: other.Key} // trusted name, wrong key
	stranger := PublicKey{Name: "stranger", Key: pub.Key}
	for _, tc := range []struct {
		name   string
		change func(n *NarInfo)
		keys   []PublicKey
		want   error
	}{
		{"untouched", func(*NarInfo) {}, []PublicKey{pub}, nil},
		{"second key only", func(*NarInfo) {}, []PublicKey{other}, nil},
		{"NarHash", func(n *NarInfo) { n.NarHash.Digest[0] ^= 1 }, []PublicKey{pub, other}, ErrInvalidSignature},
		{"NarSize", func(n *NarInfo) { n.NarSize++ }, []PublicKey{pub}, ErrInvalidSignature},
		{"StorePath", func(n *NarInfo) { n.StorePath = "/nix/store/" + depBase }, []PublicKey{pub}, ErrInvalidSignature},
		{"reference dropped", func(n *NarInfo) { n.References = n.References[:1] }, []PublicKey{pub}, ErrInvalidSignature},
		{"reference added", func(n *NarInfo) {
			n.References = append(n.References, "l2ab8sldkfww980gkvsdvmbqsxn9sqkz-hello.txt")
		}, []PublicKey{pub}, ErrInvalidSignature},
		{"signature bytes", func(n *NarInfo) { n.Sigs[0] = n.Sigs[0][:20] + "A" + n.Sigs[0][21:] }, []PublicKey{pub}, ErrInvalidSignature},
		{"signature truncated", func(n *NarInfo) { n.Sigs[0] = n.Sigs[0][:40] }, []PublicKey{pub}, ErrInvalidSignature},
		{"wrong key under trusted name", func(*NarInfo) {}, []PublicKey{wrong}, ErrInvalidSignature},
		{"untrusted signer", func(*NarInfo) {}, []PublicKey{stranger}, ErrUntrustedSigner},
		{"no trusted keys", func(*NarInfo) {}, nil, ErrUntrustedSigner},
		{"no signatures", func(n *NarInfo) { n.Sigs = nil }, []PublicKey{pub}, ErrNoSignature},
		// URL, compression and file hash are not signed, as in Nix.
		{"URL", func(n *NarInfo) { n.URL = "elsewhere" }, []PublicKey{pub}, nil},
	} {
		n, _ := ParseNarInfo(data)
		tc.change(n)
		err := n.VerifySigs(tc.keys)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: VerifySigs = %v, want %v", tc.name, err, tc.want)
		}
		if err != nil && !strings.Contains(err.Error(), n.StorePath) {
			t.Errorf("%s: error %q does not name the path", tc.name, err)
		}
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	sec, pub, other := loadKeys(t)
	n, err := ParseNarInfo([]byte(ipnixNarInfo))
	if err != nil {
		t.Fatal(err)
	}
	n.Sigs, n.IpfsCidSig = nil, ""
	if err := n.VerifyCidSig([]PublicKey{pub}); !errors.Is(err, ErrNoSignature) {
		t.Errorf("unsigned CID: %v", err)
	}
	if err := n.Sign(sec); err != nil {
		t.Fatal(err)
	}
	if err := n.SignCid(sec); err != nil {
		t.Fatal(err)
	}
	if err := n.VerifySigs([]PublicKey{other, pub}); err != nil {
		t.Error(err)
	}
	if err := n.VerifyCidSig([]PublicKey{pub}); err != nil {
		t.Error(err)
	}
	if err := n.VerifyCidSig([]PublicKey{other}); !errors.Is(err, ErrUntrustedSigner) {
		t.Errorf("CID sig under untrusted key: %v", err)
	}
	// IpfsEncoding is covered by neither: it only describes how to rebuild
	// the DAG, and the CID is what every block is checked against.
	n.IpfsEncoding = `{"method":"something-else"}`
	if n.VerifySigs([]PublicKey{pub}) != nil || n.VerifyCidSig([]PublicKey{pub}) != nil {
		t.Error("a changed IpfsEncoding breaks a signature")
	}
	// The CID is covered by IpfsCidSig but not by Sig.
	n.IpfsCid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
	if err := n.VerifySigs([]PublicKey{pub}); err != nil {
		t.Errorf("Sig after CID change: %v", err)
	}
	if err := n.VerifyCidSig([]PublicKey{pub}); !errors.Is(err, ErrInvalidSignature) {
		t.Errorf("CID sig after CID change: %v", err)
	}
	// Signing survives Marshal and ParseNarInfo.
	if err := n.SignCid(sec); err != nil {
		t.Fatal(err)
	}
	n2, err := ParseNarInfo(n.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if n2.VerifySigs([]PublicKey{pub}) != nil || n2.VerifyCidSig([]PublicKey{pub}) != nil {
		t.Error("signatures do not survive a round trip")
	}
	n.IpfsCid = ""
	if err := n.SignCid(sec); err == nil {
		t.Error("SignCid without a CID succeeded")
	}
}

// IpfsCidSig covers the listing digest, and a signature of the retired
// version 1 fingerprint is recognised as such rather than as a forgery.
func TestCidSigV2(t *testing.T) {
	sec, pub, other := loadKeys(t)
	n, err := ParseNarInfo([]byte(ipnixNarInfo))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.SignCid(sec); err != nil {
		t.Fatal(err)
	}
	fp, _ := n.CidFingerprint()
	if !strings.HasPrefix(fp, "ipnix-cid-2;") || !pub.Verify(fp, n.IpfsCidSig) {
		t.Fatalf("SignCid does not sign the v2 fingerprint %q", fp)
	}
	if err := n.VerifyCidSig([]PublicKey{pub}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		change func(n *NarInfo)
	}{
		{"IpfsLsHash changed", func(n *NarInfo) { n.IpfsLsHash.Digest[0] ^= 1 }},
		{"IpfsLsHash dropped", func(n *NarInfo) { n.IpfsLsHash = Hash{} }},
		{"IpfsLsHash added", func(n *NarInfo) {
			n.IpfsLsHash = Hash{}
			_ = n.SignCid(sec)
			n.IpfsLsHash = mustHash(t, "sha256:1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4")
		}},
		{"CID changed", func(n *NarInfo) { n.IpfsCid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku" }},
		{"NarSize changed", func(n *NarInfo) { n.NarSize++ }},
	} {
		m, _ := ParseNarInfo(n.Marshal())
		tc.change(m)
		err := m.VerifyCidSig([]PublicKey{pub})
		if !errors.Is(err, ErrInvalidSignature) || errors.Is(err, ErrRetiredCidSig) {
			t.Errorf("%s: VerifyCidSig = %v, want ErrInvalidSignature", tc.name, err)
		}
	}

	// A v1 signature, as ipnix wrote before the listing was signed.
	v1, err := n.cidFingerprintV1()
	if err != nil {
		t.Fatal(err)
	}
	n.IpfsCidSig = sec.Sign(v1)
	err = n.VerifyCidSig([]PublicKey{other, pub})
	if !errors.Is(err, ErrRetiredCidSig) || errors.Is(err, ErrInvalidSignature) || !strings.Contains(err.Error(), n.StorePath) {
		t.Errorf("v1 signature: VerifyCidSig = %v, want ErrRetiredCidSig only", err)
	}
	// Also without IpfsLsHash, where v1 and v2 differ only in the prefix.
	n.IpfsLsHash = Hash{}
	if err := n.VerifyCidSig([]PublicKey{pub}); !errors.Is(err, ErrRetiredCidSig) {
		t.Errorf("v1 signature, no IpfsLsHash: %v", err)
	}
	// A v1 signature under an untrusted key is simply untrusted; a v1
	// signature that does not verify either is invalid.
	if err := n.VerifyCidSig([]PublicKey{other}); !errors.Is(err, ErrUntrustedSigner) {
		t.Errorf("v1 signature, untrusted key: %v", err)
	}
	n.NarSize++
	if err := n.VerifyCidSig([]PublicKey{pub}); !errors.Is(err, ErrInvalidSignature) || errors.Is(err, ErrRetiredCidSig) {
		t.Errorf("tampered v1 signature: %v", err)
	}
}
