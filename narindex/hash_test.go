package narindex

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
)

// nixHashVectors were produced with real Nix 2.8.0, for each algorithm and
// each of the inputs "", "abc" and "hello narindex":
//
//	hex=$(printf %s "$s" | ${algo}sum | cut -d' ' -f1)
//	nix-hash --type $algo --to-base32 $hex
//	nix --extra-experimental-features nix-command hash to-base64 --type $algo $hex
//	nix --extra-experimental-features nix-command hash to-sri --type $algo $hex
var nixHashVectors = []struct{ algo, hex, nix32, b64 string }{
	{"md5", "d41d8cd98f00b204e9800998ecf8427e", "3y8bwfr609h3lh9ch0izcqq7fl", "1B2M2Y8AsgTpgAmY7PhCfg=="},
	{"md5", "900150983cd24fb0d6963f7d28e17f72", "3jgzhjhz9zjvbb0kyj7jc500ch", "kAFQmDzST7DWlj99KOF/cg=="},
	{"md5", "b9c41ce98c79b8d07689e372e2c9bbff", "7zpg4y4wp3i5vd1f3rikliri5r", "ucQc6Yx5uNB2ieNy4sm7/w=="},
	{"sha1", "da39a3ee5e6b4b0d3255bfef95601890afd80709", "143xibwh31h9bvxzalr0sjvbbvpa6ffs", "2jmj7l5rSw0yVb/vlWAYkK/YBwk="},
	{"sha1", "a9993e364706816aba3e25717850c26c9cd0d89d", "kpcd173cq987hw957sx6m0868wv3x6d9", "qZk+NkcGgWq6PiVxeFDCbJzQ2J0="},
	{"sha1", "c75026aa01e1f842335adafef16eaf20be1beec6", "qvp1pgi0mxpg3znsb8rl5y7106m2cl67", "x1AmqgHh+EIzWtr+8W6vIL4b7sY="},
	{"sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="},
	{"sha256", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s", "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="},
	{"sha256", "a4c0098778a9acc52f935756019e8620ccf8bda2196a1048bd5d6ecf9f1acbc9", "1jfb3agwyvjxpm410shrlayzik10hsg02mjpjcpwbb59g23hkh54", "pMAJh3iprMUvk1dWAZ6GIMz4vaIZahBIvV1uz58ay8k="},
	{"sha512", "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e", "0zdl9zrg8r3i9c1g90lgg9ip5ijzv3yhz91i0zzn3r8ap9ws784gkp9dk9j3aglhgf1amqb0pj21mh7h1nxcl18akqvvf7ggqsy30yg", "z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg=="},
	{"sha512", "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f", "2gs8k559z4rlahfx0y688s49m2vvszylcikrfinm30ly9rak69236nkam5ydvly1ai7xac99vxfc4ii84hawjbk876blyk1jfhkbbyx", "3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw=="},
	{"sha512", "0d9b1085c56fe265d95c98e3ac4f098e73a527dd5c5da2dd8937b7e01c8a802676d8940ffd6f34e4d40f4a557257130de606e7795875669fc0f19d11cde7d779", "1wxgryd26fz3h4zcrsmhyg70vk0s4spf9all3ylwhs6zz8gjkc7c9l0i8ff1drpi7fs4pawvlksawwf157srqwqbkcnbqkgqn2i16qd", "DZsQhcVv4mXZXJjjrE8JjnOlJ91cXaLdiTe34ByKgCZ22JQP/W805NQPSlVyVxMN5gbneVh1Zp/A8Z0RzefXeQ=="},
}

func TestNix32Vectors(t *testing.T) {
	for _, v := range nixHashVectors {
		raw, _ := hex.DecodeString(v.hex)
		if got := EncodeNix32(raw); got != v.nix32 {
			t.Errorf("EncodeNix32(%s) = %s, Nix says %s", v.hex, got, v.nix32)
		}
		got, err := DecodeNix32(v.nix32)
		if err != nil || !bytes.Equal(got, raw) {
			t.Errorf("DecodeNix32(%s) = %x, %v; want %s", v.nix32, got, err, v.hex)
		}
	}
}

func TestNix32RoundTrip(t *testing.T) {
	for n := 0; n <= 70; n++ {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*37 + n)
		}
		s := EncodeNix32(b)
		got, err := DecodeNix32(s)
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("%d bytes: %q decodes to %x, %v", n, s, got, err)
		}
	}
}

