package narindex

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// IpfsEncoding is the parsed value of the narinfo field IpfsEncoding, which
// the IPFS part of NixOS RFC 133's draft proposes beside IpfsCid: a JSON
// description of how the NAR became the UnixFS DAG that IpfsCid names, so
// that anyone holding the NAR can rebuild the DAG and check the CID. The
// draft's example is
//
//	{"method":"wrapped-nar","chunking":{"leaf-format":"raw","strategy":"fixed-size"},"layout":"balanced","max-width":174}
//
// It names no chunk size; ipnix adds "size" (bytes) to "chunking". The CID
// version and the hash function are those of IpfsCid itself, as the draft
// says, so the description repeats neither.
//
// The field is informational, as the draft says of IpfsCid and URL: nothing
// signs it (IpfsCidSig covers the CID, not the description), and the mount
// never needs it, because every block is checked against the CID. So
// ParseNarInfo keeps the value verbatim without reading it, and only a tool
// that wants to rebuild the DAG parses it, with ParseIpfsEncoding.
type IpfsEncoding struct {
	Method     string // "wrapped-nar": the NAR bytes as one UnixFS file
	LeafFormat string // chunking.leaf-format: "raw"
	Strategy   string // chunking.strategy: "fixed-size"
	ChunkSize  int64  // chunking.size, ipnix's addition; 0 when absent
	Layout     string // "balanced"
	MaxWidth   int    // max-width: most links of one node
}

// Values of IpfsEncoding that ipnix writes. The draft names only these.
const (
	EncodingWrappedNar = "wrapped-nar"
	EncodingRawLeaves  = "raw"
	EncodingFixedSize  = "fixed-size"
	EncodingBalanced   = "balanced"
	// DefaultMaxWidth is the links per node of `ipfs add` (kubo's
	// Import.UnixFSFileMaxLinks default, boxo's DefaultLinksPerBlock).
	DefaultMaxWidth = 174
)

// Bounds of ParseIpfsEncoding. The draft's example is 117 bytes.
const (
	maxIpfsEncodingLen = 1024
	maxEncodingNumber  = 1 << 40
)

// FixedSizeEncoding is the encoding publish uses: raw leaves of chunkSize
// bytes, balanced layout, DefaultMaxWidth links per node.
func FixedSizeEncoding(chunkSize int64) IpfsEncoding {
	return IpfsEncoding{
		Method: EncodingWrappedNar, LeafFormat: EncodingRawLeaves, Strategy: EncodingFixedSize,
		ChunkSize: chunkSize, Layout: EncodingBalanced, MaxWidth: DefaultMaxWidth,
	}
}

// String is the JSON ipnix writes: the draft's keys in the draft's order,
// no spaces, "size" last in "chunking" and left out when zero.
func (e IpfsEncoding) String() string {
	var b strings.Builder
	b.WriteString(`{"method":"` + e.Method + `","chunking":{"leaf-format":"` + e.LeafFormat +
		`","strategy":"` + e.Strategy + `"`)
	if e.ChunkSize != 0 {
		b.WriteString(`,"size":` + strconv.FormatInt(e.ChunkSize, 10))
	}
	b.WriteString(`},"layout":"` + e.Layout + `","max-width":` + strconv.Itoa(e.MaxWidth) + `}`)
	return b.String()
}

// ParseIpfsEncoding parses an IpfsEncoding value strictly: one JSON object
// with the draft's keys and ipnix's "size", each at most once, no other
// key, names made of lower-case letters, digits, '-' and '.', and positive
// integers written plainly. method, chunking.leaf-format,
// chunking.strategy, layout and max-width are required; chunking.size is
// not (the draft's example has none). It does not judge the values: a
// method or layout ipnix does not know parses, and whoever rebuilds the DAG
// refuses it then. Errors name the bad part.
func ParseIpfsEncoding(s string) (IpfsEncoding, error) {
	var e IpfsEncoding
	if err := parseIpfsEncoding(s, &e); err != nil {
		return IpfsEncoding{}, fmt.Errorf("IpfsEncoding %.80q: %w", s, err)
	}
	return e, nil
}

