package narindex

import "fmt"

// nix32Alphabet is Nix's base-32 alphabet: digits and lower-case letters
// without e, o, u and t.
const nix32Alphabet = "0123456789abcdfghijklmnpqrsvwxyz"

// nix32Value maps a byte to its digit value, or 0xff when it is not a digit.
var nix32Value = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for i := 0; i < len(nix32Alphabet); i++ {
		t[nix32Alphabet[i]] = byte(i)
	}
	return t
}()

// nix32Len is the length of the nix32 encoding of n bytes.
func nix32Len(n int) int {
	if n == 0 {
		return 0
	}
	return (n*8-1)/5 + 1
}

// EncodeNix32 encodes b the way Nix prints hashes in base 32: the string's
// last character holds the lowest five bits of b[0], so the encoding reads
// "backwards" compared with RFC 4648.
func EncodeNix32(b []byte) string {
	n := nix32Len(len(b))
	out := make([]byte, 0, n)
	for i := n - 1; i >= 0; i-- {
		bit := i * 5
		k, j := bit/8, uint(bit%8)
		c := b[k] >> j
		if k+1 < len(b) {
			c |= b[k+1] << (8 - j)
		}
		out = append(out, nix32Alphabet[c&0x1f])
	}
	return string(out)
}

// DecodeNix32 reverses EncodeNix32. Like Nix, it rejects characters outside
// the alphabet and set bits beyond the last byte; it also rejects lengths
// that no whole number of bytes encodes to.
func DecodeNix32(s string) ([]byte, error) {
	n := len(s) * 5 / 8
	if nix32Len(n) != len(s) {
		return nil, fmt.Errorf("nix32 string %q: length %d does not encode a whole number of bytes", s, len(s))
	}
	out := make([]byte, n)
	for i := 0; i < len(s); i++ {
		c := s[len(s)-1-i]
		d := nix32Value[c]
		if d == 0xff {
			return nil, fmt.Errorf("nix32 string %q: invalid character %q", s, c)
		}
		bit := i * 5
		k, j := bit/8, uint(bit%8)
		out[k] |= d << j
		if k+1 < n {
			out[k+1] |= d >> (8 - j)
		} else if d>>(8-j) != 0 {
			return nil, fmt.Errorf("nix32 string %q: non-zero bits beyond the last byte", s)
		}
	}
	return out, nil
}