func TestDecodeNix32Rejects(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"0", "length 1"},
		{"1e", "invalid character"},
		{"1o", "invalid character"},
		{"1u", "invalid character"},
		{"1t", "invalid character"},
		{"1A", "invalid character"},
		{"z0", "non-zero bits"},                // the first character holds only the top 3 bits of one byte
		{strings.Repeat("0", 51), "length 51"}, // 31 bytes take 50 characters, 32 take 52
	} {
		_, err := DecodeNix32(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.in) {
			t.Errorf("DecodeNix32(%q) error = %v, want one naming the input and %q", tc.in, err, tc.want)
		}
	}
}

func TestParseHashForms(t *testing.T) {
	for _, v := range nixHashVectors {
		raw, _ := hex.DecodeString(v.hex)
		want := Hash{Algo: v.algo, Digest: raw}
		for _, in := range []string{
			v.algo + ":" + v.hex,
			v.algo + ":" + strings.ToUpper(v.hex), // Nix accepts upper-case hex
			v.algo + ":" + v.nix32,
			v.algo + ":" + v.b64,
			v.algo + "-" + v.b64,
			v.algo + "-" + strings.TrimRight(v.b64, "="), // unpadded SRI
		} {
			h, err := ParseHash(in)
			if err != nil || !h.Equal(want) {
				t.Errorf("ParseHash(%q) = %v, %v; want %v", in, h, err, want)
			}
		}
		if got := want.String(); got != v.algo+":"+v.nix32 {
			t.Errorf("String() = %s", got)
		}
		if got := want.SRI(); got != v.algo+"-"+v.b64 {
			t.Errorf("SRI() = %s", got)
		}
		if got := want.Hex(); got != v.hex {
			t.Errorf("Hex() = %s", got)
		}
	}
}

func TestParseHashRejects(t *testing.T) {
	h := nixHashVectors[6] // sha256 of ""
	for _, tc := range []struct{ in, want string }{
		{h.nix32, "does not include a type"},
		{"sha3:" + h.nix32, "unknown hash algorithm"},
		{"SHA256:" + h.nix32, "unknown hash algorithm"},
		{"sha256:" + h.nix32[1:], "wrong length"},
		{"sha256:" + h.hex + "00", "wrong length"},
		{"sha256:" + h.hex[:63] + "g", "invalid byte"},
		{"sha256:e" + h.nix32[1:], "invalid character"},
		{"sha256:z" + h.nix32[1:], "non-zero bits"},
		{"sha256:" + h.b64[:43] + "!", "illegal base64"},
		{"sha256-" + h.b64[:40], "bytes where sha256 has 32"},
		{"md5-" + h.b64, "bytes where md5 has 16"},
		{"sha256-" + h.hex, "bytes where sha256 has 32"}, // SRI is always base64
		{"", "does not include a type"},
	} {
		_, err := ParseHash(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseHash(%q) error = %v, want %q", tc.in, err, tc.want)
		}
	}
}

func TestHashZero(t *testing.T) {
	var z Hash
	if !z.IsZero() || z.String() != "" {
		t.Errorf("zero Hash: IsZero %v, String %q", z.IsZero(), z.String())
	}
	if SHA256(make([]byte, 32)).IsZero() {
		t.Error("an all-zero sha256 digest is not the zero Hash")
	}
	if SHA256(make([]byte, 32)).Equal(Hash{Algo: "sha512", Digest: make([]byte, 32)}) {
		t.Error("hashes of different algorithms are equal")
	}
}

func FuzzDecodeNix32(f *testing.F) {
	for _, v := range nixHashVectors {
		f.Add(v.nix32)
	}
	f.Add("")
	f.Add("z0")
	f.Fuzz(func(t *testing.T, s string) {
		b, err := DecodeNix32(s)
		if err != nil {
			return
		}
		if got := EncodeNix32(b); got != s {
			t.Fatalf("DecodeNix32(%q) = %x, which encodes to %q", s, b, got)
		}
	})
}

func FuzzParseHash(f *testing.F) {
	for _, v := range nixHashVectors {
		f.Add(v.algo + ":" + v.nix32)
		f.Add(v.algo + ":" + v.hex)
		f.Add(v.algo + "-" + v.b64)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseHash(s)
		if err != nil {
			return
		}
		if len(h.Digest) != hashSizes[h.Algo] {
			t.Fatalf("ParseHash(%q) gave %d bytes of %s", s, len(h.Digest), h.Algo)
		}
		for _, form := range []string{h.String(), h.SRI(), h.Algo + ":" + h.Hex()} {
			h2, err := ParseHash(form)
			if err != nil || !h2.Equal(h) {
				t.Fatalf("ParseHash(%q) = %v, but %q parses to %v, %v", s, h, form, h2, err)
			}
		}
	})
}
