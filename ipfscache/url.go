package ipfscache

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ipfs/boxo/ipns"
	"github.com/ipfs/go-cid"
)

// Ref names a binary cache in IPFS: a fixed directory (ipfs://CID) or
// whatever directory an IPNS name points to now (ipns://NAME).
type Ref struct {
	Root cid.Cid   // ipfs://: the directory; cid.Undef for ipns://
	Name ipns.Name // ipns://: the name; its zero value for ipfs://
}

// IsName reports whether r is an ipns:// reference.
func (r Ref) IsName() bool { return !r.Root.Defined() }

// String is the canonical URL: ipfs://<CID as given, v0 stays v0> or
// ipns://<name as a base36 CIDv1, k51...>.
func (r Ref) String() string {
	if r.IsName() {
		return "ipns://" + r.Name.String()
	}
	return "ipfs://" + r.Root.String()
}

// IsURL reports whether s has one of the schemes ParseURL reads, so that a
// caller can tell such a substituter from the file:// and http(s):// ones.
func IsURL(s string) bool {
	scheme, _, ok := strings.Cut(s, "://")
	return ok && (strings.EqualFold(scheme, "ipfs") || strings.EqualFold(scheme, "ipns"))
}

// maxURLLen bounds what ParseURL looks at; a CID or a key name is far
// shorter.
const maxURLLen = 512

// ParseURL reads ipfs://CID or ipns://NAME. A trailing slash and a query
// string (Nix store settings such as ?priority=) are ignored; a path below
// the root is refused (the cache is the directory itself). The CID must be
// a dag-pb node (a UnixFS directory is one); NAME must be an IPNS key name
// (k51..., 12D3Koo... or any other libp2p key CID or peer ID): DNSLink
// names are refused, since their answer cannot be verified.
func ParseURL(raw string) (Ref, error) {
	if len(raw) > maxURLLen {
		return Ref{}, fmt.Errorf("substituter URL of %d bytes: too long for ipfs:// or ipns://", len(raw))
	}
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return Ref{}, fmt.Errorf("substituter %q: not an ipfs:// or ipns:// URL", raw)
	}
	rest, _, _ = strings.Cut(rest, "#")
	rest, _, _ = strings.Cut(rest, "?")
	rest = strings.TrimSuffix(rest, "/")
	if rest == "" {
		return Ref{}, fmt.Errorf("substituter %q: no CID or name after %s://", raw, scheme)
	}
	if strings.ContainsAny(rest, "/\\") {
		return Ref{}, fmt.Errorf("substituter %q: a path below the root is not supported: name the directory that holds nix-cache-info itself", raw)
	}
	switch strings.ToLower(scheme) {
	case "ipfs":
		c, err := cid.Decode(rest)
		if err != nil {
			return Ref{}, fmt.Errorf("substituter %q: %q is not a CID: %v", raw, rest, err)
		}
		if c.Type() != cid.DagProtobuf {
			return Ref{}, fmt.Errorf("substituter %q: CID codec %#x is not dag-pb, so it cannot be a UnixFS directory", raw, c.Type())
		}
		return Ref{Root: c}, nil
	case "ipns":
		n, err := parseName(rest)
		if err != nil {
			return Ref{}, fmt.Errorf("substituter %q: %w", raw, err)
		}
		return Ref{Name: n}, nil
	}
	return Ref{}, fmt.Errorf("substituter %q: scheme %q is neither ipfs nor ipns", raw, scheme)
}

// parseName reads an IPNS key name: a libp2p-key CID or a peer ID.
func parseName(s string) (ipns.Name, error) {
	// A CIDv1 must say libp2p-key; a Qm... string is a peer ID (of an RSA
	// key), which cid.Decode would take for a CIDv0.
	if c, err := cid.Decode(s); err == nil && c.Version() == 1 {
		if c.Type() != cid.Libp2pKey {
			return ipns.Name{}, fmt.Errorf("%q is a CID with codec %#x, not an IPNS name (a libp2p-key CID, k51...)", s, c.Type())
		}
		return ipns.NameFromCid(c)
	}
	n, err := ipns.NameFromString(s)
	if err != nil {
		if strings.Contains(s, ".") {
			return ipns.Name{}, fmt.Errorf("%q is not an IPNS key name; DNSLink names are not supported (their answer cannot be verified)", s)
		}
		return ipns.Name{}, fmt.Errorf("%q is not an IPNS key name: %v", s, err)
	}
	if n.Cid() == cid.Undef {
		return ipns.Name{}, errors.New("empty IPNS name")
	}
	return n, nil
}
