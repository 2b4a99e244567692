package narindex

import (
	"bytes"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
)

// Hash is a digest together with the name of its algorithm, as Nix writes
// hashes: "md5", "sha1", "sha256" or "sha512".
type Hash struct {
	Algo   string
	Digest []byte
}

// hashSizes gives the digest size of each algorithm Nix knows.
var hashSizes = map[string]int{
	"md5":    md5.Size,
	"sha1":   sha1.Size,
	"sha256": sha256.Size,
	"sha512": sha512.Size,
}

// SHA256 wraps a SHA-256 digest.
func SHA256(digest []byte) Hash {
	return Hash{Algo: "sha256", Digest: append([]byte(nil), digest...)}
}

// ParseHash reads a hash in any form Nix reads with a type prefix:
// "algo:<hex>", "algo:<nix32>", "algo:<base64>" (told apart by length, as Nix
// does) and SRI "algo-<base64>".
func ParseHash(s string) (Hash, error) {
	sri := false
	algo, rest, ok := strings.Cut(s, ":")
	if !ok {
		algo, rest, ok = strings.Cut(s, "-")
		sri = true
	}
	if !ok {
		return Hash{}, fmt.Errorf("hash %q does not include a type", s)
	}
	size, known := hashSizes[algo]
	if !known {
		return Hash{}, fmt.Errorf("hash %q: unknown hash algorithm %q", s, algo)
	}
	var (
		digest []byte
		err    error
	)
	switch {
	case !sri && len(rest) == 2*size:
		digest, err = hex.DecodeString(rest)
	case !sri && len(rest) == nix32Len(size):
		digest, err = DecodeNix32(rest)
	case sri && len(rest)%4 != 0:
		// SRI strings are sometimes written without padding.
		digest, err = base64.RawStdEncoding.Strict().DecodeString(rest)
	case sri || len(rest) == base64.StdEncoding.EncodedLen(size):
		digest, err = base64.StdEncoding.Strict().DecodeString(rest)
	default:
		return Hash{}, fmt.Errorf("hash %q has the wrong length for hash type %s", s, algo)
	}
	if err != nil {
		return Hash{}, fmt.Errorf("hash %q: %v", s, err)
	}
	if len(digest) != size {
		return Hash{}, fmt.Errorf("hash %q: %d bytes where %s has %d", s, len(digest), algo, size)
	}
	return Hash{Algo: algo, Digest: digest}, nil
}

// String gives the hash as "algo:<nix32>", the form narinfo files and the
// Nix signature fingerprint use. The zero Hash gives "".
func (h Hash) String() string {
	if h.IsZero() {
		return ""
	}
	return h.Algo + ":" + EncodeNix32(h.Digest)
}

// SRI gives the hash as "algo-<base64>".
func (h Hash) SRI() string {
	return h.Algo + "-" + base64.StdEncoding.EncodeToString(h.Digest)
}

// Hex gives the digest in lower-case hexadecimal, without the algorithm.
func (h Hash) Hex() string {
	return hex.EncodeToString(h.Digest)
}

// Equal reports whether h and o have the same algorithm and digest.
func (h Hash) Equal(o Hash) bool {
	return h.Algo == o.Algo && bytes.Equal(h.Digest, o.Digest)
}

// IsZero reports whether h is the zero Hash (no algorithm, no digest).
func (h Hash) IsZero() bool {
	return h.Algo == "" && len(h.Digest) == 0
}
