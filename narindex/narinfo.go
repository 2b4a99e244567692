package narindex

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Limits on narinfo input. A narinfo listing thousands of references is
// still far below them.
const (
	// MaxNarInfoSize is the most ParseNarInfo accepts, and the most
	// substituters read, of a narinfo.
	MaxNarInfoSize  = 1 << 20
	maxNarInfoLines = 16384

	// Marshal may write up to this many bytes and lines more than it read
	// (References and FileSize lines, NarHash in nix32 instead of base64).
	marshalGrowthBytes = 256
	marshalGrowthLines = 4
)

// unknownDeriver is what old Nix versions wrote when the deriver was unknown.
const unknownDeriver = "unknown-deriver"

// ErrMalformedNarInfo is wrapped by every error of ParseNarInfo: the bytes
// are not a narinfo this package accepts.
var ErrMalformedNarInfo = errors.New("malformed narinfo")

// NarInfo is a parsed .narinfo file: Nix's fields plus the ipnix fields
// IpfsCid, IpfsEncoding, IpfsLsHash and IpfsCidSig. Fields that are absent
// are zero.
type NarInfo struct {
	StorePath   string // full path in StoreDir
	URL         string // of the (compressed) NAR, relative to the cache
	Compression string // empty when absent, which Nix reads as "bzip2"
	FileHash    string // hash of the file at URL, as written (validated)
	FileSize    uint64
	NarHash     Hash
	NarSize     uint64
	References  []string // base names, in file order; nil when none
	Deriver     string   // base name; empty when absent or "unknown-deriver"
	System      string   // written by Nix when known
	Sigs        []string // "keyname:base64", in file order
	CA          string   // content address, "fixed:..." or "text:..."
	IpfsCid     string   // CIDv1 of a UnixFS file holding the NAR
	// IpfsEncoding is kept as written: the JSON that says how the NAR
	// became the DAG of IpfsCid (see IpfsEncoding). Neither signed nor
	// needed to serve the path, it is not read here; ParseIpfsEncoding
	// reads it.
	IpfsEncoding string
	IpfsLsHash   Hash    // sha256 of the .ls listing as published
	IpfsCidSig   string  // "keyname:base64" over CidFingerprint
	Extra        []Field // fields this package does not know, in order

	// LegacyIPFSHash records that IpfsCid came from the legacy field
	// "IPFSHash:"; Marshal then writes that name again.
	LegacyIPFSHash bool
	// UnknownDeriver records a "Deriver: unknown-deriver" line, which
	// Marshal writes back.
	UnknownDeriver bool
}

// Field is one "Key: value" line.
type Field struct{ Key, Value string }

// ParseNarInfo parses a narinfo file with the rules Nix 2.8 applies, and
// some more: every line is "Key: value\n"; StorePath, URL, NarHash and a
// non-zero NarSize are required; StorePath, references and the deriver must
// be valid store paths; hashes and content addresses must parse. Where Nix
// silently keeps the last of repeated fields, ParseNarInfo refuses a second
// copy of any field except Sig and unknown ones. Input is limited to
// MaxNarInfoSize bytes. Every error wraps ErrMalformedNarInfo.
func ParseNarInfo(data []byte) (*NarInfo, error) {
	n, err := parseNarInfo(data)
	if err != nil {
		// The message already says "narinfo".
		return nil, tag(ErrMalformedNarInfo, err)
	}
	return n, nil
}

// tagged is an error that wraps a sentinel without repeating its text.
type tagged struct{ sentinel, err error }

func tag(sentinel, err error) error { return &tagged{sentinel, err} }
func (e *tagged) Error() string     { return e.err.Error() }
func (e *tagged) Unwrap() []error   { return []error{e.sentinel, e.err} }

