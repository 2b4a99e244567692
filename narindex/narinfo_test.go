package narindex

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The fixtures in testdata/narinfo were written by real Nix 2.8.0:
//
//	nix-store --generate-binary-cache-key narindex-test-1 sec pub
//	nix-store --generate-binary-cache-key other-key sec2 pub2
//	nix-store --add hello.txt      # "hello narindex\n"
//	nix-build deps.nix             # narindex-top refers to narindex-dep and itself
//	nix store sign --key-file sec -r $top $hello
//	nix store sign --key-file sec2 $top
//	nix copy --to 'file:///tmp/nxfix/cache?compression=none' $top $hello
//	nix copy --to 'file:///tmp/nxfix/cachexz?compression=xz' $hello
//
// (nix commands with --extra-experimental-features nix-command.)

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func nixFixtures(t testing.TB) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob("testdata/narinfo/*.narinfo")
	if err != nil || len(files) < 4 {
		t.Fatalf("fixtures: %v, %v", files, err)
	}
	out := map[string][]byte{}
	for _, f := range files {
		out[filepath.Base(f)] = readFixture(t, "narinfo/"+filepath.Base(f))
	}
	return out
}

const (
	topHash = "rsw37b3mfmf5mwk74h93w7daljgm23cm"
	depBase = "rlrqqcnicslvlqdf5ww8w1pwnmgakfda-narindex-dep"
	topBase = topHash + "-narindex-top"
)

func TestNarInfoNixRoundTrip(t *testing.T) {
	for name, data := range nixFixtures(t) {
		n, err := ParseNarInfo(data)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got := n.Marshal(); !bytes.Equal(got, data) {
			t.Errorf("%s: Marshal differs:\n%s\nwant:\n%s", name, got, data)
		}
		p, err := n.Path()
		if err != nil || !strings.HasPrefix(name, p.Hash) {
			t.Errorf("%s: describes %s (%v)", name, n.StorePath, err)
		}
		if n.NarHash.Algo != "sha256" || n.NarSize == 0 || n.URL == "" || n.FileHash == "" || len(n.Sigs) == 0 {
			t.Errorf("%s: fields missing: %+v", name, n)
		}
	}
}

