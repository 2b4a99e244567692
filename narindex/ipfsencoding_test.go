package narindex

import (
	"strings"
	"testing"
)

func TestIpfsEncodingString(t *testing.T) {
	if got, want := FixedSizeEncoding(256<<10).String(), `{"method":"wrapped-nar","chunking":{"leaf-format":"raw","strategy":"fixed-size","size":262144},"layout":"balanced","max-width":174}`; got != want {
		t.Errorf("String() = %s\nwant %s", got, want)
	}
	// Without a size it is the draft's example, byte for byte.
	e := FixedSizeEncoding(0)
	if got := e.String(); got != rfc133Example {
		t.Errorf("String() without a size = %s\nwant %s", got, rfc133Example)
	}
}

func TestParseIpfsEncoding(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want IpfsEncoding
	}{
		{rfc133Example, FixedSizeEncoding(0)},
		{FixedSizeEncoding(1 << 20).String(), FixedSizeEncoding(1 << 20)},
		// Key order and white space are free; values are not judged.
		{` {"max-width": 1024, "layout": "trickle", "chunking": {"size": 4096, "strategy": "buzhash", "leaf-format": "dag-pb"}, "method": "unixfs-nar"}` + "\n",
			IpfsEncoding{Method: "unixfs-nar", LeafFormat: "dag-pb", Strategy: "buzhash", ChunkSize: 4096, Layout: "trickle", MaxWidth: 1024}},
	} {
		got, err := ParseIpfsEncoding(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseIpfsEncoding(%s) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestParseIpfsEncodingRejects(t *testing.T) {
	ok := FixedSizeEncoding(256 << 10).String()
	for _, tc := range []struct{ name, in, want string }{
		{"empty", "", "ends early"},
		{"not JSON", "fixed-size 262144", "not JSON"},
		{"array", `["wrapped-nar"]`, "not a JSON object"},
		{"string", `"wrapped-nar"`, "not a JSON object"},
		{"cut short", ok[:len(ok)-1], "ends early"},
		{"two objects", ok + ok, "more after the object"},
		{"trailing garbage", ok + "x", "more after the object"},
		{"unknown key", strings.Replace(ok, `"layout"`, `"layuot"`, 1), `unknown key "layuot"`},
		{"unknown chunking key", strings.Replace(ok, `"size"`, `"avg"`, 1), `unknown key chunking."avg"`},
		{"key twice", strings.Replace(ok, `{"method":"wrapped-nar",`, `{"method":"wrapped-nar","method":"other",`, 1), `key "method" twice`},
		{"chunking key twice", strings.Replace(ok, `"size":262144`, `"size":262144,"size":1`, 1), `key chunking."size" twice`},
		{"chunking not an object", `{"method":"wrapped-nar","chunking":"fixed-size","layout":"balanced","max-width":174}`, "chunking is not a JSON object"},
		{"no method", strings.Replace(ok, `"method":"wrapped-nar",`, "", 1), "no method"},
		{"no chunking", `{"method":"wrapped-nar","layout":"balanced","max-width":174}`, "no chunking.leaf-format"},
		{"no strategy", strings.Replace(ok, `"strategy":"fixed-size",`, "", 1), "no chunking.strategy"},
		{"no layout", strings.Replace(ok, `"layout":"balanced",`, "", 1), "no layout"},
		{"no max-width", strings.Replace(ok, `,"max-width":174`, "", 1), "no max-width"},
		{"number as name", strings.Replace(ok, `"balanced"`, `1`, 1), "layout is not a name"},
		{"upper case name", strings.Replace(ok, `"balanced"`, `"Balanced"`, 1), "layout is not a name"},
		{"empty name", strings.Replace(ok, `"balanced"`, `""`, 1), "layout is not a name"},
		{"name with a space", strings.Replace(ok, `"raw"`, `"raw leaves"`, 1), "chunking.leaf-format is not a name"},
		{"null", strings.Replace(ok, `"wrapped-nar"`, `null`, 1), "method is not a name"},
		{"size as string", strings.Replace(ok, `262144`, `"262144"`, 1), "chunking.size is not a positive integer"},
		{"size zero", strings.Replace(ok, `262144`, `0`, 1), "chunking.size is not a positive integer"},
		{"size negative", strings.Replace(ok, `262144`, `-1`, 1), "chunking.size is not a positive integer"},
		{"size fraction", strings.Replace(ok, `262144`, `262144.0`, 1), "chunking.size is not a positive integer"},
		{"size exponent", strings.Replace(ok, `262144`, `2e5`, 1), "chunking.size is not a positive integer"},
		{"size huge", strings.Replace(ok, `262144`, `99999999999999999999`, 1), "chunking.size is not a positive integer"},
		{"size over the bound", strings.Replace(ok, `262144`, `1099511627777`, 1), "at most 1099511627776"},
		{"max-width zero", strings.Replace(ok, `174`, `0`, 1), "max-width is not a positive integer"},
		{"too long", `{"method":"` + strings.Repeat("a", 2000) + `"}`, "more than the limit"},
		{"invalid UTF-8", strings.Replace(ok, `"raw"`, "\"r\xffw\"", 1), "not a name"},
	} {
		_, err := ParseIpfsEncoding(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: ParseIpfsEncoding gives %v; want an error containing %q", tc.name, err, tc.want)
			continue
		}
		if !strings.HasPrefix(err.Error(), "IpfsEncoding ") {
			t.Errorf("%s: error %q does not name the field", tc.name, err)
		}
	}
}

// FuzzParseIpfsEncoding: no input panics; what parses writes out in the
// canonical form, which parses to the same value, is no longer than the
// input, and is written out again unchanged.
func FuzzParseIpfsEncoding(f *testing.F) {
	f.Add(rfc133Example)
	f.Add(FixedSizeEncoding(256 << 10).String())
	f.Add(` {"max-width": 1024, "layout": "trickle", "chunking": {"size": 4096, "strategy": "buzhash", "leaf-format": "dag-pb"}, "method": "unixfs-nar"}`)
	f.Add(`{"method":"wrapped-nar","chunking":{"leaf-format":"raw","strategy":"fixed-size","size":262144,"size":1},"layout":"balanced","max-width":174}`)
	f.Add(`{"chunking":[{}]}`)
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseIpfsEncoding(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "IpfsEncoding ") {
				t.Fatalf("error %q does not name the field", err)
			}
			return
		}
		out := e.String()
		e2, err := ParseIpfsEncoding(out)
		if err != nil || e2 != e {
			t.Fatalf("%s parses to %+v, written out as %s, which parses to %+v, %v", s, e, out, e2, err)
		}
		if len(out) > len(s) {
			t.Fatalf("canonical form %s is longer than the input %s", out, s)
		}
		if e2.String() != out {
			t.Fatalf("String not stable: %s, %s", out, e2.String())
		}
	})
}