func parseNarInfo(data []byte) (*NarInfo, error) {
	if len(data) > MaxNarInfoSize {
		return nil, fmt.Errorf("narinfo: %d bytes, more than the limit of %d", len(data), MaxNarInfoSize)
	}
	if len(data) == 0 {
		return nil, fmt.Errorf("narinfo: empty")
	}
	if data[len(data)-1] != '\n' {
		return nil, fmt.Errorf("narinfo: last line does not end in a newline")
	}
	n := &NarInfo{}
	seen := map[string]bool{}
	lines := bytes.Split(data[:len(data)-1], []byte{'\n'})
	if len(lines) > maxNarInfoLines {
		return nil, fmt.Errorf("narinfo: %d lines, more than the limit of %d", len(lines), maxNarInfoLines)
	}
	for i, raw := range lines {
		// As in Nix, the name ends at the first colon, and a space follows.
		key, value, ok := strings.Cut(string(raw), ":")
		value, ok2 := strings.CutPrefix(value, " ")
		if !ok || !ok2 {
			// The line itself is not quoted: a narinfo that is no
			// narinfo (a symlink to another file) must not show its
			// content in a log.
			return nil, fmt.Errorf("narinfo: line %d (%d bytes) is not \"Key: value\"", i+1, len(raw))
		}
		if key == "" || strings.ContainsAny(key, " \t\r") {
			return nil, fmt.Errorf("narinfo: line %d has an invalid field name (%d bytes, with white space)", i+1, len(key))
		}
		if err := n.setField(key, value, seen); err != nil {
			return nil, fmt.Errorf("narinfo: line %d: %w", i+1, err)
		}
	}
	// Whatever ParseNarInfo accepts must parse again after Marshal, so near
	// the limits they apply to what Marshal would write as well.
	if len(data) > MaxNarInfoSize-marshalGrowthBytes || len(lines) > maxNarInfoLines-marshalGrowthLines {
		out := n.Marshal()
		if len(out) > MaxNarInfoSize || bytes.Count(out, []byte{'\n'}) > maxNarInfoLines {
			return nil, fmt.Errorf("narinfo: more than the limit of %d bytes or %d lines once written out", MaxNarInfoSize, maxNarInfoLines)
		}
	}
	switch {
	case !seen["StorePath"]:
		return nil, fmt.Errorf("narinfo: no StorePath")
	case n.URL == "":
		return nil, fmt.Errorf("narinfo %s: no URL", n.StorePath)
	case !seen["NarHash"]:
		return nil, fmt.Errorf("narinfo %s: no NarHash", n.StorePath)
	case n.NarSize == 0:
		return nil, fmt.Errorf("narinfo %s: NarSize missing or zero", n.StorePath)
	}
	return n, nil
}

// singleFields may appear once. IpfsCid and IPFSHash count as one field.
var singleFields = map[string]string{
	"StorePath": "StorePath", "URL": "URL", "Compression": "Compression",
	"FileHash": "FileHash", "FileSize": "FileSize", "NarHash": "NarHash",
	"NarSize": "NarSize", "References": "References", "Deriver": "Deriver",
	"System": "System", "CA": "CA", "IpfsCid": "IpfsCid", "IPFSHash": "IpfsCid",
	"IpfsLsHash": "IpfsLsHash", "IpfsCidSig": "IpfsCidSig",
	"IpfsEncoding": "IpfsEncoding",
}

func (n *NarInfo) setField(key, value string, seen map[string]bool) error {
	if canon, ok := singleFields[key]; ok {
		if seen[canon] {
			return fmt.Errorf("second %s field", key)
		}
		seen[canon] = true
	}
	var err error
	switch key {
	case "StorePath":
		if _, err = ParseStorePath(value); err == nil {
			n.StorePath = value
		}
	case "URL":
		n.URL = value
	case "Compression":
		n.Compression = value
	case "FileHash":
		if _, err = ParseHash(value); err == nil {
			n.FileHash = value
		}
	case "FileSize":
		n.FileSize, err = parseSize(value)
	case "NarHash":
		n.NarHash, err = ParseHash(value)
	case "NarSize":
		n.NarSize, err = parseSize(value)
	case "References":
		for _, r := range strings.Split(value, " ") {
			if r == "" {
				continue
			}
			if _, err = ParseStorePathBase(r); err != nil {
				return fmt.Errorf("References: %w", err)
			}
			n.References = append(n.References, r)
		}
	case "Deriver":
		if value == unknownDeriver {
			n.UnknownDeriver = true
		} else if _, err = ParseStorePathBase(value); err == nil {
			n.Deriver = value
		}
	case "System":
		n.System = value
	case "Sig":
		n.Sigs = append(n.Sigs, value)
	case "CA":
		if err = checkContentAddress(value); err == nil {
			n.CA = value
		}
	case "IpfsCid", "IPFSHash":
		if value == "" || strings.ContainsAny(value, " \t\r") {
			err = fmt.Errorf("invalid CID %q", value)
		}
		n.IpfsCid, n.LegacyIPFSHash = value, key == "IPFSHash"
	case "IpfsEncoding":
		// Kept verbatim and not interpreted: a value ipnix cannot read
		// (another writer's JSON, a later draft) must not hide a path
		// whose CID and signatures are good. Only an empty value is
		// refused, as for IpfsCid: Marshal could not write it back.
		if value == "" {
			err = errors.New("empty")
		}
		n.IpfsEncoding = value
	case "IpfsLsHash":
		n.IpfsLsHash, err = parseLsHash(value)
	case "IpfsCidSig":
		n.IpfsCidSig = value
	default:
		n.Extra = append(n.Extra, Field{Key: key, Value: value})
	}
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	return nil
}

