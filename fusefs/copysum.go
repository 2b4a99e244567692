package fusefs

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"hash/crc32"
	"strings"
)

// The checksum a manifest gives each local copy. The bytes of a copy were
// authenticated when they were written: they are the bytes of a NAR that
// matched its signed NarHash. The manifest only has to tell, after a
// restart, whether a copy is still what was written, despite a crash that
// tore it (copies are not synced) or a disk that corrupted it. That is
// what file systems use CRC-32C for (ext4 metadata, btrfs data by
// default), and it costs a twentieth of SHA-256 here: SHA-256 made writing
// the copies a third hash of every byte of a cold read, and made the check
// of copies found at start run at 1.4 GB/s. A cryptographic hash would add
// nothing against an attacker who can write the cache directory, who
// could rewrite the manifest beside the copy just as well: the directory
// is trusted like the store itself (created 0700, owned by the mount).
//
// Manifests written before carry SHA-256 in hex; they are still checked,
// with SHA-256.

// copySum is how a manifest line's checksum was computed.
type copySum int

const (
	crc32cCopySum   copySum = iota // "crc32c:<8 hex digits>", written now
	legacySHA256Sum                // "<64 hex digits>", written by earlier versions
)

const crc32cPrefix = "crc32c:"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// newCopySum gives the hash copies are written with.
func newCopySum() hash.Hash { return crc32.New(castagnoli) }

// new gives a hash to recompute a checksum of kind k with.
func (k copySum) new() hash.Hash {
	if k == legacySHA256Sum {
		return sha256.New()
	}
	return newCopySum()
}

// format writes the sum of h, a hash of kind k, as a manifest gives it.
func (k copySum) format(h hash.Hash) string {
	sum := hex.EncodeToString(h.Sum(nil))
	if k == legacySHA256Sum {
		return sum
	}
	return crc32cPrefix + sum
}

// parseCopySum tells the kind of a manifest checksum, and false when s is
// none.
func parseCopySum(s string) (copySum, bool) {
	if hexDigits, ok := strings.CutPrefix(s, crc32cPrefix); ok {
		return crc32cCopySum, len(hexDigits) == 2*crc32.Size && isLowerHex(hexDigits)
	}
	return legacySHA256Sum, len(s) == 2*sha256.Size && isLowerHex(s)
}

func isLowerHex(s string) bool {
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
