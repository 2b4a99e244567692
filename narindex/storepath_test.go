package narindex

import (
	"strings"
	"testing"
)

const testHash = "l2ab8sldkfww980gkvsdvmbqsxn9sqkz"

func TestParseStorePathBase(t *testing.T) {
	for _, tc := range []struct {
		in, name, err string
	}{
		{in: testHash + "-hello.txt", name: "hello.txt"},
		{in: testHash + "-a", name: "a"},
		{in: testHash + "-+-._?=AZaz09", name: "+-._?=AZaz09"},
		// Nix 2.8 accepts names starting with a dot: `nix-store --add .dotfile`
		// gave /nix/store/0awyzx6jgi8ak2fzss8537k198l14iyx-.dotfile.
		{in: testHash + "-.dotfile", name: ".dotfile"},
		{in: testHash + "-..", name: ".."},
		// 211 characters is the longest name Nix 2.8 accepts (`nix-store
		// --add` of a file with a 212-character name fails).
		{in: testHash + "-" + strings.Repeat("a", 211), name: strings.Repeat("a", 211)},
		{in: testHash + "-" + strings.Repeat("a", 212), err: "longer than 211"},
		{in: testHash + "-", err: "too short"},
		{in: testHash, err: "too short"},
		{in: "", err: "too short"},
		{in: testHash + "_x", err: "no '-' after its hash part"},
		{in: "e" + testHash[1:] + "-x", err: "illegal base-32 character 'e'"},
		{in: "T" + testHash[1:] + "-x", err: "illegal base-32 character 'T'"},
		{in: testHash + "-a b", err: "illegal character ' '"},
		{in: testHash + "-a/b", err: "illegal character '/'"},
		{in: testHash + "-a\x00", err: "illegal character '\\x00'"},
		{in: testHash + "-caf\xc3\xa9", err: "illegal character"},
	} {
		p, err := ParseStorePathBase(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseStorePathBase(%q) error = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || p.Hash != tc.in[:32] || p.Name != tc.name {
			t.Errorf("ParseStorePathBase(%q) = %+v, %v", tc.in, p, err)
			continue
		}
		if p.Base() != tc.in || p.String() != "/nix/store/"+tc.in {
			t.Errorf("%q: Base %q String %q", tc.in, p.Base(), p.String())
		}
	}
}

func TestParseStorePath(t *testing.T) {
	base := testHash + "-hello.txt"
	if p, err := ParseStorePath("/nix/store/" + base); err != nil || p.Base() != base {
		t.Fatalf("ParseStorePath: %+v, %v", p, err)
	}
	for _, in := range []string{
		base,
		"/nix/store",
		"/nix/store/",
		"/nix/store/" + base + "/bin",
		"/nix/store/" + base + "/",
		"/nix/store//" + base,
		"/nix/store/../store/" + base,
		"/gnu/store/" + base,
		"/nix/store2/" + base,
	} {
		_, err := ParseStorePath(in)
		if err == nil || !strings.Contains(err.Error(), in) && !strings.Contains(err.Error(), base) {
			t.Errorf("ParseStorePath(%q) error = %v, want one naming the input", in, err)
		}
	}
}

func FuzzParseStorePathBase(f *testing.F) {
	f.Add(testHash + "-hello.txt")
	f.Add(testHash + "-.")
	f.Add(testHash + "-" + strings.Repeat("x", 211))
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseStorePathBase(s)
		if err != nil {
			return
		}
		if p.Base() != s {
			t.Fatalf("ParseStorePathBase(%q).Base() = %q", s, p.Base())
		}
		if p2, err := ParseStorePath(p.String()); err != nil || p2 != p {
			t.Fatalf("ParseStorePath(%q) = %+v, %v", p.String(), p2, err)
		}
		if _, err := DecodeNix32(p.Hash); err != nil {
			t.Fatalf("hash part %q: %v", p.Hash, err)
		}
	})
}