// parseLsHash accepts only the form Marshal writes, "sha256:<nix32>": the
// field is ipnix's own, and one spelling leaves nothing to interpret.
func parseLsHash(s string) (Hash, error) {
	h, err := ParseHash(s)
	if err != nil || h.Algo != "sha256" || h.String() != s {
		return Hash{}, fmt.Errorf("%.80q is not a hash of the form sha256:<nix32>", s)
	}
	return h, nil
}

func parseSize(s string) (uint64, error) {
	if s == "" || s[0] < '0' || s[0] > '9' {
		return 0, fmt.Errorf("%q is not a number", s)
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a number", s)
	}
	return v, nil
}

// checkContentAddress accepts what Nix 2.8's parseContentAddress accepts:
// "text:sha256:<hash>" and "fixed:[r:]<algo>:<hash>"; empty means none.
func checkContentAddress(ca string) error {
	if ca == "" {
		return nil
	}
	method, rest, _ := strings.Cut(ca, ":")
	switch method {
	case "text":
		if !strings.HasPrefix(rest, "sha256:") {
			return fmt.Errorf("content address %q: text hashes must be sha256", ca)
		}
	case "fixed":
		rest = strings.TrimPrefix(rest, "r:")
	default:
		return fmt.Errorf("content address %q: unknown method %q", ca, method)
	}
	if !strings.Contains(rest, ":") {
		return fmt.Errorf("content address %q: hash must be \"<algo>:<hash>\"", ca)
	}
	if _, err := ParseHash(rest); err != nil {
		return fmt.Errorf("content address %q: %v", ca, err)
	}
	return nil
}

// Marshal writes n in the field order Nix 2.8 uses (StorePath, URL,
// Compression, FileHash, FileSize, NarHash, NarSize, References, Deriver,
// System, Sig..., CA), then IpfsCid, IpfsEncoding (RFC 133's draft puts
// it after IpfsCid), IpfsLsHash, IpfsCidSig and the Extra fields.
// Empty optional fields are left out; References is always written, as Nix
// does. A narinfo Nix wrote comes out byte for byte as it went in.
func (n *NarInfo) Marshal() []byte {
	var b bytes.Buffer
	line := func(k, v string) {
		b.WriteString(k)
		b.WriteString(": ")
		b.WriteString(v)
		b.WriteByte('\n')
	}
	line("StorePath", n.StorePath)
	line("URL", n.URL)
	if n.Compression != "" {
		line("Compression", n.Compression)
	}
	if n.FileHash != "" {
		line("FileHash", n.FileHash)
	}
	if n.FileHash != "" || n.FileSize != 0 {
		line("FileSize", strconv.FormatUint(n.FileSize, 10))
	}
	line("NarHash", n.NarHash.String())
	line("NarSize", strconv.FormatUint(n.NarSize, 10))
	line("References", strings.Join(n.References, " "))
	switch {
	case n.Deriver != "":
		line("Deriver", n.Deriver)
	case n.UnknownDeriver:
		line("Deriver", unknownDeriver)
	}
	if n.System != "" {
		line("System", n.System)
	}
	for _, s := range n.Sigs {
		line("Sig", s)
	}
	if n.CA != "" {
		line("CA", n.CA)
	}
	if n.IpfsCid != "" {
		if n.LegacyIPFSHash {
			line("IPFSHash", n.IpfsCid)
		} else {
			line("IpfsCid", n.IpfsCid)
		}
	}
	if n.IpfsEncoding != "" {
		line("IpfsEncoding", n.IpfsEncoding)
	}
	if !n.IpfsLsHash.IsZero() {
		line("IpfsLsHash", n.IpfsLsHash.String())
	}
	if n.IpfsCidSig != "" {
		line("IpfsCidSig", n.IpfsCidSig)
	}
	for _, f := range n.Extra {
		line(f.Key, f.Value)
	}
	return b.Bytes()
}