func TestNarInfoFields(t *testing.T) {
	n, err := ParseNarInfo(readFixture(t, "narinfo/"+topHash+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	want := &NarInfo{
		StorePath:   "/nix/store/" + topBase,
		URL:         "nar/1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4.nar",
		Compression: "none",
		FileHash:    "sha256:1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4",
		FileSize:    600,
		NarHash:     mustHash(t, "sha256:1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4"),
		NarSize:     600,
		References:  []string{depBase, topBase},
		Deriver:     "zhv625fvk8c7w3hwadyfv2dp43v13ld6-narindex-top.drv",
		Sigs: []string{
			"narindex-test-1:8xB9OgSwZHWfDQrajJxkJ41tsHHTGTg2fK6q9U+nXqwTPDtkkBSeS0jvXvqKTG4wRi3bTfi8M1C+lGZ1Ul8RBg==",
			"other-key:Li5rE2aRSACILH4aX4AkLr/KJJ82xkTeyV0pggtCHiT3BQ+McLLZwgkEdpxzNUrGi0wzmehsTDELsb2U6fdxBQ==",
		},
	}
	if !reflect.DeepEqual(n, want) {
		t.Errorf("parsed\n%+v\nwant\n%+v", n, want)
	}
	refs := n.ReferencePaths()
	if len(refs) != 2 || refs[0].Name != "narindex-dep" || refs[1].String() != n.StorePath {
		t.Errorf("ReferencePaths = %+v", refs)
	}
	fp, err := n.Fingerprint()
	wantFP := "1;/nix/store/" + topBase + ";sha256:1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4;600;/nix/store/" + depBase + ",/nix/store/" + topBase
	if err != nil || fp != wantFP {
		t.Errorf("Fingerprint = %q, %v\nwant %q", fp, err, wantFP)
	}
	// Nix puts references in a set: order and duplicates do not matter.
	n.References = []string{topBase, depBase, topBase}
	if fp2, _ := n.Fingerprint(); fp2 != wantFP {
		t.Errorf("Fingerprint with shuffled references = %q", fp2)
	}
}

func mustHash(t testing.TB, s string) Hash {
	t.Helper()
	h, err := ParseHash(s)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// ipnixNarInfo uses every field ParseNarInfo knows, in Marshal's order.
const ipnixNarInfo = `StorePath: /nix/store/` + topBase + `
URL: nar/1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4.nar
Compression: none
FileHash: sha256:1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4
FileSize: 600
NarHash: sha256:1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4
NarSize: 600
References: ` + depBase + ` ` + topBase + `
Deriver: zhv625fvk8c7w3hwadyfv2dp43v13ld6-narindex-top.drv
System: x86_64-linux
Sig: a:b
Sig: c:d
CA: fixed:r:sha256:1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4
IpfsCid: bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi
IpfsEncoding: {"method":"wrapped-nar","chunking":{"leaf-format":"raw","strategy":"fixed-size","size":262144},"layout":"balanced","max-width":174}
IpfsLsHash: sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73
IpfsCidSig: k:sig
X-Custom: something: with colons
Another: 
`

func TestNarInfoIpnixRoundTrip(t *testing.T) {
	for _, tc := range []struct{ name, in string }{
		{"all fields", ipnixNarInfo},
		{"legacy IPFSHash", strings.Replace(ipnixNarInfo, "IpfsCid: ", "IPFSHash: ", 1)},
		{"unknown deriver", strings.Replace(ipnixNarInfo, "zhv625fvk8c7w3hwadyfv2dp43v13ld6-narindex-top.drv", "unknown-deriver", 1)},
		{"no IpfsLsHash", strings.Replace(ipnixNarInfo, "IpfsLsHash: sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73\n", "", 1)},
		{"no IpfsEncoding", withEncoding(ipnixNarInfo, "")},
		// Values ipnix cannot read are kept as written, byte for byte.
		{"RFC 133 draft's example", withEncoding(ipnixNarInfo, rfc133Example)},
		{"spaced JSON", withEncoding(ipnixNarInfo, ` { "layout" : "balanced" , "method":"wrapped-nar"}\t`)},
		{"not JSON", withEncoding(ipnixNarInfo, "rabin-262144 please")},
		{"minimal", "StorePath: /nix/store/" + topBase + "\nURL: x\nNarHash: sha256:1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4\nNarSize: 1\nReferences: \n"},
	} {
		n, err := ParseNarInfo([]byte(tc.in))
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got := string(n.Marshal()); got != tc.in {
			t.Errorf("%s: Marshal gives\n%s\nwant\n%s", tc.name, got, tc.in)
		}
	}
	n, _ := ParseNarInfo([]byte(strings.Replace(ipnixNarInfo, "IpfsCid: ", "IPFSHash: ", 1)))
	if n.IpfsCid != "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi" || !n.LegacyIPFSHash {
		t.Errorf("IPFSHash: IpfsCid %q legacy %v", n.IpfsCid, n.LegacyIPFSHash)
	}
	n, _ = ParseNarInfo([]byte(ipnixNarInfo))
	wantExtra := []Field{{"X-Custom", "something: with colons"}, {"Another", ""}}
	if !reflect.DeepEqual(n.Extra, wantExtra) || n.System != "x86_64-linux" {
		t.Errorf("Extra = %q, System %q", n.Extra, n.System)
	}
	if n.IpfsLsHash.String() != "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73" {
		t.Errorf("IpfsLsHash = %q", n.IpfsLsHash)
	}
	if e, err := ParseIpfsEncoding(n.IpfsEncoding); err != nil || e != FixedSizeEncoding(256<<10) {
		t.Errorf("IpfsEncoding %q parses to %+v, %v", n.IpfsEncoding, e, err)
	}
	fp, err := n.CidFingerprint()
	want := "ipnix-cid-2;/nix/store/" + topBase + ";sha256:1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4;600;bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi;sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
	if err != nil || fp != want {
		t.Errorf("CidFingerprint = %q, %v\nwant %q", fp, err, want)
	}
	// Without a listing digest the last field is empty, not left out.
	n.IpfsLsHash = Hash{}
	fp, err = n.CidFingerprint()
	if want := strings.TrimSuffix(want, "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"); err != nil || fp != want {
		t.Errorf("CidFingerprint without IpfsLsHash = %q, %v\nwant %q", fp, err, want)
	}
	v1, err := n.cidFingerprintV1()
	if want := "ipnix-cid-1;/nix/store/" + topBase + ";sha256:1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4;600;bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"; err != nil || v1 != want {
		t.Errorf("v1 fingerprint = %q, %v", v1, err)
	}
}

// rfc133Example is the IpfsEncoding of the example in RFC 133's draft.
const rfc133Example = `{"method":"wrapped-nar","chunking":{"leaf-format":"raw","strategy":"fixed-size"},"layout":"balanced","max-width":174}`

// withEncoding gives the narinfo with its IpfsEncoding line's value
// replaced, or the line removed when value is empty.
func withEncoding(narinfo, value string) string {
	var out []string
	for _, l := range strings.SplitAfter(narinfo, "\n") {
		if strings.HasPrefix(l, "IpfsEncoding: ") {
			if value == "" {
				continue
			}
			l = "IpfsEncoding: " + value + "\n"
		}
		out = append(out, l)
	}
	return strings.Join(out, "")
}

func TestNarInfoNormalises(t *testing.T) {
	// Other spellings Nix accepts parse to the same NarInfo; Marshal writes
	// the canonical form.
	in := strings.NewReplacer(
		"NarHash: sha256:1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4", "NarHash: sha256-"+mustHash(t, "sha256:1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4").SRI()[7:],
		"References: "+depBase+" "+topBase, "References:  "+depBase+"   "+topBase+" ",
	).Replace(ipnixNarInfo)
	n, err := ParseNarInfo([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(n.Marshal()); got != ipnixNarInfo {
		t.Errorf("Marshal gives\n%s", got)
	}
}

func TestParseNarInfoRejects(t *testing.T) {
	good := "StorePath: /nix/store/" + topBase + "\nURL: nar/x.nar\nNarHash: sha256:1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4\nNarSize: 600\nReferences: " + depBase + "\n"
	if _, err := ParseNarInfo([]byte(good)); err != nil {
		t.Fatalf("base case: %v", err)
	}
	without := func(key string) string {
		var out []string
		for _, l := range strings.SplitAfter(good, "\n") {
			if !strings.HasPrefix(l, key+":") {
				out = append(out, l)
			}
		}
		return strings.Join(out, "")
	}
	for _, tc := range []struct{ name, in, want string }{
		{"empty", "", "empty"},
		{"too large", good + "X: " + strings.Repeat("a", MaxNarInfoSize) + "\n", "more than the limit"},
		{"too many lines", good + strings.Repeat("X: y\n", maxNarInfoLines), "lines, more than the limit"},
		{"too large once written", "StorePath: /nix/store/" + topBase + "\nURL: u\nNarHash: " + mustHash(t, "sha512:"+nixHashVectors[9].nix32).SRI() + "\nNarSize: 1\nX: " + strings.Repeat("a", MaxNarInfoSize-200) + "\n", "once written out"},
		{"no final newline", strings.TrimSuffix(good, "\n"), "does not end in a newline"},
		{"blank line", good + "\n", `line 6 (0 bytes) is not "Key: value"`},
		{"no colon", good + "garbage\n", `line 6 (7 bytes) is not`},
		{"no space after colon", good + "Key:value\n", `line 6 (9 bytes) is not`},
		{"empty key", good + ": x\n", "invalid field name"},
		{"key with space", good + "A B: x\n", "invalid field name"},
		{"no StorePath", without("StorePath"), "no StorePath"},
		{"no URL", without("URL"), "no URL"},
		{"empty URL", strings.Replace(good, "URL: nar/x.nar", "URL: ", 1), "no URL"},
		{"no NarHash", without("NarHash"), "no NarHash"},
		{"no NarSize", without("NarSize"), "NarSize missing or zero"},
		{"zero NarSize", strings.Replace(good, "NarSize: 600", "NarSize: 0", 1), "NarSize missing or zero"},
		{"negative NarSize", strings.Replace(good, "NarSize: 600", "NarSize: -1", 1), `NarSize: "-1" is not a number`},
		{"plus NarSize", strings.Replace(good, "NarSize: 600", "NarSize: +1", 1), `NarSize: "+1" is not a number`},
		{"huge NarSize", strings.Replace(good, "NarSize: 600", "NarSize: 18446744073709551616", 1), "is not a number"},
		{"bad FileSize", good + "FileSize: 1k\n", `FileSize: "1k" is not a number`},
		{"second References", good + "References: \n", "second References field"},
		{"second CA", good + "CA: fixed:sha256:1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4\nCA: fixed:sha256:1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4\n", "second CA field"},
		{"second StorePath", good + "StorePath: /nix/store/" + depBase + "\n", "second StorePath field"},
		{"second NarHash", good + "NarHash: sha256:1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4\n", "second NarHash field"},
		{"IpfsCid and IPFSHash", good + "IpfsCid: bafy\nIPFSHash: bafy\n", "second IPFSHash field"},
		{"empty IpfsCid", good + "IpfsCid: \n", `IpfsCid: invalid CID ""`},
		{"second IpfsLsHash", good + "IpfsLsHash: sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73\nIpfsLsHash: sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73\n", "second IpfsLsHash field"},
		{"empty IpfsLsHash", good + "IpfsLsHash: \n", `IpfsLsHash: "" is not a hash`},
		{"empty IpfsEncoding", good + "IpfsEncoding: \n", "IpfsEncoding: empty"},
		{"second IpfsEncoding", good + "IpfsEncoding: {}\nIpfsEncoding: {}\n", "second IpfsEncoding field"},
		{"sha512 IpfsLsHash", good + "IpfsLsHash: sha512:" + nixHashVectors[9].nix32 + "\n", "IpfsLsHash:"},
		{"sha1 IpfsLsHash", good + "IpfsLsHash: sha1:143xibwh31h9bvxzalr0sjvbbvpa6ffs\n", "IpfsLsHash:"},
		{"hex IpfsLsHash", good + "IpfsLsHash: sha256:" + mustHash(t, "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73").Hex() + "\n", "sha256:<nix32>"},
		{"SRI IpfsLsHash", good + "IpfsLsHash: " + mustHash(t, "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73").SRI() + "\n", "sha256:<nix32>"},
		{"IpfsLsHash without type", good + "IpfsLsHash: 0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73\n", "sha256:<nix32>"},
		{"IpfsLsHash bad character", good + "IpfsLsHash: sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7e\n", "IpfsLsHash:"},
		{"StorePath outside store", strings.Replace(good, "/nix/store/", "/gnu/store/", 1), "not directly in the Nix store"},
		{"StorePath bad name", strings.Replace(good, "-narindex-top\n", "-narindex top\n", 1), "illegal character ' '"},
		{"full path in References", strings.Replace(good, "References: ", "References: /nix/store/", 1), "References:"},
		{"bad reference", good[:len(good)-1] + " notastorepath\n", `"notastorepath" is too short`},
		{"bad Deriver", good + "Deriver: x.drv\n", "Deriver:"},
		{"empty Deriver", good + "Deriver: \n", "Deriver:"},
		{"NarHash without type", strings.Replace(good, "sha256:1mw9", "1mw9", 1), "does not include a type"},
		{"NarHash bad", strings.Replace(good, "sha256:1mw9", "sha256:emw9", 1), "invalid character"},
		{"FileHash bad", good + "FileHash: sha256:abc\n", "FileHash: hash \"sha256:abc\" has the wrong length"},
		{"CA unknown method", good + "CA: fancy:sha256:1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4\n", "unknown method"},
		{"CA text not sha256", good + "CA: text:sha1:143xibwh31h9bvxzalr0sjvbbvpa6ffs\n", "must be sha256"},
		{"CA bad hash", good + "CA: fixed:r:sha256:xyz\n", "wrong length"},
	} {
		_, err := ParseNarInfo([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: ParseNarInfo gives error %.300v; want one containing %q", tc.name, err, tc.want)
		}
		if err != nil && !errors.Is(err, ErrMalformedNarInfo) {
			t.Errorf("%s: error does not wrap ErrMalformedNarInfo: %v", tc.name, err)
		}
	}
}

// TestNarInfoAtTheLimits: what parses at the size and line limits still
// parses after Marshal, which may write more than it read.
func TestNarInfoAtTheLimits(t *testing.T) {
	sha512 := mustHash(t, "sha512:"+nixHashVectors[9].nix32)
	head := "StorePath: /nix/store/" + topBase + "\nURL: u\nFileHash: " + sha512.SRI() + "\nNarHash: " + sha512.SRI() + "\nNarSize: 1\n"
	for _, in := range []string{
		head + "X: " + strings.Repeat("a", MaxNarInfoSize-len(head)-len("X: \n")) + "\n",
		head + "X: " + strings.Repeat("a", MaxNarInfoSize-len(head)-len("X: \n")-100) + "\n",
		head + strings.Repeat("X: y\n", maxNarInfoLines-5),
		head + strings.Repeat("X: y\n", maxNarInfoLines-8),
	} {
		n, err := ParseNarInfo([]byte(in))
		if err != nil {
			if !strings.Contains(err.Error(), "once written out") {
				t.Errorf("%d bytes: %.200v", len(in), err)
			}
			continue
		}
		out := n.Marshal()
		if _, err := ParseNarInfo(out); err != nil {
			t.Errorf("%d bytes in, %d out: %v", len(in), len(out), err)
		}
	}
}

func TestFingerprintErrors(t *testing.T) {
	n, _ := ParseNarInfo([]byte(ipnixNarInfo))
	n.NarHash = mustHash(t, "sha512:"+nixHashVectors[9].nix32)
	if _, err := n.Fingerprint(); err == nil || !strings.Contains(err.Error(), "not a sha256") {
		t.Errorf("sha512 NarHash: %v", err)
	}
	n, _ = ParseNarInfo([]byte(ipnixNarInfo))
	n.NarSize = 0
	if _, err := n.Fingerprint(); err == nil || !strings.Contains(err.Error(), "NarSize") {
		t.Errorf("zero NarSize: %v", err)
	}
	n, _ = ParseNarInfo([]byte(ipnixNarInfo))
	n.IpfsCid = ""
	if _, err := n.CidFingerprint(); err == nil || !strings.Contains(err.Error(), "no IpfsCid") {
		t.Errorf("no CID: %v", err)
	}
	n, _ = ParseNarInfo([]byte(ipnixNarInfo))
	n.IpfsCid = "bafy;sha256:x"
	if _, err := n.CidFingerprint(); err == nil || !strings.Contains(err.Error(), "is not a CID") {
		t.Errorf("CID with ';': %v", err)
	}
	n, _ = ParseNarInfo([]byte(ipnixNarInfo))
	n.IpfsLsHash = mustHash(t, "sha1:143xibwh31h9bvxzalr0sjvbbvpa6ffs")
	if _, err := n.CidFingerprint(); err == nil || !strings.Contains(err.Error(), "IpfsLsHash") {
		t.Errorf("sha1 IpfsLsHash: %v", err)
	}
}

func FuzzParseNarInfo(f *testing.F) {
	for _, data := range nixFixtures(f) {
		f.Add(data)
	}
	f.Add([]byte(ipnixNarInfo))
	f.Add([]byte(strings.Replace(ipnixNarInfo, "IpfsCid: ", "IPFSHash: ", 1)))
	f.Add([]byte(withEncoding(ipnixNarInfo, rfc133Example)))
	f.Add([]byte(withEncoding(ipnixNarInfo, `{"method":"x","chunking":{}}`)))
	f.Add([]byte("StorePath: /nix/store/" + topBase + "\nURL: u\nNarHash: sha256:1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4\nNarSize: 1\nIpfsLsHash: sha256:1mw9bvgqbni81xrva3r81grwa79nlnvk0vsfn8xhmr3pdcvh3hd4\n"))
	f.Add([]byte("StorePath: /nix/store/" + topBase + "\nURL: u\nNarHash: sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\nNarSize: 1\nDeriver: unknown-deriver\nX: y\n"))
	f.Add([]byte("StorePath: /nix/store/" + topBase + "\nURL: u\nNarHash: md5:d41d8cd98f00b204e9800998ecf8427e\nNarSize: 01\nFileSize: 0\nReferences:  " + depBase + "  \nCA: text:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := ParseNarInfo(data)
		if err != nil {
			if !errors.Is(err, ErrMalformedNarInfo) {
				t.Fatalf("error does not wrap ErrMalformedNarInfo: %v", err)
			}
			return
		}
		if !n.IpfsLsHash.IsZero() && (n.IpfsLsHash.Algo != "sha256" || len(n.IpfsLsHash.Digest) != 32) {
			t.Fatalf("IpfsLsHash %q accepted", n.IpfsLsHash)
		}
		out := n.Marshal()
		n2, err := ParseNarInfo(out)
		if err != nil {
			t.Fatalf("Marshal output does not parse: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(n, n2) {
			t.Fatalf("round trip differs:\n%#v\n%#v", n, n2)
		}
		if out2 := n2.Marshal(); !bytes.Equal(out, out2) {
			t.Fatalf("Marshal not stable:\n%s\n%s", out, out2)
		}
		if n.IpfsEncoding != "" {
			// Whatever the value, the narinfo parsed; the description
			// is read, or refused, only here.
			_, _ = ParseIpfsEncoding(n.IpfsEncoding)
		}
		_, _ = n.Fingerprint()
		_, _ = n.CidFingerprint()
		_ = n.ReferencePaths()
	})
}