func parseIpfsEncoding(s string, e *IpfsEncoding) error {
	if len(s) > maxIpfsEncodingLen {
		return fmt.Errorf("%d bytes, more than the limit of %d", len(s), maxIpfsEncodingLen)
	}
	d := json.NewDecoder(strings.NewReader(s))
	d.UseNumber()
	hasChunking := false
	err := jsonObject(d, "", func(key string) error {
		switch key {
		case "method":
			return jsonName(d, key, &e.Method)
		case "layout":
			return jsonName(d, key, &e.Layout)
		case "max-width":
			n, err := jsonCount(d, key)
			e.MaxWidth = int(n)
			return err
		case "chunking":
			hasChunking = true
			return jsonObject(d, "chunking.", func(key string) error {
				switch key {
				case "leaf-format":
					return jsonName(d, "chunking."+key, &e.LeafFormat)
				case "strategy":
					return jsonName(d, "chunking."+key, &e.Strategy)
				case "size":
					var err error
					e.ChunkSize, err = jsonCount(d, "chunking."+key)
					return err
				}
				return fmt.Errorf("unknown key chunking.%q", key)
			})
		}
		return fmt.Errorf("unknown key %q", key)
	})
	if err != nil {
		return err
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return errors.New("more after the object")
	}
	switch {
	case e.Method == "":
		return errors.New("no method")
	case !hasChunking || e.LeafFormat == "":
		return errors.New("no chunking.leaf-format")
	case e.Strategy == "":
		return errors.New("no chunking.strategy")
	case e.Layout == "":
		return errors.New("no layout")
	case e.MaxWidth == 0:
		return errors.New("no max-width")
	}
	return nil
}

// jsonObject reads one object, calling f with each key for f to read its
// value; a key given twice is refused.
func jsonObject(d *json.Decoder, prefix string, f func(key string) error) error {
	if err := jsonDelim(d, '{', prefix); err != nil {
		return err
	}
	seen := map[string]bool{}
	for d.More() {
		t, err := d.Token()
		if err != nil {
			return syntaxError(err)
		}
		key, _ := t.(string) // a key is always a string
		if seen[key] {
			return fmt.Errorf("key %s%q twice", prefix, key)
		}
		seen[key] = true
		if err := f(key); err != nil {
			return err
		}
	}
	return jsonDelim(d, '}', prefix)
}

func jsonDelim(d *json.Decoder, want json.Delim, what string) error {
	t, err := d.Token()
	if err != nil {
		return syntaxError(err)
	}
	if t != want {
		if what == "" {
			return errors.New("not a JSON object")
		}
		return fmt.Errorf("%s is not a JSON object", strings.TrimSuffix(what, "."))
	}
	return nil
}

// jsonName reads a string of lower-case letters, digits, '-' and '.' that
// starts with a letter or digit.
func jsonName(d *json.Decoder, key string, out *string) error {
	t, err := d.Token()
	if err != nil {
		return syntaxError(err)
	}
	s, ok := t.(string)
	if !ok || !isEncodingName(s) {
		return fmt.Errorf("%s is not a name (lower-case letters, digits, '-', '.')", key)
	}
	*out = s
	return nil
}

func isEncodingName(s string) bool {
	if s == "" || len(s) > 64 || s[0] == '-' || s[0] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// jsonCount reads a positive integer written without sign, fraction,
// exponent or leading zeros, at most maxEncodingNumber.
func jsonCount(d *json.Decoder, key string) (int64, error) {
	t, err := d.Token()
	if err != nil {
		return 0, syntaxError(err)
	}
	n, ok := t.(json.Number)
	s := string(n)
	if !ok || s == "" || len(s) > 13 || s[0] < '1' || s[0] > '9' || strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' }) >= 0 {
		return 0, fmt.Errorf("%s is not a positive integer", key)
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v > maxEncodingNumber {
		return 0, fmt.Errorf("%s is not a positive integer of at most %d", key, int64(maxEncodingNumber))
	}
	return v, nil
}

func syntaxError(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("ends early")
	}
	return fmt.Errorf("not JSON: %v", err)
}
