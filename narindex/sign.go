package narindex

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
)

// PublicKey is a named ed25519 public key, written "name:base64(32 bytes)"
// as in Nix's trusted-public-keys.
type PublicKey struct {
	Name string
	Key  ed25519.PublicKey
}

// SecretKey is a named ed25519 private key, written "name:base64(64 bytes)"
// as in the files `nix-store --generate-binary-cache-key` and
// `nix key generate-secret` write.
type SecretKey struct {
	Name string
	Key  ed25519.PrivateKey
}

// splitKey splits "name:base64" and decodes the base64 part, which must be
// size bytes long.
func splitKey(what, s string, size int) (string, []byte, error) {
	name, b64, ok := strings.Cut(s, ":")
	if !ok || name == "" || b64 == "" {
		return "", nil, fmt.Errorf("%s is not \"name:base64\"", what)
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return "", nil, fmt.Errorf("%s %q: %v", what, name, err)
	}
	if len(raw) != size {
		return "", nil, fmt.Errorf("%s %q: %d bytes, want %d", what, name, len(raw), size)
	}
	return name, raw, nil
}

// ParsePublicKey parses "name:base64(32-byte ed25519 public key)".
func ParsePublicKey(s string) (PublicKey, error) {
	name, raw, err := splitKey("public key", strings.TrimSpace(s), ed25519.PublicKeySize)
	if err != nil {
		return PublicKey{}, err
	}
	return PublicKey{Name: name, Key: ed25519.PublicKey(raw)}, nil
}

// ParseSecretKey parses "name:base64(64-byte ed25519 private key)". The
// error never contains key material.
func ParseSecretKey(s string) (SecretKey, error) {
	name, raw, err := splitKey("secret key", strings.TrimSpace(s), ed25519.PrivateKeySize)
	if err != nil {
		return SecretKey{}, err
	}
	k := ed25519.PrivateKey(raw)
	// libsodium keys carry the public key in their second half; a file whose
	// halves disagree would sign with one key and claim another.
	if !ed25519.NewKeyFromSeed(k.Seed()).Equal(k) {
		return SecretKey{}, fmt.Errorf("secret key %q: public half does not match the private half", name)
	}
	return SecretKey{Name: name, Key: k}, nil
}

// LoadSecretKeyFile reads a secret key file, ignoring surrounding white
// space.
func LoadSecretKeyFile(path string) (SecretKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return SecretKey{}, err
	}
	k, err := ParseSecretKey(string(data))
	if err != nil {
		return SecretKey{}, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// Public gives the public key that verifies k's signatures.
func (k SecretKey) Public() PublicKey {
	return PublicKey{Name: k.Name, Key: k.Key.Public().(ed25519.PublicKey)}
}

// Sign signs msg and gives "name:base64(signature)", exactly what Nix
// writes (ed25519 is deterministic).
func (k SecretKey) Sign(msg string) string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(ed25519.Sign(k.Key, []byte(msg)))
}

// String gives "name:base64(key)".
func (k PublicKey) String() string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(k.Key)
}

// Verify reports whether sig ("name:base64") is k's signature of msg. A
// signature under another key name never verifies.
func (k PublicKey) Verify(msg, sig string) bool {
	name, raw, err := splitKey("signature", sig, ed25519.SignatureSize)
	if err != nil || name != k.Name || len(k.Key) != ed25519.PublicKeySize {
		return false
	}
	return ed25519.Verify(k.Key, []byte(msg), raw)
}

// Sign adds k's signature of n's Fingerprint to Sigs, replacing any earlier
// signature by a key of the same name.
func (n *NarInfo) Sign(k SecretKey) error {
	fp, err := n.Fingerprint()
	if err != nil {
		return err
	}
	sig := k.Sign(fp)
	sigs := n.Sigs[:0:0]
	for _, s := range n.Sigs {
		if name, _, _ := strings.Cut(s, ":"); name != k.Name {
			sigs = append(sigs, s)
		}
	}
	n.Sigs = append(sigs, sig)
	return nil
}

// SignCid sets IpfsCidSig to k's signature of n's CidFingerprint (version
// 2). Set IpfsCid and IpfsLsHash first: the signature covers both.
func (n *NarInfo) SignCid(k SecretKey) error {
	fp, err := n.CidFingerprint()
	if err != nil {
		return err
	}
	n.IpfsCidSig = k.Sign(fp)
	return nil
}

// Errors of signature checks; the returned errors wrap one of them.
var (
	ErrNoSignature      = errors.New("no signature")
	ErrUntrustedSigner  = errors.New("no signature by a trusted key")
	ErrInvalidSignature = errors.New("signature invalid")
	// ErrRetiredCidSig says that IpfsCidSig is a trusted key's valid
	// signature of the retired version 1 fingerprint, which does not
	// cover the listing. Treat such a narinfo as having no CID signature
	// (it is not forged, merely old), not as having an invalid one.
	ErrRetiredCidSig = errors.New("IpfsCidSig signs the retired ipnix-cid-1 fingerprint")
)

// VerifySigs succeeds when at least one Sig verifies under a key in keys
// with the same name. Otherwise the error says why: there is no signature,
// none is by a trusted key, or the ones by trusted keys do not verify.
func (n *NarInfo) VerifySigs(keys []PublicKey) error {
	fp, err := n.Fingerprint()
	if err != nil {
		return err
	}
	return verifyAny(n.StorePath, "Sig", fp, n.Sigs, keys)
}

// VerifyCidSig succeeds when IpfsCidSig is a signature of CidFingerprint
// (version 2) by a key in keys with the same name; otherwise the error says
// why, as VerifySigs's does. A signature that fails as version 2 but
// verifies as the retired version 1 gives an error wrapping
// ErrRetiredCidSig (and not ErrInvalidSignature).
func (n *NarInfo) VerifyCidSig(keys []PublicKey) error {
	fp, err := n.CidFingerprint()
	if err != nil {
		return err
	}
	var sigs []string
	if n.IpfsCidSig != "" {
		sigs = []string{n.IpfsCidSig}
	}
	err = verifyAny(n.StorePath, "IpfsCidSig", fp, sigs, keys)
	if errors.Is(err, ErrInvalidSignature) {
		if v1, err1 := n.cidFingerprintV1(); err1 == nil && verifyAny(n.StorePath, "IpfsCidSig", v1, sigs, keys) == nil {
			return fmt.Errorf("%s: %w (publish it again to sign ipnix-cid-2)", n.StorePath, ErrRetiredCidSig)
		}
	}
	return err
}

func verifyAny(path, field, msg string, sigs []string, keys []PublicKey) error {
	if len(sigs) == 0 {
		return fmt.Errorf("%s: %w (%s)", path, ErrNoSignature, field)
	}
	var signers, bad []string
	for _, s := range sigs {
		name, _, _ := strings.Cut(s, ":")
		signers = append(signers, name)
		for _, k := range keys {
			if k.Name != name {
				continue
			}
			if k.Verify(msg, s) {
				return nil
			}
			bad = append(bad, name)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%s: %w: %s by trusted key %s does not match the narinfo", path, ErrInvalidSignature, field, strings.Join(bad, ", "))
	}
	return fmt.Errorf("%s: %w: %s by %s", path, ErrUntrustedSigner, field, strings.Join(signers, ", "))
}
