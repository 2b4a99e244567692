package fusefs

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func crcLine(off int, data []byte) string {
	return fmt.Sprintf("%d %d crc32c:%08x\n", off, len(data), crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli)))
}

func shaLine(off int, data []byte) string {
	s := sha256.Sum256(data)
	return fmt.Sprintf("%d %d %s\n", off, len(data), hex.EncodeToString(s[:]))
}

// A manifest may mix CRC-32C lines with the SHA-256 lines of earlier
// versions; anything else (uppercase hex, a line cut short, a checksum of
// the wrong length for its kind) refuses the whole manifest; and a copy
// that does not match its line, of either kind, fails its check, whether
// hashed at start (checkCopies) or on open (checkCopy).
func TestManifestMixedKinds(t *testing.T) {
	a := []byte(strings.Repeat("copy a ", 5000))
	b := []byte(strings.Repeat("copy b ", 7000))
	good := crcLine(0, a) + shaLine(35000, b)
	for name, m := range map[string]string{
		"uppercase crc32c":    strings.ToUpper(crcLine(0, a)),
		"uppercase sha256":    strings.ToUpper(shaLine(0, a)),
		"uppercase prefix":    strings.Replace(crcLine(0, a), "crc32c:", "CRC32C:", 1),
		"crc32c cut short":    good[:len(crcLine(0, a))-2],
		"sha256 cut short":    good[:len(good)-3],
		"cut after the size":  good[:strings.Index(good, "crc32c:")],
		"crc32c of sha len":   fmt.Sprintf("0 %d crc32c:%s\n", len(a), strings.Repeat("ab", 32)),
		"sha256 of crc len":   fmt.Sprintf("0 %d %08x\n", len(a), crc32.Checksum(a, crc32.MakeTable(crc32.Castagnoli))),
		"other algorithm":     fmt.Sprintf("0 %d sha256:%s\n", len(a), strings.Repeat("ab", 32)),
		"two prefixes":        strings.Replace(crcLine(0, a), "crc32c:", "crc32c:crc32c:", 1),
		"extra field":         strings.TrimSuffix(crcLine(0, a), "\n") + " x\n",
		"negative size":       fmt.Sprintf("0 -1 crc32c:%08x\n", 0),
		"leading zero offset": "0" + crcLine(0, a),
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "manifest"), []byte(m), 0o600); err != nil {
			t.Fatal(err)
		}
		if got, err := readManifest(dir); err == nil {
			t.Errorf("%s: manifest %q accepted: %+v", name, m, got)
		}
	}

	for _, damage := range []string{"none", "crc32c copy", "sha256 copy", "swapped sums"} {
		t.Run(damage, func(t *testing.T) {
			dir := t.TempDir()
			ca, cb := a, b
			m := good
			switch damage {
			case "crc32c copy":
				ca = flipByte(a, len(a)/2)
			case "sha256 copy":
				cb = flipByte(b, 7)
			case "swapped sums":
				// Each line with the other's checksum, sizes kept right.
				m = fmt.Sprintf("0 %d %s\n35000 %d %s\n", len(a), strings.Fields(shaLine(0, b))[2], len(b), strings.Fields(crcLine(0, a))[2])
			}
			for name, data := range map[string][]byte{"0": ca, "35000": cb, "manifest": []byte(m)} {
				if err := os.WriteFile(filepath.Join(dir, name), data, 0o400); err != nil {
					t.Fatal(err)
				}
			}
			var st Stats
			err := checkCopies(t.Context(), dir, &st, hashEvery)
			if (err == nil) != (damage == "none") {
				t.Fatalf("checkCopies: %v", err)
			}
			var bad int
			for _, off := range []int64{0, 35000} {
				fd, err := syscall.Open(filepath.Join(dir, fmt.Sprint(off)), syscall.O_RDONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				if checkCopy(dir, off, fd, &st) != nil {
					bad++
				}
				syscall.Close(fd)
			}
			if want := map[string]int{"none": 0, "crc32c copy": 1, "sha256 copy": 1, "swapped sums": 2}[damage]; bad != want {
				t.Fatalf("checkCopy refused %d copies, want %d", bad, want)
			}
		})
	}
}

func flipByte(b []byte, at int) []byte {
	c := append([]byte{}, b...)
	c[at] ^= 0x40
	return c
}