// Path parses n.StorePath.
func (n *NarInfo) Path() (StorePath, error) { return ParseStorePath(n.StorePath) }

// ReferencePaths parses the references. Entries that do not parse (possible
// only in a NarInfo not made by ParseNarInfo) are left out.
func (n *NarInfo) ReferencePaths() []StorePath {
	var out []StorePath
	for _, r := range n.References {
		if p, err := ParseStorePathBase(r); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// Fingerprint is the string Nix signs for a Sig line:
// "1;<StorePath>;<NarHash>;<NarSize>;<references>", the references as full
// paths, sorted and without duplicates (Nix holds them in a set), joined
// with commas. Like Nix it refuses a zero NarSize; unlike Nix 2.8 it also
// refuses a NarHash that is not sha256, which Nix never writes.
func (n *NarInfo) Fingerprint() (string, error) {
	if err := n.checkFingerprintable(); err != nil {
		return "", err
	}
	refs := make([]string, 0, len(n.References))
	for _, r := range n.References {
		refs = append(refs, StoreDir+"/"+r)
	}
	sort.Strings(refs)
	uniq := refs[:0]
	for i, r := range refs {
		if i == 0 || r != refs[i-1] {
			uniq = append(uniq, r)
		}
	}
	return "1;" + n.StorePath + ";" + n.NarHash.String() + ";" +
		strconv.FormatUint(n.NarSize, 10) + ";" + strings.Join(uniq, ","), nil
}

// CidFingerprint is the string IpfsCidSig signs (version 2):
// "ipnix-cid-2;<StorePath>;<NarHash>;<NarSize>;<IpfsCid>;<IpfsLsHash>",
// IpfsLsHash as "sha256:<nix32>" or empty when there is none. It covers
// what a client serves before it has the whole NAR: the CID every block is
// checked against, and the digest of the listing that names the files.
func (n *NarInfo) CidFingerprint() (string, error) {
	prefix, err := n.cidFingerprintPrefix("ipnix-cid-2")
	if err != nil {
		return "", err
	}
	if !n.IpfsLsHash.IsZero() && (n.IpfsLsHash.Algo != "sha256" || len(n.IpfsLsHash.Digest) != 32) {
		return "", fmt.Errorf("narinfo %s: IpfsLsHash %q is not a sha256 hash", n.StorePath, n.IpfsLsHash)
	}
	return prefix + ";" + n.IpfsLsHash.String(), nil
}

// cidFingerprintV1 is the retired version 1,
// "ipnix-cid-1;<StorePath>;<NarHash>;<NarSize>;<IpfsCid>", which left the
// listing unauthenticated. It is only recognised, never signed.
func (n *NarInfo) cidFingerprintV1() (string, error) {
	return n.cidFingerprintPrefix("ipnix-cid-1")
}

func (n *NarInfo) cidFingerprintPrefix(version string) (string, error) {
	if err := n.checkFingerprintable(); err != nil {
		return "", err
	}
	if n.IpfsCid == "" {
		return "", fmt.Errorf("narinfo %s: no IpfsCid to sign", n.StorePath)
	}
	// A CID never holds ';'; refusing it keeps the fields apart.
	if strings.ContainsAny(n.IpfsCid, "; \t\r\n") {
		return "", fmt.Errorf("narinfo %s: IpfsCid %.80q is not a CID", n.StorePath, n.IpfsCid)
	}
	return version + ";" + n.StorePath + ";" + n.NarHash.String() + ";" +
		strconv.FormatUint(n.NarSize, 10) + ";" + n.IpfsCid, nil
}

func (n *NarInfo) checkFingerprintable() error {
	if _, err := ParseStorePath(n.StorePath); err != nil {
		return fmt.Errorf("narinfo: %v", err)
	}
	if n.NarSize == 0 {
		return fmt.Errorf("narinfo %s: cannot make a fingerprint without NarSize", n.StorePath)
	}
	if n.NarHash.Algo != "sha256" || len(n.NarHash.Digest) != 32 {
		return fmt.Errorf("narinfo %s: NarHash %q is not a sha256 hash", n.StorePath, n.NarHash)
	}
	return nil
}
